"""Index lifecycle against the real OpenSearch (k-NN) and moto: mapping, `_meta`, inventory, retention."""

from __future__ import annotations

import pytest
from opensearchpy import helpers

from lockstep.errors import GuardRefused, IntegrityError, UsageError
from lockstep.ops import check, live_state
from lockstep.ops import index as ix


@pytest.fixture
def cleanup(opensearch, unique):
    yield
    opensearch.indices.delete(index=f"{unique}*", params={"expand_wildcards": "all", "ignore_unavailable": "true"})


def load(opensearch, index: str, docs: dict[str, tuple[str, str]]) -> None:
    """docs: {id: (model_version, content_sha256)}; no vectors needed for counting."""
    helpers.bulk(
        opensearch,
        (
            {
                "_index": index,
                "_id": doc_id,
                "_source": {"doc_id": doc_id, "text": doc_id, "model_version": version, "content_sha256": sha},
            }
            for doc_id, (version, sha) in docs.items()
        ),
        refresh=True,
    )


def test_index_has_the_versions_knn_mapping_and_meta(opensearch, make_settings, catalog, cleanup):
    settings = make_settings(opensearch={"hnswM": 24, "efConstruction": 64})
    entry = catalog.get("v3")

    assert ix.ensure_index(opensearch, settings, entry) is True

    index = settings.opensearch.index_name("v3")
    mapping = opensearch.indices.get_mapping(index=index)[index]["mappings"]
    vector = mapping["properties"]["embedding"]
    assert vector["type"] == "knn_vector" and vector["dimension"] == 128
    assert vector["method"] == {
        "name": "hnsw",
        "engine": "lucene",
        "space_type": "l2",
        "parameters": {"m": 24, "ef_construction": 64},
    }
    assert {
        name: mapping["properties"][name]["type"] for name in ("doc_id", "model_version", "content_sha256", "text")
    } == {"doc_id": "keyword", "model_version": "keyword", "content_sha256": "keyword", "text": "text"}
    assert mapping["dynamic"] == "strict"
    meta = mapping["_meta"]
    assert {
        k: meta[k] for k in ("model", "version", "artifact_sha256", "dimension", "space_type", "engine", "corpus")
    } == {
        "model": "hashgram",
        "version": "v3",
        "artifact_sha256": entry.artifact_sha256,
        "dimension": 128,
        "space_type": "l2",
        "engine": "lucene",
        "corpus": f"s3://{settings.corpus.bucket}/corpus/docs.jsonl",
    }
    assert meta["built_at"].endswith("Z")
    index_settings = opensearch.indices.get_settings(index=index)[index]["settings"]["index"]
    assert (index_settings["knn"], index_settings["number_of_shards"], index_settings["number_of_replicas"]) == (
        "true",
        "1",
        "0",
    )

    # Same entry again: nothing to do, even though built_at would differ.
    assert ix.ensure_index(opensearch, settings, entry) is False
    assert ix.read_meta(opensearch, index)["built_at"] == meta["built_at"]


def test_index_built_by_another_artifact_is_refused_by_key(opensearch, make_settings, catalog, cleanup):
    settings = make_settings()
    entry = catalog.get("v1")
    impostor = entry.model_copy(update={"artifact_sha256": "0" * 64})
    ix.ensure_index(opensearch, settings, impostor)

    with pytest.raises(IntegrityError) as error:
        ix.ensure_index(opensearch, settings, entry)
    message = str(error.value)
    assert "artifact_sha256 is '" + "0" * 64 + "'" in message and entry.artifact_sha256 in message
    assert "dimension" not in message and "\n" not in message
    with pytest.raises(IntegrityError, match="artifact_sha256"):
        ix.verify_meta(opensearch, settings, entry)
    # The index was not touched or reused.
    assert ix.read_meta(opensearch, settings.opensearch.index_name("v1"))["artifact_sha256"] == "0" * 64


def test_a_cluster_at_its_shard_limit_is_named_not_blamed_on_the_prefix(opensearch, make_settings, catalog, cleanup):
    """OpenSearch refuses a new index when the cluster is at its shard limit (a 400
    validation_exception): the line says so and how to make room, not "fix opensearch.indexPrefix"."""
    settings = make_settings(opensearch={"shards": 2})  # 2 shards: more than the limit, whatever else is open
    limit = {"transient": {"cluster.max_shards_per_node": 1}}
    opensearch.cluster.put_settings(body=limit)
    try:
        with pytest.raises(UsageError) as refused:
            ix.ensure_index(opensearch, settings, catalog.get("v1"))
    finally:
        opensearch.cluster.put_settings(body={"transient": {"cluster.max_shards_per_node": None}})
    message = str(refused.value)
    assert "validation_exception" in message and "the cluster refused a new index" in message
    assert "indexPrefix" not in message and "\n" not in message
    assert ix.read_meta(opensearch, settings.opensearch.index_name("v1")) is None


def test_strict_mapping_rejects_fields_outside_the_contract(opensearch, make_settings, catalog, cleanup):
    settings = make_settings()
    ix.ensure_index(opensearch, settings, catalog.get("v1"))
    from opensearchpy.exceptions import RequestError

    with pytest.raises(RequestError, match="strict_dynamic_mapping_exception"):
        opensearch.index(index=settings.opensearch.index_name("v1"), body={"doc_id": "a", "vector2": [1]})


def test_index_name_opensearch_rejects_is_one_usage_line(opensearch, make_settings, catalog, unique, cleanup):
    # The config accepts the prefix (<= 201 characters) but prefix + version passes 255 bytes.
    settings = make_settings(opensearch={"indexPrefix": unique + "x" * 190})
    entry = catalog.get("v1").model_copy(update={"version": "v1-" + "long" * 15})
    with pytest.raises(UsageError) as error:
        ix.ensure_index(opensearch, settings, entry)
    message = str(error.value)
    assert "invalid_index_name_exception" in message and "too long" in message
    assert "\n" not in message and len(message) < 400
    assert opensearch.indices.get(index=f"{unique}*") == {}


def test_dimension_the_engine_rejects_is_one_usage_line(opensearch, make_settings, catalog, cleanup):
    settings = make_settings()
    entry = catalog.get("v1").model_copy(update={"dimension": 20_000})
    with pytest.raises(UsageError) as error:
        ix.ensure_index(opensearch, settings, entry)
    assert "Dimension value cannot be greater than 16000" in str(error.value)
    assert "\n" not in str(error.value)
    assert ix.read_meta(opensearch, settings.opensearch.index_name("v1")) is None


def test_inventory_counts_per_model_version_and_ignores_foreign_indices(
    opensearch, ssm, make_settings, catalog, unique, cleanup
):
    settings = make_settings()
    for version in ("v1", "v2"):
        ix.ensure_index(opensearch, settings, catalog.get(version))
    v1, v2 = (settings.opensearch.index_name(v) for v in ("v1", "v2"))
    # v1's index holds two documents written by v2: the mixed state a rollback must catch.
    load(opensearch, v1, {"a": ("v1", "s1"), "b": ("v1", "s2"), "c": ("v2", "s3"), "d": ("v2", "s4")})
    load(opensearch, v2, {"a": ("v2", "s1")})
    opensearch.indices.create(index=f"{unique}-other-v1")  # matches the prefix pattern, not a version
    live_state.cutover(opensearch, ssm, settings, catalog.get("v1"), endpoint="lockstep-x-blue")

    found = live_state.inventory(opensearch, ssm, settings, catalog)

    assert sorted(found.indices) == ["v1", "v2"]
    assert found.indices["v1"].doc_count == 4
    assert found.indices["v1"].count_by_model_version == {"v1": 2, "v2": 2}
    assert found.indices["v2"].count_by_model_version == {"v2": 1}
    assert found.indices["v1"].aliases == (settings.opensearch.alias_name,)
    assert found.indices["v2"].meta["version"] == "v2"
    assert found.alias_targets == [v1]
    assert found.pointer.version == "v1" and found.pointer.index == v1


def test_retention_keeps_live_slot_retained_and_aliased_indices(
    opensearch, ssm, make_settings, catalog, unique, cleanup
):
    settings = make_settings(pin="v1", slots={"blue": "v1", "green": "v2"}, retain=[])
    old = catalog.get("v1").model_copy(update={"version": "v0"})  # left the catalog entirely
    for entry in (catalog.get("v1"), catalog.get("v2"), catalog.get("v3"), old):
        ix.ensure_index(opensearch, settings, entry)
    live_state.cutover(opensearch, ssm, settings, catalog.get("v1"), endpoint="lockstep-x-blue")
    opensearch.indices.put_alias(index=settings.opensearch.index_name("v0"), name=f"{unique}-audit")
    found = live_state.inventory(opensearch, ssm, settings, catalog)
    assert sorted(found.indices) == ["v0", "v1", "v2", "v3"]

    assert live_state.droppable(settings, found) == ["v3"]
    for version, reason in (("v1", "live pin"), ("v2", "green slot"), ("v0", f"alias {unique}-audit")):
        with pytest.raises(GuardRefused, match=reason):
            live_state.drop_index(opensearch, settings, version, found)
    retaining = make_settings(pin="v1", slots={"blue": "v1", "green": "v2"}, retain=["v3"])
    assert live_state.droppable(retaining, found) == []
    with pytest.raises(GuardRefused, match="retained"):
        live_state.drop_index(opensearch, retaining, "v3", found)

    assert live_state.drop_index(opensearch, settings, "v3", found) is True
    remaining = live_state.inventory(opensearch, ssm, settings, catalog)
    assert sorted(remaining.indices) == ["v0", "v1", "v2"]
    assert live_state.drop_index(opensearch, settings, "v3", remaining) is False


def test_drop_rereads_aliases_instead_of_trusting_a_stale_inventory(opensearch, ssm, make_settings, catalog, cleanup):
    settings = make_settings(pin="v1", slots={"blue": "v1", "green": "v2"})
    for version in ("v1", "v2", "v3"):
        ix.ensure_index(opensearch, settings, catalog.get(version))
    stale = live_state.inventory(opensearch, ssm, settings, catalog)  # taken before anything was aliased
    # Someone points the live alias at v3 after the inventory was taken.
    opensearch.indices.put_alias(index=settings.opensearch.index_name("v3"), name=settings.opensearch.alias_name)
    assert live_state.droppable(settings, stale) == ["v3"]
    with pytest.raises(GuardRefused, match="alias"):
        live_state.drop_index(opensearch, settings, "v3", stale)
    assert opensearch.indices.exists(index=settings.opensearch.index_name("v3"))


def test_doc_hashes_and_bulk_mode(opensearch, make_settings, catalog, cleanup):
    settings = make_settings(opensearch={"replicas": 1})
    ix.ensure_index(opensearch, settings, catalog.get("v1"))
    index = settings.opensearch.index_name("v1")
    docs = {f"d{i}": ("v1", f"sha{i}") for i in range(2500)}  # more than one scroll page
    load(opensearch, index, docs)

    assert ix.doc_hashes(opensearch, index) == {doc_id: sha for doc_id, (_, sha) in docs.items()}

    ix.set_bulk_mode(opensearch, index, True)
    loading = opensearch.indices.get_settings(index=index)[index]["settings"]["index"]
    assert (loading["refresh_interval"], loading["number_of_replicas"]) == ("-1", "0")
    with pytest.raises(UsageError):
        ix.set_bulk_mode(opensearch, index, False)
    ix.set_bulk_mode(opensearch, index, False, settings)
    restored = opensearch.indices.get_settings(index=index)[index]["settings"]["index"]
    assert "refresh_interval" not in restored and restored["number_of_replicas"] == "1"


def test_pointer_json_round_trip_and_malformed_pointer(ssm, unique):
    pointer = live_state.Pointer("v2", "lockstep-s-green", "docs-v2", "a" * 64, "2026-01-01T00:00:00Z")
    assert live_state.Pointer.from_json(pointer.to_json()) == pointer
    name = f"/{unique}/live"
    assert live_state.read_pointer(ssm, name) is None
    live_state.write_pointer(ssm, name, pointer)
    assert live_state.read_pointer(ssm, name) == pointer
    ssm.put_parameter(Name=name, Value='{"version": "v2"}', Type="String", Overwrite=True)
    with pytest.raises(IntegrityError, match="KeyError"):
        live_state.read_pointer(ssm, name)


def test_inventory_of_an_empty_stack(opensearch, ssm, make_settings, catalog):
    found = live_state.inventory(opensearch, ssm, make_settings(), catalog)
    assert (found.indices, found.alias_targets, found.pointer) == ({}, [], None)


def test_an_index_of_another_stack_with_the_same_prefix_is_never_adopted_moved_or_dropped(
    opensearch, ssm, make_settings, catalog, cleanup
):
    """prod and staging on one cluster, both with this indexPrefix: prod's warm standby v2 (no
    alias) is, to staging, an index its config does not keep. Nothing of staging's touches it."""
    prod = make_settings(stack="prod", pin="v1", slots={"blue": "v1", "green": "v2"})
    staging = make_settings(stack="staging", pin="v3", slots={"blue": "v3", "green": None}, retain=[])
    for version in ("v1", "v2"):
        ix.ensure_index(opensearch, prod, catalog.get(version))
    live_state.cutover(opensearch, ssm, prod, catalog.get("v1"), endpoint="lockstep-prod-blue")
    v1, v2 = (prod.opensearch.index_name(v) for v in ("v1", "v2"))
    assert ix.read_meta(opensearch, v2)["stack"] == "prod"

    with pytest.raises(
        IntegrityError, match=f"index {v1} belongs to stack prod .*not staging.*own opensearch.indexPrefix"
    ):
        live_state.inventory(opensearch, ssm, staging, catalog)
    with pytest.raises(IntegrityError, match="belongs to stack prod"):
        ix.ensure_index(opensearch, staging, catalog.get("v2"))  # adopting it
    with pytest.raises(GuardRefused, match="belongs to stack prod"):
        live_state.drop_index(opensearch, staging, "v2", live_state.Inventory())
    assert (
        live_state.drop_named_index(opensearch, staging, "v2", v2, None, True)
        == "it belongs to stack prod (its _meta.stack)"
    )
    with pytest.raises(IntegrityError, match="belongs to stack prod"):  # not "delete it", as for a misbuilt one
        check.refuse_misbuilt_indices(opensearch, staging, catalog, ["v2"])
    # staging's own v3 is built, but the shared alias is not taken off prod's live index.
    assert ix.ensure_index(opensearch, staging, catalog.get("v3")) is True
    with pytest.raises(
        IntegrityError, match=f"alias {prod.opensearch.alias_name} \\(on index {v1}\\) belongs to stack prod"
    ):
        live_state.cutover(opensearch, ssm, staging, catalog.get("v3"), endpoint="lockstep-staging-blue")

    assert live_state.alias_targets(opensearch, prod.opensearch.alias_name) == [v1]
    assert opensearch.indices.exists(index=v2)
    assert ix.ensure_index(opensearch, prod, catalog.get("v2")) is False  # still prod's to use


def test_an_index_built_before_stacks_were_recorded_counts_as_the_reading_stacks(
    opensearch, ssm, make_settings, catalog, cleanup
):
    settings = make_settings(pin="v1", slots={"blue": "v1", "green": None}, retain=[])
    ix.ensure_index(opensearch, settings, catalog.get("v2"))
    index = settings.opensearch.index_name("v2")
    meta = ix.read_meta(opensearch, index)
    opensearch.indices.put_mapping(index=index, body={"_meta": {k: v for k, v in meta.items() if k != "stack"}})
    assert "stack" not in ix.read_meta(opensearch, index)

    assert ix.ensure_index(opensearch, settings, catalog.get("v2")) is False  # adopted as it is
    found = live_state.inventory(opensearch, ssm, settings, catalog)
    assert live_state.droppable(settings, found) == ["v2"]
    assert live_state.drop_index(opensearch, settings, "v2", found) is True
