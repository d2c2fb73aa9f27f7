"""The backfill core (ops/backfill/core.py) with an engine plug-in, and the import graph of the
backfill modules: each imports alone, in either order, and none imports another in a circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from lockstep.errors import UsageError
from lockstep.models import hashgram
from lockstep.ops import clients, index, live_state, reembed
from lockstep.ops.backfill import core
from lockstep.ops.corpus import Document

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
BACKFILL_MODULES = [
    "lockstep.ops.reembed",
    "lockstep.ops.backfill.core",
    "lockstep.ops.backfill.local",
    "lockstep.ops.backfill.engine",
    "lockstep.ops.backfill.ray_pipeline",
    "lockstep.ops.backfill.ray_jobs",
]


# ------------------------------------------------------------------------------------ import graph


def _module_imports(module: str) -> set[str]:
    """Every lockstep module `module` imports, at module level or inside a function."""
    path = SCRIPTS / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = SCRIPTS / module.replace(".", "/") / "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from lockstep.ops import reembed` imports a module
                candidate = f"{node.module}.{alias.name}"
                is_module = (SCRIPTS / (candidate.replace(".", "/") + ".py")).exists() or (
                    SCRIPTS / candidate.replace(".", "/")
                ).is_dir()
                found.add(candidate if is_module else node.module)
    return {name for name in found if name.startswith("lockstep.")}


def test_no_import_circle_through_the_backfill_modules():
    """Depth-first over what the backfill modules import (lazy imports included): no path leads back."""
    graph: dict[str, set[str]] = {}
    pending = list(BACKFILL_MODULES)
    while pending:
        module = pending.pop()
        if module not in graph:
            graph[module] = _module_imports(module)
            pending.extend(graph[module])

    def cycle_from(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
        for imported in sorted(graph.get(module, ())):
            found = cycle_from(imported, path + [module])
            if found:
                return found
        return None

    for module in BACKFILL_MODULES:
        assert cycle_from(module, []) is None, " → ".join(cycle_from(module, []) or [])
    assert "lockstep.ops.backfill.ray_jobs" not in graph["lockstep.ops.reembed"]  # the old circle's edge


@pytest.mark.parametrize(
    "modules",
    [[m] for m in BACKFILL_MODULES]
    + [
        ["lockstep.ops.reembed", "lockstep.ops.backfill.ray_jobs"],
        ["lockstep.ops.backfill.ray_jobs", "lockstep.ops.reembed"],
        ["lockstep.ops.backfill.ray_pipeline", "lockstep.ops.backfill.engine"],
        ["lockstep.ops.backfill.engine", "lockstep.ops.backfill.ray_pipeline"],
    ],
    ids=lambda modules: "+".join(m.rsplit(".", 1)[1] for m in modules),
)
def test_each_module_imports_alone_and_in_either_order(modules):
    code = "; ".join(f"import {m}" for m in modules)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


# ------------------------------------------------------------------------------- the core's skeleton


class ListEngine:
    """A plug-in engine over documents in memory (what an engine must provide, nothing more)."""

    def __init__(self, documents, embedder, client, fail_after: int | None = None, unreadable: bool = False):
        self.documents, self.stamp, self.client = documents, embedder, client
        self.fail_after, self.unreadable = fail_after, unreadable
        self.loaded: list[list[str]] = []

    def keys(self):
        if self.unreadable:
            raise UsageError("corpus unreadable")
        return self.documents

    def load(self, index_name: str, todo: list[str]) -> int:
        from lockstep.ops import reembed

        self.loaded.append(list(todo))
        by_id = {d.id: d for d in self.documents}
        docs = [by_id[i] for i in todo][: self.fail_after]
        written = reembed.write(self.client, reembed.index_actions(docs, self.stamp, index_name, 50))
        if self.fail_after is not None:
            raise RuntimeError("engine died mid-load")
        return written


def _documents(n: int) -> list[Document]:
    return [Document(f"d{i}", f"document number {i} about sockets, files and threads") for i in range(n)]


def test_core_runs_any_engine_and_finishes_the_same_way(make_settings, opensearch, catalog):
    """Create → full load in bulk mode → bulk mode off, refreshed, synced; then a catch-up hands the
    engine only the delta and deletes what left the corpus."""
    settings = make_settings()
    entry = catalog.get("v1")
    embedder = hashgram.load_artifact(hashgram.build_artifact(hashgram.SPECS["v1"]))
    documents = _documents(120)
    engine = ListEngine(documents, embedder, opensearch)

    first = core.run(opensearch, settings, entry, engine, corpus_etag="etag-1")
    name = settings.opensearch.index_name("v1")
    assert (first.created, first.embedded, first.deleted, first.corpus_size) == (True, 120, 0, 120)
    assert opensearch.count(index=name)["count"] == 120  # refreshed: counted without a manual refresh
    assert not index.in_bulk_mode(opensearch, name)
    assert index.read_meta(opensearch, name)["synced"]["corpus_etag"] == "etag-1"

    edited = [Document(d.id, d.text + " (revised)") if d.id == "d3" else d for d in documents[:-2]]
    engine = ListEngine(edited + [Document("new", "a document that arrived later")], embedder, opensearch)
    second = core.run(opensearch, settings, entry, engine, corpus_etag="etag-2")
    assert engine.loaded == [["new", "d3"]]
    assert (second.created, second.embedded, second.deleted) == (False, 2, 2)
    assert opensearch.count(index=name)["count"] == 119
    synced = index.read_meta(opensearch, name)["synced"]
    assert (synced["corpus_etag"], synced["documents"]) == ("etag-2", 119)


def test_core_leaves_no_bulk_mode_and_no_synced_marker_when_the_engine_fails(make_settings, opensearch, catalog):
    settings = make_settings()
    entry = catalog.get("v1")
    embedder = hashgram.load_artifact(hashgram.build_artifact(hashgram.SPECS["v1"]))
    name = settings.opensearch.index_name("v1")

    with pytest.raises(UsageError):  # a corpus the engine cannot read: nothing is created
        core.run(opensearch, settings, entry, ListEngine(_documents(10), embedder, opensearch, unreadable=True))
    assert index.read_meta(opensearch, name) is None

    with pytest.raises(RuntimeError, match="mid-load"):
        core.run(
            opensearch,
            settings,
            entry,
            ListEngine(_documents(60), embedder, opensearch, fail_after=20),
            corpus_etag="e",
        )
    assert not index.in_bulk_mode(opensearch, name)  # switched back although the load failed
    assert "synced" not in index.read_meta(opensearch, name)

    # A re-run after a killed run (bulk mode still on) switches it off even with nothing to embed.
    done = core.run(opensearch, settings, entry, ListEngine(_documents(60), embedder, opensearch), corpus_etag="e")
    assert done.embedded == 40 and done.created is False
    index.set_bulk_mode(opensearch, name, True, settings)
    again = core.run(opensearch, settings, entry, ListEngine(_documents(60), embedder, opensearch), corpus_etag="e")
    assert again.embedded == 0 and not index.in_bulk_mode(opensearch, name)


def test_a_catch_up_that_fails_midway_leaves_no_claim_of_the_corpus_it_matched(make_settings, opensearch, catalog):
    """Synced with corpus e1, then a catch-up to e2 dies after rewriting some documents: the index
    no longer matches e1, so e1's claim must go (a plan that sees e1 again would skip the scan)."""
    settings = make_settings()
    entry, name = catalog.get("v1"), settings.opensearch.index_name("v1")
    embedder = hashgram.load_artifact(hashgram.build_artifact(hashgram.SPECS["v1"]))
    documents = _documents(40)
    core.run(opensearch, settings, entry, ListEngine(documents, embedder, opensearch), corpus_etag="e1")
    assert index.read_meta(opensearch, name)["synced"]["corpus_etag"] == "e1"

    edited = [Document(d.id, d.text + " (bad edit)") if d.id in ("d1", "d2") else d for d in documents]
    with pytest.raises(RuntimeError, match="mid-load"):
        core.run(opensearch, settings, entry, ListEngine(edited, embedder, opensearch, fail_after=1), corpus_etag="e2")
    assert "synced" not in index.read_meta(opensearch, name)
    redone = core.run(opensearch, settings, entry, ListEngine(documents, embedder, opensearch), corpus_etag="e1")
    assert redone.embedded == 1  # the scan found the one rewritten document and put e1's text back


def test_a_re_run_after_a_killed_load_sees_what_that_load_wrote(make_settings, opensearch, catalog):
    """A killed load leaves refresh off: the documents it wrote are invisible to a scan until a
    refresh. The re-run refreshes first, so one that has left the corpus since is deleted."""
    settings = make_settings()
    entry, name = catalog.get("v1"), settings.opensearch.index_name("v1")
    embedder = hashgram.load_artifact(hashgram.build_artifact(hashgram.SPECS["v1"]))
    documents = _documents(20)
    core.run(opensearch, settings, entry, ListEngine(documents, embedder, opensearch))
    index.set_bulk_mode(opensearch, name, True, settings)  # a load that was killed...
    late = Document("late", "written by the killed load, then dropped from the corpus")
    reembed.write(opensearch, reembed.index_actions([late], embedder, name, 50))  # ...wrote this, unrefreshed
    done = core.run(opensearch, settings, entry, ListEngine(documents, embedder, opensearch))
    assert done.deleted == 1 and opensearch.count(index=name)["count"] == 20


def test_a_large_catch_up_of_an_index_serving_reads_keeps_its_replicas(make_settings, opensearch, catalog):
    """More than half the corpus changed: a standby index is loaded in bulk mode (no replicas, no
    refresh); an index an alias or the live pointer names keeps both — readers search it, and a node
    lost mid-load must not take it."""
    settings = make_settings()
    entry, name = catalog.get("v1"), settings.opensearch.index_name("v1")
    embedder = hashgram.load_artifact(hashgram.build_artifact(hashgram.SPECS["v1"]))
    documents = _documents(20)
    core.run(opensearch, settings, entry, ListEngine(documents, embedder, opensearch))
    opensearch.indices.put_alias(index=name, name=settings.opensearch.alias_name)
    seen: list[bool] = []

    class Watching(ListEngine):
        def load(self, index_name: str, todo: list[str]) -> int:
            seen.append(index.in_bulk_mode(self.client, index_name))
            return super().load(index_name, todo)

    rewritten = [Document(d.id, d.text + " (regenerated)") for d in documents]
    assert core.run(opensearch, settings, entry, Watching(rewritten, embedder, opensearch)).embedded == 20
    opensearch.indices.delete_alias(index=name, name=settings.opensearch.alias_name)
    # The alias moved on but the pointer could not follow: readers still search this index by name.
    ssm = clients.aws_for(settings, "ssm")
    live_state.write_pointer(ssm, settings.pointer_name, live_state.Pointer("v1", "blue", name, entry.artifact_sha256))
    named = [Document(d.id, d.text + " (named)") for d in documents]
    core.run(opensearch, settings, entry, Watching(named, embedder, opensearch))
    ssm.delete_parameter(Name=settings.pointer_name)
    again = [Document(d.id, d.text + " (again)") for d in documents]
    core.run(opensearch, settings, entry, Watching(again, embedder, opensearch))
    assert seen == [False, False, True]
