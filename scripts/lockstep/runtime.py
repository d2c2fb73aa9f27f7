"""Process supervision: the processes lockstep starts (servers, endpoint slots), each remembered by a
pid file under `<LOCKSTEP_HOME>/run`, started in its own session and stopped as a group.

Serving code (endpoint slots) and the embedded servers both use it; nothing here knows what runs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from lockstep.errors import Unreachable

START_TIMEOUT = float(os.environ.get("LOCKSTEP_START_TIMEOUT", "180"))
BUSY_TIMEOUT = 120.0


def home() -> Path:
    return Path(os.environ.get("LOCKSTEP_HOME", Path.home() / ".cache" / "lockstep"))


def run_dir() -> Path:
    path = home() / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Managed:
    """A process we started, remembered in `<run>/<name>.json` (pid, url, log, start time).

    The start time (from /proc, in clock ticks since boot) tells our process from a later one that
    got the same pid: on a busy machine pids wrap, and a stale record must never stop a stranger.
    """

    name: str
    pid: int
    url: str
    log: str
    started: int | None = None

    @classmethod
    def load(cls, name: str) -> Managed | None:
        path = run_dir() / f"{name}.json"
        if not path.exists():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            path.unlink(missing_ok=True)
            return None

    def save(self) -> None:
        (run_dir() / f"{self.name}.json").write_text(json.dumps(self.__dict__))

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        fields = _stat_fields(self.pid)
        if fields is None:
            return True  # no /proc here: the pid is all we can go by
        if fields[0].startswith("Z"):
            return False
        return self.started is None or int(fields[19]) == self.started

    def code_gone(self) -> str | None:
        """The program the process was started with, when that file is gone (its checkout or venv
        was deleted): it still runs, but imports anything it had not loaded yet in vain."""
        try:
            program = Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
        except (OSError, UnicodeDecodeError):
            return None
        return program if program.startswith("/") and not os.path.exists(program) else None

    def stop(self, timeout: float = 30) -> None:
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.2)
            if self.alive():
                os.killpg(self.pid, signal.SIGKILL)
                while self.alive() and time.monotonic() < deadline + 10:
                    time.sleep(0.1)
        (run_dir() / f"{self.name}.json").unlink(missing_ok=True)


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: state is [0], the start time [19]."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[-1].split()
    except OSError:
        return None


def spawn(name: str, argv: list[str], url: str, env: dict | None = None, cwd: Path | None = None) -> Managed:
    log_path = run_dir() / f"{name}.log"
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    fields = _stat_fields(process.pid)
    started = int(fields[19]) if fields else None
    managed = Managed(name=name, pid=process.pid, url=url, log=str(log_path), started=started)
    managed.save()
    return managed


def wait_until(ready, what: str, log_path: str, timeout: float = START_TIMEOUT, alive=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if alive is not None and not alive():
            raise Unreachable(f"{what} exited while starting; see {log_path}")
        time.sleep(0.3)
    raise Unreachable(f"{what} did not become healthy within {timeout:.0f}s; see {log_path}")


def http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code < 500
    except requests.RequestException:
        return False


def endpoint_processes() -> list[Managed]:
    """Slot processes (`endpoint-<stack>-<slot>`) that lockstep started and that still run."""
    found = []
    for path in sorted(run_dir().glob("endpoint-*.json")):
        managed = Managed.load(path.stem)
        if managed and managed.alive():
            found.append(managed)
    return found
