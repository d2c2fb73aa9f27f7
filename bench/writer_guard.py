"""The guarded derived-record write path (`lockstep.derived.Writer`) in both guard modes vs an
unguarded write of the same records, side by side in one run (rounds alternate, so every arm sees
the same machine load and the same growing table).

All arms write the same items — doc_id, model_version, written_at, content_sha256, neighbours, k —
to the same DynamoDB table (moto here), with the live pointer read through its TTL cache:
- unguarded: BatchWriteItem of 25, no fence;
- verify: the same BatchWriteItems (200 records per guarded batch), then one consistent GetItem of
  the fence per batch (`derived[].writerGuard: verify`);
- transaction: one TransactWriteItems per 99 records plus the ConditionCheck on the fence
  (`writerGuard: transaction`, atomic; on AWS two write units per item).
Goal: guarded ≥ 0.95 of unguarded. Moto's transactions copy the table per item, so the transaction
arm slows as the table grows: keep --records modest.

    python -m bench.writer_guard --records 500 --rounds 3
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from boto3.dynamodb.types import TypeSerializer

from bench.rollback import RESULTS
from lockstep import config, services
from lockstep import derived as application
from lockstep.ops import clients, index, live_state
from lockstep.ops import derived as store_ops
from lockstep.ops.corpus import content_sha256

serialize = TypeSerializer().serialize
UNGUARDED_BATCH = 25  # BatchWriteItem's limit
MODES = ("verify", "transaction")


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


def stack(unique: str, catalog, mode: str) -> config.StackSettings:
    return config.settings_from_config(
        unique,
        {
            "pin": "v1",
            "slots": {"blue": "v1", "green": "v2"},
            "artifacts": {"bucket": f"{unique}-artifacts"},
            "corpus": {"bucket": f"{unique}-corpus"},
            "opensearch": {"indexPrefix": unique},
            "endpoints": {"backend": "local"},
            "pointerParameter": f"/{unique}/live",
            "derived": [
                {"name": "related", "kind": "related-documents", "table": f"{unique}-related", "writerGuard": mode}
            ],
        },
        catalog,
    )


def run(count: int = 500, rounds: int = 3) -> dict:
    unique = f"wg{uuid.uuid4().hex[:8]}"
    catalog = config.load_catalog()
    settings = stack(unique, catalog, "verify")
    store = settings.derived[0]
    store_ops.ensure_table(settings, store)
    ssm = clients.aws_for(settings, "ssm")
    pointer = live_state.Pointer("v1", "e", f"{unique}-v1", "0" * 64, index.now())
    store_ops.write_fences(settings, pointer.version, pointer.switched_at)  # what the cutover does first
    live_state.write_pointer(ssm, settings.pointer_name, pointer)
    client = store_ops.dynamodb(settings)
    data = records(count)
    writers = {mode: application.Writer(stack(unique, catalog, mode), "related", "v1") for mode in MODES}
    arms: dict[str, Callable[[], object]] = {"unguarded": lambda: unguarded(client, store.table, "v1", data)}
    arms.update({mode: functools.partial(w.put_many, data) for mode, w in writers.items()})
    rates: dict[str, list[float]] = {name: [] for name in arms}
    try:
        unguarded(client, store.table, "v1", data)  # warm-up: the table's first writes are slower
        for _ in range(rounds):
            for name, write in arms.items():
                started = time.perf_counter()
                write()
                rates[name].append(count / (time.perf_counter() - started))
        assert all(w.put_many(data[:1]).written == 1 for w in writers.values())
    finally:
        client.delete_table(TableName=store.table)
        ssm.delete_parameter(Name=settings.pointer_name)
    median = {name: statistics.median(values) for name, values in rates.items()}
    figures = {
        "records": count,
        "rounds": rounds,
        "per_s": {name: round(rate, 1) for name, rate in median.items()},
        "ratio": {mode: round(median[mode] / median["unguarded"], 3) for mode in MODES},
        "pointer_reads": {mode: w.pointer.reads for mode, w in writers.items()},
        "batch": {"unguarded": UNGUARDED_BATCH, **{mode: w.batch for mode, w in writers.items()}},
        "load": os.getloadavg()[0],
        "runs": {k: [round(v, 1) for v in vs] for k, vs in rates.items()},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "writer_guard.json").write_text(json.dumps(figures, indent=2))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    services.up()
    os.environ.update(services.environment())
    figures = run(args.records, args.rounds)
    per_s, ratio = figures["per_s"], figures["ratio"]
    print(
        f"{figures['records']} records × {figures['rounds']} rounds (load {figures['load']:.1f}): unguarded "
        f"{per_s['unguarded']:,.0f}/s; verify {per_s['verify']:,.0f}/s = {ratio['verify']:.3f}; transaction "
        f"{per_s['transaction']:,.0f}/s = {ratio['transaction']:.3f} of unguarded (goal ≥ 0.95)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
