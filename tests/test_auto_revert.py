"""autoRevert (issue 18): a failed post-deploy check flips back to the last version whose check
passed, when it is the warm standby with a synced index; the check runs again; both are recorded.

Real servers: OpenSearch, moto, local endpoint slots. The contamination is what a writer without
lockstep does during the cutover window: vectors stamped with another version in the new index.
"""

from __future__ import annotations

import stat

import numpy as np

from lockstep import config, orchestrator, promote, stackfile, up
from lockstep.ops import check, clients, endpoints, live_state
from tests.conftest import lockstep

SIZE = 40


def contaminate(settings: config.StackSettings) -> None:
    """Documents of v1 written into v2's index just before it goes live (a naive writer)."""
    client = clients.opensearch(settings.opensearch)
    name = settings.opensearch.index_name("v2")
    rng = np.random.default_rng(7)
    for n in range(5):
        vector = rng.normal(size=192)
        client.index(
            index=name,
            id=f"foreign-{n}",
            body={
                "doc_id": f"foreign-{n}",
                "text": f"foreign document {n}",
                "model_version": "v1",
                "content_sha256": "0" * 64,
                "embedding": (vector / np.linalg.norm(vector)).tolist(),
            },
        )
    client.indices.refresh(index=name)


def test_auto_revert_flips_back_after_a_contaminated_cutover(servers, scratch_stack, catalog, opensearch):
    stacks, stack = scratch_stack(corpus={"size": SIZE}, autoRevert=True)  # pin v1 (blue), v2 in green
    first = orchestrator.apply(config.load_stack(stack, stacks), catalog, progress=False, say=lambda _: None)
    assert first.record.passed and first.revert is None

    stackfile.set_pin(stack, "v2", stacks)
    settings = config.load_stack(stack, stacks)
    result = orchestrator.apply(settings, catalog, progress=False, say=lambda _: None, before_cutover=contaminate)

    assert not result.record.passed and result.record.pin == "v2"
    assert "foreign-versions" in {c.name for c in result.record.failures}
    revert = result.revert
    assert revert.to_version == "v1" and revert.record.passed and revert.record.pin == "v1"
    assert live_state.alias_targets(opensearch, settings.opensearch.alias_name) == [
        settings.opensearch.index_name("v1")
    ]
    assert live_state.read_pointer(clients.aws("ssm"), settings.pointer_name).version == "v1"
    summary = revert.summary()
    assert "the check of v2 failed (foreign-versions" in summary and "Flipped back to v1" in summary
    assert f"`lockstep pin --stack {stack} v1`" in summary and len(summary.splitlines()) <= 10
    # Both outcomes are recorded: the failed v2 check and the passing v1 check after the flip.
    assert promote.passed_newest_first(settings, catalog, newest_only=True) == ["v1"]
    assert config.load_stack(stack, stacks).pin == "v2"  # the stack file is the team's to change
    assert "Both check records are stored" in summary

    # issue 24 (8): `lockstep check` now says first that live is v1 by autoRevert while the file pins v2,
    # and checks v1 as what it is (302bdd0 checked v2 against the live v1: "contaminated", stored).
    checked = lockstep("check", "--stack", stack, env={"LOCKSTEP_STACKS_DIR": str(stacks)})
    assert checked.returncode == 0, checked.stdout + checked.stderr
    first_line = checked.stdout.splitlines()[0]
    assert first_line.startswith("lockstep: live is v1 by autoRevert while") and "pins v2" in first_line
    assert f"`lockstep pin --stack {stack} v1`" in first_line
    assert check.latest(settings).pin == "v1" and check.latest(settings).passed

    # `lockstep pin` makes the revert permanent and keeps the stack file's mode (302bdd0 left it 600).
    path = config.stack_path(stack, stacks)
    path.chmod(0o644)
    stackfile.set_pin(stack, "v1", stacks)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 and config.load_stack(stack, stacks).pin == "v1"
    endpoints.stop_local_slots(settings)


def test_auto_revert_never_flips_into_a_version_that_is_not_the_standby(servers, scratch_stack, catalog, monkeypatch):
    stacks, stack = scratch_stack(corpus={"size": SIZE}, slots={"blue": "v1", "green": None}, autoRevert=True)
    assert orchestrator.apply(
        config.load_stack(stack, stacks), catalog, progress=False, say=lambda _: None
    ).record.passed
    # v2 goes live in green and blue is emptied: v1, the last version that passed, is no standby.
    stackfile.set_pin(stack, "v2", stacks)
    settings = config.load_stack(stack, stacks).with_pin("v2")
    settings = settings.model_copy(update={"slots": config.Slots(blue=None, green="v2")})
    result = orchestrator.apply(settings, catalog, progress=False, say=lambda _: None, before_cutover=contaminate)
    assert not result.record.passed
    assert result.revert.to_version is None and "is not the standby" in result.revert.why
    assert "Not reverted" in result.revert.summary()
    # issue 24 (8): only the failed record is stored, and the summary says so.
    assert "Both check records" not in result.revert.summary()
    assert "The failed check record of v2 is stored" in result.revert.summary()
    stack_file = config.stack_path(stack, stacks)
    # `lockstep up`'s revert acts only on a check record this update wrote (started at or after it).
    assert up.revert_after_failed_check(settings, catalog, stack_file, since="9999-01-01T00:00:00Z") is None
    acted = up.revert_after_failed_check(settings, catalog, stack_file, since=result.record.started_at)
    assert acted is not None and acted.failed.pin == "v2" and acted.to_version is None

    # The update back to v1 fails before its cutover (a slot not serving, a guard): v2 is still live,
    # and the summary says "Not reverted", never "Flipped back to v1 … Live is v1".
    def decided(env, catalog_, corpus, failed):
        return orchestrator.Revert(stack, failed, "v1", "v1 passed")

    def refused(*args, **kwargs):
        raise up.EngineFailed("the standby slot is not serving")

    monkeypatch.setattr(orchestrator, "revert_target", decided)
    monkeypatch.setattr(up, "run", refused)
    kept = up.revert_after_failed_check(settings, catalog, stack_file, since=result.record.started_at)
    assert kept.to_version is None and kept.why == "the update back to v1 failed (the standby slot is not serving)"
    assert "Flipped back" not in kept.summary() and "v2 is live and inconsistent" in kept.summary()
    endpoints.stop_local_slots(settings)
