"""The `ray` engine: the backfill core's embedding and writing on Ray Data (`backfill.engine: ray`).

    S3 corpus JSONL ── ray.data.read_json (pyarrow S3FileSystem at boto3's endpoint)
      │  keys: (id, content_sha256) per document → the core's delta against the index
      │  load: map_batches on an actor pool (`concurrency=workers`): each actor loads the
      │        version's artifact ONCE (artifacts.load_embedder, sha256-verified) and builds
      │        the bulk documents with reembed.index_actions (the same stamping)
      ▼
    OpenSearchSink (ray.data.Datasink): reembed.guard + reembed.write (streaming_bulk,
    corpus ids as document ids, 429 backoff) — a retried task rewrites the same ids.

Guard, delta, bulk mode, deletions, refresh and the synced marker are the core's (core.run). It
runs on the Ray runtime this process is connected to, a local one it starts, or — with
`backfill.address` — inside a Ray job (ray_jobs).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import numpy as np
import ray
import ray.data
from ray.data import Datasink
from ray.data.block import BlockAccessor

from lockstep.config import CatalogEntry, StackSettings
from lockstep.errors import GuardRefused, LockstepError, Unreachable, UsageError
from lockstep.ops import artifacts, clients, corpus_store, reembed
from lockstep.ops.backfill import core
from lockstep.ops.corpus import Document

BLOCK_BYTES = 4 * 1024**2
CORPUS_SCHEMA_FIELDS = (("id", "string"), ("text", "string"), ("updated_at", "string"))


# ------------------------------------------------------------------------------------ the runtime


def worker_env(settings: StackSettings) -> dict[str, str]:
    """Where the workers find the servers: the same endpoints the driver resolved (the embedded
    servers' addresses live in the driver's home, not in a worker's). Credentials never travel
    here: workers take theirs from their own environment (IAM role, or moto's dummy keys)."""
    env = {}
    if os.environ.get("OPENSEARCH_URL") or not settings.opensearch.url:
        env["OPENSEARCH_URL"] = clients.opensearch_url(settings.opensearch)
    endpoint = clients.aws_endpoint(settings.embedded)
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    return env


@contextmanager
def runtime(settings: StackSettings, progress: bool):
    """The Ray runtime to run on: the one this process is connected to, the cluster a Ray job
    runs in (RAY_ADDRESS), or a local one started here. A runtime started here stays up for the
    next backfill of this process (an apply provisions and catches up several versions: start-up
    costs ~10 s on 2 cores) and is shut down when the process exits."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    # Small blocks (~1,500 embedded documents): bulk writes start while embedding goes on, and a
    # crash loses at most a few blocks of work instead of the default 128 MiB (~50k documents).
    context.target_max_block_size = BLOCK_BYTES
    logging.getLogger("ray.data").setLevel(logging.INFO if progress else logging.WARNING)
    if not ray.is_initialized():
        options: dict[str, Any] = {"log_to_driver": progress, "logging_level": logging.WARNING}
        if not os.environ.get("RAY_ADDRESS"):  # a new local runtime (a job's or a cluster's has its own)
            options.update(include_dashboard=False, runtime_env={"env_vars": worker_env(settings)})
        start(options)
        atexit.register(ray.shutdown)
    yield ray


def start(options: dict[str, Any]) -> None:
    """ray.init; one line when the new node's raylet misses Ray's fixed 30-s startup window (a
    heavily loaded machine: seen at load average ~25 on 2 cores) instead of Ray's traceback."""
    try:
        ray.init(**options)
    except Exception as exc:  # noqa: BLE001 — Ray raises a bare Exception for this
        if "timed out during startup" not in str(exc):
            raise
        ray.shutdown()
        raise Unreachable(
            "a local Ray runtime did not start within Ray's 30 s raylet window (the machine is overloaded); "
            "retry, or set backfill.engine: local"
        ) from None


def s3_filesystem(settings: StackSettings):
    """A pyarrow S3 filesystem at the endpoint boto3 uses (moto in the embedded default)."""
    from pyarrow import fs

    endpoint = clients.aws_endpoint(settings.embedded)
    if not endpoint:
        return fs.S3FileSystem(region=settings.region)
    parts = urlsplit(endpoint)
    return fs.S3FileSystem(
        endpoint_override=parts.netloc,
        scheme=parts.scheme or "http",
        region=settings.region,
        access_key=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        session_token=os.environ.get("AWS_SESSION_TOKEN"),
    )


def read_corpus(settings: StackSettings):
    """The corpus as a Ray dataset of {id, text, updated_at} strings."""
    import pyarrow as pa
    import pyarrow.json as pajson

    schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in CORPUS_SCHEMA_FIELDS])
    path = f"{settings.corpus.bucket}/{settings.corpus.key}"
    return ray.data.read_json(
        path,
        filesystem=s3_filesystem(settings),
        file_extensions=None,
        parse_options=pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
        num_cpus=0.25,
    )


# -------------------------------------------------------------------------------------- the stages


class Keyed(NamedTuple):
    """What the delta compares: a document's id and its content hash (no text)."""

    id: str
    content_sha256: str


def content_keys(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """(id, content_sha256) of each document — the hash the local engine stamps."""
    docs = [Document(str(i), str(t)) for i, t in zip(batch["id"], batch["text"])]
    return {
        "id": np.array([d.id for d in docs], dtype=object),
        "content_sha256": np.array([d.content_sha256 for d in docs], dtype=object),
    }


@dataclass(frozen=True)
class Stamp:
    """The identity the write guard compares with the index `_meta` (an Embedder's fields)."""

    version: str
    artifact_sha256: str
    dimension: int

    @classmethod
    def of(cls, entry: CatalogEntry) -> Stamp:
        return cls(entry.version, entry.artifact_sha256, entry.dimension)


class Embed:
    """The load stage, one per actor: load the artifact once (sha256-verified), embed batches with
    the local engine's document builder. Rows not in `todo` (already indexed and unchanged) pass by."""

    def __init__(self, settings: dict, entry: dict, index_name: str, todo: list, env: dict[str, str]):
        os.environ.update(env)
        self.settings = StackSettings.model_validate(settings)
        self.entry = CatalogEntry.model_validate(entry)
        s3 = clients.aws_for(self.settings, "s3")
        self.embedder = artifacts.load_embedder(s3, self.settings.artifacts.bucket, self.entry)
        self.index_name = index_name
        self.todo = ray.get(todo[0]) if todo else None  # a set of ids; None: every document

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        docs = [Document(str(i), str(t), str(u)) for i, t, u in zip(batch["id"], batch["text"], batch["updated_at"])]
        if self.todo is not None:
            docs = [d for d in docs if d.id in self.todo]
        actions = list(reembed.index_actions(docs, self.embedder, self.index_name, max(len(docs), 1)))
        return {
            "id": np.array([a["_id"] for a in actions], dtype=object),
            "source": np.array([json.dumps(a["_source"]) for a in actions], dtype=object),
            "artifact_sha256": np.array([self.embedder.artifact_sha256] * len(actions), dtype=object),
        }


class OpenSearchSink(Datasink):
    """Writes embedded documents through opensearch-py bulk (reembed.write), behind the guard."""

    def __init__(self, settings: StackSettings, entry: CatalogEntry, index_name: str, chunk_size: int = 500):
        self.settings_json = settings.model_dump(by_alias=True, mode="json")
        self.env = worker_env(settings)
        self.stamp = Stamp.of(entry)
        self.index_name = index_name
        self.chunk_size = chunk_size
        self.written = 0

    def on_write_start(self, schema=None) -> None:
        settings = StackSettings.model_validate(self.settings_json)
        reembed.guard(clients.opensearch(settings.opensearch), self.index_name, self.stamp)

    def _actions(self, blocks: Iterable) -> Iterator[dict]:
        for block in blocks:
            table = BlockAccessor.for_block(block).to_arrow()
            for doc_id, source, sha in zip(
                table["id"].to_pylist(), table["source"].to_pylist(), table["artifact_sha256"].to_pylist()
            ):
                body = json.loads(source)
                if (body.get("model_version"), sha, len(body.get("embedding", ()))) != (
                    self.stamp.version,
                    self.stamp.artifact_sha256,
                    self.stamp.dimension,
                ):
                    raise GuardRefused(
                        f"write guard refused {doc_id} for {self.index_name}: stamped "
                        f"{body.get('model_version')!r} / artifact {str(sha)[:12]}…, the index is "
                        f"{self.stamp.version} / {self.stamp.artifact_sha256[:12]}…"
                    )
                yield {"_op_type": "index", "_index": self.index_name, "_id": doc_id, "_source": body}

    def write(self, blocks: Iterable, ctx) -> int:
        os.environ.update(self.env)
        settings = StackSettings.model_validate(self.settings_json)
        client = clients.opensearch(settings.opensearch)
        reembed.guard(client, self.index_name, self.stamp)
        return reembed.write(client, self._actions(blocks), chunk_size=self.chunk_size)

    def on_write_complete(self, write_result) -> None:
        self.written = sum(write_result.write_returns)


# ------------------------------------------------------------------------------------- the engine


def _lockstep_cause(error: BaseException) -> LockstepError | None:
    """The LockstepError a Ray task raised, under Ray's wrappers (RayTaskError, UserCodeException)."""
    seen = set()
    exc: BaseException | None = error
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)
        for candidate in (exc, cause):
            if isinstance(candidate, LockstepError):
                return _plain(candidate)
        exc = cause or exc.__cause__ or exc.__context__
    return None


def _plain(error: LockstepError) -> LockstepError:
    """A one-line copy of `error` (a RayTaskError subclass carries the remote traceback)."""
    base = next(c for c in type(error).__mro__ if issubclass(c, LockstepError) and c.__module__.startswith("lockstep"))
    lines = [line for line in str(error).splitlines() if line.strip()]
    message = next(
        (line.split(": ", 1)[1] for line in reversed(lines) if line.startswith(base.__name__ + ": ")),
        lines[-1] if lines else base.__name__,
    )
    return base(message)


def workers_cpus(workers: int) -> float:
    """Logical CPUs per embedding actor: one each when the cluster has room, else a share that
    leaves half a CPU for the reader and the bulk writers (a 2-CPU machine with 2 workers)."""
    total = float(ray.cluster_resources().get("CPU", 1))
    return max(0.1, min(1.0, (total - 0.5) / workers))


class RayEngine:
    """The core's engine plug-in on Ray Data: two passes over the corpus dataset."""

    def __init__(self, settings: StackSettings, entry: CatalogEntry):
        self.settings = settings
        self.entry = entry
        self.stamp = Stamp.of(entry)
        self.dataset = read_corpus(settings)
        self.size = 0

    def keys(self) -> list[Keyed]:
        try:
            keys = self.dataset.map_batches(content_keys, batch_format="numpy", batch_size=4096, num_cpus=0.25)
            documents = [
                Keyed(i, s)
                for batch in keys.iter_batches(batch_format="numpy", batch_size=None)
                for i, s in zip(batch["id"], batch["content_sha256"])
            ]
        except Exception as exc:  # noqa: BLE001 — Ray wraps reader errors; name the corpus
            cause = _lockstep_cause(exc)
            if cause:
                raise cause from None
            raise UsageError(
                f"corpus {corpus_store.corpus_uri(self.settings)} could not be read as JSONL of "
                f"{{id, text}} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); fix or re-upload it"
            ) from None
        _validate(documents, self.settings)
        self.size = len(documents)
        return documents

    def load(self, index_name: str, todo: list[str]) -> int:
        settings, workers = self.settings, self.settings.backfill.workers
        todo_ref = [] if len(todo) == self.size else [ray.put(set(todo))]
        sink = OpenSearchSink(settings, self.entry, index_name)
        embedded = self.dataset.map_batches(
            Embed,
            batch_format="numpy",
            batch_size=settings.backfill.batch_size,
            fn_constructor_kwargs={
                "settings": settings.model_dump(by_alias=True, mode="json"),
                "entry": self.entry.model_dump(by_alias=True, mode="json"),
                "index_name": index_name,
                "todo": todo_ref,
                # workers export it (a pre-started runtime's workers lack it)
                "env": worker_env(settings),
            },
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=workers_cpus(workers),
        )
        try:
            embedded.write_datasink(sink, ray_remote_args={"num_cpus": 0.25})
        except Exception as exc:  # noqa: BLE001
            cause = _lockstep_cause(exc)
            if cause:
                raise cause from None
            raise
        return int(sink.written)


def _validate(documents: list[Keyed], settings: StackSettings) -> None:
    """The local parser's rules: a non-empty corpus of unique ids."""
    uri = corpus_store.corpus_uri(settings)
    if not documents:
        raise UsageError(f"{uri}: the corpus is empty; upload documents (`lockstep corpus seed`)")
    seen: set[str] = set()
    for doc in documents:
        if doc.id in seen:
            raise UsageError(f"{uri}: duplicate id {doc.id!r}; ids must be unique")
        seen.add(doc.id)


def run_pipeline(
    settings: StackSettings, entry: CatalogEntry, full: bool = False, corpus_etag: str | None = None
) -> core.BackfillResult:
    """Provision or catch up `entry`'s index on the Ray runtime this process is connected to."""
    client = clients.opensearch(settings.opensearch)
    return core.run(client, settings, entry, RayEngine(settings, entry), full=full, corpus_etag=corpus_etag)


def sync_index(
    settings: StackSettings, entry: CatalogEntry, progress: bool = True, full: bool = False
) -> core.BackfillResult:
    """The pipeline on this process's Ray runtime (a local one, or the cluster a Ray job runs in)."""
    s3 = clients.aws_for(settings, "s3")
    with clients.reaching_aws(settings, "S3"):
        ref = corpus_store.corpus_ref(s3, settings)
        if ref is None:
            raise UsageError(
                f"corpus {corpus_store.corpus_uri(settings)} not found; run `lockstep apply` (seeds the embedded corpus) or upload it"
            )
    with runtime(settings, progress):
        return run_pipeline(settings, entry, full=full, corpus_etag=ref.etag)
