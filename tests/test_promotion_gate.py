"""The program-level promotion gate: a stack with `promotedFrom: A` runs only a pin A verified.

Mock runtime (no Pulumi engine): the StackReference is answered as `pulumi:pulumi:StackReference`
with the source stack's `verifiedVersions` output (tests/test_program.py CaptureMocks).
"""

from __future__ import annotations

import pytest

from components.program import verified_versions
from tests.test_program import CaptureMocks, evaluate, with_values


def run(verified: list[str], pin: str = "v2"):
    values = with_values(pin=pin, promotedFrom="dev")
    return evaluate(values, stack="staging", mocks=CaptureMocks(upstream_verified=verified))


def test_a_pin_verified_upstream_deploys():
    result = run(verified=["v2"])
    references = result.of_type("pulumi:pulumi:StackReference")
    # The source stack's verified versions, and this stack's own last outputs (its deployed slots).
    assert sorted(inputs["name"] for inputs in references.values()) == [
        "organization/lockstep/dev",
        "organization/lockstep/staging",
    ]
    assert result.outputs["pin"] == "v2"


def test_a_pin_not_verified_upstream_fails_evaluation_naming_the_key():
    with pytest.raises(Exception, match=r"lockstep:pin: v2 is not verified in dev \(verified there: v1\)"):
        run(verified=["v1"])


def test_verified_versions_come_from_a_passing_check_record():
    assert verified_versions('{"pin": "v2", "passed": true}') == ["v2"]
    assert verified_versions('{"pin": "v2", "passed": false}') == []
    assert verified_versions("not json") == []
