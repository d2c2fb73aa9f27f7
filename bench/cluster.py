"""One node vs a 3-node cluster, and a node-loss sweep on the cluster.

    python -m bench.cluster [--docs 2000] [--rounds 5] [--points 12] [--seed N] [--sweep-docs 1500] [--sweep-only]

1. Side by side in one run: the same provision (`backfill_engine.sync_index`, v1 and v2 of a
   `--docs` corpus) and rollback (`live_state.cutover` back to v1, alias + pointer, median of
   `--rounds`) on the session's single node (1 shard, 0 replicas) and on a 3-node cluster started
   with `lockstep services up --nodes 3` under its own LOCKSTEP_HOME (3 shards, 1 replica).
2. The kill sweep (`--points`, ≥ 10): a data node SIGKILLed by the fault proxy's `NodeLoss` hook
   at a seeded moment of a provision (N-th `_bulk`), a cutover (the `_aliases` request; the elected
   cluster manager unless it is node 1) or a derived repair (N-th `_msearch`), started again after
   3 s; a failed step is re-run once the cluster is green. Each point is then verified: provision —
   the index holds the corpus' ids with their content hashes, once each (lost/extra); cutover —
   alias on exactly one index and the pointer on the same version; repair — every record of the
   pin, written once. While the node is down, the check's reading of the step's index (the copy
   gate `cluster.whole_copies`, 2 s bound, then a count from every copy, as the check reads them)
   runs: a whole view claimed then is a false consistent; a gate that listed the dead node's copies
   as started (refused only by the per-copy read) is counted apart (`gate_listed_dead`).

Figures go to stdout and bench/results/cluster.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from clusterctl import Cluster, NodeLoss  # noqa: E402
from faultproxy import FaultProxy  # noqa: E402
from opensearchpy.exceptions import ConnectionError as OSConnectionError  # noqa: E402

from bench.kill_sweep import go_live_on_v1  # noqa: E402
from lockstep import config, services, stackfile  # noqa: E402
from lockstep.errors import LockstepError, Unreachable  # noqa: E402
from lockstep.ops import artifacts, clients, cluster, corpus_store, derived, endpoints, index, live_state  # noqa: E402
from lockstep.ops.backfill import engine as backfill_engine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "cluster.json"


def make_stack(stacks: Path, docs: int, shards: int, replicas: int) -> config.StackSettings:
    name = f"cl{uuid.uuid4().hex[:8]}"
    stackfile.write_stack(
        stacks,
        name,
        {
            "pin": "v1",
            "slots": {"blue": "v1", "green": "v2"},
            "artifacts": {"bucket": f"{name}-artifacts"},
            "corpus": {"bucket": f"{name}-corpus", "size": docs},
            "opensearch": {"indexPrefix": name, "shards": shards, "replicas": replicas},
            "endpoints": {"backend": "local"},
            "backfill": {"batchSize": 64},
            "pointerParameter": f"/{name}/live",
            "derived": [
                {"name": "related", "kind": "related-documents", "table": f"{name}-related", "writeRate": 5000}
            ],
        },
    )
    return config.load_stack(name, stacks)


def with_url(url: str):
    os.environ["OPENSEARCH_URL"] = url


def side_by_side(url: str, stacks: Path, docs: int, rounds: int, shards: int, replicas: int) -> dict:
    """Provision v1 and v2 (the backfill timed alone), cut over to v1, then `rounds` rollbacks v2 → v1."""
    with_url(url)
    catalog = config.load_catalog()
    settings = make_stack(stacks, docs, shards, replicas)
    s3 = clients.aws_for(settings, "s3")
    artifacts.ensure_bucket(s3, settings.artifacts.bucket)
    corpus_store.ensure_corpus(s3, settings)
    documents = corpus_store.read_corpus(s3, settings)
    provisions = []
    for version in ("v1", "v2"):  # the backfill alone: corpus, artifacts and embedders ready
        entry = catalog.get(version)
        artifacts.publish_artifact(s3, settings, entry)
        embedder = artifacts.load_embedder(s3, settings.artifacts.bucket, entry)
        started = time.perf_counter()
        backfill_engine.sync_index(settings, entry, progress=False, embedder=embedder, documents=documents)
        provisions.append(time.perf_counter() - started)
    client, ssm = clients.opensearch(settings.opensearch), clients.aws_for(settings, "ssm")
    live_state.cutover(client, ssm, settings, catalog.get("v1"), endpoints.endpoint_name(settings, "blue"))
    rollbacks = []
    for _ in range(rounds):
        live_state.cutover(client, ssm, settings, catalog.get("v2"), endpoints.endpoint_name(settings, "green"))
        started = time.perf_counter()
        live_state.cutover(client, ssm, settings, catalog.get("v1"), endpoints.endpoint_name(settings, "blue"))
        rollbacks.append(time.perf_counter() - started)
    client.indices.delete(index=f"{settings.opensearch.index_prefix}-*", params={"ignore_unavailable": "true"})
    return {
        "shards": shards,
        "replicas": replicas,
        "backfill_docs_per_s": round(2 * len(documents) / sum(provisions), 1),
        "provision_s": [round(t, 2) for t in provisions],
        "rollback_median_s": round(statistics.median(rollbacks), 3),
        "rollbacks_s": [round(r, 3) for r in rollbacks],
    }


@dataclass
class Point:
    phase: str
    moment: str
    killed: int | None = None
    first_run: str = "finished"
    lost: int = 0
    extra: int = 0
    wrong: int = 0
    ok: bool = False
    false_consistent: bool = False
    gate_listed_dead: bool = False  # the copy gate alone listed the dead node's copies as started
    gate: str = "not asked"  # what the check's reading said while the node was down (see gate_while_down)


@dataclass
class Sweep:
    points: list[Point] = field(default_factory=list)

    def counts(self) -> dict:
        landed = [p for p in self.points if p.killed is not None]
        return {
            "points": len(self.points),
            "landed": len(landed),
            "resumed_exactly": sum(1 for p in landed if p.ok),
            "lost": sum(p.lost for p in self.points),
            "false_consistent": sum(1 for p in self.points if p.false_consistent),
            "gate_listed_dead": sum(1 for p in self.points if p.gate_listed_dead),
            # Which points the check's reading actually ran against a dead node (0 false consistent
            # means something only where it did): "refused", "whole without the dead node", or
            # "node back before the read".
            "gate": {
                g: sum(1 for p in self.points if p.gate.split(":")[0] == g)
                for g in sorted({p.gate.split(":")[0] for p in self.points})
            },
            "by_phase": {ph: sum(1 for p in landed if p.phase == ph) for ph in ("provision", "cutover", "repair")},
        }


def gate_while_down(loss: NodeLoss, client, name: str, point: Point) -> None:
    """While the killed node is down, the check's reading of the index (its copy gate, then a
    count from every copy, as `check_doc_count` reads them) must not claim a whole view that
    counts a copy on that node (copies rebuilt on the other nodes meanwhile are a whole view).
    The gate alone may still list a just-killed node's copies as started; the per-copy read is
    what refuses them (exit 2)."""
    if loss.killed is None or loss.restart is None or not loss.restart.is_alive():
        point.gate = "node back before the read" if loss.killed is not None else "not asked"
        return
    try:
        found = cluster.whole_copies(client, name, bound=2.0)
        point.gate_listed_dead = any(c.node == f"node-{loss.killed}" for c in found)
        for copy in found:
            cluster.copy_count(client, name, copy)
    except (Unreachable, OSConnectionError) as exc:
        point.gate = f"refused: {str(exc)[:120]}"
        return
    dead = f"node-{loss.killed}"
    point.false_consistent = not loss.cluster.node(loss.killed).alive() and any(c.node == dead for c in found)
    point.gate = (
        "whole view claimed with the dead node's copies" if point.false_consistent else "whole without the dead node"
    )


def run_step(loss: NodeLoss, proxy: FaultProxy, step, point: Point, gate) -> None:
    proxy.rule = loss
    try:
        step()
    except LockstepError as exc:
        point.first_run = f"stopped: {str(exc)[:160]}"
    gate()
    proxy.rule = None
    point.killed = loss.killed
    if loss.killed is not None:
        loss.wait()
    if point.first_run != "finished":
        step()


@dataclass
class Rig:
    """What every sweep point shares: the cluster, the proxy clients go through, the stack."""

    ring: Cluster
    proxy: FaultProxy
    settings: config.StackSettings
    catalog: config.Catalog
    truth: dict[str, str]  # corpus id -> content_sha256
    live: str = "v1"

    @property
    def client(self):
        return clients.opensearch(self.settings.opensearch)

    @property
    def ssm(self):
        return clients.aws_for(self.settings, "ssm")


def provision_point(rig: Rig, nth: int, bulks: int) -> Point:
    name = rig.settings.opensearch.index_name("v2")
    client = rig.client
    client.indices.delete(index=name, params={"ignore_unavailable": "true"})
    loss = NodeLoss(rig.ring, lambda r: r.is_("POST", "/_bulk"), nth=nth)
    point = Point("provision", f"_bulk #{nth} of ~{bulks}")
    run_step(
        loss,
        rig.proxy,
        lambda: backfill_engine.sync_index(rig.settings, rig.catalog.get("v2"), progress=False),
        point,
        lambda: gate_while_down(loss, client, name, point),
    )
    client.indices.refresh(index=name)
    stored = index.doc_hashes(client, name)
    point.lost = len(set(rig.truth) - set(stored))
    point.extra = len(set(stored) - set(rig.truth))
    point.wrong = sum(1 for i in set(rig.truth) & set(stored) if stored[i] != rig.truth[i])
    point.ok = not (point.lost or point.extra or point.wrong) and client.count(index=name)["count"] == len(rig.truth)
    return point


def cutover_point(rig: Rig) -> Point:
    target = "v2" if rig.live == "v1" else "v1"
    slot = "green" if target == "v2" else "blue"
    name = rig.settings.opensearch.index_name(target)
    loss = NodeLoss(rig.ring, lambda r: r.is_("POST", "/_aliases"), node=None)
    point = Point("cutover", f"_aliases {rig.live} → {target}")
    entry, endpoint = rig.catalog.get(target), endpoints.endpoint_name(rig.settings, slot)
    run_step(
        loss,
        rig.proxy,
        lambda: live_state.cutover(rig.client, rig.ssm, rig.settings, entry, endpoint),
        point,
        lambda: gate_while_down(loss, rig.client, name, point),
    )
    targets = live_state.alias_targets(rig.client, rig.settings.opensearch.alias_name)
    pointer = live_state.read_pointer(rig.ssm, rig.settings.pointer_name)
    point.ok = targets == [name] and pointer is not None and pointer.version == target
    rig.live = target
    return point


def repair_point(rig: Rig, nth: int) -> Point:
    """The version left behind wrote every list; the repair to the live version is killed."""
    store = rig.settings.derived[0]
    pinned = rig.settings.model_copy(update={"pin": rig.live})
    derived.write_related(rig.settings, "v2" if rig.live == "v1" else "v1")
    loss = NodeLoss(rig.ring, lambda r: r.is_("POST", "/_msearch"), nth=nth)
    point = Point("repair", f"_msearch #{nth}")
    runs: list[tuple[int, derived.RepairResult]] = []

    def repair() -> None:
        done = sum(1 for r in derived.read_records(rig.settings, store).values() if r["model_version"] == rig.live)
        runs.append((done, derived.repair(pinned, rig.catalog, store, progress=False)))

    name = rig.settings.opensearch.index_name(rig.live)
    run_step(loss, rig.proxy, repair, point, lambda: gate_while_down(loss, rig.client, name, point))
    records = derived.read_records(rig.settings, store)
    done_before, last = runs[-1]
    point.lost = len(set(rig.truth) - set(records))
    point.ok = (
        not point.lost
        and {r["model_version"] for r in records.values()} == {rig.live}
        and last.skipped == 0
        and last.rewritten == len(rig.truth) - done_before
    )
    return point


def sweep(ring: Cluster, stacks: Path, docs: int, points: int, rng: random.Random, say=print) -> Sweep:
    with_url(ring.url)
    catalog = config.load_catalog()
    settings = make_stack(stacks, docs, 3, 1)
    go_live_on_v1(settings, catalog)
    artifacts.publish_artifact(clients.aws_for(settings, "s3"), settings, catalog.get("v2"))
    backfill_engine.sync_index(settings, catalog.get("v2"), progress=False)
    derived.ensure_table(settings, settings.derived[0])
    truth = {d.id: d.content_sha256 for d in corpus_store.read_corpus(clients.aws_for(settings, "s3"), settings)}
    bulks = -(-docs // 500)  # reembed.write sends 500 documents per `_bulk`
    result = Sweep()
    with FaultProxy(ring.url) as proxy:
        with_url(proxy.url)
        rig = Rig(ring, proxy, settings, catalog, truth)
        for n in range(points):
            phase = ("provision", "cutover", "repair")[n % 3]
            if phase == "provision":
                point = provision_point(rig, rng.randint(1, bulks), bulks)
            elif phase == "cutover":
                point = cutover_point(rig)
            else:
                point = repair_point(rig, rng.randint(1, max(1, docs // derived.BATCH)))
            result.points.append(point)
            say(
                f"  {n + 1:>2}. {phase:<9} kill at {point.moment}: node {point.killed}, "
                f"first run {point.first_run[:60]}; ok {point.ok}"
            )
        rig.client.indices.delete(index=f"{settings.opensearch.index_prefix}-*", params={"ignore_unavailable": "true"})
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--points", type=int, default=12)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--sweep-docs", type=int, default=1500)
    parser.add_argument("--sweep-only", action="store_true", help="skip the one-node vs three side by side")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(10**6)
    services.up()
    os.environ.update(services.environment())
    single = os.environ["OPENSEARCH_URL"]
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(os.environ.get("LOCKSTEP_CLUSTER_HOME") or Path(scratch) / "cluster-home")
        ring = Cluster(home, "")
        try:
            ring.up()
            ring.url = ring.node(1).url
            ring.wait_green()
            stacks = Path(scratch) / "stacks"
            one = three = None
            if not args.sweep_only:
                one = side_by_side(single, stacks, args.docs, args.rounds, 1, 0)
                print(
                    f"1 node : backfill {one['backfill_docs_per_s']} docs/s, rollback median {one['rollback_median_s']} s",
                    flush=True,
                )
                three = side_by_side(ring.url, stacks, args.docs, args.rounds, 3, 1)
                print(
                    f"3 nodes: backfill {three['backfill_docs_per_s']} docs/s, rollback median {three['rollback_median_s']} s",
                    flush=True,
                )
            print(f"kill sweep: {args.points} points on the cluster (seed {seed})", flush=True)
            result = sweep(
                ring, stacks, args.sweep_docs, args.points, random.Random(seed), say=lambda s: print(s, flush=True)
            )
        finally:
            if not os.environ.get("LOCKSTEP_CLUSTER_HOME"):
                ring_env = ring.env()
                from clusterctl import lockstep

                lockstep("services", "down", env=ring_env)
    summary = {
        "seed": seed,
        "docs": args.docs,
        "seconds": round(time.monotonic() - started, 1),
        "one_node": one,
        "three_nodes": three,
        "sweep": {**result.counts(), "points_detail": [asdict(p) for p in result.points]},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    counts = result.counts()
    print(
        f"kill sweep: {counts['landed']} of {counts['points']} landed {counts['by_phase']}; resumed exactly "
        f"{counts['resumed_exactly']}; lost {counts['lost']}; false consistent {counts['false_consistent']} (the gate alone listed a dead node's copies "
        f"{counts['gate_listed_dead']}); the check's reading while a node was down: {counts['gate']} → {RESULTS}"
    )
    return (
        0
        if counts["lost"] == 0 and counts["false_consistent"] == 0 and counts["resumed_exactly"] == counts["landed"]
        else 1
    )


if __name__ == "__main__":
    sys.exit(main())
