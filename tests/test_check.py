"""Issue #6 acceptance: the consistency check catches each failure, created for real on the servers.

One healthy deployment (pin v1 live in blue, v2 warm in green, 200 documents) is built once for the
module by `orchestrator.apply` from a real stack file, so the CLI reads the same stack. Each test
breaks one thing on the real OpenSearch / moto / endpoint processes, asserts which checks fail
(and the CLI's exit code for several), and puts the thing back; the `stack` fixture then proves the
deployment is healthy again, so no test can leak its damage into the next.
"""

from __future__ import annotations

import json
import random
import subprocess

import pytest

from lockstep import runtime
from lockstep.errors import Unreachable, UsageError
from lockstep.ops import artifacts, check, clients, endpoints, index, live_state, reembed
from lockstep.ops.corpus import Document
from tests.conftest import Deployment, deploy, lockstep

EVERY_CHECK = {
    "alias",
    "index-meta",
    "foreign-versions",
    "doc-count",
    "pointer",
    "artifact",
    "endpoint-artifact",
    "reembed-probe",
    "recall",
    "standby",
}


@pytest.fixture(scope="module")
def deployment(servers, tmp_path_factory):
    yield from deploy(tmp_path_factory)


@pytest.fixture
def stack(deployment):
    """The shared deployment; after the test it must be healthy again (the test restored its damage)."""
    yield deployment
    after = check.run(deployment.settings, deployment.catalog)
    assert after.passed, f"the test left the shared stack broken: {failing(after)}"


def failing(record: check.CheckRecord) -> set[str]:
    return {c.name for c in record.failures}


def by_name(record: check.CheckRecord) -> dict[str, check.Check]:
    return {c.name: c for c in record.checks}


def run_check(deployment: Deployment) -> check.CheckRecord:
    return check.run(deployment.settings, deployment.catalog, seed=6)


def cli_check(deployment: Deployment, **environment: str) -> subprocess.CompletedProcess:
    """`lockstep check --stack S --json` in a fresh process reading the stack file from disk."""
    env = {"LOCKSTEP_STACKS_DIR": str(deployment.stacks_dir), **environment}
    return lockstep("check", "--stack", deployment.settings.stack, "--json", env=env, timeout=120)


def cli_failures(completed: subprocess.CompletedProcess) -> set[str]:
    assert "Traceback" not in completed.stderr, completed.stderr
    record = json.loads(completed.stdout)
    return {c["name"] for c in record["checks"] if not c["passed"] and c["severity"] == "fail"}


def rewrite(deployment: Deployment, documents: list[Document], version: str) -> None:
    """Write `documents` into the live index embedded (and stamped) by `version`: no write guard."""
    reembed.write(
        clients.opensearch(), reembed.index_actions(documents, deployment.embedder(version), deployment.live_index, 256)
    )
    clients.opensearch().indices.refresh(index=deployment.live_index)


def not_golden(deployment: Deployment, count: int) -> list[Document]:
    """Documents no golden query expects: breaking them leaves recall alone."""
    golden = deployment.golden_ids()
    return [d for d in deployment.documents() if d.id not in golden][:count]


# ------------------------------------------------------------------------------------ healthy


def test_healthy_stack_passes_every_check_in_process_and_through_the_cli(stack):
    record = run_check(stack)
    assert {c.name for c in record.checks} == EVERY_CHECK
    assert [c.name for c in record.checks if not c.passed] == []
    assert by_name(record)["doc-count"].observed.startswith("200 docs")

    completed = cli_check(stack)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["passed"] is True


# ------------------------------------------------------------------------ one failure at a time


def test_alias_on_the_wrong_index_fails_alias(stack, opensearch):
    wrong = stack.settings.opensearch.index_name("v2")
    opensearch.indices.update_aliases(
        body={
            "actions": [
                {"remove": {"index": stack.live_index, "alias": stack.alias}},
                {"add": {"index": wrong, "alias": stack.alias, "is_write_index": True}},
            ]
        }
    )
    try:
        completed = cli_check(stack)
        assert completed.returncode == 1, completed.stderr
        failures = cli_failures(completed)
        assert "alias" in failures
        # The served index is v2's: its _meta and its documents' version give it away as well.
        assert {"index-meta", "foreign-versions"} <= failures
    finally:
        opensearch.indices.update_aliases(
            body={
                "actions": [
                    {"remove": {"index": wrong, "alias": stack.alias}},
                    {"add": {"index": stack.live_index, "alias": stack.alias, "is_write_index": True}},
                ]
            }
        )


def test_alias_pointing_nowhere_fails_instead_of_crashing(stack, opensearch):
    opensearch.indices.delete_alias(index=stack.live_index, name=stack.alias)
    try:
        completed = cli_check(stack)
        assert completed.returncode == 1, completed.stderr
        assert {"alias", "reembed-probe", "recall"} <= cli_failures(completed)
    finally:
        opensearch.indices.put_alias(index=stack.live_index, name=stack.alias, body={"is_write_index": True})


def test_meta_sha_mismatch_fails_index_meta(stack, opensearch, catalog):
    original = index.read_meta(opensearch, stack.live_index)
    opensearch.indices.put_mapping(
        index=stack.live_index, body={"_meta": {**original, "artifact_sha256": catalog.get("v2").artifact_sha256}}
    )
    try:
        record = run_check(stack)
        assert failing(record) == {"index-meta"}
        assert "artifact_sha256" in by_name(record)["index-meta"].observed
    finally:
        opensearch.indices.put_mapping(index=stack.live_index, body={"_meta": original})


def test_a_live_index_another_stack_built_fails_index_meta(stack, opensearch):
    """The same indexPrefix on one cluster: the alias serves an index another stack's `_meta` names."""
    original = index.read_meta(opensearch, stack.live_index)
    opensearch.indices.put_mapping(index=stack.live_index, body={"_meta": {**original, "stack": "prod"}})
    try:
        record = run_check(stack)
        assert failing(record) == {"index-meta"}
        assert json.loads(by_name(record)["index-meta"].observed) == {"stack": "prod"}
        assert "own opensearch.indexPrefix" in by_name(record)["index-meta"].fix
    finally:
        opensearch.indices.put_mapping(index=stack.live_index, body={"_meta": original})


def test_documents_of_another_version_mixed_in_fail_foreign_versions(stack):
    mixed = stack.documents()[:12]
    rewrite(stack, mixed, "v2")
    try:
        record = run_check(stack)
        assert "foreign-versions" in failing(record)
        assert json.loads(by_name(record)["foreign-versions"].observed) == {"v2": 12}
        assert by_name(record)["doc-count"].passed
    finally:
        rewrite(stack, mixed, "v1")


def test_missing_documents_fail_doc_count(stack, opensearch):
    gone = not_golden(stack, 10)
    for document in gone:
        opensearch.delete(index=stack.live_index, id=document.id)
    opensearch.indices.refresh(index=stack.live_index)
    try:
        record = run_check(stack)
        assert failing(record) == {"doc-count"}
        assert by_name(record)["doc-count"].observed.startswith("190 docs")
    finally:
        rewrite(stack, gone, "v1")


def test_stale_document_text_fails_doc_count(stack, opensearch):
    """Same count, but a document's content hash is not the corpus's: the stale sample sees it."""
    [stale] = not_golden(stack, 1)
    opensearch.update(index=stack.live_index, id=stale.id, body={"doc": {"content_sha256": "0" * 64}}, refresh=True)
    try:
        record = run_check(stack)
        assert failing(record) == {"doc-count"}
        assert by_name(record)["doc-count"].observed == "200 docs, 1 stale in sample; copies compared: 1 (1 shards)"
    finally:
        rewrite(stack, [stale], "v1")


def test_pointer_on_another_version_fails_pointer(stack, ssm, catalog):
    original = live_state.read_pointer(ssm, stack.settings.pointer_name)
    v2 = catalog.get("v2")
    live_state.write_pointer(
        ssm,
        stack.settings.pointer_name,
        live_state.Pointer(
            "v2",
            endpoints.endpoint_name(stack.settings, "green"),
            stack.settings.opensearch.index_name("v2"),
            v2.artifact_sha256,
        ),
    )
    try:
        completed = cli_check(stack)
        assert completed.returncode == 1, completed.stderr
        # Readers follow the pointer: what they find is v2's recall, which is not the pin's to pass.
        assert cli_failures(completed) == {"pointer", "recall"}
        [recall] = [c for c in json.loads(completed.stdout)["checks"] if c["name"] == "recall"]
        assert recall["observed"].startswith("readers answer from v2 (")
    finally:
        live_state.write_pointer(ssm, stack.settings.pointer_name, original)


def test_pointer_that_is_not_lockstep_json_fails_pointer(stack, ssm):
    original = live_state.read_pointer(ssm, stack.settings.pointer_name)
    ssm.put_parameter(Name=stack.settings.pointer_name, Value="v1", Type="String", Overwrite=True)
    try:
        record = run_check(stack)
        # Readers (lockstep.reader) cannot read it either: the recall probe, asked through one, fails.
        assert failing(record) == {"pointer", "recall"}
        assert "the reader refuses" in by_name(record)["recall"].observed
    finally:
        live_state.write_pointer(ssm, stack.settings.pointer_name, original)


def test_live_endpoint_stopped_fails_never_passes(stack, catalog):
    live_slot = stack.settings.live_slot
    runtime.Managed.load(endpoints.process_name(stack.settings, live_slot)).stop()
    try:
        completed = cli_check(stack)
        assert completed.returncode == 1, completed.stderr
        assert {"endpoint-artifact", "reembed-probe", "recall"} <= cli_failures(completed)
    finally:
        endpoints.deploy_local_slot(stack.settings, live_slot, catalog.get(stack.settings.pin))


@pytest.mark.parametrize(
    "refusal",
    [
        Unreachable("endpoint lockstep-t-blue at http://127.0.0.1:1 failed 3 times (ReadTimeout)"),
        UsageError("SageMaker endpoint lockstep-t-blue in eu-west-1 refused our credentials (AccessDenied)"),
    ],
    ids=["no answer", "credentials refused"],
)
def test_a_live_endpoint_that_could_not_be_read_is_exit_2_not_a_failed_check(stack, monkeypatch, refusal):
    """An endpoint that is there but could not be asked (a hung process, refused credentials) is
    not an endpoint seen down: no record of failed endpoint checks (it would block promotion and
    trigger autoRevert), one line and exit 2, and the last record stays what it was."""
    before = check.latest(stack.settings)

    def refused(self):
        raise refusal

    monkeypatch.setattr(endpoints.LocalEndpoint, "describe", refused)
    outcome = check.evaluate(stack.settings, stack.catalog)
    assert (outcome.exit_code, outcome.record) == (2, None)
    assert str(refusal) in outcome.reason
    assert check.latest(stack.settings) == before


def test_a_record_that_cannot_be_stored_is_one_line_naming_the_missing_bucket(stack, unique):
    """Every check ran (the artifact check reads the missing bucket as "missing"); the record has
    nowhere to go: one line naming the bucket, where it was a NoSuchBucket traceback. What was
    observed is still said: the artifact failed, so the exit is 1 (inconsistent), not 2."""
    artifacts_ = stack.settings.artifacts.model_copy(update={"bucket": f"{unique}-gone"})
    outcome = check.evaluate(stack.settings.model_copy(update={"artifacts": artifacts_}), stack.catalog)
    assert outcome.exit_code == 1 and outcome.record is not None and outcome.key is None
    assert "artifact" in {c.name for c in outcome.record.failures}
    assert outcome.reason.startswith(f"could not store the check record: artifact bucket {unique}-gone does not exist")


def test_endpoint_serving_another_artifact_fails_endpoint_artifact(stack, catalog):
    live_slot = stack.settings.live_slot
    endpoints.deploy_local_slot(stack.settings, live_slot, catalog.get("v2"))
    try:
        record = run_check(stack)
        # The index is v1's, the endpoint embeds with v2: probe and recall see it as well.
        assert failing(record) == {"endpoint-artifact", "reembed-probe", "recall"}
        assert by_name(record)["endpoint-artifact"].observed.startswith("v2 ")
    finally:
        endpoints.deploy_local_slot(stack.settings, live_slot, catalog.get("v1"))


def test_artifact_bytes_changed_in_s3_fail_artifact(stack, s3, catalog):
    entry = catalog.get(stack.settings.pin)
    s3.put_object(
        Bucket=stack.settings.artifacts.bucket, Key=entry.artifact_key, Body=b"not the model that was deployed"
    )
    try:
        completed = cli_check(stack)
        assert completed.returncode == 1, completed.stderr
        assert cli_failures(completed) == {"artifact"}
    finally:
        artifacts.publish_artifact(s3, stack.settings, entry)


@pytest.mark.parametrize(
    "rule, threat",
    [
        ({"Filter": {"Prefix": ""}, "Expiration": {"Days": 30}}, "expires every object after 30 days"),
        (
            {"Filter": {"Prefix": "models/"}, "Transitions": [{"Days": 90, "StorageClass": "GLACIER"}]},
            "archives models/ to GLACIER",
        ),
        ({"Filter": {"Prefix": "checks/"}, "Expiration": {"Days": 30}}, None),
        ({"Filter": {"Prefix": "models/"}, "NoncurrentVersionExpiration": {"NoncurrentDays": 30}}, None),
    ],
    ids=["expires-all", "archives-models", "other-prefix", "noncurrent-only"],
)
def test_a_lifecycle_rule_that_would_expire_or_archive_artifacts_fails_artifact(stack, s3, rule, threat):
    """The pin's artifact is there today, but a lifecycle rule (an org default, a hand-made cost
    rule) would expire it or move it to an archive class: the rollback that needs it months later
    would find nothing (or wait hours). The rule is reported, never changed."""
    bucket = stack.settings.artifacts.bucket
    configuration = {"Rules": [{"ID": "cost", "Status": "Enabled", **rule}]}
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=configuration)
    try:
        artifact = by_name(run_check(stack))["artifact"]
    finally:
        s3.delete_bucket_lifecycle(Bucket=bucket)
    if threat is None:
        assert artifact.passed, artifact.observed
    else:
        assert not artifact.passed and artifact.observed == f"sha256 ok; lifecycle rule cost {threat}"
        assert artifact.fix.startswith(f"exclude models/ of bucket {bucket} from its lifecycle rules")


def test_a_fifth_of_vectors_from_the_same_dimension_model_fail_only_probe_and_recall(stack, opensearch):
    """The silent case: v2 vectors (same dimension) under `model_version: v1`. Nothing counts them
    as foreign; only re-embedding through the live endpoint and the golden recall can tell."""
    documents = stack.documents()
    swapped = random.Random(20).sample(documents, len(documents) // 5)
    vectors = stack.embedder("v2").encode([d.text for d in swapped])
    reembed.write(
        opensearch,
        (
            {"_op_type": "update", "_index": stack.live_index, "_id": d.id, "doc": {"embedding": vector.tolist()}}
            for d, vector in zip(swapped, vectors)
        ),
    )
    opensearch.indices.refresh(index=stack.live_index)
    try:
        _, versions = live_state.count_by_model_version(opensearch, stack.live_index)
        assert versions == {"v1": len(documents)}  # the stored fields still claim the pin

        completed = cli_check(stack)
        assert completed.returncode == 1, completed.stderr
        assert cli_failures(completed) == {"reembed-probe", "recall"}
        record = json.loads(completed.stdout)
        passed = {c["name"] for c in record["checks"] if c["passed"]}
        assert {"foreign-versions", "doc-count", "index-meta", "endpoint-artifact"} <= passed
    finally:
        rewrite(stack, swapped, "v1")


def test_corrupted_golden_set_fails_recall(stack, s3):
    bucket, key = stack.settings.corpus.bucket, stack.settings.corpus.golden_key
    original = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    golden = [json.loads(line) for line in original.decode().splitlines()]
    # Each query now expects the next query's document: the index answers right, the set says wrong.
    shifted = [{**query, "expected": golden[(n + 1) % len(golden)]["expected"]} for n, query in enumerate(golden)]
    s3.put_object(Bucket=bucket, Key=key, Body="".join(json.dumps(q) + "\n" for q in shifted).encode())
    try:
        record = run_check(stack)
        assert failing(record) == {"recall"}
        assert float(by_name(record)["recall"].observed.split()[-1]) < 0.2
    finally:
        s3.put_object(Bucket=bucket, Key=key, Body=original)


@pytest.mark.parametrize(
    "golden",
    [
        b"",
        b"[1, 2]\n",
        b'{"query": "q"}\n',
        b'{"query": "q", "expected": []}\n',
        b'{"query": "q", "expected": ["a"], "set": "x"}\n',
    ],
)
def test_a_golden_set_that_is_not_one_is_bad_input_and_nothing_is_stored(stack, s3, golden):
    """An empty golden file, or a line that is not {query, expected}: one line naming the file,
    exit 2 (it read as "alias points to no index", or a KeyError traceback)."""
    bucket, key = stack.settings.corpus.bucket, stack.settings.corpus.golden_key
    original = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key, Body=golden)
    try:
        outcome = check.evaluate(stack.settings, stack.catalog)
    finally:
        s3.put_object(Bucket=bucket, Key=key, Body=original)
    assert (outcome.exit_code, outcome.record) == (2, None)
    assert key in outcome.reason and ("no golden queries" in outcome.reason or "is not {query" in outcome.reason)


def test_a_pointer_ssm_does_not_serve_to_the_reader_is_could_not_check_not_a_failure(stack, monkeypatch):
    """SSM stops answering between the pointer check and recall: recall was not observed, so the
    check says it could not check (exit 2, nothing stored) — not a stored recall failure."""

    def unanswered(self):
        raise Unreachable("SSM at http://127.0.0.1 did not answer (timed out)")

    monkeypatch.setattr(live_state.PointerCache, "live", unanswered)
    outcome = check.evaluate(stack.settings, stack.catalog)
    assert (outcome.exit_code, outcome.record) == (2, None)
    assert outcome.reason.startswith("could not check recall:") and "did not answer" in outcome.reason


@pytest.mark.parametrize("code", ["ThrottlingException", "SlowDown"])
def test_aws_throttling_past_retries_is_could_not_check_not_a_traceback(stack, monkeypatch, code):
    from botocore.exceptions import ClientError

    def throttled(*args, **kwargs):
        raise ClientError({"Error": {"Code": code, "Message": "Rate exceeded"}}, "GetObject")

    monkeypatch.setattr(check.corpus_store, "read_golden", throttled)
    outcome = check.evaluate(stack.settings, stack.catalog)
    assert (outcome.exit_code, outcome.record) == (2, None)
    assert outcome.reason.startswith("could not check recall: AWS did not answer") and code in outcome.reason


def test_a_record_with_no_checks_or_an_unknown_failing_severity_does_not_pass():
    """promote gates on `passed`: a record with no checks proves nothing, and a failed check whose
    severity a newer lockstep introduced is a failure, not ignored."""
    empty = check.CheckRecord.from_dict({"stack": "s", "pin": "v1", "artifact_sha256": "a", "started_at": "t"})
    assert not empty.passed
    failed = check.Check("new-kind", False, "broken", "whole", "fix it", severity="critical")
    kept = check.Check("alias", True, "ok", "ok", "")
    record = check.CheckRecord("s", "v1", "a", "t", checks=[kept, failed])
    assert not record.passed and record.failures == [failed]
    assert check.CheckRecord("s", "v1", "a", "t", checks=[kept]).passed


def test_a_count_read_from_part_of_the_index_is_refused():
    """A shard rejected the aggregation: OpenSearch answers 200 with `_shards.failed`; a version on
    that shard would go uncounted, so foreign-versions would read 0."""

    class Partial:
        def search(self, index, body):
            return {
                "_shards": {"total": 2, "successful": 1, "failed": 1},
                "hits": {"total": {"value": 5}},
                "aggregations": {"versions": {"buckets": [{"key": "v1", "doc_count": 5}]}},
            }

    with pytest.raises(Unreachable, match="the model_version count of docs-v1 read 1 of 2 shards"):
        live_state.count_by_model_version(Partial(), "docs-v1")


def test_recall_below_a_raised_floor_fails_recall(stack):
    healthy = float(by_name(run_check(stack))["recall"].observed.split()[-1])
    raised = stack.settings.model_copy(
        update={"check": stack.settings.check.model_copy(update={"recall_floor": min(1.0, healthy + 0.05)})}
    )
    record = check.run(raised, stack.catalog, seed=6)
    assert failing(record) == {"recall"}


# ------------------------------------------------------------------------ could not check


def closed_url() -> str:
    return f"http://127.0.0.1:{runtime.free_port()}"


def test_opensearch_down_exits_2_naming_opensearch_and_where(stack):
    url = closed_url()
    completed = cli_check(stack, OPENSEARCH_URL=url)
    assert completed.returncode == 2, completed.stdout + completed.stderr
    [line] = completed.stderr.strip().splitlines()
    assert "OpenSearch" in line and url in line
    assert completed.stdout == ""


def test_moto_down_exits_2_naming_s3_and_where(stack):
    url = closed_url()
    completed = cli_check(stack, AWS_ENDPOINT_URL=url)
    assert completed.returncode == 2, completed.stdout + completed.stderr
    [line] = completed.stderr.strip().splitlines()
    assert "S3" in line and url in line
    assert completed.stdout == ""


# ------------------------------------------------------------------------------- the record


def test_record_is_stored_under_checks_stack_and_latest_returns_it(stack, s3):
    record = run_check(stack)
    key = check.store(record, stack.settings)
    prefix = f"checks/{stack.settings.stack}/"
    assert key.startswith(prefix)
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=stack.settings.artifacts.bucket, Prefix=prefix)["Contents"]}
    assert {key, f"{prefix}latest.json"} <= listed

    stored = json.loads(s3.get_object(Bucket=stack.settings.artifacts.bucket, Key=key)["Body"].read())
    assert stored["passed"] is True and stored["pin"] == "v1" and stored["stack"] == stack.settings.stack
    latest = check.latest(stack.settings)
    assert latest is not None and latest.to_dict() == record.to_dict()


def test_latest_is_none_before_any_check(stack, unique):
    assert check.latest(stack.settings.model_copy(update={"stack": unique})) is None
