"""Where the real Pulumi engine is: the `pulumi` CLI, the YAML and the Python language hosts.

scripts/engine/build.sh decides (a `pulumi` on PATH, else a pinned build from the Go module proxy,
cached outside the repo and built once); this module runs it once per process and hands its answer
to tests and `lockstep up`. When the engine cannot be had, every caller gets the same one-line
EngineUnavailable naming what failed. `make test` runs the build before pytest and, if it failed,
sets LOCKSTEP_ENGINE_FAILED so the tests fail with that line at once instead of building again.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "engine" / "build.sh"
# Where `make setup` installs uv (the Makefile's TOOLS); the Python host runs `uv sync` for a
# `toolchain: uv` project, so uv must be on the PATH the engine gets.
SETUP_UV = Path.home() / ".cache" / "lockstep" / "tools" / "bin" / "uv"


class EngineUnavailable(RuntimeError):
    """The Pulumi engine could not be found or built; the message is build.sh's one line."""


@dataclass(frozen=True)
class Engine:
    pulumi: Path  # the `pulumi` executable
    yaml_host: Path  # the `pulumi-language-yaml` executable
    python_host: Path  # the `pulumi-language-python` executable (its `-exec` shim beside it)

    @property
    def root(self) -> Path:
        """The directory above pulumi's bin/: auto.PulumiCommand(root=…) runs root/bin/pulumi."""
        return self.pulumi.parent.parent

    def path(self, rest: str | None = None) -> str:
        """PATH with the CLI's and the language hosts' directories first (the engine finds language
        hosts there), then `rest` (default: this process's PATH), then `make setup`'s uv when `rest`
        has none (the Python host runs uv). lockstep's own plugin is not on it: a program names it in its Pulumi.yaml (`plugins.providers`),
        or the user installs it (`make plugin`)."""
        dirs = dict.fromkeys(str(p.parent) for p in (self.pulumi, self.yaml_host, self.python_host))
        rest = os.environ.get("PATH", "") if rest is None else rest
        parts = [*dirs, rest]
        if shutil.which("uv", path=rest) is None and SETUP_UV.exists():
            parts.append(str(SETUP_UV.parent))  # last: that directory also holds the tools venv's python
        return os.pathsep.join(parts)

    def env(self, backend: Path, passphrase: str = "lockstep") -> dict[str, str]:
        """The environment for an engine run on a local file backend at `backend` (a directory).

        Automatic plugin acquisition is off: a missing plugin fails at once by name instead of a
        download attempt from outside.
        """
        return {
            "PATH": self.path(),
            "PULUMI_BACKEND_URL": f"file://{backend}",
            "PULUMI_CONFIG_PASSPHRASE": passphrase,
            "PULUMI_SKIP_UPDATE_CHECK": "1",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        }


def _cache_dir() -> Path:
    return Path(os.environ.get("LOCKSTEP_ENGINE_CACHE", Path.home() / ".cache" / "lockstep" / "engine"))


@functools.cache
def _resolve() -> Engine | str:
    failed = _cache_dir() / "last-failure"
    if os.environ.get("LOCKSTEP_ENGINE_FAILED"):
        line = failed.read_text().strip() if failed.exists() else "lockstep engine: the build failed (see above)"
        return line
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return lines[-1] if lines else f"lockstep engine: {BUILD_SCRIPT} exited {proc.returncode}"
    pulumi, yaml_host, python_host = proc.stdout.splitlines()
    return Engine(Path(pulumi), Path(yaml_host), Path(python_host))


def engine() -> Engine:
    """The engine (built on first use, cached); raises EngineUnavailable with one line if it cannot be had."""
    found = _resolve()
    if isinstance(found, str):
        raise EngineUnavailable(found)
    return found


def pulumi_bin() -> Path:
    """The `pulumi` executable; raises EngineUnavailable with one line if it cannot be had."""
    return engine().pulumi
