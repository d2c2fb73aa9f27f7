"""The embedded OpenSearch as a 3-node cluster (`lockstep services up --nodes N`): every node
started, listed and stopped; a stack's replicas placed on other nodes than their primaries."""

from __future__ import annotations

import requests
from conftest import lockstep


def test_status_lists_every_node_and_a_running_cluster_keeps_its_size(cluster):
    status = lockstep("services", "status", env=cluster.env())
    lines = {line.split()[0]: line for line in status.stdout.splitlines()}
    assert all("running" in lines[name] for name in ("opensearch", "opensearch-2", "opensearch-3")), status.stdout
    nodes = requests.get(f"{cluster.url}/_cat/nodes", params={"format": "json"}, timeout=30).json()
    assert len(nodes) == 3

    resized = lockstep("services", "up", "--nodes", "2", env=cluster.env())
    assert resized.returncode == 2
    assert resized.stderr.strip().splitlines()[-1].endswith("then `lockstep services up --nodes 2`")


# A node stand-in: answers every GET (cluster health) green on the port it is given.
STAND_IN = """
import http.server, sys
class Green(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"status": "green"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Green).serve_forever()
"""


def test_status_and_down_cover_every_node_of_a_cluster(tmp_path, monkeypatch):
    """Two node records and a layout (stand-in processes that answer cluster health: the real
    cluster is the session's): status lists both as running only while they answer, down stops
    both and forgets the layout."""
    import sys

    from lockstep import opensearch_node, runtime, services

    monkeypatch.setenv("LOCKSTEP_HOME", str(tmp_path))
    monkeypatch.delenv("OPENSEARCH_URL", raising=False)
    ports = [runtime.free_port() for _ in (1, 2)]
    nodes = [
        runtime.spawn(
            opensearch_node.node_name(n), [sys.executable, "-c", STAND_IN, str(port)], f"http://127.0.0.1:{port}"
        )
        for n, port in zip((1, 2), ports, strict=True)
    ]
    for node in nodes:
        runtime.wait_until(lambda node=node: opensearch_node.healthy(node.url), node.name, node.log, alive=node.alive)
    opensearch_node.Layout(ports, [runtime.free_port(), runtime.free_port()]).save()
    listed = {s.name: s.source for s in services.status()}
    assert listed["opensearch"] == listed["opensearch-2"] == "running"
    nodes[1].stop()
    assert {s.name: s.source for s in services.status()}["opensearch-2"] == "stopped"

    assert set(services.down()) >= {"opensearch"}
    assert not any(node.alive() for node in nodes)
    assert opensearch_node.running_nodes() == 1 and not list((tmp_path / "run").glob("*.json"))


def test_a_stacks_replicas_are_placed_on_other_nodes(replicated, cluster):
    shards = requests.get(
        f"{cluster.url}/_cat/shards/{replicated.live_index}", params={"format": "json"}, timeout=30
    ).json()
    assert len(shards) == 6 and {s["state"] for s in shards} == {"STARTED"}
    for number in range(3):
        copies = [s for s in shards if s["shard"] == str(number)]
        assert sorted(s["prirep"] for s in copies) == ["p", "r"]
        assert copies[0]["node"] != copies[1]["node"]


def test_the_check_reads_every_copy(replicated):
    from lockstep.ops import check

    outcome = check.evaluate(replicated.load(), replicated.catalog, keep=False)
    assert outcome.exit_code == 0, outcome.reason or [c.observed for c in outcome.record.failures]
    assert outcome.record.copies_compared == 6
    doc_count = next(c for c in outcome.record.checks if c.name == "doc-count")
    assert "copies compared: 6 (3 shards)" in doc_count.observed


def test_a_node_lost_during_or_before_the_check_is_never_consistent_and_the_check_waits_for_it(
    replicated, cluster, monkeypatch
):
    """A hook SIGKILLs node 3 just before the check's first per-copy read (the copy gate has passed:
    the view was whole when the check began): exit 2 naming what it could not read, no record made
    from what is left. With node 3 still down, a new check stops at the copy gate (exit 2, naming
    the copies). With the node started again meanwhile, a check with a long enough bound waits and
    passes whole. (One kill for the three: each restart costs minutes of CI.)"""
    import threading
    from urllib.parse import unquote

    from faultproxy import FORWARD, FaultProxy

    from lockstep.ops import check

    killed: list[int] = []

    def kill_node_3_at_the_first_copy_read(request):
        if not killed and "/_count" in request.path and "_only_nodes:" in unquote(request.path):
            cluster.kill(3)
            killed.append(3)
        return FORWARD

    monkeypatch.setattr(check, "COPIES_WAIT_SECONDS", 3.0)
    try:
        with FaultProxy(cluster.url) as proxy:
            proxy.rule = kill_node_3_at_the_first_copy_read
            monkeypatch.setenv("OPENSEARCH_URL", proxy.url)
            during = check.evaluate(replicated.load(), replicated.catalog, keep=False)
        monkeypatch.setenv("OPENSEARCH_URL", cluster.url)
        before = check.evaluate(replicated.load(), replicated.catalog, keep=False)

        monkeypatch.setattr(check, "COPIES_WAIT_SECONDS", 240.0)
        restart = threading.Thread(target=cluster.up, daemon=True)
        restart.start()
        waited = check.evaluate(replicated.load(), replicated.catalog, keep=False)
        restart.join()
    finally:
        cluster.wait_green()
    assert killed == [3]
    for lost in (during, before):
        assert lost.exit_code == 2 and lost.record is None, lost.record
        assert "\n" not in lost.reason and "could not" in lost.reason, lost.reason
        assert replicated.live_index in lost.reason, lost.reason
    assert waited.exit_code == 0, waited.reason or [c.observed for c in waited.record.failures]
    assert waited.record.copies_compared == 6


def test_a_replica_that_holds_fewer_documents_fails_the_check(replicated, cluster, monkeypatch):
    """One copy answers a count one short (the proxy rewrites the answer of every count read on
    node 3): the primaries alone would say consistent; the check names the copy that differs."""
    from urllib.parse import unquote

    from faultproxy import FaultProxy, answer

    from lockstep.ops import check

    node3 = next(
        n["id"]
        for n in requests.get(
            f"{cluster.url}/_cat/nodes", params={"format": "json", "h": "id,name", "full_id": "true"}, timeout=30
        ).json()
        if n["name"] == "node-3"
    )

    with FaultProxy(cluster.url) as proxy:

        def one_short(request):
            path = unquote(request.path)
            if "/_count" in path and f"_only_nodes:{node3}" in path:
                body = proxy.forward(request).json()
                return answer(200, {**body, "count": body["count"] - 1})
            return None

        proxy.rule = one_short
        monkeypatch.setenv("OPENSEARCH_URL", proxy.url)
        monkeypatch.setattr(check, "COPIES_WAIT_SECONDS", 2.0)
        outcome = check.evaluate(replicated.load(), replicated.catalog, keep=False)
    assert outcome.exit_code == 1
    (failure,) = outcome.record.failures
    assert failure.name == "doc-count" and "on node-3" in failure.observed and "behind" in failure.observed
