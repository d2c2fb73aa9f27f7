"""The GitHub workflows: they parse, they call only commands and options the CLI has, they name
every secret they read in their header, and the stack-selection script picks the right stacks
when run on real git history.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from ruamel.yaml import YAML

from lockstep.cli import cli

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
FILES = sorted(WORKFLOWS.glob("*.yml"))
# The workflows put .venv/bin on PATH (GITHUB_PATH); scripts run here get the same.
VENV_BIN = str(Path(sys.executable).parent)
AWS_STACKS = ["dev", "prod", "staging"]  # stacks/Pulumi.*.yaml with endpoints.backend: sagemaker

# `lockstep <words…>` up to a pipe, redirect, `;`, `&&` or the end of the line.
LOCKSTEP_CALL = re.compile(r"(?:^|[\s;&|(])(?:[\w./$~-]*/)?lockstep[ \t]+(?P<rest>[^|;&><\n]*)")
OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")
DOCUMENTED_SECRET = re.compile(r"^#\s+secrets\.([A-Za-z_][A-Za-z0-9_]*)\b", re.M)
SECRET_USE = re.compile(r"secrets\.([A-Za-z_][A-Za-z0-9_]*)")


def load(path: Path) -> dict:
    return YAML(typ="safe").load(path.read_text())


def steps(workflow: dict):
    for name, job in workflow.get("jobs", {}).items():
        for step in job.get("steps", []):
            yield name, job, step


def run_scripts(workflow: dict) -> list[str]:
    return [step["run"] for _, _, step in steps(workflow) if "run" in step]


def uses(workflow: dict, action: str) -> list[dict]:
    return [step for _, _, step in steps(workflow) if str(step.get("uses", "")).startswith(action)]


# ------------------------------------------------------------------------------ lockstep calls


def logical_lines(script: str) -> list[str]:
    """Lines with `\\` continuations joined and `#` comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", script)
    return [re.sub(r"(^|\s)#.*$", "", line) for line in joined.splitlines()]


def lockstep_calls(script: str) -> list[str]:
    """The argument text of every `lockstep …` invocation in a shell script."""
    return [m["rest"].strip() for line in logical_lines(script) for m in LOCKSTEP_CALL.finditer(line)]


def resolve(words: list[str]) -> tuple[click.Command, list[str]]:
    """The click command the words name (through groups), and its path."""
    command: click.Command = cli
    path: list[str] = []
    while isinstance(command, click.Group):
        assert words, f"`lockstep {' '.join(path)}` names no subcommand"
        name = words.pop(0)
        assert name in command.commands, (
            f"`lockstep {' '.join(path + [name])}`: no such command (have {sorted(command.commands)})"
        )
        command = command.commands[name]
        path.append(name)
    return command, path


def check_call(rest: str) -> str:
    """Assert one invocation uses an existing command, known options and every required option."""
    words = rest.split()
    command, path = resolve(words)
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)} | {"--help", "-h"}
    given = set(OPTION.findall(rest))
    unknown = given - known
    assert not unknown, (
        f"`lockstep {rest}`: {sorted(unknown)} not options of `lockstep {' '.join(path)}` ({sorted(known)})"
    )
    for param in command.params:
        if isinstance(param, click.Option) and param.required:
            assert given & set(param.opts), f"`lockstep {rest}`: misses required {param.opts[0]}"
    return " ".join(path)


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+):(?!=)", (ROOT / "Makefile").read_text(), re.M))


# ------------------------------------------------------------------------------ every workflow


def test_the_four_workflows_exist():
    assert {p.name for p in FILES} == {"changed-stacks.yml", "preview.yml", "deploy.yml", "promote.yml"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_each_workflow_parses_and_grants_least_privilege(path):
    workflow = load(path)
    assert workflow["on"], "no trigger"
    assert workflow["permissions"] == {"contents": "read"}, "the default for every job is read-only"
    for name, job in workflow["jobs"].items():
        permissions = job.get("permissions", workflow["permissions"])
        assert permissions not in ("write-all", "read-all") and isinstance(permissions, dict), name
        assert set(permissions.values()) <= {"read", "write"}, name
        uses_oidc = any(
            str(s.get("uses", "")).startswith("aws-actions/configure-aws-credentials@") for s in job.get("steps", [])
        )
        assert (permissions.get("id-token") == "write") is uses_oidc, (
            f"{name}: id-token: write exactly where AWS OIDC is used"
        )


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_each_lockstep_call_names_a_real_command_and_options(path):
    calls = [call for script in run_scripts(load(path)) for call in lockstep_calls(script)]
    for call in calls:
        check_call(call)


def test_the_workflows_call_the_commands_they_are_for():
    called = {
        name: {check_call(c) for s in run_scripts(load(WORKFLOWS / name)) for c in lockstep_calls(s)}
        for name in ("preview.yml", "deploy.yml", "promote.yml")
    }
    assert {"plan", "validate"} <= called["preview.yml"]
    assert {"check", "validate"} <= called["deploy.yml"]
    assert called["promote.yml"] == {"promote"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_each_make_target_exists(path):
    targets = makefile_targets()
    assert "setup" in targets
    for script in run_scripts(load(path)):
        for line in logical_lines(script):
            for target in re.findall(r"(?:^|[\s;&])make\s+([\w.-]+)", line):
                assert target in targets, f"{path.name}: `make {target}` is not a Makefile target"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_the_header_lists_exactly_the_secrets_read(path):
    text = path.read_text()
    header = text.split("\nname:", 1)[0]
    body = text[len(header) :]
    documented = set(DOCUMENTED_SECRET.findall(header))
    assert documented == set(SECRET_USE.findall(body)), path.name
    assert "Secrets this workflow reads" in header


def test_the_checker_catches_what_it_should():
    """The helpers above fail on a wrong command, an unknown option or a missing required one."""
    assert lockstep_calls('x=1; .venv/bin/lockstep plan --stack "$S" --format md > plan.md') == [
        'plan --stack "$S" --format md'
    ]
    assert lockstep_calls("echo $HOME/.cache/lockstep/tools") == []
    for bad in ("deploy --stack x", "plan --stack x --fromat md", "check --json", "services restart"):
        with pytest.raises(AssertionError):
            check_call(bad)
    assert check_call('promote --from a --to b ${VERSION:+--version "$VERSION"} --format json') == "promote"


# ------------------------------------------------------------------------------ what each one does


def test_preview_comments_the_pulumi_preview_and_a_sticky_plan_per_changed_stack():
    workflow = load(WORKFLOWS / "preview.yml")
    assert workflow["on"]["pull_request"]["paths"] == ["stacks/**"]
    assert workflow["jobs"]["changes"]["uses"] == "./.github/workflows/changed-stacks.yml"
    job = workflow["jobs"]["preview"]
    assert job["strategy"]["matrix"]["include"] == "${{ fromJSON(needs.changes.outputs.matrix) }}"
    assert job["permissions"] == {"contents": "read", "id-token": "write", "pull-requests": "write"}
    names = [s.get("uses", s.get("run", "")) for s in job["steps"]]
    assert any("make setup" in n for n in names)

    (preview,) = uses(workflow, "pulumi/actions@v6")
    assert preview["with"]["command"] == "preview"
    assert preview["with"]["stack-name"] == "${{ matrix.stack }}"
    assert preview["with"]["comment-on-pr"] is True
    assert preview["with"]["policyPacks"] == "policy" and (ROOT / "policy" / "PulumiPolicy.yaml").exists()

    plan = next(s for s in job["steps"] if "lockstep plan" in s.get("run", ""))
    assert plan["run"].strip() == (
        'lockstep plan --stack "$STACK" --base "origin/$BASE_REF" --engine-preview engine-preview.json --format md > plan.md'
    )
    engine_diff = next(s for s in job["steps"] if "--json" in s.get("run", ""))
    assert engine_diff["run"].strip() == 'pulumi preview --stack "$STACK" --json > engine-preview.json'
    assert engine_diff["if"] == plan["if"] == "success() || failure()"
    assert job["env"]["BASE_REF"] == "${{ github.base_ref }}" and job["env"]["STACK"] == "${{ matrix.stack }}"
    (sticky,) = uses(workflow, "marocchino/sticky-pull-request-comment@v2")
    assert sticky["with"]["header"] == "lockstep-plan-${{ matrix.stack }}"
    assert sticky["with"]["path"] == "plan.md"
    assert job["steps"].index(preview) < job["steps"].index(engine_diff) < job["steps"].index(plan)
    assert job["steps"].index(plan) < job["steps"].index(sticky)
    (aws,) = uses(workflow, "aws-actions/configure-aws-credentials@v4")
    assert aws["with"]["role-to-assume"] == "${{ secrets.AWS_DEPLOY_ROLE_ARN }}"


def test_deploy_runs_pulumi_up_then_the_check_per_changed_stack():
    workflow = load(WORKFLOWS / "deploy.yml")
    assert workflow["on"]["push"] == {"branches": ["main"], "paths": ["stacks/**"]}
    assert workflow["jobs"]["changes"]["with"]["base"] == "${{ github.event.before }}"
    job = workflow["jobs"]["deploy"]
    assert job["concurrency"] == {"group": "deploy-${{ matrix.stack }}", "cancel-in-progress": False}
    (up,) = uses(workflow, "pulumi/actions@v6")
    assert up["with"]["command"] == "up" and up["with"]["stack-name"] == "${{ matrix.stack }}"
    check = job["steps"][-1]
    assert check["run"].strip() == 'lockstep check --stack "$STACK"'
    assert "continue-on-error" not in check and "||" not in check["run"], "a failed check must fail the job"
    assert job["steps"].index(up) < job["steps"].index(check)


def test_promote_opens_a_pr_with_the_title_and_body_the_command_prints():
    workflow = load(WORKFLOWS / "promote.yml")
    inputs = workflow["on"]["workflow_dispatch"]["inputs"]
    assert (inputs["from"]["required"], inputs["to"]["required"], inputs["version"]["required"]) == (True, True, False)
    job = workflow["jobs"]["promote"]
    assert job["permissions"] == {"contents": "write", "pull-requests": "write", "id-token": "write"}
    step = next(s for s in job["steps"] if s.get("id") == "promote")
    assert "--format json > promotion.json" in step["run"]
    (pr,) = uses(workflow, "peter-evans/create-pull-request@v7")
    assert pr["with"]["title"] == "${{ steps.promote.outputs.title }}"
    assert pr["with"]["body-path"] == "pr-body.md"
    assert pr["with"]["add-paths"] == "stacks/Pulumi.${{ inputs.to }}.yaml"


def test_promote_turns_the_json_into_title_and_body_files(tmp_path):
    """The promote step's script, run with a stand-in `lockstep` printing the command's JSON shape."""
    import json

    step = next(s for s in load(WORKFLOWS / "promote.yml")["jobs"]["promote"]["steps"] if s.get("id") == "promote")
    fake = tmp_path / "bin" / "lockstep"
    fake.parent.mkdir()
    payload = {
        "title": "Promote v2 from staging to prod",
        "body": "line one\n\n| a | b |",
        "version": "v2",
        "from": "staging",
        "to": "prod",
        "file": "stacks/Pulumi.prod.yaml",
    }
    fake.write_text(f"#!/bin/sh\necho \"$@\" > args.txt\ncat <<'JSON'\n{json.dumps(payload)}\nJSON\n")
    fake.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{fake.parent}:{os.environ['PATH']}",
        "GITHUB_OUTPUT": str(tmp_path / "out"),
        "FROM": "staging",
        "TO": "prod",
        "VERSION": "",
    }
    subprocess.run(["bash", "-euo", "pipefail", "-c", step["run"]], cwd=tmp_path, env=env, check=True)
    assert (tmp_path / "args.txt").read_text().split() == [
        "promote",
        "--from",
        "staging",
        "--to",
        "prod",
        "--format",
        "json",
    ]
    assert (tmp_path / "pr-body.md").read_text() == payload["body"] + "\n"
    assert (tmp_path / "out").read_text().splitlines() == [f"title={payload['title']}", "version=v2"]

    env["VERSION"] = "v2"
    subprocess.run(["bash", "-euo", "pipefail", "-c", step["run"]], cwd=tmp_path, env=env, check=True)
    assert "--version v2" in (tmp_path / "args.txt").read_text()


# ------------------------------------------------------------------------------ stack selection, on real git


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t",
        },
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    """A git repo holding a copy of stacks/, one commit deep; returns it with the base sha."""
    shutil.copytree(ROOT / "stacks", tmp_path / "stacks")
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "base")
    return tmp_path


def selected(repo: Path, base: str) -> list[dict]:
    import json

    script = next(s["run"] for _, _, s in steps(load(WORKFLOWS / "changed-stacks.yml")) if s.get("id") == "diff")
    output = repo / "github_output"
    output.write_text("")
    subprocess.run(
        ["bash", "-c", script],
        cwd=repo,
        check=True,
        capture_output=True,
        env={**os.environ, "BASE": base, "GITHUB_OUTPUT": str(output)},
    )
    (line,) = output.read_text().splitlines()
    key, _, value = line.partition("=")
    assert key == "matrix"
    return json.loads(value)


def commit_change(repo: Path, path: str, edit) -> None:
    file = repo / path
    edit(file)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"change {path}")


def test_a_changed_prod_file_selects_prod_with_its_region(repo):
    base = git(repo, "rev-parse", "HEAD")
    commit_change(
        repo,
        "stacks/Pulumi.prod.yaml",
        lambda f: f.write_text(f.read_text().replace("lockstep:pin: v1", "lockstep:pin: v2")),
    )
    assert selected(repo, base) == [{"stack": "prod", "region": "eu-west-1"}]


def test_an_embedded_stack_is_never_selected(repo):
    base = git(repo, "rev-parse", "HEAD")
    commit_change(repo, "stacks/Pulumi.local.yaml", lambda f: f.write_text(f.read_text() + "# touched\n"))
    assert selected(repo, base) == []


def test_a_catalog_change_selects_every_aws_stack(repo):
    base = git(repo, "rev-parse", "HEAD")
    commit_change(repo, "stacks/catalog.yaml", lambda f: f.write_text(f.read_text() + "# touched\n"))
    assert [m["stack"] for m in selected(repo, base)] == AWS_STACKS


@pytest.mark.parametrize("base", ["", "0" * 40, "origin/no-such-branch"])
def test_without_a_usable_base_every_aws_stack_is_selected(repo, base):
    assert [m["stack"] for m in selected(repo, base)] == AWS_STACKS


def test_a_deleted_stack_is_not_deployed(repo):
    base = git(repo, "rev-parse", "HEAD")
    commit_change(repo, "stacks/Pulumi.dev.yaml", lambda f: f.unlink())
    assert selected(repo, base) == []


def test_the_base_is_the_merge_base_so_main_moving_on_does_not_add_stacks(repo):
    """A PR's diff is base...HEAD: a later change to staging on main is not the PR's change."""
    git(repo, "checkout", "-q", "-b", "feature")
    commit_change(repo, "stacks/Pulumi.prod.yaml", lambda f: f.write_text(f.read_text() + "# pr\n"))
    git(repo, "checkout", "-q", "main")
    commit_change(repo, "stacks/Pulumi.staging.yaml", lambda f: f.write_text(f.read_text() + "# main\n"))
    git(repo, "checkout", "-q", "feature")
    assert [m["stack"] for m in selected(repo, "main")] == ["prod"]


# ------------------------------------------------------------------------------ the plan step, for real


def test_the_preview_plan_step_renders_markdown_against_a_base_ref(servers, unique, tmp_path):
    """The exact `run:` of the plan step, on a scratch embedded stack whose pin the PR moves."""
    (step,) = [s for s in load(WORKFLOWS / "preview.yml")["jobs"]["preview"]["steps"] if s.get("id") == "plan"]
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    shutil.copy(ROOT / "stacks" / "catalog.yaml", stacks / "catalog.yaml")
    stack_file = stacks / f"Pulumi.{unique}.yaml"
    stack_file.write_text(
        "config:\n  lockstep:pin: v1\n  lockstep:slots:\n    blue: v1\n    green: v2\n"
        f"  lockstep:artifacts:\n    bucket: {unique}-artifacts\n  lockstep:corpus:\n    bucket: {unique}-corpus\n    size: 20\n"
        f"  lockstep:opensearch:\n    indexPrefix: {unique}\n  lockstep:endpoints:\n    backend: local\n"
        f"  lockstep:pointerParameter: /{unique}/live\n"
    )
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "base")
    git(tmp_path, "update-ref", "refs/remotes/origin/main", "HEAD")
    stack_file.write_text(stack_file.read_text().replace("lockstep:pin: v1", "lockstep:pin: v2"))
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "STACK": unique,
        "BASE_REF": "main",
        "LOCKSTEP_STACKS_DIR": str(stacks),
    }
    (tmp_path / "engine-preview.json").write_text("")  # the engine's step wrote nothing: "not compared"
    result = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", step["run"]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    plan = (tmp_path / "plan.md").read_text()
    assert plan.startswith(f"### lockstep plan — stack `{unique}`")
    assert "`v2`" in plan and "| index |" in plan
    assert "**Not compared**" in plan.splitlines()[2]
