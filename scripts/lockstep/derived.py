"""`lockstep.derived`: the application's side of derived records — a guarded writer.

lockstep counts, repairs and quarantines derived records after a rollback, but the application
writes them. A worker still running a rolled-back model would keep writing records of the wrong
version. `Writer` stamps every record with the writing version, the content hash and the time,
and writes it only if its version is the live one:

- the version is live → written;
- it is not → the store's policy (`derived[].repair` in the stack file): a `recompute` store
  refuses the write (`StaleWriter`, nothing of it kept: the worker must be restarted on the live
  version), a `quarantine` store writes the record quarantined (`quarantined_at`,
  `quarantined_for`) — kept for audit, never counted as live, so the check stays green.

The table's fence item (written by the cutover before the alias and the pointer move:
`lockstep.ops.live_state.cutover`) decides, in one of two modes (`derived[].writerGuard`):

- `transaction` (default; for AWS): each batch is ONE TransactWriteItems — a ConditionCheck on the
  fence (naming this version for a live write, another for a quarantined one) and the puts.
  Atomic: no window. (A per-item ConditionExpression cannot do this: it sees only its own item.)
  On AWS it costs two write units per item; on moto it copies the table per item (slow).
- `verify` (for the embedded moto): BatchWriteItem of the batch, then ONE consistent GetItem of
  the fence; if it no longer backs the decision, exactly that batch is undone (deleted; on a
  `quarantine` store marked quarantined) and the same refusal raised. As the fence moves before
  the alias, a batch written after the move is seen by its own writer's read. The one window: a
  writer that dies between its write and its read leaves a stamped stale batch, which the check's
  `derived:<store>` row counts and the repair fixes. (A refused `recompute` batch also removes the
  record it overwrote — the previous one of that doc_id.)

Either way a worker of the rolled-back version is refused (or quarantined) on its first write
after the fence moved, whatever its cache says. The pointer, read through a cache of `ttl`
seconds (one SSM read per `ttl`), is only a fast path: when it says this version is not live, the
fence is read before anything is sent. If the pointer cannot be read the write is refused (fail
closed); a table without a fence refuses every write. Throughput: bench/README.md. Example (docs/derived-writer.md):

    from lockstep import derived

    writer = derived.writer("prod", "related", version="v2")      # the model this worker runs
    writer.put("doc-17", {"neighbours": ["doc-3", "doc-9"], "k": 2}, text=document_text)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime

from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from lockstep import config
from lockstep.config import DerivedStore, StackSettings
from lockstep.errors import GuardRefused, LockstepError, UsageError
from lockstep.ops import clients, index, live_state
from lockstep.ops import derived as store_ops
from lockstep.ops.corpus import Document, content_sha256
from lockstep.ops.progress import batched

BATCH = 99  # TransactWriteItems takes 100 items: the fence's ConditionCheck and 99 records
WRITE_BATCH = 25  # BatchWriteItem's limit (moto does not enforce it; DynamoDB does)
VERIFY_BATCH = 200  # `verify`: 8 BatchWriteItems of 25 per fence read (and at most this many undone)
ATTEMPTS = 4  # transactions cancelled by a conflict or throttling are retried this often
# Cancellation reasons worth a retry ("None": an item that did not cause the cancellation).
RETRYABLE = frozenset({"None", "TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"})
_SERIALIZE = TypeSerializer().serialize


Fence = tuple[str, str] | None  # (live version, switched_at) from a table's fence; None: no fence


class StaleWriter(GuardRefused):
    """A write by a version that is not live, refused by a `recompute` store (nothing written)."""


@dataclass(frozen=True)
class Record:
    """One derived record as the application computed it: plain attribute values (str, int,
    bool, lists and maps of them; no floats — DynamoDB wants Decimal)."""

    doc_id: str
    content_sha256: str
    attributes: dict = field(default_factory=dict)


@dataclass
class WriteResult:
    written: int = 0
    quarantined: int = 0


class Writer:
    """Writes one store's records for one model version, guarded by the live pointer."""

    def __init__(
        self,
        settings: StackSettings,
        store: str,
        version: str,
        *,
        ttl: float = live_state.DEFAULT_TTL,
        clock: Callable[[], float] = time.monotonic,
    ):
        found = [s for s in settings.derived if s.name == store]
        if not found:
            names = ", ".join(s.name for s in settings.derived) or "none"
            raise UsageError(f"stack {settings.stack} has no derived store {store!r} (its stores: {names})")
        self.settings, self.store, self.version = settings, found[0], version
        self.pointer = live_state.PointerCache(settings, ttl, clock)
        self.dynamodb = store_ops.dynamodb(settings)
        self.batch = BATCH if self.store.writer_guard == "transaction" else VERIFY_BATCH

    @property
    def policy(self) -> str:
        """What happens to a write whose version is not live: the store's repair policy decides."""
        return "refuse" if self.store.repair == "recompute" else "quarantine"

    def put(self, doc_id: str, attributes: dict, *, text: str | None = None, sha256: str | None = None) -> str:
        """Write one record ("written" or "quarantined"); the content hash comes from `text` or `sha256`."""
        if (text is None) == (sha256 is None):
            raise UsageError("give the record's content as text= or its hash as sha256= (one of them)")
        digest = sha256 if sha256 is not None else content_sha256(text or "")
        result = self.put_many([Record(doc_id, digest, attributes)])
        return "quarantined" if result.quarantined else "written"

    def put_many(self, records: Iterable[Record]) -> WriteResult:
        """Write records in batches of `self.batch`, each guarded by the fence as one."""
        result, records = WriteResult(), list(records)
        _refuse_bad_records(records)
        for batch in batched(records, self.batch):
            quarantined_for = self._write(batch)
            if quarantined_for is None:
                result.written += len(batch)
            else:
                result.quarantined += len(batch)
        return result

    def _write(self, batch: Sequence[Record]) -> str | None:
        """Write one batch: None when written live, else the live version it was quarantined for.
        The cached pointer picks the likely outcome; the fence decides it — in the same transaction
        (`transaction`) or read right after the write (`verify`). The fence moved: decide again."""
        pointer = self.pointer.live()
        if pointer is None:  # nothing deployed (or the pointer was removed): nothing is live
            raise self._refusal(None)
        live: Fence = (pointer.version, pointer.switched_at)
        with store_ops.reaching_dynamodb(self.settings), self._table_exists():
            if pointer.version != self.version:  # bound to fail as a live write: ask the fence first
                live = store_ops.read_fence(self.dynamodb, self.store.table)
            for _ in range(ATTEMPTS):
                quarantined_for = self._decide(live)
                if self.store.writer_guard == "transaction":
                    if self._transact(batch, quarantined_for):
                        return quarantined_for
                    live = store_ops.read_fence(self.dynamodb, self.store.table)
                else:
                    kept, quarantined_for, live = self._verify(batch, quarantined_for)
                    if kept:
                        return quarantined_for
        raise LockstepError(
            f"derived store {self.store.name}: the fence in table {self.store.table!r} kept moving "
            f"({ATTEMPTS} guarded writes undone or refused); nothing of this batch was kept — retry"
        )

    @contextmanager
    def _table_exists(self) -> Iterator[None]:
        try:
            yield
        except self.dynamodb.exceptions.ResourceNotFoundException:
            raise UsageError(
                f"derived store {self.store.name}: DynamoDB table {self.store.table!r} does not exist; nothing of "
                "this write was kept — create it (`pulumi up`, or `lockstep apply` on an embedded stack) or fix "
                "derived[].table"
            ) from None

    def _decide(self, live: Fence) -> str | None:
        """None: write live; a version: write quarantined for it; else the refusal is raised."""
        if live is not None and live[0] == self.version:
            return None
        if live is None or self.policy == "refuse":
            raise self._refusal(live)
        return live[0]

    def _verify(self, batch: Sequence[Record], quarantined_for: str | None) -> tuple[bool, str | None, Fence]:
        """`verify` mode: BatchWriteItem, then ONE consistent read of the fence. The cutover writes the
        fence before it moves the alias, so a batch written after the move is seen by this read: if
        the fence no longer backs the decision, exactly this batch (its stamp) is undone — deleted,
        or on a `quarantine` store marked quarantined as the transaction would have written it.
        Returns (kept?, the version it is kept quarantined for or None, the fence as read). A part
        refused for good after others landed (throttled past the retries) undoes what landed, unread
        by the fence, and raises: nothing of the batch is kept, as in a failed transaction.
        (Its one window, a writer dying between write and read: the module's docstring.)"""
        stamp = datetime.now(UTC).isoformat(timespec="microseconds")
        try:
            for part in batched([self._item(r, stamp, quarantined_for) for r in batch], WRITE_BATCH):
                store_ops._batch_put(self.dynamodb, self.store.table, list(part))
        except Exception:  # a later part refused for good: the parts that landed were never fenced
            with suppress(ClientError, BotoCoreError):
                self._undo(batch, stamp, None)
            raise
        live = store_ops.read_fence(self.dynamodb, self.store.table)
        if live is not None and (live[0] == self.version) == (quarantined_for is None):
            return True, quarantined_for, live  # the fence still backs the decision: kept
        if quarantined_for is None and live is not None and self.policy == "quarantine":
            self._undo(batch, stamp, live[0])  # as the transaction would have written it
            return True, live[0], live
        self._undo(batch, stamp, None)
        return False, None, live

    def _undo(self, batch: Sequence[Record], stamp: str, quarantine_for: str | None) -> None:
        """Delete (or mark quarantined for `quarantine_for`) the items of `batch` still as this
        writer wrote them at `stamp`: a record another writer has since written is left alone."""
        condition = f"{store_ops.VERSION_ATTRIBUTE} = :v AND written_at = :stamp"
        values = {":v": {"S": self.version}, ":stamp": {"S": stamp}}
        for record in batch:
            key = {store_ops.KEY: {"S": record.doc_id}}
            try:
                if quarantine_for is None:
                    self.dynamodb.delete_item(
                        TableName=self.store.table,
                        Key=key,
                        ConditionExpression=condition,
                        ExpressionAttributeValues=values,
                    )
                else:
                    self.dynamodb.update_item(
                        TableName=self.store.table,
                        Key=key,
                        ConditionExpression=condition,
                        UpdateExpression=f"SET {store_ops.QUARANTINED} = :stamp, quarantined_for = :live",
                        ExpressionAttributeValues={**values, ":live": {"S": quarantine_for}},
                    )
            except self.dynamodb.exceptions.ConditionalCheckFailedException:
                pass  # overwritten since: not this batch's record any more

    def _transact(self, batch: Sequence[Record], quarantined_for: str | None) -> bool:
        """One transaction: the fence check and the batch's puts. False: the fence condition failed."""
        if quarantined_for is None:
            condition = f"{store_ops.FENCE_ATTRIBUTE} = :v"
        else:
            condition = f"attribute_exists({store_ops.FENCE_ATTRIBUTE}) AND {store_ops.FENCE_ATTRIBUTE} <> :v"
        check = {
            "TableName": self.store.table,
            "Key": {store_ops.KEY: {"S": store_ops.FENCE_KEY}},
            "ConditionExpression": condition,
            "ExpressionAttributeValues": {":v": {"S": self.version}},
        }
        stamp = datetime.now(UTC).isoformat(timespec="microseconds")
        puts = [{"Put": {"TableName": self.store.table, "Item": self._item(r, stamp, quarantined_for)}} for r in batch]
        for attempt in range(ATTEMPTS):
            try:
                self.dynamodb.transact_write_items(TransactItems=[{"ConditionCheck": check}, *puts])
                return True
            except self.dynamodb.exceptions.TransactionCanceledException as exc:
                reasons = [r.get("Code", "None") for r in exc.response.get("CancellationReasons", [])]
                if reasons[:1] == ["ConditionalCheckFailed"]:
                    return False
                if not set(reasons) <= RETRYABLE:
                    raise
            time.sleep(0.05 * 2**attempt)
        raise LockstepError(
            f"derived store {self.store.name}: table {self.store.table!r} kept cancelling the write "
            "(conflicts or throttling); nothing of this batch was written — lower derived[].writeRate and retry"
        )

    def _refusal(self, live: tuple[str, str] | None) -> StaleWriter:
        if live is None:
            return StaleWriter(
                f"derived store {self.store.name}: no version is live in stack {self.settings.stack} (no pointer "
                f"{self.settings.pointer_name}, or no fence in table {self.store.table!r}: the cutover writes both); "
                "nothing of this write was kept — deploy first (`lockstep apply`)"
            )
        version, since = live
        return StaleWriter(
            f"derived store {self.store.name}: this writer runs {self.version} but {version} is live"
            + (f" (since {since})" if since else "")
            + f"; nothing of this write was kept — restart the worker with {version}"
        )

    def _item(self, record: Record, stamp: str, quarantined_for: str | None) -> dict:
        item = {name: _SERIALIZE(value) for name, value in record.attributes.items()}
        item.update(
            {
                store_ops.KEY: {"S": record.doc_id},
                store_ops.VERSION_ATTRIBUTE: {"S": self.version},
                "written_at": {"S": stamp},
                "content_sha256": {"S": record.content_sha256},
            }
        )
        if quarantined_for:
            item[store_ops.QUARANTINED] = {"S": stamp}
            item["quarantined_for"] = {"S": quarantined_for}
        return item


def _refuse_bad_records(records: Sequence[Record]) -> None:
    """Bad input is refused before the first batch is written: exit 2 says nothing changed."""
    seen: set[str] = set()
    for record in records:
        if record.doc_id == store_ops.FENCE_KEY:
            raise UsageError(f"doc_id {store_ops.FENCE_KEY!r} is reserved for lockstep's fence item; rename it")
        if record.doc_id in seen:
            raise UsageError(f"doc_id {record.doc_id!r} is given twice in one write; give each record once")
        seen.add(record.doc_id)
        for name, value in record.attributes.items():
            try:
                _SERIALIZE(value)
            except (TypeError, ValueError) as exc:
                raise UsageError(
                    f"record {record.doc_id!r}: attribute {name!r} cannot be stored in DynamoDB ({exc}); "
                    "nothing of this write was kept"
                ) from None


def writer(stack: str, store: str, version: str, *, ttl: float = live_state.DEFAULT_TTL) -> Writer:
    """A guarded writer for `store` of `stack` (the stack's settings handed to the process in
    LOCKSTEP_STACK_SETTINGS, else stacks/Pulumi.<stack>.yaml)."""
    handed_over = config.settings_from_environment(stack)
    settings = handed_over[0] if handed_over else config.load_stack(stack)
    return Writer(settings, store, version, ttl=ttl)


def write_related(
    settings: StackSettings,
    version: str,
    documents: Sequence[Document | str] | None = None,
    progress: bool = False,
    ttl: float = live_state.DEFAULT_TTL,
) -> WriteResult:
    """What the application does while `version` is live, through the guard: each document's
    related-documents list on `version`'s index, into every related-documents store."""
    search = clients.opensearch(settings.opensearch)
    name = settings.opensearch.index_name(version)
    with clients.reaching("OpenSearch", clients.opensearch_url(settings.opensearch)):
        ids = (
            [d.id if isinstance(d, Document) else d for d in documents]
            if documents is not None
            else sorted(index.doc_hashes(search, name))
        )
    total = WriteResult()
    for store in store_ops.related_stores(settings):
        guarded = Writer(settings, store.name, version, ttl=ttl)
        pacer = store_ops.Pacer(store.write_rate)
        with store_ops._progress(progress, f"related {version} → {store.table}", len(ids), pacer) as advance:
            for chunk in batched(ids, guarded.batch):  # one guarded batch per chunk
                lists = []
                for batch in batched(chunk, store_ops.BATCH):
                    with clients.reaching("OpenSearch", clients.opensearch_url(settings.opensearch)):
                        lists += [r for r in store_ops.related(search, name, batch, store.k).values() if r]
                done = guarded.put_many(_records(lists, store))
                total.written, total.quarantined = total.written + done.written, total.quarantined + done.quarantined
                pacer.wrote(len(lists))
                advance(len(lists))
    return total


def _records(lists: Iterable[store_ops.Related], store: DerivedStore) -> list[Record]:
    return [Record(r.doc_id, r.content_sha256, {"neighbours": list(r.neighbours), "k": store.k}) for r in lists]
