"""The release plan: desired stack config + observed state -> ordered steps. Pure: no I/O, no clients.

`lockstep apply` executes the plan, `lockstep plan` renders it for a PR, and the Pulumi program
declares the same steps; all three read this one function so they can never disagree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from lockstep.config import Catalog, StackSettings
from lockstep.errors import ConfigError
from lockstep.ops.derived import StoreCounts

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


@dataclass(frozen=True)
class DerivedAction:
    """What the release does to one derived store: the lineage of a rollback."""

    store: str
    table: str
    records_by_version: dict[str, int]
    quarantined_by_version: dict[str, int]
    action: Literal["recompute", "quarantine", "none"]
    records: int  # items another version wrote, not quarantined: what the repair touches
    eta_seconds: float  # at the store's write rate (the throttle bounds the repair)


@dataclass(frozen=True)
class Step:
    kind: StepKind
    version: str
    slot: str | None = None
    docs: int = 0
    detail: str = ""


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

    def kinds(self) -> list[tuple[str, str]]:
        """(kind, version) of each step: the plan's shape at a glance."""
        return [(step.kind, step.version) for step in self.steps]

    def to_dict(self) -> dict:
        return asdict(self) | {
            "steps": [asdict(step) for step in self.steps],
            "derived": [asdict(action) for action in self.derived],
        }


def _index_step(version: str, observed: Observed) -> Step | None:
    """Provision a missing index, catch up one that lags the corpus, or nothing."""
    state = observed.indices.get(version)
    if state is None:
        return Step(
            "provision",
            version,
            docs=observed.corpus_size,
            detail=f"create the index and embed the corpus ({observed.corpus_size} documents)",
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
        index_step = _index_step(version, observed)
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
    if moves:
        was = ", ".join(observed.alias_targets) or "no index"
        steps.append(
            Step(
                "cutover",
                pin,
                slot=settings.live_slot,
                detail=f"alias {search.alias_name}: {was} -> {pin_index}; pointer -> {pin}",
            )
        )
    derived = _derived_actions(settings, observed)
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
            )
        )
    steps.append(Step("check", pin))
    for version in sorted(set(observed.indices) - set(kept)):
        index = search.index_name(version)
        if index not in observed.alias_targets:
            steps.append(Step("drop", version, detail=f"delete index {index}: not in pin, slots or retain"))

    if pin not in observed.indices:
        index_action = "provision"
    elif moves:
        index_action = "reattach"
    else:
        index_action = "none"
    endpoint_action = "deploy" if deploys else "flip" if moves else "none"
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
    )


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


def _derived_actions(settings: StackSettings, observed: Observed) -> tuple[DerivedAction, ...]:
    """Per observed store: records by version, and what the pin's repair policy does to the stale ones."""
    actions = []
    for store in settings.derived:
        counts = observed.derived.get(store.name)
        if counts is None:
            continue
        stale = sum(counts.stale(settings.pin).values())
        actions.append(
            DerivedAction(
                store=store.name,
                table=store.table,
                records_by_version=dict(counts.records_by_version),
                quarantined_by_version=dict(counts.quarantined_by_version),
                action=store.repair if stale else "none",
                records=stale,
                eta_seconds=round(stale / store.write_rate, 1),
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
