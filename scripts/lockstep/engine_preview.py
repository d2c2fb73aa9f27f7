"""The engine's half of the PR comment: `pulumi preview --json` read as resource changes, and whether
they are the changes the release plan (lockstep's half) implies.

Pure: parses text, compares with a ReleasePlan; no clients, no `pulumi` import. The preview's JSON
is Pulumi's preview digest (`steps[]` of `{op, urn, diffReasons, …}`, `diagnostics[]`,
`changeSummary`); only operation, type, name and the changed property names are read, never the
states (they may hold secrets).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from lockstep.config import StackSettings
from lockstep.plan import ReleasePlan

# Operations that change something (a `same` or a `read` does not).
CHANGES = ("create", "update", "replace", "create-replacement", "delete", "delete-replaced", "discard")
SLOT_COMPONENTS = ("lockstep:index:EndpointSlot", "lockstep:index:EmbeddedEndpointSlot")
ARTIFACT_TYPES = ("lockstep:embedded:Artifact", "aws:s3/bucketObjectv2:BucketObjectv2")


@dataclass(frozen=True)
class ResourceChange:
    op: str
    type: str  # the resource's own type token
    name: str
    parents: tuple[str, ...]  # the type tokens of its parents, outermost first
    properties: tuple[str, ...]  # what the engine says changed (diffReasons), when it says

    @classmethod
    def from_step(cls, step: dict) -> ResourceChange:
        """`urn:pulumi:<stack>::<project>::<parent$…$type>::<name>` plus the step's op and reasons."""
        parts = str(step.get("urn", "")).split("::")
        types = parts[2].split("$") if len(parts) > 3 else [""]
        return cls(
            op=str(step.get("op", "")),
            type=types[-1],
            name=parts[-1],
            parents=tuple(types[:-1]),
            properties=tuple(str(key) for key in step.get("diffReasons") or step.get("replaceReasons") or ()),
        )


@dataclass(frozen=True)
class EnginePreview:
    changes: tuple[ResourceChange, ...] = ()
    errors: tuple[str, ...] = ()  # the engine's error diagnostics (a refused gate, a failed policy)
    failed: bool = False  # no digest: the preview stopped before it could write one

    @property
    def usable(self) -> bool:
        return not self.failed and not self.errors


def read_preview(text: str) -> EnginePreview:
    """`pulumi preview --json`'s output; an empty or partial file is a preview that failed."""
    try:
        digest = json.loads(text)
    except ValueError:
        return EnginePreview(failed=True)
    if not isinstance(digest, dict):
        return EnginePreview(failed=True)
    steps = [ResourceChange.from_step(step) for step in digest.get("steps") or () if isinstance(step, dict)]
    errors = tuple(
        dict.fromkeys(
            line
            for item in digest.get("diagnostics") or ()
            if isinstance(item, dict) and item.get("severity") == "error"
            for line in [_one_line(str(item.get("message", "")))]
            if line
        )
    )
    return EnginePreview(changes=tuple(s for s in steps if s.op in CHANGES), errors=errors)


def _one_line(message: str) -> str:
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


# ------------------------------------------------------------------------------------ comparison


def _version_after(name: str, marker: str) -> str | None:
    match = re.search(rf"-{marker}-(.+)$", name)
    return match.group(1) if match else None


def step_key(change: ResourceChange) -> tuple[str, ...] | None:
    """The plan step a changed resource is part of, as a key; None for the unit's infrastructure
    (buckets, the corpus, derived tables, component shells), which no plan step names."""
    if any(parent in SLOT_COMPONENTS for parent in change.parents) or change.type == "lockstep:embedded:EndpointSlot":
        slot = next((s for s in ("blue", "green") if re.search(rf"-{s}(-|$)", change.name)), "?")
        return ("deploy_slot", slot)
    if change.type == "lockstep:index:Index":
        version = _version_after(change.name, "index") or change.name
        if change.op in ("delete", "delete-replaced", "discard"):
            return ("drop", version)
        return (
            ("provision", version) if change.op in ("create", "replace", "create-replacement") else ("index", version)
        )
    if change.type in ARTIFACT_TYPES:
        version = _version_after(change.name, "artifacts") or change.name
        return ("drop", version) if change.op in ("delete", "discard") else ("ensure_artifact", version)
    return {
        "lockstep:index:Cutover": ("cutover",),
        "lockstep:index:Check": ("check",),
        "lockstep:index:DerivedRepair": ("repair_derived",),
    }.get(change.type)


def expected_keys(plan: ReleasePlan, settings: StackSettings) -> set[tuple[str, ...]]:
    """The resource changes the plan implies. Data-only steps (catch-up) have no resource; the check
    re-runs when what is live changes (a cutover, or a redeploy of the live slot); every cutover
    re-runs the derived stores' repair, which finds nothing to do when no stale records exist."""
    keys: set[tuple[str, ...]] = set()
    for step in plan.steps:
        if step.kind in ("provision", "drop", "ensure_artifact"):
            keys.add((step.kind, step.version))
        elif step.kind == "restamp":
            keys.add(("index", step.version))
        elif step.kind == "deploy_slot":
            keys.add(("deploy_slot", step.slot or "?"))
        elif step.kind in ("cutover", "repair_derived"):
            keys.add((step.kind,))
    if ("cutover",) in keys and settings.derived:
        keys.add(("repair_derived",))
    if ("cutover",) in keys or ("deploy_slot", settings.live_slot) in keys:
        keys.add(("check",))
    return keys


@dataclass(frozen=True)
class Agreement:
    agrees: bool | None  # None: the engine gave no diff to compare with
    line: str
    engine_only: tuple[str, ...] = ()
    plan_only: tuple[str, ...] = ()


KEY_WORDS = {
    "provision": "provision index {0}",
    "drop": "drop {0}",
    "ensure_artifact": "publish artifact {0}",
    "index": "update index {0}",
    "deploy_slot": "deploy the {0} slot",
    "cutover": "cut over",
    "repair_derived": "repair derived records",
    "check": "re-run the check",
}


def describe(key: tuple[str, ...]) -> str:
    return KEY_WORDS[key[0]].format(*key[1:])


def compare(plan: ReleasePlan, settings: StackSettings, preview: EnginePreview) -> Agreement:
    """One line a reviewer reads: do the engine's resource diff and lockstep's data plan say the same?"""
    if not preview.usable:
        why = preview.errors[0] if preview.errors else "it wrote no diff"
        return Agreement(
            None, f"⚠️ **Not compared**: the engine's preview failed ({why}); see the `pulumi preview` step."
        )
    engine = {key for change in preview.changes if (key := step_key(change)) is not None}
    expected = expected_keys(plan, settings)
    engine_only = tuple(sorted(describe(k) for k in engine - expected))
    plan_only = tuple(sorted(describe(k) for k in expected - engine))
    if engine_only or plan_only:
        found = [f"the engine also: {', '.join(engine_only)}"] if engine_only else []
        found += [f"the plan also: {', '.join(plan_only)}"] if plan_only else []
        return Agreement(
            False,
            f"❌ **They disagree** — {'; '.join(found)}. Find out why before merging "
            "(`lockstep plan` observed the servers; the engine diffs its state).",
            engine_only,
            plan_only,
        )
    if not engine:
        return Agreement(True, "✅ **They agree**: no resource changes, and no data to move.")
    if plan.endpoint_action == "flip" and plan.index_action == "reattach":
        what = "the Cutover and the Check" + (" and the derived repair" if settings.derived else "")
        return Agreement(True, f"✅ **They agree**: a flip — the engine updates {what}, nothing else.")
    return Agreement(True, f"✅ **They agree**: {', '.join(sorted(describe(k) for k in engine))}.")
