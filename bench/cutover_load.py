"""Load test of the coupled cutover: flip alias + pointer N times while k-NN queries run.

    .venv/bin/python bench/cutover_load.py [--rounds 1000] [--docs 200] [--readers 2] [--clients 2]

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
- readers during the same cutovers (`--clients N`): N threads of `lockstep.reader` (pointer read
  once, its endpoint encodes, its index answers by name) beside N threads of today's alias-reading
  client (reads the pointer, encodes with its endpoint, searches the alias), both reading the
  pointer for every query (ttl 0). Each answer counts as mixed when the model that encoded the
  query (recorded by the encoder itself) is not the version of an index that answered (the hits'
  `_index`). Their latencies are the reader's cost over the alias search.
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

from lockstep import config, reader, services  # noqa: E402
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


def build_stack(prefix: str, catalog: config.Catalog, **extra) -> config.StackSettings:
    """A bench stack isolated by `prefix` (v1 live in blue, v2 in green); `extra` adds settings."""
    return config.settings_from_config(
        prefix,
        {
            "pin": "v1",
            "slots": {"blue": "v1", "green": "v2"},
            "artifacts": {"bucket": f"{prefix}-artifacts"},
            "corpus": {"bucket": f"{prefix}-corpus"},
            "opensearch": {"indexPrefix": prefix},
            "pointerParameter": f"/{prefix}/live",
            **extra,
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


class Encoder:
    """One version's model in-process, standing in for its endpoint: says which artifact answered
    (as a local slot's header does) and remembers which version encoded last (per thread)."""

    def __init__(self, version: str, embedder, artifact_sha256: str):
        self.version, self.embedder, self.artifact = version, embedder, artifact_sha256
        self.served_artifact: str | None = None
        self.last_version: str | None = None

    def embed(self, texts: list[str]):
        vectors = self.embedder.encode(texts)
        self.served_artifact, self.last_version = self.artifact, self.version
        return vectors


class Clients:
    """`lockstep.reader` threads beside alias-reading control threads: answers, mixed answers, latency."""

    def __init__(self, settings, catalog, texts: list[str], count: int, stop: threading.Event):
        self.settings, self.catalog, self.texts, self.stop = settings, catalog, texts, stop
        self.models = {
            v: model.load_artifact(model.build_artifact(model.SPECS[v]), catalog.get(v).artifact_sha256)
            for v in VERSIONS
        }
        self.version_of = {settings.opensearch.index_name(v): v for v in VERSIONS}
        self.lock = threading.Lock()
        self.figures = {arm: {"answers": 0, "mixed": 0, "errors": [], "latencies": []} for arm in ("reader", "alias")}
        self.threads = [threading.Thread(target=self.protocol, args=(n,)) for n in range(count)]
        self.threads += [threading.Thread(target=self.control, args=(n,)) for n in range(count)]

    def encoders(self) -> dict[str, Encoder]:
        """Per thread: endpoint name → its version's encoder."""
        return {
            f"lockstep-{self.settings.stack}-{self.settings.slots.slot_of(v)}": Encoder(
                v, self.models[v], self.catalog.get(v).artifact_sha256
            )
            for v in VERSIONS
        }

    def record(self, arm: str, encoded: str | None, hits: list[dict], seconds: float) -> None:
        answered = {self.version_of.get(hit["_index"]) for hit in hits}
        with self.lock:
            figures = self.figures[arm]
            figures["answers"] += 1
            figures["mixed"] += bool(answered - {encoded})
            figures["latencies"].append(seconds)

    def failed(self, arm: str, exc: Exception) -> None:
        with self.lock:
            self.figures[arm]["errors"].append(f"{type(exc).__name__}: {exc}"[:200])

    def protocol(self, n: int) -> None:
        encoders = self.encoders()
        live = reader.Reader(self.settings, ttl=0, encoder_for=lambda pointer: encoders[pointer.endpoint])
        for i in range(n, 10**9, len(self.threads)):
            if self.stop.is_set():
                return
            started = time.perf_counter()
            try:
                answer = live.search(self.texts[i % len(self.texts)], k=10)
            except Exception as exc:  # every failure is a finding
                self.failed("reader", exc)
                continue
            self.record("reader", encoders[answer.endpoint].last_version, answer.hits, time.perf_counter() - started)

    def control(self, n: int) -> None:
        """Today's client: the pointer picks the endpoint, the alias answers."""
        encoders = self.encoders()
        client = clients.opensearch(self.settings.opensearch)
        ssm = clients.aws("ssm")
        for i in range(n, 10**9, len(self.threads)):
            if self.stop.is_set():
                return
            started = time.perf_counter()
            try:
                pointer = live_state.read_pointer(ssm, self.settings.pointer_name)
                assert pointer is not None
                encoder = encoders[pointer.endpoint]
                vector = encoder.embed([self.texts[i % len(self.texts)]])[0].tolist()
                body = {"size": 10, "_source": False, "query": {"knn": {"embedding": {"vector": vector, "k": 100}}}}
                hits = client.search(index=self.settings.opensearch.alias_name, body=body)["hits"]["hits"]
            except Exception as exc:  # every failure is a finding
                self.failed("alias", exc)
                continue
            self.record("alias", encoder.last_version, hits, time.perf_counter() - started)


class Readers:
    """k-NN queries through the alias, a pointer/alias sampler and the reader/alias clients, until stopped."""

    def __init__(self, settings, query_vector: list[float], readers: int, protocol: Clients | None = None):
        self.settings = settings
        self.query_vector = query_vector
        self.stop = protocol.stop if protocol else threading.Event()
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.mixed = 0
        self.samples = 0
        self.disagreeing = 0
        self.windows = 0
        self.threads = [threading.Thread(target=self.query) for _ in range(readers)]
        self.threads.append(threading.Thread(target=self.sample))
        self.threads += protocol.threads if protocol else []

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


def run(rounds: int, docs: int, readers: int, protocol_clients: int = 0) -> dict:
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
        protocol = (
            Clients(settings, catalog, [d.text for d in documents], protocol_clients, threading.Event())
            if protocol_clients
            else None
        )
        with Readers(settings, query_vector, readers, protocol) as load:
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
            "clients": protocol.figures if protocol else {},
        }
    finally:
        client.indices.delete(index=f"{prefix}-*", params={"ignore_unavailable": "true"})
        try:
            ssm.delete_parameter(Name=settings.pointer_name)
        except ssm.exceptions.ParameterNotFound:
            pass


def client_summary(arms: dict) -> dict:
    """Per arm: answers, mixed, errors, latency p50/mean; and the reader's latency over the alias client's."""
    out: dict = {}
    for arm, figures in arms.items():
        latencies = figures["latencies"]
        out[arm] = {
            "answers": figures["answers"],
            "mixed": figures["mixed"],
            "errors": len(figures["errors"]),
            "first_error": figures["errors"][0] if figures["errors"] else "",
            "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
            "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else float("nan"),
        }
    if {"reader", "alias"} <= out.keys():
        out["latency_ratio_p50"] = round(out["reader"]["p50_ms"] / out["alias"]["p50_ms"], 3)
        out["latency_ratio_mean"] = round(out["reader"]["mean_ms"] / out["alias"]["mean_ms"], 3)
    return out


def client_lines(arms: dict) -> list[str]:
    if not arms:
        return []
    summary = client_summary(arms)
    lines = [
        f"{arm:<14} {s['answers']} answers, {s['mixed']} mixed (encoded by one version, answered by another), "
        f"{s['errors']} errors{' (first: ' + s['first_error'] + ')' if s['errors'] else ''}; "
        f"p50 {s['p50_ms']:.1f} ms, mean {s['mean_ms']:.1f} ms"
        for arm, s in ((f"{a} client", summary[a]) for a in ("reader", "alias"))
    ]
    lines.append(
        f"reader latency {summary['latency_ratio_p50']:.2f}× the alias client's (p50), {summary['latency_ratio_mean']:.2f}× (mean)"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--readers", type=int, default=2, help="query threads")
    parser.add_argument("--clients", type=int, default=2, help="lockstep.reader threads (and as many alias clients)")
    args = parser.parse_args(argv)

    states = services.up()
    os.environ.update(services.environment())
    try:
        figures = run(args.rounds, args.docs, args.readers, args.clients)
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
    for line in client_lines(figures["clients"]):
        print(line)
    alias, pointer = figures["final"]
    consistent = alias == figures["expected_final"] and alias and alias[0].endswith(f"-{pointer}")
    print(f"final state    alias -> {', '.join(alias)}; pointer -> {pointer} ({'agree' if consistent else 'DISAGREE'})")
    reader_arm = figures["clients"].get("reader", {"mixed": 0, "errors": []})
    never_mixed = reader_arm["mixed"] == 0 and not reader_arm["errors"]
    return 0 if consistent and not figures["errors"] and not figures["mixed"] and never_mixed else 1


if __name__ == "__main__":
    sys.exit(main())
