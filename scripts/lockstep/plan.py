"""The release plan: desired stack config + observed state -> ordered steps. Pure: no I/O, no clients.

`lockstep apply` executes the plan (one handler per step kind) and `lockstep plan` renders it for a
PR. The Pulumi program declares its resource graph on its own; tests/test_release_model.py is the
contract that, for every release scenario, the resources `pulumi up` changes are exactly this
plan's steps (with the observed state the previous `pulumi up` left behind: `declared_state`).

Every ETA comes from a measured rate (`Observed.rates`, recorded by earlier runs under
`embed_rate_key` / `repair_rate_key`), else from an estimate (`Observed.estimated_rates`: a short
calibration before the first run; the step says `eta_estimated`), or is None: unknown.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from lockstep.config import Catalog, CatalogEntry, DerivedStore, StackSettings
from lockstep.errors import ConfigError, Unreachable
from lockstep.state import StoreCounts, keep_reason

StepKind = Literal[
    "ensure_artifact", "provision", "catch_up", "restamp", "deploy_slot", "cutover", "repair_derived", "check", "drop"
]


@dataclass(frozen=True)
class Delta:
    """Corpus vs index: documents to embed (missing, changed) and to delete (gone from the corpus)."""

    missing: int = 0
    changed: int = 0
    deleted: int = 0


@dataclass(frozen=True)
class ObservedIndex:
    doc_count: int
    # None: not computed (the plan then estimates missing documents from the counts).
    delta: Delta | None = None
    corpus: str | None = None  # `_meta.corpus`: the corpus location the index was built from
    aliases: tuple[str, ...] = ()  # aliases on the index besides the live one
    unassigned_primaries: int = 0  # primary shards no node holds now: part of the index cannot be read


@dataclass(frozen=True)
class ClusterHealth:
    """`_cluster/health` as the plan needs it: a cluster that is not green is said in the plan."""

    status: str  # green, yellow, red
    nodes: int
    unassigned_shards: int = 0


@dataclass(frozen=True)
class Observed:
    indices: dict[str, ObservedIndex] = field(default_factory=dict)
    alias_targets: tuple[str, ...] = ()
    pointer_version: str | None = None
    slots_deployed: dict[str, str | None] = field(default_factory=lambda: {"blue": None, "green": None})
    corpus_size: int = 0
    # Versions whose artifact is in the bucket with the catalog's sha256; None: not observed,
    # so every kept version gets an (idempotent) ensure_artifact step.
    artifacts: frozenset[str] | None = None
    # Derived-record counts per store name; a store missing here was not observed (no repair planned).
    derived: dict[str, StoreCounts] = field(default_factory=dict)
    # Measured rates (items/s) by embed_rate_key / repair_rate_key: what the ETAs are computed from.
    rates: dict[str, float] = field(default_factory=dict)
    # Estimated rates by the same keys, for what was never measured (a short calibration).
    estimated_rates: dict[str, float] = field(default_factory=dict)
    cluster: ClusterHealth | None = None  # None: not observed (the config-level preview)


@dataclass(frozen=True)
class DerivedAction:
    """What the release does to one derived store: the lineage of a rollback."""

    store: str
    table: str
    records_by_version: dict[str, int]
    quarantined_by_version: dict[str, int]
    action: Literal["recompute", "quarantine", "none"]
    records: int  # items another version wrote, not quarantined: what the repair touches
    eta_seconds: float | None  # at the measured (else estimated) repair rate; None: neither
    eta_estimated: bool = False  # from a calibration, not a measured rate


@dataclass(frozen=True)
class Step:
    kind: StepKind
    version: str
    slot: str | None = None
    docs: int = 0
    detail: str = ""
    eta_seconds: float | None = None  # for steps that embed or repair: at a measured rate, None if unknown
    eta_estimated: bool = False  # the rate is a calibration's estimate, not measured yet


@dataclass(frozen=True)
class ReleasePlan:
    stack: str
    from_version: str | None
    to_version: str
    steps: tuple[Step, ...]
    index_action: Literal["provision", "reattach", "none"]
    endpoint_action: Literal["deploy", "flip", "none"]
    docs_to_embed: int
    pointer_moves: bool
    reversible: bool
    derived: tuple[DerivedAction, ...] = ()
    warnings: tuple[str, ...] = ()  # what the plan runs into but does not stop at (a yellow cluster)

    @property
    def eta_seconds(self) -> float | None:
        """The embedding and repair steps' ETAs together; None if any of them is unknown."""
        etas = [s.eta_seconds for s in self.steps if s.kind in TIMED]
        return None if None in etas else round(sum(e for e in etas if e is not None), 1)

    @property
    def eta_estimated(self) -> bool:
        """Some timed step's ETA is an estimate (no measured rate yet)."""
        return any(s.eta_estimated for s in self.steps if s.kind in TIMED)

    def to_dict(self, **extra) -> dict:
        """The plan as JSON (`lockstep plan --format json`, the drill's record): `extra` adds what the
        caller observed besides the plan (data_state, records_by_model_version)."""
        return {
            "stack": self.stack,
            "from": self.from_version,
            "to": self.to_version,
            "index_action": self.index_action,
            "docs_to_embed": self.docs_to_embed,
            "endpoint_action": self.endpoint_action,
            "reversible": self.reversible,
            "pointer_moves": self.pointer_moves,
            "eta_seconds": self.eta_seconds,
            "eta_estimated": self.eta_estimated,
            **extra,
            "steps": [asdict(step) for step in self.steps],
            "derived": [asdict(action) for action in self.derived],
            "warnings": list(self.warnings),
        }


# Steps whose duration scales with data, so the plan gives them an ETA.
TIMED = ("provision", "catch_up", "repair_derived")


def embed_rate_key(entry: CatalogEntry, engine: str) -> str:
    """Where a measured re-embedding rate is kept: per model, version and backfill engine."""
    return f"embed:{entry.model}/{entry.version}:{engine}"


def repair_rate_key(store: DerivedStore, pin: CatalogEntry) -> str:
    """Where a measured derived-record repair rate is kept: per store kind, policy, writeRate and pin
    version. A repair the writeRate held back measured that pace: a store with another writeRate
    must not read it as its own (a writeRate-25 test once gave the drill's first plan an 82 s ETA
    for an 8 s repair)."""
    return f"repair:{store.kind}/{store.repair}@{store.write_rate:g}:{pin.model}/{pin.version}"


def _eta(items: int, rate: float | None) -> float | None:
    """Seconds at `rate`, to a tenth; work that exists never reads as 0 s (a fast calibration of a
    small corpus would round it away, and a plan saying "~0s" for work reads as no work)."""
    if not rate:
        return None
    return max(round(items / rate, 1), 0.1) if items else 0.0


def rate_for(observed: Observed, key: str) -> tuple[float | None, bool]:
    """(rate, estimated?): the measured rate for `key`, else the estimate, else (None, False)."""
    if key in observed.rates:
        return observed.rates[key], False
    estimate = observed.estimated_rates.get(key)
    return estimate, estimate is not None


def declared_state(settings: StackSettings, corpus_size: int = 0) -> Observed:
    """What a deploy of `settings` leaves behind, as observed state: its indices (in step with the
    corpus), artifacts and slots, alias and pointer on its pin. The plan from this state is what
    the Pulumi program changes (its previous state is the previous config's graph), and it is the
    PR preview's fallback when the servers cannot be reached."""
    return Observed(
        indices={v: ObservedIndex(doc_count=corpus_size, delta=Delta()) for v in settings.versions},
        alias_targets=(settings.opensearch.index_name(settings.pin),),
        pointer_version=settings.pin,
        slots_deployed=settings.slots.as_dict(),
        corpus_size=corpus_size,
        artifacts=frozenset(settings.versions),
    )


def _index_step(version: str, observed: Observed, rate: float | None, estimated: bool = False) -> Step | None:
    """Provision a missing index, catch up one that lags the corpus, or nothing."""
    state = observed.indices.get(version)
    if state is None:
        return Step(
            "provision",
            version,
            docs=observed.corpus_size,
            detail=f"create the index and embed the corpus ({observed.corpus_size} documents)",
            eta_seconds=_eta(observed.corpus_size, rate),
            eta_estimated=estimated,
        )
    delta = state.delta
    if delta is None:
        missing = max(observed.corpus_size - state.doc_count, 0)
        deleted = max(state.doc_count - observed.corpus_size, 0)
        delta, how = Delta(missing=missing, deleted=deleted), " (estimated from document counts)"
    else:
        how = ""
    docs = delta.missing + delta.changed
    if docs == 0 and delta.deleted == 0:
        return None
    return Step(
        "catch_up",
        version,
        docs=docs,
        detail=f"embed {delta.missing} missing and {delta.changed} changed, delete {delta.deleted} gone{how}",
        eta_seconds=_eta(docs, rate),
        eta_estimated=estimated,
    )


def _restamp_step(version: str, state: ObservedIndex | None, corpus: str, caught_up: bool) -> Step | None:
    """A moved corpus (corpus.bucket/key) is an explicit step: `_meta.corpus` is re-stamped once the
    index holds that corpus's content (same content, or after this plan's catch-up); a retained
    index that lags is re-stamped when it is reattached."""
    if state is None or state.corpus in (None, corpus) or not (caught_up or state.delta == Delta()):
        return None
    how = "after the catch-up" if caught_up else "same content"
    return Step("restamp", version, detail=f"_meta.corpus {state.corpus} -> {corpus} ({how})")


def release_plan(catalog: Catalog, settings: StackSettings, observed: Observed) -> ReleasePlan:
    pin = settings.pin
    search = settings.opensearch
    pin_index = search.index_name(pin)
    kept = settings.versions
    for version in kept:
        catalog.get(version)  # a version outside the catalog is a config error, reported by name

    steps: list[Step] = [
        Step("ensure_artifact", version, detail=f"s3://{settings.artifacts.bucket}/{catalog.get(version).artifact_key}")
        for version in kept
        if observed.artifacts is None or version not in observed.artifacts
    ]
    _refuse_replacing_the_live_slot(settings, observed)
    deploys = 0
    for version in kept:
        slot = settings.slots.slot_of(version)
        rate, estimated = rate_for(observed, embed_rate_key(catalog.get(version), settings.backfill.engine))
        index_step = _index_step(version, observed, rate, estimated)
        # A retained index catches up when it is reattached; until then only its existence is kept.
        if index_step is not None and (slot or index_step.kind == "provision"):
            steps.append(index_step)
        caught_up = index_step is not None and index_step in steps
        if (
            restamp := _restamp_step(version, observed.indices.get(version), settings.corpus.uri, caught_up)
        ) is not None:
            steps.append(restamp)
        if slot and observed.slots_deployed.get(slot) != version:
            was = observed.slots_deployed.get(slot) or "nothing"
            steps.append(Step("deploy_slot", version, slot=slot, detail=f"{slot} serves {was} now"))
            deploys += 1

    moves = observed.pointer_version != pin or list(observed.alias_targets) != [pin_index]
    # A fence naming another version lets that version's writers in; none refuses every write.
    fences_off = sorted(name for name, counts in observed.derived.items() if counts.fence != pin)
    if moves:
        _refuse_cutover_onto_missing_primaries(pin_index, observed.indices.get(pin))
    if moves or fences_off:
        was = ", ".join(observed.alias_targets) or "no index"
        detail = f"alias {search.alias_name}: {was} -> {pin_index}; pointer -> {pin}"
        if not moves:  # the cutover is idempotent: it rewrites every fence, nothing else moves
            detail = f"fences of {', '.join(fences_off)} -> {pin} (alias and pointer already on {pin})"
        steps.append(Step("cutover", pin, slot=settings.live_slot, detail=detail))
    derived = _derived_actions(settings, catalog, observed)
    repairs = [a for a in derived if a.records]
    if repairs:
        # After the cutover: the pin's index is complete and live, so recomputed lists are final.
        steps.append(
            Step(
                "repair_derived",
                pin,
                docs=sum(a.records for a in repairs),
                detail="; ".join(
                    f"{a.store}: {a.action} {a.records} records of "
                    f"{', '.join(v for v, n in a.records_by_version.items() if v != pin and n > a.quarantined_by_version.get(v, 0))} "
                    f"(table {a.table})"
                    for a in repairs
                ),
                eta_seconds=None
                if any(a.eta_seconds is None for a in repairs)
                else round(sum(a.eta_seconds or 0 for a in repairs), 1),
                eta_estimated=any(a.eta_estimated for a in repairs),
            )
        )
    steps.append(Step("check", pin))
    # The rule live_state.droppable applies, on what was observed: an index the live alias or pointer
    # named before this release is kept until a later one (it stays an instant way back).
    pointer_index = search.index_name(observed.pointer_version) if observed.pointer_version else None
    for version, state in sorted(observed.indices.items()):
        index = search.index_name(version)
        aliases = sorted({*state.aliases, *([search.alias_name] if index in observed.alias_targets else [])})
        if keep_reason(settings, version, index, aliases, pointer_index) is None:
            steps.append(
                Step(
                    "drop",
                    version,
                    detail=f"delete index {index}: not in pin, slots or retain (its artifact leaves the unit too)",
                )
            )

    index_action: Literal["provision", "reattach", "none"]
    if pin not in observed.indices:
        index_action = "provision"
    elif moves:
        index_action = "reattach"
    else:
        index_action = "none"
    endpoint_action: Literal["deploy", "flip", "none"] = "deploy" if deploys else "flip" if moves else "none"
    return ReleasePlan(
        stack=settings.stack,
        from_version=observed.pointer_version,
        to_version=pin,
        steps=tuple(steps),
        index_action=index_action,
        endpoint_action=endpoint_action,
        docs_to_embed=sum(step.docs for step in steps if step.kind in ("provision", "catch_up")),
        pointer_moves=moves,
        reversible=_reversible(settings, observed, [s.version for s in steps if s.kind == "drop"]),
        derived=derived,
        warnings=_cluster_warnings(observed.cluster),
    )


def _refuse_cutover_onto_missing_primaries(index: str, state: ObservedIndex | None) -> None:
    """The alias never goes to an index part of which no node holds: its queries would miss documents."""
    if state is not None and state.unassigned_primaries:
        raise Unreachable(
            f"cutover to {index} refused: {state.unassigned_primaries} of its primary shards are unassigned "
            "(a node holding them is gone); start the node again or wait until "
            f"GET _cluster/health/{index}?wait_for_status=yellow answers, then run again"
        )


def _cluster_warnings(health: ClusterHealth | None) -> tuple[str, ...]:
    """A cluster that is not green, and what that means for the release's steps."""
    if health is None or health.status == "green":
        return ()
    said = f"the OpenSearch cluster is {health.status} ({health.nodes} nodes, {health.unassigned_shards} shard copies unassigned)"
    if health.status == "yellow":
        return (
            f"{said}: a provision or catch-up runs and its replicas are assigned when nodes return; "
            "the check waits for every copy and exits 2 if they are not all there",
        )
    return (f"{said}: indices with unassigned primaries cannot be read whole; a cutover onto one is refused",)


def _refuse_replacing_the_live_slot(settings: StackSettings, observed: Observed) -> None:
    """Refuse deploying another version into the slot that serves the live version: slots are
    deployed before the cutover, so the live pointer would name an endpoint that no longer serves
    the live index's model (the window lockstep exists to close). No step order avoids it for the
    pin, which must be deployed before it goes live; a new version goes into the standby slot."""
    live = observed.pointer_version
    for slot, version in settings.slots.filled.items():
        if live is None or version == live or observed.slots_deployed.get(slot) != live:
            continue
        other = "green" if slot == "blue" else "blue"
        fix = (
            f"put {version} in the {other} slot and keep {slot}: {live} "
            f"(what `lockstep pin --stack {settings.stack} {version}` writes)"
            if version == settings.pin
            else f"keep {slot}: {live} until {settings.pin} is live, then replace it in a second change"
        )
        raise ConfigError(
            f"slots.{slot}: {version} would replace the live {live} in the {slot} slot before the cutover, "
            f"a window where the live endpoint and the live index disagree; {fix}"
        )


def _derived_actions(settings: StackSettings, catalog: Catalog, observed: Observed) -> tuple[DerivedAction, ...]:
    """Per observed store: records by version, and what the pin's repair policy does to the stale ones."""
    actions = []
    pin = catalog.get(settings.pin)
    for store in settings.derived:
        counts = observed.derived.get(store.name)
        if counts is None:
            continue
        stale = sum(counts.stale(settings.pin).values())
        rate, estimated = rate_for(observed, repair_rate_key(store, pin))
        if rate is not None:  # the store's writeRate paces the repair: it is never faster than that
            rate = min(rate, store.write_rate)
        actions.append(
            DerivedAction(
                store=store.name,
                table=store.table,
                records_by_version=dict(counts.records_by_version),
                quarantined_by_version=dict(counts.quarantined_by_version),
                action=store.repair if stale else "none",
                records=stale,
                eta_seconds=_eta(stale, rate) if stale else 0.0,
                eta_estimated=estimated and bool(stale),
            )
        )
    return tuple(actions)


def _reversible(settings: StackSettings, observed: Observed, dropped: list[str]) -> bool:
    """Can the version being left come back by a flip alone (its index and its slot both stay)?"""
    left = observed.pointer_version
    if left is None:
        return False
    if left == settings.pin:
        return True
    keeps_index = left in observed.indices and left not in dropped
    return keeps_index and settings.slots.slot_of(left) is not None
