"""lockstep's provider handlers against the real OpenSearch and moto (direct calls, no engine),
and the plugin process answering the engine's RPCs (tests/test_engine.py runs them under the engine)."""

from __future__ import annotations

import asyncio
import json

import pytest

from components.plugin import build_provider
from components.providers.check import CheckFailed, CheckHandler
from components.providers.opensearch import CutoverHandler, IndexHandler, read_kept
from components.providers.provider import LockstepProvider, plain_map, wire_map
from components.providers.resources import CheckArgs, CutoverArgs, IndexArgs
from lockstep.errors import IntegrityError, LockstepError
from lockstep.ops import artifacts, check, corpus_store, endpoints, index, live_state

CORPUS_SIZE = 40


@pytest.fixture
def stack(servers, s3, make_settings, catalog):
    """Settings isolated by name, with the corpus and the artifacts of v1..v3 in moto's S3."""
    settings = make_settings(corpus={"size": CORPUS_SIZE})
    artifacts.ensure_bucket(s3, settings.artifacts.bucket)
    for version in ("v1", "v2", "v3"):
        artifacts.publish_artifact(s3, settings, catalog.get(version))
    corpus_store.ensure_corpus(s3, settings)
    return settings


@pytest.fixture
def serving(stack, catalog):
    """The slots' local endpoints running (blue v1, green v2): the Cutover refuses a slot that does not serve the pin."""
    for slot, version in (("blue", "v1"), ("green", "v2")):
        endpoints.deploy_local_slot(stack, slot, catalog.get(version))
    yield stack
    endpoints.stop_local_slots(stack)


def resolved(inputs: dict) -> dict:
    """What the engine hands the provider for the program's inputs (no Outputs here)."""
    return plain_map(wire_map(inputs))


def index_props(settings, entry) -> dict:
    return resolved(IndexArgs(settings, entry).inputs())


def cutover_props(settings, entry, slot: str) -> dict:
    return resolved(CutoverArgs(settings, entry, endpoint=f"lockstep-{settings.stack}-{slot}").inputs())


URN = "urn:pulumi:s::lockstep::lockstep:index:ModelRelease$lockstep:index:Index::x"


# --------------------------------------------------------------------------------------- index


def test_index_create_read_and_delete_of_an_index_the_stack_no_longer_keeps(stack, catalog, opensearch):
    handler, entry = IndexHandler(), catalog.get("v3")
    props = index_props(stack, entry)

    id_, outs = handler.create(URN, props)
    assert id_ == stack.opensearch.index_name("v3")
    assert outs["docCount"] == CORPUS_SIZE and outs["meta"]["version"] == "v3"
    read_id, read = handler.read(URN, id_, outs)
    assert read_id == id_ and read["docCount"] == CORPUS_SIZE and read["dimension"] == entry.dimension

    assert handler.delete(URN, id_, outs) is None  # v3 is in neither slot nor retain: dropped
    assert not opensearch.indices.exists(index=id_)
    assert handler.read(URN, id_, outs) == ("", {})  # refresh: gone


def test_index_delete_leaves_an_index_another_stack_built_and_says_so(stack, catalog, opensearch):
    handler = IndexHandler()
    id_, outs = handler.create(URN, index_props(stack, catalog.get("v3")))
    meta = index.read_meta(opensearch, id_)
    opensearch.indices.put_mapping(index=id_, body={"_meta": {**meta, "stack": "prod"}})  # rebuilt by prod since

    assert handler.delete(URN, id_, outs) == (
        f"left index {id_} in place: it belongs to stack prod (its _meta.stack), not {stack.stack}: two stacks on "
        f"one cluster need their own opensearch.indexPrefix; give stack {stack.stack} one of its own "
        f"(e.g. {stack.opensearch.index_prefix}-{stack.stack})"
    )
    assert opensearch.indices.exists(index=id_)
    opensearch.indices.delete(index=id_)


def test_index_diff_replaces_only_on_mapping_changes_and_a_flip_does_not_reach_it(stack, catalog, make_settings):
    handler, entry = IndexHandler(), catalog.get("v1")
    props = index_props(stack, entry)
    state = {**props, "docCount": CORPUS_SIZE, "meta": {}}

    assert handler.diff(state, props).changes is False
    assert index_props(make_settings(pin="v2", corpus={"size": CORPUS_SIZE}), entry) == props
    reworded = catalog.get("v1").model_copy(update={"description": "reworded"})
    assert handler.diff(state, index_props(stack, reworded)).changes is False  # not an input of an index
    replicas = handler.diff(state, {**props, "opensearch": {**props.get("opensearch", {}), "replicas": 1}})
    assert replicas.detailed == {"opensearch.replicas": False} and replicas.replaces == []
    wider = handler.diff(state, {**props, "dimension": 256})
    assert wider.replaces == ["dimension"] and wider.delete_before_replace is True
    moved = handler.diff(state, index_props(stack, catalog.get("v3")))
    assert {"index", "version"} <= set(moved.replaces) and moved.delete_before_replace is False


def test_index_delete_of_a_kept_index_fails_while_the_release_stands_and_keeps_it_once_destroyed(
    stack, serving, catalog, opensearch, ssm
):
    handler = IndexHandler()
    made = {version: handler.create(URN, index_props(stack, catalog.get(version))) for version in ("v1", "v2", "v3")}
    retained = stack.model_copy(update={"retain": ("v3",)})
    cutover_id, _ = CutoverHandler().create(URN, cutover_props(retained, catalog.get("v1"), "blue"))
    names = {version: stack.opensearch.index_name(version) for version in ("v1", "v2", "v3")}
    assert read_kept(ssm, stack.pointer_name) == {
        "pin": "v1",
        "slots": {"blue": "v1", "green": "v2"},
        "retain": ["v3"],
        "indices": sorted(names.values()),
    }

    # A replace or a removal while the release stands: the delete fails (the engine keeps the resource).
    for id_, outs in made.values():
        with pytest.raises(LockstepError, match=f"refusing to delete index {id_}: .*put the change back"):
            handler.delete(URN, id_, outs)

    # destroy: the cutover goes first, then every kept index is left and said so.
    CutoverHandler().delete(URN, cutover_id, cutover_props(retained, catalog.get("v1"), "blue"))
    said = {version: handler.delete(URN, id_, outs) for version, (id_, outs) in made.items()}
    reasons = {
        "v1": "it is the live pin",
        "v2": "it serves the green slot",
        "v3": "it is retained for instant rollback",
    }
    for version, reason in reasons.items():
        assert said[version].startswith(f"kept index {names[version]}: {reason} (the data stays"), said
    assert all(opensearch.indices.exists(index=id_) for id_, _ in made.values())


def test_index_delete_on_a_live_stack_with_no_kept_record_is_refused(stack, catalog, opensearch, ssm):
    """A stack `lockstep apply` made live, whose first `pulumi up` failed before its Cutover: the
    pointer exists, no record says which indices the slots and retain keep. An index replace
    (a mapping change) must not delete what may be the standby."""
    handler = IndexHandler()
    v2, outs = handler.create(URN, index_props(stack, catalog.get("v2")))
    v1 = stack.opensearch.index_name("v1")
    sha = catalog.get("v1").artifact_sha256
    live_state.write_pointer(
        ssm, stack.pointer_name, live_state.Pointer("v1", "somewhere", v1, sha, "2026-12-01T00:00:00Z")
    )
    with pytest.raises(
        LockstepError, match=f"refusing to delete index {v2}: stack {stack.stack} is live .* no Cutover"
    ):
        handler.delete(URN, v2, outs)
    assert opensearch.indices.exists(index=v2)
    ssm.delete_parameter(Name=stack.pointer_name)
    assert handler.delete(URN, v2, outs) is None  # no pointer: nothing is live, the index is the stack's to drop


def test_an_index_adopted_by_its_replacement_is_left_to_it(stack, serving, catalog, opensearch):
    """`pulumi up --replace`: the replacement's create adopts the same physical index; the old
    resource's delete leaves it (kept or not), without failing."""
    handler, props = IndexHandler(), index_props(stack, catalog.get("v3"))
    id_, old = handler.create(URN, props)
    _, new = handler.create(URN, props)
    assert new["holder"] != old["holder"]
    assert handler.delete(URN, id_, old) == f"left index {id_} in place: its replacement holds it"
    assert opensearch.indices.exists(index=id_)
    assert handler.delete(URN, id_, new) is None  # v3 is not kept: its holder's delete drops it
    assert not opensearch.indices.exists(index=id_)


# ------------------------------------------------------------------------------------- cutover


def test_cutover_create_update_read_drift_and_delete_leaves_live_state(stack, serving, catalog, opensearch, ssm):
    handler = CutoverHandler()
    v1, v2 = catalog.get("v1"), catalog.get("v2")
    for entry in (v1, v2):
        IndexHandler().create(URN, index_props(stack, entry))
    alias = stack.opensearch.alias_name

    id_, state = handler.create(URN, cutover_props(stack, v1, "blue"))
    assert id_ == stack.pointer_name and state["aliasTargets"] == [stack.opensearch.index_name("v1")]
    assert handler.diff(state, cutover_props(stack, v1, "blue")).changes is False

    rollback = cutover_props(stack.model_copy(update={"pin": "v2"}), v2, "green")
    assert handler.diff(state, rollback).replaces == []
    state = handler.update(URN, id_, state, rollback)
    pointer = live_state.read_pointer(ssm, stack.pointer_name)
    assert (pointer.version, pointer.endpoint) == ("v2", f"lockstep-{stack.stack}-green")

    # Someone moves the alias back by hand: a refresh sees it, the next diff is an update.
    opensearch.indices.update_aliases(
        body={
            "actions": [
                {"remove": {"index": stack.opensearch.index_name("v2"), "alias": alias}},
                {"add": {"index": stack.opensearch.index_name("v1"), "alias": alias}},
            ]
        }
    )
    _, refreshed = handler.read(URN, id_, state)
    assert refreshed["aliasTargets"] == [stack.opensearch.index_name("v1")]
    drift = handler.diff(refreshed, rollback)
    assert drift.changes is True and drift.diffs == ["aliasTargets"]

    assert "left the live alias" in handler.delete(URN, id_, refreshed)
    assert live_state.read_pointer(ssm, stack.pointer_name).version == "v2"


def test_a_renamed_alias_leaves_the_indices_it_named_once_the_new_one_is_live(stack, serving, catalog, opensearch):
    """Renaming `opensearch.alias` (or `indexPrefix` without one): the old alias kept serving the
    old index to alias readers, and that index's delete was refused on every later update."""
    handler, v1 = CutoverHandler(), catalog.get("v1")
    IndexHandler().create(URN, index_props(stack, v1))
    id_, state = handler.create(URN, cutover_props(stack, v1, "blue"))
    old, new = stack.opensearch.alias_name, f"live-{stack.stack}"
    renamed = stack.model_copy(update={"opensearch": stack.opensearch.model_copy(update={"alias": new})})

    rename = cutover_props(renamed, v1, "blue")
    assert handler.diff(state, rename).replaces == []
    handler.update(URN, id_, state, rename)
    assert live_state.alias_targets(opensearch, new) == [stack.opensearch.index_name("v1")]
    assert live_state.alias_targets(opensearch, old) == []


def test_the_cutover_refuses_a_slot_that_serves_another_artifact_and_switches_nothing(
    stack, serving, catalog, opensearch, ssm
):
    """Issue 18, defect 5 on the Pulumi path: green fell back to v1's model (an alarm-driven rollback)."""
    handler, v1, v2 = CutoverHandler(), catalog.get("v1"), catalog.get("v2")
    for entry in (v1, v2):
        IndexHandler().create(URN, index_props(stack, entry))
    id_, state = handler.create(URN, cutover_props(stack, v1, "blue"))
    endpoints.deploy_local_slot(stack, "green", v1)

    flip = cutover_props(stack.model_copy(update={"pin": "v2"}), v2, "green")
    with pytest.raises(IntegrityError) as refused:
        handler.update(URN, id_, state, flip)
    message = str(refused.value)
    assert f"endpoint {endpoints.endpoint_name(stack, 'green')} serves v1" in message
    assert "nothing was switched" in message and "\n" not in message
    assert live_state.alias_targets(opensearch, stack.opensearch.alias_name) == [stack.opensearch.index_name("v1")]
    assert live_state.read_pointer(ssm, stack.pointer_name).version == "v1"


def test_bad_inputs_are_check_failures_by_property():
    assert {name for name, _ in CutoverHandler().check({}, {"pin": "v1", "version": "v1"})} == {"settings", "entry"}


# --------------------------------------------------------------------------------------- check


def test_the_check_fails_on_an_inconsistent_system_naming_the_failed_checks(stack, catalog):
    """Nothing is deployed: the check runs and fails; the message names the checks and the fix."""
    IndexHandler().create(URN, index_props(stack, catalog.get("v1")))
    props = resolved(CheckArgs(stack, catalog, ["v1"]).inputs())
    with pytest.raises(CheckFailed) as failed:
        CheckHandler().create(URN, props)
    message = str(failed.value)
    assert message.startswith(f"stack {stack.stack} is inconsistent after the deploy of v1 (exit 1): failed checks ")
    assert "alias" in message and "pointer" in message and "\n" not in message


def test_a_passing_check_whose_record_could_not_be_stored_fails_as_could_not_check(stack, catalog, monkeypatch):
    """The check passed, but its record could not be stored (exit 2): promotion could not read it,
    so the deploy fails as "could not check", never as "inconsistent … failed checks" with none."""
    passed = check.CheckRecord(stack.stack, "v1", "0" * 64, "t", "t", "test", [check.Check("alias", True, "a", "a")])
    unstored = check.Outcome(passed, 2, "could not store the check record: S3 at http://127.0.0.1 is unreachable")
    monkeypatch.setattr(check, "evaluate", lambda settings, catalog, **kwargs: unstored)
    props = resolved(CheckArgs(stack, catalog, ["v1"]).inputs())
    with pytest.raises(CheckFailed) as failed:
        CheckHandler().create(URN, props)
    assert str(failed.value) == (
        f"could not check stack {stack.stack} (exit 2): could not store the check record: S3 at http://127.0.0.1 is unreachable"
    )


def test_the_checks_read_reports_drift_and_stores_no_record(stack, catalog):
    """A refresh only reads: the Check's read re-runs the check on what is live, shows the failure
    as its state, and leaves the record `lockstep promote` reads alone (a read-only principal can
    refresh; the `up` that follows a failed refresh stores its own record)."""
    IndexHandler().create(URN, index_props(stack, catalog.get("v1")))
    props = resolved(CheckArgs(stack, catalog, ["v1"]).inputs())
    _, refreshed = CheckHandler().read(URN, f"{stack.stack}:v1", {**props, "passed": True, "failed": []})
    assert refreshed["passed"] is False and "alias" in refreshed["failed"]
    assert json.loads(refreshed["record"])["pin"] == "v1"
    assert check.latest(stack) is None


def test_the_provider_serves_the_component_and_the_resources_schema():
    import json

    from pulumi.provider.experimental.provider import GetSchemaRequest

    provider = LockstepProvider(build_provider())
    loop = asyncio.new_event_loop()  # not asyncio.run: it unsets the thread's loop, which the mock runtime needs
    try:
        served = json.loads(loop.run_until_complete(provider.get_schema(GetSchemaRequest(0))).schema)
    finally:
        loop.close()
    assert {"lockstep:index:ModelRelease", "lockstep:index:Index", "lockstep:index:Check"} <= set(served["resources"])
    assert provider.handler("lockstep:index:ModelRelease$lockstep:index:Index").TOKEN == "lockstep:index:Index"
