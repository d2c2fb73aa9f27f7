"""Issue #9: the bad-input table. Each row is one bad input given to the CLI (in this process
through click's runner; five rows also as a real subprocess) on a scratch stack: one line on stderr naming the input and the fix, exit 2,
and nothing changed — the stack files byte for byte, no index under the stack's prefix, no
artifact bucket or object, no live pointer.

The validation rules themselves are unit-tested in tests/test_config.py (each rule's message by
field) and a few CLI paths in tests/test_apply.py (unknown version for backfill, catalog sha256
≠ built artifact, missing corpus for `check`); this table runs every kind of bad input end to
end through the command a person would type, including the ones that need servers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from click.testing import CliRunner
from ruamel.yaml import YAML

from lockstep import cli, config, runtime, services
from lockstep.errors import UsageError
from lockstep.ops import clients, corpus
from tests.conftest import lockstep
from tests.faultproxy import FaultProxy, answer
from tests.test_plan_sagemaker import IMAGE


@dataclass
class Scratch:
    stacks: Path
    stack: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def stack_file(self) -> Path:
        return self.stacks / f"Pulumi.{self.stack}.yaml"

    def edit_stack(self, change: Callable[[dict], None]) -> None:
        edit(self.stack_file, lambda d: change(d["config"]))

    def upload_corpus(self, data: bytes) -> None:
        settings = config.load_stack(self.stack, self.stacks)
        s3 = clients.aws("s3")
        s3.create_bucket(Bucket=settings.corpus.bucket)
        s3.put_object(Bucket=settings.corpus.bucket, Key=settings.corpus.key, Body=data)


def edit(path: Path, change) -> None:
    yaml = YAML()
    data = yaml.load(path.read_text())
    change(data)
    with path.open("w") as handle:
        yaml.dump(data, handle)


def lines(*rows: dict) -> bytes:
    return corpus.to_jsonl(rows)


def closed_port_url() -> str:
    return f"http://127.0.0.1:{runtime.free_port()}"


# ------------------------------------------------------------------------------------ the table
# id: (setup(scratch) -> argv after `lockstep`, words the one line must hold)


def apply(s: Scratch) -> list[str]:
    return ["apply", "--stack", s.stack, "--quiet"]


def backfill(s: Scratch) -> list[str]:
    return ["backfill", "--stack", s.stack, "--version", "v1", "--quiet"]


def bad_stack(change) -> Callable[[Scratch], list[str]]:
    def setup(s: Scratch) -> list[str]:
        s.edit_stack(change)
        return apply(s)

    return setup


def bad_catalog(change) -> Callable[[Scratch], list[str]]:
    def setup(s: Scratch) -> list[str]:
        edit(s.stacks / "catalog.yaml", change)
        return apply(s)

    return setup


def bad_corpus(data: bytes, command) -> Callable[[Scratch], list[str]]:
    def setup(s: Scratch) -> list[str]:
        s.upload_corpus(data)
        return command(s)

    return setup


def unknown_pin_via_pin_command(s: Scratch) -> list[str]:
    return ["pin", "--stack", s.stack, "v9"]


def unknown_pin_in_the_file(c: dict) -> None:
    c["lockstep:pin"] = "v9"
    c["lockstep:slots"]["green"] = "v9"


def duplicate_version_key(s: Scratch) -> list[str]:
    path = s.stacks / "catalog.yaml"
    text = path.read_text()
    v1 = text[text.index("  v1:") : text.index("  v2:")]
    path.write_text(text + v1)  # `v1:` twice in the versions mapping
    return apply(s)


def catalog_sha_not_the_artifacts(s: Scratch) -> list[str]:
    path = s.stacks / "catalog.yaml"
    sha = config.load_catalog(s.stacks).get("v1").artifact_sha256
    path.write_text(path.read_text().replace(sha, "ab" * 32))
    return apply(s)


def catalog_dimension_not_the_models(command) -> Callable[[Scratch], list[str]]:
    """v1's entry claims 128 dimensions; its (sha256-correct) artifact produces 192."""

    def setup(s: Scratch) -> list[str]:
        edit(s.stacks / "catalog.yaml", lambda d: d["versions"]["v1"].__setitem__("dimension", 128))
        return command(s)

    return setup


def check_without_a_corpus_bucket(s: Scratch) -> list[str]:
    return ["check", "--stack", s.stack]


def unreachable_opensearch(command) -> Callable[[Scratch], list[str]]:
    def setup(s: Scratch) -> list[str]:
        s.env["OPENSEARCH_URL"] = closed_port_url()
        return command(s)

    return setup


def opensearch_refusing(status: int, command) -> Callable[[Scratch], list[str]]:
    def setup(s: Scratch) -> list[str]:
        s.env["OPENSEARCH_URL"] = "proxy:" + str(status)  # replaced by the test with a live proxy
        return command(s)

    return setup


def basic_auth_without_password(s: Scratch) -> list[str]:
    s.edit_stack(lambda c: c["lockstep:opensearch"].update(auth="basic", username="lockstep"))
    s.env["LOCKSTEP_OPENSEARCH_PASSWORD"] = ""
    return apply(s)


def aws_refusing_credentials(command) -> Callable[[Scratch], list[str]]:
    def setup(s: Scratch) -> list[str]:
        s.env.update(
            AWS_ENDPOINT_URL="moto-with-auth", AWS_ACCESS_KEY_ID="AKIABOGUSBOGUSBOGUS0", AWS_SECRET_ACCESS_KEY="bogus"
        )
        return command(s)

    return setup


def stack_file_text(text: bytes) -> Callable[[Scratch], list[str]]:
    def setup(s: Scratch) -> list[str]:
        s.stack_file.write_bytes(text)
        return apply(s)

    return setup


def version_outside_the_stack(s: Scratch) -> list[str]:
    return ["backfill", "--stack", s.stack, "--version", "v3", "--quiet"]


GOOD = {"id": "a", "text": "Return the lowest index in the list where the value is found."}
OTHER = {"id": "b", "text": "Open a file and return a stream; raise OSError upon failure."}


def aws_stack_with_a_missing_profile(s: Scratch) -> list[str]:
    """An AWS stack naming an aws:profile this machine does not have, planned against AWS itself."""

    def change(c: dict) -> None:
        c["lockstep:endpoints"] = {
            "backend": "sagemaker",
            "imageUri": IMAGE,
        }
        c["lockstep:opensearch"]["url"] = os.environ["OPENSEARCH_URL"]
        c["aws:profile"] = "lockstep-no-such-profile"

    s.edit_stack(change)
    s.env["AWS_ENDPOINT_URL"] = None  # type: ignore[assignment]  # CliRunner unsets it: real AWS, where profiles count
    return ["plan", "--stack", s.stack]


def aws_stack_without_credentials(s: Scratch, command: str = "plan") -> list[str]:
    """The AWS stack above, on a machine where boto3's chain finds no credentials at all."""
    aws_stack_with_a_missing_profile(s)
    s.edit_stack(lambda c: c.pop("aws:profile"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        s.env[name] = None  # type: ignore[assignment]
    s.env["AWS_SHARED_CREDENTIALS_FILE"] = s.env["AWS_CONFIG_FILE"] = str(s.stacks / "no-aws-config")
    s.env["AWS_EC2_METADATA_DISABLED"] = "true"
    return [command, "--stack", s.stack]


TABLE: dict[str, tuple[Callable[[Scratch], list[str]], tuple[str, ...]]] = {
    # versions, pins, slots, retain
    "unknown pin (lockstep pin)": (unknown_pin_via_pin_command, ("'v9'", "not in the catalog", "v1, v2, v3")),
    "unknown pin in the stack file": (bad_stack(unknown_pin_in_the_file), ("'v9'", "not in the catalog")),
    "pin in neither slot": (bad_stack(lambda c: c.__setitem__("lockstep:pin", "v3")), ("pin", "'v3'", "neither slot")),
    "both slots name one version": (
        bad_stack(lambda c: c["lockstep:slots"].__setitem__("green", "v1")),
        ("slots", "'v1'", "standby"),
    ),
    "retain names an unknown version": (
        bad_stack(lambda c: c.__setitem__("lockstep:retain", ["v7"])),
        ("retain", "'v7'", "not in the catalog"),
    ),
    "backfill of a version outside the stack": (version_outside_the_stack, ("v3", "pin, slots or retain")),
    # the catalog
    "catalog: sha256 not 64 hex": (
        bad_catalog(lambda d: d["versions"]["v1"].__setitem__("artifactSha256", "abc123")),
        ("catalog.yaml", "versions.v1.artifactSha256", "'abc123'", "64"),
    ),
    "catalog: negative dimension": (
        bad_catalog(lambda d: d["versions"]["v3"].__setitem__("dimension", -4)),
        ("catalog.yaml", "versions.v3.dimension", "-4", "> 0"),
    ),
    # click's own answer was three lines (usage, hint, error); the drill's services never start.
    "drill corpus too small for the drill": (
        lambda s: ["drill", "--docs", "0"],
        ("'--docs'", "0 is not in the range", "lockstep drill --help"),
    ),
    "an option lockstep itself does not have": (lambda s: ["--bogus"], ("'--bogus'", "`lockstep --help`")),
    "plan format that does not exist": (
        lambda s: ["plan", "--stack", s.stack, "--format", "xml"],
        ("'--format'", "'xml'", "lockstep plan --help"),
    ),
    # Both were accepted and failed at the cutover, after the indices were built and the slots deployed.
    "opensearch.alias in the form of a version's index": (
        bad_stack(
            lambda c: c["lockstep:opensearch"].__setitem__("alias", c["lockstep:opensearch"]["indexPrefix"] + "-v2")
        ),
        ("alias", "-v2'", "version's index name", "choose an alias"),
    ),
    "pointerParameter SSM reserves": (
        bad_stack(lambda c: c.__setitem__("lockstep:pointerParameter", "aws-live")),
        ("pointerParameter", "not an SSM parameter name", "aws or ssm"),
    ),
    # Refused after the corpus and artifact buckets were made and the artifact uploaded.
    "backfill --attach on a stack that runs no Ray job": (
        lambda s: ["backfill", "--stack", s.stack, "--version", "v1", "--attach", "raysubmit_abc"],
        ("--attach follows a Ray job", "backfill.engine: ray"),
    ),
    "catalog: a version that is not a mapping": (
        bad_catalog(lambda d: d["versions"].__setitem__("v3", "v2")),
        ("catalog.yaml", "versions.v3 is 'v2'", "mapping"),
    ),
    "catalog: a version listed twice": (duplicate_version_key, ("catalog.yaml", "duplicate", "v1")),
    # Both would be index <prefix>-v1: refused before anything is built.
    "catalog: two versions that differ only in case": (
        bad_catalog(lambda d: d["versions"].__setitem__("V1", dict(d["versions"]["v1"]))),
        ("catalog.yaml", "'v1' and 'V1' differ only in case", "rename one"),
    ),
    "catalog: sha256 is not the built artifact's": (
        catalog_sha_not_the_artifacts,
        ("v1", "sha256", "catalog", "nothing was uploaded"),
    ),
    "catalog: dimension is not what the artifact produces (apply)": (
        catalog_dimension_not_the_models(apply),
        ("v1", "dimension 128", "192-dimensional", "fix versions.v1 in the catalog"),
    ),
    "catalog: dimension is not what the artifact produces (backfill)": (
        catalog_dimension_not_the_models(backfill),
        ("v1", "dimension 128", "192-dimensional", "fix versions.v1 in the catalog"),
    ),
    # the stack file
    "invalid index prefix": (
        bad_stack(lambda c: c["lockstep:opensearch"].__setitem__("indexPrefix", "Docs*")),
        ("opensearch.indexPrefix", "'Docs*'", "index name"),
    ),
    "stack file that is not YAML": (stack_file_text(b"config:\n  lockstep:pin: [v1\n"), ("not valid YAML", "line")),
    "stack file that is not UTF-8": (stack_file_text(b"config:\n  lockstep:pin: v1\xff\xfe\n"), ("not UTF-8",)),
    "stack file without config:": (stack_file_text(b"lockstep:pin: v1\n"), ("config:",)),
    # the corpus (an embedded stack seeds a missing corpus: these are corpora someone uploaded)
    "empty corpus (backfill)": (bad_corpus(b"", backfill), ("corpus", "empty")),
    "empty corpus (apply)": (bad_corpus(b"\n\n", apply), ("corpus", "empty")),
    "corpus with a duplicate id (backfill)": (
        bad_corpus(lines(GOOD, OTHER, GOOD), backfill),
        ("line 3", "duplicate id", "'a'"),
    ),
    "corpus with a duplicate id (apply)": (
        bad_corpus(lines(GOOD, OTHER, GOOD), apply),
        ("line 3", "duplicate id", "'a'"),
    ),
    "corpus not UTF-8 (backfill)": (
        bad_corpus(lines(GOOD) + b'{"id": "b", "text": "caf\xe9"}\n', backfill),
        ("not UTF-8", "byte"),
    ),
    "corpus not UTF-8 (apply)": (
        bad_corpus(lines(GOOD) + b'{"id": "b", "text": "caf\xe9"}\n', apply),
        ("not UTF-8", "byte"),
    ),
    "corpus line that is not JSON": (bad_corpus(lines(GOOD) + b"{id: b}\n", backfill), ("line 2", "JSON")),
    "corpus bucket missing (check)": (check_without_a_corpus_bucket, ("corpus", "not found")),
    # servers
    "unreachable OpenSearch (apply)": (unreachable_opensearch(apply), ("OpenSearch", "unreachable")),
    "unreachable OpenSearch (backfill)": (unreachable_opensearch(backfill), ("OpenSearch", "unreachable")),
    "OpenSearch answers 401 (apply)": (opensearch_refusing(401, apply), ("refused our credentials", "401")),
    "OpenSearch answers 403 (backfill)": (opensearch_refusing(403, backfill), ("refused our credentials", "403")),
    "basic auth without the password": (basic_auth_without_password, ("LOCKSTEP_OPENSEARCH_PASSWORD", "secret")),
    "AWS refuses the credentials (apply)": (
        aws_refusing_credentials(apply),
        ("refused our credentials", "AWS credentials"),
    ),
    "AWS refuses the credentials (backfill)": (
        aws_refusing_credentials(backfill),
        ("refused our credentials", "AWS credentials"),
    ),
    "aws:profile this machine does not have (plan)": (
        aws_stack_with_a_missing_profile,
        ("AWS profile 'lockstep-no-such-profile'", "fix aws:profile"),
    ),
    "no AWS credentials on this machine (plan)": (
        aws_stack_without_credentials,
        ("no AWS credentials on this machine", "aws:profile", "AWS_ACCESS_KEY_ID"),
    ),
    # The line names the stack's AWS, not the embedded moto this machine happens to run.
    "no AWS credentials on this machine (check)": (
        partial(aws_stack_without_credentials, command="check"),
        ("AWS (S3) at AWS: no AWS credentials on this machine",),
    ),
}


# ------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def moto_with_auth(servers, tmp_path_factory):
    """A private moto server that checks credentials (IAM auth on from the first request)."""
    port = runtime.free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto-auth") / "moto.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **services.DUMMY_CREDENTIALS, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
        )
    try:
        runtime.wait_until(
            lambda: runtime.http_ok(f"{url}/moto-api/"),
            f"private moto on {url}",
            str(log),
            timeout=60,
            alive=lambda: process.poll() is None,
        )
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def bucket_exists(s3, bucket: str) -> bool:
    try:
        s3.head_bucket(Bucket=bucket)
        return True
    except ClientError:
        return False


def names(stacks: Path, stack: str) -> dict[str, str]:
    """The stack's resource names, from the pristine values the scratch stack was written with."""
    from tests.conftest import stack_values

    values = stack_values(stack)
    return {
        "artifacts": values["artifacts"]["bucket"],
        "corpus": values["corpus"]["bucket"],
        "prefix": values["opensearch"]["indexPrefix"],
        "pointer": values["pointerParameter"],
    }


def run_lockstep(argv: list[str], env: dict[str, str], in_process: bool) -> tuple[int, str]:
    """(exit code, stderr) of `lockstep <argv>`: in this process (click's runner) or as a subprocess."""
    if not in_process:
        completed = lockstep(*argv, env=env)
        return completed.returncode, completed.stderr
    result = CliRunner().invoke(cli.cli, argv, env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return 1, "".join(traceback.format_exception(result.exception))
    return result.exit_code, result.stderr


# As a person runs them: a real process, so stray logging or warnings on stderr would show too.
IN_A_PROCESS = [
    "unreachable OpenSearch (apply)",
    "corpus not UTF-8 (backfill)",
    "AWS refuses the credentials (apply)",
    "stack file that is not YAML",
    "catalog: a version listed twice",
]


@pytest.mark.parametrize("case", list(TABLE))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, servers, scratch_stack, opensearch, s3, ssm, request):
    check_case(case, False, servers, scratch_stack, opensearch, s3, ssm, request)


@pytest.mark.parametrize("case", IN_A_PROCESS)
def test_bad_input_in_a_real_process_prints_one_line(case, servers, scratch_stack, opensearch, s3, ssm, request):
    check_case(case, True, servers, scratch_stack, opensearch, s3, ssm, request)


def check_case(case, own_process, servers, scratch_stack, opensearch, s3, ssm, request):
    stacks, stack = scratch_stack()
    scratch = Scratch(stacks, stack)
    setup, words = TABLE[case]
    argv = setup(scratch)
    proxy = None
    if scratch.env.get("OPENSEARCH_URL", "").startswith("proxy:"):
        status = int(scratch.env["OPENSEARCH_URL"].split(":")[1])
        proxy = FaultProxy(
            servers["opensearch"], lambda r: answer(status, {"error": "no permissions", "status": status})
        )
        scratch.env["OPENSEARCH_URL"] = proxy.url
    if scratch.env.get("AWS_ENDPOINT_URL") == "moto-with-auth":
        scratch.env["AWS_ENDPOINT_URL"] = request.getfixturevalue("moto_with_auth")
    before = snapshot(stacks)
    named = names(stacks, stack)
    corpus_bucket_before = bucket_exists(s3, named["corpus"])
    try:
        code, err = run_lockstep(argv, {"LOCKSTEP_STACKS_DIR": str(stacks), **scratch.env}, in_process=not own_process)
    finally:
        if proxy:
            proxy.close()

    assert code == 2, err
    assert "Traceback" not in err, err
    stderr = [line for line in err.splitlines() if line.strip()]
    assert len(stderr) == 1, err
    for word in words:
        assert word in stderr[0], f"{word!r} not in {stderr[0]!r}"

    # nothing changed
    assert snapshot(stacks) == before
    assert opensearch.indices.get(index=f"{named['prefix']}-*", allow_no_indices=True) == {}
    assert not bucket_exists(s3, named["artifacts"]), "the artifact bucket was created"
    assert bucket_exists(s3, named["corpus"]) == corpus_bucket_before, "the corpus bucket was created"
    with pytest.raises(ClientError, match="ParameterNotFound"):
        ssm.get_parameter(Name=named["pointer"])


def test_the_table_covers_every_kind_of_bad_input_the_issue_names():
    kinds = [
        "unknown pin",
        "neither slot",
        "both slots",
        "retain",
        "sha256 not 64",
        "negative dimension",
        "listed twice",
        "not the built artifact",
        "dimension is not what the artifact produces",
        "empty corpus",
        "duplicate id",
        "not UTF-8",
        "corpus bucket missing",
        "index prefix",
        "unreachable OpenSearch",
        "401",
        "AWS refuses",
        "basic auth",
        "not YAML",
    ]
    for kind in kinds:
        assert any(kind in case for case in TABLE), kind


def test_an_iam_denial_of_dynamodb_or_ssm_is_one_line_naming_the_permission():
    """DynamoDB, SSM and SageMaker say AccessDeniedException (S3 says AccessDenied): valid
    credentials that lack a permission. It escaped as a ClientError traceback."""
    denial = ClientError(
        {
            "Error": {
                "Code": "AccessDeniedException",
                "Message": "User: arn:aws:iam::123456789012:user/ci is not authorized to perform: "
                "dynamodb:PutItem on resource: arn:aws:dynamodb:eu-west-1:123456789012:table/related",
            }
        },
        "PutItem",
    )
    with pytest.raises(UsageError) as refused, clients.reaching("AWS", "DynamoDB"):
        raise denial
    line = str(refused.value)
    assert "\n" not in line
    assert line.startswith("AWS at DynamoDB refused our credentials (AccessDeniedException: User: arn:aws:iam::")
    assert "not authorized to perform: dynamodb:PutItem" in line and "docs/iam.md" in line
