"""The guarded derived-record write path (`lockstep.derived.Writer`) vs an unguarded write of the
same records, side by side in one run (rounds alternate, so both see the same machine load).

Both write the same items — doc_id, model_version, written_at, content_sha256, neighbours, k — to
the same DynamoDB table (moto here) with BatchWriteItem in batches of 25; the guarded path adds the
version check against the live pointer, read through its TTL cache. Goal: ≥ 0.95 of unguarded.

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


def records(count: int) -> list[application.Record]:
    return [
        application.Record(
            f"doc-{n}",
            content_sha256(f"document {n}"),
            {"neighbours": [f"doc-{(n + j) % count}" for j in range(1, 6)], "k": 5},
        )
        for n in range(count)
    ]


def unguarded(client, table: str, version: str, batch: list[application.Record]) -> None:
    """What an application writes without lockstep's guard: the same stamps, no pointer check."""
    stamp = datetime.now(UTC).isoformat(timespec="microseconds")
    items = [
        {
            **{name: serialize(value) for name, value in r.attributes.items()},
            "doc_id": {"S": r.doc_id},
            "model_version": {"S": version},
            "written_at": {"S": stamp},
            "content_sha256": {"S": r.content_sha256},
        }
        for r in batch
    ]
    store_ops._batch_put(client, table, items)


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
    index.write_pointer(ssm, settings.pointer_name, index.Pointer("v1", "e", f"{unique}-v1", "0" * 64, index.now()))
    client = store_ops.dynamodb(settings)
    data = records(count)
    writer = application.Writer(settings, "related", "v1")
    rates: dict[str, list[float]] = {"guarded": [], "unguarded": []}
    try:
        for n in range(0, count, application.BATCH):  # warm-up: the table's first writes are slower
            unguarded(client, store.table, "v1", data[n : n + application.BATCH])
        for _ in range(rounds):
            started = time.perf_counter()
            for n in range(0, count, application.BATCH):
                unguarded(client, store.table, "v1", data[n : n + application.BATCH])
            rates["unguarded"].append(count / (time.perf_counter() - started))
            started = time.perf_counter()
            result = writer.put_many(data)
            rates["guarded"].append(count / (time.perf_counter() - started))
            assert result.written == count
    finally:
        client.delete_table(TableName=store.table)
        ssm.delete_parameter(Name=settings.pointer_name)
    guarded, plain = statistics.median(rates["guarded"]), statistics.median(rates["unguarded"])
    figures = {
        "records": count,
        "rounds": rounds,
        "guarded_per_s": round(guarded, 1),
        "unguarded_per_s": round(plain, 1),
        "ratio": round(guarded / plain, 3),
        "pointer_reads": writer.pointer.reads,
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
        f"{figures['ratio']:.2f} (goal ≥ 0.95; {figures['pointer_reads']} pointer reads)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
