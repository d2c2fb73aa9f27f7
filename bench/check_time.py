"""How long the consistency check takes as the index grows: 10k and 100k documents.

    .venv/bin/python bench/check_time.py [--sizes 10000 100000] [--repeats 5]

For each size a scratch stack (pin v1 in the blue slot, no standby) gets a synthetic corpus in S3
(random words plus a unique token per document) and is deployed by `orchestrator.apply`, so the
index holds real v1 vectors and every check, probes included, runs on a healthy stack. The check
is then timed `--repeats` times (median and max), with the parts that could grow with the index
timed on their own: reading the corpus from S3, the per-version aggregation, the count, and the
golden recall probe. Goal: ≤ 2 s at 100k and sublinear (ratio of times < ratio of sizes).

Loading 100k vectors keeps a 2-core machine's OpenSearch busy for minutes, long enough for a
concurrent `lockstep services up` to find the shared node slow and replace it. So by default the
bench loads a private OpenSearch node of its own (same installed distribution, own data dir and
ports, stopped by pid at the end); `--opensearch shared` uses the session's node, OPENSEARCH_URL
an existing cluster. S3/SSM are the embedded moto (or AWS_ENDPOINT_URL). The bench index is built
with `efConstruction` 64 to keep the load within minutes: graph quality only touches the recall
probe, which is timed on its own. Everything created lives under a fresh prefix and is deleted at
the end. Figures go to stdout and bench/results/check_time.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from lockstep import config, opensearch_node, orchestrator, reader, runtime, services  # noqa: E402
from lockstep.ops import check, clients, corpus_store, endpoints, live_state  # noqa: E402
from lockstep.ops.corpus import Document  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "check_time.json"
GOAL_SECONDS = 2.0


def synthetic_documents(size: int, seed: int = 6) -> list[Document]:
    """Sentences of random pseudo-words; the trailing token makes every document (and its golden
    query, its first sentence) unique."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocabulary = ["".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(3000)]
    return [
        Document(f"doc-{n:06d}", " ".join(rng.choices(vocabulary, k=rng.randint(10, 20))) + f" d{n}")
        for n in range(size)
    ]


def start_private_opensearch(tag: str) -> tuple[runtime.Managed, Path]:
    """A bench-only OpenSearch node from the installed distribution; returns it and its state dir."""
    install = opensearch_node.install()
    state = install.parent / f"checkbench-{tag}"
    for path in (state / "data", state / "logs"):
        path.mkdir(parents=True, exist_ok=True)
    port, transport = runtime.free_port(), runtime.free_port()
    argv = [
        str(install / "bin" / "opensearch"),
        "-Ediscovery.type=single-node",
        "-Enetwork.host=127.0.0.1",
        f"-Ehttp.port={port}",
        f"-Etransport.port={transport}",
        f"-Epath.data={state / 'data'}",
        f"-Epath.logs={state / 'logs'}",
        f"-Ecluster.name=lockstep-bench-{tag}",
        "-Ecluster.routing.allocation.disk.threshold_enabled=false",
        "-Eaction.auto_create_index=false",
    ]
    if os.geteuid() == 0:  # OpenSearch refuses root; `nobody` must own what it writes
        subprocess.run(["chown", "-R", "nobody:nogroup", str(state)], check=True)
        argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv]
    env = {
        **os.environ,
        "OPENSEARCH_JAVA_HOME": opensearch_node.java_home(),
        "OPENSEARCH_JAVA_OPTS": f"-Xms{opensearch_node.HEAP} -Xmx{opensearch_node.HEAP}",
    }
    url = f"http://127.0.0.1:{port}"
    node = runtime.spawn(f"checkbench-opensearch-{tag}", argv, url, env=env, cwd=install)
    runtime.wait_until(lambda: opensearch_node.healthy(url), f"bench OpenSearch on {url}", node.log, alive=node.alive)
    return node, state


def build_stack(prefix: str, size: int, catalog: config.Catalog) -> config.StackSettings:
    return config.settings_from_config(
        prefix,
        {
            "pin": "v1",
            "slots": {"blue": "v1"},
            "artifacts": {"bucket": f"{prefix}-artifacts"},
            "corpus": {"bucket": f"{prefix}-corpus", "size": size},
            "opensearch": {"indexPrefix": prefix, "efConstruction": 64},
            "endpoints": {"backend": "local"},
            "pointerParameter": f"/{prefix}/live",
        },
        catalog,
    )


def delete_bucket(s3, bucket: str) -> None:
    """Every object version, then the (versioned) bucket: the 100k corpus is ~18 MB of moto's memory."""
    try:
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
            stale = [
                {"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
            ]
            if stale:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": stale})
        s3.delete_bucket(Bucket=bucket)
    except s3.exceptions.NoSuchBucket:
        pass


def timed(call) -> tuple[float, object]:
    started = time.perf_counter()
    value = call()
    return time.perf_counter() - started, value


def measure(size: int, repeats: int, catalog: config.Catalog) -> dict:
    prefix = f"checkbench-{uuid.uuid4().hex[:8]}"
    settings = build_stack(prefix, size, catalog)
    s3, ssm = clients.aws("s3", settings.region), clients.aws("ssm", settings.region)
    client = clients.opensearch(settings.opensearch)
    try:
        documents = synthetic_documents(size)
        corpus_store.ensure_corpus(s3, settings, documents)
        build_seconds, applied = timed(
            lambda: orchestrator.apply(settings, catalog, progress=False, say=lambda _: None)
        )
        if not applied.record.passed:
            raise SystemExit(
                f"{size} docs: the deployed stack is not consistent: {[c.name for c in applied.record.failures]}"
            )

        runs, record = [], None
        for _ in range(repeats):
            seconds, record = timed(lambda: check.run(settings, catalog))
            runs.append(seconds)
        golden = corpus_store.read_golden(s3, settings)
        live_index = settings.opensearch.index_name(settings.pin)
        parts = {
            "read_corpus_from_s3": timed(
                lambda: {d.id: d.content_sha256 for d in corpus_store.read_corpus(s3, settings)}
            )[0],
            "count_by_model_version": timed(lambda: live_state.count_by_model_version(client, live_index))[0],
            "count": timed(lambda: client.count(index=live_index))[0],
            "recall_probe": timed(lambda: check.recall_at_k(reader.Reader(settings, ttl=0), golden, settings.check.k))[
                0
            ],
        }
        return {
            "documents": size,
            "build_seconds": round(build_seconds, 1),
            "check_seconds_median": round(statistics.median(runs), 3),
            "check_seconds_max": round(max(runs), 3),
            "check_runs": [round(r, 3) for r in runs],
            "parts_seconds": {name: round(value, 3) for name, value in parts.items()},
            "check_passed": record.passed,
            "observed": {c.name: c.observed for c in record.checks},
        }
    finally:
        endpoints.stop_local_slots(settings)
        client.indices.delete(index=f"{prefix}-*", params={"ignore_unavailable": "true"})
        try:
            ssm.delete_parameter(Name=settings.pointer_name)
        except ssm.exceptions.ParameterNotFound:
            pass
        for bucket in (settings.artifacts.bucket, settings.corpus.bucket):
            delete_bucket(s3, bucket)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--opensearch",
        choices=["private", "shared"],
        default="private",
        help="private: a bench-only node (default); shared: the session's node",
    )
    args = parser.parse_args(argv)

    states = services.up()
    private = args.opensearch == "private" and not os.environ.get("OPENSEARCH_URL")
    environment = services.environment()
    node, state = start_private_opensearch(uuid.uuid4().hex[:8]) if private else (None, None)
    if node:
        environment["OPENSEARCH_URL"] = node.url
    os.environ.update(environment)
    catalog = config.load_catalog()
    try:
        figures = []
        for size in args.sizes:
            figure = measure(size, args.repeats, catalog)
            figures.append(figure)
            parts = ", ".join(f"{name} {seconds:.3f}s" for name, seconds in figure["parts_seconds"].items())
            print(
                f"{size:>7} docs  check median {figure['check_seconds_median']:.3f}s max {figure['check_seconds_max']:.3f}s "
                f"({'consistent' if figure['check_passed'] else 'INCONSISTENT'}; built in {figure['build_seconds']:.0f}s)\n"
                f"               parts: {parts}",
                flush=True,
            )
    finally:
        if node:
            node.stop()
            shutil.rmtree(state, ignore_errors=True)
        started = [s.name for s in states if s.source == "started"]
        if started and os.environ.get("LOCKSTEP_KEEP_SERVICES") != "1":
            services.down(started)

    smallest, largest = figures[0], figures[-1]
    size_ratio = largest["documents"] / smallest["documents"]
    time_ratio = largest["check_seconds_median"] / smallest["check_seconds_median"]
    summary = {
        "opensearch": "private bench node" if node else os.environ["OPENSEARCH_URL"],
        "sizes": [f["documents"] for f in figures],
        "time_ratio": round(time_ratio, 2),
        "size_ratio": size_ratio,
        "sublinear": time_ratio < size_ratio,
        "goal_seconds": GOAL_SECONDS,
        "within_goal": largest["check_seconds_median"] <= GOAL_SECONDS,
        "figures": figures,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"ratio {time_ratio:.2f}× time for {size_ratio:.0f}× documents ({'sublinear' if summary['sublinear'] else 'NOT sublinear'}); "
        f"{largest['documents']} docs {'within' if summary['within_goal'] else 'OVER'} the {GOAL_SECONDS:.0f} s goal → {RESULTS}"
    )
    return 0 if summary["sublinear"] and summary["within_goal"] and all(f["check_passed"] for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
