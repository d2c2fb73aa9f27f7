"""The post-deploy consistency check: prove the pin's unit is whole after every deploy and rollback.

Each check compares an observed value with the expected one and says what to do when they
differ. Checks 8 and 9 re-embed through the live endpoint: they are the only ones that can see
vectors of another same-dimension model whose `model_version` field claims the pin.
A server we cannot reach raises `Unreachable` (exit 2): "could not check" is never "consistent".
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from importlib.metadata import version as package_version

import numpy as np
from opensearchpy.exceptions import RequestError

from lockstep.config import Catalog, StackSettings
from lockstep.errors import IntegrityError, LockstepError
from lockstep.ops import artifacts, clients, derived, endpoints, index

RECORD_PREFIX = "checks"


@dataclass
class Check:
    name: str
    passed: bool
    observed: str
    expected: str
    fix: str = ""
    severity: str = "fail"  # "warn": reported, never fails the deployment


@dataclass
class CheckRecord:
    stack: str
    pin: str
    artifact_sha256: str
    started_at: str
    finished_at: str = ""
    tool_version: str = ""
    checks: list[Check] = field(default_factory=list)
    # Per derived store: records_by_version and quarantined_by_version (see ops.derived.StoreCounts).
    derived: dict[str, dict] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks if c.severity == "fail")

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed and c.severity == "fail"]

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    @classmethod
    def from_dict(cls, data: dict) -> CheckRecord:
        data = {k: v for k, v in data.items() if k != "passed"}
        data["checks"] = [Check(**c) for c in data.get("checks", [])]
        return cls(**data)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.sum(a * b, axis=1)


def run(settings: StackSettings, catalog: Catalog, seed: int | None = None) -> CheckRecord:
    entry = catalog.get(settings.pin)
    record = CheckRecord(
        settings.stack, settings.pin, entry.artifact_sha256, index.now(), tool_version=package_version("lockstep")
    )
    client = clients.opensearch(settings.opensearch)
    s3 = clients.aws_for(settings, "s3")
    ssm = clients.aws_for(settings, "ssm")
    alias = settings.opensearch.alias_name
    live_index = settings.opensearch.index_name(settings.pin)
    live_endpoint_name = endpoints.endpoint_name(settings, settings.live_slot)
    rng = random.Random(seed)
    add = record.checks.append

    with clients.reaching("OpenSearch", clients.opensearch_url(settings.opensearch)):
        # 1. alias → exactly the pin's index
        targets = index.alias_targets(client, alias)
        add(
            Check(
                "alias",
                targets == [live_index],
                ", ".join(targets) or "(no index)",
                live_index,
                f"run `lockstep apply --stack {settings.stack}` to cut the alias over to {live_index}",
            )
        )
        # Checks 2-4 look at the index the alias really serves: that is what users query.
        served = targets[0] if len(targets) == 1 else live_index
        exists = client.indices.exists(index=served)

        # 2. _meta and mapping dimension match the catalog
        meta = index.read_meta(client, served) or {}
        expected_meta = {
            "version": entry.version,
            "artifact_sha256": entry.artifact_sha256,
            "dimension": entry.dimension,
        }
        differs = {k: meta.get(k) for k, v in expected_meta.items() if meta.get(k) != v}
        mapped_dimension = _mapped_dimension(client, served) if exists else None
        if mapped_dimension != entry.dimension:
            differs["mapping.embedding.dimension"] = mapped_dimension
        add(
            Check(
                "index-meta",
                exists and not differs,
                json.dumps(differs) if differs else "matches",
                f"{entry.version} / {entry.artifact_sha256[:12]}… / dim {entry.dimension}",
                f"{served} was not built by {entry.version}'s artifact: rebuild it or cut over to {live_index}",
            )
        )

        # 3. no documents of another version (one aggregation)
        by_version = index.count_by_model_version(client, served)[1] if exists else {}
        foreign = {v: n for v, n in by_version.items() if v != settings.pin}
        add(
            Check(
                "foreign-versions",
                exists and not foreign,
                json.dumps(foreign) if foreign else "0",
                "0",
                f"run `lockstep backfill --stack {settings.stack} --version {settings.pin}` to re-embed them",
            )
        )

        # 4. document count parity (+ a sample of content hashes)
        corpus = artifacts.corpus_index(s3, settings)
        count = client.count(index=served)["count"] if exists else 0
        stale = _stale_sample(client, served, corpus, settings.check.stale_sample, rng) if exists else 0
        add(
            Check(
                "doc-count",
                count == corpus.count and stale == 0,
                f"{count} docs, {stale} stale in sample",
                f"{corpus.count} docs, 0 stale",
                f"run `lockstep backfill --stack {settings.stack} --version {settings.pin}` to catch up",
            )
        )

    with clients.reaching("AWS (SSM)", clients.aws_endpoint() or "AWS"):
        # 5. live pointer
        # A pointer that is not lockstep's JSON is a broken deployment to report, not a reason to stop.
        try:
            pointer = index.read_pointer(ssm, settings.pointer_name)
            observed_pointer = f"{pointer.version} / {pointer.endpoint} / {pointer.index}" if pointer else "(missing)"
        except IntegrityError:
            pointer, observed_pointer = None, "(not lockstep's JSON)"
        add(
            Check(
                "pointer",
                bool(pointer)
                and (pointer.version, pointer.endpoint, pointer.index)
                == (settings.pin, live_endpoint_name, live_index),
                observed_pointer,
                f"{settings.pin} / {live_endpoint_name} / {live_index}",
                f"run `lockstep apply --stack {settings.stack}` to write the pointer with the alias",
            )
        )

    with clients.reaching("AWS (S3)", clients.aws_endpoint() or "AWS"):
        # 7. artifact object exists and its bytes hash to the catalog's sha256
        status = artifacts.artifact_status(s3, settings.artifacts.bucket, entry)
        add(
            Check(
                "artifact",
                bool(status.get("exists") and status.get("sha256_ok")),
                "missing"
                if not status.get("exists")
                else ("sha256 ok" if status.get("sha256_ok") else "sha256 MISMATCH"),
                f"sha256 {entry.artifact_sha256[:12]}…",
                "restore the artifact object (the bucket is versioned) or publish it again",
            )
        )

    # 6. live endpoint serves the pin's artifact
    live = endpoints.endpoint_for(settings, settings.live_slot)
    described = _describe(live)
    add(
        Check(
            "endpoint-artifact",
            described.get("artifact_sha256") == entry.artifact_sha256,
            f"{described.get('version')} ({str(described.get('artifact_sha256'))[:12]}…)"
            if described
            else "unreachable",
            f"{entry.version} ({entry.artifact_sha256[:12]}…)",
            f"redeploy the {settings.live_slot} slot with {entry.version} (`lockstep apply --stack {settings.stack}`)",
        )
    )

    with clients.reaching("OpenSearch", clients.opensearch_url(settings.opensearch)):
        # 8. re-embed probe: stored vectors vs the live endpoint's vectors for the same text
        # With the alias on no index, users' queries fail: probe and recall fail, they do not crash.
        sample = _random_docs(client, alias, settings.check.probe_sample, rng) if targets else []
        if sample and described:
            fresh = live.embed([d["text"] for d in sample])
            stored = np.array([d["embedding"] for d in sample], dtype=np.float32)
            if stored.shape == fresh.shape:
                cosines = _cosine(stored, fresh)
                low = int(np.sum(cosines < settings.check.probe_min_cosine))
                observed = f"{low}/{len(sample)} below {settings.check.probe_min_cosine} (min {cosines.min():.3f})"
            else:
                low, observed = len(sample), f"stored dimension {stored.shape[1]} ≠ endpoint {fresh.shape[1]}"
        else:
            low, observed = (
                1,
                (
                    "endpoint unreachable"
                    if not described
                    else "no documents to sample"
                    if targets
                    else f"alias {alias} points to no index"
                ),
            )
        add(
            Check(
                "reembed-probe",
                low == 0,
                observed,
                f"0/{settings.check.probe_sample} below {settings.check.probe_min_cosine}",
                f"vectors from another model are in {live_index}: rebuild it (`lockstep backfill --stack {settings.stack} --version {settings.pin} --full`) "
                "or roll the endpoint back to the index's version",
            )
        )

        # 9. recall probe through the alias
        golden = artifacts.read_golden(s3, settings)
        recall, observed = 0.0, "endpoint unreachable" if not described else f"alias {alias} points to no index"
        if golden and described and targets:
            try:
                recall = recall_at_k(client, alias, live, golden, settings.check.k)
                observed = f"recall@{settings.check.k} {recall:.2f}"
            except RequestError as exc:  # e.g. a query vector of another dimension than the index
                observed = f"queries fail: {index.one_line(exc.info.get('error', {}).get('reason', exc) if isinstance(exc.info, dict) else exc)}"[
                    :160
                ]
        add(
            Check(
                "recall",
                recall >= settings.check.recall_floor,
                observed,
                f"≥ {settings.check.recall_floor:.2f}",
                "the live endpoint and the index disagree: check the re-embed probe, then rebuild or roll back",
            )
        )

    # 10. derived records: none written by another version than the pin, except quarantined ones
    for store in settings.derived:
        counts = derived.count_by_version(settings, catalog, store)
        record.derived[store.name] = counts.to_dict()
        stale, kept = counts.stale(settings.pin), counts.quarantined(settings.pin)
        observed = ", ".join(f"{n} records of {v}" for v, n in stale.items()) or "0 records of other versions"
        if kept:
            observed += "; quarantined (kept): " + ", ".join(f"{n} of {v}" for v, n in kept.items())
        add(
            Check(
                f"derived:{store.name}",
                not stale,
                observed,
                f"0 records of other versions than {settings.pin} in {store.table}",
                f"run `lockstep apply --stack {settings.stack}`: it {store.repair}s them ({store.name}'s repair policy)",
            )
        )

    # 11. standby slot serves what the config says (warning only)
    if settings.standby:
        standby_entry = catalog.get(settings.standby)
        standby = _describe(endpoints.endpoint_for(settings, settings.standby_slot))
        add(
            Check(
                "standby",
                standby.get("artifact_sha256") == standby_entry.artifact_sha256,
                f"{standby.get('version')}" if standby else "not running",
                settings.standby,
                f"deploy {settings.standby} to the {settings.standby_slot} slot (`lockstep apply`)",
                severity="warn",
            )
        )

    record.finished_at = index.now()
    return record


def _describe(endpoint) -> dict:
    try:
        return endpoint.describe() if endpoint else {}
    except LockstepError:
        return {}


def _mapped_dimension(client, index_name: str) -> int | None:
    mapping = client.indices.get_mapping(index=index_name)
    properties = next(iter(mapping.values()))["mappings"].get("properties", {})
    return properties.get("embedding", {}).get("dimension")


def _random_docs(client, target: str, size: int, rng: random.Random) -> list[dict]:
    if not client.indices.exists(index=target):
        return []
    body = {
        "size": size,
        "_source": ["text", "embedding", "content_sha256"],
        "query": {
            "function_score": {
                "query": {"match_all": {}},
                "random_score": {"seed": rng.randint(0, 2**31), "field": "_seq_no"},
            }
        },
    }
    hits = client.search(index=target, body=body)["hits"]["hits"]
    return [{"id": h["_id"], **h["_source"]} for h in hits]


def _stale_sample(client, index_name: str, corpus: artifacts.CorpusIndex, size: int, rng: random.Random) -> int:
    """Sampled stored documents whose content hash is not the corpus's (only the sample is parsed)."""
    if size == 0:
        return 0
    body = {
        "size": size,
        "_source": ["content_sha256"],
        "query": {
            "function_score": {
                "query": {"match_all": {}},
                "random_score": {"seed": rng.randint(0, 2**31), "field": "_seq_no"},
            }
        },
    }
    hits = client.search(index=index_name, body=body)["hits"]["hits"]
    truth = corpus.content_sha256([h["_id"] for h in hits])
    return sum(1 for h in hits if truth.get(h["_id"]) != h["_source"].get("content_sha256"))


def nearest(client, target: str, vector: np.ndarray, k: int) -> list[str]:
    """Ids of the k nearest documents to `vector` in `target` (an index or the alias). The HNSW
    search looks at ≥ 100 candidates (lucene's k is its ef_search), then returns the top k."""
    body = {"size": k, "_source": False, "query": {"knn": {"embedding": {"vector": vector.tolist(), "k": max(k, 100)}}}}
    return [h["_id"] for h in client.search(index=target, body=body)["hits"]["hits"]]


def recall_at_k(client, alias: str, live, golden: list[dict], k: int) -> float:
    """Mean share of each golden query's expected documents found in its top k through `alias`."""
    vectors = live.embed([g["query"] for g in golden])
    found = 0.0
    for query, vector in zip(golden, vectors):
        expected = set(query["expected"])
        found += len(set(nearest(client, alias, vector, k)) & expected) / max(len(expected), 1)
    return found / len(golden)


# ---------------------------------------------------------------------------------- records


def store(record: CheckRecord, settings: StackSettings) -> str:
    """Write the record under checks/<stack>/ (timestamped) and as latest.json; return its key."""
    s3 = clients.aws("s3", settings.region)
    body = json.dumps(record.to_dict(), indent=2).encode()
    stamp = record.finished_at.replace(":", "").replace("-", "")
    key = f"{RECORD_PREFIX}/{settings.stack}/{stamp}-{record.pin}.json"
    with clients.reaching("AWS (S3)", clients.aws_endpoint() or "AWS"):
        s3.put_object(Bucket=settings.artifacts.bucket, Key=key, Body=body, ContentType="application/json")
        s3.put_object(
            Bucket=settings.artifacts.bucket,
            Key=f"{RECORD_PREFIX}/{settings.stack}/latest.json",
            Body=body,
            ContentType="application/json",
        )
    return key


def latest(settings: StackSettings) -> CheckRecord | None:
    s3 = clients.aws("s3", settings.region)
    with clients.reaching("AWS (S3)", clients.aws_endpoint() or "AWS"):
        try:
            body = s3.get_object(Bucket=settings.artifacts.bucket, Key=f"{RECORD_PREFIX}/{settings.stack}/latest.json")[
                "Body"
            ].read()
        except s3.exceptions.NoSuchKey:
            return None
        except s3.exceptions.NoSuchBucket:
            return None
    return CheckRecord.from_dict(json.loads(body))
