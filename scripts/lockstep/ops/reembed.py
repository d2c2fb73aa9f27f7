"""Re-embedding: build (provision) or catch up (reattach) a version's index from the corpus.

Small composable generators in the style of opensearch-py's helpers: `delta` decides what to do,
`index_actions` / `delete_actions` turn documents into bulk actions, `write` streams them through
`streaming_bulk` (429s are retried with backoff there). Document ids are the corpus ids, so a
re-run after a crash continues where it stopped and never duplicates. Nothing here touches the
live alias: an interrupted provision leaves the live system as it was.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import chain

from opensearchpy import OpenSearch
from opensearchpy.exceptions import TransportError
from opensearchpy.helpers import parallel_bulk, streaming_bulk
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from lockstep.config import CatalogEntry, StackSettings
from lockstep.errors import GuardRefused, UsageError
from lockstep.models import Embedder
from lockstep.ops import artifacts, clients, index
from lockstep.ops.corpus import Document

BULK_RETRIES = 8


@dataclass
class Delta:
    """What separates an index from the corpus, by document id."""

    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    @property
    def to_embed(self) -> int:
        return len(self.missing) + len(self.changed)

    def as_dict(self) -> dict[str, int]:
        return {"missing": len(self.missing), "changed": len(self.changed), "deleted": len(self.deleted)}


@dataclass
class BackfillResult:
    version: str
    index: str
    created: bool
    embedded: int
    deleted: int
    seconds: float
    corpus_size: int

    @property
    def rate(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


def delta(documents: Sequence[Document], indexed: dict[str, str]) -> Delta:
    """Compare by content hash: a changed text is a changed document, whatever its timestamp."""
    result = Delta()
    corpus_ids = set()
    for doc in documents:
        corpus_ids.add(doc.id)
        stored = indexed.get(doc.id)
        if stored is None:
            result.missing.append(doc.id)
        elif stored != doc.content_sha256:
            result.changed.append(doc.id)
    result.deleted = sorted(set(indexed) - corpus_ids)
    return result


def guard(client: OpenSearch, index_name: str, embedder: Embedder) -> None:
    """The write guard: vectors of one model version never enter another version's index."""
    meta = index.read_meta(client, index_name) or {}
    problems = []
    if meta.get("version") != embedder.version:
        problems.append(f"index version {meta.get('version')!r} ≠ embedder version {embedder.version!r}")
    if embedder.artifact_sha256 and meta.get("artifact_sha256") not in (None, embedder.artifact_sha256):
        problems.append("artifact sha256 differs")
    if meta.get("dimension") not in (None, embedder.dimension):
        problems.append(f"dimension {meta.get('dimension')} ≠ {embedder.dimension}")
    if problems:
        raise GuardRefused(
            f"write guard refused vectors for {index_name}: {'; '.join(problems)} — embed with the index's own version"
        )


def batched(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def compact(vector) -> list[float]:
    """A float32 vector as short JSON numbers (7 decimals, |error| < 1e-7): half the bytes of
    float32→float64 reprs, which the server must parse too."""
    return [round(x, 7) for x in vector.astype(float).tolist()]


def index_actions(
    documents: Sequence[Document], embedder: Embedder, index_name: str, batch_size: int
) -> Iterator[dict]:
    """Bulk `index` actions, each document stamped with its version and content hash."""
    for batch in batched(documents, batch_size):
        vectors = embedder.encode([doc.text for doc in batch])
        for doc, vector in zip(batch, vectors):
            yield {
                "_op_type": "index",
                "_index": index_name,
                "_id": doc.id,
                "_source": {
                    "doc_id": doc.id,
                    "text": doc.text,
                    "model_version": embedder.version,
                    "content_sha256": doc.content_sha256,
                    "embedding": compact(vector),
                },
            }


def delete_actions(ids: Iterable[str], index_name: str) -> Iterator[dict]:
    for doc_id in ids:
        yield {"_op_type": "delete", "_index": index_name, "_id": doc_id}


def write(client: OpenSearch, actions: Iterable[dict], chunk_size: int = 500, on_done=None) -> int:
    """Stream actions; retry 429 rejections with exponential backoff; return the count written."""
    done = 0
    for ok, item in streaming_bulk(
        client,
        actions,
        chunk_size=chunk_size,
        max_retries=BULK_RETRIES,
        initial_backoff=0.5,
        max_backoff=30,
        raise_on_error=False,
        raise_on_exception=True,
    ):
        if not ok:
            ((op, detail),) = item.items()
            if op == "delete" and detail.get("status") == 404:
                pass  # already gone: a re-run after a crash
            else:
                raise GuardRefused(
                    f"bulk {op} of {detail.get('_id')} into {detail.get('_index')} failed: {detail.get('error')}"
                )
        done += 1
        if on_done:
            on_done(1)
    return done


def write_overlapped(
    client: OpenSearch, actions: Iterable[dict], chunk_size: int = 500, on_done=None
) -> tuple[int, list[str]]:
    """One pass through opensearch-py's `parallel_bulk` with one sender thread: this thread
    embeds and serializes the next chunk while the previous one is being indexed (measured:
    ~1.5× the throughput of sending inline). Returns (written, ids rejected with 429); the
    caller re-sends those through `write`, which backs off."""
    done, rejected = 0, []
    source = iter(actions)
    unanswered: dict[str, dict] = {}  # handed to parallel_bulk, no item answer yet (by id)

    def tracked() -> Iterator[dict]:
        for action in source:
            unanswered[action["_id"]] = action
            yield action

    try:
        for ok, item in parallel_bulk(
            client,
            tracked(),
            thread_count=1,
            queue_size=2,
            chunk_size=chunk_size,
            raise_on_error=False,
            raise_on_exception=True,
        ):
            ((op, detail),) = item.items()
            unanswered.pop(detail.get("_id"), None)
            if ok:
                done += 1
                if on_done:
                    on_done(1)
            elif detail.get("status") == 429:
                rejected.append(detail.get("_id"))
            else:
                raise GuardRefused(
                    f"bulk {op} of {detail.get('_id')} into {detail.get('_index')} failed: {detail.get('error')}"
                )
    except TransportError as exc:
        if exc.status_code != 429:
            raise
        # The whole `_bulk` request was rejected (parallel_bulk does not retry): what had no
        # answer and what was not sent yet go through `write`, which backs off and retries.
        done += write(client, chain(list(unanswered.values()), source), chunk_size, on_done)
    return done, rejected


def progress_bar(enabled: bool):
    if not enabled:
        return nullcontext(None)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )


def index_delta(client: OpenSearch, index_name: str, version: str, documents: Sequence[Document]) -> Delta:
    """The delta of an existing index: by content hash, plus documents another version wrote."""
    # A document another version embedded (a naive writer) counts as changed: re-embed it.
    indexed = {
        doc_id: sha if stamped == version else ""
        for doc_id, (sha, stamped) in index.doc_stamps(client, index_name).items()
    }
    return delta(documents, indexed)


def sync_documents(
    client: OpenSearch,
    settings: StackSettings,
    entry: CatalogEntry,
    embedder: Embedder,
    documents: Sequence[Document],
    progress: bool = True,
    corpus_etag: str | None = None,
    full: bool = False,
    known_delta: Delta | None = None,
) -> BackfillResult:
    """Bring the version's index in line with `documents` (create it if needed). With
    `corpus_etag`, the index records which corpus it now matches (see index.mark_synced).
    `full` re-embeds every document: the repair for vectors that are wrong although their
    stamps are right (what the check's re-embed probe finds). `known_delta` is a delta the
    caller established without scanning the index (orchestrator.Corpus.delta_since_sync)."""
    started = time.monotonic()
    name = settings.opensearch.index_name(entry.version)
    created = index.ensure_index(client, settings, entry)
    guard(client, name, embedder)
    if created:
        plan = delta(documents, {})
    else:
        plan = known_delta if known_delta is not None else index_delta(client, name, entry.version, documents)
    if full:
        plan = Delta(missing=[d.id for d in documents], deleted=plan.deleted)
    by_id = {doc.id: doc for doc in documents}
    todo = [by_id[i] for i in plan.missing + plan.changed]
    full_load = created or len(todo) > len(documents) // 2
    left_in_bulk_mode = not created and index.in_bulk_mode(client, name)  # by a run that was killed
    if full_load and todo:
        index.set_bulk_mode(client, name, True, settings)
    try:
        with progress_bar(progress and bool(todo)) as bar:
            task = bar.add_task(f"embed {entry.version} → {name}", total=len(todo), rate="") if bar else None

            def advance(n: int) -> None:
                if bar:
                    elapsed = max(time.monotonic() - started, 1e-6)
                    bar.update(task, advance=n, rate=f"{bar.tasks[0].completed / elapsed:,.0f} docs/s")

            embedded, rejected = write_overlapped(
                client, index_actions(todo, embedder, name, settings.backfill.batch_size), on_done=advance
            )
            if rejected:
                retry = [by_id[doc_id] for doc_id in rejected]
                embedded += write(
                    client, index_actions(retry, embedder, name, settings.backfill.batch_size), on_done=advance
                )
        deleted = write(client, delete_actions(plan.deleted, name))
    finally:
        if (full_load and todo) or left_in_bulk_mode:
            index.set_bulk_mode(client, name, False, settings)
    client.indices.refresh(index=name)
    if corpus_etag:
        index.mark_synced(client, name, corpus_etag, len(documents))
    return BackfillResult(entry.version, name, created, embedded, deleted, time.monotonic() - started, len(documents))


def ray_engine():
    """The `ray` engine's module; one line (exit 2) when Ray cannot be imported."""
    try:
        from lockstep.ops import ray_engine as engine
    except ImportError as exc:
        raise UsageError(
            f"backfill.engine is 'ray' but Ray cannot be imported ({exc}); run `make setup` "
            "(installs ray[data]) or set backfill.engine: local"
        ) from None
    return engine


def preflight(settings: StackSettings) -> None:
    """Fail before anything is written when the stack's engine cannot run (Ray missing, cluster down)."""
    if settings.backfill.engine == "ray":
        ray_engine().preflight(settings)


def sync_index(
    settings: StackSettings,
    entry: CatalogEntry,
    progress: bool = True,
    full: bool = False,
    *,
    client: OpenSearch | None = None,
    embedder: Embedder | None = None,
    documents: Sequence[Document] | None = None,
    corpus_etag: str | None = None,
    attach: str | None = None,
    known_delta: Delta | None = None,
) -> BackfillResult:
    """Provision or catch up one version's index from the corpus in S3, with its own artifact.

    The one dispatch every re-embedding path goes through (apply, backfill, the Pulumi Index
    provider, the drill): `backfill.engine: ray` runs the Ray Data pipeline (ops/ray_engine, which
    reads the corpus and the artifact on its workers: `documents`/`embedder` are not used);
    `local` runs here, on `documents`/`embedder` when the caller already holds them."""
    if settings.backfill.engine == "ray":
        return ray_engine().sync_index(settings, entry, progress=progress, full=full, attach=attach)
    if attach:
        raise UsageError("--attach follows a Ray job: set backfill.engine: ray and backfill.address")
    s3 = clients.aws_for(settings, "s3")
    client = client or clients.opensearch(settings.opensearch)
    with clients.reaching("OpenSearch", clients.opensearch_url(settings.opensearch)):
        embedder = embedder or artifacts.load_embedder(s3, settings.artifacts.bucket, entry)
        if documents is None:
            ref = artifacts.corpus_ref(s3, settings)
            corpus_etag = ref.etag if ref else None
            documents = artifacts.read_corpus(s3, settings)
        return sync_documents(client, settings, entry, embedder, documents, progress, corpus_etag, full, known_delta)


def write_documents(client: OpenSearch, index_name: str, embedder: Embedder, documents: Sequence[Document]) -> int:
    """Guarded write of new documents (dual write during validation uses it once per version)."""
    guard(client, index_name, embedder)
    return write(client, index_actions(documents, embedder, index_name, 256))
