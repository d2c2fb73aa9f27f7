"""A data node SIGKILLed during the cutover and the derived repair, on the 3-node cluster (3 shards, 1 replica).

The moment is chosen by a hook: a fault proxy in front of node 1 (the node clients talk to, never
killed) kills node 3, or the elected cluster manager, just before it forwards the N-th request of a
kind (`_aliases`, `_msearch`); the node is started again after a delay, with its data.
"""

from __future__ import annotations

import uuid

import pytest
from conftest import stack_values
from faultproxy import FaultProxy

from bench.kill_sweep import go_live_on_v1
from lockstep import config, stackfile
from lockstep.errors import LockstepError
from lockstep.ops import artifacts, clients, derived, endpoints, live_state
from lockstep.ops.backfill import engine as backfill_engine
from tests.clusterctl import NodeLoss

SIZE = 600  # twelve `_msearch` requests of a repair (50 documents each)


@pytest.fixture
def on_cluster(cluster, monkeypatch, tmp_path, catalog):
    """A scratch stack on the cluster (v1 live by alias + pointer, v2 in green), clients through a
    fault proxy in front of node 1. Yields (settings, proxy)."""
    name = f"t{uuid.uuid4().hex[:10]}"
    stacks = tmp_path / "stacks"
    values = stack_values(
        name,
        corpus={"bucket": f"{name}-corpus", "size": SIZE},
        opensearch={"indexPrefix": name, "shards": 3, "replicas": 1},
        backfill={"batchSize": 16},
        derived=[{"name": "related", "kind": "related-documents", "table": f"{name}-related", "writeRate": 1000}],
    )
    stackfile.write_stack(stacks, name, values)
    monkeypatch.setenv("LOCKSTEP_STACKS_DIR", str(stacks))
    monkeypatch.setenv("OPENSEARCH_URL", cluster.url)
    settings = config.load_stack(name, stacks, catalog)
    go_live_on_v1(settings, catalog)
    artifacts.publish_artifact(clients.aws_for(settings, "s3"), settings, catalog.get("v2"))
    with FaultProxy(cluster.url) as proxy:
        monkeypatch.setenv("OPENSEARCH_URL", proxy.url)
        yield settings, proxy
    monkeypatch.setenv("OPENSEARCH_URL", cluster.url)
    clients.opensearch().indices.delete(index=f"{name}-*", params={"ignore_unavailable": "true"})


def test_node_lost_mid_cutover_alias_on_one_index_and_pointer_follows(on_cluster, cluster, catalog):
    settings, proxy = on_cluster
    backfill_engine.sync_index(settings, catalog.get("v2"), progress=False)
    cluster.wait_green()
    loss = NodeLoss(cluster, lambda r: r.is_("POST", "/_aliases"), node=None)
    proxy.rule = loss
    client, ssm = clients.opensearch(), clients.aws_for(settings, "ssm")
    try:
        live_state.cutover(client, ssm, settings, catalog.get("v2"), endpoints.endpoint_name(settings, "green"))
        expected = "v2"
    except LockstepError as exc:
        assert "\n" not in str(exc)
        expected = "v1"  # reported failed: undone
    loss.wait()
    proxy.rule = None
    targets = live_state.alias_targets(client, settings.opensearch.alias_name)
    pointer = live_state.read_pointer(ssm, settings.pointer_name)
    assert targets == [settings.opensearch.index_name(expected)]
    assert pointer is not None and pointer.version == expected


def test_node_lost_mid_repair_every_item_once_and_resumable(on_cluster, cluster, catalog):
    settings, proxy = on_cluster
    backfill_engine.sync_index(settings, catalog.get("v2"), progress=False)
    store = settings.derived[0]
    derived.ensure_table(settings, store)
    assert derived.write_related(settings, "v2") == SIZE  # v2 was live and wrote its lists
    cluster.wait_green()
    loss = NodeLoss(cluster, lambda r: r.is_("POST", "/_msearch"), nth=2)
    proxy.rule = loss
    first_run = None
    try:
        first_run = derived.repair(settings, catalog, store, progress=False)
    except LockstepError as exc:
        assert "\n" not in str(exc)
    loss.wait()
    proxy.rule = None
    done_first = sum(1 for r in derived.read_records(settings, store).values() if r["model_version"] == "v1")
    second = derived.repair(settings, catalog, store, progress=False)
    records = derived.read_records(settings, store)
    assert len(records) == SIZE and {r["model_version"] for r in records.values()} == {"v1"}
    assert second.rewritten == SIZE - done_first and second.skipped == 0  # nothing written twice
    if first_run is not None:
        assert first_run.rewritten == done_first == SIZE
    # Every list is the pin's whole-index answer (none computed from part of the index).
    truth = derived.related(clients.opensearch(), settings.opensearch.index_name("v1"), list(records), store.k)
    assert {i: tuple(r["neighbours"]) for i, r in records.items()} == {i: t.neighbours for i, t in truth.items()}
