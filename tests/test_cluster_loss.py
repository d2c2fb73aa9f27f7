"""A data node SIGKILLed during a provision, the cutover and the derived repair, on the 3-node
cluster (3 shards, 1 replica).

The moment is chosen by a hook: a fault proxy in front of node 1 (the node clients talk to, never
killed) kills node 3, or the elected cluster manager, just before it forwards the N-th request of a
kind (`_bulk`, `_aliases`, `_msearch`); the node is started again after a delay, with its data.
"""

from __future__ import annotations

import uuid

import pytest
from conftest import stack_values
from faultproxy import FaultProxy

from bench.kill_sweep import go_live_on_v1
from lockstep import config, stackfile
from lockstep.errors import LockstepError
from lockstep.ops import artifacts, clients, corpus_store, derived, endpoints, index, live_state
from lockstep.ops import cluster as cluster_ops
from lockstep.ops.backfill import engine as backfill_engine
from tests.clusterctl import NodeLoss

SIZE = 600  # two `_bulk` requests of a provision (500 documents each), twelve `_msearch` of a repair (50 each)


@pytest.fixture(scope="module")
def loss_stack(cluster, tmp_path_factory, catalog):
    """A scratch stack on the cluster (v1 live by alias + pointer, v2's artifact published), shared
    by this file's tests. Yields (settings, stacks dir)."""
    name = f"t{uuid.uuid4().hex[:10]}"
    stacks = tmp_path_factory.mktemp("stacks")
    values = stack_values(
        name,
        corpus={"bucket": f"{name}-corpus", "size": SIZE},
        opensearch={"indexPrefix": name, "shards": 3, "replicas": 1},
        backfill={"batchSize": 16},
        derived=[{"name": "related", "kind": "related-documents", "table": f"{name}-related", "writeRate": 1000}],
    )
    stackfile.write_stack(stacks, name, values)
    settings = config.load_stack(name, stacks, catalog)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENSEARCH_URL", cluster.url)
        go_live_on_v1(settings, catalog)
        artifacts.publish_artifact(clients.aws_for(settings, "s3"), settings, catalog.get("v2"))
    yield settings, stacks
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENSEARCH_URL", cluster.url)
        clients.opensearch().indices.delete(index=f"{name}-*", params={"ignore_unavailable": "true"})


@pytest.fixture
def on_cluster(loss_stack, cluster, monkeypatch, catalog):
    """The file's stack with v1 live (cut back to it if a test left v2 live), clients through a
    fault proxy in front of node 1. Yields (settings, proxy)."""
    settings, stacks = loss_stack
    monkeypatch.setenv("LOCKSTEP_STACKS_DIR", str(stacks))
    monkeypatch.setenv("OPENSEARCH_URL", cluster.url)
    client, ssm = clients.opensearch(), clients.aws_for(settings, "ssm")
    if live_state.alias_targets(client, settings.opensearch.alias_name) != [settings.opensearch.index_name("v1")]:
        live_state.cutover(client, ssm, settings, catalog.get("v1"), endpoints.endpoint_name(settings, "blue"))
    with FaultProxy(cluster.url) as proxy:
        monkeypatch.setenv("OPENSEARCH_URL", proxy.url)
        yield settings, proxy


def test_node_lost_mid_provision_every_document_once_or_one_line_and_a_rerun_finishes(on_cluster, cluster, catalog):
    """Node 3 killed before the provision's 2nd `_bulk` is forwarded (the index is in bulk mode: no
    replicas, so a third of the primaries are gone until the node is back). The backfill finishes,
    or stops with one line and a re-run finishes it; then the index holds the corpus exactly (ids
    once each, content hashes equal), out of bulk mode, and every copy holds every document."""
    settings, proxy = on_cluster
    name = settings.opensearch.index_name("v2")
    clients.opensearch().indices.delete(index=name, params={"ignore_unavailable": "true"})  # a fresh provision
    loss = NodeLoss(cluster, lambda r: r.is_("POST", "/_bulk"), nth=2)
    proxy.rule = loss
    try:
        backfill_engine.sync_index(settings, catalog.get("v2"), progress=False)
        stopped = ""
    except LockstepError as exc:
        stopped = str(exc)
        assert "\n" not in stopped and stopped
    finally:
        proxy.rule = None
    loss.wait()
    if stopped:
        backfill_engine.sync_index(settings, catalog.get("v2"), progress=False)
    client = clients.opensearch()
    client.indices.refresh(index=name)
    truth = {d.id: d.content_sha256 for d in corpus_store.read_corpus(clients.aws_for(settings, "s3"), settings)}
    assert index.doc_hashes(client, name) == truth
    assert client.count(index=name)["count"] == len(truth) == SIZE
    assert not index.in_bulk_mode(client, name)
    cluster.wait_green()
    copies = cluster_ops.whole_copies(client, name, bound=60)
    per_shard: dict[int, set[int]] = {}
    for copy in copies:
        per_shard.setdefault(copy.shard, set()).add(cluster_ops.copy_count(client, name, copy))
    assert len(copies) == 6 and all(len(counts) == 1 for counts in per_shard.values()), per_shard
    assert sum(next(iter(counts)) for counts in per_shard.values()) == SIZE


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
