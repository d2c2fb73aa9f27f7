"""The release plan is a pure function: desired config + observed state -> ordered steps."""

from __future__ import annotations

import json
import subprocess
import sys

from lockstep.plan import Delta, Observed, ObservedIndex, embed_rate_key, release_plan, repair_rate_key
from lockstep.state import StoreCounts

ALL = frozenset({"v1", "v2", "v3"})


def synced(*versions: str, size: int = 200, **deltas: Delta) -> dict[str, ObservedIndex]:
    """Indices in step with a corpus of `size` documents, except the ones given a delta."""
    return {v: ObservedIndex(doc_count=size, delta=deltas.get(v, Delta())) for v in versions}


def shape(plan):
    return [(s.kind, s.version, s.slot, s.docs) for s in plan.steps]


def test_first_deploy_provisions_deploys_and_cuts_over(make_settings, catalog):
    settings = make_settings(pin="v1", slots={"blue": "v1", "green": "v2"})
    plan = release_plan(catalog, settings, Observed(corpus_size=200))

    assert shape(plan) == [
        ("ensure_artifact", "v1", None, 0),
        ("ensure_artifact", "v2", None, 0),
        ("provision", "v1", None, 200),
        ("deploy_slot", "v1", "blue", 0),
        ("provision", "v2", None, 200),
        ("deploy_slot", "v2", "green", 0),
        ("cutover", "v1", "blue", 0),
        ("check", "v1", None, 0),
    ]
    assert (plan.from_version, plan.to_version) == (None, "v1")
    assert (plan.index_action, plan.endpoint_action) == ("provision", "deploy")
    assert plan.docs_to_embed == 400 and plan.pointer_moves and not plan.reversible
    assert catalog.get("v1").artifact_key in plan.steps[0].detail


def test_upgrade_to_the_warm_standby_is_a_flip(make_settings, catalog):
    settings = make_settings(pin="v2", slots={"blue": "v1", "green": "v2"})
    observed = Observed(
        indices=synced("v1", "v2"),
        alias_targets=(settings.opensearch.index_name("v1"),),
        pointer_version="v1",
        slots_deployed={"blue": "v1", "green": "v2"},
        corpus_size=200,
        artifacts=ALL,
    )
    plan = release_plan(catalog, settings, observed)

    assert shape(plan) == [("cutover", "v2", "green", 0), ("check", "v2", None, 0)]
    assert (plan.from_version, plan.to_version) == ("v1", "v2")
    assert (plan.index_action, plan.endpoint_action) == ("reattach", "flip")
    assert plan.docs_to_embed == 0 and plan.pointer_moves and plan.reversible


def test_a_fence_not_naming_the_pin_plans_a_cutover_that_moves_nothing_else(make_settings, catalog):
    """Alias and pointer on the pin, a derived table's fence missing or on another version: only a
    cutover rewrites fences, so one is planned; the pointer does not move."""
    store = {"name": "related", "kind": "related-documents", "table": "t-related"}
    settings = make_settings(pin="v2", slots={"blue": "v1", "green": "v2"}, derived=[store])

    def plan_with(fence: str | None):
        observed = Observed(
            indices=synced("v1", "v2"),
            alias_targets=(settings.opensearch.index_name("v2"),),
            pointer_version="v2",
            slots_deployed={"blue": "v1", "green": "v2"},
            corpus_size=200,
            artifacts=ALL,
            derived={"related": StoreCounts("related", "t-related", {"v2": 10}, fence=fence)},
        )
        return release_plan(catalog, settings, observed)

    assert shape(plan_with("v2")) == [("check", "v2", None, 0)]
    for fence in ("v1", None):
        plan = plan_with(fence)
        assert shape(plan) == [("cutover", "v2", "green", 0), ("check", "v2", None, 0)]
        assert plan.steps[0].detail == "fences of related -> v2 (alias and pointer already on v2)"
        assert not plan.pointer_moves


def test_upgrade_to_a_new_version_provisions_it_in_the_standby_slot(make_settings, catalog):
    # `lockstep pin v3` from pin v1, slots {v1, v2}: v3 takes green, v2 leaves the config.
    settings = make_settings(pin="v3", slots={"blue": "v1", "green": "v3"})
    observed = Observed(
        indices=synced("v1", "v2"),
        alias_targets=(settings.opensearch.index_name("v1"),),
        pointer_version="v1",
        slots_deployed={"blue": "v1", "green": "v2"},
        corpus_size=200,
        artifacts=frozenset({"v1", "v2"}),
    )
    plan = release_plan(catalog, settings, observed)

    assert shape(plan) == [
        ("ensure_artifact", "v3", None, 0),
        ("provision", "v3", None, 200),
        ("deploy_slot", "v3", "green", 0),
        ("cutover", "v3", "green", 0),
        ("check", "v3", None, 0),
        ("drop", "v2", None, 0),
    ]
    assert (plan.index_action, plan.endpoint_action, plan.docs_to_embed) == ("provision", "deploy", 200)
    assert plan.reversible  # v1 keeps its index and the blue slot


def rollback_settings(make_settings):
    """Was: pin v3, slots {blue v2, green v3}, retain [v1]. `lockstep pin v1` puts v1 in blue."""
    return make_settings(pin="v1", slots={"blue": "v1", "green": "v3"}, retain=["v1", "v2"])


def test_rollback_to_a_retained_version_reattaches_without_embedding(make_settings, catalog):
    settings = rollback_settings(make_settings)
    observed = Observed(
        indices=synced("v1", "v2", "v3"),
        alias_targets=(settings.opensearch.index_name("v3"),),
        pointer_version="v3",
        slots_deployed={"blue": "v2", "green": "v3"},
        corpus_size=200,
        artifacts=ALL,
    )
    plan = release_plan(catalog, settings, observed)

    assert shape(plan) == [
        ("deploy_slot", "v1", "blue", 0),
        ("cutover", "v1", "blue", 0),
        ("check", "v1", None, 0),
    ]
    assert (plan.index_action, plan.endpoint_action, plan.docs_to_embed) == ("reattach", "deploy", 0)
    assert plan.reversible  # v3 keeps the green slot and its index


def test_rollback_after_a_corpus_edit_catches_up_the_delta(make_settings, catalog):
    settings = rollback_settings(make_settings)
    edit = Delta(missing=4, changed=3, deleted=2)
    observed = Observed(
        indices=synced("v1", "v2", "v3", v1=edit, v2=edit, v3=Delta(changed=1)),
        alias_targets=(settings.opensearch.index_name("v3"),),
        pointer_version="v3",
        slots_deployed={"blue": "v2", "green": "v3"},
        corpus_size=202,
        artifacts=ALL,
    )
    plan = release_plan(catalog, settings, observed)

    assert shape(plan) == [
        ("catch_up", "v1", None, 7),
        ("deploy_slot", "v1", "blue", 0),
        ("catch_up", "v3", None, 1),  # the standby stays warm; the retained v2 waits for its turn
        ("cutover", "v1", "blue", 0),
        ("check", "v1", None, 0),
    ]
    assert "4 missing and 3 changed, delete 2 gone" in plan.steps[0].detail
    assert (plan.index_action, plan.docs_to_embed) == ("reattach", 8)


def test_rollback_to_a_dropped_version_provisions_the_whole_corpus(make_settings, catalog):
    settings = make_settings(pin="v1", slots={"blue": "v1", "green": "v3"})
    observed = Observed(
        indices=synced("v3", size=180),
        alias_targets=(settings.opensearch.index_name("v3"),),
        pointer_version="v3",
        slots_deployed={"blue": "v2", "green": "v3"},
        corpus_size=180,
        artifacts=frozenset({"v2", "v3"}),
    )
    plan = release_plan(catalog, settings, observed)

    assert shape(plan) == [
        ("ensure_artifact", "v1", None, 0),
        ("provision", "v1", None, 180),
        ("deploy_slot", "v1", "blue", 0),
        ("cutover", "v1", "blue", 0),
        ("check", "v1", None, 0),
    ]
    assert (plan.index_action, plan.endpoint_action, plan.docs_to_embed) == ("provision", "deploy", 180)


def test_rerun_with_nothing_to_do_only_checks(make_settings, catalog):
    settings = make_settings(pin="v2", slots={"blue": "v1", "green": "v2"}, retain=["v3"])
    observed = Observed(
        indices=synced("v1", "v2", "v3"),
        alias_targets=(settings.opensearch.index_name("v2"),),
        pointer_version="v2",
        slots_deployed={"blue": "v1", "green": "v2"},
        corpus_size=200,
        artifacts=ALL,
    )
    plan = release_plan(catalog, settings, observed)

    assert shape(plan) == [("check", "v2", None, 0)]
    assert (plan.index_action, plan.endpoint_action, plan.docs_to_embed) == ("none", "none", 0)
    assert not plan.pointer_moves and plan.reversible


def test_alias_off_the_pin_forces_a_cutover_even_when_the_pointer_agrees(make_settings, catalog):
    settings = make_settings(pin="v2", slots={"blue": "v1", "green": "v2"})
    observed = Observed(
        indices=synced("v1", "v2"),
        alias_targets=(settings.opensearch.index_name("v1"), settings.opensearch.index_name("v2")),
        pointer_version="v2",
        slots_deployed={"blue": "v1", "green": "v2"},
        corpus_size=200,
        artifacts=ALL,
    )
    assert shape(release_plan(catalog, settings, observed)) == [("cutover", "v2", "green", 0), ("check", "v2", None, 0)]


def test_missing_retained_index_is_provisioned_and_aliased_leftovers_are_kept(make_settings, catalog):
    settings = make_settings(pin="v2", slots={"blue": "v3", "green": "v2"}, retain=["v1"])
    # v1 (retained) lost its index; the alias still sits on an index outside the config (v0).
    observed = Observed(
        indices={**synced("v2", "v3"), "v0": ObservedIndex(doc_count=200)},
        alias_targets=(settings.opensearch.index_name("v0"),),
        pointer_version="v0",
        slots_deployed={"blue": "v3", "green": "v2"},
        corpus_size=200,
        artifacts=ALL,
    )
    plan = release_plan(catalog, settings, observed)

    assert shape(plan) == [
        ("provision", "v1", None, 200),
        ("cutover", "v2", "green", 0),
        ("check", "v2", None, 0),
    ]
    assert not plan.reversible  # v0 has no slot: going back needs a deploy


def test_unknown_delta_is_estimated_from_counts(make_settings, catalog):
    settings = make_settings(pin="v1", slots={"blue": "v1", "green": "v2"})
    observed = Observed(
        indices={"v1": ObservedIndex(doc_count=150), "v2": ObservedIndex(doc_count=230)},
        alias_targets=(settings.opensearch.index_name("v1"),),
        pointer_version="v1",
        slots_deployed={"blue": "v1", "green": "v2"},
        corpus_size=200,
        artifacts=ALL,
    )
    plan = release_plan(catalog, settings, observed)

    assert shape(plan) == [("catch_up", "v1", None, 50), ("catch_up", "v2", None, 0), ("check", "v1", None, 0)]
    assert "delete 30 gone (estimated" in plan.steps[1].detail


def test_plan_serializes_to_json(make_settings, catalog):
    settings = make_settings(pin="v1", slots={"blue": "v1", "green": "v2"})
    data = json.loads(json.dumps(release_plan(catalog, settings, Observed(corpus_size=10)).to_dict()))
    assert (data["stack"], data["from"], data["to"], data["docs_to_embed"]) == (settings.stack, None, "v1", 20)
    assert data["steps"][2] == {
        "kind": "provision",
        "version": "v1",
        "slot": None,
        "docs": 10,
        "detail": "create the index and embed the corpus (10 documents)",
        "eta_seconds": None,
        "eta_estimated": False,
    }
    assert data["eta_seconds"] is None  # nothing measured or estimated: unknown, not guessed


def test_etas_come_from_measured_rates_or_are_unknown(make_settings, catalog):
    settings = make_settings(pin="v1", slots={"blue": "v1", "green": "v2"})
    v1 = embed_rate_key(catalog.get("v1"), settings.backfill.engine)
    plan = release_plan(catalog, settings, Observed(corpus_size=300, rates={v1: 150.0}))

    etas = {s.version: s.eta_seconds for s in plan.steps if s.kind == "provision"}
    assert etas == {"v1": 2.0, "v2": None}  # v2 was never measured with this engine
    assert plan.eta_seconds is None
    measured = release_plan(
        catalog,
        settings,
        Observed(corpus_size=300, rates={v1: 150.0, embed_rate_key(catalog.get("v2"), "local"): 100.0}),
    )
    assert measured.eta_seconds == 5.0
    other_engine = make_settings(pin="v1", slots={"blue": "v1", "green": "v2"}, backfill={"engine": "ray"})
    assert release_plan(catalog, other_engine, Observed(corpus_size=300, rates={v1: 150.0})).eta_seconds is None


def test_an_estimate_stands_in_until_a_rate_is_measured(make_settings, catalog):
    settings = make_settings(pin="v1", slots={"blue": "v1", "green": "v2"})
    v1, v2 = (embed_rate_key(catalog.get(v), settings.backfill.engine) for v in ("v1", "v2"))
    observed = Observed(corpus_size=300, rates={v1: 150.0}, estimated_rates={v1: 3000.0, v2: 100.0})
    plan = release_plan(catalog, settings, observed)
    etas = {s.version: (s.eta_seconds, s.eta_estimated) for s in plan.steps if s.kind == "provision"}
    assert etas == {"v1": (2.0, False), "v2": (3.0, True)}  # the measured rate wins over the estimate
    assert plan.eta_seconds == 5.0 and plan.eta_estimated and plan.to_dict()["eta_estimated"] is True


def test_work_that_exists_never_has_an_eta_of_zero_seconds(make_settings, catalog):
    """A fast calibration over a small corpus (120 docs at 5,000 docs/s = 0.024 s) must not round the
    step's ETA to "~0s", which reads as no work; a step with no documents keeps 0."""
    settings = make_settings(pin="v1", slots={"blue": "v1", "green": "v2"})
    v1, v2 = (embed_rate_key(catalog.get(v), settings.backfill.engine) for v in ("v1", "v2"))
    plan = release_plan(catalog, settings, Observed(corpus_size=120, estimated_rates={v1: 5000.0, v2: 5000.0}))
    etas = {s.version: s.eta_seconds for s in plan.steps if s.kind == "provision"}
    assert etas == {"v1": 0.1, "v2": 0.1}


def test_a_repair_eta_is_never_faster_than_the_stores_write_rate(make_settings, catalog):
    """The repair paces its writes at the store's writeRate: a k-NN rate above it does not make it faster."""
    store = {"name": "related", "kind": "related-documents", "table": "t-related", "writeRate": 50}
    settings = make_settings(derived=[store])
    key = repair_rate_key(settings.derived[0], catalog.get("v1"))
    counts = {"related": StoreCounts("related", "t-related", {"v2": 1000})}

    def repair_eta(rate: float) -> tuple[float | None, bool]:
        observed = Observed(corpus_size=200, indices=synced("v1", "v2"), derived=counts, estimated_rates={key: rate})
        (action,) = release_plan(catalog, settings, observed).derived
        return action.eta_seconds, action.eta_estimated

    assert repair_eta(900.0) == (20.0, True)  # 1,000 records at writeRate 50, not at 900/s
    assert repair_eta(25.0) == (40.0, True)  # the k-NN side is the slower one


def test_a_repair_rate_measured_at_one_write_rate_is_not_read_at_another(make_settings, catalog):
    """A repair paced at writeRate 25 measured ~25 items/s: a store allowed 1,000 a second has no
    measured rate from it (unknown until calibrated or measured), not a 40 s ETA for 1,000 records."""

    def settings_at(write_rate: float):
        store = {"name": "related", "kind": "related-documents", "table": "t-related", "writeRate": write_rate}
        return make_settings(derived=[store])

    slow, fast = settings_at(25), settings_at(1000)
    counts = {"related": StoreCounts("related", "t-related", {"v2": 1000})}
    observed = Observed(
        corpus_size=200,
        indices=synced("v1", "v2"),
        derived=counts,
        rates={repair_rate_key(slow.derived[0], catalog.get("v1")): 24.0},
    )
    assert release_plan(catalog, slow, observed).derived[0].eta_seconds == 41.7
    assert release_plan(catalog, fast, observed).derived[0].eta_seconds is None


def test_plan_imports_no_module_that_talks_to_a_server():
    """`lockstep plan` renders from config alone when the servers are away: the release model is pure."""
    code = (
        "import sys, lockstep.plan\n"
        "talkers = ('lockstep.ops', 'boto3', 'botocore', 'opensearchpy', 'requests', 'pulumi')\n"
        "print(sorted(m for m in sys.modules if m.startswith(talkers)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_apply_has_one_handler_for_every_step_kind():
    from typing import get_args

    from lockstep import orchestrator, plan

    assert set(orchestrator.HANDLERS) == set(get_args(plan.StepKind))
