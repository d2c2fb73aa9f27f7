"""The embedded orchestrator: observe the servers, plan, and execute the plan (`lockstep apply`).

Each plan step runs through its kind's handler (HANDLERS). `lockstep apply` drives the embedded
default (endpoint backend `local`); an AWS stack goes through `pulumi up`, whose resource changes
are the same steps — tests/test_release_model.py holds the two together.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from botocore.exceptions import BotoCoreError, ClientError
from opensearchpy.exceptions import TransportError

from lockstep import plan as release
from lockstep import promote, runtime
from lockstep.config import Catalog, CatalogEntry, StackSettings
from lockstep.errors import LockstepError, UsageError
from lockstep.ops import (
    artifacts,
    check,
    clients,
    cluster,
    corpus_store,
    derived,
    endpoints,
    index,
    live_state,
    reembed,
)
from lockstep.ops.backfill import engine as backfill_engine
from lockstep.ops.backfill.core import BackfillResult
from lockstep.ops.corpus import Document


@dataclass
class StepResult:
    step: release.Step
    seconds: float
    detail: str = ""


@dataclass
class ApplyResult:
    plan: release.ReleasePlan
    steps: list[StepResult] = field(default_factory=list)
    record: check.CheckRecord | None = None
    embedded: int = 0
    revert: Revert | None = None  # autoRevert's outcome, when the check failed

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps)


class Environment:
    """The clients of one stack, built once per command."""

    def __init__(self, settings: StackSettings):
        self.settings = settings
        self.s3 = clients.aws_for(settings, "s3")
        self.ssm = clients.aws_for(settings, "ssm")
        self.opensearch = clients.opensearch(settings.opensearch)
        self.opensearch_url = clients.opensearch_url(settings.opensearch)

    def reach_opensearch(self):
        return clients.reaching("OpenSearch", self.opensearch_url)

    def reach_aws(self):
        return clients.reaching_aws(self.settings)


def _rates_file() -> Path:
    return runtime.home() / "rates.json"


def measured_rates() -> dict[str, float]:
    """Rates earlier runs measured on this machine (items/s by plan.embed_rate_key / repair_rate_key)."""
    path = _rates_file()
    try:
        rates = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:  # a torn write: measure again
        return {}
    return {key: float(value) for key, value in rates.items() if isinstance(value, (int, float)) and value > 0}


def record_rate(key: str, items: int, seconds: float) -> None:
    """Remember what a step took (items over its whole wall time, fixed costs included), so the next
    plan's ETA for the same model version and engine is measured, not guessed."""
    if items <= 0 or seconds <= 0:
        return
    rates = measured_rates() | {key: round(items / seconds, 2)}
    path = _rates_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(f".{os.getpid()}.tmp")
    scratch.write_text(json.dumps(rates, sort_keys=True))
    scratch.replace(path)


def require_local(settings: StackSettings) -> None:
    if settings.endpoints.backend != "local":
        raise UsageError(
            f"stack {settings.stack} deploys to SageMaker: run `pulumi up --stack {settings.stack}` "
            "(lockstep apply drives only stacks whose endpoints.backend is local)"
        )


class Corpus:
    """The stack's corpus: identified by one HEAD request, read from S3 only if needed."""

    def __init__(self, env: Environment, ref: corpus_store.CorpusRef | None = None):
        """`ref`: the corpus object's identity when the caller has just read it (else one HEAD)."""
        self.env = env
        if ref is None:
            with env.reach_aws():
                ref = corpus_store.corpus_ref(env.s3, env.settings)
        self.ref = ref
        self._documents: list[Document] | None = None
        self._index: corpus_store.CorpusIndex | None = None
        # Deltas found without scanning an index (see delta_since_sync), by version, for apply.
        self.deltas: dict[str, reembed.Delta] = {}

    @property
    def documents(self) -> list[Document] | None:
        if self._documents is None and self.ref is not None:
            with self.env.reach_aws():
                self._documents = corpus_store.read_corpus(self.env.s3, self.env.settings)
        return self._documents

    @property
    def size(self) -> int:
        if self.ref is not None and self.ref.documents is not None:
            return self.ref.documents
        return len(self.documents or [])

    def matches(self, state: live_state.IndexState) -> bool:
        """The index was synced with exactly this corpus and holds only its own version's
        documents, as many as it had then: nothing to catch up, no need to scan."""
        synced = (state.meta or {}).get("synced") or {}
        return (
            self.ref is not None
            and synced.get("corpus_etag") == self.ref.etag
            and state.count_by_model_version == {state.version: synced.get("documents")}
        )

    def delta_since_sync(self, state: live_state.IndexState) -> reembed.Delta | None:
        """The delta of an index that was synced with an earlier corpus and not written to since
        (same per-version count): the diff of the two corpus versions in the versioned bucket,
        line by line — no index scan, no parse. None when that cannot be established."""
        synced = (state.meta or {}).get("synced") or {}
        if self.ref is None or state.count_by_model_version != {state.version: synced.get("documents")}:
            return None
        with self.env.reach_aws():
            version_id = corpus_store.corpus_version_with_etag(
                self.env.s3, self.env.settings, synced.get("corpus_etag", "")
            )
            if version_id is None:
                return None
            if self._index is None:
                self._index = corpus_store.corpus_index(self.env.s3, self.env.settings)
            changes = self._index.changes_since(corpus_store.corpus_index(self.env.s3, self.env.settings, version_id))
        if changes is None:
            return None
        new, changed, gone = changes
        self.deltas[state.version] = reembed.Delta(missing=new, changed=changed, deleted=gone)
        return self.deltas[state.version]


def observe(env: Environment, catalog: Catalog, corpus: Corpus) -> release.Observed:
    """What exists now: indices with their delta against the corpus, alias, pointer, slots.

    The AWS reads (derived records, artifacts, slots) run beside the OpenSearch reads: a
    rollback's plan is mostly this function's round trips."""
    with ThreadPoolExecutor(1) as aws:
        on_aws = aws.submit(_observe_aws, env, catalog)
        indices, inventory, health = _observe_indices(env, catalog, corpus)
        derived_counts, published, slots_deployed = on_aws.result()
    rates = measured_rates()
    return release.Observed(
        indices=indices,
        alias_targets=tuple(inventory.alias_targets),
        pointer_version=inventory.pointer.version if inventory.pointer else None,
        slots_deployed=slots_deployed,
        corpus_size=corpus.size,
        artifacts=published,
        derived=derived_counts,
        rates=rates,
        estimated_rates=estimated_rates(env, catalog, corpus, indices, derived_counts, rates),
        cluster=release.ClusterHealth(health["status"], health["number_of_nodes"], health["unassigned_shards"]),
    )


def _observe_indices(env: Environment, catalog: Catalog, corpus: Corpus):
    """(indices by version, inventory, cluster health): each index with its delta against the corpus."""
    settings = env.settings
    with env.reach_opensearch(), ThreadPoolExecutor(1) as aside:
        health_read = aside.submit(cluster.by_index, env.opensearch)
        inventory = live_state.inventory(env.opensearch, env.ssm, settings, catalog)
        health, index_health = health_read.result()
        observed_indices = {}
        for version, state in inventory.indices.items():
            delta = None
            if corpus.matches(state):
                delta = release.Delta()
            elif (known := corpus.delta_since_sync(state)) is not None:
                delta = release.Delta(
                    missing=len(known.missing), changed=len(known.changed), deleted=len(known.deleted)
                )
            elif corpus.documents is not None:
                d = reembed.index_delta(env.opensearch, state.index, version, corpus.documents)
                delta = release.Delta(missing=len(d.missing), changed=len(d.changed), deleted=len(d.deleted))
            others = tuple(a for a in state.aliases if a != settings.opensearch.alias_name)
            observed_indices[version] = release.ObservedIndex(
                doc_count=state.doc_count,
                delta=delta,
                aliases=others,
                corpus=(state.meta or {}).get("corpus"),
                unassigned_primaries=cluster.unassigned_primaries(index_health.get(state.index, {})),
            )
    return observed_indices, inventory, health


def _observe_aws(env: Environment, catalog: Catalog):
    """(derived record counts by store, published versions, the version each slot serves)."""
    settings = env.settings
    with env.reach_aws(), ThreadPoolExecutor(1) as aside:
        slots = aside.submit(lambda: {slot: _slot_version(settings, catalog, slot) for slot in endpoints.SLOTS})
        # Derived records by version (the lineage of a rollback); an embedded apply creates missing tables.
        derived_counts = {
            store.name: derived.count_by_version(settings, catalog, store, missing_ok=settings.embedded)
            for store in settings.derived
        }
        published = frozenset(
            v
            for v in settings.versions
            if artifacts.published_version(env.s3, settings.artifacts.bucket, catalog.get(v))
        )
        return derived_counts, published, slots.result()


CALIBRATION_DOCS = 16  # documents a first plan encodes to estimate a version's re-embedding rate


def estimated_rates(
    env: Environment,
    catalog: Catalog,
    corpus: Corpus,
    indices: dict[str, release.ObservedIndex],
    stores: dict,
    measured: dict[str, float],
) -> dict[str, float]:
    """A short calibration for the work this plan has and no earlier run measured, so the first plan
    gives an ETA (labelled estimated): the version's model encoding CALIBRATION_DOCS corpus documents
    (model load excluded; the bulk writes are not in it), and a store's k-NN lookups for one repair
    batch on the pin's index, once its graphs are loaded (the plan caps it at the store's writeRate). What cannot be calibrated (artifact not published yet, no index) stays
    unknown; a calibration never fails the plan."""
    settings, pin, found = env.settings, catalog.get(env.settings.pin), {}
    embeds = []
    for version in settings.versions:
        entry, state = catalog.get(version), indices.get(version)
        key = release.embed_rate_key(entry, settings.backfill.engine)
        if key not in measured and (
            state is None or state.delta is None or state.delta.missing + state.delta.changed > 0
        ):
            embeds.append((key, entry))
    repairs = [
        (key, store)
        for store in settings.derived
        if (key := release.repair_rate_key(store, pin)) not in measured
        and (counts := stores.get(store.name)) is not None
        and sum(counts.stale(pin.version).values())
    ]
    documents = (corpus.documents or []) if embeds or repairs else []  # read only when there is work to time
    texts, ids = [d.text for d in documents[:CALIBRATION_DOCS]], [d.id for d in documents[: derived.BATCH]]
    for key, entry in embeds if texts else []:
        try:
            with env.reach_aws():
                model = artifacts.load_embedder(env.s3, settings.artifacts.bucket, entry)
            started = time.perf_counter()
            model.encode(texts)
            found[key] = round(len(texts) / max(time.perf_counter() - started, 1e-6), 2)
        except (LockstepError, ClientError, BotoCoreError):
            continue
    for key, store in repairs if ids else []:
        try:
            with env.reach_opensearch():
                index_name = settings.opensearch.index_name(pin.version)
                # The first k-NN query on an index loads its graphs (seconds, once): not the rate.
                derived.related(env.opensearch, index_name, ids[:1], store.k)
                started = time.perf_counter()
                derived.related(env.opensearch, index_name, ids, store.k)
            found[key] = round(len(ids) / max(time.perf_counter() - started, 1e-6), 2)
        except (LockstepError, TransportError):
            continue
    return found


def _slot_version(settings: StackSettings, catalog: Catalog, slot: str) -> str | None:
    """The catalog version the slot serves; a version whose artifact is not the catalog's reads as
    something else (so the plan redeploys the slot, as the program would)."""
    served = endpoints.deployed(settings, slot)
    if served is None:
        return None
    version, sha = served.get("version"), served.get("artifact_sha256")
    if isinstance(version, str) and version in catalog and catalog.get(version).artifact_sha256 == sha:
        return version
    return f"{version} (artifact {str(sha)[:12]}…, not the catalog's)"


def plan_for(settings: StackSettings, catalog: Catalog) -> tuple[Environment, release.ReleasePlan]:
    env = Environment(settings)
    return env, release.release_plan(catalog, settings, observe(env, catalog, Corpus(env)))


def refuse_before_writing(env: Environment, catalog: Catalog) -> None:
    """What can be known to fail is refused before anything is written: OpenSearch unreachable
    or refusing our credentials, and an artifact that is not what its catalog entry says."""
    with env.reach_opensearch():
        env.opensearch.info()
    with env.reach_aws():
        for version in env.settings.versions:  # sha256, and the dimension its model really produces
            artifacts.verify_model(env.s3, env.settings.artifacts.bucket, catalog.get(version))
    with env.reach_opensearch():  # an index an earlier run built for another entry: named, with the fix
        check.refuse_misbuilt_indices(env.opensearch, env.settings, catalog)


@dataclass
class Run:
    """What the step handlers of one apply share."""

    settings: StackSettings
    catalog: Catalog
    env: Environment
    corpus: Corpus
    planned: release.ReleasePlan
    result: ApplyResult
    progress: bool
    before_cutover: Callable[[StackSettings], None] | None = None
    embedders: dict[str, Any] = field(default_factory=dict)  # loaded once per apply, by version


@dataclass
class Done:
    """A handler's outcome: one line for the log and, for data-sized steps, what a rate is measured on."""

    detail: str = ""
    items: int = 0
    rate_key: str | None = None


Handler = Callable[[Run, release.Step], Done]
HANDLERS: dict[str, Handler] = {}


def handles(kind: str) -> Callable[[Handler], Handler]:
    """Register the handler of one plan step kind (`apply` runs each step through its kind's handler)."""

    def register(handler: Handler) -> Handler:
        HANDLERS[kind] = handler
        return handler

    return register


def apply(
    settings: StackSettings,
    catalog: Catalog,
    progress: bool = True,
    say: Callable[[str], None] = print,
    before_cutover: Callable[[StackSettings], None] | None = None,
) -> ApplyResult:
    """Drive the embedded environment to the stack's config; the check is the last step.

    `before_cutover` runs once the new version is provisioned and deployed but not yet live:
    the validation window (the drill dual-writes arriving documents there)."""
    require_local(settings)
    backfill_engine.preflight(settings)  # backfill.engine ray: Ray importable, cluster reachable, before any write
    env = Environment(settings)
    with ThreadPoolExecutor(1) as reads:  # reads beside reads; the first write waits for the refusals
        found = reads.submit(_find_corpus, env)
        refuse_before_writing(env, catalog)
        found_corpus, corpus_posture = found.result()
    for store in settings.derived:  # first: a table of the wrong schema stops the apply before any write
        derived.ensure_table(settings, store)
    with env.reach_aws():
        seeded = corpus_store.ensure_corpus(env.s3, settings, found=found_corpus)
    corpus = Corpus(env, seeded.ref)
    with ThreadPoolExecutor(1) as reads:
        posture = reads.submit(_posture_drift, env, settings.artifacts.bucket)
        observed = observe(env, catalog, corpus)
        drift = {settings.corpus.bucket: corpus_posture, settings.artifacts.bucket: posture.result()}
    planned = release.release_plan(catalog, settings, observed)
    if any(step.kind in ("provision", "catch_up") for step in planned.steps):
        _ = corpus.documents  # a corpus that cannot be parsed is refused here, before the first write
    with env.reach_aws():
        for bucket, lacking in drift.items():  # None: missing, created here (after the plan, like every write)
            artifacts.ensure_bucket(env.s3, bucket, drift=lacking)
    run = Run(settings, catalog, env, corpus, planned, ApplyResult(planned), progress, before_cutover)
    for step in planned.steps:
        started = time.monotonic()
        done = HANDLERS[step.kind](run, step)
        seconds = time.monotonic() - started
        if done.rate_key:
            record_rate(done.rate_key, done.items, seconds)
        run.result.steps.append(StepResult(step, seconds, done.detail))
        say(f"  {step.kind:<15} {step.version or '':<4} {seconds:6.2f}s  {done.detail}")
    failed = run.result.record
    if settings.auto_revert and failed is not None and not failed.passed:
        run.result.revert = auto_revert(env, catalog, corpus, failed)
    return run.result


def _posture_drift(env: Environment, bucket: str) -> tuple[artifacts.PostureSetting, ...] | None:
    """What the bucket lacks of its posture (None: the bucket is missing); reads only."""
    with env.reach_aws():
        try:
            return artifacts.posture_drift(env.s3, bucket)
        except artifacts.NoBucket:
            return None


def _find_corpus(env: Environment) -> tuple[corpus_store.FoundCorpus, tuple[artifacts.PostureSetting, ...] | None]:
    """(the corpus objects, the corpus bucket's posture drift): reads only."""
    with ThreadPoolExecutor(1) as pool:
        posture = pool.submit(_posture_drift, env, env.settings.corpus.bucket)
        with env.reach_aws():
            found = corpus_store.find_corpus(env.s3, env.settings)
        return found, posture.result()


@handles("ensure_artifact")
def _ensure_artifact(run: Run, step: release.Step) -> Done:
    with run.env.reach_aws():
        artifacts.publish_artifact(run.env.s3, run.settings, run.catalog.get(step.version))
    return Done()


@handles("provision")
@handles("catch_up")
def _sync_index(run: Run, step: release.Step) -> Done:
    entry = run.catalog.get(step.version)
    if entry.version not in run.embedders:
        with run.env.reach_aws():
            run.embedders[entry.version] = artifacts.load_embedder(run.env.s3, run.settings.artifacts.bucket, entry)
    with run.env.reach_opensearch():
        synced = backfill_engine.sync_index(
            run.settings,
            entry,
            progress=run.progress,
            client=run.env.opensearch,
            embedder=run.embedders[entry.version],
            documents=run.corpus.documents,
            corpus_etag=run.corpus.ref.etag if run.corpus.ref else None,
            known_delta=run.corpus.deltas.get(entry.version),
        )
    run.result.embedded += synced.embedded
    return Done(
        f"{synced.embedded} embedded, {synced.deleted} deleted",
        items=synced.embedded,
        rate_key=release.embed_rate_key(entry, run.settings.backfill.engine),
    )


@handles("restamp")
def _restamp(run: Run, step: release.Step) -> Done:
    """The corpus moved: the index (caught up, or with the same content) now names the new location."""
    with run.env.reach_opensearch():
        before = index.restamp_corpus(run.env.opensearch, run.settings, run.catalog.get(step.version))
    return Done(f"_meta.corpus {before} -> {run.settings.corpus.uri}" if before else "already stamped")


@handles("deploy_slot")
def _deploy_slot(run: Run, step: release.Step) -> Done:
    slot = endpoints.deploy_local_slot(run.settings, step.slot or "", run.catalog.get(step.version))
    return Done(f"{step.slot} → {slot.url}")


@handles("cutover")
def _cutover(run: Run, step: release.Step) -> Done:
    settings, env = run.settings, run.env
    if run.before_cutover:
        run.before_cutover(settings)
    entry = run.catalog.get(step.version)
    # The live slot must serve the pin's artifact before the alias follows it (issue 18, defect 5).
    endpoint = endpoints.require_serving(settings, settings.live_slot, entry)
    with env.reach_opensearch(), env.reach_aws():
        pointer = live_state.cutover(env.opensearch, env.ssm, settings, entry, endpoint)
    return Done(f"alias {settings.opensearch.alias_name} → {pointer.index}, pointer → {pointer.version}")


@handles("repair_derived")
def _repair_derived(run: Run, step: release.Step) -> Done:
    settings, pin = run.settings, run.catalog.get(step.version)
    repaired = []
    for store in settings.derived:
        if any(a.store == store.name and a.records for a in run.planned.derived):
            done = derived.repair(settings, run.catalog, store, progress=run.progress)
            record_rate(
                release.repair_rate_key(store, pin), done.rewritten + done.quarantined + done.deleted, done.seconds
            )
            repaired.append(done)
    return Done("; ".join(r.summary() for r in repaired))


@handles("check")
def _check(run: Run, step: release.Step) -> Done:
    record = run.result.record = check.run(run.settings, run.catalog)
    check.store(record, run.settings)
    return Done("consistent" if record.passed else "INCONSISTENT: " + ", ".join(c.name for c in record.failures))


@handles("drop")
def _drop(run: Run, step: release.Step) -> Done:
    env, settings = run.env, run.settings
    with env.reach_opensearch(), env.reach_aws():
        # The inventory is read now (after the cutover), and drop_index re-reads the aliases itself.
        live_state.drop_index(
            env.opensearch, settings, step.version, live_state.inventory(env.opensearch, env.ssm, settings, run.catalog)
        )
    return Done(f"dropped {settings.opensearch.index_name(step.version)}")


def backfill(
    settings: StackSettings,
    catalog: Catalog,
    version: str,
    progress: bool = True,
    full: bool = False,
    attach: str | None = None,
) -> BackfillResult:
    """`lockstep backfill`: provision or catch up one version's index (never moves the live alias).

    Bad input is refused before the first write: a version the stack does not keep, an engine
    that cannot run, OpenSearch unreachable or refusing us, a model that is not the catalog's,
    a corpus that cannot be parsed. Then the artifact is published and the index synced."""
    entry = catalog.get(version)
    if version not in settings.versions:
        raise UsageError(
            f"{version} is not in stack {settings.stack}'s pin, slots or retain; add it there first so its index is kept"
        )
    backfill_engine.preflight(settings, attach)
    env = Environment(settings)
    with env.reach_opensearch():
        env.opensearch.info()
    artifacts.verify_model(env.s3, settings.artifacts.bucket, entry)  # sha256, dimension: before the first write
    with env.reach_opensearch():
        check.refuse_misbuilt_indices(env.opensearch, settings, catalog, [version])
    documents, corpus_etag = None, None
    with clients.reaching_aws(settings, "S3"):
        ref = corpus_store.ensure_corpus(env.s3, settings).ref if settings.embedded else None
        if settings.backfill.engine == "local":  # read once here, handed to the sync below
            ref = ref or corpus_store.corpus_ref(env.s3, settings)
            documents, corpus_etag = corpus_store.read_corpus(env.s3, settings), ref.etag if ref else None
        if settings.embedded:
            artifacts.ensure_bucket(env.s3, settings.artifacts.bucket)
        artifacts.publish_artifact(env.s3, settings, entry)
    return backfill_engine.sync_index(
        settings,
        entry,
        progress=progress,
        full=full,
        attach=attach,
        client=env.opensearch,
        documents=documents,
        corpus_etag=corpus_etag,
    )


@dataclass
class Revert:
    """What autoRevert did after the deploy's check failed: the flip back, and the check after it."""

    stack: str
    failed: check.CheckRecord
    to_version: str | None = None  # None: not reverted (see why)
    why: str = ""
    record: check.CheckRecord | None = None
    command: str = "apply"  # what deploys the stack file again: apply or up

    def summary(self) -> str:
        """One screen: what failed, what autoRevert did, where things are, what to do."""
        failed = ", ".join(c.name for c in self.failed.failures)
        lines = [f"autoRevert: the check of {self.failed.pin} failed ({failed})."]
        if self.to_version is None:
            lines.append(f"Not reverted: {self.why}. {self.failed.pin} is live and inconsistent: fix it or roll back.")
        else:
            outcome = "passed" if self.record and self.record.passed else "FAILED too"
            lines.append(f"Flipped back to {self.to_version} ({self.why}); its check {outcome}.")
            lines.append(
                f"Live is {self.to_version}; stacks/Pulumi.{self.stack}.yaml still pins {self.failed.pin}: fix "
                f"{self.failed.pin} and `lockstep {self.command}` again, or make the revert permanent: "
                f"`lockstep pin --stack {self.stack} {self.to_version}`."
            )
        if self.record is not None:
            lines.append("Both check records are stored (what `lockstep promote` reads).")
        else:
            lines.append(f"The failed check record of {self.failed.pin} is stored (what `lockstep promote` reads).")
        return "\n".join(lines)


def revert_target(env: Environment, catalog: Catalog, corpus: Corpus, failed: check.CheckRecord) -> Revert:
    """autoRevert's decision, shared by `lockstep apply` and `lockstep up`: the last version whose
    newest check passed (on the catalog's bytes), only when it is the warm standby (its slot serves
    it) and its index is synced with the corpus (`to_version` set), else why not. Never reverts into
    an index that lags the corpus."""
    settings = env.settings
    revert = Revert(settings.stack, failed)
    target = next(
        (v for v in promote.passed_newest_first(settings, catalog, newest_only=True) if v != failed.pin), None
    )
    if target is None or target != settings.standby:
        revert.why = f"the last version whose check passed ({target or 'none'}) is not the standby {settings.standby}"
        return revert
    with env.reach_opensearch():
        state = live_state.inventory(env.opensearch, env.ssm, settings, catalog).indices.get(target)
        synced = state is not None and (
            corpus.matches(state)
            or not any(vars(reembed.index_delta(env.opensearch, state.index, target, corpus.documents or [])).values())
        )
    if not synced:
        revert.why = f"the index of {target} is not synced with the corpus"
        return revert
    revert.to_version, revert.why = target, f"the {settings.with_pin(target).live_slot} standby, index synced"
    return revert


def auto_revert(env: Environment, catalog: Catalog, corpus: Corpus, failed: check.CheckRecord) -> Revert:
    """autoRevert under `lockstep apply`: flip back to `revert_target`'s version, then check again;
    both records are stored."""
    revert = revert_target(env, catalog, corpus, failed)
    if revert.to_version is None:
        return revert
    back = env.settings.with_pin(revert.to_version)
    entry = catalog.get(revert.to_version)
    endpoint = endpoints.require_serving(back, back.live_slot, entry)
    with env.reach_opensearch(), env.reach_aws():
        live_state.cutover(env.opensearch, env.ssm, back, entry, endpoint)
    revert.record = check.run(back, catalog)
    revert.record.reverted_from = failed.pin
    check.store(revert.record, back)
    return revert


class EndpointEmbedder:
    """A deployed endpoint seen as an embedder, so its writes pass through the write guard."""

    def __init__(self, endpoint: endpoints.EndpointClient, entry: CatalogEntry):
        described = endpoint.describe()
        self.endpoint = endpoint
        self.version: str = described["version"]
        self.artifact_sha256: str = described["artifact_sha256"]
        self.dimension = entry.dimension
        self.family = entry.family
        self.normalized = False  # what the endpoint returns is stored as it comes

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.endpoint.embed(list(texts))


def dual_write(settings: StackSettings, catalog: Catalog, documents: list[Document]) -> dict[str, int]:
    """Index new documents into every slot version's index, each embedded by its own endpoint."""
    env = Environment(settings)
    written = {}
    for slot, version in settings.slots.filled.items():
        embedder = EndpointEmbedder(endpoints.endpoint_for(settings, slot), catalog.get(version))
        name = settings.opensearch.index_name(version)
        with env.reach_opensearch():
            written[name] = reembed.write_documents(env.opensearch, name, embedder, documents)
            env.opensearch.indices.refresh(index=name)
    return written


def naive_write(settings: StackSettings, documents: list[Document]) -> int:
    """What a pipeline without lockstep does: embed with whatever endpoint is live and write
    through the alias, stamped with the endpoint's version — no guard. The drill uses it to
    show the failure lockstep exists to prevent; nothing else should."""
    env = Environment(settings)
    live = endpoints.endpoint_for(settings, settings.live_slot)
    version = live.describe()["version"]
    vectors = live.embed([d.text for d in documents])
    actions = (
        {
            "_op_type": "index",
            "_index": settings.opensearch.alias_name,
            "_id": d.id,
            "_source": {
                "doc_id": d.id,
                "text": d.text,
                "model_version": version,
                "content_sha256": d.content_sha256,
                "embedding": v.tolist(),
            },
        }
        for d, v in zip(documents, vectors)
    )
    with env.reach_opensearch():
        count = reembed.write(env.opensearch, actions)
        env.opensearch.indices.refresh(index=settings.opensearch.alias_name)
    return count
