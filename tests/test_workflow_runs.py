"""A release pipeline as a team runs it, under the real engine (issue 23), in one file backend:

1. the workflows run as written: the `run:` steps of deploy.yml's and preview.yml's jobs execute in
   a scratch checkout (a copy of this working tree; its `.venv` made by the jobs' own `make setup`)
   against a scratch embedded `dev` stack, the `pulumi/actions` steps replaced by the equivalent
   `pulumi` command (tests/workflow_runner.py): deploy, a PR's preview comment, the merge;
2. promotion: `staging` (promotedFrom dev) and `prod` (promotedFrom staging) with their
   StackReferences — an unverified pin fails `up` in one line before anything is registered,
   verified ones land, a rollback in prod is the flip; the policy pack runs on prod and refuses a
   rewritten version;
3. a failed check stops the deploy job at the step the workflow says: at `pulumi up` when the update
   changed what is live, at `lockstep check` when the data drifted with no config change.

The real CLI and Python language host run the checkout's Pulumi.yaml + __main__.py on a file
backend with a passphrase, as a user sets them; nothing puts components/ on PATH (Pulumi.yaml names
the plugin). Real OpenSearch and moto. The tests share the stacks and run in file order.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from lockstep import engine, runtime, services, stackfile, up
from lockstep.ops import clients, live_state
from tests.conftest import UNIQUE_NAMES, stack_values
from tests.workflow_runner import JobRun, Runner

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"  # a runner's PATH before any setup step
PASSPHRASE = "a-team-passphrase"
SIZE = 24
UP_STEP = "pulumi up"
CHECK_STEP = "Consistency check (fails the job unless consistent)"
CHANGES = ("create", "update", "replace", "delete")
CACHES = (".mypy_cache/", ".ruff_cache/", ".pytest_cache/")


def git(repo: Path, *args: str) -> str:
    identity = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True, env={**os.environ, **identity}
    ).stdout.strip()


class Checkout:
    """A scratch clone of this working tree on `main`, a file backend beside it, and a runner."""

    def __init__(self, path: Path, found: engine.Engine, home: Path):
        self.path, self.backend = path / "repo", path / "backend"
        self.backend.mkdir()
        # The machine's environment (certificates, package indexes) without this test run's own:
        # a runner has no lockstep, Pulumi or virtualenv settings until the job sets them.
        machine = {k: v for k, v in os.environ.items() if not k.startswith(("LOCKSTEP_", "PULUMI_", "VIRTUAL_ENV"))}
        self.env = {
            **machine,
            "PATH": SYSTEM_PATH,
            **services.environment(),  # what configure-aws-credentials provides, here the embedded servers
            "LOCKSTEP_HOME": str(home),
            "PULUMI_BACKEND_URL": f"file://{self.backend}",
            "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
            "PULUMI_HOME": str(path / "pulumi-home"),
            "PULUMI_SKIP_UPDATE_CHECK": "1",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        }
        self.engine = found
        self.prefixes: list[str] = []  # the stacks' index prefixes, whose indices go at the end
        self.dev = self.prod = ""  # the stacks the tests deployed, in order
        files = git(ROOT, "ls-files", "-co", "--exclude-standard", "-z").split("\0")
        for name in (f for f in files if f and not f.startswith(CACHES)):
            source = ROOT / name
            if source.is_file():
                (self.path / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, self.path / name)
        git(self.path, "init", "-q", "-b", "main")
        self.runner = Runner(self.path, self.env, found.pulumi.parent, {"base_ref": "main"})

    def pulumi(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """The CLI as the user runs it in the checkout (the engine's directory and uv on PATH)."""
        env = {**self.env, "PATH": self.engine.path(SYSTEM_PATH)}
        proc = subprocess.run(
            [str(self.engine.pulumi), *args, "--non-interactive"],
            cwd=self.path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert not check or proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    def up(self, stack: str, *extra: str) -> dict[str, str]:
        """`pulumi up --json` in the checkout; the resources it changed, by name and operation."""
        proc = self.pulumi("up", "--stack", stack, "--yes", "--skip-preview", "--json", *extra)
        changed = {}
        for line in proc.stdout.splitlines():
            pre = json.loads(line).get("resourcePreEvent") if line.startswith("{") else None
            if pre and pre["metadata"]["op"] in CHANGES:
                changed[pre["metadata"]["urn"].rsplit("::", 1)[-1]] = pre["metadata"]["op"]
        return changed

    def outputs(self, stack: str) -> dict:
        return json.loads(self.pulumi("stack", "output", "--stack", stack, "--json").stdout)

    def resources(self, stack: str) -> list[dict]:
        return json.loads(self.pulumi("stack", "export", "--stack", stack).stdout)["deployment"].get("resources") or []

    def add_stack(self, name: str, **values) -> None:
        """A stack file under stacks/ and the stack in the backend (`pulumi stack init` adds its salt)."""
        stackfile.write_stack(self.path / "stacks", name, values)
        self.pulumi("stack", "init", name)

    def commit(self, message: str) -> None:
        git(self.path, "add", "-A")
        git(self.path, "commit", "-q", "-m", message)

    def edit(self, stack: str, *replacements: tuple[str, str]) -> None:
        """Text edits of a stack file (keeping what `stack init` wrote there)."""
        path = self.path / "stacks" / f"Pulumi.{stack}.yaml"
        text = path.read_text()
        for old, new in replacements:
            assert old in text, (old, text)
            text = text.replace(old, new)
        path.write_text(text)

    def set_pin(self, stack: str, version: str) -> None:
        stackfile.set_pin(stack, version, self.path / "stacks")

    def job(self, workflow: str, job: str, stack: str) -> JobRun:
        return self.runner.run_job(WORKFLOWS / workflow, job, {"stack": stack, "region": "us-east-1"})


@pytest.fixture(scope="module")
def checkout(tmp_path_factory, servers, the_engine):
    home = tmp_path_factory.mktemp("home")  # the slot processes these stacks start are this module's
    made = Checkout(tmp_path_factory.mktemp("workflows"), the_engine, home)
    yield made
    before = os.environ.get("LOCKSTEP_HOME")
    os.environ["LOCKSTEP_HOME"] = str(home)
    try:
        for slot in runtime.endpoint_processes():
            slot.stop()
    finally:
        os.environ.pop("LOCKSTEP_HOME") if before is None else os.environ.update(LOCKSTEP_HOME=before)
    for prefix in made.prefixes:
        clients.opensearch().indices.delete(
            index=f"{prefix}-*", params={"expand_wildcards": "all", "ignore_unavailable": "true"}
        )


def live_index(prefix: str) -> list[str]:
    return live_state.alias_targets(clients.opensearch(), prefix)


def relabel(opensearch, source: str, target: str, version: str) -> None:
    """`source`'s vectors written into `target` stamped `version`: stamps that look right, vectors of
    another model (what only the check's re-embedding probes can tell)."""
    hits = opensearch.search(index=source, body={"size": SIZE, "query": {"match_all": {}}})["hits"]["hits"]
    for hit in hits:
        opensearch.index(index=target, id=hit["_id"], body={**hit["_source"], "model_version": version})
    opensearch.indices.refresh(index=target)


def stage(checkout: Checkout, name: str, source: str | None = None, **values) -> str:
    """A stack `<name>-<prefix>` with its own index prefix, buckets and pointer (stack_values)."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    UNIQUE_NAMES.add(prefix)
    checkout.prefixes.append(prefix)
    stack = f"{name}-{prefix}"
    promoted = {"promotedFrom": source} if source else {}
    checkout.add_stack(stack, **stack_values(prefix, corpus={"size": SIZE}, **promoted, **values))
    return stack


def prefix_of(stack: str) -> str:
    return stack.split("-", 1)[1]


def test_deploy_preview_and_merge_run_as_the_workflows_say(checkout):
    dev = checkout.dev = stage(checkout, "dev")
    checkout.commit("the dev stack, on main")

    first = checkout.job("deploy.yml", "deploy", dev)
    assert first.failed_at is None, first.log()
    assert "make setup" in first.step("Set up Python deps + uv").output
    assert (checkout.path / ".venv" / "bin" / "lockstep").exists(), "the job's own setup made the checkout's venv"
    assert live_index(prefix_of(dev)) == [f"{prefix_of(dev)}-v1"]

    # A pull request flips the pin: the preview job comments both halves and whether they agree.
    git(checkout.path, "update-ref", "refs/remotes/origin/main", "HEAD")
    git(checkout.path, "checkout", "-q", "-b", "flip")
    checkout.set_pin(dev, "v2")
    checkout.commit("pin v2")
    preview = checkout.job("preview.yml", "preview", dev)
    assert preview.failed_at is None, preview.log()
    assert "Policy Packs run" in preview.step("pulumi preview").output, "the policy pack ran"
    comment = preview.comments[f"lockstep-plan-{dev}"]
    lines = comment.splitlines()
    assert lines[0] == f"### lockstep plan — stack `{dev}`: `v1` → `v2`"
    assert lines[2].startswith("✅ **They agree**: a flip"), comment
    assert "| index | **reattach** |" in comment and "| endpoints | **flip** |" in comment
    engine_rows = [line for line in lines if line.startswith("| `lockstep-")]
    assert sorted(row.split(" | ")[0] for row in engine_rows) == ["| `lockstep-check`", "| `lockstep-cutover`"], comment
    assert live_index(prefix_of(dev)) == [f"{prefix_of(dev)}-v1"], "a preview changes nothing"

    # Merged: the deploy job flips, the check passes; dev has verified v1 and v2.
    git(checkout.path, "checkout", "-q", "main")
    git(checkout.path, "merge", "-q", "--ff-only", "flip")
    merged = checkout.job("deploy.yml", "deploy", dev)
    assert merged.failed_at is None, merged.log()
    assert live_index(prefix_of(dev)) == [f"{prefix_of(dev)}-v2"]
    assert checkout.outputs(dev)["verifiedVersions"] == ["v1", "v2"]


def test_promotion_dev_to_staging_to_prod_refuses_what_was_not_verified_and_rolls_back_by_a_flip(checkout):
    dev = checkout.dev
    assert dev, "needs the dev stack the workflow test deployed"
    staging = stage(checkout, "staging", dev, pin="v3", slots={"blue": "v1", "green": "v3"})
    refused = checkout.pulumi("up", "--stack", staging, "--yes", "--skip-preview", check=False)
    assert refused.returncode != 0
    lines = [line for line in up.error_lines(refused.stdout + refused.stderr) if "lockstep" in line]
    assert lines == [
        f"lockstep:pin: v3 is not verified in {dev} (verified there: v1, v2) and runs in none of {staging}'s "
        f"slots; deploy and check it in {dev}, then `lockstep promote --from {dev} --to {staging}`"
    ], refused.stdout
    assert [r["type"] for r in checkout.resources(staging) if not r["type"].startswith("pulumi:")] == []
    assert live_index(prefix_of(staging)) == [], "no index, no alias"

    # Versions dev verified land; staging runs v1, then v2, so both are verified there.
    checkout.edit(staging, ("pin: v3", "pin: v1"), ("green: v3", "green: v2"))
    checkout.up(staging)
    checkout.set_pin(staging, "v2")
    assert checkout.up(staging) == {"lockstep-cutover": "update", "lockstep-check": "update"}
    assert checkout.outputs(staging)["verifiedVersions"] == ["v1", "v2"]
    references = [r for r in checkout.resources(staging) if r["type"] == "pulumi:pulumi:StackReference"]
    assert [r["inputs"]["name"] for r in references] == [f"organization/lockstep/{dev}"]

    # prod (a prod-* name: the policy pack's rules apply) lands v2 with v1 warm; the rollback is the flip.
    prod = stage(checkout, "prod", staging, pin="v2", slots={"blue": "v1", "green": "v2"})
    checkout.up(prod, "--policy-pack", "policy")
    assert live_index(prefix_of(prod)) == [f"{prefix_of(prod)}-v2"]
    checkout.set_pin(prod, "v1")
    assert checkout.up(prod, "--policy-pack", "policy") == {"lockstep-cutover": "update", "lockstep-check": "update"}
    assert live_index(prefix_of(prod)) == [f"{prefix_of(prod)}-v1"]
    assert json.loads(checkout.outputs(prod)["checkRecord"])["passed"] is True
    checkout.prod = prod


def test_the_policy_pack_refuses_a_rewritten_version_in_prod(checkout, tmp_path):
    """`--policy-pack policy` on prod, the catalog edited to point released v2 at another artifact:
    the engine refuses with the policy's message. The pack compares against the approved catalog
    (its `stacksDir` setting)."""
    prod = checkout.prod
    assert prod, "needs the prod stack the promotion test deployed"
    approved = tmp_path / "approved"
    approved.mkdir()
    catalog = checkout.path / "stacks" / "catalog.yaml"
    shutil.copy(catalog, approved / "catalog.yaml")
    settings = tmp_path / "policy-config.json"
    settings.write_text(json.dumps({"lockstep-index-pinned-version": {"stacksDir": str(approved)}}))
    original = catalog.read_text()
    sha = YAML(typ="safe").load(original)["versions"]["v2"]["artifactSha256"]
    catalog.write_text(original.replace(sha, "f" * 64))
    try:
        refused = checkout.pulumi(
            "preview", "--stack", prod, "--policy-pack", "policy", "--policy-pack-config", str(settings), check=False
        )
    finally:
        catalog.write_text(original)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0, output
    assert "lockstep-index-pinned-version" in output and "a version is immutable" in output, output


def test_a_failed_check_stops_the_deploy_job_at_the_pulumi_up_step(checkout, opensearch):
    """A rollback onto a standby whose vectors are another model's (stamps untouched): the Check
    resource fails the update, so the job stops at `pulumi up`; the check step never runs."""
    dev = checkout.dev
    assert dev, "needs the dev stack the workflow test deployed"
    prefix = prefix_of(dev)
    relabel(opensearch, f"{prefix}-v2", f"{prefix}-v1", "v1")
    checkout.set_pin(dev, "v1")
    checkout.commit("back to v1")
    failed = checkout.job("deploy.yml", "deploy", dev)
    assert failed.failed_at == UP_STEP, failed.log()
    assert "reembed-probe" in failed.step(UP_STEP).output
    assert failed.step(CHECK_STEP).outcome == "skipped"


def test_data_drift_with_no_config_change_fails_the_deploy_job_at_the_check_step(checkout, opensearch):
    """prod's live index gets another model's vectors (stamps untouched) and nothing in the config
    changes: `pulumi up` is a no-op and passes, the `lockstep check` step fails the job."""
    prod = checkout.prod
    assert prod, "needs the prod stack the promotion test deployed"
    prefix = prefix_of(prod)
    assert live_index(prefix) == [f"{prefix}-v1"]
    relabel(opensearch, f"{prefix}-v2", f"{prefix}-v1", "v1")
    drifted = checkout.job("deploy.yml", "deploy", prod)
    assert drifted.failed_at == CHECK_STEP, drifted.log()
    summary = drifted.step(UP_STEP).output.rsplit("Resources:", 1)[-1]
    assert re.search(r"\d+ unchanged", summary) and not re.search(r"\d+ (created|updated|replaced|deleted)", summary), (
        drifted.log()
    )
    assert "reembed-probe" in drifted.step(CHECK_STEP).output
