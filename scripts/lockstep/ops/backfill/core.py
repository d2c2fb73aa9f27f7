"""The backfill skeleton every engine shares (opensearch-py's helpers shape: one core, thin fronts).

An engine says which documents the corpus holds (`keys`: ids and content hashes) and how to embed
and write some of them (`load`); everything that keeps a backfill safe happens here, once:
ensure the index → write guard → delta → bulk mode on for a full load → load → deletions →
finish (bulk mode off — also after a failure or a killed earlier run — one refresh, the synced
marker). Nothing here touches the live alias.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from botocore.exceptions import BotoCoreError, ClientError
from opensearchpy import OpenSearch

from lockstep.config import CatalogEntry, StackSettings
from lockstep.errors import LockstepError
from lockstep.ops import clients, index, live_state, reembed


class Engine(Protocol):
    """An engine plug-in: the corpus as seen by the engine and the way it embeds and writes."""

    @property
    def stamp(self) -> reembed.Stamped:
        """The version, artifact and dimension its vectors carry (what the write guard compares)."""
        ...

    def keys(self) -> Sequence[reembed.Keyed]:
        """The corpus's documents (read and validated before the first write)."""
        ...

    def load(self, index_name: str, todo: list[str]) -> int:
        """Embed the documents with these ids into the index; return how many were written."""
        ...


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


def run(
    client: OpenSearch,
    settings: StackSettings,
    entry: CatalogEntry,
    engine: Engine,
    *,
    full: bool = False,
    corpus_etag: str | None = None,
    known_delta: reembed.Delta | None = None,
) -> BackfillResult:
    """Bring `entry`'s index in line with the engine's corpus (create it if needed).

    `full` re-embeds every document (the repair for vectors whose stamps are right but whose
    values are not); `known_delta` is a delta the caller established without scanning the index
    (orchestrator.Corpus.delta_since_sync); with `corpus_etag` the index records which corpus it
    now matches (index.mark_synced)."""
    started = time.monotonic()
    name = settings.opensearch.index_name(entry.version)
    documents = engine.keys()  # a corpus that cannot be read is refused before the first write
    with clients.reaching("OpenSearch", clients.opensearch_url(settings.opensearch)):
        created = index.ensure_index(client, settings, entry)
        reembed.guard(client, name, engine.stamp)
        if not created and index.in_bulk_mode(client, name):  # left so by a run that was killed
            index.set_bulk_mode(client, name, False, settings)
        if created:
            plan = reembed.delta(documents, {})
        elif known_delta is not None:
            plan = known_delta
        else:
            client.indices.refresh(index=name)  # the scan sees every write so far, a failed run's too
            plan = reembed.index_delta(client, name, entry.version, documents)
        if full:
            plan = reembed.Delta(missing=[d.id for d in documents], deleted=plan.deleted)
        todo = plan.missing + plan.changed
        if not created and (todo or plan.deleted):  # a write that does not finish leaves no claim behind
            index.clear_synced(client, name)
        # Bulk mode drops the replicas: only for an index nothing serves reads from.
        full_load = bool(todo) and (
            created or (len(todo) > len(documents) // 2 and not _serves_reads(client, settings, name))
        )
        if full_load:
            index.set_bulk_mode(client, name, True, settings)
        try:
            embedded = engine.load(name, todo) if todo else 0
            deleted = reembed.write(client, reembed.delete_actions(plan.deleted, name))
        finally:
            if full_load:
                index.set_bulk_mode(client, name, False, settings)
        client.indices.refresh(index=name)
        if corpus_etag:
            index.mark_synced(client, name, corpus_etag, len(documents))
    return BackfillResult(entry.version, name, created, embedded, deleted, time.monotonic() - started, len(documents))


def _serves_reads(client: OpenSearch, settings: StackSettings, name: str) -> bool:
    """An alias names the index, or the live pointer does (`lockstep.reader` searches the pointer's
    index by name, with or without an alias on it: after a cutover whose pointer could not follow,
    the old index has no alias and still answers). A pointer that cannot be read counts as naming
    it: bulk mode is only a speed-up, a partial index under readers is a wrong answer."""
    if index.aliased(client, name):
        return True
    try:
        with clients.reaching_aws(settings, "SSM"):
            pointer = live_state.read_pointer(clients.aws_for(settings, "ssm"), settings.pointer_name)
    except (LockstepError, ClientError, BotoCoreError):
        return True
    return pointer is not None and pointer.index == name
