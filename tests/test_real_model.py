"""A real model through the whole unit: upgrade from hashgram v2 to MiniLM v4 (another family and
dimension) and roll back, with the CLI, on a small corpus (a MiniLM document costs ~50 ms of CPU)."""

from __future__ import annotations

from lockstep import config, orchestrator
from lockstep.ops import endpoints, index, live_state
from tests.conftest import lockstep

SIZE = 200


def test_pin_v4_apply_check_then_roll_back_to_v2_reattaches(servers, scratch_stack, opensearch):
    stacks, stack = scratch_stack(pin="v2", slots={"blue": "v2", "green": None}, corpus={"size": SIZE})
    first = lockstep("apply", "--stack", stack, "--quiet")
    assert first.returncode == 0, first.stdout + first.stderr

    assert lockstep("pin", "--stack", stack, "v4").returncode == 0
    upgrade = lockstep("apply", "--stack", stack, "--quiet", timeout=900)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    checked = lockstep("check", "--stack", stack)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "reembed-probe" in checked.stdout

    settings = config.load_stack(stack, stacks)
    v4 = settings.opensearch.index_name("v4")
    meta = index.read_meta(opensearch, v4)
    assert (meta["model"], meta["dimension"]) == ("all-minilm-l6-v2", 384)
    assert live_state.count_by_model_version(opensearch, v4) == (SIZE, {"v4": SIZE})
    live = endpoints.endpoint_for(settings, settings.live_slot).describe()
    assert (live["version"], live["artifact_sha256"]) == ("v4", config.load_catalog(stacks).get("v4").artifact_sha256)

    v2 = settings.opensearch.index_name("v2")
    v2_uuid = opensearch.indices.get_settings(index=v2)[v2]["settings"]["index"]["uuid"]
    assert lockstep("pin", "--stack", stack, "v2").returncode == 0
    catalog = config.load_catalog(stacks)
    rollback = orchestrator.apply(
        config.load_stack(stack, stacks, catalog), catalog, progress=False, say=lambda _: None
    )
    assert rollback.record.passed, [c.name for c in rollback.record.failures]
    # Reattached, not rebuilt: the same v2 index, no document re-embedded.
    assert (rollback.plan.index_action, rollback.embedded) == ("reattach", 0)
    assert opensearch.indices.get_settings(index=v2)[v2]["settings"]["index"]["uuid"] == v2_uuid
    assert live_state.count_by_model_version(opensearch, v2) == (SIZE, {"v2": SIZE})
    assert live_state.alias_targets(opensearch, settings.opensearch.alias_name) == [v2]
    checked = lockstep("check", "--stack", stack)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    endpoints.stop_local_slots(config.load_stack(stack, stacks))
