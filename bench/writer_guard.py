"""The guarded derived-record write path (`lockstep.derived.Writer`) vs an unguarded write of the
same records, side by side in one run (rounds alternate, so both see the same machine load).

Both write the same items — doc_id, model_version, written_at, content_sha256, neighbours, k — to
the same DynamoDB table (moto here), each in its API's largest request: unguarded, BatchWriteItem of
25; guarded, one TransactWriteItems of 99 records plus the ConditionCheck on the table's fence item
(the check-and-write is atomic), with the live pointer read through its TTL cache as the fast path.
On AWS a transactional write costs two write units per item (BatchWriteItem: one): the bench
measures throughput, not cost. Goal: ≥ 0.95 of unguarded. A third arm writes the same transactions
without the fence check, to tell the check's cost from the transaction's.

    python -m bench.writer_guard --records 2000 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime

from boto3.dynamodb.types import TypeSerializer

from bench.rollback import RESULTS
from lockstep import config, services
from lockstep import derived as application
from lockstep.ops import clients, index
from lockstep.ops import derived as store_ops
from lockstep.ops.corpus import content_sha256

serialize = TypeSerializer().serialize
UNGUARDED_BATCH = 25  # BatchWriteItem's limit


def records(count: int) -> list[application.Record]:
    return [
        application.Record(
            f"doc-{n}",
            content_sha256(f"document {n}"),
            {"neighbours": [f"doc-{(n + j) % count}" for j in range(1, 6)], "k": 5},
        )
        for n in range(count)
    ]


def items(version: str, batch: list[application.Record]) -> list[dict]:
    """The items an application writes without lockstep's guard: the same stamps, no fence."""
    stamp = datetime.now(UTC).isoformat(timespec="microseconds")
    return [
        {
            **{name: serialize(value) for name, value in r.attributes.items()},
            "doc_id": {"S": r.doc_id},
            "model_version": {"S": version},
            "written_at": {"S": stamp},
            "content_sha256": {"S": r.content_sha256},
        }
        for r in batch
    ]


def unguarded(client, table: str, version: str, data: list[application.Record]) -> None:
    """BatchWriteItem, 25 at a time: the fastest unguarded write."""
    for n in range(0, len(data), UNGUARDED_BATCH):
        store_ops._batch_put(client, table, items(version, data[n : n + UNGUARDED_BATCH]))


def transactional(client, table: str, version: str, data: list[application.Record]) -> None:
    """TransactWriteItems of the guarded path's size without the fence check: separates what the
    check costs from what an atomic (transactional) write costs on this DynamoDB."""
    for n in range(0, len(data), application.BATCH):
        puts = [{"Put": {"TableName": table, "Item": i}} for i in items(version, data[n : n + application.BATCH])]
        client.transact_write_items(TransactItems=puts)


def run(count: int = 2000, rounds: int = 5) -> dict:
    unique = f"wg{uuid.uuid4().hex[:8]}"
    catalog = config.load_catalog()
    settings = config.settings_from_config(
        unique,
        {
            "pin": "v1",
            "slots": {"blue": "v1", "green": "v2"},
            "artifacts": {"bucket": f"{unique}-artifacts"},
            "corpus": {"bucket": f"{unique}-corpus"},
            "opensearch": {"indexPrefix": unique},
            "endpoints": {"backend": "local"},
            "pointerParameter": f"/{unique}/live",
            "derived": [{"name": "related", "kind": "related-documents", "table": f"{unique}-related"}],
        },
        catalog,
    )
    store = settings.derived[0]
    store_ops.ensure_table(settings, store)
    ssm = clients.aws_for(settings, "ssm")
    pointer = index.Pointer("v1", "e", f"{unique}-v1", "0" * 64, index.now())
    store_ops.write_fences(settings, pointer.version, pointer.switched_at)  # what the cutover does first
    index.write_pointer(ssm, settings.pointer_name, pointer)
    client = store_ops.dynamodb(settings)
    data = records(count)
    writer = application.Writer(settings, "related", "v1")
    arms = {
        "unguarded": lambda: unguarded(client, store.table, "v1", data),
        "transaction_unchecked": lambda: transactional(client, store.table, "v1", data),
        "guarded": lambda: writer.put_many(data),
    }
    rates: dict[str, list[float]] = {name: [] for name in arms}
    try:
        unguarded(client, store.table, "v1", data)  # warm-up: the table's first writes are slower
        for _ in range(rounds):
            for name, write in arms.items():
                started = time.perf_counter()
                write()
                rates[name].append(count / (time.perf_counter() - started))
        assert writer.put_many(data[:1]).written == 1
    finally:
        client.delete_table(TableName=store.table)
        ssm.delete_parameter(Name=settings.pointer_name)
    median = {name: statistics.median(values) for name, values in rates.items()}
    figures = {
        "records": count,
        "rounds": rounds,
        "guarded_per_s": round(median["guarded"], 1),
        "unguarded_per_s": round(median["unguarded"], 1),
        "transaction_unchecked_per_s": round(median["transaction_unchecked"], 1),
        "ratio": round(median["guarded"] / median["unguarded"], 3),
        "ratio_vs_transaction": round(median["guarded"] / median["transaction_unchecked"], 3),
        "pointer_reads": writer.pointer.reads,
        "batch": {"guarded": application.BATCH, "unguarded": UNGUARDED_BATCH},
        "runs": {k: [round(v, 1) for v in vs] for k, vs in rates.items()},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "writer_guard.json").write_text(json.dumps(figures, indent=2))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    services.up()
    os.environ.update(services.environment())
    figures = run(args.records, args.rounds)
    print(
        f"guarded {figures['guarded_per_s']:,.0f} records/s vs unguarded {figures['unguarded_per_s']:,.0f}: "
        f"{figures['ratio']:.2f} (goal ≥ 0.95; {figures['pointer_reads']} pointer reads); vs the same "
        f"transactions without the fence check ({figures['transaction_unchecked_per_s']:,.0f}/s): "
        f"{figures['ratio_vs_transaction']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
