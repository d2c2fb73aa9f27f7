"""One release model: what the Pulumi program changes is exactly what the release plan says.

This test is the contract between `lockstep.plan.release_plan` and `components.model_release`: the
component declares its graph on its own (Pulumi diffs declared inputs; it cannot run the plan's
observation at evaluation time), and for every scenario below both sides are derived from the same
old and new config and compared step by step:

- the program side: ModelRelease registered under the SDK's mock runtime for the old config and
  for the new one; every resource whose inputs differ (or that appears or disappears) is what
  `pulumi up` acts on, and each such resource belongs to one plan step (`step_of`);
- the plan side: `release_plan(catalog, new, declared_state(old))`, where the observed state is
  what the old config's `pulumi up` left behind (its indices, artifacts, slots, alias and pointer).

Why it fails when either side changes alone: the comparison is set equality of step keys
(kind, version, slot), and each scenario's keys are also pinned (EXPECTED). A program change that
touches another resource (say a slot's model inputs start to depend on the pin, or the Cutover
moves the alias on a retain change) adds a key the plan lacks in the flip or the retain
scenario; a plan change (say a flip that also redeploys the standby) adds a key the graph lacks.
`test_the_contract_sees_a_change_on_either_side` shows both with a real mismatch.

Data-only steps have no resource of their own and so do not appear here: `catch_up` (the pin's
index is caught up inside the Cutover's update) and a `repair_derived` whose count is observed.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from lockstep import config
from lockstep.plan import Observed, ReleasePlan, Step, declared_state, release_plan
from tests.pulumi_harness import Registered, changed_resources, register_release

ROOT = Path(__file__).resolve().parents[1]
NAME = "lockstep"  # the program's ModelRelease name: its children are named NAME-…
CORPUS = 200
# The Cutover's inputs that say where the live alias and pointer go: when one changes, they move.
MOVING = ("version", "index", "endpoint", "alias", "pointer", "artifactSha256", "artifact_sha256")


def dev_settings(catalog: config.Catalog, **changes) -> config.StackSettings:
    """The dev stack (SageMaker, sigv4 OpenSearch) with `changes` to its lockstep: values."""
    data = YAML(typ="safe").load((ROOT / "stacks" / "Pulumi.dev.yaml").read_text())["config"]
    values = {key.split(":", 1)[1]: value for key, value in data.items() if key.startswith("lockstep:")}
    values.setdefault("region", data.get("aws:region"))
    return config.settings_from_config("dev", {**values, **changes}, catalog)


def step_of(name: str, before: Registered, after: Registered, settings: config.StackSettings) -> tuple | None:
    """The plan step a changed resource belongs to, as (kind, version, slot); None for the unit's own
    components (they hold no state). The artifact store's bucket parts are ("artifact_store",)."""
    gone = name not in after.resources
    resource = (before if gone else after).resources[name]
    if not resource["custom"]:
        return None
    inputs = resource["inputs"]
    rest = name.removeprefix(f"{NAME}-")
    if rest.startswith("index-"):
        version = rest.removeprefix("index-")
        if name not in before.resources:
            return ("provision", version, None)
        return ("drop", version, None) if gone else ("index update", version, None)
    if rest.startswith("artifacts-"):
        version = rest.removeprefix("artifacts-")
        if "key" not in inputs:  # the bucket and its posture
            return ("artifact_store",)
        # A version that leaves the unit takes its artifact object along (the versioned bucket keeps the bytes).
        return ("drop", version, None) if gone else ("ensure_artifact", version, None)
    for slot in ("blue", "green"):
        if rest.startswith(f"{slot}-"):
            # A slot's parts (the old version's grant going too) belong to the deploy of what it serves next.
            model = f"{NAME}-{slot}-model"
            graph = after if model in after.resources else before
            return ("deploy_slot", graph.resources[model]["inputs"]["tags"]["lockstep:version"], slot)
    if rest == "cutover":
        if not gone and name in before.resources:
            olds = before.resources[name]["inputs"]
            if all(olds.get(key) == inputs.get(key) for key in MOVING):
                # Only the settings it records changed (the kept set an index delete reads): the
                # update's cutover is idempotent, the alias and the pointer stay. No plan step.
                return None
        return ("cutover", inputs["version"], inputs["endpoint"].rsplit("-", 1)[1])
    if rest == "check":
        return ("check", settings.pin, None)
    if rest.startswith(("repair-", "derived-")):
        return ("repair_derived", settings.pin, None)
    raise AssertionError(f"{name}: a resource no plan step accounts for")


def graph_steps(before: Registered | None, after: Registered, settings: config.StackSettings) -> set[tuple]:
    before = before or Registered(type("Nothing", (), {"resources": {}})())
    keys = {step_of(name, before, after, settings) for name in changed_resources(before, after)}
    return keys - {None}


def plan_steps(plan: ReleasePlan) -> set[tuple]:
    keys: set[tuple] = {(s.kind, s.version, s.slot) for s in plan.steps if s.kind not in ("catch_up",)}
    if any(s.kind == "ensure_artifact" for s in plan.steps) and plan.from_version is None:
        keys.add(("artifact_store",))  # the first artifact brings the bucket it lives in
    return keys


def both_sides(catalog, old: dict | None, new: dict) -> tuple[set, set, ReleasePlan]:
    after_settings = dev_settings(catalog, **new)
    before = register_release(dev_settings(catalog, **old), catalog) if old is not None else None
    after = register_release(after_settings, catalog)
    observed = declared_state(dev_settings(catalog, **old), CORPUS) if old is not None else Observed(corpus_size=CORPUS)
    plan = release_plan(catalog, after_settings, observed)
    return graph_steps(before, after, after_settings), plan_steps(plan), plan


DEV = {}  # the dev stack as checked in: pin v2 (green), v1 warm in blue and retained
SCENARIOS = {
    "first deploy": (None, DEV),
    "upgrade": (
        {"pin": "v1", "slots": {"blue": "v1", "green": "v3"}, "retain": []},
        {"pin": "v2", "slots": {"blue": "v1", "green": "v2"}, "retain": []},
    ),
    "rollback to the standby": (DEV, {"pin": "v1"}),
    "rollback to a version in neither slot": (
        {"pin": "v3", "slots": {"blue": "v2", "green": "v3"}, "retain": []},
        {"pin": "v1", "slots": {"blue": "v1", "green": "v3"}, "retain": []},
    ),
    "rollback to a dropped version": (
        {"pin": "v3", "slots": {"blue": "v1", "green": "v3"}, "retain": []},
        {"pin": "v2", "slots": {"blue": "v2", "green": "v3"}, "retain": []},
    ),
    "drop": (
        {"pin": "v2", "slots": {"blue": "v3", "green": "v2"}, "retain": []},
        {"pin": "v2", "slots": {"blue": "v1", "green": "v2"}, "retain": []},
    ),
    "retain instead of drop": (
        {"pin": "v2", "slots": {"blue": "v3", "green": "v2"}, "retain": []},
        {"pin": "v2", "slots": {"blue": "v1", "green": "v2"}, "retain": ["v3"]},
    ),
}
# What each scenario must come to, so a change that makes both sides wrong together is caught too.
EXPECTED = {
    "first deploy": {
        ("artifact_store",),
        ("ensure_artifact", "v1", None),
        ("ensure_artifact", "v2", None),
        ("provision", "v1", None),
        ("provision", "v2", None),
        ("deploy_slot", "v1", "blue"),
        ("deploy_slot", "v2", "green"),
        ("cutover", "v2", "green"),
        ("check", "v2", None),
    },
    "upgrade": {
        ("ensure_artifact", "v2", None),
        ("provision", "v2", None),
        ("deploy_slot", "v2", "green"),
        ("cutover", "v2", "green"),
        ("check", "v2", None),
        ("drop", "v3", None),
    },
    "rollback to the standby": {("cutover", "v1", "blue"), ("check", "v1", None)},
    "rollback to a version in neither slot": {
        ("ensure_artifact", "v1", None),
        ("provision", "v1", None),
        ("deploy_slot", "v1", "blue"),
        ("cutover", "v1", "blue"),
        ("check", "v1", None),
        ("drop", "v2", None),
    },
    "rollback to a dropped version": {
        ("ensure_artifact", "v2", None),
        ("provision", "v2", None),
        ("deploy_slot", "v2", "blue"),
        ("cutover", "v2", "blue"),
        ("check", "v2", None),
        ("drop", "v1", None),
    },
    "drop": {
        ("ensure_artifact", "v1", None),
        ("provision", "v1", None),
        ("deploy_slot", "v1", "blue"),
        ("check", "v2", None),
        ("drop", "v3", None),
    },
    "retain instead of drop": {
        ("ensure_artifact", "v1", None),
        ("provision", "v1", None),
        ("deploy_slot", "v1", "blue"),
        ("check", "v2", None),
    },
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_program_changes_exactly_the_plans_steps(scenario, catalog):
    old, new = SCENARIOS[scenario]
    graph, planned, _ = both_sides(catalog, old, new)
    assert graph == planned, f"program only: {graph - planned}; plan only: {planned - graph}"
    assert planned == EXPECTED[scenario]


def test_the_contract_sees_a_change_on_either_side(catalog):
    """The comparison is not vacuous: a plan that also redeploys the standby on a flip, or a graph
    that also touches an index, no longer matches the scenario's other side."""
    graph, planned, plan = both_sides(catalog, *SCENARIOS["rollback to the standby"])
    assert graph == planned

    redeploying = replace(plan, steps=(Step("deploy_slot", "v2", slot="green"), *plan.steps))
    assert plan_steps(redeploying) != graph

    touched_index = graph | {("index update", "v2", None)}
    assert touched_index != planned
