"""Re-embedding on Ray Data: the `ray` engine of a backfill (`backfill.engine: ray`).

The same embedding as the `local` engine (`reembed`), spread over a Ray runtime:

    S3 corpus JSONL ── ray.data.read_json (pyarrow S3FileSystem at boto3's endpoint)
      │  pass 1: (id, content_sha256) per document → reembed.index_delta against the index
      │          (missing, changed, written by another version, deleted from the corpus)
      │  pass 2: map_batches on an actor pool (`concurrency=workers`): each actor loads the
      │          version's artifact ONCE (artifacts.load_embedder, sha256-verified) and builds
      │          the bulk documents with reembed.index_actions (the same stamping)
      ▼
    OpenSearchSink (ray.data.Datasink): reembed.guard + reembed.write (streaming_bulk,
    corpus ids as document ids, 429 backoff) — a retried task rewrites the same ids.

Deletions go through reembed.delete_actions / reembed.write on the driver. Nothing here touches
the live alias. With `backfill.address` the same pipeline runs as a Ray job (Jobs API), so a long
backfill outlives the client: `lockstep backfill` follows it, can be interrupted and re-attached.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import NamedTuple
from urllib.parse import urlsplit

import numpy as np
import ray
import ray.data
from ray.data import Datasink
from ray.data.block import BlockAccessor

from lockstep.config import CatalogEntry, StackSettings
from lockstep.errors import GuardRefused, LockstepError, Unreachable, UsageError
from lockstep.ops import artifacts, clients, index, reembed
from lockstep.ops.corpus import Document

JOB_PAYLOAD = "LOCKSTEP_RAY_JOB"
RESULT_MARK = "LOCKSTEP_RESULT "
# The Jobs API answers on the dashboard port; a `ray://host:10001` (Ray Client) address names
# the same head node, whose dashboard listens here unless it was started otherwise.
DASHBOARD_PORT = 8265
RUNNING = {"PENDING", "RUNNING"}
BLOCK_BYTES = 4 * 1024**2
SUBMIT_WAIT = 90  # seconds to wait for a fresh head node's job agent
CORPUS_SCHEMA_FIELDS = (("id", "string"), ("text", "string"), ("updated_at", "string"))


class Detached(LockstepError):
    """The client stopped following a Ray job that keeps running (Ctrl-C)."""

    exit_code = 130


# ------------------------------------------------------------------------------------- preflight


def job_address(address: str) -> str:
    """The Jobs API address of a cluster: http(s)://host:port as is; ray://host:port → its
    dashboard (http://host:8265); host:port → http://host:port."""
    parts = urlsplit(address if "://" in address else f"http://{address}")
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise UsageError(f"backfill.address {address!r} names no host; use http://HOST:8265 or ray://HOST:10001")
        return f"{parts.scheme}://{parts.netloc}"
    if parts.scheme == "ray" and parts.hostname:
        return f"http://{parts.hostname}:{DASHBOARD_PORT}"
    raise UsageError(
        f"backfill.address {address!r} is not a Ray address; use http://HOST:8265 (Jobs API) or ray://HOST:10001"
    )


def job_client(address: str):
    """A JobSubmissionClient for the cluster, or one `Unreachable` line."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    url = job_address(address)
    try:
        return JobSubmissionClient(url)
    except AuthenticationError:
        raise UsageError(
            f"Ray cluster at {url} requires a token: set RAY_AUTH_TOKEN (and RAY_AUTH_MODE=token) "
            "to the cluster's token"
        ) from None
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise Unreachable(
            f"Ray cluster at {url} (backfill.address {address}) is unreachable ({type(exc).__name__}); "
            "start it (`ray start --head`) or fix backfill.address"
        ) from None


def preflight(settings: StackSettings) -> None:
    """Fail before anything is written: the cluster, if one is named, answers."""
    if settings.backfill.address:
        job_client(settings.backfill.address)


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
        options = {"log_to_driver": progress, "logging_level": logging.WARNING}
        if not os.environ.get("RAY_ADDRESS"):  # a new local runtime (a job's or a cluster's has its own)
            options.update(include_dashboard=False, runtime_env={"env_vars": worker_env(settings)})
        ray.init(**options)
        atexit.register(ray.shutdown)
    yield ray


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
    """Pass 1: (id, content_sha256) of each document — the hash the local engine stamps."""
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
    """Pass 2, one per actor: load the artifact once (sha256-verified), embed batches with the
    local engine's document builder. Rows not in `todo` (already indexed and unchanged) pass by."""

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


# ------------------------------------------------------------------------------------- the pipeline


def _lockstep_cause(exc: BaseException) -> LockstepError | None:
    """The LockstepError a Ray task raised, under Ray's wrappers (RayTaskError, UserCodeException)."""
    seen = set()
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


def run_pipeline(
    settings: StackSettings,
    entry: CatalogEntry,
    progress: bool = True,
    full: bool = False,
    corpus_etag: str | None = None,
) -> reembed.BackfillResult:
    """Provision or catch up `entry`'s index on the Ray runtime this process is connected to."""
    started = time.monotonic()
    name = settings.opensearch.index_name(entry.version)
    client = clients.opensearch(settings.opensearch)
    with clients.reaching("OpenSearch", clients.opensearch_url(settings.opensearch)):
        created = index.ensure_index(client, settings, entry)
        reembed.guard(client, name, Stamp.of(entry))
    env = worker_env(settings)  # workers export it (a pre-started runtime's workers lack it)
    dataset = read_corpus(settings)
    try:
        keys = dataset.map_batches(content_keys, batch_format="numpy", batch_size=4096, num_cpus=0.25)
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
            f"corpus {artifacts.corpus_uri(settings)} could not be read as JSONL of "
            f"{{id, text}} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); fix or re-upload it"
        ) from None
    _validate(documents, settings)
    with clients.reaching("OpenSearch", clients.opensearch_url(settings.opensearch)):
        plan = reembed.delta(documents, {}) if created else reembed.index_delta(client, name, entry.version, documents)
    if full:
        plan = reembed.Delta(missing=[d.id for d in documents], deleted=plan.deleted)
    todo = plan.missing + plan.changed
    full_load = created or len(todo) > len(documents) // 2
    left_in_bulk_mode = not created and index.in_bulk_mode(client, name)
    embedded = deleted = 0
    if todo and full_load:
        index.set_bulk_mode(client, name, True, settings)
    try:
        if todo:
            todo_ref = None if len(todo) == len(documents) else [ray.put(set(todo))]
            sink = OpenSearchSink(settings, entry, name)
            workers = settings.backfill.workers
            embedded_ds = dataset.map_batches(
                Embed,
                batch_format="numpy",
                batch_size=settings.backfill.batch_size,
                fn_constructor_kwargs={
                    "settings": settings.model_dump(by_alias=True, mode="json"),
                    "entry": entry.model_dump(by_alias=True, mode="json"),
                    "index_name": name,
                    "todo": [todo_ref[0]] if todo_ref else [],
                    "env": env,
                },
                compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=workers_cpus(workers),
            )
            try:
                embedded_ds.write_datasink(sink, ray_remote_args={"num_cpus": 0.25})
            except Exception as exc:  # noqa: BLE001
                cause = _lockstep_cause(exc)
                if cause:
                    raise cause from None
                raise
            embedded = int(sink.written)
        with clients.reaching("OpenSearch", clients.opensearch_url(settings.opensearch)):
            deleted = reembed.write(client, reembed.delete_actions(plan.deleted, name))
    finally:
        if (todo and full_load) or left_in_bulk_mode:
            index.set_bulk_mode(client, name, False, settings)
    client.indices.refresh(index=name)
    if corpus_etag:
        index.mark_synced(client, name, corpus_etag, len(documents))
    return reembed.BackfillResult(
        entry.version, name, created, embedded, deleted, time.monotonic() - started, len(documents)
    )


def _validate(documents: list[Keyed], settings: StackSettings) -> None:
    """The local parser's rules: a non-empty corpus of unique ids."""
    uri = artifacts.corpus_uri(settings)
    if not documents:
        raise UsageError(f"{uri}: the corpus is empty; upload documents (`lockstep corpus seed`)")
    seen: set[str] = set()
    for doc in documents:
        if doc.id in seen:
            raise UsageError(f"{uri}: duplicate id {doc.id!r}; ids must be unique")
        seen.add(doc.id)


def sync_index(
    settings: StackSettings,
    entry: CatalogEntry,
    progress: bool = True,
    full: bool = False,
    attach: str | None = None,
    say: Callable[[str], None] | None = None,
) -> reembed.BackfillResult:
    """The `ray` engine's entry (reached through reembed.sync_index): a Ray job on
    `backfill.address`, else the pipeline on a local Ray runtime."""
    preflight(settings)
    if settings.backfill.address:
        return run_job(settings, entry, progress=progress, full=full, attach=attach, say=say)
    if attach:
        raise UsageError("--attach follows a Ray job: set backfill.address to the cluster (http://HOST:8265)")
    s3 = clients.aws_for(settings, "s3")
    with clients.reaching("S3", clients.aws_endpoint(settings.embedded) or "AWS"):
        ref = artifacts.corpus_ref(s3, settings)
        if ref is None:
            raise UsageError(
                f"corpus {artifacts.corpus_uri(settings)} not found; run `lockstep apply` (seeds the embedded corpus) or upload it"
            )
    with runtime(settings, progress):
        return run_pipeline(settings, entry, progress=progress, full=full, corpus_etag=ref.etag)


# ---------------------------------------------------------------------------------------- Ray jobs


def job_metadata(settings: StackSettings, entry: CatalogEntry) -> dict[str, str]:
    return {
        "lockstep_stack": settings.stack,
        "lockstep_version": entry.version,
        "lockstep_index": settings.opensearch.index_name(entry.version),
    }


def running_job(client, settings: StackSettings, entry: CatalogEntry) -> str | None:
    """A backfill job for the same stack, version and index that is still pending or running."""
    wanted = job_metadata(settings, entry)
    for job in sorted(client.list_jobs(), key=lambda j: j.start_time or 0, reverse=True):
        metadata = job.metadata or {}
        running = str(job.status) in RUNNING or getattr(job.status, "value", None) in RUNNING
        if running and all(metadata.get(k) == v for k, v in wanted.items()) and job.submission_id:
            return job.submission_id
    return None


def submit_job(client, settings: StackSettings, entry: CatalogEntry, full: bool) -> str:
    payload = {
        "settings": settings.model_dump(by_alias=True, mode="json"),
        "entry": entry.model_dump(by_alias=True, mode="json"),
        "full": full,
    }
    job_id = f"lockstep-backfill-{settings.stack}-{entry.version}-{uuid.uuid4().hex[:8]}".lower()
    deadline = time.monotonic() + SUBMIT_WAIT
    while True:
        try:
            return client.submit_job(
                entrypoint="python -m lockstep.ops.ray_engine",
                submission_id=job_id,
                runtime_env={"env_vars": {**worker_env(settings), JOB_PAYLOAD: json.dumps(payload)}},
                metadata=job_metadata(settings, entry),
                entrypoint_num_cpus=0,
            )
        except RuntimeError as exc:
            # A head node that just started has no job agent yet ("No available agent ... try again").
            if "no available agent" not in str(exc).lower() or time.monotonic() > deadline:
                raise LockstepError(
                    f"the Ray cluster refused the backfill job: {' '.join(str(exc).split())[:300]}"
                ) from None
            time.sleep(2)


def _status(client, job_id: str) -> str:
    status = client.get_job_status(job_id)
    return getattr(status, "value", str(status))


def run_job(
    settings: StackSettings,
    entry: CatalogEntry,
    progress: bool = True,
    full: bool = False,
    attach: str | None = None,
    say: Callable[[str], None] | None = None,
    poll: float = 1.0,
) -> reembed.BackfillResult:
    """Submit the backfill as a Ray job (or re-attach to one) and follow it to the end."""
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    address = settings.backfill.address or ""
    client = job_client(address)
    try:
        if attach:
            try:
                _status(client, attach)
            except RuntimeError:
                raise UsageError(
                    f"--attach {attach}: no such Ray job at {job_address(address)}; "
                    "list jobs with `ray job list --address ...`"
                ) from None
            job_id, how = attach, "attached to"
        elif job_id := running_job(client, settings, entry):
            how = "re-attached to running"
        else:
            job_id, how = submit_job(client, settings, entry, full), "submitted"
    except (ConnectionError, OSError) as exc:
        raise Unreachable(
            f"Ray cluster at {job_address(address)} is unreachable ({type(exc).__name__}); "
            "start it or fix backfill.address"
        ) from None
    try:  # from the moment the id is known, Ctrl-C detaches: the job is the cluster's now
        say(
            f"ray job {job_id}: {how} at {job_address(address)} "
            f"(re-attach: lockstep backfill --stack {settings.stack} --version {entry.version} --attach {job_id})"
        )
        return follow(client, job_id, say, progress, poll)
    except KeyboardInterrupt:
        raise detached(job_id) from None


def follow(
    client, job_id: str, say: Callable[[str], None], progress: bool = True, poll: float = 1.0
) -> reembed.BackfillResult:
    """Print the job's log as it grows until it ends; Ctrl-C detaches (the job keeps running)."""
    try:
        return _follow(client, job_id, say, progress, poll)
    except KeyboardInterrupt:
        raise detached(job_id) from None


def detached(job_id: str) -> Detached:
    return Detached(
        f"detached from ray job {job_id}; it keeps running — re-attach with `lockstep backfill ... --attach {job_id}`"
    )


def _follow(client, job_id: str, say: Callable[[str], None], progress: bool, poll: float) -> reembed.BackfillResult:
    shown = 0
    while True:
        status = _status(client, job_id)
        logs = client.get_job_logs(job_id)
        if progress and len(logs) > shown:
            for line in logs[shown:].splitlines():
                if line.strip() and not line.startswith(RESULT_MARK):
                    say(f"  [{job_id[-8:]}] {line}")
        shown = len(logs)
        if status not in RUNNING:
            break
        time.sleep(poll)
    result = next((line[len(RESULT_MARK) :] for line in logs.splitlines() if line.startswith(RESULT_MARK)), None)
    if status != "SUCCEEDED" or result is None:
        said = [line for line in logs.splitlines() if line.startswith("lockstep: ")]
        message = [line for line in (client.get_job_info(job_id).message or status).splitlines() if line.strip()]
        reason = said[-1].removeprefix("lockstep: ") if said else message[-1][:500]
        raise LockstepError(f"ray job {job_id} {status.lower()}: {reason}")
    data = json.loads(result)
    data.pop("job_id", None)
    say(f"ray job {job_id}: succeeded")
    return reembed.BackfillResult(**data)


def main() -> None:
    """The Ray job's entrypoint (`python -m lockstep.ops.ray_engine`): run the pipeline on the
    cluster the job runs in and print the result as one marked JSON line."""
    payload = json.loads(os.environ[JOB_PAYLOAD])
    settings = StackSettings.model_validate(payload["settings"])
    entry = CatalogEntry.model_validate(payload["entry"])
    try:
        s3 = clients.aws_for(settings, "s3")
        with clients.reaching("S3", clients.aws_endpoint(settings.embedded) or "AWS"):
            ref = artifacts.corpus_ref(s3, settings)
        with runtime(settings, progress=True):
            result = run_pipeline(
                settings, entry, progress=True, full=payload.get("full", False), corpus_etag=ref.etag if ref else None
            )
    except LockstepError as exc:
        print(f"lockstep: {exc}", flush=True)
        sys.exit(exc.exit_code)
    print(RESULT_MARK + json.dumps(asdict(result)), flush=True)


if __name__ == "__main__":
    main()
