"""Issue #19: stale writers of derived records. A worker pinned to a version that was rolled back,
writing through `lockstep.derived` after the rollback, is refused (a `recompute` store) or
quarantined (a `quarantine` store) on its first write after the pointer moved — with its pointer
cache still naming the old version (a fake clock that never advances) — and the check stays green:
the cutover moves each table's fence and every guarded write is decided by it, in either guard mode
(`transaction`: checked in the same transaction; `verify`: read right after the write, the batch
undone if the fence moved). No test here depends on how long anything takes.
"""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from lockstep import config, orchestrator, stackfile
from lockstep import derived as application
from lockstep.errors import Unreachable, UsageError
from lockstep.ops import check, clients, derived, endpoints, index, live_state

SIZE = 40
TTL = 2.0
MODES = ["transaction", "verify"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def quiet(_: str) -> None:
    pass


@pytest.fixture
def stack(request, servers, scratch_stack, catalog, unique):
    """v2 live (v1 warm in blue), one `recompute` store and one `quarantine` store, both guarded in
    the mode the test is parametrized with (indirect; `transaction` otherwise)."""
    mode = getattr(request, "param", "transaction")
    stores = [
        {"name": "related", "kind": "related-documents", "table": f"{unique}-related", "writerGuard": mode},
        {"name": "audit", "kind": "related-documents", "table": f"{unique}-audit", "writerGuard": mode},
    ]
    stores[1]["repair"] = "quarantine"
    for store in stores:
        store["writeRate"] = 1000
    stacks, name = scratch_stack(corpus={"size": SIZE}, derived=stores)

    def apply(pin: str) -> check.CheckRecord:
        stackfile.set_pin(name, pin, stacks)
        result = orchestrator.apply(config.load_stack(name, stacks), catalog, progress=False, say=quiet)
        assert result.record is not None
        return result.record

    for pin in ("v1", "v2"):
        record = apply(pin)
        assert record.passed, [(c.name, c.observed) for c in record.failures]
    yield stacks, name, apply
    endpoints.stop_local_slots(config.load_stack(name, stacks))


def records(settings, store: str) -> dict[str, dict]:
    return derived.read_records(settings, next(s for s in settings.derived if s.name == store))


def fences(settings) -> dict[str, str | None]:
    client = derived.dynamodb(settings)
    return {s.name: (derived.read_fence(client, s.table) or (None,))[0] for s in settings.derived}


def batch_writes(monkeypatch) -> list[list[str]]:
    """The doc_ids of each BatchWriteItem the guarded writer sends from now on (at most 25 each)."""
    sent: list[list[str]] = []
    real = derived._batch_put

    def spy(client, table, items):
        assert len(items) <= 25, "DynamoDB refuses a BatchWriteItem of more than 25 items"
        sent.append([i[derived.KEY]["S"] for i in items])
        real(client, table, items)

    monkeypatch.setattr(derived, "_batch_put", spy)
    return sent


@pytest.mark.parametrize("stack", MODES, indirect=True)
def test_a_worker_of_the_rolled_back_version_is_stopped_on_its_first_write_with_its_cache_still_stale(
    stack, catalog, monkeypatch
):
    stacks, name, apply = stack
    settings = config.load_stack(name, stacks)
    clock = Clock()  # never advances: the writers' caches keep saying v2 is live
    related = application.Writer(settings, "related", "v2", ttl=TTL, clock=clock)
    audit = application.Writer(settings, "audit", "v2", ttl=TTL, clock=clock)
    assert (related.policy, audit.policy) == ("refuse", "quarantine")

    # While v2 is live the worker writes, stamped with its version and the content hash.
    assert related.put("doc-a", {"neighbours": ["x", "y"], "k": 2}, text="alpha") == "written"
    assert audit.put("doc-a", {"neighbours": ["x", "y"], "k": 2}, text="alpha") == "written"
    stored = records(settings, "related")["doc-a"]
    assert stored["model_version"] == "v2" and stored["content_sha256"] == application.content_sha256("alpha")

    rolled_back = apply("v1")  # the rollback: fences, alias and pointer move to v1; the repair handles doc-a
    assert rolled_back.passed
    settings = config.load_stack(name, stacks)
    assert fences(settings) == {"related": "v1", "audit": "v1"}
    before = records(settings, "related")

    assert related.pointer.live().version == "v2", "the cache must still be stale for this test to mean anything"
    sent = batch_writes(monkeypatch)
    with pytest.raises(application.StaleWriter, match=r"runs v2 but v1 is live .*nothing of this write was kept"):
        related.put("doc-b", {"neighbours": ["x"], "k": 1}, text="beta")
    assert records(settings, "related") == before, "a refused write left something"
    # verify: the batch was written (the cache said v2), the fence read after it said v1, and it was undone
    assert sent == ([["doc-b"]] if related.store.writer_guard == "verify" else [])

    assert audit.put("doc-b", {"neighbours": ["x"], "k": 1}, text="beta") == "quarantined"
    kept = records(settings, "audit")["doc-b"]
    assert (kept["model_version"], kept["quarantined_for"]) == ("v2", "v1") and kept["quarantined_at"]
    assert related.pointer.reads == 1 and audit.pointer.reads == 1, "decided by the fence, not a new pointer read"

    after = check.run(settings, catalog)
    assert after.passed, [c.observed for c in after.failures]
    # doc-a quarantined by the rollback's repair, doc-b by the guard
    assert next(c for c in after.checks if c.name == "derived:audit").observed.endswith("quarantined (kept): 2 of v2")


@pytest.mark.parametrize("stack", MODES, indirect=True)
def test_a_live_version_worker_is_never_refused_even_with_a_cache_naming_another_version(stack, catalog, monkeypatch):
    stacks, name, apply = stack
    settings = config.load_stack(name, stacks)
    clock = Clock()
    live = application.Writer(settings, "related", "v2", ttl=TTL, clock=clock)
    early = application.Writer(settings, "related", "v1", ttl=TTL, clock=clock)
    assert early.pointer.live().version == "v2"  # filled before the rollback to v1

    ids = sorted(index.doc_hashes(clients.opensearch(), settings.opensearch.index_name("v2")))
    many = [application.Record(i, "ab" * 32, {"neighbours": [], "k": 0}) for i in ids[:SIZE]]
    sent = batch_writes(monkeypatch)
    assert live.put_many(many).written == SIZE  # more than one record per transaction / per BatchWriteItem
    assert [len(b) for b in sent] == ([25, SIZE - 25] if live.store.writer_guard == "verify" else [])

    assert apply("v1").passed
    settings = config.load_stack(name, stacks)
    # v1 is live now; the v1 worker's cache still says v2: the fence is read, and the write goes through.
    assert early.put(ids[0], {"neighbours": [], "k": 0}, sha256="cd" * 32) == "written"
    assert records(settings, "related")[ids[0]]["model_version"] == "v1"
    assert "quarantined_at" not in records(settings, "related")[ids[0]]
    assert check.run(settings, catalog).passed


@pytest.mark.parametrize("stack", ["verify"], indirect=True)  # batches of 25: a later one is bad
def test_a_bad_record_anywhere_in_a_write_is_refused_before_any_batch_is_written(stack):
    stacks, name, _ = stack
    settings = config.load_stack(name, stacks)
    live = application.Writer(settings, "related", "v2")
    before = records(settings, "related")
    good = [application.Record(f"new-{i:02}", "ab" * 32, {"neighbours": [], "k": 0}) for i in range(30)]
    for bad, refusal in (
        (application.Record("new-28", "ab" * 32, {"score": 0.5}), "attribute 'score' cannot be stored in DynamoDB"),
        (application.Record("new-00", "ab" * 32, {"k": 1}), "doc_id 'new-00' is given twice"),
        (application.Record(derived.FENCE_KEY, "ab" * 32, {"k": 0}), "reserved for lockstep's fence item"),
    ):
        with pytest.raises(application.UsageError, match=refusal):
            live.put_many([*good[:28], bad, good[29]])
        assert records(settings, "related") == before, "nothing of the write was kept"


def test_a_fence_write_failing_midway_puts_the_moved_fences_back(stack, catalog, monkeypatch):
    """The cutover to v1 moves the first table's fence, then the second table's write fails:
    nothing else moves, and the first fence goes back to the pointer's v2."""
    stacks, name, _ = stack
    settings = config.load_stack(name, stacks)
    real, calls = derived.write_fences, []

    def first_table_only(settings_, version, switched_at):
        calls.append(version)
        if len(calls) > 1:  # the put-back after the failure
            return real(settings_, version, switched_at)
        real(settings_.model_copy(update={"derived": settings_.derived[:1]}), version, switched_at)
        raise Unreachable("DynamoDB at moto: the second fence write failed")

    monkeypatch.setattr(derived, "write_fences", first_table_only)
    alias = settings.opensearch.alias_name
    with pytest.raises(Unreachable, match="second fence write"):
        live_state.cutover(
            clients.opensearch(),
            clients.aws("ssm"),
            settings,
            catalog.get("v1"),
            endpoints.endpoint_name(settings, "blue"),
        )
    assert calls == ["v1", "v2"]
    assert fences(settings) == {"related": "v2", "audit": "v2"}
    assert live_state.alias_targets(clients.opensearch(), alias) == [settings.opensearch.index_name("v2")]
    assert live_state.read_pointer(clients.aws("ssm"), settings.pointer_name).version == "v2"


def test_a_store_whose_table_does_not_exist_is_one_line(stack):
    stacks, name, _ = stack
    settings = config.load_stack(name, stacks)
    moved = [s.model_copy(update={"table": f"{s.table}-nosuch"}) for s in settings.derived]
    writer = application.Writer(settings.model_copy(update={"derived": tuple(moved)}), "related", "v2")
    with pytest.raises(application.UsageError, match=f"table '{moved[0].table}' does not exist; nothing of this"):
        writer.put("doc-x", {"k": 0}, text="x")


def test_a_lost_or_wrong_fence_fails_the_check_and_a_re_apply_rewrites_it_moving_nothing(stack, catalog):
    """Alias and pointer on v2, yet one table has no fence (recreated, or the item deleted: every
    guarded write to it refused) and the other's names v1 (v1's writers let in as live). The check
    fails on both; the plan's cutover only rewrites fences; the re-apply leaves the pointer as it was."""
    stacks, name, apply = stack
    settings = config.load_stack(name, stacks)
    related, audit = (next(s for s in settings.derived if s.name == n) for n in ("related", "audit"))
    dynamodb = derived.dynamodb(settings)
    dynamodb.delete_item(TableName=related.table, Key={derived.KEY: {"S": derived.FENCE_KEY}})
    dynamodb.put_item(TableName=audit.table, Item=derived._fence("v1", "2000-01-01T00:00:00+00:00"))
    with pytest.raises(application.StaleWriter, match="no fence"):
        application.Writer(settings, "related", "v2").put("doc-x", {"neighbours": [], "k": 0}, text="x")

    failed = {c.name: c.observed for c in check.run(settings, catalog).failures}
    assert failed == {
        "derived:related": "0 records of other versions; no fence",
        "derived:audit": "0 records of other versions; fence names v1",
    }
    pointer = live_state.read_pointer(clients.aws("ssm"), settings.pointer_name)
    (cutover,) = [s for s in orchestrator.plan_for(settings, catalog)[1].steps if s.kind == "cutover"]
    assert cutover.detail == "fences of audit, related -> v2 (alias and pointer already on v2)"

    assert apply("v2").passed
    assert fences(settings) == {"related": "v2", "audit": "v2"}
    assert live_state.read_pointer(clients.aws("ssm"), settings.pointer_name) == pointer
    assert application.Writer(settings, "related", "v2").put("doc-x", {"neighbours": [], "k": 0}, text="x") == "written"


def test_the_fence_survives_a_re_apply_and_is_never_counted_as_a_record(stack, catalog):
    stacks, name, apply = stack
    settings = config.load_stack(name, stacks)
    assert fences(settings) == {"related": "v2", "audit": "v2"}
    table = derived.read_records(settings, settings.derived[0])
    assert derived.FENCE_KEY not in table

    assert apply("v2").passed  # the re-apply: nothing to cut over, the fence stays
    settings = config.load_stack(name, stacks)
    assert fences(settings) == {"related": "v2", "audit": "v2"}
    for store in settings.derived:  # the fence is in the table, yet no count, check row or repair sees it
        counts = derived.count_by_version(settings, catalog, store)
        assert sum(counts.records_by_version.values()) == len(derived.read_records(settings, store))
        assert (
            derived.repair(settings, catalog, store, progress=False)
            .summary()
            .endswith("0 deleted (document gone)" if store.repair == "recompute" else "0 quarantined")
        )
    assert check.run(settings, catalog).passed
    assert fences(settings) == {"related": "v2", "audit": "v2"}

    with pytest.raises(application.UsageError, match="reserved"):
        application.Writer(settings, "related", "v2").put(derived.FENCE_KEY, {"k": 0}, text="x")


def test_a_failed_cutover_puts_the_fences_back_where_the_pointer_is(stack, monkeypatch):
    stacks, name, apply = stack

    def refuse(*_):
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "PutParameter")

    monkeypatch.setattr(live_state, "write_pointer", refuse)
    with pytest.raises(Exception, match="could not be written"):
        apply("v1")
    monkeypatch.undo()
    settings = config.load_stack(name, stacks)
    assert live_state.read_pointer(clients.aws_for(settings, "ssm"), settings.pointer_name).version == "v2"
    assert fences(settings) == {"related": "v2", "audit": "v2"}
    assert application.Writer(settings, "related", "v2").put("doc-z", {"k": 0}, text="z") == "written"


@pytest.mark.parametrize("stack", MODES, indirect=True)
def test_a_write_is_refused_when_the_pointer_cannot_be_read(stack, monkeypatch):
    """Fail closed: no pointer answer within the TTL, no write."""
    stacks, name, _ = stack
    settings = config.load_stack(name, stacks)
    related = application.Writer(settings, "related", "v2", ttl=TTL, clock=Clock())
    monkeypatch.setattr(
        application.live_state, "read_pointer", lambda *_: (_ for _ in ()).throw(application.UsageError("down"))
    )
    with pytest.raises(application.UsageError, match="down"):
        related.put("doc-x", {"k": 0}, text="x")
    assert "doc-x" not in records(settings, "related")


@pytest.mark.parametrize("stack", ["verify"], indirect=True)
def test_verify_keeps_nothing_of_a_batch_whose_later_part_is_refused(stack, monkeypatch):
    """`verify` sends a batch as BatchWriteItems of 25. One refused for good (throttled past the
    retries) after others landed: those were never checked against the fence. None of the batch is
    kept, the refusal is raised, and a record written before is left alone."""
    stacks, name, _ = stack
    settings = config.load_stack(name, stacks)
    writer = application.Writer(settings, "related", "v2")
    assert writer.put("doc-a", {"k": 0}, text="alpha") == "written"
    real, sent = derived._batch_put, []

    def second_part_refused(client, table, items):
        sent.append(len(items))
        if len(sent) == 2:
            raise UsageError(f"DynamoDB table {table} kept refusing writes (throttled)")
        real(client, table, items)

    monkeypatch.setattr(derived, "_batch_put", second_part_refused)
    batch = [application.Record(f"doc-{n:03}", "ab" * 32, {"k": 0}) for n in range(60)]
    with pytest.raises(UsageError, match="kept refusing writes"):
        writer.put_many(batch)
    assert sent == [25, 25]
    assert set(records(settings, "related")) == {"doc-a"}


@pytest.mark.parametrize("stack", ["verify"], indirect=True)
def test_verify_undoes_exactly_its_batch_when_the_fence_moves_between_its_write_and_its_read(stack, monkeypatch):
    """The race the verify mode closes: the batch lands, then the cutover moves the fence, then the
    writer reads it. Its batch is undone (deleted / quarantined); other records are left alone."""
    stacks, name, _ = stack
    settings = config.load_stack(name, stacks)
    related = application.Writer(settings, "related", "v2", ttl=TTL, clock=Clock())
    audit = application.Writer(settings, "audit", "v2", ttl=TTL, clock=Clock())
    for writer in (related, audit):
        assert writer.put("doc-a", {"k": 0}, text="alpha") == "written"
    real = derived._batch_put

    def then_the_cutover(client, table, items):
        real(client, table, items)
        derived.write_fences(settings, "v1", "now")  # the fence moves before the writer reads it

    monkeypatch.setattr(derived, "_batch_put", then_the_cutover)
    batch = [application.Record(d, "ab" * 32, {"k": 0}) for d in ("doc-b", "doc-c")]
    with pytest.raises(application.StaleWriter, match="runs v2 but v1 is live"):
        related.put_many(batch)
    assert set(records(settings, "related")) == {"doc-a"}
    assert records(settings, "related")["doc-a"]["model_version"] == "v2"

    derived.write_fences(settings, "v2", "then")  # v2 live again, so the audit write is the same race
    assert audit.put_many(batch).quarantined == 2
    kept = records(settings, "audit")
    assert {d: (r.get("quarantined_for"), r["model_version"]) for d, r in kept.items()} == {
        "doc-a": (None, "v2"),
        "doc-b": ("v1", "v2"),
        "doc-c": ("v1", "v2"),
    }
