"""The real model (catalog v4, all-MiniLM-L6-v2 through onnxruntime) side by side in one run.

    python -m bench.real_model                    # 1,000 documents (~10 min on 2 shared cores)
    python -m bench.real_model --docs 10000       # the issue's rollback size (~25 ms/doc: ~15 min more)

On the same documents: the model's raw encode rate; a full `local` backfill of a fresh v4 index
vs that rate (goal ≥ 0.9: with a transformer the model is the limit, not OpenSearch); the `ray`
engine at 1 and 2 workers, one onnxruntime thread (one core) each, vs one worker and vs local
(goals: 2 workers ≥ 1.6× one, and ≥ local); then the local backfill's index is the retained v4
index of a stack that goes live on v2 and rolls back to v4 — timed like bench.rollback (apply
without its check) against that full re-embed. Last, the 10M / 100M projection at the measured
rates. Figures go to bench/results/real_model.json. Wall-clock on a shared machine: read ratios.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from bench import ray_scaling
from bench.rollback import ROLLBACKS
from lockstep import config, orchestrator, runtime, services, stackfile
from lockstep.ops import artifacts, clients, corpus_store, endpoints
from lockstep.ops.backfill import engine as backfill_engine

RESULTS = Path(__file__).resolve().parent / "results" / "real_model.json"
VERSION = "v4"
HOURS = (2, 8)  # finish a projected backfill within these many hours
CORPORA = (10_000_000, 100_000_000)


def settings_for(
    name: str, docs: int, catalog: config.Catalog, prefix: str, stack: str | None = None, **backfill
) -> config.StackSettings:
    """The bench's settings; `stack` (default `name`) is the stack the indices it builds belong to."""
    return config.settings_from_config(
        stack or name,
        {
            "pin": VERSION,
            "slots": {"blue": VERSION},
            "artifacts": {"bucket": f"{name}-artifacts"},
            "corpus": {"bucket": f"{name}-corpus", "size": docs},
            "opensearch": {"indexPrefix": prefix},
            "endpoints": {"backend": "local"},
            "pointerParameter": f"/{name}/live",
            "backfill": {"batchSize": 64, **backfill},
        },
        catalog,
    )


def encode_rate(embedder, texts: list[str]) -> tuple[float, float]:
    """(docs/s, seconds) of the model alone over `texts` (its own batching, this process's threads)."""
    started = time.perf_counter()
    embedder.encode(texts)
    seconds = time.perf_counter() - started
    return len(texts) / seconds, seconds


def ray_rates(name: str, docs: int, catalog: config.Catalog, entry) -> dict[int, dict]:
    """The ray engine at 1 and 2 workers on a local runtime, one onnxruntime thread per worker."""
    import ray

    started = time.perf_counter()
    ray.init(
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {**services.environment(), "LOCKSTEP_ENCODE_THREADS": "1"}},
    )
    print(f"  ray runtime up in {time.perf_counter() - started:.1f}s", flush=True)
    out = {}
    try:
        for workers in (1, 2):
            settings = settings_for(name, docs, catalog, f"{name}-ray{workers}", engine="ray", workers=workers)
            result = backfill_engine.sync_index(settings, entry, progress=False)
            assert result.embedded == docs, (result.embedded, docs)
            out[workers] = {"docs_per_s": round(result.rate, 2), "seconds": round(result.seconds, 1)}
            print(f"  ray engine, {workers} worker(s): {result.rate:,.1f} docs/s ({result.seconds:.1f}s)", flush=True)
    finally:
        ray.shutdown()
    return out


def rollback_stack(name: str) -> str:
    return f"{name}-rb"


def rollback(name: str, docs: int, catalog: config.Catalog, root: Path) -> dict:
    """A stack whose v4 index is the local backfill's: live on v2 (v4 the standby), then pinned back
    to v4 (and on, v2, v4, …: ROLLBACKS flips). Returns the median flip's apply time without its
    check step, what the flips embedded, and the recall after the last one."""
    stack = rollback_stack(name)
    stackfile.write_stack(
        root,
        stack,
        {
            "pin": "v2",
            "slots": {"blue": "v2", "green": VERSION},
            "artifacts": {"bucket": f"{name}-artifacts"},
            "opensearch": {"indexPrefix": f"{name}-local"},
            "corpus": {"bucket": f"{name}-corpus", "size": docs},
            "endpoints": {"backend": "local"},
            "pointerParameter": f"/{name}/live",
        },
    )

    def apply() -> tuple[float, orchestrator.ApplyResult]:
        started = time.perf_counter()
        result = orchestrator.apply(config.load_stack(stack, root), catalog, progress=False, say=lambda _: None)
        total = time.perf_counter() - started
        if not (result.record and result.record.passed):
            failures = [c.name for c in result.record.failures] if result.record else "no record"
            raise SystemExit(f"bench: the check failed on {stack}: {failures}")
        return total - sum(s.seconds for s in result.steps if s.step.kind == "check"), result

    try:
        apply()  # v2 live (its index provisioned), v4 warm in green on the retained index
        runs, embedded = [], 0
        for flip in range(ROLLBACKS):
            stackfile.set_pin(stack, VERSION if flip % 2 == 0 else "v2", root)
            seconds, back = apply()
            runs.append(seconds)
            embedded += back.embedded
        recall = next(c.observed for c in back.record.checks if c.name == "recall") if back.record else ""
        return {
            "rollback_s": round(statistics.median(runs), 3),
            "rollback_runs_s": [round(r, 3) for r in runs],
            "embedded": embedded,
            "recall": recall,
        }
    finally:
        endpoints.stop_local_slots(config.load_stack(stack, root))


def projection(per_worker: float, machine: float) -> list[dict]:
    """Hours on this machine at its best measured backfill rate, and worker cores (at `per_worker`
    docs/s each) needed to finish in HOURS — the embedding side only (the bulk side: README "Scaling")."""
    rows = []
    for docs in CORPORA:
        row: dict = {"docs": docs, "hours_here": round(docs / machine / 3600, 1)}
        for hours in HOURS:
            row[f"workers_{hours}h"] = math.ceil(docs / (hours * 3600 * per_worker))
            row[f"docs_per_s_{hours}h"] = round(docs / (hours * 3600))
        rows.append(row)
    return rows


def run(docs: int) -> dict:
    os.environ.update(services.environment())
    catalog = config.load_catalog()
    entry = catalog.get(VERSION)
    name = f"rmbench-{uuid.uuid4().hex[:8]}"
    # The local backfill builds the v4 index the rollback below reattaches: stamped with that stack.
    base = settings_for(name, docs, catalog, f"{name}-local", stack=rollback_stack(name), engine="local")
    s3 = clients.aws_for(base, "s3")
    artifacts.ensure_bucket(s3, base.artifacts.bucket)
    corpus_etag = corpus_store.ensure_corpus(s3, base).ref.etag
    artifacts.publish_artifact(s3, base, entry)
    documents = corpus_store.read_corpus(s3, base)
    embedder = artifacts.load_embedder(s3, base.artifacts.bucket, entry)
    print(f"{len(documents):,} documents, {os.cpu_count()} CPUs, {entry.family} ({entry.dimension} dims)", flush=True)
    figures: dict = {
        "docs": len(documents),
        "version": VERSION,
        "family": entry.family,
        "cpus": os.cpu_count(),
        "machine": f"{platform.node()} · {os.cpu_count()} cores · Python {platform.python_version()}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"python -m bench.real_model --docs {docs}",
    }
    began = time.perf_counter()
    rate, seconds = encode_rate(embedder, [d.text for d in documents])
    figures["encode"] = {"docs_per_s": round(rate, 2), "seconds": round(seconds, 1)}
    print(f"  raw encode: {rate:,.1f} docs/s ({seconds:.1f}s)", flush=True)

    # b: bulk indexing alone of the same documents' pre-computed 384-dim vectors, one writer, as the
    # local engine writes; with e, the ceiling a backfill that shares these cores can reach.
    bulk = ray_scaling.bulk_ceiling(settings_for(name, docs, catalog, f"{name}-bulk"), entry, documents, 1)
    ceiling = 1 / (1 / rate + 1 / bulk)
    figures["bulk"] = {"docs_per_s": round(bulk, 1), "encode_then_bulk_docs_per_s": round(ceiling, 2)}
    print(
        f"  bulk of pre-computed vectors alone: {bulk:,.0f} docs/s → 1/(1/e + 1/b) = {ceiling:,.1f} docs/s", flush=True
    )

    # Stamped with the corpus it was built from, as an apply's provision stamps it: the rollback below
    # reattaches a synced index (an unstamped one is scanned for its delta by every plan).
    local = backfill_engine.sync_index(
        base, entry, progress=False, embedder=embedder, documents=documents, corpus_etag=corpus_etag
    )
    assert local.embedded == len(documents)
    figures["local"] = {"docs_per_s": round(local.rate, 2), "seconds": round(local.seconds, 1)}
    print(f"  local backfill: {local.rate:,.1f} docs/s ({local.seconds:.1f}s)", flush=True)

    ray = ray_rates(name, len(documents), catalog, entry)
    figures["ray"] = {str(workers): value for workers, value in ray.items()}

    back = rollback(name, len(documents), catalog, runtime.home() / "bench-stacks")
    assert back["embedded"] == 0, "a rollback to a retained, synced index must embed nothing"
    figures["rollback"] = {**back, "full_reembed_s": figures["local"]["seconds"]}
    print(f"  rollback to the retained v4 index: {back['rollback_s']:.2f}s (full re-embed {local.seconds:.1f}s)")

    figures["ratios"] = {
        "backfill_vs_encode": round(local.rate / rate, 2),
        "backfill_vs_encode_then_bulk": round(local.rate / ceiling, 2),
        "ray_2_vs_ray_1": round(ray[2]["docs_per_s"] / ray[1]["docs_per_s"], 2),
        "ray_1_vs_local": round(ray[1]["docs_per_s"] / local.rate, 2),
        "ray_2_vs_local": round(ray[2]["docs_per_s"] / local.rate, 2),
        "rollback_speedup": round(local.seconds / max(back["rollback_s"], 1e-9), 1),
    }
    # Per worker core: the raw encode rate over this machine's cores (a steady rate: Ray's one-worker
    # figure carries its start-up, which a 10M-document run amortises).
    per_core = rate / (os.cpu_count() or 1)
    figures["per_core_docs_per_s"] = round(per_core, 2)
    figures["projection"] = projection(per_core, max(local.rate, ray[2]["docs_per_s"]))
    figures["seconds"] = round(time.perf_counter() - began)
    print(json.dumps({"ratios": figures["ratios"], "projection": figures["projection"]}, indent=2), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    clients.opensearch(base.opensearch).indices.delete(index=f"{name}-*", params={"ignore_unavailable": "true"})
    return figures


def rows(figures: dict) -> list[tuple[str, str, str, bool]]:
    """(what, measured, goal, met) rows for bench/__main__'s summary."""
    ratios, docs = figures["ratios"], figures["docs"]
    ray, local = figures["ray"], figures["local"]
    return [
        (
            f"real model ({figures['family']}) raw encode, {docs:,} docs",
            f"{figures['encode']['docs_per_s']:,.1f} docs/s",
            "report",
            True,
        ),
        (
            "real model: local backfill vs 1/(1/e + 1/b): raw encode e, bulk of pre-computed vectors b",
            f"{ratios['backfill_vs_encode_then_bulk']:.2f} ({local['docs_per_s']:,.1f} docs/s; "
            f"e {figures['encode']['docs_per_s']:,.1f}, b {figures['bulk']['docs_per_s']:,.0f} → "
            f"{figures['bulk']['encode_then_bulk_docs_per_s']:,.1f} docs/s)",
            "≥ 0.9",
            ratios["backfill_vs_encode_then_bulk"] >= 0.9,
        ),
        (
            "real model: backfill vs raw encode alone",
            f"{ratios['backfill_vs_encode']:.2f}",
            "report",
            True,
        ),
        (
            "real model: Ray 2 workers vs 1 worker",
            f"{ratios['ray_2_vs_ray_1']:.2f}× ({ray['2']['docs_per_s']:,.1f} vs {ray['1']['docs_per_s']:,.1f} docs/s)",
            "≥ 1.6×",
            ratios["ray_2_vs_ray_1"] >= 1.6,
        ),
        (
            "real model: Ray 2 workers vs local",
            f"{ratios['ray_2_vs_local']:.2f}× (1 worker {ratios['ray_1_vs_local']:.2f}×)",
            "≥ 1",
            ratios["ray_2_vs_local"] >= 1,
        ),
        (
            f"real model: rollback to a retained v4 index vs full re-embed, {docs:,} docs",
            f"{ratios['rollback_speedup']:,.0f}× ({figures['rollback']['full_reembed_s']:.1f}s vs {figures['rollback']['rollback_s']:.2f}s)",
            "≥ 100×",
            ratios["rollback_speedup"] >= 100,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1000)
    args = parser.parse_args(argv)
    services.up()
    figures = run(args.docs)
    for what, measured, goal, met in rows(figures):
        print(f"  {'✓' if met else '✗'} {what}: {measured} (goal {goal})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
