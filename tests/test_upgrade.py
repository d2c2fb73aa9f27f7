"""Upgrading lockstep under a running stack is a no-op (issue 23): real state written by an earlier
lockstep, then this one.

The earlier lockstep is a git worktree of UPGRADED_FROM with its own venv (`uv sync --frozen`,
never a link to this checkout's): its `lockstep up` deploys a scratch embedded stack, with its
provider plugin, into a file backend. This checkout then runs the same stack on that state: a
preview plans no change (the state's opaque `settings`/`entry` objects and the password input are
read through the provider's migration, defaults are not diffed), an update goes through, and a
pin flip after it is the flip (Cutover and Check only) — all with the plain `pulumi` CLI on this
repository's Pulumi.yaml and __main__.py, as a team runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lockstep import config, engine, stackfile, up
from lockstep.ops import live_state
from tests.conftest import stack_values

# lockstep's main before typed provider inputs (the state shape `migrate` calls version 0).
UPGRADED_FROM = "302bdd0"
ROOT = Path(__file__).resolve().parents[1]
UV = Path.home() / ".cache" / "lockstep" / "tools" / "bin" / "uv"
SIZE = 60


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=1200, **kwargs)


@pytest.fixture(scope="module")
def earlier(tmp_path_factory) -> Path:
    """A worktree of UPGRADED_FROM with its own .venv."""
    if _run(["git", "-C", str(ROOT), "cat-file", "-e", f"{UPGRADED_FROM}^{{commit}}"]).returncode != 0:
        pytest.fail(f"commit {UPGRADED_FROM} is not in this clone; fetch the history (git fetch --unshallow)")
    path = tmp_path_factory.mktemp("earlier") / "lockstep"
    added = _run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), UPGRADED_FROM])
    assert added.returncode == 0, added.stderr
    try:
        uv = str(UV) if UV.exists() else (shutil.which("uv") or "uv")
        env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
        synced = _run([uv, "sync", "--frozen", "--quiet"], cwd=path, env={**env, "UV_PYTHON_DOWNLOADS": "never"})
        assert synced.returncode == 0, synced.stderr
        assert not (path / ".venv").is_symlink()
        yield path
    finally:
        _run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)])


@pytest.fixture(scope="module")
def upgraded(earlier, servers, tmp_path_factory, catalog):
    """A scratch embedded stack deployed by the earlier lockstep: (settings, backend)."""
    from tests.conftest import UNIQUE_NAMES

    unique = f"u{os.urandom(5).hex()}"
    UNIQUE_NAMES.add(unique)
    stacks = tmp_path_factory.mktemp("stacks")
    shutil.copy(earlier / "stacks" / "catalog.yaml", stacks / "catalog.yaml")
    values = stack_values(unique, corpus={"size": SIZE})
    stackfile.write_stack(stacks, unique, values)
    backend = tmp_path_factory.mktemp("backend")
    env = {
        **os.environ,
        "LOCKSTEP_STACKS_DIR": str(stacks),
        "LOCKSTEP_PULUMI_BACKEND": str(backend),
        "PYTHONPATH": "",
    }
    env.pop("VIRTUAL_ENV", None)
    command = [str(earlier / ".venv" / "bin" / "python"), "-m", "lockstep.cli", "up", "--stack", unique]
    deployed = _run(command, cwd=earlier, env=env)  # its own checkout first on sys.path
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    settings = config.settings_from_config(unique, values, config.load_catalog(stacks))
    yield settings, backend, values
    from lockstep.ops import endpoints

    endpoints.stop_local_slots(settings)


def pulumi(the_engine, backend: Path, *args: str) -> subprocess.CompletedProcess:
    """The plain CLI on this repository's Pulumi.yaml and __main__.py, as a user runs it: the CLI,
    the Python host and uv on PATH (lockstep's plugin comes from Pulumi.yaml's plugins.providers)."""
    env = {**os.environ, **the_engine.env(backend, up.LOCAL_PASSPHRASE)}
    env.pop("VIRTUAL_ENV", None)
    return _run([str(the_engine.pulumi), *args, "--non-interactive", "--color", "never"], cwd=ROOT, env=env)


def changed(preview: subprocess.CompletedProcess) -> dict[str, str]:
    """{resource name: op} of the steps a `pulumi preview --json` plans, other than `same`."""
    steps = json.loads(preview.stdout).get("steps", [])
    return {step["urn"].rsplit("::", 1)[-1]: step["op"] for step in steps if step["op"] != "same"}


@pytest.mark.timeout(1800)  # an earlier checkout's venv and deploy, then four engine runs
def test_an_upgrade_of_lockstep_plans_no_change_then_updates_and_flips(upgraded, catalog, ssm):
    settings, backend, values = upgraded
    the_engine = engine.engine()
    stack_file = stackfile.write_stack(ROOT / "stacks", settings.stack, values)
    try:
        planned = pulumi(the_engine, backend, "preview", "--stack", settings.stack, "--expect-no-changes")
        assert planned.returncode == 0, planned.stdout[-3000:] + planned.stderr[-3000:]
        updated = pulumi(the_engine, backend, "up", "--yes", "--skip-preview", "--stack", settings.stack)
        assert updated.returncode == 0, updated.stdout[-3000:] + updated.stderr[-3000:]
        again = pulumi(the_engine, backend, "preview", "--stack", settings.stack, "--expect-no-changes")
        assert again.returncode == 0, again.stdout[-3000:]

        stackfile.write_stack(ROOT / "stacks", settings.stack, {**values, "pin": "v2"})
        flip = pulumi(the_engine, backend, "preview", "--stack", settings.stack, "--json")
        assert changed(flip) == {"lockstep-cutover": "update", "lockstep-check": "update"}, flip.stdout[-3000:]
        flipped = pulumi(the_engine, backend, "up", "--yes", "--skip-preview", "--stack", settings.stack)
        assert flipped.returncode == 0, flipped.stdout[-3000:] + flipped.stderr[-3000:]
        assert live_state.read_pointer(ssm, settings.pointer_name).version == "v2"
    finally:
        Path(stack_file).unlink(missing_ok=True)
