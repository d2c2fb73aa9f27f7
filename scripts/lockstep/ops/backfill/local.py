"""The `local` engine: embed in this process and write through opensearch-py's bulk helpers."""

from __future__ import annotations

import time
from collections.abc import Sequence

from opensearchpy import OpenSearch

from lockstep.config import CatalogEntry, StackSettings
from lockstep.models import Embedder, encode_order
from lockstep.ops import artifacts, clients, corpus_store, reembed
from lockstep.ops.backfill import core
from lockstep.ops.corpus import Document
from lockstep.ops.progress import progress_bar


class LocalEngine:
    """Documents already in memory, one embedder, overlapped embedding and indexing."""

    def __init__(
        self, client: OpenSearch, embedder: Embedder, documents: Sequence[Document], batch_size: int, progress: bool
    ):
        self.client = client
        self.stamp = embedder
        self.embedder = embedder
        self.documents = documents
        self.batch_size = batch_size
        self.progress = progress

    def keys(self) -> Sequence[Document]:
        return self.documents

    def load(self, index_name: str, todo: list[str]) -> int:
        by_id = {doc.id: doc for doc in self.documents}
        started = time.monotonic()
        with progress_bar(self.progress) as bar:
            task = (
                bar.add_task(f"embed {self.embedder.version} → {index_name}", total=len(todo), rate="") if bar else None
            )

            def advance(n: int) -> None:
                if bar:
                    elapsed = max(time.monotonic() - started, 1e-6)
                    bar.update(task, advance=n, rate=f"{bar.tasks[0].completed / elapsed:,.0f} docs/s")

            def actions(ids: list[str]):
                documents = [by_id[i] for i in ids]  # shortest input first: batches of similar lengths
                ordered = [documents[n] for n in encode_order(self.embedder, [d.text for d in documents])]
                return reembed.index_actions(ordered, self.embedder, index_name, self.batch_size)

            embedded, rejected = reembed.write_overlapped(self.client, actions(todo), on_done=advance)
            if rejected:  # 429s on single items: again through the writer that backs off
                embedded += reembed.write(self.client, actions(rejected), on_done=advance)
        return embedded


def sync_documents(
    client: OpenSearch,
    settings: StackSettings,
    entry: CatalogEntry,
    embedder: Embedder,
    documents: Sequence[Document],
    progress: bool = True,
    corpus_etag: str | None = None,
    full: bool = False,
    known_delta: reembed.Delta | None = None,
) -> core.BackfillResult:
    """A backfill of `documents` embedded by `embedder` (see core.run for the arguments)."""
    engine = LocalEngine(client, embedder, documents, settings.backfill.batch_size, progress)
    return core.run(client, settings, entry, engine, full=full, corpus_etag=corpus_etag, known_delta=known_delta)


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
    known_delta: reembed.Delta | None = None,
) -> core.BackfillResult:
    """The local engine's front: the corpus and the version's artifact from S3 unless the caller
    already holds them."""
    s3 = clients.aws_for(settings, "s3")
    client = client or clients.opensearch(settings.opensearch)
    with clients.reaching("OpenSearch", clients.opensearch_url(settings.opensearch)):
        embedder = embedder or artifacts.load_embedder(s3, settings.artifacts.bucket, entry)
        if documents is None:
            ref = corpus_store.corpus_ref(s3, settings)
            corpus_etag = ref.etag if ref else None
            documents = corpus_store.read_corpus(s3, settings)
        return sync_documents(client, settings, entry, embedder, documents, progress, corpus_etag, full, known_delta)
