"""Rollback vs rebuild on the real servers: the figures behind "rolling back is instant".

For each corpus size: provision v1 (a full re-embed, timed), provision v2 and go live on it,
then roll back to v1 — a retained, synced index — and time that apply (plan + cutover; the
post-deploy check is timed apart, it has its own benchmark). At the first size also: backfill
throughput vs the model's raw encode throughput on the same documents, and `lockstep plan` wall
time as a person runs it. `catch_up_at`: a 1 % delta's catch-up step vs the same stack's full
re-embed (the one denominator of the catch-up rows).

    python -m bench.rollback [--sizes 10000 100000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

from lockstep import config, orchestrator, runtime, services, stackfile
from lockstep.ops import artifacts, clients, corpus_store, endpoints
from lockstep.ops.backfill.local import sync_documents
from lockstep.ops.corpus import stdlib_documents
from lockstep.ops.progress import batched

RESULTS = Path(__file__).parent / "results"


def quiet(_: str) -> None:
    pass


def scratch_stack(root: Path, size: int) -> tuple[Path, str]:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    stackfile.write_stack(
        root,
        name,
        {
            "pin": "v1",
            "slots": {"blue": "v1"},
            "artifacts": {"bucket": f"{name}-artifacts"},
            "opensearch": {"indexPrefix": name},
            "corpus": {"bucket": f"{name}-corpus", "size": size},
            "endpoints": {"backend": "local"},
            "pointerParameter": f"/lockstep/{name}/live",
            # 100k documents of joined docstrings crowd the golden answers a little (recall ~0.75).
            "check": {"recallFloor": 0.6},
        },
    )
    return root, name


def apply_timed(stack: str, stacks: Path, catalog) -> tuple[float, float, orchestrator.ApplyResult]:
    """(seconds without the check step, seconds of the check step, result)."""
    started = time.perf_counter()
    result = orchestrator.apply(config.load_stack(stack, stacks), catalog, progress=False, say=quiet)
    total = time.perf_counter() - started
    check_seconds = sum(s.seconds for s in result.steps if s.step.kind == "check")
    if not (result.record and result.record.passed):
        raise SystemExit(f"bench: the check failed on {stack}: {[c.name for c in result.record.failures]}")
    return total - check_seconds, check_seconds, result


ROLLBACKS = 5  # pin flips timed per size (v1, v2, v1, …: each a reattach of a retained, synced index)


def rollback_at(size: int, root: Path, catalog) -> dict:
    """Full re-embed = v1's provision step; rollback = the whole apply back to a retained version
    but its check, the median of ROLLBACKS flips (one flip is a ~70 ms figure on a shared machine).
    The stack ends with v1 live and v2 standby."""
    stacks, stack = scratch_stack(root, size)
    _, _, first = apply_timed(stack, stacks, catalog)
    full = sum(s.seconds for s in first.steps if s.step.kind == "provision")
    stackfile.set_pin(stack, "v2", stacks)
    apply_timed(stack, stacks, catalog)
    runs, checks = [], []
    for flip in range(ROLLBACKS):
        stackfile.set_pin(stack, "v1" if flip % 2 == 0 else "v2", stacks)
        seconds, check_seconds, back = apply_timed(stack, stacks, catalog)
        assert back.embedded == 0, "a rollback to a synced index must embed nothing"
        runs.append(seconds)
        checks.append(check_seconds)
    rollback, check_seconds = statistics.median(runs), statistics.median(checks)
    figures = {
        "docs": size,
        "full_reembed_s": round(full, 3),
        "rollback_s": round(rollback, 3),
        "rollback_runs_s": [round(r, 3) for r in runs],
        "rollback_check_s": round(check_seconds, 3),
        "speedup": round(full / rollback, 1),
        "stack": stack,
        "stacks": str(stacks),
    }
    print(
        f"  {size:>7} docs: full re-embed {full:7.2f}s · rollback {rollback:6.3f}s, median of {ROLLBACKS} "
        f"({full / rollback:,.0f}×) · check {check_seconds:.2f}s",
        flush=True,
    )
    return figures


def throughput(size: int, root: Path, catalog) -> dict:
    """Backfill (embed + bulk into a fresh index) vs raw encode of the same documents, on a
    stack of its own (it edits the corpus)."""
    stacks, stack = scratch_stack(root, size)
    settings = config.load_stack(stack, stacks)
    s3 = clients.aws("s3")
    artifacts.ensure_bucket(s3, settings.artifacts.bucket)
    corpus_store.ensure_corpus(s3, settings)
    documents = corpus_store.read_corpus(s3, settings)
    entry = catalog.get("v3")  # a version with no index yet: a fresh full load
    artifacts.publish_artifact(s3, settings, entry)
    embedder = artifacts.load_embedder(s3, settings.artifacts.bucket, entry)
    started = time.perf_counter()
    for batch in batched(documents, settings.backfill.batch_size):
        embedder.encode([d.text for d in batch])
    encode = time.perf_counter() - started
    client = clients.opensearch(settings.opensearch)
    result = sync_documents(client, settings, entry, embedder, documents, progress=False)
    ratio = (len(documents) / result.seconds) / (len(documents) / encode)
    print(
        f"  backfill {len(documents) / result.seconds:,.0f} docs/s vs raw encode {len(documents) / encode:,.0f} docs/s → {ratio:.2f}",
        flush=True,
    )
    return {
        "backfill_docs_per_s": round(len(documents) / result.seconds),
        "encode_docs_per_s": round(len(documents) / encode),
        "backfill_vs_encode": round(ratio, 3),
    }


CATCH_UPS = 3  # catch-ups timed per size: like a flip, one is a ~0.2 s figure on a shared machine


def catch_up_at(item: dict, root: Path, catalog) -> dict:
    """On a rollback stack (v1 live, v2 standby): change 1 % of the corpus, apply, and compare
    v1's catch-up step with v1's full provision measured earlier on the same stack; the median
    of CATCH_UPS such edits (each one changes the same 1 % again)."""
    settings = config.load_stack(item["stack"], root)
    s3 = clients.aws("s3")
    runs, changed = [], 0
    for _ in range(CATCH_UPS):
        documents = corpus_store.read_corpus(s3, settings)
        edited = [replace(d, text=d.text + " (edited)") if n % 100 == 0 else d for n, d in enumerate(documents)]
        corpus_store.write_corpus(s3, settings, edited)
        _, _, result = apply_timed(item["stack"], root, catalog)
        step = next(s for s in result.steps if (s.step.kind, s.step.version) == ("catch_up", "v1"))
        runs.append(step.seconds)
        changed = step.step.docs
    seconds = statistics.median(runs)
    ratio = seconds / item["full_reembed_s"]
    print(
        f"  {item['docs']:>7} docs: catch-up of {changed} changed docs {seconds:.2f}s, median of {CATCH_UPS} "
        f"vs full re-embed {item['full_reembed_s']:.2f}s → {ratio:.1%}",
        flush=True,
    )
    return {
        "docs": item["docs"],
        "delta_docs": changed,
        "catch_up_s": round(seconds, 3),
        "catch_up_runs_s": [round(r, 3) for r in runs],
        "full_reembed_s": item["full_reembed_s"],
        "ratio": round(ratio, 4),
    }


def plan_time(stack: str, stacks: Path) -> dict:
    env = {**services.environment(), "LOCKSTEP_STACKS_DIR": str(stacks), "PATH": str(Path(sys.executable).parent)}
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "lockstep.cli", "plan", "--stack", stack, "--to", "v2"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        runs.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"bench: lockstep plan failed: {done.stderr.strip()}")
    print(f"  lockstep plan: {min(runs):.2f}s (best of 3, whole process)", flush=True)
    return {"plan_s": round(min(runs), 3)}


def run(sizes: list[int]) -> dict:
    services.up()
    catalog = config.load_catalog()
    stdlib_documents(max(sizes))  # warm the docstring parse outside the timings
    root = Path(runtime.home()) / "bench-stacks"
    by_size = [rollback_at(size, root, catalog) for size in sizes]
    first = by_size[0]
    figures = {"rollback": by_size, **throughput(first["docs"], root, catalog), **plan_time(first["stack"], root)}
    if len(by_size) > 1:
        figures["rollback_growth"] = round(by_size[-1]["rollback_s"] / by_size[0]["rollback_s"], 3)
    return figures


def stop_slots(figures: dict) -> None:
    root = Path(runtime.home()) / "bench-stacks"
    for item in figures["rollback"]:
        endpoints.stop_local_slots(config.load_stack(item["stack"], root))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args(argv)
    figures = run(args.sizes)
    stop_slots(figures)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rollback.json").write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
