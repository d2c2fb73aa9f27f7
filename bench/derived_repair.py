"""Derived repair against its ceiling, side by side on the same ids (issue 25).

    .venv/bin/python -m bench.derived_repair [--docs 2000] [--rounds 2]

Arms, alternating per round, all on the same document ids of one index:
- msearch: the k-NN part alone — `ops.derived.related` (one mget + one msearch per 50 ids);
- write: the DynamoDB part alone — bare BatchWriteItems (25 items each) of the same lists, into a
  scratch table;
- repair: `ops.derived.repair` (recompute) of a store whose items all carry another version.
The ceiling is the slower of the first two (they can overlap); goal: repair ≥ 0.9 of it. The
store's `writeRate` is set far above both (a user's limit, not part of the measurement).

Each arm's CPU seconds are counted too (OpenSearch's and moto's processes, and this one), with a
fourth arm: the repair's work-list scan alone. On one machine the three servers of the repair
share its cores, so the sum of the arms' CPU over the cores is a floor no overlap can beat: the
`cpu_floor_ratio` says how close to the ceiling this machine can get at all.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from functools import partial
from pathlib import Path

from bench import cutover_load
from lockstep import config, runtime, services
from lockstep.ops import clients, corpus
from lockstep.ops import derived as store_ops
from lockstep.ops.progress import batched

K = 10


def _stack(prefix: str, catalog: config.Catalog) -> config.StackSettings:
    """The bench stack with two related-document stores: the one repaired and the bare ceiling's."""
    stores = [
        {"name": name, "kind": "related-documents", "table": f"{prefix}-{name}", "k": K, "writeRate": 1e6}
        for name in ("related", "ceiling")
    ]
    return cutover_load.build_stack(prefix, catalog, derived=stores)


def _cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by the embedded OpenSearch and moto processes and by this one."""
    used = {}
    for name in ("opensearch", "moto"):
        managed = runtime.Managed.load(name)
        fields = Path(f"/proc/{managed.pid}/stat").read_text().rsplit(")", 1)[1].split() if managed else []
        used[name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else 0.0
    mine = os.times()
    used["client"] = mine.user + mine.system
    return used


def run(docs: int, rounds: int) -> dict:
    catalog = config.load_catalog()
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    settings = _stack(prefix, catalog)
    search = clients.opensearch(settings.opensearch)
    dynamodb = store_ops.dynamodb(settings)
    store, scratch = settings.derived
    documents = corpus.stdlib_documents(docs)
    ids = [d.id for d in documents]
    index_name = settings.opensearch.index_name("v1")
    seconds: dict[str, list[float]] = {"msearch": [], "write": [], "scan": [], "repair": []}
    cpu: dict[str, list[float]] = {arm: [] for arm in seconds}

    def timed(arm: str, work):
        before, started = _cpu_seconds(), time.perf_counter()
        out = work()
        seconds[arm].append(time.perf_counter() - started)
        cpu[arm].append(sum(_cpu_seconds().values()) - sum(before.values()))
        return out

    def bare_writes(lists) -> None:
        for chunk in batched(lists, 25):
            store_ops._batch_put(dynamodb, scratch.table, [store_ops._item("v1", r, K) for r in chunk])

    try:
        cutover_load.fill(search, settings, catalog, documents)
        for target in settings.derived:
            store_ops.ensure_table(settings, target)
        for _ in range(rounds):
            store_ops.write_related(settings, "v2", ids, store=store)  # every item stale for pin v1
            lists = timed("msearch", lambda: [r for r in store_ops.related(search, index_name, ids, K).values() if r])
            timed("write", partial(bare_writes, lists))
            scanned = timed("scan", lambda: sum(map(len, store_ops._work_pages(dynamodb, store, catalog, "v1"))))
            assert scanned == len(ids), scanned
            result = timed("repair", lambda: store_ops.repair(settings, catalog, store, progress=False))
            assert result.rewritten == len(ids), result.summary()
    finally:
        search.indices.delete(index=f"{prefix}-*", params={"ignore_unavailable": "true"})
        for target in settings.derived:
            try:
                dynamodb.delete_table(TableName=target.table)
            except dynamodb.exceptions.ResourceNotFoundException:
                pass
    rates = {arm: round(len(ids) / statistics.median(values), 1) for arm, values in seconds.items()}
    ceiling = min(rates["msearch"], rates["write"])
    cpu_s = {arm: round(statistics.median(values), 2) for arm, values in cpu.items()}
    # The parts' CPU spread over every core, as if perfectly overlapped: the shortest repair this machine allows.
    floor_s = sum(cpu_s[arm] for arm in ("msearch", "write", "scan")) / (os.cpu_count() or 1)
    return {
        "cpu_s": cpu_s,
        "cpu_floor_s": round(floor_s, 2),
        "cpu_floor_ratio": round(min(1.0, (len(ids) / floor_s) / ceiling) if floor_s else 1.0, 2),
        "docs": len(ids),
        "rounds": rounds,
        "per_s": rates,
        "seconds": {arm: [round(v, 2) for v in values] for arm, values in seconds.items()},
        "ceiling_per_s": ceiling,
        "ratio": round(rates["repair"] / ceiling, 3),
        "load_average": round(os.getloadavg()[0], 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    services.up()
    os.environ.update(services.environment())
    figures = run(args.docs, args.rounds)
    rates = figures["per_s"]
    print(
        f"derived repair, {figures['docs']:,} ids (medians of {figures['rounds']}; load {figures['load_average']}): "
        f"msearch {rates['msearch']:,.0f}/s, BatchWriteItem {rates['write']:,.0f}/s, repair {rates['repair']:,.0f}/s "
        f"= {figures['ratio']:.2f} of the slower (goal ≥ 0.9)"
    )
    print(
        f"CPU seconds: {figures['cpu_s']} → on {os.cpu_count()} cores no repair can be shorter than "
        f"{figures['cpu_floor_s']:.2f}s = {figures['cpu_floor_ratio']:.2f} of the ceiling"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
