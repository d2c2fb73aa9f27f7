"""What a person reads on the terminal: the check table (red/green where the terminal has colour)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from lockstep.engine_preview import Agreement, EnginePreview
from lockstep.ops.check import CheckRecord


def check_table(record: CheckRecord) -> Table:
    verdict = "[green]consistent[/]" if record.passed else "[red]INCONSISTENT[/]"
    table = Table(title=f"lockstep check — stack {record.stack}, pin {record.pin}: {verdict}", title_justify="left")
    for column in ("", "check", "observed", "expected", "what to do"):
        table.add_column(column, overflow="fold")
    for item in record.checks:
        if item.passed:
            mark = "[green]✓[/]"
        else:
            mark = "[yellow]![/]" if item.severity == "warn" else "[red]✗[/]"
        table.add_row(mark, item.name, item.observed, item.expected, "" if item.passed else item.fix)
    return table


def print_check(record: CheckRecord, console: Console | None = None) -> None:
    (console or Console()).print(check_table(record))


STEP_WORDS = {
    "ensure_artifact": "publish artifact",
    "provision": "provision index",
    "catch_up": "catch up index",
    "restamp": "re-stamp the index's corpus",
    "deploy_slot": "deploy slot",
    "cutover": "cut over",
    "repair_derived": "repair derived records",
    "check": "consistency check",
    "drop": "drop index",
}
CHECK_NAMES = [
    "alias",
    "index-meta",
    "foreign-versions",
    "doc-count",
    "pointer",
    "endpoint-artifact",
    "artifact",
    "reembed-probe",
    "recall",
    "standby (warning)",
]


def eta_text(seconds: float | None, items: int, estimated: bool = False) -> str:
    """An ETA from a measured rate, from a calibration's estimate (labelled so), or says it has none."""
    if not items:
        return "none"
    if seconds is None:
        return "unknown (no measured rate yet)"
    return (
        f"~{seconds:g}s (estimated: short calibration, not measured yet)"
        if estimated
        else f"~{seconds:g}s (measured rate)"
    )


def plan_markdown(
    plan,
    *,
    known: bool = True,
    counts: dict[str, int] | None = None,
    base_pin: str | None = None,
    engine: tuple[EnginePreview, Agreement] | None = None,
) -> str:
    """The PR comment: what the change does to the data, before anyone merges it; with `engine`, the
    engine's own resource diff below it and, first, whether the two agree."""
    source = plan.from_version or base_pin or "nothing"
    lines = [f"### lockstep plan — stack `{plan.stack}`: `{source}` → `{plan.to_version}`", ""]
    if engine is not None:
        lines += [engine[1].line, ""]
    if not known:
        lines += [
            "> **Data state unknown**: the environment could not be reached, so this is the config-level "
            "diff only (no document counts, no index state).",
            "",
        ]
    lines += [f"> **Warning**: {warning}" for warning in plan.warnings] + ([""] if plan.warnings else [])
    embedding = [s for s in plan.steps if s.kind in ("provision", "catch_up")]
    etas = [s.eta_seconds for s in embedding]
    eta = eta_text(
        None if None in etas else round(sum(e or 0 for e in etas), 1),
        plan.docs_to_embed,
        any(s.eta_estimated for s in embedding),
    )
    lines += [
        "| part | action | detail |",
        "|---|---|---|",
        f"| index | **{plan.index_action}** | {plan.docs_to_embed} documents to embed · ETA {eta} |",
        f"| endpoints | **{plan.endpoint_action}** | "
        + (", ".join(f"{s.slot}: {s.version}" for s in plan.steps if s.kind == "deploy_slot") or "no endpoint changes")
        + " |",
        f"| pointer | {'moves' if plan.pointer_moves else 'stays'} | → `{plan.to_version}` |",
        f"| reversible | {'yes — instant flip back' if plan.reversible else 'no'} | "
        + (
            f"undo: `lockstep pin --stack {plan.stack} {plan.from_version}` then `lockstep apply --stack {plan.stack}`"
            if plan.from_version
            else ""
        )
        + " |",
        "",
        "**Steps**",
        "",
    ]
    lines += [
        f"{n}. {STEP_WORDS.get(s.kind, s.kind)} `{s.version}`"
        + (f" ({s.slot})" if s.slot else "")
        + (f" — {s.docs} {'records' if s.kind == 'repair_derived' else 'docs'}" if s.docs else "")
        + (f" — {s.detail}" if s.detail else "")
        + (f" — ETA {eta_text(s.eta_seconds, s.docs, s.eta_estimated)}" if s.docs else "")
        for n, s in enumerate(plan.steps, 1)
    ]
    if plan.derived:
        lines += [
            "",
            "**Derived records** (what each version wrote elsewhere, by `model_version`)",
            "",
            "| store | records by version | action | ETA |",
            "|---|---|---|---|",
        ]
        for item in plan.derived:
            held = (
                ", ".join(
                    f"`{v}`: {n}"
                    + (f" ({item.quarantined_by_version[v]} quarantined)" if item.quarantined_by_version.get(v) else "")
                    for v, n in sorted(item.records_by_version.items())
                )
                or "none"
            )
            action = f"**{item.action}** {item.records} records" if item.records else "none"
            lines.append(
                f"| `{item.store}` ({item.table}) | {held} | {action} | {eta_text(item.eta_seconds, item.records, item.eta_estimated)} |"
            )
    checks = CHECK_NAMES[:-1] + [f"derived:{item.store}" for item in plan.derived] + CHECK_NAMES[-1:]
    lines += ["", "**Checks that will run**: " + ", ".join(checks)]
    if counts:
        others = {v: n for v, n in counts.items() if v != plan.to_version}
        if others:
            lines += [
                "",
                "**Records a rolled-back model wrote** (documents in the live index by `model_version`, "
                "to review): " + ", ".join(f"`{v}`: {n}" for v, n in sorted(others.items())),
            ]
    if engine is not None:
        lines += ["", *engine_section(engine[0])]
    return "\n".join(lines)


def engine_section(preview: EnginePreview) -> list[str]:
    """The engine's half: every resource `pulumi preview` would change, with the properties it names."""
    lines = ["**What the engine will do** (`pulumi preview`: its own resource diff)", ""]
    if not preview.usable:
        reasons = preview.errors or ("the preview wrote no diff; its step's log says why",)
        return lines + ["The engine's preview **failed**:", "", *(f"- {reason}" for reason in reasons)]
    if not preview.changes:
        return lines + ["No resource changes."]
    lines += ["| resource | type | operation | properties it names |", "|---|---|---|---|"]
    lines += [
        f"| `{c.name}` | `{c.type}` | **{c.op}** | {', '.join(c.properties) or '—'} |"
        for c in preview.changes
        if not c.type.startswith("pulumi:pulumi:")
    ]
    return lines
