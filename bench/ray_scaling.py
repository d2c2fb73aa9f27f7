"""Re-embedding throughput: the `local` engine vs the `ray` engine at 1 and 2 workers, on the same
documents in one run, plus the OpenSearch bulk ceiling (pre-computed vectors, no embedding).

    python -m bench.ray_scaling                 # 20,000 documents (~4 min on 2 cores)
    python -m bench.ray_scaling --docs 100000   # the issue's size (~20 min here: see README "Scaling")

Each engine provisions its own fresh index of the same corpus (full load: refresh off, replicas 0).
The Ray runtime is started once, before the timings (its start-up is reported apart). Figures go
to bench/results/ray_scaling.json. Wall-clock on a shared 2-core machine: read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from lockstep import config, services
from lockstep.ops import artifacts, clients, corpus_store, index, reembed
from lockstep.ops.backfill import engine as backfill_engine

RESULTS = Path(__file__).resolve().parent / "results" / "ray_scaling.json"


def stack(name: str, docs: int, catalog: config.Catalog, **backfill) -> config.StackSettings:
    return config.settings_from_config(
        name,
        {
            "pin": "v1",
            "slots": {"blue": "v1"},
            "artifacts": {"bucket": f"{name}-artifacts"},
            "corpus": {"bucket": f"{name}-corpus", "size": docs},
            "opensearch": {"indexPrefix": name},
            "endpoints": {"backend": "local"},
            "pointerParameter": f"/{name}/live",
            "backfill": {"batchSize": 256, **backfill},
        },
        catalog,
    )


def with_prefix(settings: config.StackSettings, prefix: str, **backfill) -> config.StackSettings:
    return settings.model_copy(
        update={
            "opensearch": settings.opensearch.model_copy(update={"index_prefix": prefix}),
            "backfill": settings.backfill.model_copy(update=backfill),
        }
    )


def bulk_ceiling(settings: config.StackSettings, entry: config.CatalogEntry, documents, threads: int) -> float:
    """docs/s of bulk indexing alone: vectors embedded beforehand, `threads` concurrent writers
    (reembed.write each), into a fresh index in bulk mode."""
    from concurrent.futures import ThreadPoolExecutor

    client = clients.opensearch(settings.opensearch)
    index.ensure_index(client, settings, entry)
    name = settings.opensearch.index_name(entry.version)
    s3 = clients.aws_for(settings, "s3")
    embedder = artifacts.load_embedder(s3, settings.artifacts.bucket, entry)
    actions = list(reembed.index_actions(documents, embedder, name, 512))
    index.set_bulk_mode(client, name, True, settings)
    started = time.perf_counter()
    parts = [actions[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        written = sum(pool.map(lambda part: reembed.write(clients.opensearch(settings.opensearch), part), parts))
    seconds = time.perf_counter() - started
    index.set_bulk_mode(client, name, False, settings)
    assert written == len(documents)
    return len(documents) / seconds


def encode_rate(settings: config.StackSettings, entry: config.CatalogEntry, documents) -> float:
    """docs/s of the model alone on one core (what one Ray worker can embed at best)."""
    embedder = artifacts.load_embedder(clients.aws_for(settings, "s3"), settings.artifacts.bucket, entry)
    sample = documents[:5000]
    started = time.perf_counter()
    for i in range(0, len(sample), 256):
        embedder.encode([d.text for d in sample[i : i + 256]])
    return len(sample) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--keep", action="store_true", help="Keep the benchmark's indices.")
    args = parser.parse_args()
    os.environ.update(services.environment())
    catalog = config.load_catalog()
    entry = catalog.get("v1")
    name = f"raybench-{uuid.uuid4().hex[:8]}"
    base = stack(name, args.docs, catalog)
    s3 = clients.aws_for(base, "s3")
    artifacts.ensure_bucket(s3, base.artifacts.bucket)
    corpus_store.ensure_corpus(s3, base)
    artifacts.publish_artifact(s3, base, entry)
    documents = corpus_store.read_corpus(s3, base)
    print(f"{len(documents):,} documents, {os.cpu_count()} CPUs", flush=True)

    figures: dict = {
        "docs": len(documents),
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": f"python -m bench.ray_scaling --docs {args.docs}",
    }
    figures["encode_docs_per_s_one_core"] = round(encode_rate(base, entry, documents), 1)
    print(f"  model alone, one core: {figures['encode_docs_per_s_one_core']:,.0f} docs/s", flush=True)
    for threads in (1, 2):
        rate = bulk_ceiling(with_prefix(base, f"{name}-bulk{threads}"), entry, documents, threads)
        figures[f"bulk_ceiling_docs_per_s_{threads}_writers"] = round(rate, 1)
        print(f"  OpenSearch bulk alone, {threads} writer(s): {rate:,.0f} docs/s", flush=True)

    local = backfill_engine.sync_index(with_prefix(base, f"{name}-local", engine="local"), entry, progress=False)
    figures["local_docs_per_s"] = round(local.rate, 1)
    print(f"  local engine: {local.rate:,.0f} docs/s ({local.seconds:.1f}s)", flush=True)

    import ray

    started = time.perf_counter()
    ray.init(
        include_dashboard=False,
        log_to_driver=False,
        logging_level="WARNING",
        runtime_env={"env_vars": services.environment()},
    )
    figures["ray_start_s"] = round(time.perf_counter() - started, 1)
    for workers in (1, 2):
        result = backfill_engine.sync_index(
            with_prefix(base, f"{name}-ray{workers}", engine="ray", workers=workers), entry, progress=False
        )
        assert result.embedded == len(documents)
        figures[f"ray_{workers}_workers_docs_per_s"] = round(result.rate, 1)
        print(f"  ray engine, {workers} worker(s): {result.rate:,.0f} docs/s ({result.seconds:.1f}s)", flush=True)
    ray.shutdown()

    local_rate = figures["local_docs_per_s"]
    figures["ratios"] = {
        "ray_1_vs_local": round(figures["ray_1_workers_docs_per_s"] / local_rate, 2),
        "ray_2_vs_local": round(figures["ray_2_workers_docs_per_s"] / local_rate, 2),
        "ray_2_vs_ray_1": round(figures["ray_2_workers_docs_per_s"] / figures["ray_1_workers_docs_per_s"], 2),
        "local_vs_bulk_ceiling": round(local_rate / figures["bulk_ceiling_docs_per_s_1_writers"], 2),
        # The model and OpenSearch share the cores: encode (e) and bulk (b) cannot both run at full
        # speed, so a backfill that does one after the other per batch peaks at 1/(1/e + 1/b).
        "local_vs_encode_then_bulk": round(
            local_rate * (1 / figures["encode_docs_per_s_one_core"] + 1 / figures["bulk_ceiling_docs_per_s_1_writers"]),
            2,
        ),
    }
    print(json.dumps(figures["ratios"], indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures: {RESULTS}")
    if not args.keep:
        client = clients.opensearch(base.opensearch)
        client.indices.delete(index=f"{name}-*", ignore_unavailable=True)


if __name__ == "__main__":
    main()
