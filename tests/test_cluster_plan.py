"""Cluster health in the release plan (pure) and in `lockstep plan` against the 3-node cluster."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from lockstep import report
from lockstep.errors import Unreachable
from lockstep.plan import ClusterHealth, Delta, Observed, ObservedIndex, release_plan

ALL = frozenset({"v1", "v2", "v3"})


def rollback(settings, cluster: ClusterHealth, unassigned_primaries: int = 0, provision: bool = False) -> Observed:
    """v2 live; the stack pins v1 (whose index exists, or must be provisioned)."""
    indices = {"v2": ObservedIndex(doc_count=200, delta=Delta())}
    if not provision:
        indices["v1"] = ObservedIndex(doc_count=200, delta=Delta(), unassigned_primaries=unassigned_primaries)
    return Observed(
        indices=indices,
        alias_targets=(settings.opensearch.index_name("v2"),),
        pointer_version="v2",
        slots_deployed={"blue": "v1", "green": "v2"},
        corpus_size=200,
        artifacts=ALL,
        cluster=cluster,
    )


def test_a_green_cluster_says_nothing(make_settings, catalog):
    settings = make_settings(pin="v1")
    plan = release_plan(catalog, settings, rollback(settings, ClusterHealth("green", 3)))
    assert plan.warnings == () and "Warning" not in report.plan_markdown(plan)


def test_a_provision_onto_a_yellow_cluster_runs_with_a_warning(make_settings, catalog):
    settings = make_settings(pin="v1")
    plan = release_plan(catalog, settings, rollback(settings, ClusterHealth("yellow", 2, 3), provision=True))
    assert [s.kind for s in plan.steps][:1] == ["provision"]
    (warning,) = plan.warnings
    assert warning.startswith("the OpenSearch cluster is yellow (2 nodes, 3 shard copies unassigned)")
    assert f"> **Warning**: {warning}" in report.plan_markdown(plan)
    assert plan.to_dict()["warnings"] == [warning]


def test_a_cutover_onto_an_index_with_unassigned_primaries_is_refused_in_one_line(make_settings, catalog):
    settings = make_settings(pin="v1")
    with pytest.raises(Unreachable) as refused:
        release_plan(catalog, settings, rollback(settings, ClusterHealth("red", 2, 4), unassigned_primaries=2))
    line = str(refused.value)
    assert "\n" not in line and refused.value.exit_code == 2
    assert line.startswith(f"cutover to {settings.opensearch.index_name('v1')} refused: 2 of its primary shards")
    # The same state without the cutover (the alias already there) is no refusal, only a warning.
    settled = replace(
        rollback(settings, ClusterHealth("red", 2, 4), unassigned_primaries=2),
        alias_targets=(settings.opensearch.index_name("v1"),),
        pointer_version="v1",
    )
    assert release_plan(catalog, settings, settled).warnings[0].startswith("the OpenSearch cluster is red")


def test_lockstep_plan_on_the_cluster_with_a_node_down_says_yellow(replicated, cluster):
    """A real observation: node 3 of the cluster killed; `lockstep plan --format json` for a stack
    whose index has a replica says the cluster is yellow, and what it means, without refusing."""
    try:
        cluster.kill(3)
        cluster.health(wait_for_nodes="2", timeout="60s")
        planned = replicated.cli("plan", "--stack", replicated.stack, "--format", "json")
        assert planned.exit_code == 0, planned.output
        warnings = json.loads(planned.stdout)["warnings"]
        assert len(warnings) == 1 and warnings[0].startswith("the OpenSearch cluster is yellow (2 nodes,")
    finally:
        cluster.wait_green()
