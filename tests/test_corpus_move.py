"""A corpus that moves (corpus.bucket/key) is a previewable step, never a wedged stack (issue 18, defect 2).

Real OpenSearch + moto: `lockstep plan` names the `restamp` of each index's `_meta.corpus`
(after a catch-up when the content differs), `lockstep apply` carries it out, the check passes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from lockstep import config, orchestrator
from lockstep.errors import IntegrityError
from lockstep.ops import artifacts, clients, corpus_store, endpoints, index, live_state

SIZE = 40


def lockstep(*args):
    return subprocess.run(
        [sys.executable, "-m", "lockstep.cli", *args], capture_output=True, text=True, env=dict(os.environ), timeout=300
    )


def quiet_apply(settings, catalog):
    return orchestrator.apply(settings, catalog, progress=False, say=lambda _: None)


def test_a_moved_corpus_is_restamped_and_a_changed_one_caught_up_first(servers, scratch_stack, catalog, opensearch):
    stacks, stack = scratch_stack(corpus={"size": SIZE})  # pin v1 (blue), v2 (green)
    first = quiet_apply(config.load_stack(stack, stacks), catalog)
    assert first.record.passed
    settings = config.load_stack(stack, stacks)
    s3 = clients.aws("s3")
    documents = corpus_store.read_corpus(s3, settings)

    # The same documents at a new key: only the stamps change, nothing is embedded.
    scratch_stack(corpus={"size": SIZE, "key": "corpus/moved.jsonl"})
    moved = config.load_stack(stack, stacks)
    corpus_store.write_corpus(s3, moved, documents)
    with pytest.raises(IntegrityError, match=r"the corpus moved; `lockstep plan` shows the restamp"):
        live_state.cutover(opensearch, clients.aws("ssm"), moved, catalog.get("v1"), "x")  # named, not a wrong build

    shown = lockstep("plan", "--stack", stack, "--format", "json")
    assert shown.returncode == 0, shown.stderr
    steps = [(s["kind"], s["version"], s["detail"]) for s in json.loads(shown.stdout)["steps"]]
    new = f"s3://{moved.corpus.bucket}/corpus/moved.jsonl"
    restamps = [s for s in steps if s[0] == "restamp"]
    assert [(k, v) for k, v, _ in restamps] == [("restamp", "v1"), ("restamp", "v2")]
    assert all(detail.endswith(f"-> {new} (same content)") for _, _, detail in restamps)
    assert not [s for s in steps if s[0] in ("provision", "catch_up", "cutover", "deploy_slot")]
    assert f"-> {new} (same content)" in lockstep("plan", "--stack", stack).stdout  # the markdown a PR shows

    second = quiet_apply(moved, catalog)
    assert second.record.passed, [c.name for c in second.record.failures]
    assert second.embedded == 0
    for version in ("v1", "v2"):
        assert index.read_meta(opensearch, moved.opensearch.index_name(version))["corpus"] == new

    # Another location with changed content: the slot indices catch up, then are re-stamped.
    scratch_stack(corpus={"size": SIZE, "key": "corpus/edited.jsonl"})
    edited = config.load_stack(stack, stacks)
    corpus_store.write_corpus(
        s3, edited, [replace(d, text=d.text + " (edited)") for d in documents[:2]] + documents[2:]
    )
    _, planned = orchestrator.plan_for(edited, catalog)
    kinds = [(s.kind, s.version) for s in planned.steps]
    for version in ("v1", "v2"):
        assert kinds.index(("catch_up", version)) < kinds.index(("restamp", version))
    assert [s.detail.endswith("(after the catch-up)") for s in planned.steps if s.kind == "restamp"] == [True, True]
    third = quiet_apply(edited, catalog)
    assert third.record.passed, [c.name for c in third.record.failures]
    assert third.embedded == 4  # 2 changed documents in each of the two slot indices
    assert index.read_meta(opensearch, edited.opensearch.index_name("v1"))["corpus"].endswith("/corpus/edited.jsonl")
    endpoints.stop_local_slots(settings)


def test_the_index_resource_update_restamps_a_moved_corpus(servers, make_settings, catalog, opensearch):
    from components.providers.opensearch import IndexHandler
    from components.providers.provider import plain_map, wire_map
    from components.providers.resources import IndexArgs

    settings = make_settings(corpus={"size": SIZE})
    s3 = clients.aws("s3")
    artifacts.ensure_bucket(s3, settings.artifacts.bucket)
    artifacts.publish_artifact(s3, settings, catalog.get("v1"))
    corpus_store.ensure_corpus(s3, settings)
    handler, entry = IndexHandler(), catalog.get("v1")
    urn = "urn:pulumi:s::lockstep::lockstep:index:ModelRelease$lockstep:index:Index::x"
    olds = handler.create(urn, plain_map(wire_map(IndexArgs(settings, entry).inputs())))[1]

    moved = make_settings(corpus={"size": SIZE, "key": "corpus/moved.jsonl"})
    corpus_store.write_corpus(s3, moved, corpus_store.read_corpus(s3, settings))
    news = plain_map(wire_map(IndexArgs(moved, entry).inputs()))
    assert handler.diff(olds, news).replaces == []  # an update, not a replacement
    handler.update(urn, olds["index"], olds, news)
    assert index.read_meta(opensearch, olds["index"])["corpus"] == moved.corpus.uri
    index.verify_meta(opensearch, moved, entry)  # the cutover's check passes: not wedged
