"""`lockstep plan` (the PR preview's data facts) and `lockstep promote` (evidence-gated) on real servers."""

from __future__ import annotations

import difflib
import json
from dataclasses import replace

import pytest

from lockstep import config, orchestrator, report, stackfile
from lockstep.ops import check, clients, endpoints, live_state
from lockstep.plan import embed_rate_key
from tests.conftest import lockstep, stack_values

SIZE = 120


@pytest.fixture
def deployed(servers, scratch_stack, catalog):
    """A stack live on v1 with v2 warm in the green slot."""
    stacks, stack = scratch_stack(corpus={"size": SIZE})
    result = orchestrator.apply(config.load_stack(stack, stacks), catalog, progress=False, say=lambda _: None)
    assert result.record.passed
    yield stacks, stack
    endpoints.stop_local_slots(config.load_stack(stack, stacks))


def test_plan_rollback_to_the_standby_is_a_reversible_reattach(deployed, opensearch, catalog, monkeypatch, tmp_path):
    stacks, stack = deployed
    result = lockstep("plan", "--stack", stack, "--to", "v2", "--format", "json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert (plan["from"], plan["to"]) == ("v1", "v2")
    assert (plan["index_action"], plan["docs_to_embed"], plan["endpoint_action"], plan["reversible"]) == (
        "reattach",
        0,
        "flip",
        True,
    )
    assert plan["data_state"] == "observed"
    assert [s["kind"] for s in plan["steps"]] == ["cutover", "check"]

    markdown = lockstep("plan", "--stack", stack, "--to", "v2").stdout
    assert (
        "**reattach**" in markdown
        and "0 documents to embed" in markdown
        and "**flip**" in markdown
        and "instant flip back" in markdown
    )

    # The standby's index is gone (dropped by hand): the same rollback must rebuild it.
    settings = config.load_stack(stack, stacks)
    opensearch.indices.delete(index=settings.opensearch.index_name("v2"))
    plan = json.loads(lockstep("plan", "--stack", stack, "--to", "v2", "--format", "json").stdout)
    assert (plan["index_action"], plan["docs_to_embed"]) == ("provision", SIZE)
    # The apply that provisioned v2 measured its rate: the ETA is from it, not from a guess.
    rate = orchestrator.measured_rates()[embed_rate_key(catalog.get("v2"), settings.backfill.engine)]
    eta = max(round(SIZE / rate, 1), 0.1)  # to a tenth, and never 0 s for work that exists
    assert plan["steps"][0]["eta_seconds"] == plan["eta_seconds"] == eta
    markdown = lockstep("plan", "--stack", stack, "--to", "v2").stdout
    assert "**provision**" in markdown and f"{SIZE} documents to embed" in markdown
    assert f"ETA ~{eta:g}s (measured rate)" in markdown

    # The first plan on a machine that never ran v2 (no rates.json): an estimate from a short
    # calibration of v2's model, labelled as such — not "unknown".
    monkeypatch.setattr(orchestrator, "_rates_file", lambda: tmp_path / "rates.json")
    _, first = orchestrator.plan_for(config.load_stack(stack, stacks).with_pin("v2"), catalog)
    provision = next(s for s in first.steps if s.kind == "provision")
    assert provision.eta_estimated and provision.eta_seconds and first.eta_estimated
    assert "estimated: short calibration" in report.plan_markdown(first)


def test_plan_without_servers_renders_the_config_diff_and_says_so(scratch_stack):
    stacks, stack = scratch_stack()
    env = {"OPENSEARCH_URL": "http://127.0.0.1:9", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    result = lockstep("plan", "--stack", stack, "--to", "v2", "--format", "json", env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["data_state"] == "unknown" and plan["endpoint_action"] == "flip" and plan["to"] == "v2"


def changed_lines(before: str, after: str) -> list[str]:
    return sorted(
        line
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    )


def target_stack(stacks, source: str) -> str:
    """A downstream stack (pin v2 in green, v1 standby) that is promoted from `source`."""
    name = f"{source}-next"
    stackfile.write_stack(stacks, name, stack_values(name, pin="v2", promotedFrom=source), comment="downstream")
    return name


def test_promote_refuses_without_a_record(servers, scratch_stack):
    stacks, stack = scratch_stack()
    target = target_stack(stacks, stack)
    before = (stacks / f"Pulumi.{target}.yaml").read_text()
    result = lockstep("promote", "--from", stack, "--to", target)
    assert result.returncode == 1 and "no check record" in result.stderr
    assert (stacks / f"Pulumi.{target}.yaml").read_text() == before


def test_promote_refuses_a_failed_record(deployed, catalog):
    stacks, stack = deployed
    settings = config.load_stack(stack, stacks)
    ssm = clients.aws("ssm")
    pointer = live_state.read_pointer(ssm, settings.pointer_name)
    live_state.write_pointer(
        ssm,
        settings.pointer_name,
        live_state.Pointer("v1", "somewhere-else", pointer.index, pointer.artifact_sha256, pointer.switched_at),
    )
    assert lockstep("check", "--stack", stack).returncode == 1
    target = target_stack(stacks, stack)
    result = lockstep("promote", "--from", stack, "--to", target)
    # A pointer naming another endpoint fails recall too: the probe reads through lockstep.reader, which refuses it.
    assert result.returncode == 1 and "failed (pointer, recall)" in result.stderr


def test_promote_refuses_a_record_older_than_the_last_cutover(deployed):
    stacks, stack = deployed
    settings = config.load_stack(stack, stacks)
    ssm = clients.aws("ssm")
    pointer = live_state.read_pointer(ssm, settings.pointer_name)
    later = live_state.Pointer(
        pointer.version, pointer.endpoint, pointer.index, pointer.artifact_sha256, "2999-01-01T00:00:00Z"
    )
    live_state.write_pointer(ssm, settings.pointer_name, later)
    target = target_stack(stacks, stack)
    result = lockstep("promote", "--from", stack, "--to", target)
    assert result.returncode == 1 and "older than its last cutover" in result.stderr


def test_promote_refuses_evidence_it_cannot_tie_to_what_is_live_now(deployed, catalog):
    """A passing record is evidence only about the bytes the catalog names (in the record and in the
    pointer), and only if the check began after the last cutover: one that started before it may have
    read the old version. A pointer with no switched_at cannot show that at all (exit 2)."""
    stacks, stack = deployed
    settings, ssm = config.load_stack(stack, stacks), clients.aws("ssm")
    record, pointer = check.latest(settings), live_state.read_pointer(ssm, settings.pointer_name)
    assert record is not None and pointer is not None
    target = target_stack(stacks, stack)
    path = stacks / f"Pulumi.{target}.yaml"
    before, other = path.read_text(), "f" * 64

    def refused(record: check.CheckRecord, pointer: live_state.Pointer) -> tuple[int, str]:
        check.store(record, settings)
        live_state.write_pointer(ssm, settings.pointer_name, pointer)
        result = lockstep("promote", "--from", stack, "--to", target)
        assert path.read_text() == before
        return result.returncode, result.stderr

    code, said = refused(replace(record, artifact_sha256=other), pointer)
    assert code == 1 and "latest check is about v1 with artifact sha256 ffffffffffff…" in said
    code, said = refused(record, replace(pointer, artifact_sha256=other))
    assert code == 1 and "live pointer is about v1 with artifact sha256 ffffffffffff…" in said
    code, said = refused(record, replace(pointer, switched_at=""))
    assert code == 2 and "has no switched_at" in said
    rewritten = live_state.cutover(clients.opensearch(), ssm, settings, catalog.get("v1"), pointer.endpoint)
    assert rewritten.switched_at and live_state.read_pointer(ssm, settings.pointer_name) == rewritten  # the fix named
    straddling = replace(record, finished_at="2999-01-01T00:00:01Z")  # began before the cutover, ended after
    code, said = refused(straddling, replace(pointer, switched_at="2999-01-01T00:00:00Z"))
    assert code == 1 and f"(started {record.started_at}) is older than its last cutover (2999-01-01" in said

    check.store(record, settings)  # the same evidence, tied to what is live: promoted
    live_state.write_pointer(ssm, settings.pointer_name, pointer)
    assert lockstep("promote", "--from", stack, "--to", target).returncode == 0


def test_promote_with_fresh_evidence_edits_only_pin_and_slot_lines(deployed):
    stacks, stack = deployed
    target = target_stack(stacks, stack)
    path = stacks / f"Pulumi.{target}.yaml"
    before = path.read_text()
    result = lockstep("promote", "--from", stack, "--to", target, "--format", "json")
    assert result.returncode == 0, result.stderr
    pr = json.loads(result.stdout)
    assert pr["title"] == f"Promote v1 from {stack} to {target}" and "reembed-probe" in pr["body"]
    assert changed_lines(before, path.read_text()) == ["+  lockstep:pin: v1", "-  lockstep:pin: v2"]


def test_check_runs_from_settings_handed_over_in_the_environment(deployed, tmp_path, catalog):
    """What the Pulumi program's check command does in a repository with no stacks/ folder."""
    from components.model_release import settings_document

    stacks, stack = deployed
    document = settings_document(config.load_stack(stack, stacks), catalog)
    env = {config.SETTINGS_VARIABLE: document, "LOCKSTEP_STACKS_DIR": str(tmp_path / "nothing-here")}
    result = lockstep("check", "--stack", stack, "--json", env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pin"] == "v1"
    wrong = lockstep("check", "--stack", "other", env=env, timeout=120)
    assert wrong.returncode == 2 and "LOCKSTEP_STACK_SETTINGS: holds stack" in wrong.stderr
