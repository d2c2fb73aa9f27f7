"""The promotion gate keeps history and is a precondition (issue 18, defect 6).

Mock runtime for the program (the source stack's outputs and the target's own last outputs are
answered per stack name, as the engine's readStackOutputs call); moto for the check records the
history is read from.
"""

from __future__ import annotations

import pytest

from lockstep import promote
from lockstep.ops import check
from tests.test_program import CaptureMocks, evaluate, with_values


class References(CaptureMocks):
    """Answers the source stack's verifiedVersions and the target's own deployed slots."""

    def __init__(self, verified: list[str], deployed_slots: dict | None = None):
        super().__init__(upstream_verified=tuple(verified), deployed_slots=deployed_slots)


def prod(pin: str, mocks: References, slots: dict | None = None):
    values = with_values(pin=pin, slots=slots or {"blue": "v1", "green": "v2"}, promotedFrom="staging")
    return evaluate(values, stack="prod", mocks=mocks)


def test_prod_on_a_version_staging_verified_earlier_evaluates():
    # staging has moved on to v2 since it verified v1; prod stays on v1.
    run = prod("v1", References(verified=["v1", "v2"]))
    assert run.outputs["pin"] == "v1"
    assert run.inputs("lockstep-cutover")["version"] == "v1"


def test_a_version_prod_already_runs_in_a_slot_is_exempt():
    # staging's history does not hold v1 (say, prod ran it before promotion existed): flipping back to it passes.
    run = prod("v1", References(verified=["v3"], deployed_slots={"blue": "v1", "green": "v2"}))
    assert run.inputs("lockstep-cutover")["version"] == "v1"


def test_a_refused_gate_registers_nothing_of_the_release():
    mocks = References(verified=["v1"], deployed_slots={"blue": "v1", "green": "v3"})
    with pytest.raises(Exception, match=r"lockstep:pin: v2 is not verified in staging \(verified there: v1\)"):
        prod("v2", mocks)
    # The gate read both stacks' outputs and registered nothing: no component, index, cutover or aws: resource.
    assert sorted(mocks.stack_reads) == ["organization/lockstep/prod", "organization/lockstep/staging"]
    assert mocks.resources == {}


def test_verified_versions_are_every_pin_a_passing_record_of_the_catalogs_bytes_names(servers, make_settings, catalog):
    from lockstep.ops import artifacts, clients

    settings = make_settings()
    artifacts.ensure_bucket(clients.aws("s3"), settings.artifacts.bucket)
    assert promote.verified_versions(settings, catalog) == []

    def record(pin: str, passed: bool, at: str, sha: str | None = None) -> None:
        checks = [check.Check("alias", passed, "docs-x", "docs-x")]
        sha = sha or catalog.get(pin).artifact_sha256
        check.store(check.CheckRecord(settings.stack, pin, sha, at, at, "test", checks), settings)

    record("v1", True, "2026-11-01T10:00:00Z")
    record("v2", False, "2026-11-02T10:00:00Z")
    record("v3", True, "2026-11-03T10:00:00Z")
    record("v3", False, "2026-11-04T10:00:00Z")  # a later failure does not unverify what passed
    record("v4", True, "2026-11-05T10:00:00Z", sha="0" * 64)  # bytes the catalog no longer names for v4
    assert promote.verified_versions(settings, catalog) == ["v1", "v3"]
    # autoRevert's candidates: a pin whose newest record failed (v3) is not one.
    assert promote.passed_newest_first(settings, catalog, newest_only=True) == ["v1"]


def test_a_check_that_began_earlier_and_finished_later_does_not_replace_the_latest(servers, make_settings):
    """Two checks overlapping: the one that began later observed later, so it stays latest.json
    (what promotion reads); the other is kept in the history."""
    from lockstep.ops import artifacts, clients

    settings = make_settings()
    s3 = clients.aws("s3")
    artifacts.ensure_bucket(s3, settings.artifacts.bucket)
    alias = [check.Check("alias", True, "docs-x", "docs-x")]
    later = check.CheckRecord(
        settings.stack, "v2", "0" * 64, "2026-11-01T10:00:05Z", "2026-11-01T10:00:10Z", "t", alias
    )
    failing = [check.Check("alias", False, "docs-y", "docs-x")]
    earlier = check.CheckRecord(
        settings.stack, "v2", "0" * 64, "2026-11-01T10:00:00Z", "2026-11-01T10:00:20Z", "t", failing
    )
    check.store(later, settings)
    kept = check.store(earlier, settings)
    assert check.latest(settings) == later
    stored = s3.get_object(Bucket=settings.artifacts.bucket, Key=kept)["Body"].read()
    assert check.CheckRecord.parse(stored, kept) == earlier


def test_a_record_a_newer_lockstep_wrote_is_read_and_one_that_is_no_record_is_one_line(servers, make_settings, catalog):
    """Stacks are checked and promoted by different lockstep versions (CI runners, a team's laptop):
    fields this one does not know are left out, not a TypeError; a record that is not one (not JSON,
    fields missing) is one line naming it and the fix, not a traceback."""
    import json

    from lockstep.errors import IntegrityError
    from lockstep.ops import artifacts, clients

    settings = make_settings()
    s3 = clients.aws("s3")
    artifacts.ensure_bucket(s3, settings.artifacts.bucket)
    at = "2026-12-01T10:00:00Z"
    sha = catalog.get("v2").artifact_sha256
    newer = check.CheckRecord(settings.stack, "v2", sha, at, at, "9.9", [check.Check("alias", True, "a", "a")])
    data = {**newer.to_dict(), "signed_by": "ci"}
    data["checks"][0]["took_ms"] = 12
    key = f"{check.RECORD_PREFIX}/{settings.stack}/20261201T100000Z-v2.json"
    for name in (key, f"{check.RECORD_PREFIX}/{settings.stack}/latest.json"):
        s3.put_object(Bucket=settings.artifacts.bucket, Key=name, Body=json.dumps(data).encode())
    assert check.latest(settings) == newer
    assert promote.verified_versions(settings, catalog) == ["v2"]

    s3.put_object(Bucket=settings.artifacts.bucket, Key=key, Body=b"<html>not a record</html>")
    with pytest.raises(IntegrityError, match=rf"^check record s3://\S+/{key} is not one this lockstep can read"):
        promote.verified_versions(settings, catalog)
