"""`lockstep up --stack S [--preview]`: the stack's release through the real Pulumi engine.

The program is components/program.py's, run as an Automation API inline program (no Python
language host needed), on a file backend under the lockstep cache; the custom resources are
served by components/pulumi-resource-lockstep, found on PATH. The CLI is lockstep.engine's (a
`pulumi` on PATH, or the one scripts/engine/build.sh builds once from the Go module proxy).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lockstep import engine, runtime
from lockstep.config import Catalog, StackSettings
from lockstep.errors import LockstepError, UsageError
from lockstep.ops.clients import PASSWORD_VARIABLE

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIR = ROOT / "components"
PROJECT = "lockstep"
# The local backend's secrets are encrypted with this unless PULUMI_CONFIG_PASSPHRASE is set.
LOCAL_PASSPHRASE = "lockstep-local"
# A slot's resource (by backend) and the properties whose change deploys another model there.
SLOT_TYPES = {
    "lockstep:embedded:EndpointSlot": {"version", "artifactSha256"},
    "aws:sagemaker/endpoint:Endpoint": {"endpointConfigName"},
}
CHANGES = ("create", "update", "replace", "create-replacement", "delete", "delete-replaced")
# Set while `lockstep up` runs the program: the ModelRelease accepts autoRevert only then (the revert
# is a second update, which only `lockstep up` runs; see components/model_release.py).
AUTO_REVERT_ACTOR = "LOCKSTEP_AUTO_REVERT_ACTOR"


class EngineFailed(LockstepError):
    """The engine ran and the update failed (e.g. the Check resource): exit 1."""


def the_engine() -> engine.Engine:
    try:
        return engine.engine()
    except engine.EngineUnavailable as exc:
        raise UsageError(f"{exc}; `make engine` builds it") from None


def backend_dir() -> Path:
    return Path(os.environ.get("LOCKSTEP_PULUMI_BACKEND", runtime.home() / "pulumi-backend"))


def engine_env(found: engine.Engine, backend: Path) -> dict[str, str]:
    backend.mkdir(parents=True, exist_ok=True)
    env = found.env(backend, os.environ.get("PULUMI_CONFIG_PASSPHRASE", LOCAL_PASSPHRASE))
    # pulumi-resource-lockstep is found on PATH; plugins and credentials stay beside the backend.
    env["PATH"] = os.pathsep.join([str(PLUGIN_DIR), env["PATH"]])
    env["PULUMI_HOME"] = str(backend / ".pulumi-home")
    # The engine and the plugins it starts inherit this process's environment: blank the password
    # there, it reaches the resources only as a secret input (never plain text in a process's env).
    env[PASSWORD_VARIABLE] = ""
    env[AUTO_REVERT_ACTOR] = "lockstep up"
    return env


def stack_for(settings: StackSettings, catalog: Catalog, backend: Path | None = None):
    """The engine's stack for `settings`, selected or created, with the release as its inline program."""
    import pulumi
    from pulumi import automation as auto

    from components import program

    found = the_engine()
    password = None
    if settings.opensearch.auth == "basic":
        secret = os.environ.get(PASSWORD_VARIABLE)
        if not secret:
            raise UsageError(
                f"opensearch.auth is basic: set {PASSWORD_VARIABLE} (it reaches the resources as a secret)"
            )
        password = secret

    def declare() -> None:
        # The secret is made inside the program: an Output belongs to the program's event loop.
        program.declare(settings, catalog, pulumi.Output.secret(password) if password else None)

    return auto.create_or_select_stack(
        stack_name=settings.stack,
        project_name=PROJECT,
        program=declare,
        opts=auto.LocalWorkspaceOptions(
            pulumi_command=auto.PulumiCommand(root=str(found.root), skip_version_check=True),
            env_vars=engine_env(found, backend or backend_dir()),
        ),
    )


# ----------------------------------------------------------------------------------- the steps


@dataclass
class Steps:
    """What the engine said it would do (preview) or did (up) per resource: (op, type, name, diffs)."""

    steps: list[tuple[str, str, str, tuple[str, ...]]] = field(default_factory=list)

    def on_event(self, event) -> None:
        pre = getattr(event, "resource_pre_event", None)
        if pre is None or pre.metadata is None:
            return
        meta = pre.metadata
        op = getattr(meta.op, "value", str(meta.op))
        self.steps.append((op, meta.type, meta.urn.rsplit("::", 1)[-1], tuple(meta.diffs or ())))

    def changed(self) -> dict[str, str]:
        """{resource name: op} of every step that is not `same`."""
        return {name: op for op, _, name, _ in self.steps if op in CHANGES}

    def of_type(self, token: str) -> dict[str, str]:
        return {name: op for op, typ, name, _ in self.steps if typ == token and op in CHANGES}

    def deploys(self) -> bool:
        """A slot gets another model: created, replaced, or updated in what it serves."""
        return any(
            op in CHANGES and (op != "update" or set(diffs) & SLOT_TYPES[typ])
            for op, typ, _, diffs in self.steps
            if typ in SLOT_TYPES
        )

    def classify(self) -> dict[str, str]:
        """The release plan's words for these steps: index_action (provision / reattach / none) and
        endpoint_action (deploy / flip / none), as `lockstep plan` uses them."""
        created = {op for op in self.of_type("lockstep:index:Index").values()} & {"create", "create-replacement"}
        cutover = bool(self.of_type("lockstep:index:Cutover"))
        return {
            "index_action": "provision" if created else "reattach" if cutover else "none",
            "endpoint_action": "deploy" if self.deploys() else "flip" if cutover else "none",
        }


def error_lines(exc: Exception) -> list[str]:
    """The engine's error lines (`error: …`), each once, without the engine's decoration."""
    text = f"{getattr(exc, 'stdout', '')}\n{getattr(exc, 'stderr', '')}\n{exc}"
    found = []
    for line in text.splitlines():
        match = re.search(r"error: (.*)", line)
        if match:
            message = match.group(1).strip().removeprefix("lockstep: ")
            message = re.sub(r"^(update failed|preview failed)$", "", message)
            if message and message not in found:
                found.append(message)
    return found or [str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__]


def run(
    settings: StackSettings,
    catalog: Catalog,
    preview: bool = False,
    say: Callable[[str], None] = print,
    backend: Path | None = None,
) -> Steps:
    """Preview or update the stack; raise EngineFailed with the engine's own error lines."""
    from pulumi.automation import errors as auto_errors

    stack = stack_for(settings, catalog, backend)
    steps = Steps()
    os.environ[AUTO_REVERT_ACTOR] = "lockstep up"  # the inline program runs in this process
    try:
        if preview:
            stack.preview(diff=True, on_output=say, on_event=steps.on_event, color="never")
        else:
            stack.up(on_output=say, on_event=steps.on_event, color="never")
    except auto_errors.CommandError as exc:
        lines = [line for line in error_lines(exc) if "lockstep" in line] or error_lines(exc)
        raise EngineFailed("; ".join(lines)) from None
    finally:
        os.environ.pop(AUTO_REVERT_ACTOR, None)
    return steps


def revert_after_failed_check(
    settings: StackSettings,
    catalog: Catalog,
    say: Callable[[str], None] = print,
    backend: Path | None = None,
    since: str = "",
):
    """autoRevert under `lockstep up`: after an update whose Check failed, a second update with the pin
    moved to `orchestrator.revert_target`'s version (the inline program's settings; the stack file is
    not edited). None when the update failed for another reason: no failed check record of the pin
    written by this update (started at or after `since`, `ops.index.now()`'s format) — an older
    failed record is never acted on."""
    from lockstep import orchestrator
    from lockstep.ops import check

    failed = check.latest(settings)
    if failed is None or failed.passed or failed.pin != settings.pin or failed.started_at < since:
        return None
    env = orchestrator.Environment(settings)
    revert = orchestrator.revert_target(env, catalog, orchestrator.Corpus(env), failed)
    revert.command = "up"
    if revert.to_version is None:
        return revert
    back = settings.with_pin(revert.to_version)
    try:
        run(back, catalog, say=say, backend=backend)
    except EngineFailed as exc:
        revert.why += f"; the second update failed: {exc}"
    latest = check.latest(back)
    revert.record = latest if latest is not None and latest.pin == back.pin and latest.started_at >= since else None
    if revert.record is not None:  # the second update's check, marked as autoRevert's (`lockstep check` reads it)
        revert.record.reverted_from = failed.pin
        check.store(revert.record, back)
    return revert
