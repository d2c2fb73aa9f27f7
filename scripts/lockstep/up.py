"""`lockstep up --stack S [--preview]`: a thin convenience over the plain `pulumi up --stack S`.

It runs the same command a team runs — the `pulumi` CLI on the repository's own Pulumi.yaml +
__main__.py, the program run by Pulumi's Python language host, lockstep's plugin named by
Pulumi.yaml's `plugins.providers` — with the stack file as `--config-file`. What it adds: the CLI
and the language hosts (lockstep.engine's: a `pulumi` on PATH, or the one scripts/engine/build.sh
builds once), a backend when the user has none, a one-line summary in the release plan's words, and
autoRevert. The user's PULUMI_BACKEND_URL, secrets provider and passphrase are used as they are;
only without a PULUMI_BACKEND_URL does it use lockstep's own file backend, with a local passphrase
unless one is set.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lockstep import config, engine, runtime, stackfile
from lockstep.config import Catalog, StackSettings
from lockstep.errors import LockstepError, UsageError
from lockstep.ops.clients import PASSWORD_VARIABLE

ROOT = Path(__file__).resolve().parents[2]
# The local backend's secrets are encrypted with this unless PULUMI_CONFIG_PASSPHRASE(_FILE) is set.
LOCAL_PASSPHRASE = "lockstep-local"
PASSPHRASE_VARIABLES = ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE")
# A slot's resource (by backend) and the properties whose change deploys another model there.
SLOT_TYPES = {
    "lockstep:embedded:EndpointSlot": {"version", "artifactSha256"},
    "aws:sagemaker/endpoint:Endpoint": {"endpointConfigName"},
}
OPERATIONS = ("preview", "up", "refresh", "destroy")
# `--event-log FILE` (the engine's events, as the Automation API reads them) exists only with this set.
EVENT_LOG_ENV = {"PULUMI_DEBUG_COMMANDS": "true"}
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


def engine_env(found: engine.Engine) -> dict[str, str]:
    """This process's environment for the CLI: the user's backend and secrets settings as they are,
    lockstep's file backend (and local passphrase) only where the user set none."""
    env = dict(os.environ)
    env["PATH"] = found.path()
    env["PULUMI_SKIP_UPDATE_CHECK"] = "1"
    # A missing plugin fails at once by name instead of a download attempt from outside.
    env["PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION"] = "true"
    if not env.get("PULUMI_BACKEND_URL"):
        backend = backend_dir()
        backend.mkdir(parents=True, exist_ok=True)
        env["PULUMI_BACKEND_URL"] = f"file://{backend}"
        if not any(env.get(name) for name in PASSPHRASE_VARIABLES):
            env["PULUMI_CONFIG_PASSPHRASE"] = LOCAL_PASSPHRASE
    # The engine and the plugins it starts inherit this environment: blank the password there; it
    # reaches the lockstep provider only as the stack's secret config (`lockstep:opensearchPassword`).
    env[PASSWORD_VARIABLE] = ""
    env[AUTO_REVERT_ACTOR] = "lockstep up"
    return env


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


def error_lines(text: str) -> list[str]:
    """The engine's error lines (`error: …`), each once, without the engine's decoration."""
    found = []
    for line in text.splitlines():
        match = re.search(r"error: (.*)", line)
        if match:
            message = match.group(1).strip().removeprefix("lockstep: ")
            message = re.sub(r"^(update failed|preview failed)$", "", message)
            if message and message not in found:
                found.append(message)
    return found or [text.strip().splitlines()[-1] if text.strip() else "pulumi failed with no output"]


def pulumi(args: list[str], env: dict[str, str], say: Callable[[str], None] = print) -> tuple[int, str, Steps]:
    """`pulumi ARGS` in the repository, its output streamed to `say`: (exit status, output, steps).
    An operation (preview, up, refresh, destroy) writes an event log; its steps are read from it."""
    from pulumi.automation import events

    found = the_engine()
    with tempfile.TemporaryDirectory(prefix="lockstep-up-") as scratch:
        log = Path(scratch) / "events.jsonl"
        argv = [str(found.pulumi), *args, "--non-interactive", "--color", "never"]
        if args[0] in OPERATIONS:
            argv += ["--event-log", str(log)]
            env = env | EVENT_LOG_ENV
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        output = []
        for line in proc.stdout:
            output.append(line)
            say(line)
        status = proc.wait()
        steps = Steps()
        for line in log.read_text().splitlines() if log.exists() else []:
            steps.on_event(events.EngineEvent.from_json(json.loads(line)))
    return status, "".join(output), steps


def run(settings: StackSettings, stack_file: Path, preview: bool = False, say: Callable[[str], None] = print) -> Steps:
    """`pulumi preview|up --stack S --config-file STACK_FILE` (the stack created on first use);
    raise EngineFailed with the engine's own error lines."""
    found = the_engine()
    env = engine_env(found)
    stack = ["--stack", settings.stack]
    listed = subprocess.run(
        [str(found.pulumi), "stack", "ls", "--json", "--non-interactive"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if listed.returncode != 0:  # not logged in, a wrong PULUMI_BACKEND_URL: nothing ran
        said = error_lines(listed.stderr)[0]
        raise UsageError(f"pulumi stack ls failed ({said}); check PULUMI_BACKEND_URL or `pulumi login`")
    if settings.stack not in {s["name"] for s in json.loads(listed.stdout or "[]")}:
        create_stack(settings.stack, stack_file, env, say)
    verb = ["preview", "--diff"] if preview else ["up", "--yes", "--skip-preview"]
    status, output, steps = pulumi([*verb, *stack, "--config-file", str(stack_file)], env, say)
    if status != 0:
        lines = error_lines(output)
        raise EngineFailed("; ".join([line for line in lines if "lockstep" in line] or lines))
    return steps


def create_stack(stack: str, stack_file: Path, env: dict[str, str], say: Callable[[str], None]) -> None:
    """`pulumi stack init S`, as a user runs it. Pulumi keeps a passphrase's salt in the project's
    stacks/Pulumi.S.yaml (Pulumi.yaml's stackConfigDir); when the stack file is elsewhere
    (LOCKSTEP_STACKS_DIR), the salt moves into it and the file Pulumi created goes."""
    written = ROOT / "stacks" / stack_file.name
    created_here = not written.exists()
    status, output, _ = pulumi(["stack", "init", stack], env, say)
    if status != 0:
        raise EngineFailed("; ".join(error_lines(output)))
    if written.resolve() == stack_file.resolve() or not created_here or not written.exists():
        return
    salt = (yaml.safe_load(written.read_text()) or {}).get("encryptionsalt")
    text = stack_file.read_text(encoding="utf-8")
    if salt and "encryptionsalt" not in (yaml.safe_load(text) or {}):
        ending = "" if not text or text.endswith("\n") else "\n"  # a last line without its newline stays whole
        stackfile.replace_text(stack_file, f"{text}{ending}encryptionsalt: {salt}\n")
    written.unlink()  # only once the salt is in the stack file


def _live_version(settings: StackSettings) -> str | None:
    """The version the stack's live pointer names (what readers and the check see as live)."""
    from lockstep.ops import clients, live_state

    with clients.reaching_aws(settings, "SSM"):
        pointer = live_state.read_pointer(clients.aws_for(settings, "ssm"), settings.pointer_name)
    return pointer.version if pointer else None


def copy_with_pin(stack_file: Path, directory: Path, pin: str) -> Path:
    """A copy of the stack file (its secrets and salt as they are) with `lockstep:pin` moved."""
    document = yaml.safe_load(stack_file.read_text()) or {}
    document.setdefault("config", {})[f"{config.PROJECT}:pin"] = pin
    copy = directory / stack_file.name
    copy.write_text(yaml.safe_dump(document, sort_keys=False))
    return copy


def revert_after_failed_check(
    settings: StackSettings,
    catalog: Catalog,
    stack_file: Path,
    say: Callable[[str], None] = print,
    since: str = "",
):
    """autoRevert under `lockstep up`: after an update whose Check failed, a second update with the pin
    moved to `orchestrator.revert_target`'s version — from a copy of the stack file with that pin (the
    stack file is not edited). None when the update failed for another reason: no failed check record
    of the pin written by this update (started at or after `since`, `ops.index.now()`'s format) — an
    older failed record is never acted on."""
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
    with tempfile.TemporaryDirectory(prefix="lockstep-revert-") as scratch:
        copy = copy_with_pin(stack_file, Path(scratch), back.pin)
        try:
            run(back, copy, say=say)
        except EngineFailed as exc:
            if _live_version(back) != back.pin:  # it failed before its cutover: nothing flipped back
                revert.to_version, revert.why = None, f"the update back to {back.pin} failed ({exc})"
                return revert
            revert.why += f"; the second update failed: {exc}"
    latest = check.latest(back)
    revert.record = latest if latest is not None and latest.pin == back.pin and latest.started_at >= since else None
    if revert.record is not None:  # the second update's check, marked as autoRevert's (`lockstep check` reads it)
        revert.record.reverted_from = failed.pin
        check.store(revert.record, back)
    return revert
