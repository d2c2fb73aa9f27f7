"""lockstep under the real Pulumi engine: the CLI (lockstep.engine), a file backend, the embedded servers.

Each test drives an embedded stack isolated by name through `lockstep.up` (the program as an
Automation API inline program; lockstep's resources served by components/pulumi-resource-lockstep)
and asserts what the engine reports: the steps of a preview or an update, the refresh summary,
the state file. No `aws:` resource is involved: the embedded stack has none. When the engine
cannot be had, every test here fails with the one line saying how to build it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lockstep import config, engine, runtime, up
from lockstep.cli import cli
from lockstep.ops import clients, endpoints, live_state
from tests.conftest import stack_values

SIZE = 80
FLIP = {"lockstep-cutover": "update", "lockstep-check": "update"}


@pytest.fixture(scope="module")
def the_engine() -> engine.Engine:
    try:
        return engine.engine()
    except engine.EngineUnavailable as exc:
        pytest.fail(f"the Pulumi engine is missing ({exc}); build it with `make engine`", pytrace=False)


@pytest.fixture(scope="module")
def home(tmp_path_factory, servers):
    """A lockstep home of this module's own: its slot processes are its own to stop, no other
    session's teardown stops them (the servers' addresses are in the environment already)."""
    path = tmp_path_factory.mktemp("home")
    before = os.environ.get("LOCKSTEP_HOME")
    os.environ["LOCKSTEP_HOME"] = str(path)
    yield path
    for slot in runtime.endpoint_processes():
        slot.stop()
    if before is None:
        os.environ.pop("LOCKSTEP_HOME", None)
    else:
        os.environ["LOCKSTEP_HOME"] = before


class Release:
    """One embedded stack on its own file backend; `deploy`/`preview` take stack-config overrides."""

    def __init__(self, unique: str, catalog, backend: Path, stacks: Path):
        self.unique, self.catalog, self.backend, self.stacks = unique, catalog, backend, stacks
        self.output: list[str] = []
        self.settings = self.configure()

    def configure(self, **overrides) -> config.StackSettings:
        values = stack_values(self.unique, **{"corpus": {"size": SIZE}, **overrides})
        from lockstep import stackfile

        stackfile.write_stack(self.stacks, self.unique, values)
        self.settings = config.settings_from_config(self.unique, values, self.catalog)
        return self.settings

    def deploy(self, **overrides) -> up.Steps:
        if overrides:
            self.configure(**overrides)
        return up.run(self.settings, self.catalog, say=self.output.append, backend=self.backend)

    def preview(self, settings: config.StackSettings) -> up.Steps:
        return up.run(settings, self.catalog, preview=True, say=self.output.append, backend=self.backend)

    def stack(self, settings: config.StackSettings | None = None):
        return up.stack_for(settings or self.settings, self.catalog, self.backend)

    def lockstep(self, *args: str):
        env = {"LOCKSTEP_STACKS_DIR": str(self.stacks), "LOCKSTEP_PULUMI_BACKEND": str(self.backend)}
        return CliRunner().invoke(cli, list(args), env=env)

    def state_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.backend.rglob("*.json") if p.is_file())


@pytest.fixture
def release(the_engine, home, servers, unique, catalog, tmp_path, opensearch):
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    shutil.copy(config.STACKS_DIR / config.CATALOG_FILE, stacks / config.CATALOG_FILE)
    deployed = Release(unique, catalog, tmp_path / "backend", stacks)
    yield deployed
    endpoints.stop_local_slots(deployed.settings)
    opensearch.indices.delete(index=f"{unique}-*", params={"expand_wildcards": "all"})


def alias_targets(opensearch, settings) -> list[str]:
    return live_state.alias_targets(opensearch, settings.opensearch.alias_name)


def pointer_version(settings) -> str | None:
    pointer = live_state.read_pointer(clients.aws("ssm"), settings.pointer_name)
    return pointer.version if pointer else None


# ---------------------------------------------------------------------------------------- tests


def test_first_up_then_a_new_version_then_the_rollback_is_exactly_the_flip(release, opensearch):
    first = release.deploy(slots={"blue": "v1", "green": None})
    created = {name for name, op in first.changed().items() if op == "create"}
    assert {"lockstep-index-v1", "lockstep-blue-endpoint", "lockstep-cutover", "lockstep-check"} <= created
    assert not [typ for _, typ, _, _ in first.steps if typ.startswith("aws:")]
    assert alias_targets(opensearch, release.settings) == [f"{release.unique}-v1"]

    # v2 into the other slot and pinned: its artifact, index and slot are created, the cutover moves.
    upgrade = release.deploy(pin="v2", slots={"blue": "v1", "green": "v2"})
    changed = upgrade.changed()
    assert {name for name, op in changed.items() if op == "create"} == {
        "lockstep-artifacts-v2",
        "lockstep-index-v2",
        "lockstep-green",  # the slot's component
        "lockstep-green-endpoint",
    }
    assert changed["lockstep-cutover"] == "update" and changed["lockstep-check"] == "update"
    assert not [name for name in changed if name.startswith(("lockstep-index-v1", "lockstep-blue"))]
    assert alias_targets(opensearch, release.settings) == [f"{release.unique}-v2"]

    # Back to v1: only the cutover and the check; no index or slot is touched.
    rollback = release.deploy(pin="v1")
    assert rollback.changed() == FLIP
    assert rollback.classify() == {"index_action": "reattach", "endpoint_action": "flip"}
    assert alias_targets(opensearch, release.settings) == [f"{release.unique}-v1"]
    assert pointer_version(release.settings) == "v1"
    outputs = release.stack().outputs()
    assert json.loads(outputs["checkRecord"].value)["passed"] is True
    assert "v1" in outputs["verifiedVersions"].value

    # The same stack through the command: the engine's progress, then what the preview would do.
    previewed = release.lockstep("up", "--stack", release.unique, "--preview")
    assert previewed.exit_code == 0, previewed.output
    assert "Previewing update" in previewed.output
    assert previewed.output.strip().splitlines()[-1] == f"{release.unique}: index none, endpoints none"


def plan_kinds(release, version: str) -> dict[str, str]:
    result = release.lockstep("plan", "--stack", release.unique, "--to", version, "--format", "json")
    assert result.exit_code == 0, result.output
    planned = json.loads(result.output)
    return {"index_action": planned["index_action"], "endpoint_action": planned["endpoint_action"]}


def test_the_engines_preview_of_a_rollback_classifies_it_as_lockstep_plan_does(release):
    release.deploy(pin="v2", slots={"blue": "v1", "green": "v2"})
    cases = {
        "v1": {"index_action": "reattach", "endpoint_action": "flip"},  # the standby slot
        "v3": {"index_action": "provision", "endpoint_action": "deploy"},  # no index yet
    }
    for version, expected in cases.items():
        previewed = release.preview(release.settings.with_pin(version)).classify()
        assert previewed == plan_kinds(release, version) == expected, version

    # A retained index in neither slot: reattached, and its version deployed to the standby slot.
    release.deploy(retain=["v3"])
    previewed = release.preview(release.settings.with_pin("v3")).classify()
    assert previewed == plan_kinds(release, "v3") == {"index_action": "reattach", "endpoint_action": "deploy"}


def test_a_contaminated_index_fails_the_check_resource_and_a_backfill_lets_up_converge(release, opensearch):
    release.deploy(pin="v1", slots={"blue": "v1", "green": "v2"})
    live, standby = f"{release.unique}-v1", f"{release.unique}-v2"
    # A writer that embedded with v1 but stamped v2: the stamps look right (the cutover's catch-up
    # sees nothing to do), only the check's re-embedding probes can tell.
    hits = opensearch.search(index=live, body={"size": SIZE, "query": {"match_all": {}}})["hits"]["hits"]
    for hit in hits:
        opensearch.index(index=standby, id=hit["_id"], body={**hit["_source"], "model_version": "v2"})
    opensearch.indices.refresh(index=standby)

    with pytest.raises(up.EngineFailed) as failed:
        release.deploy(pin="v2")
    message = str(failed.value)
    assert "inconsistent after the deploy of v2" in message and "reembed-probe" in message, message
    assert "\n" not in message

    result = release.lockstep("backfill", "--stack", release.unique, "--version", "v2", "--full", "--quiet")
    assert result.exit_code == 0, result.output
    converged = release.deploy()
    assert converged.changed() == {"lockstep-check": "update"}
    record = json.loads(release.stack().outputs()["checkRecord"].value)
    assert record["passed"] and record["pin"] == "v2"


def test_auto_revert_under_lockstep_up_runs_a_second_up_back_to_the_verified_standby(release, opensearch):
    release.deploy(pin="v1", slots={"blue": "v1", "green": "v2"}, autoRevert=True)  # v1's check passes
    live, standby = f"{release.unique}-v1", f"{release.unique}-v2"
    hits = opensearch.search(index=live, body={"size": SIZE, "query": {"match_all": {}}})["hits"]["hits"]
    for hit in hits:  # v1's vectors stamped v2 in v2's index: only the check's probes can tell
        opensearch.index(index=standby, id=hit["_id"], body={**hit["_source"], "model_version": "v2"})
    opensearch.indices.refresh(index=standby)
    release.configure(pin="v2", slots={"blue": "v1", "green": "v2"}, autoRevert=True)

    result = release.lockstep("up", "--stack", release.unique)
    assert result.exit_code == 1, result.output
    assert "autoRevert: the check of v2 failed (reembed-probe" in result.output, result.output
    assert "Flipped back to v1" in result.output and "its check passed" in result.output, result.output
    assert f"`lockstep pin --stack {release.unique} v1`" in result.output, result.output
    assert alias_targets(opensearch, release.settings) == [live] and pointer_version(release.settings) == "v1"
    record = json.loads(release.stack().outputs()["checkRecord"].value)
    assert record["passed"] and record["pin"] == "v1"
    assert "pin: v2" in (release.stacks / f"Pulumi.{release.unique}.yaml").read_text()  # the file is not edited


def test_refresh_shows_an_alias_moved_by_hand_as_drift_on_the_cutover_and_up_restores_it(release, opensearch):
    release.deploy(pin="v1", slots={"blue": "v1", "green": "v2"})
    alias, live, standby = release.settings.opensearch.alias_name, f"{release.unique}-v1", f"{release.unique}-v2"
    opensearch.indices.update_aliases(
        body={"actions": [{"remove": {"index": live, "alias": alias}}, {"add": {"index": standby, "alias": alias}}]}
    )

    refreshed = up.Steps()
    result = release.stack().refresh(on_event=refreshed.on_event, on_output=release.output.append, color="never")
    assert result.summary.resource_changes.get("update") == 1, result.summary.resource_changes
    drifted = [line for line in result.stdout.splitlines() if re.match(r"^\s*~\s+lockstep:\S+ \S+ updated", line)]
    assert len(drifted) == 1 and "lockstep-cutover" in drifted[0], result.stdout

    restored = release.deploy()
    assert restored.changed() == FLIP
    assert alias_targets(opensearch, release.settings) == [live]


def test_the_cutover_resource_refuses_a_slot_that_serves_another_artifact_in_one_line(release, opensearch):
    """Issue 18, defect 5 under the engine: green fell back to v1's model; the flip to v2 fails, nothing moves."""
    release.deploy(pin="v1", slots={"blue": "v1", "green": "v2"})
    endpoints.deploy_local_slot(release.settings, "green", release.catalog.get("v1"))
    with pytest.raises(up.EngineFailed) as failed:
        release.deploy(pin="v2")
    message = str(failed.value)
    green = endpoints.endpoint_name(release.settings, "green")
    assert f"endpoint {green} serves v1" in message and "nothing was switched" in message, message
    assert "\n" not in message
    assert alias_targets(opensearch, release.settings) == [f"{release.unique}-v1"]
    assert pointer_version(release.settings) == "v1"


def test_destroy_keeps_the_live_the_standby_and_a_retained_index_and_says_why(release, opensearch):
    release.deploy(pin="v2", slots={"blue": "v1", "green": "v2"}, retain=["v3"])
    result = release.stack().destroy(on_output=release.output.append, color="never")
    assert result.summary.result == "succeeded"
    kept = {version: f"{release.unique}-{version}" for version in ("v1", "v2", "v3")}
    for version, name in kept.items():
        assert opensearch.indices.exists(index=name), version
    text = result.stdout
    assert f"kept index {kept['v2']}: it is the live pin" in text, text
    assert f"kept index {kept['v1']}: it serves the blue slot" in text, text
    assert f"kept index {kept['v3']}: it is retained for instant rollback" in text, text
    assert alias_targets(opensearch, release.settings) == [kept["v2"]]


def test_a_replaced_index_resource_leaves_the_physical_index_its_replacement_adopted(release, opensearch):
    release.deploy(pin="v1", slots={"blue": "v1", "green": "v2"})
    name = f"{release.unique}-v2"
    before = opensearch.count(index=name)["count"]
    stack = release.stack()
    urn = next(
        r["urn"] for r in stack.export_stack().deployment["resources"] if r["urn"].endswith("::lockstep-index-v2")
    )
    replaced = up.Steps()
    result = stack.up(replace=[urn], on_event=replaced.on_event, on_output=release.output.append, color="never")
    ops = {op for op, _, resource, _ in replaced.steps if resource == "lockstep-index-v2"}
    assert {"create-replacement", "delete-replaced"} <= ops, replaced.steps
    assert f"kept index {name}: it serves the green slot" in result.stdout, result.stdout
    assert opensearch.indices.exists(index=name)
    assert opensearch.count(index=name)["count"] == before == SIZE


def test_the_opensearch_password_is_a_secret_in_the_state_never_plain_text(release, monkeypatch):
    password = f"pw-{release.unique}-Secr3t"
    monkeypatch.setenv(clients.PASSWORD_VARIABLE, password)
    release.deploy(opensearch={"indexPrefix": release.unique, "auth": "basic", "username": "lockstep"})
    state = release.state_text()
    assert release.unique in state and "opensearchPassword" in state
    assert password not in state
    assert "ciphertext" in state


# ------------------------------------------------------------------------------------ bad input


def run_lockstep(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lockstep.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


def test_lockstep_up_on_a_stack_without_a_file_is_one_line_exit_2(tmp_path):
    shutil.copy(config.STACKS_DIR / config.CATALOG_FILE, tmp_path / config.CATALOG_FILE)
    result = run_lockstep("up", "--stack", "nosuch", env={"LOCKSTEP_STACKS_DIR": str(tmp_path)})
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "nosuch" in line


def test_lockstep_up_without_the_engine_is_one_line_exit_2_naming_the_fix(tmp_path, servers, scratch_stack):
    stacks, stack = scratch_stack()
    shutil.copy(config.STACKS_DIR / config.CATALOG_FILE, stacks / config.CATALOG_FILE)
    cache = tmp_path / "engine"
    cache.mkdir()
    (cache / "last-failure").write_text("lockstep engine: go build of pulumi v3.274.1 failed (see build.log)\n")
    env = {"LOCKSTEP_STACKS_DIR": str(stacks), "LOCKSTEP_ENGINE_CACHE": str(cache), "LOCKSTEP_ENGINE_FAILED": "1"}
    result = run_lockstep("up", "--stack", stack, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "go build of pulumi v3.274.1 failed" in line and "make engine" in line
