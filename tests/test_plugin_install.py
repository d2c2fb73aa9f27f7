"""lockstep's plugin for programs outside this repository, under the real engine.

- `make plugin` (scripts/plugin/build.sh) builds an archive; `pulumi plugin install resource lockstep
  <version> --file …` installs it into a PULUMI_HOME of the test's own; a YAML program whose
  Pulumi.yaml names no plugin path, with nothing of lockstep's on PATH, goes up and flips (the
  installed launcher built its own Python environment on first start).

Not here: `pulumi package add <repo>/components` (the source route) fails on this machine: it installs
the plugins of the component's Python dependencies first, and pulumi-aws's plugin cannot be downloaded.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from components import plugin
from lockstep import engine
from tests.pulumi_cli import SYSTEM_PATH
from tests.test_yaml_program import Project, program

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plugin")
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "plugin" / "build.sh"), str(out)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip())


def bare_project(directory: Path) -> Project:
    """A YAML project whose PATH has the CLI, the language hosts and uv — nothing of lockstep's."""
    project = Project(directory)
    project.env["PATH"] = engine.engine().path(SYSTEM_PATH)
    return project


def test_a_yaml_program_with_only_the_installed_plugin_goes_up_and_flips(
    tmp_path, archive, servers, unique, opensearch
):
    version = plugin.package_version()
    assert archive.name == f"pulumi-resource-lockstep-v{version}-linux-amd64.tar.gz"
    project = bare_project(tmp_path)
    project.run("plugin", "install", "resource", "lockstep", version, "--file", str(archive))

    def without_path(pin: str) -> dict:
        document = program(unique, pin)
        del document["plugins"]  # the installed plugin only
        return document

    project.write(without_path("v1"))
    project.run("stack", "init", "installed")
    project.run("up", "--yes", "--skip-preview")
    created = project.last_changes()
    assert set(created) == {"create"}
    assert project.json("stack", "output") == {"pin": "v1", "liveIndex": f"{unique}-v1"}

    project.write(without_path("v2"))
    project.run("up", "--yes", "--skip-preview")
    assert project.last_changes() == {"update": 2, "same": created["create"] - 2}  # the Cutover and the Check
    assert list(opensearch.indices.get_alias(name=unique)) == [f"{unique}-v2"]
    installed = tmp_path / "home" / "plugins" / f"resource-lockstep-v{version}"
    assert (installed / "venv" / "bin" / "python").exists()  # the launcher's own environment served it
