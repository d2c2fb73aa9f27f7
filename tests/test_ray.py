"""Issue #11: re-embedding on Ray Data (`backfill.engine: ray`) against the real OpenSearch + moto.

One local Ray runtime for the whole session (`ray_runtime`); the `ray start --head` cluster test
starts its own on free ports and stops only that cluster's processes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from opensearchpy import helpers

from lockstep.ops import artifacts, clients, corpus, index, reembed

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def ray_runtime(servers):
    """ONE local Ray runtime per session (2 CPUs, small object store), shared by every Ray test."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, object_store_memory=256 * 1024**2, include_dashboard=False,
                 log_to_driver=False, logging_level="WARNING",
                 runtime_env={"env_vars": {k: os.environ[k] for k in ("OPENSEARCH_URL", "AWS_ENDPOINT_URL") if k in os.environ}})
    yield ray
    ray.shutdown()


def seeded(make_settings, s3, size: int, engine: str = "ray", **overrides):
    """Settings of an isolated stack with its buckets, corpus (`size` docs) and artifacts published."""
    settings = make_settings(corpus={"size": size}, backfill={"engine": engine, "workers": 2, "batchSize": 64}, **overrides)
    artifacts.ensure_bucket(s3, settings.artifacts.bucket)
    artifacts.ensure_corpus(s3, settings)
    return settings


def publish(s3, settings, catalog, *versions):
    for version in versions:
        artifacts.publish_artifact(s3, settings, catalog.get(version))


def stored(opensearch, name: str) -> dict[str, dict]:
    """Every stored document of an index: {id: _source}."""
    opensearch.indices.refresh(index=name)
    return {hit["_id"]: hit["_source"] for hit in helpers.scan(opensearch, index=name, size=500, query={"query": {"match_all": {}}})}


def ids_exactly_once(opensearch, name: str, documents) -> None:
    opensearch.indices.refresh(index=name)
    assert opensearch.count(index=name)["count"] == len(documents)
    assert set(stored(opensearch, name)) == {d.id for d in documents}


def with_engine(settings, **backfill):
    return settings.model_copy(update={"backfill": settings.backfill.model_copy(update=backfill)})


# --------------------------------------------------------------------------------- equality


def test_ray_index_equals_local_index(ray_runtime, make_settings, s3, opensearch, catalog, unique):
    """The index the `ray` engine builds equals the `local` engine's: ids, hashes, vectors, _meta."""
    local = seeded(make_settings, s3, 300, engine="local")
    publish(s3, local, catalog, "v1")
    entry = catalog.get("v1")
    ray_settings = with_engine(local, engine="ray").model_copy(
        update={"opensearch": local.opensearch.model_copy(update={"index_prefix": f"{unique}-ray"})})

    built_local = reembed.sync_index(local, entry, progress=False)
    built_ray = reembed.sync_index(ray_settings, entry, progress=False)

    assert (built_local.embedded, built_ray.embedded) == (300, 300)
    assert built_ray.created and built_ray.deleted == 0
    a, b = stored(opensearch, built_local.index), stored(opensearch, built_ray.index)
    assert set(a) == set(b) and len(b) == 300
    for doc_id, source in a.items():
        other = b[doc_id]
        assert other["content_sha256"] == source["content_sha256"]
        assert other["model_version"] == source["model_version"] == "v1"
        assert other["text"] == source["text"] and other["doc_id"] == doc_id
        assert np.allclose(other["embedding"], source["embedding"], atol=1e-6, rtol=0)
    meta_a, meta_b = index.read_meta(opensearch, built_local.index), index.read_meta(opensearch, built_ray.index)
    assert {k: v for k, v in meta_a.items() if k not in index.VOLATILE_META} == \
        {k: v for k, v in meta_b.items() if k not in index.VOLATILE_META}
    assert meta_b["synced"]["documents"] == 300 and meta_b["synced"]["corpus_etag"] == meta_a["synced"]["corpus_etag"]
    assert not index.in_bulk_mode(opensearch, built_ray.index)  # refresh restored after the load
