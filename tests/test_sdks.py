"""The TypeScript and Go SDKs generated from schema.json by Pulumi's own codegen compile, and the
examples type-check against them (sdkgen/build.sh: codegen → tsc → type-check → go build + vet)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "schema.json").read_text())
RELEASE = SCHEMA["resources"]["lockstep:index:ModelRelease"]


@pytest.fixture(scope="module")
def sdk(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sdk")
    proc = subprocess.run(["bash", str(ROOT / "sdkgen" / "build.sh"), str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "type-checks against it" in proc.stderr and "Go SDK and its example compiled" in proc.stderr
    return out


def test_typescript_sdk_is_compiled_from_the_schema(sdk):
    declarations = (sdk / "nodejs" / "bin" / "modelRelease.d.ts").read_text()
    assert "export declare class ModelRelease extends pulumi.ComponentResource" in declarations
    args = declarations.split("export interface ModelReleaseArgs", 1)[1]
    for name in RELEASE["inputProperties"]:
        optional = "" if name in RELEASE["requiredInputs"] else "?"
        assert f"{name}{optional}:" in args, name
    for name in RELEASE["properties"]:
        assert f"readonly {name}: pulumi.Output<" in declarations, name
    assert (sdk / "nodejs" / "bin" / "index.js").exists()


def test_typescript_example_type_check_is_real(sdk, tmp_path):
    """The type-check step fails on a program that misuses the SDK: `pin` must be a string."""
    example = (ROOT / "examples" / "typescript" / "index.ts").read_text()
    bad = tmp_path / "index.ts"
    bad.write_text(example.replace('pin: "v2"', "pin: 2"))
    (tmp_path / "tsconfig.json").write_text(
        json.dumps({"extends": str(sdk / "typecheck" / "tsconfig.json"), "files": [str(bad)]})
    )
    proc = subprocess.run(
        [str(sdk / "node_modules" / ".bin" / "tsc"), "-p", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "Type 'number' is not assignable to type 'string'" in proc.stdout


def test_go_sdk_is_generated_from_the_schema(sdk):
    source = (sdk / "go" / "lockstep" / "modelRelease.go").read_text()
    assert "func NewModelRelease(ctx *pulumi.Context," in source
    args = source.split("type ModelReleaseArgs struct {", 1)[1].split("\n}", 1)[0]
    fields = {line.split()[0] for line in args.splitlines() if line.strip() and not line.strip().startswith("//")}
    assert fields == {name[0].upper() + name[1:] for name in RELEASE["inputProperties"]}
