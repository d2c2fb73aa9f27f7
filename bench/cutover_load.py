"""Load test of the coupled cutover: flip alias + pointer N times while k-NN queries run.

    .venv/bin/python bench/cutover_load.py [--rounds 1000] [--docs 200] [--readers 2]

Runs against the embedded servers (started if needed, stopped again only if this script started
them) or whatever OPENSEARCH_URL / AWS_ENDPOINT_URL name. Everything it creates lives under a fresh
prefix and is deleted at the end. Figures printed:
- cutover latency and rate;
- queries through the alias: errors, and "mixed" responses (hits from more than one index; the
  atomic `_aliases` swap should make this 0);
- pointer/alias disagreement: a sampler reads the alias, then the pointer, and counts samples whose
  versions differ and the windows (runs of consecutive disagreeing samples). The cutover writes the
  pointer right after the alias moves, so short windows are expected; a sample can also disagree
  because the sampler's two reads straddle a flip.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from opensearchpy import helpers  # noqa: E402

from lockstep import config, services  # noqa: E402
from lockstep.models import hashgram as model  # noqa: E402
from lockstep.ops import clients, corpus, live_state  # noqa: E402
from lockstep.ops import index as ix  # noqa: E402

VERSIONS = ("v1", "v2")  # same dimension, different spaces: the dangerous pair


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def build_stack(prefix: str, catalog: config.Catalog) -> config.StackSettings:
    return config.settings_from_config(
        prefix,
        {
            "pin": "v1",
            "slots": {"blue": "v1", "green": "v2"},
            "artifacts": {"bucket": f"{prefix}-artifacts"},
            "corpus": {"bucket": f"{prefix}-corpus"},
            "opensearch": {"indexPrefix": prefix},
            "pointerParameter": f"/{prefix}/live",
        },
        catalog,
    )


def fill(client, settings, catalog, documents) -> None:
    for version in VERSIONS:
        entry = catalog.get(version)
        ix.ensure_index(client, settings, entry)
        vectors = model.load_artifact(model.build_artifact(model.SPECS[version]), entry.artifact_sha256).encode(
            [d.text for d in documents]
        )
        helpers.bulk(
            client,
            (
                {
                    "_index": settings.opensearch.index_name(version),
                    "_id": d.id,
                    "_source": {
                        "doc_id": d.id,
                        "text": d.text,
                        "model_version": version,
                        "content_sha256": d.content_sha256,
                        "embedding": v.tolist(),
                    },
                }
                for d, v in zip(documents, vectors)
            ),
            refresh=True,
        )


class Readers:
    """k-NN queries through the alias, plus a pointer/alias sampler, until stopped."""

    def __init__(self, settings, query_vector: list[float], readers: int):
        self.settings = settings
        self.query_vector = query_vector
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.mixed = 0
        self.samples = 0
        self.disagreeing = 0
        self.windows = 0
        self.threads = [threading.Thread(target=self.query) for _ in range(readers)]
        self.threads.append(threading.Thread(target=self.sample))

    def query(self) -> None:
        client = clients.opensearch(self.settings.opensearch)
        body = {"size": 10, "_source": False, "query": {"knn": {"embedding": {"vector": self.query_vector, "k": 10}}}}
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                hits = client.search(index=self.settings.opensearch.alias_name, body=body)["hits"]["hits"]
            except Exception as exc:  # every failure is a finding
                with self.lock:
                    self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            with self.lock:
                self.latencies.append(time.perf_counter() - started)
                self.mixed += len({hit["_index"] for hit in hits}) > 1

    def sample(self) -> None:
        client = clients.opensearch(self.settings.opensearch)
        ssm = clients.aws("ssm")
        version_of = {self.settings.opensearch.index_name(v): v for v in VERSIONS}
        in_window = False
        while not self.stop.is_set():
            targets = live_state.alias_targets(client, self.settings.opensearch.alias_name)
            pointer = live_state.read_pointer(ssm, self.settings.pointer_name)
            disagree = [version_of.get(t) for t in targets] != [pointer.version if pointer else None]
            self.samples += 1
            self.disagreeing += disagree
            self.windows += disagree and not in_window
            in_window = disagree

    def __enter__(self) -> Readers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


def run(rounds: int, docs: int, readers: int) -> dict:
    catalog = config.load_catalog()
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    settings = build_stack(prefix, catalog)
    client = clients.opensearch(settings.opensearch)
    ssm = clients.aws("ssm")
    documents = corpus.stdlib_documents(docs)
    try:
        fill(client, settings, catalog, documents)
        endpoints = {v: f"lockstep-{settings.stack}-{settings.slots.slot_of(v)}" for v in VERSIONS}
        live_state.cutover(client, ssm, settings, catalog.get("v1"), endpoints["v1"])
        query_vector = (
            model.load_artifact(model.build_artifact(model.SPECS["v1"])).encode([documents[0].text])[0].tolist()
        )
        cutovers: list[float] = []
        with Readers(settings, query_vector, readers) as load:
            started = time.perf_counter()
            for round_ in range(rounds):
                version = VERSIONS[(round_ + 1) % 2]
                began = time.perf_counter()
                live_state.cutover(client, ssm, settings, catalog.get(version), endpoints[version])
                cutovers.append(time.perf_counter() - began)
            elapsed = time.perf_counter() - started
        final_alias = live_state.alias_targets(client, settings.opensearch.alias_name)
        final_pointer = live_state.read_pointer(ssm, settings.pointer_name)
        return {
            "rounds": rounds,
            "elapsed": elapsed,
            "cutovers": cutovers,
            "queries": len(load.latencies) + len(load.errors),
            "query_latencies": load.latencies,
            "errors": load.errors,
            "mixed": load.mixed,
            "samples": load.samples,
            "disagreeing": load.disagreeing,
            "windows": load.windows,
            "final": (final_alias, final_pointer.version if final_pointer else None),
            "expected_final": [settings.opensearch.index_name(VERSIONS[rounds % 2])],
        }
    finally:
        client.indices.delete(index=f"{prefix}-*", params={"ignore_unavailable": "true"})
        try:
            ssm.delete_parameter(Name=settings.pointer_name)
        except ssm.exceptions.ParameterNotFound:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--readers", type=int, default=2, help="query threads")
    args = parser.parse_args(argv)

    states = services.up()
    os.environ.update(services.environment())
    try:
        figures = run(args.rounds, args.docs, args.readers)
    finally:
        started = [s.name for s in states if s.source == "started"]
        if started and os.environ.get("LOCKSTEP_KEEP_SERVICES") != "1":
            services.down(started)

    cutovers, latencies = figures["cutovers"], figures["query_latencies"]
    print(
        f"cutovers       {figures['rounds']} in {figures['elapsed']:.1f} s "
        f"({figures['rounds'] / figures['elapsed']:.1f}/s); latency p50 {ms(statistics.median(cutovers))}, "
        f"p99 {ms(percentile(cutovers, 0.99))}, max {ms(max(cutovers))}"
    )
    print(
        f"queries        {figures['queries']} through the alias; p50 {ms(percentile(latencies, 0.5))}, "
        f"p99 {ms(percentile(latencies, 0.99))}"
    )
    print(
        f"query errors   {len(figures['errors'])}" + (f" (first: {figures['errors'][0]})" if figures["errors"] else "")
    )
    print(f"mixed answers  {figures['mixed']} (responses with hits from more than one index)")
    share = figures["disagreeing"] / figures["samples"] if figures["samples"] else 0
    print(
        f"pointer/alias  {figures['disagreeing']} of {figures['samples']} samples disagreed ({share:.1%}), "
        f"in {figures['windows']} windows"
    )
    alias, pointer = figures["final"]
    consistent = alias == figures["expected_final"] and alias and alias[0].endswith(f"-{pointer}")
    print(f"final state    alias -> {', '.join(alias)}; pointer -> {pointer} ({'agree' if consistent else 'DISAGREE'})")
    return 0 if consistent and not figures["errors"] and not figures["mixed"] else 1


if __name__ == "__main__":
    sys.exit(main())
