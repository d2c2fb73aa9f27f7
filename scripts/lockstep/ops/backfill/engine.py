"""The one entry every re-embedding path goes through (apply, backfill, the Pulumi Index provider,
the drill): the stack's `backfill.engine` picks the plug-in the core (core.run) runs with."""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

from opensearchpy import OpenSearch

from lockstep.config import CatalogEntry, StackSettings
from lockstep.errors import UsageError
from lockstep.ops import reembed
from lockstep.ops.backfill import local
from lockstep.ops.backfill.core import BackfillResult
from lockstep.ops.corpus import Document

if TYPE_CHECKING:  # the model families' module (loaded through artifacts at run time)
    from lockstep.models import Embedder


def ray_engine() -> tuple[ModuleType, ModuleType]:
    """The `ray` engine's modules (pipeline, Jobs client); one line (exit 2) when Ray cannot be
    imported. Imported here, on use: a `local` stack never imports Ray."""
    try:
        from lockstep.ops.backfill import ray_jobs, ray_pipeline
    except ImportError as exc:
        raise UsageError(
            f"backfill.engine is 'ray' but Ray cannot be imported ({exc}); run `make setup` "
            "(installs ray[data]) or set backfill.engine: local"
        ) from None
    return ray_pipeline, ray_jobs


def preflight(settings: StackSettings, attach: str | None = None) -> None:
    """Fail before anything is written when the stack's engine cannot run (Ray missing, cluster
    down), or `attach` names a Ray job where the stack runs none."""
    if attach and settings.backfill.engine != "ray":
        raise UsageError("--attach follows a Ray job: set backfill.engine: ray and backfill.address")
    if attach and not settings.backfill.address:
        raise UsageError("--attach follows a Ray job: set backfill.address to the cluster (http://HOST:8265)")
    if settings.backfill.engine == "ray":
        _, jobs = ray_engine()
        if settings.backfill.address:
            jobs.job_client(settings.backfill.address)


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
    known_delta: reembed.Delta | None = None,
) -> BackfillResult:
    """Provision or catch up one version's index from the corpus in S3, with its own artifact.

    `ray` runs the Ray Data pipeline — as a Ray job on `backfill.address` (followed; `attach`
    re-attaches by id), else on this process's Ray runtime; it reads the corpus and the artifact
    on its workers (`client`, `embedder`, `documents` are not used). `local` runs here, on what
    the caller already holds."""
    preflight(settings, attach)
    if settings.backfill.engine == "ray":
        pipeline, jobs = ray_engine()
        if settings.backfill.address:
            return jobs.run_job(settings, entry, progress=progress, full=full, attach=attach)
        return pipeline.sync_index(settings, entry, progress=progress, full=full)
    return local.sync_index(
        settings,
        entry,
        progress,
        full,
        client=client,
        embedder=embedder,
        documents=documents,
        corpus_etag=corpus_etag,
        known_delta=known_delta,
    )
