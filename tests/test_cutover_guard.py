"""The cutover refuses an endpoint that does not serve the pin's artifact (issue 18, defect 5).

Real servers: OpenSearch, moto, and local endpoint slot processes. The wrong artifact is what a
SageMaker update rolled back by an alarm leaves behind: the slot's endpoint InService on the old model.
"""

from __future__ import annotations

import pytest

from lockstep import config, orchestrator, stackfile
from lockstep.errors import IntegrityError
from lockstep.ops import clients, endpoints, live_state

SIZE = 40


def test_the_cutover_refuses_a_slot_that_serves_another_artifact(servers, scratch_stack, catalog, opensearch):
    stacks, stack = scratch_stack(corpus={"size": SIZE})  # pin v1 (blue), v2 in green
    first = orchestrator.apply(config.load_stack(stack, stacks), catalog, progress=False, say=lambda _: None)
    assert first.record.passed
    settings = config.load_stack(stack, stacks)
    v1, v2 = catalog.get("v1"), catalog.get("v2")
    assert endpoints.require_serving(settings, "green", v2) == endpoints.endpoint_name(settings, "green")

    def rolled_back(wanted: config.StackSettings) -> None:
        # While v2 waits to go live, its slot falls back to v1's model (an alarm-driven rollback).
        endpoints.deploy_local_slot(wanted, "green", v1)

    stackfile.set_pin(stack, "v2", stacks)
    flipped = config.load_stack(stack, stacks)
    with pytest.raises(IntegrityError) as refused:
        orchestrator.apply(flipped, catalog, progress=False, say=lambda _: None, before_cutover=rolled_back)
    message = str(refused.value)
    assert f"endpoint {endpoints.endpoint_name(settings, 'green')} serves v1" in message
    assert "nothing was switched" in message and "\n" not in message

    # Nothing moved: the alias and the pointer still name v1 together.
    assert live_state.alias_targets(opensearch, settings.opensearch.alias_name) == [
        settings.opensearch.index_name("v1")
    ]
    pointer = live_state.read_pointer(clients.aws("ssm"), settings.pointer_name)
    assert (pointer.version, pointer.index) == ("v1", settings.opensearch.index_name("v1"))

    # Once the slot serves v2 again (redeployed), the same pin change goes through.
    endpoints.deploy_local_slot(flipped, "green", v2)
    again = orchestrator.apply(flipped, catalog, progress=False, say=lambda _: None)
    assert again.record.passed and again.record.pin == "v2"
    endpoints.stop_local_slots(settings)
