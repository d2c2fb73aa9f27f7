"""The PR comment's two halves: lockstep's data plan and the engine's resource diff (`pulumi preview
--json`), and the one line that says whether they agree (lockstep.engine_preview, report).

Pure: the plans come from release_plan over declared state; the previews are digests in Pulumi's
JSON shape (steps of {op, urn, diffReasons}, diagnostics). tests/test_workflows.py feeds the same
code the real engine's output.
"""

from __future__ import annotations

import json

from lockstep import config, report
from lockstep.engine_preview import compare, read_preview
from lockstep.plan import declared_state, release_plan
from tests.conftest import stack_values

STACK = "pr"
MODEL_RELEASE = "lockstep:index:ModelRelease"


def settings(catalog, **overrides) -> config.StackSettings:
    return config.settings_from_config(STACK, stack_values(STACK, **overrides), catalog)


def step(op: str, typ: str, name: str, parents: tuple[str, ...] = (MODEL_RELEASE,), reasons=()) -> dict:
    chain = "$".join((*parents, typ))
    return {"op": op, "urn": f"urn:pulumi:{STACK}::lockstep::{chain}::{name}", "diffReasons": list(reasons)}


def digest(*steps: dict, errors: tuple[str, ...] = ()) -> str:
    root = {"op": "same", "urn": f"urn:pulumi:{STACK}::lockstep::pulumi:pulumi:Stack::lockstep-{STACK}"}
    diagnostics = [{"message": f"  {message}\n", "severity": "error"} for message in errors]
    return json.dumps({"steps": [root, *steps], "diagnostics": diagnostics, "changeSummary": {}})


CUTOVER = step("update", "lockstep:index:Cutover", "lockstep-cutover", reasons=("version", "index", "endpoint"))
CHECK = step("update", "lockstep:index:Check", "lockstep-check", reasons=("pin", "index"))
REPAIR = step("update", "lockstep:index:DerivedRepair", "lockstep-repair-related", reasons=("pin",))


def flip_plan(catalog, **overrides):
    before = settings(catalog, **overrides)
    after = before.with_pin("v2")
    return release_plan(catalog, after, declared_state(before, 20)), after


def test_a_flip_agrees_with_cutover_and_check_updates(catalog):
    plan, after = flip_plan(catalog)
    preview = read_preview(digest(CUTOVER, CHECK))
    agreement = compare(plan, after, preview)
    assert agreement.agrees is True, agreement.line
    assert "a flip" in agreement.line and "Cutover and the Check" in agreement.line

    comment = report.plan_markdown(plan, engine=(preview, agreement))
    lines = comment.splitlines()
    assert lines[2] == agreement.line  # the verdict right under the title, before either half
    assert "| index | **reattach** |" in comment and "| endpoints | **flip** |" in comment
    assert "| `lockstep-cutover` | `lockstep:index:Cutover` | **update** | version, index, endpoint |" in lines
    assert not any("pulumi:pulumi:Stack" in line for line in lines)


def test_a_flip_missing_its_check_or_touching_a_slot_disagrees_naming_both_sides(catalog):
    plan, after = flip_plan(catalog)
    without_check = compare(plan, after, read_preview(digest(CUTOVER)))
    assert without_check.agrees is False and without_check.plan_only == ("re-run the check",)

    slot = step("update", "lockstep:embedded:EndpointSlot", "lockstep-green-endpoint", (MODEL_RELEASE, "x$y"))
    redeploy = compare(plan, after, read_preview(digest(CUTOVER, CHECK, slot)))
    assert redeploy.agrees is False and redeploy.engine_only == ("deploy the green slot",)
    assert "the engine also: deploy the green slot" in redeploy.line


def test_with_derived_stores_a_flip_also_updates_the_repair(catalog):
    stores = [{"name": "related", "table": "related-docs", "kind": "related-documents", "repair": "recompute"}]
    plan, after = flip_plan(catalog, derived=stores)
    assert compare(plan, after, read_preview(digest(CUTOVER, CHECK))).plan_only == ("repair derived records",)
    agreement = compare(plan, after, read_preview(digest(CUTOVER, CHECK, REPAIR)))
    assert agreement.agrees is True and "derived repair" in agreement.line


def test_a_new_version_in_the_standby_is_a_deploy_and_a_provision(catalog):
    before = settings(catalog)
    after = config.settings_from_config(STACK, stack_values(STACK, slots={"blue": "v1", "green": "v3"}), catalog)
    plan = release_plan(catalog, after, declared_state(before, 20))
    slot_parent = (MODEL_RELEASE, "lockstep:index:EmbeddedEndpointSlot")
    preview = read_preview(
        digest(
            step("create", "lockstep:index:Index", "lockstep-index-v3"),
            step("create", "lockstep:embedded:Artifact", "lockstep-artifacts-v3", (MODEL_RELEASE, "x")),
            step("update", "lockstep:embedded:EndpointSlot", "lockstep-green-endpoint", slot_parent),
            step("delete", "lockstep:index:Index", "lockstep-index-v2"),
            step("delete", "lockstep:embedded:Artifact", "lockstep-artifacts-v2", (MODEL_RELEASE, "x")),
        )
    )
    agreement = compare(plan, after, preview)
    assert agreement.agrees is True, agreement.line
    assert "provision index v3" in agreement.line and "deploy the green slot" in agreement.line


def test_a_failed_preview_is_not_compared_and_its_error_is_in_the_comment(catalog):
    plan, after = flip_plan(catalog)
    refused = read_preview(digest(errors=("lockstep:pin: v2 is not verified in dev (verified there: v1)",)))
    agreement = compare(plan, after, refused)
    assert agreement.agrees is None and "lockstep:pin: v2 is not verified in dev" in agreement.line
    comment = report.plan_markdown(plan, engine=(refused, agreement))
    assert "The engine's preview **failed**" in comment
    assert "- lockstep:pin: v2 is not verified in dev (verified there: v1)" in comment.splitlines()

    empty = read_preview("")  # the step's redirect made the file, the preview wrote nothing
    assert empty.failed and compare(plan, after, empty).agrees is None
