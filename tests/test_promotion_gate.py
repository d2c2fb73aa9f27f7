"""The promotion gate of the `ModelRelease` component: a release with `promotedFrom: A` places in
its slots only versions A verified, or versions its own slots already run.

Mock runtime (no Pulumi engine): the engine's `pulumi:pulumi:readStackOutputs` call is answered
with the source's `verifiedVersions` and this stack's `slots` (tests/pulumi_harness.py CaptureMocks).
tests/test_promotion_engine.py runs the same gate under the real engine, three stacks deep.
"""

from __future__ import annotations

import pulumi
import pytest

from components.program import verified_versions
from tests.test_program import CaptureMocks, evaluate, with_values


def run(verified: list[str], pin: str = "v2", slots: dict | None = None, deployed: dict | None = None):
    values = with_values(pin=pin, promotedFrom="dev", **({"slots": slots} if slots else {}))
    mocks = CaptureMocks(upstream_verified=verified, deployed_slots=deployed)
    return evaluate(values, stack="staging", mocks=mocks), mocks


def test_a_release_whose_slot_versions_were_verified_upstream_deploys():
    result, mocks = run(verified=["v1", "v2"])  # dev's stack file: v1 in blue, v2 in green, pin v2
    # The source stack's verified versions, and this stack's own last outputs (its deployed slots).
    assert sorted(mocks.stack_reads) == ["organization/lockstep/dev", "organization/lockstep/staging"]
    references = result.of_type("pulumi:pulumi:StackReference")
    assert [inputs["name"] for inputs in references.values()] == ["organization/lockstep/dev"]
    assert result.outputs["pin"] == "v2"


def test_an_unverified_pin_is_refused_before_anything_is_registered():
    with pytest.raises(Exception, match=r"lockstep:pin: v2 is not verified in dev \(verified there: v1\)") as refused:
        run(verified=["v1"])
    assert "\n" not in str(refused.value).strip()


def test_an_unverified_standby_is_refused_too_naming_its_slot():
    """The gate covers every version placed in a slot, not only the pin: v3 in the standby would
    run as prod's rollback target unverified."""
    with pytest.raises(Exception, match=r"lockstep:slots.blue: v3 is not verified in dev \(verified there: v2\)"):
        run(verified=["v2"], slots={"blue": "v3", "green": "v2"})


def test_a_version_this_stack_already_runs_in_a_slot_passes_the_gate():
    """A rollback to what the stack runs is never blocked by the source having moved on."""
    result, _ = run(verified=["v3"], pin="v1", deployed={"blue": "v1", "green": "v2"})
    assert result.outputs["pin"] == "v1"


def test_verified_versions_come_from_a_passing_check_record():
    assert verified_versions('{"pin": "v2", "passed": true}') == ["v2"]
    assert verified_versions('{"pin": "v2", "passed": false}') == []
    assert verified_versions("not json") == []


def test_a_yaml_or_typescript_consumer_gets_the_gate_through_construct():
    """The package's `construct` (what a YAML or TypeScript program's engine calls) runs the same
    gate: the consumer's project names the stacks it reads."""
    from components import plugin
    from tests.pulumi_harness import run_mocked
    from tests.test_plugin import TOKEN, dev_properties, wire_inputs

    provider = plugin.build_provider()
    inputs = wire_inputs({**dev_properties(), "promotedFrom": "dev"})  # pin v2, v1 in the standby
    mocks = CaptureMocks(upstream_verified=("v2",))

    def body():
        return provider.construct("lockstep", TOKEN, inputs, pulumi.ResourceOptions()).urn

    with pytest.raises(Exception, match=r"lockstep:slots.blue: v1 is not verified in dev \(verified there: v2\)"):
        run_mocked(body, stack="staging", project="consumer", mocks=mocks, config={"lockstep:region": "eu-west-1"})
    assert sorted(mocks.stack_reads) == ["organization/consumer/dev", "organization/consumer/staging"]
    assert mocks.resources == {}
