"""Re-embedding helpers: documents → vectors → bulk actions → OpenSearch, behind the write guard.

Small composable generators in the style of opensearch-py's helpers: `delta` decides what to do,
`index_actions` / `delete_actions` turn documents into bulk actions, `write` streams them through
`streaming_bulk` (429s are retried with backoff there). Document ids are the corpus ids, so a
re-run after a crash continues where it stopped and never duplicates. Nothing here touches the
live alias. A whole backfill (provision or catch-up, on either engine) is ops/backfill.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Protocol

from opensearchpy import OpenSearch
from opensearchpy.exceptions import TransportError
from opensearchpy.helpers import parallel_bulk, streaming_bulk

from lockstep.errors import GuardRefused
from lockstep.models import Embedder
from lockstep.ops import index
from lockstep.ops.corpus import Document
from lockstep.ops.progress import batched

BULK_RETRIES = 8


class Stamped(Protocol):
    """What the write guard compares with an index's `_meta`: an embedder's identity."""

    @property
    def version(self) -> str: ...

    @property
    def artifact_sha256(self) -> str: ...

    @property
    def dimension(self) -> int: ...


class Keyed(Protocol):
    """What the delta compares: a document's id and content hash (a Document is one)."""

    @property
    def id(self) -> str: ...

    @property
    def content_sha256(self) -> str: ...


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


def delta(documents: Sequence[Keyed], indexed: dict[str, str]) -> Delta:
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


def guard(client: OpenSearch, index_name: str, embedder: Stamped) -> None:
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
        initial_backoff=0.5,  # type: ignore[arg-type]  # annotated int, used as seconds to sleep
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


def index_delta(client: OpenSearch, index_name: str, version: str, documents: Sequence[Keyed]) -> Delta:
    """The delta of an existing index: by content hash, plus documents another version wrote."""
    # A document another version embedded (a naive writer) counts as changed: re-embed it.
    indexed = {
        doc_id: sha if stamped == version else ""
        for doc_id, (sha, stamped) in index.doc_stamps(client, index_name).items()
    }
    return delta(documents, indexed)


def write_documents(client: OpenSearch, index_name: str, embedder: Embedder, documents: Sequence[Document]) -> int:
    """Guarded write of new documents (dual write during validation uses it once per version)."""
    guard(client, index_name, embedder)
    return write(client, index_actions(documents, embedder, index_name, 256))
