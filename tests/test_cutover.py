"""The coupled cutover against the real OpenSearch and moto: one atomic alias swap + the live pointer."""

from __future__ import annotations

import socket
import threading

import boto3
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ReadTimeoutError
from opensearchpy import helpers

from lockstep.errors import IntegrityError, Unreachable, UsageError
from lockstep.models.hashgram import SPECS, build_artifact, load_artifact
from lockstep.ops import index as ix
from lockstep.ops import live_state
from lockstep.ops.corpus import stdlib_documents


@pytest.fixture
def cleanup(opensearch, unique):
    yield
    opensearch.indices.delete(index=f"{unique}*", params={"expand_wildcards": "all", "ignore_unavailable": "true"})


@pytest.fixture
def two_versions(opensearch, make_settings, catalog, cleanup):
    """v1 and v2 indices (same dimension, different spaces), each filled by its own model."""
    settings = make_settings(pin="v1", slots={"blue": "v1", "green": "v2"})
    documents = stdlib_documents(40)
    for version in ("v1", "v2"):
        entry = catalog.get(version)
        ix.ensure_index(opensearch, settings, entry)
        embedder = load_artifact(build_artifact(SPECS[version]), entry.artifact_sha256)
        vectors = embedder.encode([d.text for d in documents])
        helpers.bulk(
            opensearch,
            (
                {
                    "_index": settings.opensearch.index_name(version),
                    "_id": d.id,
                    "_source": {
                        "doc_id": d.id,
                        "text": d.text,
                        "model_version": version,
                        "content_sha256": d.content_sha256,
                        "embedding": vector.tolist(),
                    },
                }
                for d, vector in zip(documents, vectors)
            ),
            refresh=True,
        )
    return settings, documents


def endpoint(settings, version):
    return f"lockstep-{settings.stack}-{settings.slots.slot_of(version)}"


def closed_port_ssm():
    """A real boto3 SSM client aimed at a loopback port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return boto3.client(
        "ssm",
        region_name="us-east-1",
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=BotoConfig(retries={"max_attempts": 1}, connect_timeout=1),
    )


def live_now(opensearch, ssm, settings):
    pointer = live_state.read_pointer(ssm, settings.pointer_name)
    write_flags = opensearch.indices.get_alias(name=settings.opensearch.alias_name)
    return live_state.alias_targets(opensearch, settings.opensearch.alias_name), pointer, write_flags


def test_cutover_moves_alias_and_pointer_together(opensearch, ssm, catalog, two_versions):
    settings, _ = two_versions
    alias = settings.opensearch.alias_name
    for version in ("v1", "v2", "v1"):
        pointer = live_state.cutover(opensearch, ssm, settings, catalog.get(version), endpoint(settings, version))
        index = settings.opensearch.index_name(version)
        targets, stored, flags = live_now(opensearch, ssm, settings)
        assert targets == [index]
        assert flags[index]["aliases"][alias]["is_write_index"] is True
        assert stored == pointer
        assert (stored.version, stored.index, stored.endpoint, stored.artifact_sha256) == (
            version,
            index,
            endpoint(settings, version),
            catalog.get(version).artifact_sha256,
        )


def test_cutover_is_one_aliases_request_with_remove_and_add(opensearch, ssm, catalog, two_versions, monkeypatch):
    settings, _ = two_versions
    live_state.cutover(opensearch, ssm, settings, catalog.get("v1"), endpoint(settings, "v1"))
    sent = []
    real = opensearch.transport.perform_request

    def recording(method, url, *args, **kwargs):
        if url.endswith("/_aliases"):
            sent.append((method, kwargs.get("body")))
        return real(method, url, *args, **kwargs)

    monkeypatch.setattr(opensearch.transport, "perform_request", recording)
    live_state.cutover(opensearch, ssm, settings, catalog.get("v2"), endpoint(settings, "v2"))

    assert len(sent) == 1
    method, body = sent[0]
    assert method == "POST"
    assert body["actions"] == [
        {"remove": {"index": settings.opensearch.index_name("v1"), "alias": settings.opensearch.alias_name}},
        {
            "add": {
                "index": settings.opensearch.index_name("v2"),
                "alias": settings.opensearch.alias_name,
                "is_write_index": True,
            }
        },
    ]


def test_cutover_again_changes_nothing(opensearch, ssm, catalog, two_versions, monkeypatch):
    settings, _ = two_versions
    first = live_state.cutover(opensearch, ssm, settings, catalog.get("v2"), endpoint(settings, "v2"))
    writes = []
    monkeypatch.setattr(opensearch.indices, "update_aliases", lambda **kw: writes.append(kw))
    again = live_state.cutover(opensearch, ssm, settings, catalog.get("v2"), endpoint(settings, "v2"))
    assert again == first and writes == []
    assert live_state.read_pointer(ssm, settings.pointer_name).switched_at == first.switched_at


def test_cutover_repairs_a_stale_pointer_without_touching_the_alias(opensearch, ssm, catalog, two_versions):
    settings, _ = two_versions
    live_state.cutover(opensearch, ssm, settings, catalog.get("v2"), endpoint(settings, "v2"))
    live_state.write_pointer(ssm, settings.pointer_name, live_state.Pointer("v1", "x", "y", "z"))
    pointer = live_state.cutover(opensearch, ssm, settings, catalog.get("v2"), endpoint(settings, "v2"))
    assert live_state.read_pointer(ssm, settings.pointer_name) == pointer and pointer.version == "v2"
    ssm.put_parameter(Name=settings.pointer_name, Value="not json", Type="String", Overwrite=True)
    assert live_state.cutover(opensearch, ssm, settings, catalog.get("v2"), endpoint(settings, "v2")).version == "v2"
    assert live_state.read_pointer(ssm, settings.pointer_name).version == "v2"


def test_cutover_refuses_an_index_built_by_another_artifact(opensearch, ssm, make_settings, catalog, cleanup):
    settings = make_settings(pin="v1", slots={"blue": "v1", "green": "v2"})
    ix.ensure_index(opensearch, settings, catalog.get("v1"))
    ix.ensure_index(opensearch, settings, catalog.get("v2").model_copy(update={"space_type": "l2"}))
    live_state.cutover(opensearch, ssm, settings, catalog.get("v1"), endpoint(settings, "v1"))

    with pytest.raises(IntegrityError, match="space_type is 'l2', expected 'cosinesimil'"):
        live_state.cutover(opensearch, ssm, settings, catalog.get("v2"), endpoint(settings, "v2"))
    with pytest.raises(IntegrityError, match="does not exist"):
        live_state.cutover(opensearch, ssm, settings, catalog.get("v3"), "lockstep-x-green")

    targets, pointer, _ = live_now(opensearch, ssm, settings)
    assert targets == [settings.opensearch.index_name("v1")] and pointer.version == "v1"


def test_unreachable_ssm_puts_the_alias_back(opensearch, ssm, catalog, two_versions):
    settings, _ = two_versions
    live_state.cutover(opensearch, ssm, settings, catalog.get("v1"), endpoint(settings, "v1"))

    with pytest.raises(Unreachable) as error:
        live_state.cutover(opensearch, closed_port_ssm(), settings, catalog.get("v2"), endpoint(settings, "v2"))

    assert "alias" in str(error.value) and "restored" in str(error.value)
    assert "\n" not in str(error.value)
    targets, pointer, flags = live_now(opensearch, ssm, settings)
    v1 = settings.opensearch.index_name("v1")
    assert targets == [v1] and flags[v1]["aliases"][settings.opensearch.alias_name]["is_write_index"] is True
    assert pointer.version == "v1" and pointer.index == v1


def test_a_pointer_write_whose_answer_was_lost_but_landed_completes_the_cutover(
    opensearch, ssm, catalog, two_versions, monkeypatch
):
    """SSM wrote the pointer, its answer was lost (a read timeout): putting the alias back would
    leave alias and pointer apart. The pointer is read back; it landed, so the cutover is done."""
    settings, _ = two_versions
    live_state.cutover(opensearch, ssm, settings, catalog.get("v1"), endpoint(settings, "v1"))
    real = live_state.write_pointer

    def answer_lost(client, name, pointer):
        real(client, name, pointer)
        raise ReadTimeoutError(endpoint_url="https://ssm.example")

    monkeypatch.setattr(live_state, "write_pointer", answer_lost)
    done = live_state.cutover(opensearch, ssm, settings, catalog.get("v2"), endpoint(settings, "v2"))
    targets, pointer, _ = live_now(opensearch, ssm, settings)
    assert pointer == done and targets == [pointer.index] == [settings.opensearch.index_name("v2")]


def test_rejected_pointer_name_puts_the_alias_back(opensearch, ssm, make_settings, catalog, unique, two_versions):
    settings, _ = two_versions
    live_state.cutover(opensearch, ssm, settings, catalog.get("v1"), endpoint(settings, "v1"))
    # A name SSM refuses to write (the stack file's validation refuses this one before any write;
    # the settings are built past it so the write itself is refused, as SSM refuses for other reasons).
    flipped = make_settings(pin="v2", slots={"blue": "v1", "green": "v2"})
    reserved = flipped.model_copy(update={"pointer_parameter": f"/aws/{unique}/live"})

    with pytest.raises(UsageError, match="restored to " + settings.opensearch.index_name("v1")):
        live_state.cutover(opensearch, ssm, reserved, catalog.get("v2"), endpoint(settings, "v2"))

    assert live_state.alias_targets(opensearch, settings.opensearch.alias_name) == [
        settings.opensearch.index_name("v1")
    ]
    assert live_state.read_pointer(ssm, settings.pointer_name).version == "v1"


def test_failed_first_cutover_leaves_no_alias(opensearch, catalog, two_versions):
    settings, _ = two_versions
    with pytest.raises(Unreachable, match="restored to no index"):
        live_state.cutover(opensearch, closed_port_ssm(), settings, catalog.get("v1"), endpoint(settings, "v1"))
    assert live_state.alias_targets(opensearch, settings.opensearch.alias_name) == []


def test_queries_during_200_cutovers_each_answer_from_one_index(opensearch, ssm, catalog, two_versions):
    settings, documents = two_versions
    alias = settings.opensearch.alias_name
    indices = {settings.opensearch.index_name(v) for v in ("v1", "v2")}
    query_vector = load_artifact(build_artifact(SPECS["v1"])).encode([documents[0].text])[0].tolist()
    live_state.cutover(opensearch, ssm, settings, catalog.get("v1"), endpoint(settings, "v1"))
    done = threading.Event()
    answered_from: list[set[str]] = []
    errors: list[BaseException] = []

    def query():
        while not done.is_set():
            try:
                response = opensearch.search(
                    index=alias,
                    body={
                        "size": 10,
                        "_source": False,
                        "query": {"knn": {"embedding": {"vector": query_vector, "k": 10}}},
                    },
                )
                answered_from.append({hit["_index"] for hit in response["hits"]["hits"]})
            except Exception as exc:  # every failure is a finding, whatever its type
                errors.append(exc)

    reader = threading.Thread(target=query)
    reader.start()
    try:
        for round_ in range(200):
            version = "v2" if round_ % 2 == 0 else "v1"
            live_state.cutover(opensearch, ssm, settings, catalog.get(version), endpoint(settings, version))
    finally:
        done.set()
        reader.join(timeout=30)

    assert errors == []
    assert len(answered_from) > 50
    assert all(len(sources) == 1 for sources in answered_from)
    assert set().union(*answered_from) == indices  # the reader saw both sides of the flips
    assert live_state.alias_targets(opensearch, alias) == [settings.opensearch.index_name("v1")]
    assert live_state.read_pointer(ssm, settings.pointer_name).version == "v1"
