"""A Pulumi YAML program using `lockstep:index:ModelRelease`, run by the real engine: the CLI and the
YAML language host from scripts/engine/build.sh, a local file backend, the plugin found through the
program's `plugins.providers` path (components/pulumi-resource-lockstep), the embedded servers.

`up` on the embedded default creates the release with no `aws:` resource; changing only the pin to
the other slot's version is the flip: the engine updates the Cutover and the Check, nothing else, and
the live alias moves."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from lockstep import engine
from tests.conftest import stack_values

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "schema.json").read_text())


def catalog() -> dict:
    """stacks/catalog.yaml's model and the two slot versions, as far as the component's schema has them."""
    document = yaml.safe_load((ROOT / "stacks" / "catalog.yaml").read_text())
    known = SCHEMA["types"]["lockstep:index:CatalogVersion"]["properties"]
    versions = {v: {k: x for k, x in document["versions"][v].items() if k in known} for v in ("v1", "v2")}
    return {"model": document["model"], "versions": versions}


def program(unique: str, pin: str) -> dict:
    """The YAML program (Pulumi.yaml) of an isolated embedded stack pinned to `pin`."""
    # No opensearch.url and no endpoints.imageUri: a local release reaches the embedded node and
    # its slots need no serving image.
    properties = stack_values(unique, pin=pin) | {"stack": unique, "catalog": catalog()}
    return {
        "name": "lockstep-yaml-local",
        "runtime": "yaml",
        "plugins": {"providers": [{"name": "lockstep", "path": str(ROOT / "components")}]},
        "resources": {"release": {"type": "lockstep:index:ModelRelease", "properties": properties}},
        "outputs": {"pin": "${release.pin}", "liveIndex": "${release.liveIndex}"},
    }


class Project:
    """One YAML project directory and its stack on a file backend, driven through the `pulumi` CLI."""

    def __init__(self, directory: Path):
        self.dir = directory
        found = engine.engine()
        self.pulumi = str(found.pulumi)
        self.env = os.environ | found.env(directory / "state") | {"PULUMI_HOME": str(directory / "home")}
        (directory / "state").mkdir(parents=True)
        (directory / "program").mkdir()

    def write(self, document: dict) -> None:
        (self.dir / "program" / "Pulumi.yaml").write_text(yaml.safe_dump(document, sort_keys=False))

    def run(self, *args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [self.pulumi, *args, "--non-interactive", "--color", "never"],
            cwd=self.dir / "program",
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, f"pulumi {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def json(self, *args: str):
        return json.loads(self.run(*args, "--json").stdout)

    def last_changes(self) -> dict:
        return self.json("stack", "history")[0]["resourceChanges"]

    def resources(self) -> dict[str, str | None]:
        """{urn: physical id} of the stack's state (the engine's state file, exported)."""
        state = json.loads(self.run("stack", "export").stdout)
        return {r["urn"]: r.get("id") for r in state["deployment"]["resources"]}


@pytest.fixture
def project(tmp_path, servers) -> Project:
    return Project(tmp_path)


def test_yaml_program_up_then_pin_flip(project, unique, opensearch):
    project.write(program(unique, pin="v1"))
    project.run("stack", "init", "yaml")
    project.run("up", "--yes", "--skip-preview")

    before = project.resources()
    types = [urn.rsplit("::", 2)[1].rsplit("$", 1)[-1] for urn in before]
    created = project.last_changes()
    assert set(created) == {"create"}
    assert not [t for t in types if t.startswith("aws:")]
    for token, count in [
        ("lockstep:index:Index", 2),  # one per slot version
        ("lockstep:index:Cutover", 1),
        ("lockstep:index:Check", 1),
        ("lockstep:embedded:EndpointSlot", 2),
        ("lockstep:embedded:Artifact", 2),
    ]:
        assert types.count(token) == count, (token, types)
    assert project.json("stack", "output") == {"pin": "v1", "liveIndex": f"{unique}-v1"}
    assert list(opensearch.indices.get_alias(name=unique)) == [f"{unique}-v1"]

    # The flip: v2 is the green slot's version. The engine's preview, then the update itself.
    project.write(program(unique, pin="v2"))
    steps = project.json("preview")["steps"]
    changed = sorted((s["op"], s["urn"].rsplit("::", 2)[1].rsplit("$", 1)[-1]) for s in steps if s["op"] != "same")
    assert changed == [("update", "lockstep:index:Check"), ("update", "lockstep:index:Cutover")]
    project.run("up", "--yes", "--skip-preview")
    assert project.last_changes() == {"update": 2, "same": created["create"] - 2}
    assert project.json("stack", "output") == {"pin": "v2", "liveIndex": f"{unique}-v2"}
    assert list(opensearch.indices.get_alias(name=unique)) == [f"{unique}-v2"]
    assert project.resources() == before  # nothing replaced, created or deleted
