"""`lockstep apply` / `pin` / `backfill` on the real servers: provision, reattach, flip, resume."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from lockstep import config, orchestrator, stackfile
from lockstep.errors import GuardRefused
from lockstep.ops import artifacts, clients, corpus_store, endpoints, index, live_state, reembed
from lockstep.ops.corpus import Document
from tests.conftest import lockstep

SIZE = 150


def docs_by_step(result: orchestrator.ApplyResult) -> dict[tuple[str, str], str]:
    return {(s.step.kind, s.step.version): s.detail for s in result.steps}


def embedded_per_version(result) -> dict[str, int]:
    return {s.step.version: s.step.docs for s in result.steps if s.step.kind in ("provision", "catch_up")}


def test_upgrade_then_rollback_reembeds_only_what_changed(servers, scratch_stack, catalog):
    stacks, stack = scratch_stack(slots={"blue": "v1", "green": None}, corpus={"size": SIZE})
    first = orchestrator.apply(config.load_stack(stack, stacks), catalog, progress=False, say=lambda _: None)
    assert first.record.passed and first.embedded == SIZE

    stackfile.set_pin(stack, "v2", stacks)
    second = orchestrator.apply(config.load_stack(stack, stacks), catalog, progress=False, say=lambda _: None)
    assert second.record.passed, [c.name for c in second.record.failures]
    assert embedded_per_version(second) == {"v2": SIZE}
    settings = config.load_stack(stack, stacks)
    blue_pid = endpoints.local_slot(settings, "blue").pid

    change = stackfile.set_pin(stack, "v1", stacks)
    assert change.kind == "flip"
    s3_calls: list[str] = []

    def record(model, **_):
        s3_calls.append(model.name)

    s3 = clients.aws_for(settings, "s3")
    s3.meta.events.register("before-call.s3", record)
    try:
        third = orchestrator.apply(config.load_stack(stack, stacks), catalog, progress=False, say=lambda _: None)
    finally:
        s3.meta.events.unregister("before-call.s3", record)
    # The buckets' posture is read, not re-put: a rollback needs no s3:PutBucket* (and writes only its check record).
    assert {"GetBucketVersioning", "GetBucketEncryption", "GetPublicAccessBlock"} <= set(s3_calls)
    assert [c for c in s3_calls if c.startswith("Put")] == ["PutObject", "PutObject"], s3_calls
    assert third.record.passed
    assert third.embedded == 0 and third.plan.endpoint_action == "flip" and third.plan.index_action == "reattach"
    assert endpoints.local_slot(settings, "blue").pid == blue_pid, "the v1 slot was restarted"

    # Edit the corpus: 3 texts change, 1 document goes, 2 arrive.
    documents = corpus_store.read_corpus(s3, settings)
    edited = [replace(d, text=d.text + " (revised)") for d in documents[:3]] + documents[4:]
    edited += [
        Document(id=f"new-{n}", text=f"A brand new document number {n} about asyncio event loops and tasks.")
        for n in range(2)
    ]
    corpus_store.write_corpus(s3, settings, edited)
    stackfile.set_pin(stack, "v2", stacks)
    fourth = orchestrator.apply(config.load_stack(stack, stacks), catalog, progress=False, say=lambda _: None)
    assert fourth.record.passed, [c.name for c in fourth.record.failures]
    assert embedded_per_version(fourth) == {"v1": 5, "v2": 5}
    assert docs_by_step(fourth)[("catch_up", "v2")] == "5 embedded, 1 deleted"
    endpoints.stop_local_slots(settings)


def test_killed_provision_resumes_without_duplicates(servers, scratch_stack, catalog, opensearch):
    stacks, stack = scratch_stack(corpus={"size": 600}, backfill={"batchSize": 16})
    settings = config.load_stack(stack, stacks)
    s3 = clients.aws("s3")
    artifacts.ensure_bucket(s3, settings.artifacts.bucket)
    corpus_store.ensure_corpus(s3, settings)
    artifacts.publish_artifact(s3, settings, catalog.get("v1"))
    name = settings.opensearch.index_name("v1")
    process = subprocess.Popen(
        [sys.executable, "-m", "lockstep.cli", "backfill", "--stack", stack, "--version", "v1", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    written = 0
    while time.monotonic() < deadline and written < 50:
        time.sleep(0.05)
        if opensearch.indices.exists(index=name):
            opensearch.indices.refresh(index=name)
            written = opensearch.count(index=name)["count"]
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 0 < written < 600, "the kill must land mid-provision"
    assert live_state.alias_targets(opensearch, settings.opensearch.alias_name) == []

    result = lockstep("backfill", "--stack", stack, "--version", "v1", "--quiet")
    assert result.returncode == 0, result.stderr
    opensearch.indices.refresh(index=name)
    hashes = index.doc_hashes(opensearch, name)
    corpus = {d.id: d.content_sha256 for d in corpus_store.read_corpus(s3, settings)}
    assert hashes == corpus
    assert opensearch.count(index=name)["count"] == len(corpus)
    assert live_state.count_by_model_version(opensearch, name)[1] == {"v1": len(corpus)}
    assert live_state.alias_targets(opensearch, settings.opensearch.alias_name) == []


def test_write_guard_refuses_v1_vectors_in_the_v2_index(servers, make_settings, catalog, opensearch):
    settings = make_settings()
    index.ensure_index(opensearch, settings, catalog.get("v2"))
    from lockstep.models import hashgram as model

    v1 = model.load_artifact(model.build_artifact(model.SPECS["v1"]))
    doc = Document(id="d1", text="Return the lowest index in the list where the value is found.")
    with pytest.raises(GuardRefused, match="write guard refused"):
        reembed.write_documents(opensearch, settings.opensearch.index_name("v2"), v1, [doc])
    opensearch.indices.refresh(index=settings.opensearch.index_name("v2"))
    assert opensearch.count(index=settings.opensearch.index_name("v2"))["count"] == 0


def test_unknown_version_is_one_line_exit_2(servers, scratch_stack):
    stacks, stack = scratch_stack()
    result = lockstep("backfill", "--stack", stack, "--version", "v9")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and "'v9'" in result.stderr


def test_sha_mismatch_stops_before_anything_is_created(servers, scratch_stack, opensearch):
    stacks, stack = scratch_stack()
    catalog_file = stacks / "catalog.yaml"
    text = catalog_file.read_text()
    sha = config.load_catalog(stacks).get("v1").artifact_sha256
    catalog_file.write_text(text.replace(sha, "ab" * 32))
    result = lockstep("apply", "--stack", stack, "--quiet")
    assert result.returncode == 2, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "sha256" in last and "catalog" in last
    settings = config.load_stack(stack, stacks)
    assert opensearch.indices.get(index=f"{settings.opensearch.index_prefix}-*", allow_no_indices=True) == {}


def test_missing_corpus_is_one_line_exit_2(servers, scratch_stack):
    # An embedded stack seeds its corpus on apply/backfill; checking one that never had a
    # corpus cannot check document parity: exit 2 ("could not check"), not "inconsistent".
    stacks, stack = scratch_stack()
    settings = config.load_stack(stack, stacks)
    artifacts.ensure_bucket(clients.aws("s3"), settings.corpus.bucket)
    result = lockstep("check", "--stack", stack)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "corpus" in result.stderr and "not found" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_unreachable_endpoint_is_a_clear_error(servers):
    client = endpoints.LocalEndpoint(
        "lockstep-x-blue",
        "http://127.0.0.1:9",
        retry=endpoints.RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.02),
    )
    from lockstep.errors import Unreachable

    with pytest.raises(Unreachable, match="lockstep-x-blue"):
        client.embed(["text"])
