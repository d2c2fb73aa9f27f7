"""lockstep's plugin for programs outside this repository, under the real engine.

- `make plugin` (scripts/plugin/build.sh) builds an archive; `pulumi plugin install resource lockstep
  <version> --file …` installs it into a PULUMI_HOME of the test's own; a YAML program whose
  Pulumi.yaml names no plugin path, with nothing of lockstep's on PATH, goes up and flips (the
  installed launcher built its own Python environment on first start).
- The plugin is versioned: the program pins lockstep's version (`options.version`, as a YAML user
  does) and lockstep registers its own resources with it, so the engine runs that version's plugin
  (`pulumi:providers:lockstep::default_<version>` in the state), not a newer one installed beside it.
- The source route: a YAML program whose Pulumi.yaml names `<repo>/components` under `packages`
  (what `pulumi package add <repo>/components` records) goes up; the engine runs the component's
  source through the Python language host (components/__main__.py, beside PulumiPlugin.yaml).

Not here: `pulumi package add` itself in a YAML project. It stops at its last step on this machine:
the YAML host built here (pulumi-yaml v1.25.0, the newest the Go module proxy serves) does not
implement the `Link` RPC (`error: linking package: method Link not implemented`); upstream added it
after that release (pulumi/pulumi-yaml#929).
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
from packaging.version import Version

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


def stand_in_plugin(directory: Path, name: str, refusal: str) -> Path:
    """An archive of a resource plugin `name` that refuses to start, saying `refusal`."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / f"pulumi-resource-{name}"
    script.write_text(f"#!/bin/sh\necho '{refusal}' >&2\nexit 1\n")
    script.chmod(0o755)
    archive = directory / f"{name}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(script, arcname=script.name)
    return archive


def lockstep_providers(state: dict) -> dict[str, set[str]]:
    """{provider URN: the types of the resources it manages} for lockstep's providers in an exported state."""
    found: dict[str, set[str]] = {}
    for resource in state["deployment"]["resources"]:
        if resource["type"] == "pulumi:providers:lockstep":
            found.setdefault(resource["urn"], set())
        elif resource.get("provider", "").split("::")[2:3] == ["pulumi:providers:lockstep"]:
            found.setdefault(resource["provider"].rsplit("::", 1)[0], set()).add(resource["type"])
    return found


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
    # A newer lockstep plugin beside it that refuses to start: the engine's pick when no version is asked for.
    newer = Version(version)
    newer = f"{newer.major}.{newer.minor}.{newer.micro + 1}"
    refusing = stand_in_plugin(tmp_path / "newer", "lockstep", f"lockstep {newer} must not serve this program")
    project.run("plugin", "install", "resource", "lockstep", newer, "--file", str(refusing))

    def without_path(pin: str) -> dict:
        document = program(unique, pin)
        del document["plugins"]  # the installed plugin only
        document["resources"]["release"]["options"] = {"version": version}  # as a YAML program pins it
        return document

    project.write(without_path("v1"))
    project.run("stack", "init", "installed")
    project.run("up", "--yes", "--skip-preview")
    created = project.last_changes()
    assert set(created) == {"create"}
    assert project.json("stack", "output") == {"pin": "v1", "liveIndex": f"{unique}-v1"}
    provider = (
        f"urn:pulumi:installed::lockstep-yaml-local::pulumi:providers:lockstep::default_{version.replace('.', '_')}"
    )
    state = json.loads(project.run("stack", "export").stdout)
    managed = lockstep_providers(state)
    assert list(managed) == [provider]  # the component's construct and every custom resource: one provider
    assert {"lockstep:index:Index", "lockstep:index:Cutover", "lockstep:index:Check"} <= managed[provider]
    [provider_state] = [r for r in state["deployment"]["resources"] if r["urn"] == provider]
    assert provider_state["inputs"]["version"] == version

    project.write(without_path("v2"))
    project.run("up", "--yes", "--skip-preview")
    assert project.last_changes() == {"update": 2, "same": created["create"] - 2}  # the Cutover and the Check
    assert list(opensearch.indices.get_alias(name=unique)) == [f"{unique}-v2"]
    installed = tmp_path / "home" / "plugins" / f"resource-lockstep-v{version}"
    assert (installed / "venv" / "bin" / "python").exists()  # the launcher's own environment served it


@pytest.fixture
def no_cached_schema():
    """The YAML host caches a version-pinned package's schema beside the package's directory
    (ROOT/schema-lockstep.json) and trusts it while it is newer than the directory's mtime, which an
    edit of components/*.py does not change: no cached schema before the test, none left after."""
    cached = ROOT / f"schema-{plugin.PACKAGE}.json"
    cached.unlink(missing_ok=True)
    yield
    cached.unlink(missing_ok=True)


def test_a_yaml_program_using_the_components_directory_as_a_source_package_goes_up(
    tmp_path, servers, unique, opensearch, no_cached_schema
):
    project = bare_project(tmp_path)
    # The component's Python environment has pulumi-aws, whose plugin the CLI installs before it runs
    # a source package. It cannot be downloaded here: a stand-in is installed from a file, as on an
    # offline machine; an embedded release never starts it (it would fail `up` with this line).
    aws = stand_in_plugin(
        tmp_path / "aws", "aws", "no aws plugin on this machine: the embedded release must not start it"
    )
    project.run("plugin", "install", "resource", "aws", importlib.metadata.version("pulumi-aws"), "--file", str(aws))
    document = program(unique, "v1")
    del document["plugins"]
    document["packages"] = {"lockstep": str(ROOT / "components")}
    document["resources"]["release"]["options"] = {"version": plugin.package_version()}  # one provider
    release = document["resources"]["release"]["properties"]  # one slot and a small corpus: a short `up`
    release["slots"], release["corpus"]["size"] = {"blue": "v1"}, 40
    project.write(document)
    project.run("stack", "init", "source")
    project.run("up", "--yes", "--skip-preview")
    assert set(project.last_changes()) == {"create"}
    assert project.json("stack", "output") == {"pin": "v1", "liveIndex": f"{unique}-v1"}
    assert list(opensearch.indices.get_alias(name=unique)) == [f"{unique}-v1"]
    assert "lockstep" not in project.run("plugin", "ls").stdout  # served from the source, nothing installed
