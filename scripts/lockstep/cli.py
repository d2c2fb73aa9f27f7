"""`lockstep` command line: the wire over the ops layer (no data logic lives here).

Every error a person can fix is one line on stderr and exit 2 (see lockstep.errors).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import NoReturn

import click

from lockstep import config, drill, opensearch_node, orchestrator, promote, report, runtime, services, stackfile
from lockstep.engine_preview import compare, read_preview
from lockstep.errors import LockstepError, Unreachable, UsageError
from lockstep.ops import check, index, live_state
from lockstep.plan import declared_state, release_plan


class Group(click.Group):
    """Turns LockstepError into one line and its exit code instead of a traceback, and a bad
    option or argument into one line naming it and where the help is, exit 2 (click's own
    answer is three lines: usage, hint, error)."""

    def make_context(self, info_name, args, parent=None, **extra):
        """The group's own options (`lockstep --bogus`) are parsed here, before `invoke`."""
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise  # plain `lockstep`: the help, as click prints it
        except click.UsageError as exc:
            _usage_line(exc, info_name or self.name or "lockstep")

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LockstepError as exc:
            click.echo(f"lockstep: {exc}", err=True)
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            _usage_line(exc, ctx.command_path)


def _usage_line(exc: click.UsageError, command_path: str) -> NoReturn:
    where = exc.ctx.command_path if exc.ctx else command_path
    click.echo(f"lockstep: {exc.format_message().rstrip('.')} (see `{where} --help`)", err=True)
    sys.exit(2)


@click.group("lockstep", cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """lockstep: a model version deployed as one unit — artifact, k-NN index, endpoints."""


@cli.command("validate")
@click.option("--stack", "stacks", multiple=True, help="Stack to validate (default: every stacks/Pulumi.*.yaml).")
@click.pass_context
def validate(ctx: click.Context, stacks: tuple[str, ...]) -> None:
    """Validate the catalog and stack files; report the first problem of each by field."""
    catalog = config.load_catalog(stacks_dir())
    names = stacks or sorted(
        p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in stacks_dir().glob("Pulumi.*.yaml")
    )
    sharing: dict[tuple[str, str], str] = {}  # (cluster, indexPrefix) -> the first stack using it
    for name in names:
        settings = config.load_stack(name, stacks_dir(), catalog)
        first = sharing.setdefault((settings.cluster, settings.opensearch.index_prefix), name)
        if first != name:
            raise config.ConfigError(
                f"stacks {first} and {name} both use opensearch.indexPrefix {settings.opensearch.index_prefix} on "
                f"{settings.cluster}: they would name the same indices; give one its own indexPrefix"
            )
        click.echo(f"{name}: ok (pin {settings.pin}, slots blue={settings.slots.blue} green={settings.slots.green})")


def stack_settings(stack: str) -> tuple[config.StackSettings, config.Catalog]:
    handed_over = config.settings_from_environment(stack)
    if handed_over:
        return handed_over
    catalog = config.load_catalog(stacks_dir())
    return config.load_stack(stack, stacks_dir(), catalog), catalog


@cli.command("pin")
@click.option("--stack", required=True, help="Stack whose file to edit (stacks/Pulumi.<stack>.yaml).")
@click.argument("version")
def pin(stack: str, version: str) -> None:
    """Set the pin, placing VERSION in the standby slot when it is in neither (keeps comments)."""
    change = stackfile.set_pin(stack, version, stacks_dir())
    click.echo(change.summary())


@cli.command("apply")
@click.option("--stack", required=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def apply_command(stack: str, quiet: bool) -> None:
    """Drive the embedded environment to the stack's config; exit 1 if the final check fails."""
    settings, catalog = stack_settings(stack)
    click.echo(f"apply {stack}: pin {settings.pin} (blue={settings.slots.blue}, green={settings.slots.green})")
    result = orchestrator.apply(settings, catalog, progress=not quiet, say=click.echo)
    if result.record:
        report.print_check(result.record)
    if result.revert:  # autoRevert: the deploy's check failed; the exit stays 1 whatever the flip did
        click.echo(result.revert.summary())
    if result.record is None or not result.record.passed:
        sys.exit(1)


@cli.command("check")
@click.option("--stack", required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result record as JSON.")
def check_command(stack: str, as_json: bool) -> None:
    """Exit 0 consistent, 1 inconsistent, 2 could not check."""
    settings, catalog = stack_settings(stack)
    outcome = check.evaluate_live(settings, catalog)  # could not check: nothing stored, one line, exit 2
    if outcome.note:  # after autoRevert: what is live, and how to make it the stack file's pin
        click.echo(f"lockstep: {outcome.note}", err=as_json)
    if outcome.record is not None and as_json:
        click.echo(json.dumps(outcome.record.to_dict(), indent=2))
    elif outcome.record is not None:
        report.print_check(outcome.record)
    if outcome.reason:
        click.echo(f"lockstep: {outcome.reason}", err=True)
    sys.exit(outcome.exit_code)


@cli.command("backfill")
@click.option("--stack", required=True)
@click.option("--version", "version", required=True, help="Catalog version whose index to build or catch up.")
@click.option("--full", is_flag=True, help="Re-embed every document, not only the missing or changed ones.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--attach",
    "attach",
    metavar="JOB_ID",
    help="Follow a running Ray backfill job (backfill.engine ray with an address) instead of submitting one.",
)
def backfill(stack: str, version: str, full: bool, quiet: bool, attach: str | None) -> None:
    """Provision or catch up VERSION's index from the corpus (never moves the live alias).

    With backfill.engine ray and backfill.address, the backfill runs as a Ray job that outlives
    this command: Ctrl-C detaches, `--attach JOB_ID` (or the same command again) re-attaches."""
    settings, catalog = stack_settings(stack)
    result = orchestrator.backfill(settings, catalog, version, progress=not quiet, full=full, attach=attach)
    click.echo(
        f"{result.index}: {'created, ' if result.created else ''}{result.embedded} embedded, "
        f"{result.deleted} deleted in {result.seconds:.1f}s ({result.rate:,.0f} docs/s)"
    )


@cli.command("publish")
@click.option(
    "--stack",
    required=True,
    help="Stack whose artifact bucket receives the model (and whose stacks/ holds the catalog).",
)
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("version")
@click.option("--family", help="Model family (default: the installed family that recognises the files).")
@click.option("--dimension", type=int, help="Declared dimension; refused if the model's differs.")
@click.option("--space-type", default="cosinesimil", show_default=True, help="k-NN space of the version's index.")
@click.option("--model", "model_name", help="Artifact key folder (models/<model>/…); default: the catalog's model.")
@click.option("--description", default="", help="Free text for people.")
def publish_command(
    stack: str,
    source: Path,
    version: str,
    family: str | None,
    dimension: int | None,
    space_type: str,
    model_name: str | None,
    description: str,
) -> None:
    """Package SOURCE (a model directory or model.tar.gz) as catalog VERSION: verify it by encoding a
    probe, upload it content-addressed, add it to the catalog. Bad input: exit 2, nothing written."""
    from lockstep import publish

    settings, catalog = stack_settings(stack)
    done = publish.publish(
        settings, catalog, stacks_dir(), source, version, family, dimension, space_type, model_name, description
    )
    entry = done.entry
    click.echo(
        f"{entry.version}: {entry.family}, dimension {entry.dimension}, artifact {entry.artifact_sha256[:12]}… "
        f"at s3://{settings.artifacts.bucket}/{entry.artifact_key} "
        f"({'added to the catalog' if done.catalog_changed else 'already in the catalog'})"
    )


@cli.command("plan")
@click.option("--stack", required=True)
@click.option("--to", "to_version", help="Plan a change of the pin to this version (default: the stack file as it is).")
@click.option("--base", help="Git ref whose stack file is the 'before' (e.g. origin/main in a PR).")
@click.option("--format", "fmt", type=click.Choice(["md", "json"]), default="md")
@click.option(
    "--engine-preview",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="`pulumi preview --json` output of the same change: the comment adds the engine's resource diff "
    "and whether it agrees with the plan.",
)
def plan_command(stack: str, to_version: str | None, base: str | None, fmt: str, engine_preview: Path | None) -> None:
    """What a change does to the data: reattach or provision, documents to embed, endpoints, undo."""
    settings, catalog = stack_settings(stack)
    before = settings
    if base:
        before = config.settings_from_yaml_text(
            stack, git_show(base, config.stack_path(stack, stacks_dir())), catalog, f"{base}:{stack}"
        )
    target = settings
    if to_version:
        catalog.get(to_version)
        target = settings.with_pin(to_version)
    counts = None
    try:
        env, planned = orchestrator.plan_for(target, catalog)
        with env.reach_opensearch():  # an earlier run's index of another build: named, with the fix
            check.refuse_misbuilt_indices(env.opensearch, target, catalog)
        known = True
        live = live_state.alias_targets(env.opensearch, settings.opensearch.alias_name)
        counts = live_state.count_by_model_version(env.opensearch, live[0])[1] if len(live) == 1 else None
    except Unreachable:
        planned = release_plan(catalog, target, declared_state(before))
        known = False
    engine = None
    if engine_preview is not None:
        preview = read_preview(engine_preview.read_text(encoding="utf-8", errors="replace"))
        engine = (preview, compare(planned, target, preview))
    if fmt == "json":
        document = planned.to_dict(data_state="observed" if known else "unknown", records_by_model_version=counts)
        if engine is not None:
            document["engine"] = {
                "agrees": engine[1].agrees,
                "line": engine[1].line,
                "changes": [{"op": c.op, "type": c.type, "name": c.name} for c in engine[0].changes],
                "errors": list(engine[0].errors),
            }
        click.echo(json.dumps(document, indent=2))
    else:
        click.echo(report.plan_markdown(planned, known=known, counts=counts, base_pin=before.pin, engine=engine))


def git_show(ref: str, path: Path) -> str:
    import subprocess

    rel = (
        path.resolve().relative_to(Path.cwd().resolve())
        if path.resolve().is_relative_to(Path.cwd().resolve())
        else path
    )
    result = subprocess.run(["git", "show", f"{ref}:{rel}"], capture_output=True, text=True)
    if result.returncode != 0:
        raise UsageError(
            f"--base {ref}: git cannot show {rel} ({result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'unknown error'}); pass a ref that has the stack file"
        )
    return result.stdout


@cli.command("promote")
@click.option("--from", "source", required=True, help="Stack whose verified pin to promote.")
@click.option("--to", "target", required=True, help="Stack whose file to edit.")
@click.option("--version", help="Version to promote (default: the source's pin).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    help="text: PR title on the first line, body after; json: {title, body, ...}.",
)
def promote_command(source: str, target: str, version: str | None, fmt: str) -> None:
    """Pin TARGET to a version SOURCE verified (its latest check passed since its last cutover)."""
    done = promote.promote(source, target, version, stacks_dir())
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "title": done.title,
                    "body": done.body,
                    "version": done.version,
                    "from": source,
                    "to": target,
                    "file": str(done.change.path),
                },
                indent=2,
            )
        )
    else:
        click.echo(f"{done.title}\n\n{done.body}")


@cli.command("drill")
@click.option(
    "--docs", default=2000, show_default=True, type=click.IntRange(min=100), help="Corpus size (stdlib docstrings)."
)
@click.option("--keep", is_flag=True, help="Leave the environment up for exploring.")
@click.option(
    "--out", default="reports", show_default=True, type=click.Path(path_type=Path), help="Where the report goes."
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Re-embedding engine of the drill's stack (ray: a local Ray runtime).",
)
def drill_command(docs: int, keep: bool, out: Path, quiet: bool, engine: str) -> None:
    """The whole rollback story on the embedded default (the main job)."""
    result = drill.run(docs, out, keep, progress=not quiet, engine=engine)
    sys.exit(0 if result.expected_outcomes else 1)


@cli.group("services")
def services_group() -> None:
    """The embedded environment: moto server + OpenSearch with k-NN (+ endpoint slot processes)."""


@services_group.command("install")
def services_install() -> None:
    """Download (Maven Central, cached) and assemble OpenSearch with k-NN; idempotent."""
    click.echo(f"OpenSearch {opensearch_node.OPENSEARCH_VERSION} with k-NN at {opensearch_node.install()}")


@services_group.command("up")
@click.option(
    "--nodes",
    type=click.IntRange(1, 9),
    default=None,
    help="OpenSearch as a cluster of N nodes on loopback (default: as many as run, else 1).",
)
def services_up(nodes: int | None) -> None:
    """Start what is not running (idempotent) and print `export NAME=value` lines."""
    states = services.up(nodes)
    for state in states:
        click.echo(
            f"# {state.name}: {state.source} {state.url}"
            + (f" (pid {state.pid}, log {state.log})" if state.pid else ""),
            err=True,
        )
    click.echo(services.exports(states))


@services_group.command("down")
def services_down() -> None:
    """Stop the processes lockstep started (and only those)."""
    stopped = services.down()
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing of ours was running")


@services_group.command("status")
def services_status() -> None:
    """Say what runs where."""
    for state in services.status():
        pid = f" pid {state.pid}" if state.pid else ""
        click.echo(f"{state.name:<12} {state.source:<10} {state.url}{pid}")
    for slot in runtime.endpoint_processes():
        click.echo(f"{slot.name:<12} running    {slot.url} pid {slot.pid}")


@cli.command("up")
@click.option("--stack", required=True)
@click.option("--preview", is_flag=True, help="Show what the engine would do; change nothing.")
def up_command(stack: str, preview: bool) -> None:
    """`pulumi preview|up --stack S` on this repository, plus a one-line summary and autoRevert.

    The user's PULUMI_BACKEND_URL and secrets settings are used; without a backend, lockstep's file
    backend in the lockstep cache. Exit 1 when the engine fails the update (e.g. the consistency
    check), 2 on bad input."""
    from lockstep import up

    settings, catalog = stack_settings(stack)
    stack_file = config.stack_path(stack, stacks_dir())

    def say(line: str) -> None:
        click.echo(line.rstrip("\n"))

    started = index.now()  # autoRevert acts only on a check record this update wrote
    try:
        steps = up.run(settings, stack_file, preview=preview, say=say)
    except up.EngineFailed as failed:
        auto_revert = settings.auto_revert and not preview
        try:
            revert = (
                up.revert_after_failed_check(settings, catalog, stack_file, say, since=started) if auto_revert else None
            )
        except LockstepError as exc:  # the update's failure stays the news, and its exit
            click.echo(f"lockstep: {failed}", err=True)
            click.echo(f"lockstep: autoRevert did not run: {exc}", err=True)
            sys.exit(1)
        if revert is None:
            raise
        click.echo(f"lockstep: {failed}", err=True)
        click.echo(revert.summary())
        sys.exit(1)  # autoRevert: the update failed whatever the revert did
    kinds = steps.classify()
    click.echo(f"{stack}: index {kinds['index_action']}, endpoints {kinds['endpoint_action']}")


def stacks_dir() -> Path:
    """Where stack files live: `LOCKSTEP_STACKS_DIR` or the project's `stacks/`."""
    return Path(os.environ.get("LOCKSTEP_STACKS_DIR", config.STACKS_DIR))


def main() -> None:
    cli(prog_name="lockstep")


if __name__ == "__main__":
    main()
