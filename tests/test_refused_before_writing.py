"""Issue #19: changes lockstep refuses before its first write — a pin deployed into the slot that
serves the live version, and a catalog entry that lies about its model (dimension) on a deployed
stack. Each: exit 2, one line naming the bad input and the fix, nothing changed anywhere.
(A lying catalog on a fresh stack is a row of tests/test_bad_input.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lockstep.errors import ConfigError
from lockstep.ops import clients, index
from lockstep.plan import Observed, ObservedIndex, release_plan
from tests.test_bad_input import edit
from tests.test_servers_identity import deployed, world  # noqa: F401  (the deployed stack fixture)


def lockstep(stacks, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lockstep.cli", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "LOCKSTEP_STACKS_DIR": str(stacks)},
        timeout=300,
    )


def one_line(completed: subprocess.CompletedProcess) -> str:
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert "Traceback" not in completed.stderr
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, completed.stderr
    return lines[0]


def test_the_plan_refuses_a_new_version_in_the_slot_that_serves_the_live_one(make_settings, catalog):
    """Pure: `pin: v3` with `blue: v3` while blue serves the live v1 is refused by the plan itself,
    so apply, the PR preview and the drill all refuse it; the standby slot is accepted."""
    observed = Observed(
        indices={v: ObservedIndex(doc_count=200) for v in ("v1", "v2")},
        alias_targets=("x-v1",),
        pointer_version="v1",
        slots_deployed={"blue": "v1", "green": "v2"},
        corpus_size=200,
    )
    into_live = make_settings(pin="v3", slots={"blue": "v3", "green": "v2"})
    with pytest.raises(ConfigError, match=r"slots.blue: v3 would replace the live v1 .* put v3 in the green slot"):
        release_plan(catalog, into_live, observed)

    into_standby = make_settings(pin="v3", slots={"blue": "v1", "green": "v3"})
    steps = [(s.kind, s.slot) for s in release_plan(catalog, into_standby, observed).steps]
    assert ("deploy_slot", "green") in steps and ("deploy_slot", "blue") not in steps

    # Replacing the live version's slot with another standby before the pin moves is refused too.
    standby_over_live = make_settings(pin="v2", slots={"blue": "v3", "green": "v2"})
    with pytest.raises(ConfigError, match=r"keep blue: v1 until v2 is live"):
        release_plan(catalog, standby_over_live, observed)


@pytest.mark.parametrize("command", ["apply", "plan"])
def test_pin_into_the_live_slot_is_one_line_exit_2_and_changes_nothing(deployed, command):  # noqa: F811
    stacks, settings = deployed
    path = stacks / f"Pulumi.{settings.stack}.yaml"
    original = path.read_bytes()
    edit(path, lambda d: d["config"].update({"lockstep:pin": "v3", "lockstep:slots": {"blue": "v3", "green": "v2"}}))
    try:
        before = world(stacks, settings)
        argv = (
            ["apply", "--stack", settings.stack, "--quiet"]
            if command == "apply"
            else ["plan", "--stack", settings.stack]
        )
        line = one_line(lockstep(stacks, *argv))
        for word in ("slots.blue", "v3", "live v1", "green slot", f"lockstep pin --stack {settings.stack} v3"):
            assert word in line, f"{word!r} not in {line!r}"
        assert world(stacks, settings) == before
    finally:
        path.write_bytes(original)


@pytest.mark.parametrize("command", ["apply", "backfill"])
def test_a_catalog_dimension_the_artifact_does_not_produce_is_refused_on_a_deployed_stack(
    deployed,  # noqa: F811
    command,
):
    """v2 (the standby, its index built) claims dimension 128: its model produces 192. Refused by
    loading the artifact and encoding one probe, before anything is written."""
    stacks, settings = deployed
    catalog_file = stacks / "catalog.yaml"
    original = catalog_file.read_bytes()
    edit(catalog_file, lambda d: d["versions"]["v2"].__setitem__("dimension", 128))
    try:
        before = world(stacks, settings)
        argv = (
            ["apply", "--stack", settings.stack, "--quiet"]
            if command == "apply"
            else ["backfill", "--stack", settings.stack, "--version", "v2", "--quiet"]
        )
        line = one_line(lockstep(stacks, *argv))
        for word in ("v2", "dimension 128", "192-dimensional", "fix versions.v2 in the catalog"):
            assert word in line, f"{word!r} not in {line!r}"
        assert world(stacks, settings) == before
    finally:
        catalog_file.write_bytes(original)


@pytest.mark.parametrize("command", ["plan", "apply", "backfill"])
def test_an_index_an_earlier_run_built_with_a_wrong_dimension_is_named_with_the_fix(
    deployed,  # noqa: F811
    catalog,
    command,
):
    """What a lying catalog left behind before lockstep refused it: v3's index with dimension 64
    (the catalog, now corrected, says 128). plan, apply and backfill name it and the fix."""
    stacks, settings = deployed
    path = stacks / f"Pulumi.{settings.stack}.yaml"
    original = path.read_bytes()
    name = settings.opensearch.index_name("v3")
    search = clients.opensearch()
    search.indices.create(
        index=name, body=index.index_body(settings, catalog.get("v3").model_copy(update={"dimension": 64}))
    )
    edit(path, lambda d: d["config"].__setitem__("lockstep:retain", ["v3"]))
    try:
        before = world(stacks, settings)
        argv = {
            "plan": ["plan", "--stack", settings.stack],
            "apply": ["apply", "--stack", settings.stack, "--quiet"],
            "backfill": ["backfill", "--stack", settings.stack, "--version", "v3", "--quiet"],
        }[command]
        line = one_line(lockstep(stacks, *argv))
        for word in (f"index {name}", "dimension 64 where the catalog says 128", f"DELETE /{name}", "lockstep apply"):
            assert word in line, f"{word!r} not in {line!r}"
        assert world(stacks, settings) == before
    finally:
        path.write_bytes(original)
        search.indices.delete(index=name)
