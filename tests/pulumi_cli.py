"""The user's path, for tests: the `pulumi` CLI as a subprocess on the repository's own `Pulumi.yaml`
+ `__main__.py`, through Pulumi's Python language host, as a team runs it.

The environment is what a user sets: a file backend URL, a passphrase, the CLI's and the language
hosts' directories and uv's on PATH (plus the system's), nothing of lockstep's — the repository's
`Pulumi.yaml` names the plugin (`plugins.providers`). The stack's config is a file of the test's own
(`--config-file`), so nothing is written under stacks/.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml
from pulumi.automation import events

from lockstep import config, engine, up

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
PASSPHRASE = "a-team-passphrase"


class CliFailed(AssertionError):
    """`pulumi` exited non-zero; `lines` are its `error:` lines (as lockstep up reports them)."""

    def __init__(self, args: list[str], proc: subprocess.CompletedProcess):
        self.proc = proc
        self.lines = up.error_lines(proc.stdout + proc.stderr)
        super().__init__(f"pulumi {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")


class UserStack:
    """One stack of the repository's project on a file backend in `directory`."""

    def __init__(self, found: engine.Engine, name: str, directory: Path):
        self.pulumi, self.name, self.dir = str(found.pulumi), name, directory
        self.config_file = directory / f"Pulumi.{name}.yaml"
        self.backend = directory / "backend"
        self.backend.mkdir(parents=True, exist_ok=True)
        self.env = os.environ | {
            "PATH": found.path(SYSTEM_PATH),
            "PULUMI_BACKEND_URL": f"file://{self.backend}",
            "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
            "PULUMI_HOME": str(directory / "pulumi-home"),
            "PULUMI_SKIP_UPDATE_CHECK": "1",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        }
        self.output: list[str] = []
        self._events = 0

    @property
    def config(self) -> list[str]:
        """The flag that points a command at this stack's config file."""
        return ["--config-file", str(self.config_file)]

    def write_config(self, values: dict) -> None:
        """The stack's config file (what a user keeps as stacks/Pulumi.<stack>.yaml) with these
        `lockstep:` values; what the CLI wrote there (the passphrase's salt, secrets) is kept."""
        existing = self.config_file.read_text() if self.config_file.exists() else ""
        document = yaml.safe_load(existing) or {}
        kept = {k: v for k, v in (document.get("config") or {}).items() if isinstance(v, dict) and "secure" in v}
        values = {(k if ":" in k else f"{config.PROJECT}:{k}"): v for k, v in values.items()}
        document["config"] = values | kept
        self.config_file.write_text(yaml.safe_dump(document, sort_keys=False))

    def run(self, *args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        argv = [*args, "--stack", self.name, "--non-interactive", "--color", "never"]
        env = self.env | (env or {})
        proc = subprocess.run([self.pulumi, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        self.output.append(proc.stdout + proc.stderr)
        if check and proc.returncode != 0:
            raise CliFailed(argv, proc)
        return proc

    def init(self, values: dict) -> None:
        """`pulumi stack init`, then the stack's config. The CLI keeps the passphrase's salt in the
        project's stacks/Pulumi.<stack>.yaml; it moves into this stack's own file (nothing is left
        under stacks/)."""
        written = ROOT / "stacks" / self.config_file.name
        assert not written.exists(), f"{written} exists: pick another stack name"
        try:
            self.run("stack", "init")
        finally:
            if written.exists():
                written.replace(self.config_file)
        self.write_config(values)

    def operation(self, *args: str) -> tuple[up.Steps, subprocess.CompletedProcess]:
        """`pulumi <args>` with an event log; the engine's steps as lockstep up reads them."""
        self._events += 1
        log = self.dir / f"events-{self._events}.jsonl"
        proc = self.run(*args, *self.config, "--event-log", str(log), env=up.EVENT_LOG_ENV)
        steps = up.Steps()
        for line in log.read_text().splitlines():
            steps.on_event(events.EngineEvent.from_json(json.loads(line)))
        return steps, proc

    def up(self, *extra: str) -> up.Steps:
        return self.operation("up", "--yes", "--skip-preview", *extra)[0]

    def preview(self, *extra: str) -> up.Steps:
        return self.operation("preview", "--diff", *extra)[0]

    def refresh(self) -> subprocess.CompletedProcess:
        return self.operation("refresh", "--yes", "--skip-preview")[1]

    def destroy(self) -> subprocess.CompletedProcess:
        return self.operation("destroy", "--yes", "--skip-preview")[1]

    def outputs(self) -> dict:
        return json.loads(self.run("stack", "output", "--json", "--show-secrets").stdout)

    def resources(self) -> list[dict]:
        return json.loads(self.run("stack", "export").stdout)["deployment"]["resources"]

    def state_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.backend.rglob("*.json") if p.is_file())
