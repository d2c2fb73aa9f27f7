"""What is live and what the stack keeps: the live alias, the live pointer, the cutover between
them, the inventory of the stack's indices, and which of them may be dropped.

The cutover is the one place where the live state changes: the alias moves in ONE `_aliases`
request (never remove-then-add in two calls), then the SSM pointer names the same version. If the
pointer cannot be written the alias goes back, so alias and pointer never stay apart. Before
either moves, each derived table's fence item is set to the new version (see `cutover`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import asdict, dataclass, field, replace

from botocore.exceptions import BotoCoreError, ClientError
from opensearchpy import OpenSearch
from opensearchpy.exceptions import HTTP_EXCEPTIONS, NotFoundError, RequestError, TransportError
from opensearchpy.exceptions import ConnectionError as OSConnectionError

from lockstep.config import Catalog, CatalogEntry, StackSettings
from lockstep.errors import GuardRefused, IntegrityError, LockstepError, Unreachable, UsageError
from lockstep.ops import clients, cluster, derived
from lockstep.ops.index import built_for, describe_error, now, one_line, other_stack, read_metas, shared_prefix
from lockstep.state import keep_reason

# Bucket name for documents without a `model_version` in the per-version counts.
NO_VERSION = "(none)"
# How long a cutover whose `_aliases` request failed in transit (the swap may or may not have
# been applied) keeps asking OpenSearch where the alias is, and how long restoring the alias
# after a failed pointer write keeps trying, before saying so.
SETTLE_SECONDS = 12.0


# ------------------------------------------------------------------------------ alias and pointer


def _alias_map(client: OpenSearch, alias: str) -> dict[str, bool]:
    """{index: is_write_index} for every index holding `alias`."""
    try:
        response = client.indices.get_alias(name=alias)
    except NotFoundError:
        return {}
    return {
        index: bool(body.get("aliases", {}).get(alias, {}).get("is_write_index", False))
        for index, body in response.items()
    }


def alias_targets(client: OpenSearch, alias: str) -> list[str]:
    return sorted(_alias_map(client, alias))


@dataclass(frozen=True)
class Pointer:
    """What is live, named together: the query embedder (endpoint) and the index it belongs to."""

    version: str
    endpoint: str
    index: str
    artifact_sha256: str
    switched_at: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Pointer:
        try:
            data = json.loads(text)
            named = {key: data[key] for key in ("version", "endpoint", "index", "artifact_sha256")}
            switched_at = data.get("switched_at") or ""
            unnamed = [key for key, value in named.items() if not (isinstance(value, str) and value.strip())]
            if unnamed:  # a null index is not an index named "None"
                raise ValueError(f"{', '.join(unnamed)} must be a non-empty string")
            if not isinstance(switched_at, str):
                raise ValueError("switched_at must be a string")
            return cls(**named, switched_at=switched_at)
        except (ValueError, TypeError, KeyError) as exc:
            raise IntegrityError(
                f"live pointer is not lockstep's JSON ({type(exc).__name__}: {one_line(exc)}); "
                "run `lockstep apply` to rewrite it"
            ) from None


def read_pointer(ssm, name: str) -> Pointer | None:
    try:
        value = ssm.get_parameter(Name=name)["Parameter"]["Value"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ParameterNotFound":
            return None
        raise
    return Pointer.from_json(value)


DEFAULT_TTL = 2.0  # seconds an application's reader or writer reuses the pointer it read
MAX_TTL = 60.0  # a longer cache would keep readers on the version a rollback left for longer than a minute


class PointerCache:
    """The live pointer, read at most once per `ttl` seconds (`clock`: seconds, monotonic): the
    one cache `lockstep.reader` and `lockstep.derived` read the pointer through."""

    def __init__(self, settings: StackSettings, ttl: float = DEFAULT_TTL, clock: Callable[[], float] = time.monotonic):
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 <= ttl <= MAX_TTL:
            raise UsageError(
                f"ttl={ttl!r}: the pointer cache takes seconds from 0 to {MAX_TTL:g} "
                f"(default {DEFAULT_TTL:g}; 0 reads the pointer for every call)"
            )
        self.settings, self.ttl, self.clock = settings, ttl, clock
        self.ssm = clients.aws_for(settings, "ssm")
        self.reads = 0
        self._pointer: Pointer | None = None
        self._read_at: float | None = None

    def live(self) -> Pointer | None:
        """The cached pointer, or a fresh read once `ttl` has passed (None: no pointer exists)."""
        now = self.clock()
        if self._read_at is None or now - self._read_at >= self.ttl:
            self._read_at = None  # a failed read leaves no answer behind: the next call asks again
            with clients.reaching_aws(self.settings, "SSM"):
                self._pointer = read_pointer(self.ssm, self.settings.pointer_name)
            self._read_at, self.reads = now, self.reads + 1
        return self._pointer

    def forget(self) -> None:
        """The next `live()` reads the pointer again, whatever the ttl."""
        self._read_at = None


def write_pointer(ssm, name: str, pointer: Pointer) -> None:
    ssm.put_parameter(Name=name, Value=pointer.to_json(), Type="String", Overwrite=True)


def retire_alias(client: OpenSearch, alias: str) -> None:
    """Remove `alias` (one the stack no longer uses) from every index it names, in one request."""
    targets = _alias_map(client, alias)
    if targets:
        _update_aliases(client, alias, [{"remove": {"index": name, "alias": alias}} for name in targets])


def cutover(client: OpenSearch, ssm, settings: StackSettings, entry: CatalogEntry, endpoint: str) -> Pointer:
    """Move the live alias and the live pointer to `entry`'s version together.

    The derived tables' fences (`lockstep.derived` writes only if the fence names the writer's
    version, in the same request) move FIRST: from that moment a writer of the old version is
    refused or quarantined, even if its pointer cache still names the old version. Fence first
    fails closed: until the pointer follows, the old version's writers are refused while
    readers still see it live — refused writes, never wrong ones. If the swap or the pointer write
    fails, the fences go back to whatever the pointer then names (or stay, failing closed).

    Idempotent: when the alias is already on the target only a stale pointer is rewritten, and
    the fences are written again (a plan whose fences differ from the pin plans this cutover).
    """
    alias = settings.opensearch.alias_name
    index = settings.opensearch.index_name(entry.version)
    before = _alias_map(client, alias)
    metas = read_metas(client, [index, *before])
    built_for(metas.get(index), settings, entry)
    for name in before:
        owner = other_stack(metas.get(name), settings)
        if owner:  # the alias serves another stack: moving it would take that stack's readers
            raise IntegrityError(shared_prefix(f"alias {alias} (on index {name})", owner, settings))
    target = Pointer(entry.version, endpoint, index, entry.artifact_sha256, now())
    if before == {index: True}:
        try:
            current = read_pointer(ssm, settings.pointer_name)
        except IntegrityError:  # malformed: rewriting it is the repair
            current = None
        # A pointer without a switch time is rewritten with one (promote reads it).
        if (
            current is not None
            and current.switched_at
            and replace(current, switched_at="") == replace(target, switched_at="")
        ):
            derived.write_fences(settings, current.version, current.switched_at)
            return current
        derived.write_fences(settings, target.version, target.switched_at)
        write_pointer(ssm, settings.pointer_name, target)
        return target

    actions: list[dict[str, dict]] = [{"remove": {"index": name, "alias": alias}} for name in before if name != index]
    actions.append({"add": {"index": index, "alias": alias, "is_write_index": True}})
    try:
        derived.write_fences(settings, target.version, target.switched_at)  # failing on a later table: put back
        try:
            _update_aliases(client, alias, actions)
        except TransportError as exc:
            if not _transient(exc):
                raise
            _after_swap_in_doubt(client, alias, index, before, settings.pointer_name, exc)
        try:
            write_pointer(ssm, settings.pointer_name, target)
        except (ClientError, BotoCoreError) as exc:
            if not _landed(ssm, settings.pointer_name, target, exc):
                _restore_alias(client, alias, index, before, settings.pointer_name, exc)
    except Exception:
        _fences_follow_pointer(ssm, settings)
        raise
    return target


def _fences_follow_pointer(ssm, settings: StackSettings) -> None:
    """After a failed cutover: fences back to the pointer's version, if it can be read (else they
    stay on the target: writers are refused, which is the safe side)."""
    if not settings.derived:
        return
    with suppress(LockstepError, ClientError, BotoCoreError):
        pointer = read_pointer(ssm, settings.pointer_name)
        if pointer is not None:
            derived.write_fences(settings, pointer.version, pointer.switched_at)


def _transient(exc: TransportError) -> bool:
    """Connection lost, timed out, or a 5xx/429: the request may or may not have been applied."""
    return isinstance(exc, OSConnectionError) or exc.status_code in (429, 500, 502, 503, 504)


def _patiently(call: Callable):
    """`call()`, retried with backoff on transient OpenSearch failures for SETTLE_SECONDS."""
    deadline, wait = time.monotonic() + SETTLE_SECONDS, 0.25
    while True:
        try:
            return call()
        except TransportError as exc:
            if not _transient(exc) or time.monotonic() + wait > deadline:
                raise
        time.sleep(wait)
        wait = min(wait * 2, 4.0)


def _where(client: OpenSearch) -> str:
    host = (client.transport.hosts or [{}])[0]
    return f"{host.get('scheme', 'http')}://{host.get('host', '?')}:{host.get('port', '?')}"


def _after_swap_in_doubt(
    client: OpenSearch, alias: str, index: str, before: dict[str, bool], pointer_name: str, cause: TransportError
) -> None:
    """The `_aliases` request failed in transit: it may have been applied with its answer lost.
    Ask OpenSearch where the alias is now. Applied: return, so the pointer follows. Not applied:
    nothing changed, say so. No answer: say exactly what may be split and how it converges."""
    try:
        now = _patiently(lambda: _alias_map(client, alias))
    except TransportError:
        now = None
    if now == {index: True}:
        return  # the swap went through; only its answer was lost
    where, was, why = _where(client), ", ".join(sorted(before)) or "no index", type(cause).__name__
    if now == before:
        raise Unreachable(
            f"OpenSearch at {where} failed during the alias swap ({why}); alias {alias} is still on "
            f"{was} and the live pointer {pointer_name} was not touched: nothing changed; rerun once it answers"
        )
    if now is None:
        raise Unreachable(
            f"OpenSearch at {where} went away during the alias swap ({why}) and did not answer for "
            f"{SETTLE_SECONDS:.0f} s: alias {alias} may already be on {index} while the live pointer {pointer_name} "
            "still names the previous version; once OpenSearch answers, rerun `lockstep apply` (it finishes the "
            "cutover; `lockstep check` shows where things are)"
        )
    raise LockstepError(
        f"alias {alias} moved to {', '.join(sorted(now)) or 'no index'} during the swap to {index} "
        "(another writer?); the live pointer was not touched: rerun `lockstep apply`"
    )


def _update_aliases(client: OpenSearch, alias: str, actions: list[dict]) -> None:
    try:
        client.indices.update_aliases(body={"actions": actions})
    except RequestError as exc:
        raise UsageError(
            f"alias {alias}: OpenSearch refused the swap ({describe_error(exc)}); "
            "an index may carry the alias' name: set opensearch.alias"
        ) from None


def _landed(ssm, name: str, target: Pointer, exc: Exception) -> bool:
    """A write whose answer was lost (a read timeout, the connection closed) may have landed:
    read the pointer back. True only when it reads as `target`."""
    if not isinstance(exc, BotoCoreError):
        return False  # SSM answered: it refused the write
    with suppress(ClientError, BotoCoreError, LockstepError):
        return read_pointer(ssm, name) == target
    return False


def _restore_alias(
    client: OpenSearch, alias: str, index: str, before: dict[str, bool], pointer_name: str, cause: Exception
) -> None:
    """Put the alias back where it was (one request) and raise, saying so."""
    actions: list[dict[str, dict]] = [] if index in before else [{"remove": {"index": index, "alias": alias}}]
    actions += [{"add": {"index": name, "alias": alias, "is_write_index": write}} for name, write in before.items()]
    was = ", ".join(sorted(before)) or "no index"
    why = one_line(cause)
    try:
        _patiently(lambda: client.indices.update_aliases(body={"actions": actions}))
    except TransportError as exc:
        raise LockstepError(
            f"live pointer {pointer_name} could not be written ({why}) and restoring alias {alias} "
            f"to {was} failed too ({describe_error(exc)}); alias and pointer disagree: rerun `lockstep apply`"
        ) from None
    message = f"live pointer {pointer_name} could not be written ({why}); alias {alias} was restored to {was}"
    if isinstance(cause, BotoCoreError):  # the write may have landed; reading it back failed too (_landed)
        raise Unreachable(
            f"{message}; the pointer could not be read back, so it may name the new version: rerun once SSM "
            "answers (the cutover is idempotent)"
        ) from None
    raise UsageError(f"{message}, nothing changed; fix SSM access and rerun") from None


# ------------------------------------------------------------------------------------- inventory


@dataclass(frozen=True)
class IndexState:
    version: str
    index: str
    meta: dict | None
    doc_count: int
    count_by_model_version: dict[str, int]
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Inventory:
    indices: dict[str, IndexState] = field(default_factory=dict)
    alias_targets: list[str] = field(default_factory=list)
    pointer: Pointer | None = None


def _stack_indices(
    client: OpenSearch, settings: StackSettings, catalog: Catalog
) -> Iterator[tuple[str, str, dict, tuple[str, ...]]]:
    """(version, index, meta, aliases) of the stack's indices, from one request: `{prefix}-<version>`
    by `_meta` or by catalog name.

    The prefix pattern can match another stack's indices (`docs-*` matches `docs-staging-v1`);
    an index counts only when its name is exactly the one its version would get. One of exactly
    such a name that another stack built (the same indexPrefix on one cluster) is refused: left
    out, the plan would rebuild over it; counted, it would be dropped.
    """
    search = settings.opensearch
    response = client.indices.get(
        index=f"{search.index_prefix}-*",
        params={"expand_wildcards": "open"},
    )
    by_name = {search.index_name(version): version for version in catalog.names}
    for index, body in sorted(response.items()):
        meta = body.get("mappings", {}).get("_meta") or {}
        version = meta.get("version")
        if not (isinstance(version, str) and search.index_name(version) == index):
            version = by_name.get(index)
        if version is None:
            continue
        owner = other_stack(meta, settings)
        if owner:
            raise IntegrityError(shared_prefix(f"index {index}", owner, settings))
        yield version, index, meta, tuple(sorted(body.get("aliases") or {}))


COUNT_BY_VERSION = {
    "size": 0,
    "track_total_hits": True,
    "aggs": {"versions": {"terms": {"field": "model_version", "size": 1000, "missing": NO_VERSION}}},
}


def _counted(response: dict, index: str) -> tuple[int, dict[str, int]]:
    """(total, per version) of a count answer; one from part of the index (a shard failed) is
    Unreachable: a version on the missing shard would go uncounted."""
    cluster.refuse_partial(response, f"the model_version count of {index}", "count again when the cluster is whole")
    buckets = response["aggregations"]["versions"]["buckets"]
    return response["hits"]["total"]["value"], {b["key"]: b["doc_count"] for b in buckets}


def count_by_model_version(client: OpenSearch, index: str) -> tuple[int, dict[str, int]]:
    """(total docs, {model_version: docs}) from one terms aggregation: no scan."""
    return _counted(client.search(index=index, body=COUNT_BY_VERSION), index)


def counts_by_model_version(client: OpenSearch, indices: list[str]) -> list[tuple[int, dict[str, int]]]:
    """count_by_model_version of several indices in one `_msearch`."""
    if not indices:
        return []
    body = [line for index in indices for line in ({"index": index}, COUNT_BY_VERSION)]
    answers = client.msearch(body=body)["responses"]
    for index, answer in zip(indices, answers, strict=True):
        if "error" in answer:
            error = answer["error"]
            status = int(answer.get("status", 500))
            raise HTTP_EXCEPTIONS.get(status, TransportError)(
                status, error.get("type", "error") if isinstance(error, dict) else str(error), {index: error}
            )
    return [_counted(answer, index) for index, answer in zip(indices, answers, strict=True)]


def inventory(client: OpenSearch, ssm, settings: StackSettings, catalog: Catalog) -> Inventory:
    """The stack's indices with their per-version counts, the alias' targets and the pointer:
    three OpenSearch round trips with the SSM read beside them."""
    with ThreadPoolExecutor(1) as aside:
        pointer = aside.submit(_pointer_or_none, ssm, settings.pointer_name)
        found = list(_stack_indices(client, settings, catalog))
        counts = counts_by_model_version(client, [index for _, index, _, _ in found])
        targets = alias_targets(client, settings.opensearch.alias_name)
        indices = {
            version: IndexState(version, index, meta, total, by_version, aliases)
            for (version, index, meta, aliases), (total, by_version) in zip(found, counts, strict=True)
        }
        return Inventory(indices, targets, pointer.result())


def _pointer_or_none(ssm, name: str) -> Pointer | None:
    try:
        return read_pointer(ssm, name)
    except IntegrityError:  # not lockstep's JSON: seen as no pointer, so the plan cuts over and rewrites it
        return None


# ------------------------------------------------------------------------------------- retention


def _protection(
    settings: StackSettings, version: str, index: str, aliases: list[str], pointer: Pointer | None
) -> str | None:
    """Why `version`'s index must stay, or None when it may go (the rule is lockstep.state's)."""
    return keep_reason(
        settings, version, index, aliases, pointer.index if pointer else None, pointer.version if pointer else None
    )


def droppable(settings: StackSettings, inventory: Inventory) -> list[str]:
    """Versions whose index left the config (pin ∪ slots ∪ retain) and that no alias points to."""
    live_alias = settings.opensearch.alias_name
    return sorted(
        version
        for version, state in inventory.indices.items()
        if _protection(
            settings,
            version,
            state.index,
            sorted({*state.aliases, *([live_alias] if state.index in inventory.alias_targets else [])}),
            inventory.pointer,
        )
        is None
    )


def _as_it_is(client: OpenSearch, index: str) -> tuple[list[str], dict] | None:
    """(aliases, `_meta`) of `index` read now, in one request; None when it does not exist."""
    try:
        found: dict = next(iter(client.indices.get(index=index).values()), {})
    except NotFoundError:
        return None
    return sorted(found.get("aliases") or {}), found.get("mappings", {}).get("_meta") or {}


def drop_named_index(
    client: OpenSearch, settings: StackSettings, version: str, index: str, pointer: Pointer | None, by_version: bool
) -> str | None:
    """Delete the physical `index` of `version` unless the stack keeps it; why it stays, or None
    (deleted, or gone already). `by_version` False: the stack keeps `version` under another index
    name (its indices were renamed), so only an alias or the pointer on `index` itself keeps it."""
    found = _as_it_is(client, index)
    if found is None:
        return None
    aliases, meta = found
    owner = other_stack(meta, settings)
    if owner:
        return f"it belongs to stack {owner} (its _meta.stack)"
    reason = keep_reason(
        settings,
        version if by_version else "",
        index,
        aliases,
        pointer.index if pointer else None,
        pointer.version if pointer else None,
    )
    if reason:
        return reason
    with suppress(NotFoundError):
        client.indices.delete(index=index)
    return None


def drop_index(client: OpenSearch, settings: StackSettings, version: str, inventory: Inventory) -> bool:
    """Delete `version`'s index; True if deleted. Aliases are re-read from the cluster, not trusted."""
    state = inventory.indices.get(version)
    index = state.index if state else settings.opensearch.index_name(version)
    found = _as_it_is(client, index)
    if found is None:
        return False
    aliases, meta = found
    owner = other_stack(meta, settings)
    if owner:
        raise GuardRefused(f"refusing to delete index {index}: {shared_prefix(f'index {index}', owner, settings)}")
    reason = _protection(settings, version, index, aliases, inventory.pointer)
    if reason:
        raise GuardRefused(
            f"refusing to delete index {index}: {reason}; remove {version} from the stack "
            "config (and move the alias) first"
        )
    try:
        client.indices.delete(index=index)
    except NotFoundError:
        return False
    return True
