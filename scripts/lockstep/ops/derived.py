"""Derived records: what a model version decided and stored elsewhere, stamped with that version.

The built-in kind is `related-documents`: for each document, its top-k neighbours by a k-NN query
on one version's index, one DynamoDB item per document:
`{doc_id, model_version, written_at, content_sha256, neighbours, k}`. A rollback leaves the
rolled-back version's items behind; they still answer, and point at the wrong neighbours.

- `count_by_version` counts items per version through a GSI on `model_version` (a Select=COUNT
  query per catalog version: nothing is transferred), and refuses a table whose items lack the
  version stamp or carry a version outside the catalog (one filtered scan that returns only those).
- `repair` rewrites every item whose version is not the pin with the pin's neighbours
  (`recompute`) or marks it (`quarantine`: `quarantined_at`, kept as it was). Its work list is
  "items of another version, not quarantined", read by a consistent scan a page at a time while
  the repair runs (a batch is written about two batches after its page was read): a killed repair
  re-run touches only what is left, and never writes an item twice.
- Writes are paced to the store's `writeRate` (items/s) and shown with reembed's progress bar.
- Each table holds one fence item (`doc_id` FENCE_KEY, no `model_version`): the live version, written
  by the cutover (`write_fences`). `lockstep.derived` makes every guarded write conditional on it.
  It is not a derived record: the version index never holds it and counting, repair and reads skip it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from botocore.exceptions import ClientError
from opensearchpy import OpenSearch
from opensearchpy.helpers import scan

from lockstep.config import Catalog, DerivedStore, StackSettings
from lockstep.errors import Unreachable, UsageError
from lockstep.ops import clients, cluster
from lockstep.ops.corpus import Document
from lockstep.ops.index import one_line
from lockstep.ops.progress import batched, progress_bar
from lockstep.state import StoreCounts

KEY = "doc_id"
VERSION_ATTRIBUTE = "model_version"
VERSION_INDEX = "by_model_version"
QUARANTINED = "quarantined_at"
FENCE_KEY = "__lockstep_live_fence__"  # reserved doc_id of the fence item
FENCE_ATTRIBUTE = "live_version"  # the fence's version: not model_version, so it is never counted
# Projected into the version index so the quarantined share is counted without reading items.
PROJECTED = (QUARANTINED,)
BATCH = 50  # documents per k-NN msearch / per DynamoDB round of writes
AHEAD = 2  # batches whose k-NN queries run at once while this one is written
LEAD = 6  # batches whose related lists may be ready and not yet written (rides out slow writes)
FIRST_PAGE = BATCH  # items the work-list scan's first request examines: the first k-NN batch starts at once
LAST_PAGE = 20 * BATCH  # each next request examines twice as many, up to this (fewer round trips)


# ----------------------------------------------------------------------------------- the table


def table_definition(table: str) -> dict:
    """create_table arguments: the schema lockstep counts and repairs by (the Pulumi component
    declares the same key, attribute and index)."""
    return {
        "TableName": table,
        "AttributeDefinitions": [
            {"AttributeName": KEY, "AttributeType": "S"},
            {"AttributeName": VERSION_ATTRIBUTE, "AttributeType": "S"},
        ],
        "KeySchema": [{"AttributeName": KEY, "KeyType": "HASH"}],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": VERSION_INDEX,
                "KeySchema": [{"AttributeName": VERSION_ATTRIBUTE, "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": list(PROJECTED)},
            }
        ],
        "BillingMode": "PAY_PER_REQUEST",
        "SSESpecification": {"Enabled": True},
    }


def dynamodb(settings: StackSettings):
    """Every DynamoDB request lockstep sends is built here, by code: botocore's client-side
    validation of each attribute value is skipped (DynamoDB still validates; measured: 12 % of a
    1,000-item repair's time went to it)."""
    return clients.aws_for(settings, "dynamodb", validate=False)


def reaching_dynamodb(settings: StackSettings):
    return clients.reaching_aws(settings, "DynamoDB")


def _describe(client, store: DerivedStore) -> dict | None:
    try:
        return client.describe_table(TableName=store.table)["Table"]
    except client.exceptions.ResourceNotFoundException:
        return None


def require_table(client, store: DerivedStore) -> None:
    """The table exists and carries lockstep's schema: keyed by doc_id, indexed by model_version."""
    table = _describe(client, store)
    if table is None:
        raise UsageError(
            f"derived store {store.name}: DynamoDB table {store.table!r} does not exist; "
            "create it (`pulumi up`, or `lockstep apply` on an embedded stack) or fix derived[].table"
        )
    indices = {gsi["IndexName"]: gsi for gsi in table.get("GlobalSecondaryIndexes", [])}
    keyed = [k["AttributeName"] for k in indices.get(VERSION_INDEX, {}).get("KeySchema", [])]
    if keyed[:1] != [VERSION_ATTRIBUTE] or [k["AttributeName"] for k in table["KeySchema"]] != [KEY]:
        raise UsageError(
            f"derived store {store.name}: table {store.table!r} has no index on the {VERSION_ATTRIBUTE} "
            f"attribute (GSI {VERSION_INDEX}, key {KEY}), so its records cannot be counted by version; "
            "recreate it with lockstep's schema"
        )


def ensure_table(settings: StackSettings, store: DerivedStore) -> bool:
    """Embedded stacks: create the store's table (encrypted, point-in-time recovery on) if it is
    missing; return whether it was created. On AWS the Pulumi component declares it."""
    client = dynamodb(settings)
    with reaching_dynamodb(settings):
        if _describe(client, store) is not None:
            require_table(client, store)
            return False
        client.create_table(**table_definition(store.table))
        client.get_waiter("table_exists").wait(TableName=store.table, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        client.update_continuous_backups(
            TableName=store.table, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True}
        )
        return True


# ---------------------------------------------------------------------------------- counting


def _query_pages(client, store: DerivedStore, version: str, **extra) -> Iterator[dict]:
    """Pages of the version index for one version."""
    return client.get_paginator("query").paginate(
        TableName=store.table,
        IndexName=VERSION_INDEX,
        KeyConditionExpression=f"{VERSION_ATTRIBUTE} = :v",
        ExpressionAttributeValues={":v": {"S": version}},
        **extra,
    )


def _unstamped(store: DerivedStore, catalog: Catalog, item: dict) -> UsageError | None:
    """Why an item cannot be counted or repaired: no version stamp, or one outside the catalog."""
    doc_id = item.get(KEY, {}).get("S", "?")
    if VERSION_ATTRIBUTE not in item:
        return UsageError(
            f"derived store {store.name}: item {doc_id!r} in table {store.table!r} has no "
            f"{VERSION_ATTRIBUTE} attribute, so no one can tell which model wrote it; "
            f"stamp it with {VERSION_ATTRIBUTE} or delete it"
        )
    if item[VERSION_ATTRIBUTE]["S"] not in catalog.names:
        return UsageError(
            f"derived store {store.name}: item {doc_id!r} in table {store.table!r} has "
            f"{VERSION_ATTRIBUTE} {item[VERSION_ATTRIBUTE]['S']!r}, which is not in the catalog; "
            f"use one of {', '.join(catalog.names)}"
        )
    return None


def _require_stamps(client, store: DerivedStore, catalog: Catalog) -> None:
    """Every item carries a catalog version: otherwise nobody can say which model wrote it.
    A filtered scan: only offending items come back."""
    names = {f":v{n}": {"S": version} for n, version in enumerate(catalog.names)}
    unstamped = f"attribute_not_exists({VERSION_ATTRIBUTE}) OR NOT {VERSION_ATTRIBUTE} IN ({', '.join(names)})"
    pages = client.get_paginator("scan").paginate(
        TableName=store.table,
        ProjectionExpression=f"{KEY}, {VERSION_ATTRIBUTE}",
        FilterExpression=f"{KEY} <> :fence AND ({unstamped})",
        ExpressionAttributeValues={**names, ":fence": {"S": FENCE_KEY}},
    )
    for page in pages:
        for item in page["Items"]:
            if problem := _unstamped(store, catalog, item):
                raise problem


def count_by_version(
    settings: StackSettings, catalog: Catalog, store: DerivedStore, missing_ok: bool = False
) -> StoreCounts:
    """Items per catalog version (GSI Select=COUNT queries), their quarantined share, and the
    version the fence names. `missing_ok`: a missing table counts as empty, with no fence (an
    embedded stack's apply creates it)."""
    client = dynamodb(settings)
    counts = StoreCounts(store.name, store.table)
    with reaching_dynamodb(settings):
        if missing_ok and _describe(client, store) is None:
            return counts
        require_table(client, store)
        _require_stamps(client, store, catalog)
        for version in catalog.names:
            total = quarantined = 0
            for page in _query_pages(
                client, store, version, Select="COUNT", FilterExpression=f"attribute_exists({QUARANTINED})"
            ):
                total += page["ScannedCount"]
                quarantined += page["Count"]
            if total:
                counts.records_by_version[version] = total
            if quarantined:
                counts.quarantined_by_version[version] = quarantined
        fence = read_fence(client, store.table)
    counts.fence = fence[0] if fence else None
    return counts


# ------------------------------------------------------------------------ related documents


@dataclass(frozen=True)
class Related:
    doc_id: str
    content_sha256: str
    neighbours: tuple[str, ...]


ANSWER_FIELDS = [
    "responses._shards",
    "responses.timed_out",
    "responses.error",
    "responses.hits.hits._id",
]  # all a k-NN answer needs


def related(client: OpenSearch, index_name: str, ids: Sequence[str], k: int) -> dict[str, Related | None]:
    """Each document's k nearest other documents in `index_name`, by its own stored vector
    (one mget and one msearch per batch). None: the document is not in the index."""
    found: dict[str, Related | None] = {}
    for batch in batched(list(ids), BATCH):
        docs = client.mget(
            index=index_name, body={"ids": list(batch)}, _source_includes=["embedding", "content_sha256"]
        )["docs"]
        failed = [d["error"] for d in docs if "error" in d]  # a shard or the index could not answer
        if failed:  # not "not found": the repair would delete their records as documents gone
            reason = failed[0].get("reason", failed[0]) if isinstance(failed[0], dict) else failed[0]
            raise Unreachable(
                f"reading {len(failed)} documents of {index_name} failed ({one_line(reason)[:200]}); "
                "run again when the cluster is back: the repair resumes"
            )
        stored = [d for d in docs if d.get("found")]
        found.update({d["_id"]: None for d in docs if not d.get("found")})
        if not stored:
            continue
        body: list[dict] = []
        for doc in stored:
            body += [
                {"index": index_name},
                {
                    "size": k + 1,
                    "_source": False,
                    "query": {"knn": {"embedding": {"vector": doc["_source"]["embedding"], "k": max(k + 1, 100)}}},
                },
            ]
        answers = client.msearch(body=body, filter_path=ANSWER_FIELDS)["responses"]
        for doc, answer in zip(stored, answers, strict=True):
            cluster.refuse_partial(
                answer,
                f"k-NN query for {doc['_id']} on {index_name}",
                "run again when the cluster is back: the repair resumes",
            )
            if "error" in answer:
                raise UsageError(f"k-NN query for {doc['_id']} on {index_name} failed: {answer['error']}")
            hits = answer.get("hits", {}).get("hits", [])
            neighbours = [h["_id"] for h in hits if h["_id"] != doc["_id"]][:k]
            found[doc["_id"]] = Related(doc["_id"], doc["_source"]["content_sha256"], tuple(neighbours))
    return found


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _item(version: str, related_doc: Related, k: int, repaired_from: str | None = None) -> dict:
    item = {
        KEY: {"S": related_doc.doc_id},
        VERSION_ATTRIBUTE: {"S": version},
        "written_at": {"S": _now()},
        "content_sha256": {"S": related_doc.content_sha256},
        "neighbours": {"L": [{"S": n} for n in related_doc.neighbours]},
        "k": {"N": str(k)},
    }
    if repaired_from:
        item["repaired_from"] = {"S": repaired_from}
    return item


class Pacer:
    """Keeps writes at or under `rate` items per second from the first write on (time spent
    before it, e.g. on the first k-NN batch, is no credit for a burst)."""

    def __init__(self, rate: float):
        self.rate = rate
        self.started: float | None = None
        self.done = 0

    def wrote(self, count: int) -> None:
        now = time.monotonic()
        if self.started is None:
            self.started = now
        self.done += count
        ahead = self.done / self.rate - (now - self.started)
        if ahead > 0:
            time.sleep(ahead)

    @property
    def achieved(self) -> float:
        elapsed = time.monotonic() - self.started if self.started is not None else 0.0
        return self.done / elapsed if elapsed > 0 else 0.0


@contextmanager
def _progress(enabled: bool, description: str, total: int | None, pacer: Pacer) -> Iterator[Callable[..., None]]:
    """reembed's progress bar with one task; yields advance(n, total=None). `total` None: not
    known yet (the repair reads its work list while it writes); advance(0, total=n) sets it."""
    with progress_bar(enabled and total != 0) as bar:
        task = bar.add_task(description, total=total, rate="") if bar else None

        def advance(n: int, total: int | None = None) -> None:
            if bar:
                bar.update(task, advance=n, rate=f"{pacer.achieved:,.0f} items/s")
                if total is not None:
                    bar.update(task, total=total)

        yield advance


def related_stores(settings: StackSettings) -> list[DerivedStore]:
    return [store for store in settings.derived if store.kind == "related-documents"]


def write_related(
    settings: StackSettings,
    version: str,
    documents: Iterable[Document | str] | None = None,
    store: DerivedStore | None = None,
    progress: bool = False,
) -> int:
    """What the application does while `version` is live: write each document's related-documents
    list, computed on `version`'s index, stamped with `version`. Default: every indexed document,
    into every related-documents store of the stack. Returns the items written."""
    stores = [store] if store else related_stores(settings)
    search = clients.opensearch(settings.opensearch)
    index_name = settings.opensearch.index_name(version)
    with clients.reaching("OpenSearch", clients.opensearch_url(settings.opensearch)):
        if not search.indices.exists(index=index_name):
            raise UsageError(
                f"index {index_name} does not exist: related documents of {version} are computed on it; "
                f"run `lockstep backfill --stack {settings.stack} --version {version}`"
            )
        ids = (
            [d.id if isinstance(d, Document) else d for d in documents]
            if documents is not None
            else [hit["_id"] for hit in scan(search, index=index_name, query={"_source": False}, size=1000)]
        )
    client = dynamodb(settings)
    with reaching_dynamodb(settings):
        for target in stores:  # every table first: a bad one stops the write before anything is written
            require_table(client, target)
    written = 0
    for target in stores:
        pacer = Pacer(target.write_rate)
        with _progress(progress, f"related {version} → {target.table}", len(ids), pacer) as advance:
            for batch in batched(ids, BATCH):
                with clients.reaching("OpenSearch", clients.opensearch_url(settings.opensearch)):
                    lists = [r for r in related(search, index_name, batch, target.k).values() if r]
                with reaching_dynamodb(settings):
                    for chunk in batched(lists, 25):
                        _batch_put(client, target.table, [_item(version, r, target.k) for r in chunk])
                        pacer.wrote(len(chunk))
                        advance(len(chunk))
                        written += len(chunk)
    return written


def _batch_put(client, table: str, items: list[dict]) -> None:
    requests = {table: [{"PutRequest": {"Item": item}} for item in items]}
    for attempt in range(8):
        requests = client.batch_write_item(RequestItems=requests).get("UnprocessedItems") or {}
        if not requests:
            return
        time.sleep(min(0.05 * 2**attempt, 2))
    raise UsageError(f"DynamoDB table {table} kept refusing writes (throttled); lower derived[].writeRate and retry")


def read_records(settings: StackSettings, store: DerivedStore) -> dict[str, dict]:
    """Every item of the store as plain values (a scan: for drills, tests and audits)."""
    client = dynamodb(settings)
    records: dict[str, dict] = {}
    with reaching_dynamodb(settings):
        require_table(client, store)
        for page in client.get_paginator("scan").paginate(TableName=store.table):
            for item in page["Items"]:
                if item[KEY]["S"] != FENCE_KEY:
                    records[item[KEY]["S"]] = {name: _plain(value) for name, value in item.items()}
    return records


# ------------------------------------------------------------------------------------- fences


def _fence(version: str, switched_at: str) -> dict:
    return {KEY: {"S": FENCE_KEY}, FENCE_ATTRIBUTE: {"S": version}, "switched_at": {"S": switched_at}}


def write_fences(settings: StackSettings, version: str, switched_at: str) -> None:
    """Every derived table's fence names `version` (the cutover calls this). A table that does not
    exist yet is skipped: until a cutover writes its fence, every guarded write to it is refused."""
    if not settings.derived:
        return
    client, fence = dynamodb(settings), _fence(version, switched_at)
    with reaching_dynamodb(settings):
        for store in settings.derived:
            try:
                client.put_item(TableName=store.table, Item=fence)
            except client.exceptions.ResourceNotFoundException:
                continue


def read_fence(client, table: str) -> tuple[str, str] | None:
    """(live version, switched_at) from the table's fence item (a strongly consistent read)."""
    item = client.get_item(TableName=table, Key={KEY: {"S": FENCE_KEY}}, ConsistentRead=True).get("Item")
    if not item or FENCE_ATTRIBUTE not in item:
        return None
    return item[FENCE_ATTRIBUTE]["S"], item.get("switched_at", {}).get("S", "")


def _plain(value: dict):
    ((kind, inner),) = value.items()
    if kind == "L":
        return [_plain(v) for v in inner]
    if kind == "N":
        return int(inner)
    return inner


# ------------------------------------------------------------------------------------ repair


@dataclass
class RepairResult:
    store: str
    action: str
    pin: str
    rewritten: int = 0
    quarantined: int = 0
    deleted: int = 0
    skipped: int = 0  # changed by someone else since it was read (the conditional write refused)
    seconds: float = 0.0

    def summary(self) -> str:
        done = (
            f"{self.rewritten} recomputed with {self.pin}, {self.deleted} deleted (document gone)"
            if self.action == "recompute"
            else f"{self.quarantined} quarantined"
        )
        return f"{self.store}: {done}" + (f", {self.skipped} changed meanwhile" if self.skipped else "")


def _work_pages(client, store: DerivedStore, catalog: Catalog, pin: str) -> Iterator[list[tuple[str, str]]]:
    """(doc_id, version) of the items another version wrote that are not quarantined, a page at a
    time from a consistent scan whose filter returns only those, projected to the two attributes
    (the smallest answer); it also refuses unstamped items. The next page is requested while the
    caller works on this one; pages double in size from FIRST_PAGE (the caller's first batch comes
    at once) to LAST_PAGE (few requests for the rest: a page takes less time to read than the one
    before it to work through)."""
    request = {
        "TableName": store.table,
        "ConsistentRead": True,
        "ProjectionExpression": f"{KEY}, {VERSION_ATTRIBUTE}",
        "FilterExpression": f"{KEY} <> :fence AND attribute_not_exists({QUARANTINED}) AND "
        f"(attribute_not_exists({VERSION_ATTRIBUTE}) OR {VERSION_ATTRIBUTE} <> :pin)",
        "ExpressionAttributeValues": {":fence": {"S": FENCE_KEY}, ":pin": {"S": pin}},
    }
    limit = FIRST_PAGE
    with ThreadPoolExecutor(1) as reader:
        pending: Future | None = reader.submit(client.scan, **request, Limit=limit)
        while pending is not None:
            page = pending.result()
            after = page.get("LastEvaluatedKey")
            limit = min(2 * limit, LAST_PAGE)
            pending = reader.submit(client.scan, **request, Limit=limit, ExclusiveStartKey=after) if after else None
            for item in page["Items"]:
                if problem := _unstamped(store, catalog, item):
                    raise problem
            yield [(item[KEY]["S"], item[VERSION_ATTRIBUTE]["S"]) for item in page["Items"]]


def _rebatched(pages: Iterable[list], size: int) -> Iterator[list]:
    """The items of `pages`, in lists of `size` (the last one shorter)."""
    batch: list = []
    for page in pages:
        batch += page
        while len(batch) >= size:
            yield batch[:size]
            batch = batch[size:]
    if batch:
        yield batch


def repair(settings: StackSettings, catalog: Catalog, store: DerivedStore, progress: bool = True) -> RepairResult:
    """Bring a store in line with the pin: `recompute` rewrites other versions' items with the
    pin's related documents; `quarantine` marks them and keeps them. Resumable and idempotent.
    Three stages overlap: the work list's next scan page is read, the next batches' k-NN queries
    run (`AHEAD` at a time: OpenSearch is never idle while the client parses an answer), and this
    batch is written (so the repair runs at the slowest one's rate). Up to `LEAD` batches may be
    computed and waiting: a write held up (DynamoDB busy with the scan's page, a throttle retry)
    does not stall the k-NN queries behind it. A batch is written a few batches after its page
    was read: a killed repair re-run touches only what is left and never writes an item twice.
    The store's `writeRate` caps the writes."""
    started = time.monotonic()
    pin = settings.pin
    result = RepairResult(store.name, store.repair, pin)
    client = dynamodb(settings)
    with reaching_dynamodb(settings):
        require_table(client, store)
    search = clients.opensearch(settings.opensearch)
    index_name = settings.opensearch.index_name(pin)
    found = 0

    def listed(pages: Iterator[list[tuple[str, str]]]) -> Iterator[list[tuple[str, str]]]:
        nonlocal found
        with reaching_dynamodb(settings):
            for page in pages:
                found += len(page)
                yield page

    batches = _rebatched(listed(_work_pages(client, store, catalog, pin)), BATCH)
    listing = threading.Lock()  # the work list is one generator, read by AHEAD threads

    def next_batch() -> tuple[list[tuple[str, str]], dict[str, Related | None]] | None:
        """The next batch of the work list and, for `recompute`, the pin's lists for it."""
        with listing:
            batch = next(batches, None)
        if batch is None or store.repair != "recompute":
            return (batch, {}) if batch else None
        with clients.reaching("OpenSearch", clients.opensearch_url(settings.opensearch)):
            return batch, related(search, index_name, [doc_id for doc_id, _ in batch], store.k)

    pacer = Pacer(store.write_rate)
    with (
        _progress(progress, f"{store.repair} {store.name} → {pin}", None, pacer) as advance,
        ThreadPoolExecutor(AHEAD) as ahead,
    ):
        pending = deque(ahead.submit(next_batch) for _ in range(LEAD))
        while pending:
            if (ready := pending.popleft().result()) is None:
                continue  # the work list is done; the batches still pending are drained
            pending.append(ahead.submit(next_batch))
            batch, fresh = ready
            advance(0, total=found)
            with reaching_dynamodb(settings):
                if store.repair == "recompute":
                    _recompute_batch(client, store, result, batch, fresh, pacer, advance)
                    continue
                for doc_id, seen in batch:
                    _repair_item(client, store, result, doc_id, seen)
                    pacer.wrote(1)
                    advance(1)
        advance(0, total=found)
    result.seconds = time.monotonic() - started
    return result


def _recompute_batch(
    client,
    store: DerivedStore,
    result: RepairResult,
    batch: list[tuple[str, str]],
    fresh: dict[str, Related | None],
    pacer: Pacer,
    advance: Callable[[int], None],
) -> None:
    """Rewrite a batch with BatchWriteItems of 25. Items whose document left the index are deleted
    one by one, conditionally (only if still of the version read). BatchWriteItem takes no
    condition: an item another writer changed between its page's read and this write (about two
    batches' time) is overwritten with the pin's recomputed list."""
    for doc_id, seen in batch:
        if fresh.get(doc_id) is None:
            _repair_item(client, store, result, doc_id, seen)
            pacer.wrote(1)
            advance(1)
    rewrites = [(doc_id, seen, found) for doc_id, seen in batch if (found := fresh.get(doc_id)) is not None]
    for chunk in batched(rewrites, 25):
        _batch_put(
            client, store.table, [_item(result.pin, found, store.k, repaired_from=seen) for _, seen, found in chunk]
        )
        result.rewritten += len(chunk)
        pacer.wrote(len(chunk))
        advance(len(chunk))


def _repair_item(client, store: DerivedStore, result: RepairResult, doc_id: str, seen: str) -> None:
    """One conditional write, only if the item still carries the version we read, unquarantined:
    `quarantine` marks it; `recompute` deletes it (its document left the pin's index and the corpus:
    nothing to recompute)."""
    condition = {"ConditionExpression": f"{VERSION_ATTRIBUTE} = :seen AND attribute_not_exists({QUARANTINED})"}
    values = {":seen": {"S": seen}}
    try:
        if store.repair == "quarantine":
            client.update_item(
                TableName=store.table,
                Key={KEY: {"S": doc_id}},
                UpdateExpression=f"SET {QUARANTINED} = :now, quarantined_for = :pin",
                ExpressionAttributeValues={**values, ":now": {"S": _now()}, ":pin": {"S": result.pin}},
                **condition,
            )
            result.quarantined += 1
        else:
            client.delete_item(
                TableName=store.table, Key={KEY: {"S": doc_id}}, ExpressionAttributeValues=values, **condition
            )
            result.deleted += 1
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
            raise
        result.skipped += 1
