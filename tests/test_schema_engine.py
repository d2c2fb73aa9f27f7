"""The real Pulumi CLI reads lockstep's plugin: `pulumi package get-schema` on the executable plugin
(components/pulumi-resource-lockstep, what a program's `plugins.providers` path names) equals the
checked-in schema.json, both as Pulumi reads a schema (sdkgen canonical: a PackageSpec round trip,
which drops only what Pulumi does not read, such as descriptions on array items)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from lockstep import engine

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "components" / "pulumi-resource-lockstep"


@pytest.fixture(scope="module")
def sdkgen(tmp_path_factory) -> Path:
    binary = tmp_path_factory.mktemp("sdkgen") / "sdkgen"
    build = ["go", "build", "-C", str(ROOT / "sdkgen"), "-buildvcs=false", "-o", str(binary), "."]
    proc = subprocess.run(build, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return binary


def canonical(sdkgen: Path, schema: Path) -> dict:
    proc = subprocess.run([str(sdkgen), "canonical", str(schema)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def differences(served: dict, checked_in: dict) -> str:
    """Which resources, types and functions differ, in one line, and the fix."""
    parts = []
    for section in sorted(set(served) | set(checked_in)):
        ours, theirs = served.get(section), checked_in.get(section)
        if ours == theirs:
            continue
        if isinstance(ours, dict) and isinstance(theirs, dict):
            names = sorted(n for n in set(ours) | set(theirs) if ours.get(n) != theirs.get(n))
            parts.append(f"{section}: {', '.join(names)}")
        else:
            parts.append(section)
    return f"the plugin serves a schema that differs from schema.json in {'; '.join(parts)} (run `make schema`)"


def test_get_schema_on_the_plugin_equals_schema_json(sdkgen, tmp_path):
    found = engine.engine()
    env = found.env(tmp_path / "state") | {"PULUMI_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [str(found.pulumi), "package", "get-schema", str(PLUGIN)], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    served = tmp_path / "served.json"
    served.write_text(proc.stdout)
    assert json.loads(proc.stdout)["name"] == "lockstep"
    assert canonical(sdkgen, served) == canonical(sdkgen, ROOT / "schema.json"), differences(
        canonical(sdkgen, served), canonical(sdkgen, ROOT / "schema.json")
    )


def test_canonical_form_keeps_what_pulumi_reads(sdkgen, tmp_path):
    """The comparison could fail: a changed input type in schema.json shows in the canonical form."""
    schema = json.loads((ROOT / "schema.json").read_text())
    schema["resources"]["lockstep:index:ModelRelease"]["inputProperties"]["pin"]["type"] = "integer"
    changed = tmp_path / "schema.json"
    changed.write_text(json.dumps(schema))
    assert canonical(sdkgen, changed) != canonical(sdkgen, ROOT / "schema.json")
