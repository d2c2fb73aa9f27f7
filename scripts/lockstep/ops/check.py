"""The post-deploy consistency check: prove the pin's unit is whole after every deploy and rollback.

A list of named checks (`checks_for`), each a small function that compares an observed value with
the expected one and says what to do when they differ. The re-embed probe and recall re-embed
through the live endpoint: they are the only ones that can see vectors of another same-dimension
model whose `model_version` field claims the pin. A part that could not be read raises
(`Unreachable`/`UsageError`, exit 2): "could not check" is never "consistent" nor "inconsistent",
and it is never stored. `evaluate` is the one entry point that runs, stores and gives the exit code.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from importlib.metadata import version as package_version

import numpy as np
from botocore.exceptions import BotoCoreError, ClientError
from opensearchpy.exceptions import RequestError, TransportError

from lockstep import reader
from lockstep.config import Catalog, DerivedStore, StackSettings
from lockstep.errors import IntegrityError, LockstepError, Unreachable, UsageError
from lockstep.ops import artifacts, clients, cluster, corpus, corpus_store, derived, endpoints, index, live_state

RECORD_PREFIX = "checks"
# How long the check waits for every shard copy to be started and to agree before it says it
# could not read them (exit 2) or that a copy differs (a failure).
COPIES_WAIT_SECONDS = 60.0


@dataclass
class Check:
    name: str
    passed: bool
    observed: str
    expected: str
    fix: str = ""
    severity: str = "fail"  # "warn": reported, never fails the deployment


@dataclass
class CheckRecord:
    stack: str
    pin: str
    artifact_sha256: str
    started_at: str
    finished_at: str = ""
    tool_version: str = ""
    checks: list[Check] = field(default_factory=list)
    # Per derived store: records_by_version and quarantined_by_version (see ops.derived.StoreCounts).
    derived: dict[str, dict] = field(default_factory=dict)
    # autoRevert's check of the version it flipped back to: the pin whose check failed.
    reverted_from: str = ""
    copies_compared: int = 0  # shard copies (primaries + replicas) whose counts and samples were read

    @property
    def passed(self) -> bool:
        """Every check that is not a warning passed, and there was at least one: a record with no
        checks (or one a newer lockstep wrote with a severity this one does not know) proves nothing."""
        return bool(self.checks) and not self.failures

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed and c.severity != "warn"]

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    @classmethod
    def from_dict(cls, data: dict) -> CheckRecord:
        """The record; fields this lockstep does not know (a newer one wrote it) are left out."""
        data = _known(cls, data)
        data["checks"] = [Check(**_known(Check, c)) for c in data.get("checks", [])]
        return cls(**data)

    @classmethod
    def parse(cls, body: bytes, where: str) -> CheckRecord:
        """A stored record, or one line naming it when it is not one (not JSON, fields missing)."""
        try:
            return cls.from_dict(json.loads(body))
        except (ValueError, TypeError, AttributeError) as exc:
            raise IntegrityError(
                f"check record {where} is not one this lockstep can read ({type(exc).__name__}: {exc}); "
                "run the check again (`lockstep check`) to write a new one"
            ) from None


def _known(kind: type, data: dict) -> dict:
    names = {f.name for f in fields(kind)}
    return {key: value for key, value in data.items() if key in names}


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.sum(a * b, axis=1)


class Reading:
    """What the checks read from the servers, each fact read once (lazily) and shared."""

    def __init__(self, settings: StackSettings, catalog: Catalog, seed: int | None):
        self.settings, self.catalog = settings, catalog
        self.entry = catalog.get(settings.pin)
        self.client = clients.opensearch(settings.opensearch)
        self.s3 = clients.aws_for(settings, "s3")
        self.ssm = clients.aws_for(settings, "ssm")
        self.alias = settings.opensearch.alias_name
        self.live_index = settings.opensearch.index_name(settings.pin)
        self.rng = random.Random(seed)

    def opensearch(self):
        return clients.reaching("OpenSearch", clients.opensearch_url(self.settings.opensearch))

    def aws(self, service: str):
        return clients.reaching_aws(self.settings, service)

    @cached_property
    def targets(self) -> list[str]:
        with self.opensearch():
            return live_state.alias_targets(self.client, self.alias)

    @cached_property
    def served(self) -> str:
        """The index the alias really serves (what users query), else the pin's."""
        return self.targets[0] if len(self.targets) == 1 else self.live_index

    @cached_property
    def exists(self) -> bool:
        with self.opensearch():
            return bool(self.client.indices.exists(index=self.served))

    @cached_property
    def copies(self) -> list[cluster.ShardCopy]:
        """Every shard copy of the served index, once all are started (read before any other
        fact, and again after the last: a check never reads a partial view of the index)."""
        if not self.exists:
            return []
        with self.opensearch():
            return cluster.whole_copies(self.client, self.served, COPIES_WAIT_SECONDS)

    def copies_moved(self) -> bool:
        """Were the copies read (the gate passed), on several nodes, and are they not the same now?
        (One node: nothing to move; the first line stands.)"""
        if "copies" not in self.__dict__ or len({c.node for c in self.copies}) < 2:
            return False
        try:
            with self.opensearch():
                now, gaps = cluster.listing(self.client, self.served)
        except Unreachable:
            return False
        return bool(gaps) or now != self.copies

    def copies_unchanged(self) -> None:
        """After the checks: the same copies, all still started, or the view was partial (exit 2)."""
        with self.opensearch():
            now, gaps = cluster.listing(self.client, self.served) if self.copies else ([], [])
        if gaps or now != self.copies:
            gaps = gaps or ["copies moved"]
            raise Unreachable(
                f"index {self.served} changed while the check read it ({'; '.join(gaps)}): "
                "its reads may be partial; run the check again once the cluster is green"
            )

    @cached_property
    def live(self):
        return endpoints.endpoint_for(self.settings, self.settings.live_slot)

    @cached_property
    def described(self) -> dict:
        """The live endpoint's own description; {} when nothing serves there (`_describe`)."""
        return _describe(self.live)


def check_alias(r: Reading) -> Check:
    return Check(
        "alias",
        r.targets == [r.live_index],
        ", ".join(r.targets) or "(no index)",
        r.live_index,
        f"run `lockstep apply --stack {r.settings.stack}` to cut the alias over to {r.live_index}",
    )


def check_index_meta(r: Reading) -> Check:
    """`_meta` and the mapping's dimension match the catalog."""
    entry = r.entry
    with r.opensearch():
        meta = index.read_meta(r.client, r.served) or {}
        mapped_dimension = _mapped_dimension(r.client, r.served) if r.exists else None
    expected = {"version": entry.version, "artifact_sha256": entry.artifact_sha256, "dimension": entry.dimension}
    differs = {k: meta.get(k) for k, v in expected.items() if meta.get(k) != v}
    if mapped_dimension != entry.dimension:
        differs["mapping.embedding.dimension"] = mapped_dimension
    owner = index.other_stack(meta, r.settings)
    if owner:
        differs["stack"] = owner
    return Check(
        "index-meta",
        r.exists and not differs,
        json.dumps(differs) if differs else "matches",
        f"{entry.version} / {entry.artifact_sha256[:12]}… / dim {entry.dimension}",
        index.shared_prefix(f"index {r.served}", owner, r.settings)
        if owner
        else f"{r.served} was not built by {entry.version}'s artifact: rebuild it or cut over to {r.live_index}",
    )


def check_foreign_versions(r: Reading) -> Check:
    """No documents of another version (one aggregation)."""
    with r.opensearch():
        by_version = live_state.count_by_model_version(r.client, r.served)[1] if r.exists else {}
    foreign = {v: n for v, n in by_version.items() if v != r.settings.pin}
    return Check(
        "foreign-versions",
        r.exists and not foreign,
        json.dumps(foreign) if foreign else "0",
        "0",
        f"run `lockstep backfill --stack {r.settings.stack} --version {r.settings.pin}` to re-embed them",
    )


def check_doc_count(r: Reading, record: CheckRecord) -> Check:
    """Document count parity with the corpus, plus a sample of content hashes, read on every shard
    copy (primaries and replicas): a replica that missed writes differs from its primary. Copies
    that disagree are read again for up to COPIES_WAIT_SECONDS (a refresh may lag)."""
    with r.aws("S3"):
        corpus = corpus_store.corpus_index(r.s3, r.settings)
    count, stale, behind, copies = 0, 0, [], r.copies
    if copies:
        with r.opensearch():
            deadline = time.monotonic() + COPIES_WAIT_SECONDS
            while True:
                counts = {copy: cluster.copy_count(r.client, r.served, copy) for copy in copies}
                primaries = {copy.shard: n for copy, n in counts.items() if copy.primary}
                behind = [
                    f"{c.label} {n} ≠ primary {primaries[c.shard]}"
                    for c, n in counts.items()
                    if n != primaries[c.shard]
                ]
                if not behind or time.monotonic() >= deadline:
                    break
                time.sleep(1.0)
            count = sum(primaries.values())
            seed = r.rng.randint(0, 2**31)
            stale = sum(
                _stale_sample(r.client, r.served, corpus, r.settings.check.stale_sample, seed, c) for c in copies
            )
    record.copies_compared = len(copies)
    shards = len({c.shard for c in copies})
    return Check(
        "doc-count",
        count == corpus.count and stale == 0 and not behind,
        f"{count} docs, {stale} stale in sample; copies compared: {len(copies)} ({shards} shards)"
        + (f"; behind: {'; '.join(behind)}" if behind else ""),
        f"{corpus.count} docs, 0 stale, every copy equal",
        f"run `lockstep backfill --stack {r.settings.stack} --version {r.settings.pin}` to catch up"
        + (
            "; a replica that differs from its primary: set number_of_replicas to 0 and back to rebuild it"
            if behind
            else ""
        ),
    )


def check_pointer(r: Reading) -> Check:
    """The live pointer names the pin, its endpoint and its index. A pointer that is not
    lockstep's JSON is a broken deployment to report, not a reason to stop."""
    settings = r.settings
    endpoint = endpoints.endpoint_name(settings, settings.live_slot)
    with r.aws("SSM"):
        try:
            pointer = live_state.read_pointer(r.ssm, settings.pointer_name)
            observed = f"{pointer.version} / {pointer.endpoint} / {pointer.index}" if pointer else "(missing)"
        except IntegrityError:
            pointer, observed = None, "(not lockstep's JSON)"
    return Check(
        "pointer",
        pointer is not None
        and (pointer.version, pointer.endpoint, pointer.index) == (settings.pin, endpoint, r.live_index),
        observed,
        f"{settings.pin} / {endpoint} / {r.live_index}",
        f"run `lockstep apply --stack {settings.stack}` to write the pointer with the alias",
    )


def check_artifact(r: Reading) -> Check:
    """The artifact object exists, its bytes hash to the catalog's sha256, and no lifecycle rule of
    the bucket expires or archives artifacts (the one a later rollback needs would be gone)."""
    bucket = r.settings.artifacts.bucket
    with r.aws("S3"):
        status = artifacts.artifact_status(r.s3, bucket, r.entry)
        threats = artifacts.lifecycle_threats(r.s3, bucket) if status.get("exists") else []
    observed = (
        "missing" if not status.get("exists") else ("sha256 ok" if status.get("sha256_ok") else "sha256 MISMATCH")
    )
    fix = "restore the artifact object (the bucket is versioned) or publish it again"
    if threats:
        observed += "; " + "; ".join(threats)
        fix = f"exclude {artifacts.ARTIFACT_PREFIX} of bucket {bucket} from its lifecycle rules: artifacts must outlive their pins"
    return Check(
        "artifact",
        bool(status.get("exists") and status.get("sha256_ok")) and not threats,
        observed,
        f"sha256 {r.entry.artifact_sha256[:12]}…, kept",
        fix,
    )


def check_endpoint_artifact(r: Reading) -> Check:
    """The live endpoint serves the pin's artifact."""
    entry, described = r.entry, r.described
    return Check(
        "endpoint-artifact",
        described.get("artifact_sha256") == entry.artifact_sha256,
        f"{described.get('version')} ({str(described.get('artifact_sha256'))[:12]}…)" if described else "unreachable",
        f"{entry.version} ({entry.artifact_sha256[:12]}…)",
        f"redeploy the {r.settings.live_slot} slot with {entry.version} (`lockstep apply --stack {r.settings.stack}`)",
    )


def check_reembed_probe(r: Reading) -> Check:
    """Stored vectors vs the live endpoint's vectors for the same texts: the only check that sees
    vectors of another same-dimension model. With the alias on no index, users' queries fail:
    the probe fails, it does not crash."""
    settings = r.settings
    floor = settings.check.probe_min_cosine
    with r.opensearch():
        sample = _random_docs(r.client, r.alias, settings.check.probe_sample, r.rng) if r.targets else []
    if not r.described:
        low, observed = 1, "endpoint unreachable"
    elif not sample:
        low, observed = 1, "no documents to sample" if r.targets else f"alias {r.alias} points to no index"
    else:
        fresh = r.live.embed([d["text"] for d in sample])
        stored = np.array([d["embedding"] for d in sample], dtype=np.float32)
        if stored.shape == fresh.shape:
            cosines = _cosine(stored, fresh)
            low = int(np.sum(cosines < floor))
            observed = f"{low}/{len(sample)} below {floor} (min {cosines.min():.3f})"
        else:
            low, observed = len(sample), f"stored dimension {stored.shape[1]} ≠ endpoint {fresh.shape[1]}"
    return Check(
        "reembed-probe",
        low == 0,
        observed,
        f"0/{settings.check.probe_sample} below {floor}",
        f"vectors from another model are in {r.live_index}: rebuild it (`lockstep backfill --stack {settings.stack} "
        f"--version {settings.pin} --full`) or roll the endpoint back to the index's version",
    )


def check_recall(r: Reading) -> Check:
    """Both golden sets find their documents as an application's reader asks them (`lockstep.reader`:
    encoded by the pointer's endpoint, searched in the pointer's index); each set against the pin's
    floor for it (the catalog version's, see CheckSettings.recall_floors). With the alias on no
    index users' queries fail, so recall does too. The easy set is reported last."""
    settings = r.settings
    floors = settings.check.recall_floors(r.entry)
    with r.aws("S3"):
        golden = corpus_store.read_golden(r.s3, settings)
    recalls: dict[str, float] = {}
    observed = "endpoint unreachable" if not r.described else f"alias {r.alias} points to no index"
    if golden and r.described and r.targets:
        live = reader.Reader(settings, ttl=0)
        try:
            recalls = recall_by_set(live, golden, settings.check.k)
            shown = sorted(recalls, key=lambda name: name == "easy")
            observed = f"recall@{settings.check.k} " + ", ".join(f"{name} {recalls[name]:.2f}" for name in shown)
            read = live.last_read
            if read is not None and (read.version, read.index) != (settings.pin, r.live_index):
                # Readers answer from what the pointer names: that is not the pin's recall.
                observed = f"readers answer from {read.version} ({read.index}), not the pin: {observed}"
                recalls = {}
        except RequestError as exc:  # e.g. a query vector of another dimension than the index
            reason = exc.info.get("error", {}).get("reason", exc) if isinstance(exc.info, dict) else exc
            observed = f"queries fail: {index.one_line(reason)}"[:160]
        except reader.PointerUnreadable as exc:
            if not exc.fetched:
                raise  # SSM did not answer: recall could not be checked (read_all says so, exit 2)
            observed = f"the reader refuses: {exc}"[:200]
        except (reader.StaleReading, IntegrityError) as exc:  # the reader refused
            observed = f"the reader refuses: {exc}"[:200]
    # A golden file written before there were sets measures only `easy`: a floor for a set it does
    # not have is not checked (an upgrade fails nothing), and the record says so.
    checked = {name: floor for name, floor in floors.items() if name in recalls or name == "easy"}
    if recalls and (unasked := sorted(set(floors) - set(checked))):
        observed += f"; not checked: {', '.join(unasked)} (the golden set has no such queries)"
    return Check(
        "recall",
        bool(recalls) and all(recalls.get(name, 0.0) >= floor for name, floor in checked.items()),
        observed,
        ", ".join(f"{name} ≥ {floor:.2f}" for name, floor in sorted(checked.items(), key=lambda i: i[0] == "easy")),
        "the live endpoint and the index disagree: check the re-embed probe, then rebuild or roll back",
    )


def check_derived(store: DerivedStore) -> Callable[[Reading, CheckRecord], Check]:
    """No records of another version than the pin in `store`, except quarantined ones; its fence
    names the pin (another version's fence lets that version's writers in; none refuses all)."""

    def derived_check(r: Reading, record: CheckRecord) -> Check:
        pin = r.settings.pin
        counts = derived.count_by_version(r.settings, r.catalog, store)
        record.derived[store.name] = counts.to_dict()
        stale, kept = counts.stale(pin), counts.quarantined(pin)
        observed = ", ".join(f"{n} records of {v}" for v, n in stale.items()) or "0 records of other versions"
        if kept:
            observed += "; quarantined (kept): " + ", ".join(f"{n} of {v}" for v, n in kept.items())
        fix = f"run `lockstep apply --stack {r.settings.stack}`: it {store.repair}s them ({store.name}'s repair policy)"
        if counts.fence != pin:
            observed += f"; fence names {counts.fence}" if counts.fence else "; no fence"
            fix = _rewrite_fences(r.settings) if not stale else f"{fix}, and its cutover rewrites the fence"
        return Check(
            f"derived:{store.name}",
            not stale and counts.fence == pin,
            observed,
            f"0 records of other versions than {pin} in {store.table}; fence names {pin}",
            fix,
        )

    return derived_check


def _rewrite_fences(settings: StackSettings) -> str:
    """A cutover rewrites every fence; on a stack where nothing else moves, what runs one."""
    if settings.embedded:
        return f"run `lockstep apply --stack {settings.stack}`: its cutover rewrites the fence, nothing else moves"
    return "run `pulumi up --replace <the stack's Cutover URN>`: the cutover rewrites every fence, nothing else moves"


def check_standby(r: Reading) -> Check:
    """The standby slot serves what the config says (a warning: it never fails a deployment)."""
    settings = r.settings
    standby_entry = r.catalog.get(settings.standby or "")
    standby = _describe(endpoints.endpoint_for(settings, settings.standby_slot))
    return Check(
        "standby",
        standby.get("artifact_sha256") == standby_entry.artifact_sha256,
        f"{standby.get('version')}" if standby else "not running",
        settings.standby or "",
        f"deploy {settings.standby} to the {settings.standby_slot} slot (`lockstep apply`)",
        severity="warn",
    )


def checks_for(settings: StackSettings) -> list[tuple[str, Callable[..., Check]]]:
    """The named checks of a stack, in the order they run and are reported."""
    named: list[tuple[str, Callable[..., Check]]] = [
        ("alias", check_alias),
        ("index-meta", check_index_meta),
        ("foreign-versions", check_foreign_versions),
        ("doc-count", check_doc_count),
        ("pointer", check_pointer),
        ("artifact", check_artifact),
        ("endpoint-artifact", check_endpoint_artifact),
        ("reembed-probe", check_reembed_probe),
        ("recall", check_recall),
    ]
    named += [(f"derived:{store.name}", check_derived(store)) for store in settings.derived]
    if settings.standby:
        named.append(("standby", check_standby))
    return named


def run(settings: StackSettings, catalog: Catalog, seed: int | None = None) -> CheckRecord:
    """Every named check, in order. A part that could not be read stops the run with one line
    (`Unreachable`/`UsageError`, exit 2): a record is only ever made of observations. When the
    served index's copies changed while they were read (a node left or came back, a copy moved),
    the whole reading starts again from a fresh view while COPIES_WAIT_SECONDS last."""
    deadline = time.monotonic() + COPIES_WAIT_SECONDS
    while True:
        reading = Reading(settings, catalog, seed)
        try:
            return read_all(reading)
        except Unreachable:
            if time.monotonic() >= deadline or not reading.copies_moved():
                raise


def read_all(reading: Reading) -> CheckRecord:
    settings = reading.settings
    record = CheckRecord(
        settings.stack,
        settings.pin,
        reading.entry.artifact_sha256,
        index.now(),
        tool_version=package_version("lockstep"),
    )
    try:
        reading.copies  # noqa: B018 — every copy is there before anything is read
    except Unreachable as exc:
        raise Unreachable(f"could not check: {exc}") from None
    for name, function in checks_for(settings):
        try:
            writes_record = name.startswith("derived:") or name == "doc-count"  # they add to the record
            result = function(reading, record) if writes_record else function(reading)
        except Unreachable as exc:
            raise Unreachable(f"could not check {name}: {exc}") from None
        except TransportError as exc:
            if not isinstance(exc.status_code, int) or (exc.status_code < 500 and exc.status_code != 429):
                raise
            raise Unreachable(
                f"could not check {name}: OpenSearch answered {exc.status_code} ({exc.error}), a node or shard "
                "could not be read (or was too busy to); check again once the cluster is green"
            ) from None
        except (ClientError, BotoCoreError) as exc:  # throttled past botocore's retries, a 5xx, …
            raise Unreachable(f"could not check {name}: AWS did not answer ({index.one_line(str(exc))})") from None
        record.checks.append(result)
    reading.copies_unchanged()
    record.finished_at = index.now()
    return record


@dataclass
class Outcome:
    """The check as a deployment step sees it: the record (None when it could not check), the
    exit code (0 consistent, 1 inconsistent, 2 could not check), the one line when it could not
    (or could not store the record), and where the record was stored."""

    record: CheckRecord | None
    exit_code: int
    reason: str = ""
    key: str | None = None
    note: str = ""  # said before the record (`live_after_revert`)


def evaluate(settings: StackSettings, catalog: Catalog, seed: int | None = None, keep: bool = True) -> Outcome:
    """The public entry point (CLI, apply, lockstep's provider): run the checks and, with `keep`,
    store the record. A check that could not be made stores nothing, so the record promotion
    reads is never replaced by a result that was not established."""
    try:
        record = run(settings, catalog, seed)
    except LockstepError as exc:
        if exc.exit_code != 2:
            raise
        return Outcome(None, 2, str(exc))
    try:
        key = store(record, settings) if keep else None
    except LockstepError as exc:  # what was observed is still said; a pass nobody can read back is not one
        if exc.exit_code != 2:
            raise
        return Outcome(record, 1 if not record.passed else 2, str(exc))  # "could not store the check record: …"
    return Outcome(record, 0 if record.passed else 1, key=key)


def live_after_revert(settings: StackSettings) -> tuple[StackSettings, str]:
    """What `lockstep check` checks: the stack file's pin, unless autoRevert flipped the live pointer
    back (the latest record is its check of the live version, reverted from this pin). Then the live
    unit is checked as what it is, with one line saying so first."""
    record = latest(settings)
    if record is None or record.reverted_from != settings.pin or record.pin not in settings.slots.filled.values():
        return settings, ""
    with clients.reaching_aws(settings, "SSM"):
        pointer = live_state.read_pointer(clients.aws_for(settings, "ssm"), settings.pointer_name)
    if pointer is None or pointer.version != record.pin:
        return settings, ""
    note = (
        f"live is {record.pin} by autoRevert while stacks/Pulumi.{settings.stack}.yaml pins {settings.pin} "
        f"(checking {record.pin}, what is live): make it permanent with "
        f"`lockstep pin --stack {settings.stack} {record.pin}`, or fix {settings.pin} and deploy again"
    )
    return settings.with_pin(record.pin), note


def evaluate_live(settings: StackSettings, catalog: Catalog) -> Outcome:
    """`lockstep check`: `evaluate` of what is live (`live_after_revert`), stored, with its note."""
    try:
        checked, note = live_after_revert(settings)
    except LockstepError as exc:
        if exc.exit_code != 2:
            raise
        return Outcome(None, 2, str(exc))
    outcome = evaluate(checked, catalog)
    outcome.note = note
    return outcome


# `_meta` keys that say which model built an index (engine and corpus may change without a rebuild).
BUILD_KEYS = ("model", "version", "artifact_sha256", "dimension", "space_type")


def refuse_misbuilt_indices(
    client, settings: StackSettings, catalog: Catalog, versions: list[str] | None = None
) -> None:
    """An index of a kept version that was built for another catalog entry (an earlier run with a
    catalog that lied about the dimension, say) can be neither caught up nor cut over to: name it
    and the fix, before anything is written (plan, apply, backfill)."""
    names = {settings.opensearch.index_name(version): version for version in versions or settings.versions}
    for name, meta in index.read_metas(client, list(names)).items():
        owner = index.other_stack(meta, settings)
        if owner:  # before the fix below, which would say to delete it
            raise IntegrityError(index.shared_prefix(f"index {name}", owner, settings))
        version = names[name]
        expected = index.index_meta(settings, catalog.get(version))
        differs = {k: (meta.get(k), expected[k]) for k in BUILD_KEYS if k in expected and meta.get(k) != expected[k]}
        if not differs:
            continue
        what = "; ".join(f"{k} {seen!r} where the catalog says {want!r}" for k, (seen, want) in differs.items())
        fix = (
            "it is live: fix the catalog or roll back to another version first"
            if name in live_state.alias_targets(client, settings.opensearch.alias_name)
            else f"it is not live: delete it (DELETE /{name}), then `lockstep apply --stack {settings.stack}` builds it again"
        )
        raise IntegrityError(f"index {name} was built for another catalog entry than {version}'s ({what}); {fix}")


def _describe(endpoint) -> dict:
    """{} when nothing serves there (no endpoint deployed, no process): an observation, the live
    endpoint is down. A describe that could not be made (credentials refused, throttled past the
    retries, no answer) raises: the check could not read the endpoint, which is not a failure of it."""
    try:
        return endpoint.describe() if endpoint else {}
    except endpoints.NotDeployed:
        return {}


def _mapped_dimension(client, index_name: str) -> int | None:
    mapping = client.indices.get_mapping(index=index_name)
    properties = next(iter(mapping.values()))["mappings"].get("properties", {})
    return properties.get("embedding", {}).get("dimension")


def _random_docs(client, target: str, size: int, rng: random.Random) -> list[dict]:
    if not client.indices.exists(index=target):
        return []
    body = {
        "size": size,
        "_source": ["text", "embedding", "content_sha256"],
        "query": {
            "function_score": {
                "query": {"match_all": {}},
                "random_score": {"seed": rng.randint(0, 2**31), "field": "_seq_no"},
            }
        },
    }
    answer = client.search(index=target, body=body)
    cluster.refuse_partial(answer, f"the probe's sample of {target}", "check again when the cluster is whole")
    return [{"id": h["_id"], **h["_source"]} for h in answer["hits"]["hits"]]


def _stale_sample(
    client, index_name: str, corpus: corpus_store.CorpusIndex, size: int, seed: int, copy: cluster.ShardCopy
) -> int:
    """Sampled documents of one shard copy whose content hash is not the corpus's (only the sample is parsed)."""
    if size == 0:
        return 0
    body = {
        "size": size,
        "_source": ["content_sha256"],
        "query": {"function_score": {"query": {"match_all": {}}, "random_score": {"seed": seed, "field": "_seq_no"}}},
    }
    answer = cluster.read_copy(
        index_name,
        copy,
        lambda preference: client.search(index=index_name, body=body, params={"preference": preference}),
    )
    hits = answer["hits"]["hits"]
    truth = corpus.content_sha256([h["_id"] for h in hits])
    return sum(1 for h in hits if truth.get(h["_id"]) != h["_source"].get("content_sha256"))


def nearest(client, target: str, vector: np.ndarray, k: int) -> list[str]:
    """Ids of the k nearest documents to `vector` in `target` (an index or the alias). The HNSW
    search looks at ≥ 100 candidates (lucene's k is its ef_search), then returns the top k."""
    body = {"size": k, "_source": False, "query": {"knn": {"embedding": {"vector": vector.tolist(), "k": max(k, 100)}}}}
    return [h["_id"] for h in client.search(index=target, body=body)["hits"]["hits"]]


def _hits(live: reader.Reader, golden: list[dict], k: int) -> list[float]:
    """Per golden query, the share of its expected documents found in its top k, as `live` reads them."""
    answers = live.search_many([g["query"] for g in golden], k)
    return [
        len({hit["_id"] for hit in answer.hits} & set(query["expected"])) / max(len(query["expected"]), 1)
        for query, answer in zip(golden, answers)
    ]


def recall_at_k(live: reader.Reader, golden: list[dict], k: int) -> float:
    """Mean share of each golden query's expected documents found in its top k."""
    return sum(_hits(live, golden, k)) / len(golden)


def recall_by_set(live: reader.Reader, golden: list[dict], k: int) -> dict[str, float]:
    """recall_at_k of each golden set (corpus.SETS) present in `golden`, from one pointer and one embed call."""
    found: dict[str, list[float]] = {}
    for query, hit in zip(golden, _hits(live, golden, k)):
        found.setdefault(corpus.golden_set(query), []).append(hit)
    return {name: sum(hits) / len(hits) for name, hits in found.items()}


# ---------------------------------------------------------------------------------- records


def store(record: CheckRecord, settings: StackSettings) -> str:
    """Write the record under checks/<stack>/ (timestamped) and as latest.json — unless latest.json
    holds a check that began after this one (two checks overlapping: the later observation stays
    the latest, whichever finished last); return its key."""
    s3 = clients.aws_for(settings, "s3")
    body = json.dumps(record.to_dict(), indent=2).encode()
    stamp = record.finished_at.replace(":", "").replace("-", "")
    key = f"{RECORD_PREFIX}/{settings.stack}/{stamp}-{record.pin}.json"
    with clients.reaching_aws(settings, "S3"):
        try:
            newer = _latest_or_none(settings)
            keys = [key] if newer and newer.started_at > record.started_at else [key, _latest_key(settings)]
            for name in keys:
                s3.put_object(Bucket=settings.artifacts.bucket, Key=name, Body=body, ContentType="application/json")
        except s3.exceptions.NoSuchBucket:
            raise UsageError(
                f"could not store the check record: artifact bucket {settings.artifacts.bucket} does not exist; "
                f"deploy the stack (`pulumi up`, or `lockstep apply --stack {settings.stack}`) or fix artifacts.bucket"
            ) from None
    return key


def _latest_key(settings: StackSettings) -> str:
    return f"{RECORD_PREFIX}/{settings.stack}/latest.json"


def _latest_or_none(settings: StackSettings) -> CheckRecord | None:
    """The latest record, or None when there is none or it is not one (a new record replaces it)."""
    try:
        return latest(settings)
    except IntegrityError:
        return None


def latest(settings: StackSettings) -> CheckRecord | None:
    s3 = clients.aws_for(settings, "s3")
    with clients.reaching_aws(settings, "S3"):
        try:
            body = s3.get_object(Bucket=settings.artifacts.bucket, Key=_latest_key(settings))["Body"].read()
        except s3.exceptions.NoSuchKey:
            return None
        except s3.exceptions.NoSuchBucket:
            return None
    return CheckRecord.parse(body, f"s3://{settings.artifacts.bucket}/{_latest_key(settings)}")
