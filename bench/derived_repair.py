"""Derived repair against its ceiling, side by side on the same ids (issue 25).

    .venv/bin/python -m bench.derived_repair [--docs 2000] [--rounds 2]

Arms, alternating per round, all on the same document ids of one index:
- msearch: the k-NN part alone — `ops.derived.related` (one mget + one msearch per 50 ids);
- write: the DynamoDB part alone — bare BatchWriteItems (25 items each) of the same lists, into a
  scratch table;
- repair: `ops.derived.repair` (recompute) of a store whose items all carry another version.
The ceiling is the slower of the first two (they can overlap); goal: repair ≥ 0.9 of it. The
store's `writeRate` is set far above both (a user's limit, not part of the measurement).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid

from bench import cutover_load
from lockstep import config, services
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
    seconds: dict[str, list[float]] = {"msearch": [], "write": [], "repair": []}
    try:
        cutover_load.fill(search, settings, catalog, documents)
        for target in settings.derived:
            store_ops.ensure_table(settings, target)
        for _ in range(rounds):
            store_ops.write_related(settings, "v2", ids, store=store)  # every item stale for pin v1
            started = time.perf_counter()
            lists = [r for r in store_ops.related(search, index_name, ids, K).values() if r]
            seconds["msearch"].append(time.perf_counter() - started)
            started = time.perf_counter()
            for chunk in batched(lists, 25):
                store_ops._batch_put(dynamodb, scratch.table, [store_ops._item("v1", r, K) for r in chunk])
            seconds["write"].append(time.perf_counter() - started)
            started = time.perf_counter()
            result = store_ops.repair(settings, catalog, store, progress=False)
            seconds["repair"].append(time.perf_counter() - started)
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
    return {
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
