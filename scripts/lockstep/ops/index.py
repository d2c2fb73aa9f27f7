"""One k-NN index per model version, through its life: created with the version's k-NN mapping
and `_meta`, verified against the catalog, loaded in bulk mode, marked synced with the corpus,
restamped when the corpus moves. What is live, and what the stack keeps, is `lockstep.ops.live_state`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from opensearchpy import OpenSearch, helpers
from opensearchpy.exceptions import RequestError, TransportError

from lockstep.config import CatalogEntry, StackSettings
from lockstep.errors import IntegrityError, UsageError

# `_meta` keys that describe a build, not the version: left out of every comparison.
# `holder`: which Pulumi resource holds the index (a replacement that adopts it writes its own).
HOLDER_KEY = "holder"
# `stack`: the stack that built the index; compared on its own (`other_stack`), not as a build fact.
STACK_KEY = "stack"
VOLATILE_META = {"built_at", "synced", HOLDER_KEY, STACK_KEY}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def one_line(text: object) -> str:
    return " ".join(str(text).split())


# ------------------------------------------------------------------------------- index and _meta


def index_meta(settings: StackSettings, entry: CatalogEntry, built_at: str | None = None) -> dict:
    return {
        "model": entry.model,
        "version": entry.version,
        "artifact_sha256": entry.artifact_sha256,
        "dimension": entry.dimension,
        "space_type": entry.space_type,
        "engine": settings.opensearch.engine,
        "corpus": settings.corpus.uri,
        "stack": settings.stack,
        "built_at": built_at or now(),
    }


def index_body(settings: StackSettings, entry: CatalogEntry) -> dict:
    search = settings.opensearch
    return {
        "settings": {
            "index": {
                "knn": True,
                "number_of_shards": search.shards,
                "number_of_replicas": search.replicas,
            }
        },
        "mappings": {
            "dynamic": "strict",
            "_meta": index_meta(settings, entry),
            "properties": {
                "doc_id": {"type": "keyword"},
                "text": {"type": "text"},
                "model_version": {"type": "keyword"},
                "content_sha256": {"type": "keyword"},
                "embedding": {
                    "type": "knn_vector",
                    "dimension": entry.dimension,
                    "method": {
                        "name": "hnsw",
                        "engine": search.engine,
                        "space_type": entry.space_type,
                        "parameters": {"m": search.hnsw_m, "ef_construction": search.ef_construction},
                    },
                },
            },
        },
    }


def read_meta(client: OpenSearch, index: str) -> dict | None:
    """The mapping `_meta` of `index` ({} when it has none), or None when the index does not exist."""
    return read_metas(client, [index]).get(index)


def read_metas(client: OpenSearch, indices: list[str]) -> dict[str, dict]:
    """The `_meta` of several indices in one request: {index: _meta} for those that exist."""
    if not indices:
        return {}
    response = client.indices.get_mapping(index=",".join(indices), params={"ignore_unavailable": "true"})
    return {name: body.get("mappings", {}).get("_meta", {}) for name, body in response.items() if name in indices}


def meta_differences(observed: dict, expected: dict) -> dict[str, tuple]:
    """{key: (observed, expected)} for every key that differs, ignoring build timestamps."""
    keys = (set(observed) | set(expected)) - VOLATILE_META
    return {
        key: (observed.get(key), expected.get(key)) for key in sorted(keys) if observed.get(key) != expected.get(key)
    }


def other_stack(meta: dict | None, settings: StackSettings) -> str | None:
    """The stack an index's `_meta` names when it is not this one, else None.

    Two stacks whose `opensearch.indexPrefix` is the same on one cluster name the same indices:
    one stack's warm standby is, to the other, an index its config does not keep. An index of
    another stack is never adopted, moved off the alias or dropped. Indices built before the
    stack was recorded name none and count as the reading stack's, so an upgrade changes nothing.
    """
    owner = (meta or {}).get(STACK_KEY)
    return owner if owner and owner != settings.stack else None


def shared_prefix(what: str, owner: str, settings: StackSettings) -> str:
    """One line for `what` ("index docs-v2") of stack `owner` met by `settings`' stack."""
    return (
        f"{what} belongs to stack {owner} (its _meta.stack), not {settings.stack}: two stacks on one "
        f"cluster need their own opensearch.indexPrefix; give stack {settings.stack} one of its own "
        f"(e.g. {settings.opensearch.index_prefix}-{settings.stack.lower()})"
    )


def _describe(differences: dict[str, tuple]) -> str:
    return "; ".join(f"{key} is {seen!r}, expected {want!r}" for key, (seen, want) in differences.items())


def verify_meta(
    client: OpenSearch, settings: StackSettings, entry: CatalogEntry, corpus_moved_ok: bool = False
) -> None:
    """Refuse an index that was not built for exactly this catalog entry. A corpus that moved
    (corpus.bucket/key) is not a wrong build: it is named with its fix, the `restamp` step, and
    a catch-up (`corpus_moved_ok`) may bring the index in line with the new corpus first."""
    index = settings.opensearch.index_name(entry.version)
    built_for(read_meta(client, index), settings, entry, corpus_moved_ok)


def built_for(
    observed: dict | None, settings: StackSettings, entry: CatalogEntry, corpus_moved_ok: bool = False
) -> None:
    """`verify_meta` of an index `_meta` already read (None: the index does not exist)."""
    index = settings.opensearch.index_name(entry.version)
    if observed is None:
        raise IntegrityError(f"index {index} of {entry.version} does not exist; provision it (`lockstep apply`) first")
    owner = other_stack(observed, settings)
    if owner:
        raise IntegrityError(shared_prefix(f"index {index}", owner, settings))
    differences = meta_differences(observed, index_meta(settings, entry))
    moved = differences.pop("corpus", None)
    if moved and not differences and not corpus_moved_ok:
        raise IntegrityError(
            f"index {index} was built from corpus {moved[0]}, the stack names {moved[1]}: the corpus moved; "
            "`lockstep plan` shows the restamp (after a catch-up if the content differs) and `lockstep apply` "
            "carries it out"
        )
    if differences:
        raise IntegrityError(
            f"index {index} was not built for {entry.version} as the catalog describes it: "
            f"{_describe(differences)}; drop the index if it is not live, or fix the catalog"
        )


# What to do when OpenSearch refuses a new index, by its error type (else: the name or the mapping).
CREATE_FIXES = {
    "invalid_index_name_exception": "fix opensearch.indexPrefix",
    "validation_exception": "the cluster refused a new index (e.g. its shard limit, cluster.max_shards_per_node): "
    "free room by dropping unused indices or raise the limit, then run again",
}


def ensure_index(client: OpenSearch, settings: StackSettings, entry: CatalogEntry) -> bool:
    """Create the version's index; True if created, False if the right one already exists."""
    index = settings.opensearch.index_name(entry.version)
    if read_meta(client, index) is None:
        try:
            client.indices.create(index=index, body=index_body(settings, entry))
            return True
        except RequestError as exc:
            if exc.error != "resource_already_exists_exception":  # a racing creator is checked below
                fix = CREATE_FIXES.get(exc.error, "fix opensearch.indexPrefix or the catalog entry")
                raise UsageError(
                    f"index {_short(index)}: OpenSearch rejected it ({describe_error(exc, index)}); {fix}"
                ) from None
    verify_meta(client, settings, entry, corpus_moved_ok=True)  # the catch-up that follows brings it in line
    return False


def _short(name: str) -> str:
    return name if len(name) <= 80 else f"{name[:40]}...{name[-20:]} ({len(name)} characters)"


def describe_error(exc: TransportError, index: str = "") -> str:
    """OpenSearch's error type and reason, one line, without echoing a (possibly huge) index name."""
    info = exc.info if isinstance(exc.info, dict) else {}
    error = info.get("error", {})
    reason = error.get("reason", "") if isinstance(error, dict) else error
    if index:
        reason = str(reason).replace(index, "<index>")
    text = one_line(f"{exc.error}: {reason}" if reason else exc.error)
    return text if len(text) <= 300 else text[:297] + "..."


def restamp_corpus(client: OpenSearch, settings: StackSettings, entry: CatalogEntry) -> str | None:
    """Record in `_meta.corpus` that the index now belongs to the stack's corpus location; return
    the location it named before (None when nothing changed). The caller brought the index in
    line with that corpus first (the plan's catch-up); an index of another build is refused."""
    index = settings.opensearch.index_name(entry.version)
    verify_meta(client, settings, entry, corpus_moved_ok=True)
    meta = read_meta(client, index) or {}
    before, meta["corpus"] = meta.get("corpus"), settings.corpus.uri
    if before == meta["corpus"]:
        return None
    client.indices.put_mapping(index=index, body={"_meta": meta})
    return before


# --------------------------------------------------------------------------- re-embedding helpers


def mark_synced(client: OpenSearch, index: str, corpus_etag: str, documents: int) -> None:
    """Record in `_meta` which corpus the index was last brought in line with. A later plan that
    sees the same corpus and the same per-version count skips the scan: that keeps a rollback
    to a retained index constant-time, whatever the corpus size."""
    meta = read_meta(client, index) or {}
    meta["synced"] = {"corpus_etag": corpus_etag, "documents": documents, "at": now()}
    client.indices.put_mapping(index=index, body={"_meta": meta})


def clear_synced(client: OpenSearch, index: str) -> None:
    """Drop the `synced` claim before the index is written: a catch-up that fails midway must not
    leave the old claim, or a plan that later sees that corpus again would skip the scan."""
    meta = read_meta(client, index) or {}
    if meta.pop("synced", None) is not None:
        client.indices.put_mapping(index=index, body={"_meta": meta})


def aliased(client: OpenSearch, index: str) -> bool:
    """Does any alias name the index (it serves reads)?"""
    return bool(client.indices.get_alias(index=index).get(index, {}).get("aliases"))


def doc_stamps(client: OpenSearch, index: str) -> dict[str, tuple[str, str]]:
    """{document id: (content_sha256, model_version)} of every stored document, read from doc
    values: `_source` (which holds the vector) is never loaded, which keeps a catch-up scan cheap."""
    query = {"_source": False, "docvalue_fields": ["content_sha256", "model_version"], "query": {"match_all": {}}}
    stamps = {}
    for hit in helpers.scan(client, index=index, size=5000, query=query):
        fields = hit.get("fields", {})
        stamps[hit["_id"]] = (fields.get("content_sha256", [""])[0], fields.get("model_version", [""])[0])
    return stamps


def doc_hashes(client: OpenSearch, index: str) -> dict[str, str]:
    """{document id: content_sha256} of every stored document."""
    return {doc_id: sha for doc_id, (sha, _) in doc_stamps(client, index).items()}


def in_bulk_mode(client: OpenSearch, index: str) -> bool:
    """Is refresh switched off (a load is running, or one was killed before it switched it back)?"""
    settings = client.indices.get_settings(index=index, name="index.refresh_interval")
    return settings.get(index, {}).get("settings", {}).get("index", {}).get("refresh_interval") == "-1"


def set_bulk_mode(client: OpenSearch, index: str, on: bool, settings: StackSettings | None = None) -> None:
    """While loading: no refresh, no replicas. After: replicas from the stack config, default refresh.

    `settings` is needed to switch bulk mode off (the replica count lives in the config).
    """
    if on:
        body = {"index": {"refresh_interval": "-1", "number_of_replicas": 0}}
    elif settings is None:
        raise UsageError(f"set_bulk_mode({index}, on=False) needs the stack settings to restore the replica count")
    else:
        body = {"index": {"refresh_interval": None, "number_of_replicas": settings.opensearch.replicas}}
    client.indices.put_settings(index=index, body=body)
    if not on:
        client.indices.refresh(index=index)


def set_holder(client: OpenSearch, index: str, holder: str) -> None:
    """Record in `_meta` which resource holds the index: the one whose delete may act on it."""
    meta = read_meta(client, index) or {}
    if meta.get(HOLDER_KEY) != holder:
        client.indices.put_mapping(index=index, body={"_meta": {**meta, HOLDER_KEY: holder}})


def set_replicas(client: OpenSearch, index: str, replicas: int) -> None:
    """The stack's replica count on an existing index (put-settings; no rebuild needed)."""
    current = client.indices.get_settings(index=index, name="index.number_of_replicas")
    if str(current.get(index, {}).get("settings", {}).get("index", {}).get("number_of_replicas")) != str(replicas):
        client.indices.put_settings(index=index, body={"index": {"number_of_replicas": replicas}})
