"""The Pulumi program under the SDK's mock runtime: the resource graph per scenario.

No Pulumi CLI or engine runs here. Each scenario sets fresh mocks and config, then evaluates
__main__.py anew (runpy) and captures every registered resource's inputs, so two scenarios can be
compared input by input the way the engine would diff them.
"""

from __future__ import annotations

import copy
import json
import runpy
from pathlib import Path

import pulumi
import pytest
from ruamel.yaml import YAML

from tests.pulumi_harness import ACCOUNT, CHECK, CHECK_STDOUT, CaptureMocks, changed_resources, run_mocked
from tests.pulumi_harness import Registered as Run

ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / "__main__.py"
INDEX = "lockstep:index:Index"
CUTOVER = "lockstep:index:Cutover"


def dev_values() -> dict:
    """The dev stack file's `lockstep:*` values (SageMaker backend, sigv4 OpenSearch) plus aws:region."""
    data = YAML(typ="safe").load((ROOT / "stacks" / "Pulumi.dev.yaml").read_text())["config"]
    return copy.deepcopy(dict(data))


def with_values(**changes) -> dict:
    values = dev_values()
    for key, value in changes.items():
        values[f"lockstep:{key}"] = value
    return values


def evaluate(
    values: dict,
    *,
    stack: str = "dev",
    preview: bool = False,
    secrets: dict | None = None,
    mocks: CaptureMocks | None = None,
) -> Run:
    """Evaluate __main__.py once under fresh mocks with `values` as the stack's config."""
    config = {
        key: value if isinstance(value, str) else json.dumps(value)
        for key, value in {**values, **(secrets or {})}.items()
    }

    def program():
        release = runpy.run_path(str(MAIN), run_name="__main__")["release"]
        if release is None:
            return None
        return pulumi.Output.all(
            pin=release.pin,
            live_endpoint=release.live_endpoint,
            live_index=release.live_index,
            slots=release.slots,
            retained_indices=release.retained_indices,
            check_record=release.check_record,
        )

    return run_mocked(
        program, stack=stack, preview=preview, mocks=mocks, config=config, secret_keys=list(secrets or {})
    )


# ------------------------------------------------------------------------------------ scenarios


def test_first_deploy_declares_the_whole_unit():
    run = evaluate(dev_values())  # pin v2 in green, v1 in blue, v1 retained

    assert run.resources["lockstep"]["type"] == "lockstep:index:ModelRelease"
    # Artifacts are lockstep's own resource on AWS too (adopted when already stored; issue 24).
    assert set(run.of_type("lockstep:embedded:Artifact")) == {"lockstep-artifacts-v1", "lockstep-artifacts-v2"}
    assert not run.of_type("aws:s3/bucketObjectv2:BucketObjectv2")
    v2_object = run.inputs("lockstep-artifacts-v2")
    assert v2_object["key"].startswith("models/hashgram/v2/65878d63")
    assert v2_object["bucket"] == "acme-lockstep-dev-artifacts"

    indices = run.of_type(INDEX)
    assert set(indices) == {"lockstep-index-v1", "lockstep-index-v2"}
    assert indices["lockstep-index-v2"]["index"] == "docs-v2"
    assert indices["lockstep-index-v2"]["dimension"] == 192

    endpoints = run.of_type("aws:sagemaker/endpoint:Endpoint")
    assert {e["name"] for e in endpoints.values()} == {"lockstep-dev-blue", "lockstep-dev-green"}
    models = run.of_type("aws:sagemaker/model:Model")
    assert models["lockstep-green-model"]["primaryContainer"]["modelDataUrl"] == (
        "s3://acme-lockstep-dev-artifacts/models/hashgram/v2/"
        "65878d63f7a56f0f3f43bb489eaa0cae2949e93961ecbaa4e5b8ca6fb7ad4d8a/model.tar.gz"
    )
    assert "/v1/" in models["lockstep-blue-model"]["primaryContainer"]["modelDataUrl"]

    deployment = endpoints["lockstep-green-endpoint"]["deploymentConfig"]
    routing = deployment["blueGreenUpdatePolicy"]["trafficRoutingConfiguration"]
    assert routing == {"type": "ALL_AT_ONCE", "waitIntervalInSeconds": 600}
    assert [a["alarmName"] for a in deployment["autoRollbackConfiguration"]["alarms"]] == [
        "lockstep-dev-green-5xx",
        "lockstep-dev-green-latency",
        "lockstep-dev-green-rollback-alarms",
    ]

    cutover = run.inputs("lockstep-cutover")
    assert run.resources["lockstep-cutover"]["type"] == CUTOVER
    assert (cutover["version"], cutover["index"], cutover["endpoint"]) == ("v2", "docs-v2", "lockstep-dev-green")
    assert cutover["pointer"] == "/lockstep/dev/live"

    check = run.inputs("lockstep-check")
    assert run.resources["lockstep-check"]["type"] == CHECK
    assert (check["stack"], check["pin"], check["slots"]) == ("dev", "v2", {"blue": "v1", "green": "v2"})
    assert check["triggers"][0] == "v2" and "docs-v2" in check["triggers"]

    assert run.outputs == {
        "pin": "v2",
        "live_endpoint": "lockstep-dev-green",
        "live_index": "docs-v2",
        "slots": {"blue": "v1", "green": "v2"},
        "retained_indices": ["docs-v1"],
        "check_record": CHECK_STDOUT,
    }


def test_upgrade_to_a_new_version_rebuilds_only_the_standby_slot():
    before = evaluate(with_values(pin="v1", slots={"blue": "v1", "green": "v3"}, retain=[]))
    after = evaluate(with_values(pin="v2", slots={"blue": "v1", "green": "v2"}, retain=[]))

    assert "lockstep-index-v2" in after.resources and "lockstep-index-v2" not in before.resources
    assert "lockstep-index-v3" in before.resources and "lockstep-index-v3" not in after.resources
    changed = changed_resources(before, after)
    assert {"lockstep-green-model", "lockstep-green-config", "lockstep-green-policy-v2"} <= changed
    assert not {name for name in changed if name.startswith("lockstep-blue-")}
    assert "lockstep-index-v1" not in changed
    assert after.inputs("lockstep-cutover")["endpoint"] == "lockstep-dev-green"
    assert after.inputs("lockstep-cutover")["version"] == "v2"
    assert after.outputs["live_index"] == "docs-v2"


def test_rollback_to_the_standby_is_a_flip():
    before = evaluate(dev_values())  # pin v2 (green), standby v1 (blue)
    after = evaluate(with_values(pin="v1"))

    assert changed_resources(before, after) == {"lockstep-cutover", "lockstep-check"}
    cut = after.inputs("lockstep-cutover")
    assert (cut["version"], cut["index"], cut["endpoint"]) == ("v1", "docs-v1", "lockstep-dev-blue")
    for kind in (
        "aws:sagemaker/endpoint:Endpoint",
        "aws:sagemaker/model:Model",
        "aws:sagemaker/endpointConfiguration:EndpointConfiguration",
        INDEX,
    ):
        assert before.of_type(kind) == after.of_type(kind), kind


def test_rollback_to_a_version_in_neither_slot_replaces_only_the_standby():
    before = evaluate(with_values(pin="v3", slots={"blue": "v2", "green": "v3"}, retain=[]))
    # `lockstep pin v1` places v1 in the standby slot (blue) and pins it.
    after = evaluate(with_values(pin="v1", slots={"blue": "v1", "green": "v3"}, retain=[]))

    changed = changed_resources(before, after)
    assert {"lockstep-blue-model", "lockstep-blue-config", "lockstep-blue-endpoint"} <= changed
    assert not {name for name in changed if name.startswith("lockstep-green-")}
    assert "/v1/" in after.inputs("lockstep-blue-model")["primaryContainer"]["modelDataUrl"]
    assert after.inputs("lockstep-cutover")["endpoint"] == "lockstep-dev-blue"


@pytest.mark.parametrize("retain, kept", [([], False), (["v3"], True)])
def test_a_dropped_version_leaves_the_graph_only_when_not_retained(retain, kept):
    evaluate(with_values(pin="v2", slots={"blue": "v3", "green": "v2"}, retain=[]))
    after = evaluate(with_values(pin="v2", slots={"blue": "v1", "green": "v2"}, retain=retain))

    assert ("lockstep-index-v3" in after.resources) is kept
    assert ("lockstep-artifacts-v3" in after.resources) is kept
    assert after.outputs["retained_indices"] == (["docs-v3"] if kept else [])


def test_text_settings_are_read_as_plain_strings():
    run = evaluate(with_values(pointerParameter="/acme/dev/live-pointer", promotedFrom="staging"))
    assert run.inputs("lockstep-cutover")["pointer"] == "/acme/dev/live-pointer"
    assert run.inputs("lockstep-check")["promotedFrom"] == "staging"


def test_check_triggers_follow_the_pin_and_nothing_else():
    v2 = evaluate(dev_values()).inputs("lockstep-check")["triggers"]
    v2_again = evaluate(dev_values()).inputs("lockstep-check")["triggers"]
    v1 = evaluate(with_values(pin="v1")).inputs("lockstep-check")["triggers"]

    assert v2 == v2_again
    assert v1 != v2
    blue_config = evaluate(with_values(pin="v1")).inputs("lockstep-blue-config")["name"]
    assert v1[0] == "v1" and "docs-v1" in v1 and blue_config in v1 and blue_config.startswith("lockstep-dev-blue-v1-")


def test_preview_declares_the_same_graph():
    applied = evaluate(dev_values())
    previewed = evaluate(dev_values(), preview=True)
    assert {n: r["type"] for n, r in previewed.resources.items()} == {
        n: r["type"] for n, r in applied.resources.items()
    }
    assert previewed.inputs("lockstep-cutover")["version"] == "v2"


# ------------------------------------------------------------------------------ posture, secrets


def test_artifact_bucket_is_private_versioned_encrypted_and_tls_only():
    run = evaluate(dev_values())
    bucket = run.inputs("lockstep-artifacts-bucket")
    assert bucket["bucket"] == "acme-lockstep-dev-artifacts"
    assert run.inputs("lockstep-artifacts-versioning")["versioningConfiguration"]["status"] == "Enabled"
    rule = run.inputs("lockstep-artifacts-encryption")["rules"][0]
    assert rule["applyServerSideEncryptionByDefault"]["sseAlgorithm"] in {"AES256", "aws:kms"}
    block = run.inputs("lockstep-artifacts-public-access")
    assert all(
        block[key] is True
        for key in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    )
    assert run.inputs("lockstep-artifacts-ownership")["rule"]["objectOwnership"] == "BucketOwnerEnforced"
    policy = json.loads(run.inputs("lockstep-artifacts-tls-only")["policy"])
    (statement,) = policy["Statement"]
    assert statement["Effect"] == "Deny" and statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert "arn:aws:s3:::acme-lockstep-dev-artifacts/*" in statement["Resource"]


def test_execution_role_reads_only_its_versions_artifacts():
    run = evaluate(dev_values())
    trust = json.loads(run.inputs("lockstep-green-role")["assumeRolePolicy"])
    assert trust["Statement"][0]["Principal"] == {"Service": "sagemaker.amazonaws.com"}

    statements = {s["Sid"]: s for s in json.loads(run.inputs("lockstep-green-policy-v2")["policy"])["Statement"]}
    s3_read = statements["ReadThisVersionsArtifact"]
    assert s3_read["Action"] == "s3:GetObject"
    assert s3_read["Resource"] == "arn:aws:s3:::acme-lockstep-dev-artifacts/models/hashgram/v2/*"
    assert all(
        "s3:" not in json.dumps(s["Action"]) for sid, s in statements.items() if sid != "ReadThisVersionsArtifact"
    )
    assert statements["PullServingImage"]["Resource"] == "arn:aws:ecr:eu-west-1:123456789012:repository/lockstep-serve"
    assert statements["EcrLogin"]["Action"] == "ecr:GetAuthorizationToken"
    assert statements["WriteEndpointLogs"]["Resource"] == (
        f"arn:aws:logs:eu-west-1:{ACCOUNT}:log-group:/aws/sagemaker/Endpoints/lockstep-dev-green*"
    )
    blue = json.loads(run.inputs("lockstep-blue-policy-v1")["policy"])["Statement"][0]
    assert blue["Resource"].endswith("/models/hashgram/v1/*")


def test_a_stack_outside_the_aws_partition_gets_arns_of_its_own_partition():
    """A policy naming `arn:aws:` in China or GovCloud matches nothing: the TLS-only deny would
    guard nothing and the execution role could read nothing."""
    region = "cn-north-1"
    values = dev_values()
    values["aws:region"] = values["lockstep:region"] = region
    values["lockstep:opensearch"] = {
        **values["lockstep:opensearch"],
        "url": f"https://search-acme-dev-docs.{region}.es.amazonaws.com.cn",
        "region": region,
    }
    endpoints = values["lockstep:endpoints"]
    values["lockstep:endpoints"] = {**endpoints, "imageUri": f"123456789012.dkr.ecr.{region}.amazonaws.com.cn/serve:1"}
    run = evaluate(values)

    tls = json.loads(run.inputs("lockstep-artifacts-tls-only")["policy"])["Statement"][0]["Resource"]
    assert tls == ["arn:aws-cn:s3:::acme-lockstep-dev-artifacts", "arn:aws-cn:s3:::acme-lockstep-dev-artifacts/*"]
    role = json.loads(run.inputs("lockstep-green-policy-v2")["policy"])["Statement"]
    arns = [arn for s in role for arn in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])]
    assert [arn.split(":")[1] for arn in arns if arn != "*"] == ["aws-cn"] * (len(arns) - 1)


def test_the_basic_auth_password_is_no_resource_input_and_is_required_as_provider_config():
    """Issue 24: the password is the lockstep provider's configuration (its Configure reads the
    secret `lockstep:opensearchPassword`), so rotating it diffs no resource."""
    password = "s3cr3t-Pa55"
    opensearch = {**dev_values()["lockstep:opensearch"], "auth": "basic", "username": "lockstep"}
    run = evaluate(with_values(opensearch=opensearch), secrets={"lockstep:opensearchPassword": password})
    assert run.resources and not [
        n for n, r in run.resources.items() if password in json.dumps(r["inputs"], default=str)
    ]
    assert not [n for n, r in run.resources.items() if "opensearchPassword" in r["inputs"]]

    with pytest.raises(Exception, match="lockstep:opensearchPassword: is required when opensearch.auth is basic"):
        evaluate(with_values(opensearch=opensearch))


# ---------------------------------------------------------------------------------- bad config


def test_the_embedded_stack_declares_the_same_release_with_lockstep_leaves_and_no_aws_resource():
    values = {
        f"lockstep:{k}": v
        for k, v in {
            "pin": "v1",
            "slots": {"blue": "v1", "green": "v2"},
            "artifacts": {"bucket": "lockstep-local-artifacts"},
            "corpus": {"bucket": "lockstep-local-corpus"},
            "endpoints": {"backend": "local"},
            "derived": [{"name": "related", "kind": "related-documents", "table": "lockstep-local-related"}],
        }.items()
    }
    run = evaluate(values, stack="local")

    types = {r["type"] for r in run.resources.values()}
    assert not [t for t in types if t.startswith("aws:")]
    assert {INDEX, CUTOVER, CHECK, "lockstep:index:DerivedRepair"} <= types
    assert set(run.of_type("lockstep:embedded:Artifact")) == {"lockstep-artifacts-v1", "lockstep-artifacts-v2"}
    slots = run.of_type("lockstep:embedded:EndpointSlot")
    assert {s["slot"]: s["version"] for s in slots.values()} == {"blue": "v1", "green": "v2"}
    assert run.inputs("lockstep-derived-related")["name"] == "lockstep-local-related"
    cutover = run.inputs("lockstep-cutover")
    assert (cutover["version"], cutover["endpoint"]) == ("v1", "lockstep-local-blue")
    assert run.outputs["live_index"] == "docs-v1" and run.outputs["check_record"] == CHECK_STDOUT


def test_an_embedded_rollback_to_the_standby_is_a_flip():
    values = {
        "lockstep:pin": "v2",
        "lockstep:slots": {"blue": "v1", "green": "v2"},
        "lockstep:artifacts": {"bucket": "lockstep-local-artifacts"},
        "lockstep:corpus": {"bucket": "lockstep-local-corpus"},
        "lockstep:endpoints": {"backend": "local"},
    }
    before = evaluate(values, stack="local")
    after = evaluate({**values, "lockstep:pin": "v1"}, stack="local")
    assert changed_resources(before, after) == {"lockstep-cutover", "lockstep-check"}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"pin": "v3"}, "lockstep:pin: 'v3' is in neither slot"),
        ({"slots": {"blue": "v9", "green": "v2"}}, "lockstep:slots: version 'v9' is not in the catalog"),
        ({"retain": ["latest"]}, "lockstep:retain: version 'latest' is not in the catalog"),
        ({"endpoints": {"backend": "sagemaker"}}, "lockstep:endpoints: imageUri is required"),
        ({"opensearch": {"engine": "lucene", "indexPrefix": "docs"}}, "lockstep:opensearch.url: is required"),
    ],
)
def test_bad_config_fails_evaluation_with_one_line_naming_the_key(changes, message):
    with pytest.raises(pulumi.RunError) as failure:
        evaluate(with_values(**changes))
    text = str(failure.value)
    assert text.startswith(message), text
    assert "\n" not in text
