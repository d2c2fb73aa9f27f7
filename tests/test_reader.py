"""Issue #25: `lockstep.reader` never returns hits from an index other than the one its pointer
named — across a cutover in the middle of a query (deterministic: the `between` hook runs the
cutover after the pointer was read and the query encoded), a cached pointer whose index was
dropped (re-read once, retried), an endpoint that serves another artifact than the pointer names,
a pointer naming an alias, and a pointer that cannot be read (one error, no search at all).
Real OpenSearch, moto's SSM and the stack's real endpoint processes; no timing anywhere.
"""

from __future__ import annotations

import json

import pytest
from conftest import deploy

from lockstep import config, derived, reader
from lockstep.errors import Unreachable, UsageError
from lockstep.ops import check, clients, endpoints, live_state

SIZE = 40


@pytest.fixture(scope="module")
def deployment(servers, tmp_path_factory):
    """v1 live in blue, v2 warm in green (both indices built, both endpoints serving)."""
    yield from deploy(tmp_path_factory, corpus={"size": SIZE})


@pytest.fixture
def live(deployment):
    """The deployment with v1 live again after each test (tests move the pointer and the alias)."""
    yield deployment
    cut_over(deployment, "v1")


def cut_over(deployment, version: str) -> live_state.Pointer:
    settings = deployment.settings
    endpoint = endpoints.endpoint_name(settings, settings.slots.slot_of(version))
    return live_state.cutover(
        clients.opensearch(), clients.aws("ssm"), settings, deployment.catalog.get(version), endpoint
    )


def write_pointer(deployment, **fields) -> None:
    ssm = clients.aws("ssm")
    current = live_state.read_pointer(ssm, deployment.settings.pointer_name)
    assert current is not None
    live_state.write_pointer(
        ssm, deployment.settings.pointer_name, live_state.Pointer(**{**current.__dict__, **fields})
    )


def query_text(deployment) -> str:
    return deployment.documents()[0].text


def indices_of(answer: reader.Answer) -> set[str]:
    return {hit["_index"] for hit in answer.hits}


def searches(monkeypatch, target) -> list[str]:
    """The index (or alias) of every search `target` (an OpenSearch client) sends from now on."""
    sent: list[str] = []
    real = target.search

    def spy(index, body, **kwargs):
        sent.append(index)
        return real(index=index, body=body, **kwargs)

    monkeypatch.setattr(target, "search", spy)
    return sent


def test_answers_from_the_pointers_index_by_name(live, monkeypatch):
    settings = live.settings
    subject = reader.Reader(settings, ttl=0)
    sent = searches(monkeypatch, subject.client)
    answer = subject.search(query_text(live), k=5)
    assert (answer.version, answer.index) == ("v1", settings.opensearch.index_name("v1"))
    assert answer.hits and indices_of(answer) == {answer.index}
    assert sent == [answer.index], "searched by the index's own name, never the alias"
    assert answer.hits[0]["_id"] == live.documents()[0].id


def test_cutover_between_pointer_read_and_search(live):
    """The alias and the pointer move to v2 after the reader read the pointer (v1) and encoded the
    query with v1's endpoint: the answer still comes from v1's index, all of it. The same v1 vector
    through the alias at that moment is answered by v2's index — the mixed answer a reader avoids."""
    settings = live.settings
    through_alias: list[set[str]] = []

    def cutover_now(pointer: live_state.Pointer) -> None:
        assert pointer.version == "v1"
        cut_over(live, "v2")
        vector = endpoints.endpoint_for(settings, "blue").embed([query_text(live)])[0]
        body = {"size": 5, "_source": False, "query": {"knn": {"embedding": {"vector": vector.tolist(), "k": 100}}}}
        hits = clients.opensearch().search(index=settings.opensearch.alias_name, body=body)["hits"]["hits"]
        through_alias.append({hit["_index"] for hit in hits})

    answer = reader.Reader(settings, ttl=0, between=cutover_now).search(query_text(live), k=5)
    assert through_alias == [{settings.opensearch.index_name("v2")}], "the cutover happened mid-query"
    assert answer.version == "v1" and indices_of(answer) == {settings.opensearch.index_name("v1")}
    after = reader.Reader(settings, ttl=0).search(query_text(live), k=5)
    assert after.version == "v2" and indices_of(after) == {settings.opensearch.index_name("v2")}


def test_endpoint_serving_another_artifact_is_refused_after_one_reread(live, monkeypatch):
    """The pointer names blue (v1), but what encodes answers with v2's artifact (as a slot
    redeployed behind a stale pointer would): re-read once, still wrong → refused, nothing searched."""
    settings = live.settings
    green = endpoints.endpoint_for(settings, "green")
    subject = reader.Reader(settings, ttl=0, encoder_for=lambda pointer: green)
    sent = searches(monkeypatch, subject.client)
    with pytest.raises(reader.StaleReading, match="answered with artifact"):
        subject.search(query_text(live))
    assert subject.cache.reads == 2 and sent == []


@pytest.mark.parametrize("ttl", [-1, 61, float("nan"), "2", True])
def test_a_ttl_outside_0_to_60_seconds_is_refused_by_reader_and_writer(live, ttl):
    """A reader caching the pointer for an hour would answer from the version a rollback left for
    an hour: the reader and the derived writer refuse such a ttl (one line naming the range)."""
    store = config.DerivedStore(name="related", kind="related-documents", table="unused")
    with_store = live.settings.model_copy(update={"derived": (store,)})
    with pytest.raises(UsageError, match=r"ttl=.*seconds from 0 to 60"):
        reader.Reader(live.settings, ttl=ttl)
    with pytest.raises(UsageError, match=r"ttl=.*seconds from 0 to 60"):
        derived.Writer(with_store, "related", "v1", ttl=ttl)


def test_pointer_naming_an_alias_is_refused(live):
    """Every hit's `_index` is verified: a pointer naming the alias instead of an index is refused."""
    write_pointer(live, index=live.settings.opensearch.alias_name)
    with pytest.raises(reader.IntegrityError, match="must name a concrete index"):
        reader.Reader(live.settings, ttl=0).search(query_text(live))


@pytest.mark.parametrize("damage", ["missing", "malformed", "null-index", "unreachable"])
def test_unreadable_pointer_is_one_error_without_alias_fallback(live, monkeypatch, damage):
    settings, text = live.settings, query_text(live)
    ssm = clients.aws("ssm")
    if damage == "missing":
        ssm.delete_parameter(Name=settings.pointer_name)
    elif damage == "malformed":
        ssm.put_parameter(Name=settings.pointer_name, Value="{not json", Type="String", Overwrite=True)
    elif damage == "null-index":  # names no index at all (not an index called "None")
        pointer = json.loads(ssm.get_parameter(Name=settings.pointer_name)["Parameter"]["Value"])
        value = json.dumps({**pointer, "index": None})
        ssm.put_parameter(Name=settings.pointer_name, Value=value, Type="String", Overwrite=True)
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    subject = reader.Reader(settings, ttl=0)
    sent = searches(monkeypatch, subject.client)
    with pytest.raises(reader.PointerUnreadable) as raised:
        subject.search(text)
    message = str(raised.value)
    assert settings.pointer_name in message and "does not fall back to the alias" in message
    assert "\n" not in message and sent == []


def test_check_recall_goes_through_the_reader(live, monkeypatch):
    """The check's recall probe asks the reader: its searches name the pointer's index."""
    subject_searches: list[str] = []
    real = reader.Reader._knn

    def spy(self, pointer, vector, k, source):
        subject_searches.append(pointer.index)
        return real(self, pointer, vector, k, source)

    monkeypatch.setattr(reader.Reader, "_knn", spy)
    record = check.run(live.settings, live.catalog)
    assert record.passed, [(c.name, c.observed) for c in record.failures]
    assert subject_searches and set(subject_searches) == {live.settings.opensearch.index_name("v1")}


def test_cached_pointer_of_a_dropped_index_rereads_once(live):
    """Last in the module: it deletes v2's index. A reader caches the pointer to v2; a later cutover
    goes back to v1 and v2's index is dropped; the next query finds the index gone, reads the
    pointer again (once) and is answered by v1's index."""
    settings = live.settings
    clock = [0.0]
    subject = reader.Reader(settings, ttl=60, clock=lambda: clock[0])
    cut_over(live, "v2")
    assert subject.search(query_text(live)).version == "v2"
    cut_over(live, "v1")
    clients.opensearch().indices.delete(index=settings.opensearch.index_name("v2"))
    answer = subject.search(query_text(live))
    assert answer.version == "v1" and indices_of(answer) == {settings.opensearch.index_name("v1")}
    assert subject.cache.reads == 2


class Unreached:
    """An endpoint client built while its slot was elsewhere: every call fails to connect."""

    served_artifact = None

    def embed(self, texts):
        raise endpoints.NoProcess("nothing listens where this client was built to call")


def test_an_endpoint_client_that_cannot_reach_its_slot_is_built_again_once(live):
    """A local slot restarted on another port (a redeploy, `services down/up`) leaves a kept
    client calling the old one: it is built again and the query answered, not failed for good."""
    settings = live.settings
    built: list[str] = []

    def encoder_for(pointer):
        built.append(pointer.endpoint)
        return Unreached() if len(built) == 1 else endpoints.endpoint_for(settings, "blue")

    subject = reader.Reader(settings, ttl=0, encoder_for=encoder_for)
    answer = subject.search(query_text(live), k=5)
    assert answer.version == "v1" and indices_of(answer) == {settings.opensearch.index_name("v1")}
    assert len(built) == 2
    subject.search(query_text(live), k=5)
    assert len(built) == 2, "kept while it works"

    always = reader.Reader(settings, ttl=0, encoder_for=lambda pointer: built.append("x") or Unreached())
    with pytest.raises(endpoints.NoProcess):
        always.search(query_text(live))
    assert built.count("x") == 2, "built again once, then the failure is said"


def test_an_endpoint_client_is_built_again_after_a_cutover(live):
    """Between two cutovers its slot may have been redeployed (a new process, a new port)."""
    settings = live.settings
    built: list[str] = []

    def encoder_for(pointer):
        built.append(pointer.endpoint)
        return endpoints.endpoint_for(settings, settings.slots.slot_of(pointer.version))

    subject = reader.Reader(settings, ttl=0, encoder_for=encoder_for)
    subject.search(query_text(live))
    subject.search(query_text(live))
    write_pointer(live, switched_at="2999-01-01T00:00:00Z")  # cut over away and back: v1 again, switched since
    assert subject.search(query_text(live)).version == "v1"
    blue = endpoints.endpoint_name(settings, "blue")
    assert built == [blue, blue]


def test_an_answer_from_part_of_the_index_is_refused_not_returned(live, monkeypatch):
    """A shard that could not answer (a node lost): the top k of the rest looks like an answer."""
    subject = reader.Reader(live.settings, ttl=0)
    real = subject.client.search

    def partial(index, body, **kwargs):
        answer = real(index=index, body=body, **kwargs)
        return {**answer, "_shards": {"total": 3, "successful": 2, "skipped": 0, "failed": 1}}

    monkeypatch.setattr(subject.client, "search", partial)
    with pytest.raises(Unreachable, match="read 2 of 3 shards; no partial answer is returned"):
        subject.search(query_text(live))


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        ({"timed_out": True}, "timed out: it holds what the shards found in time"),  # search.default_search_timeout
        ({"_shards": None}, "came back without its shard count"),
    ],
    ids=["timed-out", "no-shard-count"],
)
def test_an_answer_that_timed_out_or_cannot_say_it_is_whole_is_refused(live, monkeypatch, damage, said):
    """Every shard answered, yet a shard that ran out of time returned only what it found by then
    (`timed_out`, 0 failed); an answer without `_shards` cannot show it is whole."""
    subject = reader.Reader(live.settings, ttl=0)
    real = subject.client.search

    def damaged(index, body, **kwargs):
        answer = {**real(index=index, body=body, **kwargs), **damage}
        return {key: value for key, value in answer.items() if value is not None}

    monkeypatch.setattr(subject.client, "search", damaged)
    with pytest.raises(Unreachable, match=said):
        subject.search(query_text(live))
