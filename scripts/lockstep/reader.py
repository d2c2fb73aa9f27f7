"""`lockstep.reader`: the application's side of the read path — a reader that never mixes models.

A client that reads the live pointer (to pick the endpoint that encodes its query) and then
searches the alias can straddle a cutover: the alias moves first, the pointer follows, and a query
encoded by one model is answered from the other model's index — with same-dimension models,
silently wrong. `Reader` takes everything from ONE read of the pointer instead:

1. the pointer `{version, endpoint, index, artifact_sha256}` is read (through a cache of `ttl`
   seconds; 0 reads it for every query);
2. the query is encoded by the pointer's endpoint; when the endpoint says which artifact answered
   (a local slot's response header; on SageMaker, the image's CustomAttributes) it must be the
   pointer's, for every batch of the call;
3. the pointer's index is searched by its own name, never through the alias;
4. every hit's `_index` must be that index.

A cutover after step 1 cannot mix the answer: it comes from the version that encoded the query
(one cutover late at most, never mixed). A cached pointer whose index is gone (dropped after a
later cutover) or whose endpoint now serves another artifact is read again ONCE and the query
retried. A pointer that cannot be read is one clear error (`PointerUnreadable`): there is no
fallback to the alias. The protocol for other languages: docs/reader.md. Example:

    from lockstep import reader

    live = reader.reader("prod")                       # one per thread
    answer = live.search("how do I parse a date", k=10)
    answer.version, [hit["_id"] for hit in answer.hits]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from botocore.exceptions import BotoCoreError, ClientError
from opensearchpy.exceptions import NotFoundError

from lockstep import config
from lockstep.config import StackSettings
from lockstep.errors import IntegrityError, LockstepError, Unreachable
from lockstep.ops import clients, cluster, endpoints, live_state
from lockstep.ops.live_state import Pointer


class PointerUnreadable(Unreachable):
    """The live pointer is missing, malformed or cannot be fetched: the reader does not guess.
    `fetched`: SSM answered (the pointer is missing or malformed, an observation), as against
    SSM not answering (throttled, unreachable, credentials refused: nothing was observed)."""

    def __init__(self, message: str, *, fetched: bool):
        super().__init__(message)
        self.fetched = fetched


class StaleReading(LockstepError):
    """What a pointer named is no longer there (its index is gone, its endpoint serves another
    artifact) — after the one re-read the reader allows."""


class Encoder(Protocol):
    """What encodes queries: an endpoint client (`lockstep.ops.endpoints`) or anything alike."""

    served_artifact: str | None  # the artifact its last answer came from, when it says so

    def embed(self, texts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class Answer:
    """One query's answer, and the version that both encoded and answered it."""

    version: str
    index: str
    endpoint: str
    hits: list[dict]  # OpenSearch hits: _id, _score, _index (always `index`), _source when asked


class Reader:
    """Searches a stack's live version as its live pointer names it. Not thread-safe: one per thread.

    `encoder_for(pointer)` gives what encodes the query (default: the stack's endpoint client for
    the pointer's endpoint name). `between(pointer)` runs after the pointer was read and the query
    encoded, right before the search: the deterministic seam tests and benchmarks use.
    """

    def __init__(
        self,
        settings: StackSettings,
        *,
        ttl: float = live_state.DEFAULT_TTL,
        clock: Callable[[], float] = time.monotonic,
        encoder_for: Callable[[Pointer], Encoder] | None = None,
        between: Callable[[Pointer], None] | None = None,
    ):
        self.settings, self.between = settings, between
        self.encoder_for = encoder_for or self._stack_endpoint
        self.cache = live_state.PointerCache(settings, ttl, clock)
        self.client = clients.opensearch(settings.opensearch)
        self._last_read: Pointer | None = None
        self._encoders: dict[str, tuple[str, Encoder]] = {}  # endpoint: (the cutover it was built after, client)

    def search(self, text: str, k: int = 10, source: bool | list[str] = False) -> Answer:
        """The k nearest documents to `text` in the live version's index."""
        return self.search_many([text], k, source)[0]

    def search_many(self, texts: Sequence[str], k: int = 10, source: bool | list[str] = False) -> list[Answer]:
        """Each text's k nearest documents, all from one pointer: one encode call, one search each."""
        pointer = self.pointer()
        try:
            answers = self._answers(pointer, texts, k, source)
        except StaleReading:  # what the cached pointer named is gone: read again, once
            self.cache.forget()
            self._encoders = {}
            pointer = self.pointer()
            answers = self._answers(pointer, texts, k, source)
        self._last_read = pointer
        return answers

    @property
    def last_read(self) -> Pointer | None:
        """The pointer the last answers came from (None before the first answer)."""
        return self._last_read

    def pointer(self) -> Pointer:
        """The live pointer, read at most once per `ttl` seconds; raises PointerUnreadable."""
        name, stack = self.settings.pointer_name, self.settings.stack
        fallback = "the reader does not fall back to the alias"
        try:
            pointer = self.cache.live()
        except (LockstepError, ClientError, BotoCoreError) as exc:
            fetched = isinstance(exc, LockstepError) and not isinstance(exc, Unreachable)  # its content is bad
            raise PointerUnreadable(
                f"live pointer {name} could not be read ({exc}); {fallback}", fetched=fetched
            ) from None
        if pointer is None:
            self.cache.forget()  # the first deploy is seen by the next query, not a ttl later
            raise PointerUnreadable(
                f"live pointer {name} does not exist: nothing is live in stack {stack}; "
                f"deploy first (`lockstep apply --stack {stack}`); {fallback}",
                fetched=True,
            )
        return pointer

    def _answers(self, pointer: Pointer, texts: Sequence[str], k: int, source: bool | list[str]) -> list[Answer]:
        vectors, served = self._encode(pointer, texts)
        if served is not None and served != pointer.artifact_sha256:
            what = "vectors of more than one artifact" if served == endpoints.MIXED else f"artifact {served[:12]}…"
            raise StaleReading(
                f"endpoint {pointer.endpoint} answered with {what}, but the live pointer "
                f"{self.settings.pointer_name} names {pointer.version} (artifact {pointer.artifact_sha256[:12]}…): "
                f"the endpoint and the pointer disagree; run `lockstep check --stack {self.settings.stack}`"
            )
        if self.between is not None:
            self.between(pointer)
        return [
            Answer(pointer.version, pointer.index, pointer.endpoint, self._knn(pointer, v, k, source)) for v in vectors
        ]

    def _knn(self, pointer: Pointer, vector, k: int, source: bool | list[str]) -> list[dict]:
        """The k nearest in the pointer's index by name. The HNSW search looks at ≥ 100 candidates
        (lucene's k is its ef_search), then returns the top k."""
        body = {
            "size": k,
            "_source": source,
            "query": {"knn": {"embedding": {"vector": vector.tolist(), "k": max(k, 100)}}},
        }
        try:
            with clients.reaching("OpenSearch", clients.opensearch_url(self.settings.opensearch)):
                answer = self.client.search(index=pointer.index, body=body)
        except NotFoundError:
            raise StaleReading(
                f"index {pointer.index}, named by the live pointer {self.settings.pointer_name} ({pointer.version}), "
                f"does not exist; run `lockstep check --stack {self.settings.stack}`"
            ) from None
        cluster.refuse_partial(
            answer,
            f"a search of index {pointer.index}",
            "no partial answer is returned: try again when the cluster is whole",
        )
        hits = answer["hits"]["hits"]
        foreign = sorted({hit["_index"] for hit in hits} - {pointer.index})
        if foreign:
            raise IntegrityError(
                f"a search of index {pointer.index} ({pointer.version}) answered from {', '.join(foreign)}: "
                f"the pointer {self.settings.pointer_name} must name a concrete index, not an alias; "
                f"run `lockstep apply --stack {self.settings.stack}` to rewrite it"
            )
        return hits

    def _encode(self, pointer: Pointer, texts: Sequence[str]) -> tuple[np.ndarray, str | None]:
        """(vectors, the artifact that made them). An endpoint client is kept per endpoint until
        the next cutover; one that cannot reach its endpoint (a local slot restarted on another
        port since it was built) is built again, once, before the failure is said."""
        encoder = self._encoder(pointer)
        try:
            return encoder.embed(list(texts)), encoder.served_artifact
        except Unreachable:  # NotDeployed and NoProcess too
            del self._encoders[pointer.endpoint]
        encoder = self._encoder(pointer)
        return encoder.embed(list(texts)), encoder.served_artifact

    def _encoder(self, pointer: Pointer) -> Encoder:
        built_for, encoder = self._encoders.get(pointer.endpoint, (None, None))
        if encoder is None or built_for != pointer.switched_at:  # a cutover since: the slot may be redeployed
            encoder = self.encoder_for(pointer)
            self._encoders[pointer.endpoint] = (pointer.switched_at, encoder)
        return encoder

    def _stack_endpoint(self, pointer: Pointer) -> Encoder:
        for slot in endpoints.SLOTS:
            if endpoints.endpoint_name(self.settings, slot) == pointer.endpoint:
                return endpoints.endpoint_for(self.settings, slot)
        raise IntegrityError(
            f"live pointer {self.settings.pointer_name} names endpoint {pointer.endpoint}, which is neither slot "
            f"of stack {self.settings.stack}; run `lockstep apply --stack {self.settings.stack}` to rewrite it"
        )


def reader(stack: str, *, ttl: float = live_state.DEFAULT_TTL) -> Reader:
    """A reader of `stack` (its settings handed to the process in LOCKSTEP_STACK_SETTINGS, else
    stacks/Pulumi.<stack>.yaml)."""
    handed_over = config.settings_from_environment(stack)
    settings = handed_over[0] if handed_over else config.load_stack(stack)
    return Reader(settings, ttl=ttl)
