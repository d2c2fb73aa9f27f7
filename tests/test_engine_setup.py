"""The engine set-up (scripts/engine/build.sh + lockstep.engine): a pulumi on PATH is used as it is,
its language hosts beside it or else the cached builds; the cached build is reused; a build that
cannot run is one line, and lockstep.engine raises that line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lockstep import engine

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "scripts" / "engine" / "build.sh"
SYSTEM_PATH = "/usr/bin:/bin"  # bash and coreutils; no go, no pulumi


def run_build(path: str, cache: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path}
    if cache is not None:
        env["LOCKSTEP_ENGINE_CACHE"] = str(cache)
    return subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, env=env)


def wrapper(directory: Path, name: str, target: Path) -> Path:
    """A stand-in for a user's install: a script that runs the real binary."""
    directory.mkdir(exist_ok=True)
    script = directory / name
    script.write_text(f'#!/bin/sh\nexec "{target}" "$@"\n')
    script.chmod(0o755)
    return script


def test_the_cached_build_is_reused_and_says_where():
    """Without a pulumi on PATH: the pinned build (made by the first run if `make test` did not), then reused."""
    path = f"{Path(shutil.which('go') or '/nonexistent').parent}:{SYSTEM_PATH}"
    first = run_build(path)
    assert first.returncode == 0, first.stderr
    again = run_build(path)
    assert again.returncode == 0, again.stderr
    pulumi, yaml_host, python_host = again.stdout.split()
    assert again.stdout == first.stdout and Path(pulumi).parent == Path(yaml_host).parent == Path(python_host).parent
    assert os.access(Path(python_host).parent / "pulumi-language-python-exec", os.X_OK)
    assert again.stderr.count("\n") == 1 and "building" not in again.stderr
    assert again.stderr.startswith(f"lockstep engine: pulumi v3.274.1 at {pulumi} (built from the Go module proxy)")
    version = subprocess.run([pulumi, "version"], capture_output=True, text=True)
    assert version.stdout.strip() == "v3.274.1"


def test_a_pulumi_on_path_is_used_with_the_hosts_beside_it_or_the_cached_ones(tmp_path):
    built = engine.engine()
    user = wrapper(tmp_path / "user", "pulumi", built.pulumi)
    proc = run_build(f"{user.parent}:{os.environ['PATH']}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(user), str(built.yaml_host), str(built.python_host)]
    assert "(user's install on PATH)" in proc.stderr

    yaml_host = wrapper(user.parent, "pulumi-language-yaml", built.yaml_host)
    python_host = wrapper(user.parent, "pulumi-language-python", built.python_host)
    proc = run_build(f"{user.parent}:{os.environ['PATH']}")
    assert proc.stdout.split() == [str(user), str(yaml_host), str(python_host)]


def test_a_python_host_without_its_sources_is_one_line(tmp_path):
    """No Python host beside the user's pulumi, none cached, and no sources to build it from."""
    built = engine.engine()
    user = wrapper(tmp_path / "user", "pulumi", built.pulumi)
    wrapper(user.parent, "pulumi-language-yaml", built.yaml_host)
    env_path = f"{user.parent}:{Path(shutil.which('go') or '/nonexistent').parent}:{SYSTEM_PATH}"
    env = {**os.environ, "PATH": env_path, "LOCKSTEP_ENGINE_CACHE": str(tmp_path / "cache")}
    env["LOCKSTEP_PYTHON_HOST_SRC"] = str(tmp_path / "missing")
    proc = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, env=env)
    assert proc.returncode == 1 and proc.stdout == ""
    line = f"lockstep engine: cannot build pulumi-language-python: its sources are not at {tmp_path / 'missing'}"
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(line)


def test_a_build_that_cannot_run_is_one_line_and_engine_raises_it(tmp_path):
    proc = run_build(SYSTEM_PATH, tmp_path)
    line = "lockstep engine: cannot build pulumi v3.274.1: go is not on PATH"
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(line)
    assert (tmp_path / "last-failure").read_text() == proc.stderr

    # What the tests see after `make test` recorded the failure (LOCKSTEP_ENGINE_FAILED): the same line.
    probe = "from lockstep import engine\ntry:\n    engine.pulumi_bin()\nexcept engine.EngineUnavailable as e:\n    print(e)"
    env = {**os.environ, "LOCKSTEP_ENGINE_CACHE": str(tmp_path), "LOCKSTEP_ENGINE_FAILED": "1"}
    raised = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    assert raised.stdout == proc.stderr


def test_a_backend_that_cannot_list_stacks_is_bad_input_before_anything_runs(tmp_path, monkeypatch):
    """`lockstep up` with a wrong PULUMI_BACKEND_URL or no login: `pulumi stack ls` fails, and that is
    one line naming it (exit 2), not a later `pulumi up` failure reported as a failed update."""
    import yaml

    from lockstep import config, up
    from lockstep.errors import UsageError

    fake = tmp_path / "pulumi"
    fake.write_text(
        "#!/bin/sh\n"
        'echo "error: PULUMI_ACCESS_TOKEN must be set for login during non-interactive CLI sessions" >&2\n'
        "exit 255\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(up, "the_engine", lambda: engine.Engine(fake, fake, fake))
    settings = config.load_stack("local")
    stack_file = tmp_path / "Pulumi.local.yaml"
    stack_file.write_text(yaml.safe_dump({"config": {"lockstep:pin": settings.pin}}))
    with pytest.raises(UsageError) as refused:
        up.run(settings, stack_file)
    assert str(refused.value) == (
        "pulumi stack ls failed (PULUMI_ACCESS_TOKEN must be set for login during non-interactive CLI sessions); "
        "check PULUMI_BACKEND_URL or `pulumi login`"
    )


def test_the_passphrase_salt_moves_whole_into_a_stack_file_without_a_last_newline(tmp_path, monkeypatch):
    """A stack file kept outside the repository (LOCKSTEP_STACKS_DIR) whose last line has no newline:
    the salt `pulumi stack init` wrote goes in on its own line (it was glued to the last line), and
    the file Pulumi wrote is removed only once the salt is in."""
    import uuid

    import yaml

    from lockstep import up

    stack = f"tsalt{uuid.uuid4().hex[:8]}"
    stack_file = tmp_path / f"Pulumi.{stack}.yaml"
    stack_file.write_text("config:\n  lockstep:pin: v1")
    written = up.ROOT / "stacks" / stack_file.name

    def stack_init(args, env, say):
        written.write_text("encryptionsalt: v1:c2FsdA==:v1:abc\n")
        return 0, "", None

    monkeypatch.setattr(up, "pulumi", stack_init)
    try:
        up.create_stack(stack, stack_file, {}, lambda _: None)
        assert yaml.safe_load(stack_file.read_text()) == {
            "config": {"lockstep:pin": "v1"},
            "encryptionsalt": "v1:c2FsdA==:v1:abc",
        }
        assert not written.exists()
    finally:
        written.unlink(missing_ok=True)
