"""`lockstep` command line: the wire over the ops layer (no data logic lives here).

Every error a person can fix is one line on stderr and exit 2 (see lockstep.errors).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from lockstep import config, services
from lockstep.errors import LockstepError


class Group(click.Group):
    """Turns LockstepError into one line and its exit code instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LockstepError as exc:
            click.echo(f"lockstep: {exc}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """lockstep: a model version deployed as one unit — artifact, k-NN index, endpoints."""


@cli.command("validate")
@click.option("--stack", "stacks", multiple=True, help="Stack to validate (default: every stacks/Pulumi.*.yaml).")
@click.pass_context
def validate(ctx: click.Context, stacks: tuple[str, ...]) -> None:
    """Validate the catalog and stack files; report the first problem of each by field."""
    catalog = config.load_catalog(stacks_dir())
    names = stacks or sorted(p.name.split(".")[1] for p in stacks_dir().glob("Pulumi.*.yaml"))
    for name in names:
        settings = config.load_stack(name, stacks_dir(), catalog)
        click.echo(f"{name}: ok (pin {settings.pin}, slots blue={settings.slots.blue} green={settings.slots.green})")


@cli.group("services")
def services_group() -> None:
    """The embedded environment: moto server + OpenSearch with k-NN (+ endpoint slot processes)."""


@services_group.command("install")
def services_install() -> None:
    """Download (Maven Central, cached) and assemble OpenSearch with k-NN; idempotent."""
    click.echo(f"OpenSearch {services.OPENSEARCH_VERSION} with k-NN at {services.install_opensearch()}")


@services_group.command("up")
def services_up() -> None:
    """Start what is not running (idempotent) and print `export NAME=value` lines."""
    states = services.up()
    for state in states:
        click.echo(f"# {state.name}: {state.source} {state.url}" + (f" (pid {state.pid}, log {state.log})" if state.pid else ""), err=True)
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
    for slot in services.endpoint_processes():
        click.echo(f"{slot.name:<12} running    {slot.url} pid {slot.pid}")


def stacks_dir() -> Path:
    """Where stack files live: `LOCKSTEP_STACKS_DIR` or the project's `stacks/`."""
    return Path(os.environ.get("LOCKSTEP_STACKS_DIR", config.STACKS_DIR))


def main() -> None:
    cli(prog_name="lockstep")


if __name__ == "__main__":
    main()
