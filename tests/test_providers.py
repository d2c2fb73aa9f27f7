"""The dynamic providers against the real OpenSearch and moto: direct CRUD and the dill round trip."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pulumi.dynamic.dynamic import serialize_provider

from components.providers.opensearch import (
    Cutover,
    CutoverArgs,
    CutoverProvider,
    Index,
    IndexArgs,
    IndexProvider,
)
from lockstep.errors import GuardRefused
from lockstep.ops import artifacts, index

ROOT = Path(__file__).resolve().parents[1]
CORPUS_SIZE = 40


@pytest.fixture
def stack(servers, s3, make_settings, catalog):
    """Settings isolated by name, with the corpus and the artifacts of v1..v3 in moto's S3."""
    settings = make_settings(corpus={"size": CORPUS_SIZE})
    artifacts.ensure_bucket(s3, settings.artifacts.bucket)
    for entry in catalog.versions:
        artifacts.publish_artifact(s3, settings, entry)
    artifacts.ensure_corpus(s3, settings)
    return settings


def index_props(settings, entry) -> dict:
    return IndexArgs(settings, entry).inputs()


def cutover_props(settings, entry, slot: str) -> dict:
    return CutoverArgs(settings, entry, endpoint=f"lockstep-{settings.stack}-{slot}").inputs()


def test_type_tokens():
    assert Index._resource_type_name == "dynamic/opensearch:Index"
    assert Cutover._resource_type_name == "dynamic/opensearch:Cutover"


# --------------------------------------------------------------------------------------- index


def test_index_create_read_delete(stack, catalog, opensearch):
    provider, entry = IndexProvider(), catalog.get("v1")
    props = index_props(stack, entry)

    created = provider.create(props)
    assert created.id == stack.opensearch.index_name("v1")
    assert created.outs["doc_count"] == CORPUS_SIZE
    assert created.outs["meta"]["version"] == "v1"
    assert created.outs["meta"]["artifact_sha256"] == entry.artifact_sha256
    mapping = opensearch.indices.get_mapping(index=created.id)[created.id]["mappings"]
    assert mapping["properties"]["embedding"]["dimension"] == entry.dimension

    read = provider.read(created.id, created.outs)
    assert read.id == created.id and read.outs["doc_count"] == CORPUS_SIZE and read.outs["dimension"] == 192

    provider.delete(created.id, created.outs)
    assert not opensearch.indices.exists(index=created.id)
    assert provider.read(created.id, created.outs).id == ""  # refresh: gone


def test_index_diff_replaces_only_on_mapping_changes(stack, catalog, make_settings):
    provider, entry = IndexProvider(), catalog.get("v1")
    props = index_props(stack, entry)
    created = provider.create(props)

    # The state holds observed outputs too; they are not inputs.
    assert provider.diff(created.id, created.outs, props).changes is False
    # A flip (another pin) does not reach an index's inputs.
    assert index_props(make_settings(pin="v2", corpus={"size": CORPUS_SIZE}), entry) == props

    described = {**props, "entry": {**props["entry"], "description": "reworded"}}
    update = provider.diff(created.id, created.outs, described)
    assert update.changes is True and update.replaces == []

    wider = {**props, "dimension": 256}
    replace = provider.diff(created.id, created.outs, wider)
    assert replace.changes is True and replace.replaces == ["dimension"]
    assert replace.delete_before_replace is True  # same name: the old index must go first

    renamed = index_props(stack, catalog.get("v3"))
    moved = provider.diff(created.id, created.outs, renamed)
    assert set(moved.replaces) >= {"index", "version", "dimension"} and moved.delete_before_replace is False
    provider.delete(created.id, created.outs)


def test_refresh_sees_a_rebuilt_index_and_diff_replaces_it(stack, catalog, opensearch):
    """Someone recreated the index with another dimension: refresh reports it, the next diff replaces."""
    provider, entry = IndexProvider(), catalog.get("v1")
    props = index_props(stack, entry)
    created = provider.create(props)
    other = catalog.get("v3").model_copy(update={"version": "v1"})
    opensearch.indices.delete(index=created.id)
    opensearch.indices.create(index=created.id, body=index.index_body(stack, other))

    refreshed = provider.read(created.id, created.outs)
    assert refreshed.outs["dimension"] == 128 and refreshed.outs["doc_count"] == 0
    diff = provider.diff(created.id, refreshed.outs, props)
    assert "dimension" in diff.replaces and "space_type" in diff.replaces
    provider.delete(created.id, refreshed.outs)


def test_index_delete_is_refused_while_aliased(stack, catalog, opensearch):
    index_provider, entry = IndexProvider(), catalog.get("v1")
    created = index_provider.create(index_props(stack, entry))
    CutoverProvider().create(cutover_props(stack, entry, "blue"))

    with pytest.raises(GuardRefused, match="refusing to delete index"):
        index_provider.delete(created.id, created.outs)
    assert opensearch.indices.exists(index=created.id)


# ------------------------------------------------------------------------------------- cutover


def test_cutover_create_update_read_and_delete_leaves_live_state(stack, catalog, opensearch, ssm):
    provider = CutoverProvider()
    v1, v2 = catalog.get("v1"), catalog.get("v2")
    IndexProvider().create(index_props(stack, v1))
    IndexProvider().create(index_props(stack, v2))
    alias = stack.opensearch.alias_name

    first = provider.create(cutover_props(stack, v1, "blue"))
    assert first.id == stack.pointer_name
    assert index.alias_targets(opensearch, alias) == [stack.opensearch.index_name("v1")]
    pointer = index.read_pointer(ssm, stack.pointer_name)
    assert (pointer.version, pointer.endpoint, pointer.index) == (
        "v1",
        f"lockstep-{stack.stack}-blue",
        stack.opensearch.index_name("v1"),
    )

    rollback = cutover_props(stack.model_copy(update={"pin": "v2"}), v2, "green")
    diff = provider.diff(first.id, first.outs, rollback)
    assert diff.changes is True and diff.replaces == []
    assert provider.diff(first.id, first.outs, cutover_props(stack, v1, "blue")).changes is False

    updated = provider.update(first.id, first.outs, rollback)
    assert updated.outs["alias_targets"] == [stack.opensearch.index_name("v2")]
    pointer = index.read_pointer(ssm, stack.pointer_name)
    assert (pointer.version, pointer.endpoint, pointer.artifact_sha256) == (
        "v2",
        f"lockstep-{stack.stack}-green",
        v2.artifact_sha256,
    )

    read = provider.read(first.id, updated.outs)
    assert read.outs["version"] == "v2" and read.outs["alias_targets"] == [stack.opensearch.index_name("v2")]

    provider.delete(first.id, updated.outs)
    assert index.alias_targets(opensearch, alias) == [stack.opensearch.index_name("v2")]
    assert index.read_pointer(ssm, stack.pointer_name).version == "v2"


def test_cutover_catches_the_index_up_before_the_flip(stack, catalog, opensearch):
    """Reattach: a document deleted out-of-band is re-embedded before the alias moves to the index."""
    v1 = catalog.get("v1")
    created = IndexProvider().create(index_props(stack, v1))
    some_id = opensearch.search(index=created.id, body={"size": 1})["hits"]["hits"][0]["_id"]
    opensearch.delete(index=created.id, id=some_id, refresh=True)

    CutoverProvider().create(cutover_props(stack, v1, "blue"))
    assert opensearch.count(index=created.id)["count"] == CORPUS_SIZE


def test_cutover_check_reports_bad_inputs():
    result = CutoverProvider().check({}, {"settings": {"pin": "v1"}, "entry": {"version": "v1"}})
    assert {failure.property for failure in result.failures} == {"settings", "entry"}


# ------------------------------------------------------------------------------------ dill trip

FRESH_INTERPRETER = textwrap.dedent("""
    import base64, json, sys
    import dill

    request = json.load(sys.stdin)
    assert "components.providers.opensearch" not in sys.modules
    index_provider = dill.loads(base64.b64decode(request["index_provider"]))
    cutover_provider = dill.loads(base64.b64decode(request["cutover_provider"]))
    assert "components.providers.opensearch" in sys.modules  # brought back by dill, not by us

    index_props, cutover_props = request["index"], request["cutover"]
    created = index_provider.create(index_props)
    unchanged = index_provider.diff(created.id, created.outs, index_props)
    wider = index_provider.diff(created.id, created.outs, {**index_props, "dimension": 7})
    cut = cutover_provider.create(cutover_props)
    flip = cutover_provider.diff(cut.id, cut.outs, {**cutover_props, "endpoint": "elsewhere"})
    try:
        index_provider.delete(created.id, created.outs)
        refused = False
    except Exception as exc:
        refused = type(exc).__name__
    cutover_provider.delete(cut.id, cut.outs)
    print(json.dumps({
        "id": created.id, "doc_count": created.outs["doc_count"],
        "unchanged": unchanged.changes, "wider": wider.replaces,
        "pointer": cut.id, "alias_targets": cut.outs["alias_targets"],
        "flip": [flip.changes, flip.replaces], "refused": refused,
    }))
""")


def test_providers_round_trip_through_dill_in_a_fresh_interpreter(stack, catalog, opensearch):
    """Serialized exactly as pulumi.dynamic.Resource does, loaded as the provider host does."""
    v1 = catalog.get("v1")
    request = {
        "index_provider": serialize_provider(IndexProvider()),
        "cutover_provider": serialize_provider(CutoverProvider()),
        "index": index_props(stack, v1),
        "cutover": cutover_props(stack, v1, "blue"),
    }
    done = subprocess.run(
        [sys.executable, "-c", FRESH_INTERPRETER],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    name = stack.opensearch.index_name("v1")
    assert result == {
        "id": name,
        "doc_count": CORPUS_SIZE,
        "unchanged": False,
        "wider": ["dimension"],
        "pointer": stack.pointer_name,
        "alias_targets": [name],
        "flip": [True, []],
        "refused": "GuardRefused",
    }
    # The fresh interpreter's cutover is visible here: same servers, same live state.
    assert index.alias_targets(opensearch, stack.opensearch.alias_name) == [name]
