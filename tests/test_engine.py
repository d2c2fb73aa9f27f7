"""lockstep under the real Pulumi engine, on the user's path: `pulumi preview|up|refresh|destroy
--stack <scratch>` as subprocesses on the repository's own Pulumi.yaml + __main__.py (tests/pulumi_cli.py:
the CLI and Pulumi's Python language host from lockstep.engine, a file backend and a passphrase set
as a user sets them, the plugin found through Pulumi.yaml's `plugins.providers` — nothing of
lockstep's on PATH), on the embedded servers.

Each test drives an embedded stack isolated by name and asserts what the engine reports: the steps
of a preview or an update (its event log), the refresh and destroy output, the state file. No `aws:`
resource is involved: the embedded stack has none. `lockstep up` is tested as the thin convenience
over the same program. When the engine cannot be had, every test here fails with the one line
saying how to build it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from components.providers.opensearch import read_kept
from lockstep import config, engine, runtime, up
from lockstep.cli import cli
from lockstep.ops import clients, endpoints, live_state
from tests.conftest import stack_values
from tests.pulumi_cli import CliFailed, UserStack

SIZE = 80
FLIP = {"lockstep-cutover": "update", "lockstep-check": "update"}
# Each CLI operation starts the Python host, uv and the plugin: five of them took over pyproject's
# 600 s per test on 2 cores shared at load ~16 (405-520 s for three to five here).
pytestmark = pytest.mark.timeout(1500)


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
    """One embedded stack of the repository's project on its own file backend, driven by the `pulumi`
    CLI; `deploy`/`preview` take stack-config overrides. Its stack file sits in `stacks` (with the
    catalog), where `lockstep` commands read it too."""

    def __init__(self, unique: str, catalog, found: engine.Engine, stacks: Path):
        self.unique, self.catalog, self.stacks = unique, catalog, stacks
        self.cli = UserStack(found, unique, stacks)
        self.values = stack_values(unique, corpus={"size": SIZE})
        self.cli.init(self.values)
        self.settings = config.settings_from_config(unique, self.values, catalog)

    @property
    def output(self) -> list[str]:
        return self.cli.output

    def configure(self, **overrides) -> config.StackSettings:
        self.values = stack_values(self.unique, **{"corpus": {"size": SIZE}, **overrides})
        self.cli.write_config(self.values)
        self.settings = config.settings_from_config(self.unique, self.values, self.catalog)
        return self.settings

    def deploy(self, **overrides) -> up.Steps:
        if overrides:
            self.configure(**overrides)
        return self.cli.up()

    def preview(self, pin: str) -> up.Steps:
        """The engine's preview of the stack file as `lockstep pin PIN` would leave it (placed in the
        standby slot when in neither); the file is put back after."""
        kept, moved = self.values, self.settings.with_pin(pin)
        self.cli.write_config({**kept, "pin": pin, "slots": moved.slots.as_dict()})
        try:
            return self.cli.preview()
        finally:
            self.cli.write_config(kept)

    def outputs(self) -> dict:
        return self.cli.outputs()

    def lockstep(self, *args: str):
        """`lockstep ARGS` on this stack, with the user's backend and passphrase in the environment."""
        keys = ("PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE", "PULUMI_HOME")
        env = {"LOCKSTEP_STACKS_DIR": str(self.stacks)} | {k: self.cli.env[k] for k in keys}
        return CliRunner().invoke(cli, list(args), env=env)


@pytest.fixture
def release(the_engine, home, servers, unique, catalog, tmp_path, opensearch):
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    shutil.copy(config.STACKS_DIR / config.CATALOG_FILE, stacks / config.CATALOG_FILE)
    deployed = Release(unique, catalog, the_engine, stacks)
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
    # Registered with lockstep's version: the engine ran that version's plugin for every resource.
    version = importlib.metadata.version("lockstep")
    providers = {r["provider"].rsplit("::", 1)[0] for r in release.cli.resources() if r.get("provider")}
    assert providers == {
        f"urn:pulumi:{release.unique}::lockstep::pulumi:providers:lockstep::default_{version.replace('.', '_')}"
    }

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
    outputs = release.outputs()
    assert json.loads(outputs["checkRecord"])["passed"] is True
    assert "v1" in outputs["verifiedVersions"]

    # The same stack through `lockstep up` (the user's backend and passphrase from the environment):
    # the engine's progress, then what the preview would do.
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
        previewed = release.preview(pin=version).classify()
        assert previewed == plan_kinds(release, version) == expected, version

    # A retained index in neither slot: reattached, and its version deployed to the standby slot.
    release.deploy(retain=["v3"])
    previewed = release.preview(pin="v3").classify()
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

    with pytest.raises(CliFailed) as failed:
        release.deploy(pin="v2")
    (message,) = [line for line in failed.value.lines if "inconsistent" in line]
    assert "inconsistent after the deploy of v2" in message and "reembed-probe" in message, message

    result = release.lockstep("backfill", "--stack", release.unique, "--version", "v2", "--full", "--quiet")
    assert result.exit_code == 0, result.output
    converged = release.deploy()
    assert converged.changed() == {"lockstep-check": "update"}
    record = json.loads(release.outputs()["checkRecord"])
    assert record["passed"] and record["pin"] == "v2"


def test_auto_revert_under_lockstep_up_runs_a_second_up_back_to_the_verified_standby(release, opensearch):
    # v1's check passes (a plain `pulumi up`: autoRevert is `lockstep up`'s, set only for it below)
    release.deploy(pin="v1", slots={"blue": "v1", "green": "v2"})
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
    record = json.loads(release.outputs()["checkRecord"])
    assert record["passed"] and record["pin"] == "v1"
    assert "pin: v2" in (release.stacks / f"Pulumi.{release.unique}.yaml").read_text()  # the file is not edited


def test_refresh_shows_an_alias_moved_by_hand_as_drift_on_the_cutover_and_up_restores_it(release, opensearch):
    release.deploy(pin="v1", slots={"blue": "v1", "green": "v2"})
    alias, live, standby = release.settings.opensearch.alias_name, f"{release.unique}-v1", f"{release.unique}-v2"
    opensearch.indices.update_aliases(
        body={"actions": [{"remove": {"index": live, "alias": alias}}, {"add": {"index": standby, "alias": alias}}]}
    )

    result = release.cli.refresh()
    history = json.loads(release.cli.run("stack", "history", "--json").stdout)
    # The Cutover's read sees the alias; the Check's read re-runs the check, which fails on it.
    assert history[0]["kind"] == "refresh" and history[0]["resourceChanges"].get("update") == 2, history[0]
    drifted = [line for line in result.stdout.splitlines() if re.match(r"^\s*~\s+lockstep:\S+ \S+ updated", line)]
    assert sorted(line.split()[2] for line in drifted) == ["lockstep-check", "lockstep-cutover"], result.stdout

    restored = release.deploy()
    assert restored.changed() == FLIP
    assert alias_targets(opensearch, release.settings) == [live]


def test_data_drift_is_drift_of_the_check_and_up_refresh_fails_naming_the_failed_checks(release, opensearch):
    """Issue 23: a quarter of the live index's vectors from the other model, stamps untouched."""
    release.deploy(pin="v1", slots={"blue": "v1", "green": "v2"})
    live, standby = f"{release.unique}-v1", f"{release.unique}-v2"
    hits = opensearch.search(index=standby, body={"size": SIZE // 4, "query": {"match_all": {}}})["hits"]["hits"]
    for hit in hits:
        opensearch.index(index=live, id=hit["_id"], body={**hit["_source"], "model_version": "v1"})
    opensearch.indices.refresh(index=live)
    assert release.deploy().changed() == {}  # nothing in the config changed: a plain up is a no-op

    previewed = release.cli.preview("--refresh")
    assert previewed.changed() == {"lockstep-check": "update"}, previewed.steps
    with pytest.raises(CliFailed) as failed:
        release.cli.up("--refresh")
    said = " ".join(failed.value.lines)
    assert "inconsistent after the deploy of v1" in said and "reembed-probe" in said, said


def test_the_cutover_resource_refuses_a_slot_that_serves_another_artifact_in_one_line(release, opensearch):
    """Issue 18, defect 5 under the engine: green fell back to v1's model; the flip to v2 fails, nothing moves."""
    release.deploy(pin="v1", slots={"blue": "v1", "green": "v2"})
    endpoints.deploy_local_slot(release.settings, "green", release.catalog.get("v1"))
    with pytest.raises(CliFailed) as failed:
        release.deploy(pin="v2")
    green = endpoints.endpoint_name(release.settings, "green")
    (message,) = [line for line in failed.value.lines if "nothing was switched" in line]
    assert f"endpoint {green} serves v1" in message, message
    assert alias_targets(opensearch, release.settings) == [f"{release.unique}-v1"]
    assert pointer_version(release.settings) == "v1"


def test_up_replace_of_the_cutover_and_a_slot_deletes_first_and_keeps_both_working(release, opensearch):
    """`pulumi up --replace` does not ask the provider's diff: replaced create-first, the old
    Cutover's delete released the record the new one had just written (the Index guard then let a
    replaced live index through), and the old slot's delete stopped the process the new one adopted."""
    release.deploy(pin="v1", slots={"blue": "v1", "green": "v2"})
    urns = {r["urn"].rsplit("::", 1)[1]: r["urn"] for r in release.cli.resources()}
    release.cli.up("--replace", urns["lockstep-cutover"], "--replace", urns["lockstep-blue-endpoint"])

    kept = read_kept(clients.aws("ssm"), release.settings.pointer_name)
    assert kept is not None and not kept.get("released"), kept
    live = endpoints.local_slot(release.settings, "blue")
    assert live is not None and live.describe()["version"] == "v1"
    assert alias_targets(opensearch, release.settings) == [f"{release.unique}-v1"]


def test_destroy_keeps_the_live_the_standby_and_a_retained_index_and_says_why(release, opensearch):
    release.deploy(pin="v2", slots={"blue": "v1", "green": "v2"}, retain=["v3"])
    result = release.cli.destroy()
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
    urn = next(r["urn"] for r in release.cli.resources() if r["urn"].endswith("::lockstep-index-v2"))
    replaced, result = release.cli.operation("up", "--yes", "--skip-preview", "--replace", urn)
    ops = {op for op, _, resource, _ in replaced.steps if resource == "lockstep-index-v2"}
    assert {"create-replacement", "delete-replaced"} <= ops, replaced.steps
    assert f"left index {name} in place: its replacement holds it" in result.stdout, result.stdout
    assert opensearch.indices.exists(index=name)
    assert opensearch.count(index=name)["count"] == before == SIZE


def test_the_opensearch_password_is_a_secret_in_the_state_never_plain_text(release):
    """The password as a user gives it: encrypted stack config (`pulumi config set --secret`)."""
    password = f"pw-{release.unique}-Secr3t"
    release.cli.run("config", "set", "--secret", "lockstep:opensearchPassword", password, *release.cli.config)
    release.deploy(opensearch={"indexPrefix": release.unique, "auth": "basic", "username": "lockstep"})
    assert password not in release.cli.config_file.read_text()
    state = release.cli.state_text()
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
