"""A job of a GitHub workflow, run here step by step as a runner would run it.

`run:` steps run as written (`bash -e`, GitHub's default shell) with the job's env, `GITHUB_PATH`
and `GITHUB_OUTPUT` honoured and `${{ … }}` expressions resolved from the matrix, the github and
steps contexts; `if:` conditions are evaluated (success(), failure(), always(), steps.<id>.outcome).
`uses:` steps are stood in for by what they do here:

- `pulumi/actions` runs the equivalent CLI command (`pulumi <command> --stack … [--policy-pack …]
  [--diff]`, `up` with `--yes --skip-preview`) with the engine's directory on PATH (the action
  installs the CLI there); without a command it only installs;
- `marocchino/sticky-pull-request-comment` records the file it would post;
- checkout, setup-python, cache and configure-aws-credentials are provided by the harness (a
  scratch checkout, this machine's Python, the embedded servers' credentials in the env).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

PROVIDED = ("actions/checkout@", "actions/setup-python@", "actions/cache@", "aws-actions/configure-aws-credentials@")
EXPRESSION = re.compile(r"\$\{\{\s*(.+?)\s*\}\}")
CONTEXT_PATH = re.compile(r"(?<![\w'.])([A-Za-z_][\w-]*(?:\.[\w-]+)+)")


@dataclass
class StepRun:
    name: str
    outcome: str  # success, failure, skipped
    output: str = ""
    seconds: float = 0.0


@dataclass
class JobRun:
    steps: list[StepRun] = field(default_factory=list)
    comments: dict[str, str] = field(default_factory=dict)  # sticky header -> body

    @property
    def failed_at(self) -> str | None:
        """The name of the first step that failed (the one GitHub marks red), or None."""
        return next((step.name for step in self.steps if step.outcome == "failure"), None)

    def step(self, name: str) -> StepRun:
        return next(step for step in self.steps if step.name == name)

    def log(self) -> str:
        return "\n".join(f"--- {s.name}: {s.outcome} ({s.seconds:.0f}s)\n{s.output}" for s in self.steps)


def load(path: Path) -> dict:
    return YAML(typ="safe").load(path.read_text())


def step_name(step: dict) -> str:
    return str(step.get("name") or step.get("uses") or step.get("run", "").strip().splitlines()[0])


class Runner:
    """Runs jobs in `checkout` with `env` (the runner's environment, PATH included)."""

    def __init__(self, checkout: Path, env: dict[str, str], pulumi_dir: Path, github: dict[str, Any]):
        self.checkout, self.base_env, self.pulumi_dir, self.github = checkout, env, pulumi_dir, github

    def run_job(self, workflow: Path, job_name: str, matrix: dict[str, str], timeout: float = 900) -> JobRun:
        document = load(workflow)
        job = document["jobs"][job_name]
        github_path = self.checkout / ".github-path"
        github_path.write_text("")
        extra_path: list[str] = []
        outcomes: dict[str, dict[str, Any]] = {}
        run = JobRun()
        context = {"matrix": matrix, "github": self.github, "steps": outcomes, "secrets": {}, "inputs": {}}
        env_of = {**document.get("env", {}), **job.get("env", {})}
        for step in job["steps"]:
            name = step_name(step)
            ok = run.failed_at is None
            if not self.condition(step.get("if"), ok, context):
                run.steps.append(StepRun(name, "skipped"))
                continue
            env = {
                **self.base_env,
                **{k: self.resolve(v, context) for k, v in {**env_of, **step.get("env", {})}.items()},
            }
            env["PATH"] = os.pathsep.join([*reversed(extra_path), env["PATH"]])
            output_file = self.checkout / ".github-output"
            output_file.write_text("")
            env.update(GITHUB_PATH=str(github_path), GITHUB_OUTPUT=str(output_file))
            result = self.run_step(step, env, context, run, extra_path, timeout)
            run.steps.append(result)
            extra_path += [line for line in github_path.read_text().splitlines() if line and line not in extra_path]
            github_path.write_text("")
            if "id" in step:
                outputs = dict(line.split("=", 1) for line in output_file.read_text().splitlines() if "=" in line)
                outcomes[step["id"]] = {"outcome": result.outcome, "conclusion": result.outcome, "outputs": outputs}
        return run

    # ------------------------------------------------------------------------------ one step

    def run_step(
        self, step: dict, env: dict, context: dict, run: JobRun, extra_path: list[str], timeout: float
    ) -> StepRun:
        name = step_name(step)
        uses = str(step.get("uses", ""))
        inputs = {k: self.resolve(v, context) for k, v in (step.get("with") or {}).items()}
        if "run" in step:
            return self.shell(name, ["bash", "-e", "-c", self.resolve(step["run"], context)], env, timeout)
        if uses.startswith(PROVIDED):
            return StepRun(name, "success", "(provided by the harness)")
        if uses.startswith("pulumi/actions@"):
            if str(self.pulumi_dir) not in extra_path:
                extra_path.append(str(self.pulumi_dir))  # the action installs the CLI on PATH
                env["PATH"] = os.pathsep.join([str(self.pulumi_dir), env["PATH"]])
            command = self.pulumi_command(inputs)
            if command is None:
                return StepRun(name, "success", "(the CLI is installed)")
            return self.shell(name, command, env, timeout)
        if uses.startswith("marocchino/sticky-pull-request-comment@"):
            body = (self.checkout / inputs["path"]).read_text()
            run.comments[inputs["header"]] = body
            return StepRun(name, "success", body)
        raise AssertionError(f"{name}: the harness has no stand-in for `{uses}`")

    @staticmethod
    def pulumi_command(inputs: dict[str, Any]) -> list[str] | None:
        """The CLI command pulumi/actions runs for these inputs (None: install only)."""
        command = inputs.get("command")
        if not command:
            return None
        argv = ["pulumi", command, "--stack", inputs["stack-name"], "--non-interactive", "--color", "never"]
        for pack in str(inputs.get("policyPacks") or "").split():
            argv += ["--policy-pack", pack]
        if str(inputs.get("diff")).lower() == "true":
            argv.append("--diff")
        if command == "up":
            argv += ["--yes", "--skip-preview"]
        return argv

    def shell(self, name: str, argv: list[str], env: dict, timeout: float) -> StepRun:
        started = time.monotonic()
        proc = subprocess.run(
            argv, cwd=self.checkout, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        output = f"$ {shlex.join(argv)}\n{proc.stdout}{proc.stderr}"
        return StepRun(name, "success" if proc.returncode == 0 else "failure", output, time.monotonic() - started)

    # ------------------------------------------------------------------------------ expressions

    @staticmethod
    def lookup(path: str, context: dict) -> Any:
        value: Any = context
        for part in path.split("."):
            value = value.get(part, "") if isinstance(value, dict) else ""
        return value

    def resolve(self, value: Any, context: dict) -> Any:
        """`${{ a.b || c.d }}` inside a string; other values as they are."""
        if not isinstance(value, str):
            return value

        def one(match: re.Match) -> str:
            for alternative in match.group(1).split("||"):
                found = self.lookup(alternative.strip(), context)
                if found:
                    return str(found)
            return ""

        return EXPRESSION.sub(one, value)

    def condition(self, expression: str | None, ok: bool, context: dict) -> bool:
        """A step's `if:` (the expressions these workflows use); no `if:` means success()."""
        if expression is None:
            return ok
        text = EXPRESSION.sub(lambda m: m.group(1), str(expression))
        text = text.replace("&&", " and ").replace("||", " or ")
        text = re.sub(r"!(?!=)", " not ", text)
        text = CONTEXT_PATH.sub(lambda m: repr(self.lookup(m.group(1), context)), text)
        functions = {"success": lambda: ok, "failure": lambda: not ok, "always": lambda: True}
        return bool(eval(text, {"__builtins__": {}}, functions))  # noqa: S307 - the workflows' own expressions
