"""The embedded servers under a LOCKSTEP_HOME of this test's own (the shared servers are never touched):
a moto started from a checkout's venv that is then deleted is reported as stale, not running, and the
next `lockstep services up` restarts it from the caller's venv, saying in one line that stacks
deployed on the previous servers need `pulumi refresh` (their data did not survive)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from lockstep import runtime

VENV = Path(sys.prefix)


def throwaway_venv(directory: Path) -> Path:
    """A venv that is a throwaway checkout's: its own python and pyvenv.cfg, the real packages."""
    (directory / "bin").mkdir(parents=True)
    shutil.copy(VENV / "pyvenv.cfg", directory / "pyvenv.cfg")
    (directory / "bin" / "python").symlink_to(Path(sys.executable).resolve())
    (directory / "lib").symlink_to(VENV / "lib")
    return directory / "bin" / "python"


def services(python: Path | str, home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ENDPOINT_URL", "LOCKSTEP_HOME")}
    # OpenSearch comes from outside (an address nobody answers on): only moto is this home's.
    env |= {"LOCKSTEP_HOME": str(home), "OPENSEARCH_URL": "http://127.0.0.1:9"}
    return subprocess.run(
        [str(python), "-m", "lockstep.cli", "services", *args], capture_output=True, text=True, env=env, timeout=300
    )


def moto_line(status: subprocess.CompletedProcess) -> str:
    return next(line for line in status.stdout.splitlines() if line.startswith("moto"))


def test_a_moto_whose_venv_is_gone_is_stale_and_restarted_from_the_callers_venv(tmp_path, monkeypatch):
    home = tmp_path / "home"
    checkout = throwaway_venv(tmp_path / "checkout-venv")
    try:
        started = services(checkout, home, "up")
        assert started.returncode == 0, started.stderr
        assert "started empty" not in started.stderr  # the first moto under this home
        assert "running" in moto_line(services(sys.executable, home, "status"))

        shutil.rmtree(tmp_path / "checkout-venv")  # the checkout goes; its moto still runs
        stale = moto_line(services(sys.executable, home, "status"))
        assert f"stale (runs {checkout}, which is gone)" in stale, stale

        again = services(sys.executable, home, "up")
        assert again.returncode == 0, again.stderr
        assert f"runs {checkout}, which is gone; restarting it from {sys.executable}" in again.stderr, again.stderr
        (empty,) = [line for line in again.stderr.splitlines() if "started empty" in line]
        assert "pulumi refresh --stack S" in empty
        assert "running" in moto_line(services(sys.executable, home, "status"))
        monkeypatch.setenv("LOCKSTEP_HOME", str(home))
        moto = runtime.Managed.load("moto")
        assert moto is not None and moto.code_gone() is None
    finally:
        services(sys.executable, home, "down")
