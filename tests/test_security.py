"""Issue #9: security posture, read back from the real servers and the program's resource graph.

- Buckets the CLI creates are private, versioned, encrypted; the TLS-only policy is applied
  wherever the endpoint speaks https (a private moto with TLS here), and always by the Pulumi
  component — the same policy document in both (tests/test_artifacts.py and
  tests/test_program.py check each side's details).
- The OpenSearch password never reaches output: every command a person runs on a basic-auth stack
  (success and failure paths), the stored check record and the endpoint processes are searched
  for it. The program puts it only in the check command's environment, as a secret, even when
  the config value was not marked secret.
- A stack file never holds a plain `lockstep:opensearchPassword`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest
import requests
import urllib3
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from lockstep import config, runtime, services
from lockstep.ops import artifacts, check, clients, endpoints
from tests.faultproxy import FaultProxy, answer


def lockstep(*args: str, stacks: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lockstep.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "LOCKSTEP_STACKS_DIR": str(stacks), **env},
    )


def posture(s3, bucket: str) -> dict:
    rule = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    try:
        policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "NoSuchBucketPolicy"
        policy = None
    return {
        "public_access_block": s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"],
        "encryption": rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"],
        "versioning": s3.get_bucket_versioning(Bucket=bucket).get("Status"),
        "ownership": s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]["Rules"],
        "policy": policy,
    }


# ------------------------------------------------------------------------------------ buckets


def test_buckets_the_cli_creates_are_private_versioned_and_encrypted(servers, scratch_stack, s3):
    stacks, stack = scratch_stack(corpus={"size": 40})
    completed = lockstep("backfill", "--stack", stack, "--version", "v1", "--quiet", stacks=stacks)
    assert completed.returncode == 0, completed.stderr
    settings = config.load_stack(stack, stacks)

    for bucket in (settings.artifacts.bucket, settings.corpus.bucket):
        seen = posture(s3, bucket)
        assert seen["public_access_block"] == artifacts.PUBLIC_ACCESS_BLOCK and all(
            seen["public_access_block"].values()
        )
        assert seen["encryption"] in {"AES256", "aws:kms"}
        assert seen["versioning"] == "Enabled"
        assert seen["ownership"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
        # moto over plain http on loopback: no TLS policy (it would deny every call there)
        assert seen["policy"] is None
        public = {
            "http://acs.amazonaws.com/groups/global/AllUsers",
            "http://acs.amazonaws.com/groups/global/AuthenticatedUsers",
        }
        assert not [g for g in s3.get_bucket_acl(Bucket=bucket)["Grants"] if g["Grantee"].get("URI") in public]


@pytest.fixture(scope="module")
def moto_over_tls(tmp_path_factory):
    """A private moto server speaking https (self-signed certificate); stopped by pid."""
    port = runtime.free_port()
    url = f"https://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto-tls") / "moto.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port), "--ssl"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **services.DUMMY_CREDENTIALS},
        )
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

    def ready() -> bool:
        try:
            return requests.get(f"{url}/moto-api/", verify=False, timeout=2).status_code < 500
        except requests.RequestException:
            return False

    try:
        runtime.wait_until(ready, f"moto over TLS on {url}", str(log), timeout=60, alive=lambda: process.poll() is None)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_https_endpoint_gets_the_tls_only_policy_the_component_declares_too(moto_over_tls):
    s3 = boto3.client(
        "s3",
        region_name="us-east-1",
        endpoint_url=moto_over_tls,
        verify=False,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=BotoConfig(retries={"max_attempts": 2}),
    )
    bucket = f"t{uuid.uuid4().hex[:10]}-artifacts"
    artifacts.ensure_bucket(s3, bucket)  # require_tls defaults to "the endpoint speaks https"

    seen = posture(s3, bucket)
    assert seen["public_access_block"] == artifacts.PUBLIC_ACCESS_BLOCK and seen["versioning"] == "Enabled"
    [deny] = seen["policy"]["Statement"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*" and deny["Action"] == "s3:*"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert set(deny["Resource"]) == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}

    # The Pulumi component declares the very same document for its bucket (one source).
    from tests.test_program import dev_values, evaluate

    run = evaluate(dev_values())
    declared = json.loads(run.inputs("lockstep-artifacts-tls-only")["policy"])
    dev_bucket = run.inputs("lockstep-artifacts-bucket")["bucket"]
    assert declared == artifacts.deny_insecure_transport_policy(dev_bucket, "aws")
    assert json.loads(json.dumps(artifacts.deny_insecure_transport_policy(bucket, "aws"))) == seen["policy"]


# ------------------------------------------------------------------------------------ secrets


def test_the_opensearch_password_is_never_printed_stored_or_handed_on(servers, scratch_stack, s3):
    secret = f"pw-{uuid.uuid4().hex}"
    stacks, stack = scratch_stack(
        slots={"blue": "v1", "green": None}, corpus={"size": 60}, opensearch={"auth": "basic", "username": "lockstep"}
    )
    env = {"LOCKSTEP_OPENSEARCH_PASSWORD": secret}
    closed = f"http://lockstep:{secret}@127.0.0.1:{runtime.free_port()}"
    runs = {
        "validate": lockstep("validate", "--stack", stack, stacks=stacks, **env),
        "plan (before)": lockstep("plan", "--stack", stack, stacks=stacks, **env),
        "apply": lockstep("apply", "--stack", stack, "--quiet", stacks=stacks, **env),
        "check --json": lockstep("check", "--stack", stack, "--json", stacks=stacks, **env),
        "plan --to v2 --format json": lockstep(
            "plan", "--stack", stack, "--to", "v2", "--format", "json", stacks=stacks, **env
        ),
        "backfill": lockstep("backfill", "--stack", stack, "--version", "v1", "--quiet", stacks=stacks, **env),
        "apply, password in an unreachable URL": lockstep(
            "apply", "--stack", stack, "--quiet", stacks=stacks, OPENSEARCH_URL=closed, **env
        ),
        "check, password in an unreachable URL": lockstep(
            "check", "--stack", stack, stacks=stacks, OPENSEARCH_URL=closed, **env
        ),
        "plan, password in an unreachable URL": lockstep(
            "plan", "--stack", stack, stacks=stacks, OPENSEARCH_URL=closed, **env
        ),
    }
    with FaultProxy(servers["opensearch"], lambda r: answer(401, {"error": "unauthorized", "status": 401})) as proxy:
        runs["apply, OpenSearch answers 401"] = lockstep(
            "apply", "--stack", stack, "--quiet", stacks=stacks, OPENSEARCH_URL=proxy.url, **env
        )
        runs["check, OpenSearch answers 401"] = lockstep(
            "check", "--stack", stack, stacks=stacks, OPENSEARCH_URL=proxy.url, **env
        )

    assert runs["apply"].returncode == 0, runs["apply"].stdout + runs["apply"].stderr
    assert runs["check --json"].returncode == 0
    for name in (
        "apply, password in an unreachable URL",
        "check, password in an unreachable URL",
        "apply, OpenSearch answers 401",
        "check, OpenSearch answers 401",
    ):
        assert runs[name].returncode == 2, (name, runs[name].stderr)
    assert "***@" in runs["apply, password in an unreachable URL"].stderr
    for name, completed in runs.items():
        assert secret not in completed.stdout + completed.stderr, f"`{name}` printed the password"

    settings = config.load_stack(stack, stacks)
    listed = s3.list_objects_v2(Bucket=settings.artifacts.bucket, Prefix=f"{check.RECORD_PREFIX}/{stack}/")["Contents"]
    assert listed
    for item in listed:
        assert secret not in s3.get_object(Bucket=settings.artifacts.bucket, Key=item["Key"])["Body"].read().decode()

    slot = endpoints.local_slot(settings, "blue")
    try:
        assert slot is not None
        environ = Path(f"/proc/{slot.pid}/environ").read_bytes().decode(errors="replace")
        assert clients.PASSWORD_VARIABLE not in environ and secret not in environ
        log = runtime.Managed.load(endpoints.process_name(settings, "blue")).log
        assert secret not in Path(log).read_text(errors="replace")
    finally:
        endpoints.stop_local_slots(settings)
        clients.opensearch().indices.delete(
            index=f"{settings.opensearch.index_prefix}-*", params={"ignore_unavailable": "true"}
        )


def test_the_program_refuses_a_plain_config_password_without_echoing_it():
    """`pulumi config set lockstep:opensearchPassword x` without --secret: the password is the
    provider's configuration, which the engine keeps in the state; a plain one is refused in one line."""
    from tests.test_program import dev_values, evaluate, with_values

    password = f"plain-{uuid.uuid4().hex[:8]}"
    opensearch = {**dev_values()["lockstep:opensearch"], "auth": "basic", "username": "lockstep"}
    values = with_values(opensearch=opensearch)
    values["lockstep:opensearchPassword"] = password  # not in secret_keys: a plain config value
    with pytest.raises(Exception, match="lockstep:opensearchPassword: is stored in plain text") as refused:
        evaluate(values)
    assert password not in str(refused.value)


def test_a_plain_password_in_a_stack_file_is_refused_without_echoing_it(servers, scratch_stack):
    stacks, stack = scratch_stack(opensearchPassword="hunter2-in-plain-text")
    completed = lockstep("validate", "--stack", stack, stacks=stacks)
    assert completed.returncode == 2
    [line] = completed.stderr.strip().splitlines()
    assert "lockstep:opensearchPassword" in line and "pulumi config set --secret lockstep:opensearchPassword" in line
    assert "hunter2" not in completed.stdout + completed.stderr

    # The encrypted form Pulumi writes is fine (and never read by lockstep itself).
    scratch_stack(opensearchPassword={"secure": "v1:c2VjcmV0LWNpcGhlcnRleHQ="})
    assert lockstep("validate", "--stack", stack, stacks=stacks).returncode == 0


def test_no_shipped_stack_file_holds_a_plain_secret():
    for path in sorted(config.STACKS_DIR.glob("Pulumi.*.yaml")):
        data = config.read_yaml(path)
        for key in config.SECRET_KEYS:
            value = (data.get("config") or {}).get(f"{config.PROJECT}:{key}")
            assert value is None or (isinstance(value, dict) and "secure" in value), path
        config.load_stack(path.name.split(".")[1])  # and it validates under the rule
