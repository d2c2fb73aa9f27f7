"""Issue #13: derived records a rolled-back model left behind — lineage and repair.

Real servers: moto's DynamoDB over HTTP and the real OpenSearch. A scratch stack goes v1 → v2,
v2 writes related-document lists, and the rollback to v1 must count, repair (or quarantine) them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from lockstep import config, orchestrator, stackfile
from lockstep.errors import Unreachable, UsageError
from lockstep.ops import check, clients, corpus_store, derived, endpoints, index, live_state
from lockstep.plan import repair_rate_key
from tests.conftest import lockstep as run_lockstep
from tests.test_program import evaluate, with_values

SIZE = 120
REPAIR = "lockstep:index:DerivedRepair"


def lockstep(*args):
    return run_lockstep(*args, env={"COLUMNS": "200"})  # markdown tables unwrapped


def quiet(_: str) -> None:
    pass


def stores(unique: str, write_rate: float = 1000, quarantine: bool = True) -> list[dict]:
    found = [{"name": "related", "kind": "related-documents", "table": f"{unique}-related", "writeRate": write_rate}]
    if quarantine:
        found.append(
            {
                "name": "audit",
                "kind": "related-documents",
                "table": f"{unique}-audit",
                "repair": "quarantine",
                "writeRate": write_rate,
            }
        )
    return found


@pytest.fixture
def upgraded(servers, scratch_stack, catalog, unique):
    """v1 deployed, then v2 live (v1 warm in blue) and v2's related-document lists written:
    the state a rollback to v1 has to repair. Returns (stacks, stack)."""
    made = []

    def build(**store_options):
        stacks, stack = scratch_stack(
            slots={"blue": "v1", "green": None}, corpus={"size": SIZE}, derived=stores(unique, **store_options)
        )
        made.append((stacks, stack))
        assert orchestrator.apply(config.load_stack(stack, stacks), catalog, progress=False, say=quiet).record.passed
        stackfile.set_pin(stack, "v2", stacks)
        assert orchestrator.apply(config.load_stack(stack, stacks), catalog, progress=False, say=quiet).record.passed
        assert derived.write_related(config.load_stack(stack, stacks), "v2") == SIZE * len(
            config.load_stack(stack, stacks).derived
        )
        return stacks, stack

    yield build
    for stacks, stack in made:
        settings = config.load_stack(stack, stacks)
        endpoints.stop_local_slots(settings)
        dynamodb = clients.aws("dynamodb")
        for store in settings.derived:
            dynamodb.delete_table(TableName=store.table)


def store_named(settings: config.StackSettings, name: str) -> config.DerivedStore:
    return next(s for s in settings.derived if s.name == name)


def test_rollback_recomputes_what_v2_wrote_and_quarantines_where_asked(upgraded, catalog, opensearch):
    stacks, stack = upgraded()
    settings = config.load_stack(stack, stacks)
    related, audit = store_named(settings, "related"), store_named(settings, "audit")
    audit_before = derived.read_records(settings, audit)

    result = lockstep("plan", "--stack", stack, "--to", "v1", "--format", "json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    lineage = {d["store"]: d for d in plan["derived"]}
    assert lineage["related"]["records_by_version"] == {"v2": SIZE}
    assert (lineage["related"]["action"], lineage["related"]["records"]) == ("recompute", SIZE)
    assert (lineage["audit"]["action"], lineage["audit"]["records"]) == ("quarantine", SIZE)
    # The ETA is the repair rate an earlier run measured for this store kind, policy and pin, or else
    # an estimate from a short calibration (its k-NN lookups for one batch), labelled estimated.
    rate = orchestrator.measured_rates().get(repair_rate_key(related, catalog.get("v1")))
    if rate:
        assert lineage["related"]["eta_seconds"] == max(round(SIZE / min(rate, related.write_rate), 1), 0.1)
    else:
        assert lineage["related"]["eta_seconds"] > 0 and lineage["related"]["eta_estimated"] is True
    assert [s["kind"] for s in plan["steps"]] == ["cutover", "repair_derived", "check"]
    assert plan["steps"][1]["docs"] == 2 * SIZE
    markdown = lockstep("plan", "--stack", stack, "--to", "v1").stdout
    assert f"**recompute** {SIZE} records" in markdown and f"**quarantine** {SIZE} records" in markdown

    stackfile.set_pin(stack, "v1", stacks)
    settings = config.load_stack(stack, stacks)
    applied = orchestrator.apply(settings, catalog, progress=False, say=quiet)
    assert applied.record.passed, [(c.name, c.observed) for c in applied.record.failures]
    assert orchestrator.measured_rates()[repair_rate_key(related, catalog.get("v1"))] > 0  # the next ETA's
    assert applied.record.derived["related"]["records_by_version"] == {"v1": SIZE}
    assert applied.record.derived["audit"]["quarantined_by_version"] == {"v2": SIZE}
    audit_check = next(c for c in applied.record.checks if c.name == "derived:audit")
    assert audit_check.passed and f"quarantined (kept): {SIZE} of v2" in audit_check.observed

    # Recomputed lists equal a fresh v1 computation: each document's own v1 vector, k+1 nearest
    # on the v1 index through check.nearest (another path than the repair's msearch), minus itself.
    records = derived.read_records(settings, related)
    v1_index = settings.opensearch.index_name("v1")
    corpus = {d.id: d.content_sha256 for d in corpus_store.read_corpus(clients.aws("s3"), settings)}
    assert set(records) == set(corpus)
    stored = opensearch.mget(index=v1_index, body={"ids": list(records)}, _source_includes=["embedding"])["docs"]
    for doc in stored:
        fresh = [
            i
            for i in check.nearest(opensearch, v1_index, np.array(doc["_source"]["embedding"]), related.k + 1)
            if i != doc["_id"]
        ][: related.k]
        record = records[doc["_id"]]
        assert record["neighbours"] == fresh, doc["_id"]
        assert (record["model_version"], record["repaired_from"]) == ("v1", "v2")
        assert record["content_sha256"] == corpus[doc["_id"]]

    # Quarantine: marked, otherwise untouched.
    audit_after = derived.read_records(settings, audit)
    assert set(audit_after) == set(audit_before)
    for doc_id, before in audit_before.items():
        after = audit_after[doc_id]
        assert after["quarantined_for"] == "v1" and after["quarantined_at"]
        assert {k: v for k, v in after.items() if k not in ("quarantined_at", "quarantined_for")} == before

    # And the plan says so afterwards: nothing left to do, the quarantined records are named.
    plan = json.loads(lockstep("plan", "--stack", stack, "--format", "json").stdout)
    lineage = {d["store"]: d for d in plan["derived"]}
    assert lineage["audit"]["action"] == "none" and lineage["audit"]["quarantined_by_version"] == {"v2": SIZE}
    assert lineage["related"] == {**lineage["related"], "action": "none", "records_by_version": {"v1": SIZE}}
    assert "repair_derived" not in [s["kind"] for s in plan["steps"]]


def test_a_record_whose_document_left_the_index_is_deleted_not_recomputed(upgraded, catalog):
    """A stale record of a document the pin's index does not hold (it left the corpus) has no
    lists to recompute: the repair deletes it, conditionally, and says so."""
    stacks, stack = upgraded(quarantine=False)
    related = store_named(config.load_stack(stack, stacks), "related")
    gone = derived.Related("left-the-corpus", "0" * 64, ("doc-00001",))
    derived._batch_put(clients.aws("dynamodb"), related.table, [derived._item("v2", gone, related.k)])

    stackfile.set_pin(stack, "v1", stacks)
    applied = orchestrator.apply(config.load_stack(stack, stacks), catalog, progress=False, say=quiet)
    assert applied.record.passed, [(c.name, c.observed) for c in applied.record.failures]
    repaired = next(s.detail for s in applied.steps if s.step.kind == "repair_derived")
    assert repaired == f"related: {SIZE} recomputed with v1, 1 deleted (document gone)"
    records = derived.read_records(config.load_stack(stack, stacks), related)
    assert "left-the-corpus" not in records and len(records) == SIZE


def test_documents_the_index_could_not_answer_for_are_not_taken_for_gone(opensearch, unique):
    """mget answers a shard (or the whole index) it cannot read with a per-document error, not
    found=false: taken for "not in the index", the repair deleted their records."""
    with pytest.raises(Unreachable, match=f"reading 2 documents of {unique}-gone failed .*no such index"):
        derived.related(opensearch, f"{unique}-gone", ["a", "b"], 5)


def test_neighbours_from_part_of_the_index_are_refused_not_written(opensearch, unique, monkeypatch):
    """A shard that could not answer the k-NN query (a node lost mid-repair): the top k of the rest
    would be written as the document's related list, wrong and looking right."""
    index = f"{unique}-partial"
    hnsw = {"name": "hnsw", "engine": "lucene", "space_type": "l2"}  # faiss's native library is not loaded here
    mapping = {
        "embedding": {"type": "knn_vector", "dimension": 2, "method": hnsw},
        "content_sha256": {"type": "keyword"},
    }
    opensearch.indices.create(index=index, body={"settings": {"index.knn": True}, "mappings": {"properties": mapping}})
    for n, vector in enumerate(([1.0, 0.0], [0.0, 1.0])):
        opensearch.index(index=index, id=f"d{n}", body={"embedding": vector, "content_sha256": "0" * 64}, refresh=True)
    whole = derived.related(opensearch, index, ["d0", "d1"], 1)
    assert whole["d0"].neighbours == ("d1",)  # the same call answers when every shard does
    real = opensearch.msearch

    def partial(**kwargs):
        answer = real(**kwargs)
        return {
            "responses": [{**r, "_shards": {"total": 2, "successful": 1, "failed": 1}} for r in answer["responses"]]
        }

    monkeypatch.setattr(opensearch, "msearch", partial)
    try:
        with pytest.raises(Unreachable, match=f"k-NN query for d0 on {index} read 1 of 2 shards; run again when"):
            derived.related(opensearch, index, ["d0", "d1"], 1)
    finally:
        monkeypatch.undo()
        opensearch.indices.delete(index=index)


def test_a_v2_record_written_after_the_rollback_fails_the_check(upgraded, catalog):
    stacks, stack = upgraded(quarantine=False)
    stackfile.set_pin(stack, "v1", stacks)
    settings = config.load_stack(stack, stacks)
    assert orchestrator.apply(settings, catalog, progress=False, say=quiet).record.passed

    late = list(derived.read_records(settings, settings.derived[0]))[:7]
    assert derived.write_related(settings, "v2", late) == 7  # a v2 job still running somewhere

    result = lockstep("check", "--stack", stack, "--json")
    assert result.returncode == 1, result.stderr
    record = json.loads(result.stdout)
    failing = [c for c in record["checks"] if not c["passed"] and c["severity"] == "fail"]
    assert [c["name"] for c in failing] == ["derived:related"]
    assert failing[0]["observed"] == "7 records of v2"
    assert record["derived"]["related"]["records_by_version"] == {"v1": SIZE - 7, "v2": 7}
    table = lockstep("check", "--stack", stack)
    assert table.returncode == 1 and "derived:related" in table.stdout and "7 records of v2" in table.stdout

    # The next apply repairs exactly those seven.
    again = orchestrator.apply(settings, catalog, progress=False, say=quiet)
    assert again.record.passed and [s.step.kind for s in again.steps] == ["repair_derived", "check"]
    assert again.steps[0].detail.startswith("related: 7 recomputed with v1")


def test_a_killed_repair_resumes_and_writes_each_item_once(upgraded, catalog):
    stacks, stack = upgraded(write_rate=25, quarantine=False)  # ~5 s of repair: room for the kill
    stackfile.set_pin(stack, "v1", stacks)
    settings = config.load_stack(stack, stacks)
    store = settings.derived[0]
    ids = set(derived.read_records(settings, store))
    process = subprocess.Popen(
        [sys.executable, "-m", "lockstep.cli", "apply", "--stack", stack, "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline, repaired = time.monotonic() + 120, 0
    kill_at = 10 + int.from_bytes(os.urandom(1), "big") % 60  # a random point of the repair
    while time.monotonic() < deadline and repaired < kill_at and process.poll() is None:
        time.sleep(0.05)
        repaired = derived.count_by_version(settings, catalog, store).records_by_version.get("v1", 0)
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = {i: r for i, r in derived.read_records(settings, store).items() if r["model_version"] == "v1"}
    assert 0 < len(first) < SIZE, "the kill must land mid-repair"

    result = lockstep("apply", "--stack", stack, "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"related: {SIZE - len(first)} recomputed with v1" in result.stdout

    records = derived.read_records(settings, store)
    assert set(records) == ids, "no item lost"
    assert {r["model_version"] for r in records.values()} == {"v1"}, "no v2 record left"
    for doc_id, before in first.items():
        assert records[doc_id]["written_at"] == before["written_at"], f"{doc_id} was written twice"


def test_the_cutover_unit_in_pulumi_declares_the_table_and_repairs_after_the_flip():
    store = {"name": "related", "kind": "related-documents", "table": "acme-dev-related", "repair": "recompute"}
    run = evaluate(with_values(derived=[store]))
    (table,) = run.of_type("aws:dynamodb/table:Table").values()
    assert table["name"] == "acme-dev-related" and table["hashKey"] == derived.KEY
    assert table["serverSideEncryption"] == {"enabled": True}
    assert table["pointInTimeRecovery"] == {"enabled": True}
    assert table["globalSecondaryIndexes"] == [
        {
            "name": derived.VERSION_INDEX,
            "keySchemas": [{"attributeName": derived.VERSION_ATTRIBUTE, "keyType": "HASH"}],
            "projectionType": "INCLUDE",
            "nonKeyAttributes": list(derived.PROJECTED),
        }
    ]
    (repair,) = run.of_type(REPAIR).values()
    assert repair["pin"] == "v2" and repair["table"] == "acme-dev-related" and repair["store"]["repair"] == "recompute"

    flipped = evaluate(with_values(derived=[store], pin="v1"))
    (after,) = flipped.of_type(REPAIR).values()
    assert after["pin"] == "v1", "a rollback re-runs the repair"
    assert flipped.of_type("aws:dynamodb/table:Table") == run.of_type("aws:dynamodb/table:Table"), "the table stays"


def test_the_repair_resource_makes_the_same_ops_call(upgraded, catalog):
    from components.providers.derived import DerivedRepairHandler
    from components.providers.provider import plain_map, wire_map
    from components.providers.resources import DerivedRepairArgs

    stacks, stack = upgraded(quarantine=False)
    settings = config.load_stack(stack, stacks).with_pin("v1")
    store = settings.derived[0]
    props = plain_map(wire_map(DerivedRepairArgs(settings, catalog, store, table=store.table).inputs()))
    _, outputs = DerivedRepairHandler().create("urn", props)
    assert outputs["recordsByVersion"] == {"v1": SIZE}
    assert outputs["repaired"].startswith(f"related: {SIZE} recomputed with v1")
    assert DerivedRepairHandler().diff(outputs, props).changes is False


# -------------------------------------------------------------------------------- bad input


def test_an_unknown_store_kind_is_one_line_exit_2_and_nothing_is_written(servers, scratch_stack, unique, opensearch):
    stacks, stack = scratch_stack(derived=[{"name": "related", "kind": "similar-items", "table": f"{unique}-related"}])
    result = lockstep("apply", "--stack", stack, "--quiet")
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "derived.0.kind" in line and "'similar-items'" in line and "related-documents" in line
    assert opensearch.indices.get(index=f"{unique}-*", allow_no_indices=True) == {}
    assert f"{unique}-related" not in clients.aws("dynamodb").list_tables()["TableNames"]
    assert not [b for b in clients.aws("s3").list_buckets()["Buckets"] if b["Name"].startswith(unique)]


def test_missing_version_attribute_and_missing_table_are_one_line_exit_2(
    servers, scratch_stack, unique, catalog, opensearch
):
    stacks, stack = scratch_stack(
        slots={"blue": "v1", "green": None}, corpus={"size": 40}, derived=stores(unique, quarantine=False)
    )
    assert orchestrator.apply(config.load_stack(stack, stacks), catalog, progress=False, say=quiet).record.passed
    settings = config.load_stack(stack, stacks)
    store, dynamodb = settings.derived[0], clients.aws("dynamodb")
    try:
        # An item some other writer left without a version stamp: nobody can say which model wrote it.
        dynamodb.put_item(TableName=store.table, Item={derived.KEY: {"S": "orphan"}, "neighbours": {"L": []}})
        stackfile.set_pin(stack, "v2", stacks)
        result = lockstep("apply", "--stack", stack, "--quiet")
        assert result.returncode == 2, result.stdout + result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert "'orphan'" in line and "no model_version attribute" in line and store.table in line
        assert index.read_meta(opensearch, settings.opensearch.index_name("v2")) is None, "nothing provisioned"
        assert live_state.alias_targets(opensearch, settings.opensearch.alias_name) == [
            settings.opensearch.index_name("v1")
        ]
        assert list(derived.read_records(settings, store)) == ["orphan"], "nothing written"
        assert lockstep("check", "--stack", stack).returncode == 2

        # The table is gone: the check cannot check (exit 2), a writer writes nothing.
        dynamodb.delete_table(TableName=store.table)
        result = lockstep("check", "--stack", stack)
        assert result.returncode == 2
        (line,) = result.stderr.strip().splitlines()
        assert f"table {store.table!r} does not exist" in line
        with pytest.raises(UsageError, match="does not exist"):
            derived.write_related(config.load_stack(stack, stacks).with_pin("v1"), "v1")
        assert store.table not in dynamodb.list_tables()["TableNames"]

        # A table without the model_version index cannot carry lineage.
        dynamodb.create_table(
            TableName=store.table,
            AttributeDefinitions=[{"AttributeName": derived.KEY, "AttributeType": "S"}],
            KeySchema=[{"AttributeName": derived.KEY, "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        result = lockstep("check", "--stack", stack)
        assert result.returncode == 2 and "no index on the model_version attribute" in result.stderr
    finally:
        endpoints.stop_local_slots(settings)
        if store.table in dynamodb.list_tables()["TableNames"]:
            dynamodb.delete_table(TableName=store.table)


def test_the_work_list_pages_grow_and_list_each_stale_item_once(servers, scratch_stack, catalog, unique, monkeypatch):
    """The repair's work list: a small first page (the k-NN starts at once), then pages doubling to
    LAST_PAGE; every item of another version that is not quarantined, once; none of the pin's."""
    stacks, stack = scratch_stack(derived=stores(unique, quarantine=False))
    settings = config.load_stack(stack, stacks)
    store = settings.derived[0]
    client = derived.dynamodb(settings)
    derived.ensure_table(settings, store)
    try:
        stale = {f"doc-{n:02}": "v2" if n % 3 else "v3" for n in range(40)}
        items = [derived._item(v, derived.Related(d, "0" * 64, ("x",)), 1) for d, v in stale.items()]
        items += [derived._item("v1", derived.Related(f"pin-{n}", "0" * 64, ("x",)), 1) for n in range(9)]
        quarantined = derived._item("v2", derived.Related("kept-for-audit", "0" * 64, ("x",)), 1)
        quarantined[derived.QUARANTINED] = {"S": "2026-12-05T00:00:00+00:00"}
        for chunk in range(0, len(items), 25):
            derived._batch_put(client, store.table, items[chunk : chunk + 25])
        derived._batch_put(client, store.table, [quarantined])
        limits: list[int] = []
        scan = client.scan

        def spy(**request):
            limits.append(request["Limit"])
            return scan(**request)

        monkeypatch.setattr(client, "scan", spy)
        monkeypatch.setattr(derived, "FIRST_PAGE", 3)
        monkeypatch.setattr(derived, "LAST_PAGE", 10)
        listed = [entry for page in derived._work_pages(client, store, catalog, "v1") for entry in page]
    finally:
        client.delete_table(TableName=store.table)
    assert sorted(listed) == sorted(stale.items())
    assert limits[:3] == [3, 6, 10] and set(limits[3:]) <= {10}, limits


def test_a_held_up_write_does_not_stall_the_k_nn_queries_behind_it(servers, scratch_stack, unique, monkeypatch):
    """The repair's lead: while the writer is held up on its first batch (DynamoDB busy), the k-NN
    side goes on computing up to LEAD batches. Deterministic: the first write waits for the
    LEAD-th k-NN batch (it never comes with a shorter lead: the guard's timeout fails the test)."""
    stacks, stack = scratch_stack(derived=stores(unique, write_rate=1e6, quarantine=False))
    settings = config.load_stack(stack, stacks)
    catalog = config.load_catalog()
    store = settings.derived[0]
    client = derived.dynamodb(settings)
    derived.ensure_table(settings, store)
    ids = [f"doc-{n:03}" for n in range(derived.BATCH * (derived.LEAD + 2))]
    lead_reached = threading.Event()
    computed: list[int] = []

    def related(_client, _index, batch_ids, k):
        computed.append(len(batch_ids))
        if len(computed) >= derived.LEAD:
            lead_reached.set()
        return {doc_id: derived.Related(doc_id, "1" * 64, ("other",)) for doc_id in batch_ids}

    put = derived._batch_put
    held: list[bool] = []

    def held_up_put(dynamodb, table, items):
        if not held and table == store.table:
            held.append(lead_reached.wait(timeout=60))
        put(dynamodb, table, items)

    try:
        stale = [derived._item("v2", derived.Related(i, "0" * 64, ("x",)), 1) for i in ids]
        for chunk in range(0, len(stale), 25):
            put(client, store.table, stale[chunk : chunk + 25])
        monkeypatch.setattr(derived, "related", related)
        monkeypatch.setattr(derived, "_batch_put", held_up_put)
        result = derived.repair(settings, catalog, store, progress=False)
        records = derived.read_records(settings, store)
    finally:
        client.delete_table(TableName=store.table)
    assert held == [True], "the k-NN side stopped at the writer's first batch"
    assert result.rewritten == len(ids) and {r["model_version"] for r in records.values()} == {settings.pin}
