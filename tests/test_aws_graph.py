"""What a real `pulumi up` against AWS would get wrong (issue 18), pinned on the resource graph.

SDK mock runtime (no engine, no account): the program is evaluated per scenario as in
tests/test_program.py, and each registration's resource options (retainOnDelete, customTimeouts,
protect) are recorded from the request the SDK sends to the monitor.
"""

from __future__ import annotations

import json
import uuid

import pytest
from pulumi.runtime import mocks as sdk_mocks

from components import artifact_store
from lockstep import config
from lockstep.errors import ConfigError
from lockstep.ops import artifacts as ops_artifacts
from lockstep.ops import clients
from lockstep.ops import endpoints as ops_endpoints
from tests.test_program import changed_resources, dev_values, evaluate, with_values

ENDPOINT = "aws:sagemaker/endpoint:Endpoint"
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
OBJECT = "aws:s3/bucketObjectv2:BucketObjectv2"
POLICY = "aws:iam/rolePolicy:RolePolicy"


@pytest.fixture
def options(monkeypatch) -> dict[str, dict]:
    """name -> the resource options the SDK registered it with."""
    seen: dict[str, dict] = {}
    register = sdk_mocks.MockMonitor.RegisterResource

    def recording(self, request):
        timeouts = request.customTimeouts
        seen[request.name] = {
            "retain_on_delete": request.retainOnDelete,
            "protect": request.protect,
            "timeouts": (timeouts.create, timeouts.update, timeouts.delete),
            "import_id": request.importId,
        }
        return register(self, request)

    monkeypatch.setattr(sdk_mocks.MockMonitor, "RegisterResource", recording)
    return seen


def deployment(**changes) -> dict:
    endpoints = dev_values()["lockstep:endpoints"]
    endpoints["deployment"] = {**endpoints["deployment"], **changes}
    return endpoints


# ------------------------------------------------------------------- defect 3: deployment limits


def settings_with(**endpoints) -> config.StackSettings:
    values = {
        key.removeprefix("lockstep:"): value for key, value in dev_values().items() if key.startswith("lockstep:")
    }
    values["endpoints"] = {**values["endpoints"], **endpoints}
    values["region"] = dev_values()["aws:region"]
    return config.settings_from_config("dev", values, config.load_catalog())


@pytest.mark.parametrize("routing", ["CANARY", "LINEAR"])
def test_traffic_shifting_with_one_instance_is_refused_in_one_line(routing):
    with pytest.raises(ValueError) as caught:
        settings_with(instanceCount=1, deployment={"trafficRouting": routing, "canaryPercent": 20})
    message = config.describe_validation_error(caught.value)
    assert message.startswith(f"endpoints: deployment.trafficRouting: {routing} shifts part of the fleet")
    assert "instanceCount to 2" in message and "\n" not in message


def test_waits_longer_than_the_providers_endpoint_wait_are_refused():
    with pytest.raises(ValueError) as caught:
        settings_with(
            instanceCount=4,
            deployment={"trafficRouting": "LINEAR", "canaryPercent": 20, "waitSeconds": 600},
        )
    message = config.describe_validation_error(caught.value)
    assert "an update can take 4200 s" in message and "fixed 3600 s wait" in message
    with pytest.raises(ValueError, match="less than or equal to 3600"):
        settings_with(deployment={"terminationWaitSeconds": 4000})


def test_the_cli_refuses_a_canary_stack_of_one_instance_with_exit_2(tmp_path):
    import shutil
    import subprocess
    import sys

    stacks = tmp_path / "stacks"
    shutil.copytree(config.STACKS_DIR, stacks)
    path = stacks / "Pulumi.dev.yaml"
    path.write_text(path.read_text().replace("trafficRouting: ALL_AT_ONCE", "trafficRouting: CANARY"))
    result = subprocess.run(
        [sys.executable, "-m", "lockstep.cli", "plan", "--stack", "dev"],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "LOCKSTEP_STACKS_DIR": str(stacks)},
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "CANARY shifts part of the fleet" in lines[0]


def test_the_endpoints_custom_timeouts_come_from_the_deployment_config(options):
    evaluate(with_values(endpoints=deployment(waitSeconds=1200, terminationWaitSeconds=600)))
    # 900 s provisioning + 1 x 1200 s wait + 600 s termination wait = 2700 s = 45 minutes
    assert options["lockstep-green-endpoint"]["timeouts"] == ("45m", "45m", "20m")
    assert options["lockstep-blue-endpoint"]["timeouts"] == ("45m", "45m", "20m")


# ------------------------------------------------ defect 4: alarm edits never replace an endpoint


def test_the_rollback_alarms_are_declared_and_referenced_by_name():
    run = evaluate(dev_values())
    alarms = {inputs["name"]: inputs for inputs in run.of_type(ALARM).values()}
    assert set(alarms) == {f"lockstep-dev-{slot}-{kind}" for slot in ("blue", "green") for kind in ("5xx", "latency")}
    errors = alarms["lockstep-dev-green-5xx"]
    assert (errors["namespace"], errors["metricName"], errors["statistic"]) == (
        "AWS/SageMaker",
        "Invocation5XXErrors",
        "Sum",
    )
    assert errors["dimensions"] == {"EndpointName": "lockstep-dev-green", "VariantName": "primary"}
    latency = alarms["lockstep-dev-green-latency"]
    assert latency["threshold"] == 500 * 1000  # the dev stack's maxLatencyMs, ModelLatency in microseconds
    rollback = run.inputs("lockstep-green-endpoint")["deploymentConfig"]["autoRollbackConfiguration"]["alarms"]
    assert [a["alarmName"] for a in rollback] == ["lockstep-dev-green-5xx", "lockstep-dev-green-latency"]


def test_an_alarm_threshold_edit_changes_no_endpoint():
    before = evaluate(dev_values())
    after = evaluate(with_values(endpoints=deployment(alarms={"max5xxErrors": 20, "maxLatencyMs": 250})))

    changed = changed_resources(before, after)
    alarms = {
        f"lockstep-{slot}-alarm-{metric}"
        for slot in ("blue", "green")
        for metric in ("Invocation5XXErrors", "ModelLatency")
    }
    assert alarms <= changed
    assert not {name for name in changed if before.resources[name]["type"].startswith("aws:sagemaker/")}
    assert before.of_type(ENDPOINT) == after.of_type(ENDPOINT)
    assert after.inputs("lockstep-green-alarm-ModelLatency")["threshold"] == 250 * 1000


def test_the_endpoint_name_has_one_home_and_carries_the_project():
    run = evaluate(with_values(namePrefix="acme-search"))
    settings = settings_with()
    named = {inputs["name"] for inputs in run.of_type(ENDPOINT).values()}
    assert named == {"acme-search-dev-blue", "acme-search-dev-green"}
    prefixed = settings.model_copy(update={"name_prefix": "acme-search"})
    assert {ops_endpoints.endpoint_name(prefixed, slot) for slot in ("blue", "green")} == named
    assert prefixed.pointer_name == "/acme-search/dev/live"
    assert evaluate(dev_values()).outputs["live_endpoint"] == ops_endpoints.endpoint_name(settings, "green")


# ------------------------------------------------------- defect 7: artifacts retained on delete


def test_artifact_objects_are_retained_on_delete(options):
    evaluate(with_values(pin="v2", slots={"blue": "v3", "green": "v2"}, retain=[]))
    assert options["lockstep-artifacts-v3"]["retain_on_delete"] is True
    options.clear()
    after = evaluate(with_values(pin="v2", slots={"blue": "v1", "green": "v2"}, retain=[]))
    # v3 left the program: the engine deletes it, and retainOnDelete makes that delete leave the object.
    assert "lockstep-artifacts-v3" not in after.resources
    assert all(options[name]["retain_on_delete"] for name in after.of_type(OBJECT))


def test_a_dropped_version_pinned_again_adopts_its_retained_object_without_a_local_build(options, monkeypatch):
    """Defect 7's second half: v3 left the stack (its object retained in S3, on moto here) and comes back.
    The program adopts the object at its content-addressed key (an import, no source) instead of
    declaring a local build as its source; a version whose object is absent is still uploaded."""
    bucket = f"lockstep-retained-{uuid.uuid4().hex[:8]}"
    catalog = config.load_catalog()
    s3 = clients.aws("s3", dev_values()["aws:region"], embedded=False)
    ops_artifacts.ensure_bucket(s3, bucket)
    ops_artifacts.upload_artifact(s3, bucket, catalog.get("v3"), ops_artifacts.verified_build(catalog.get("v3")))
    built: list[str] = []
    real_artifact_file = artifact_store.artifact_file
    monkeypatch.setattr(
        artifact_store, "artifact_file", lambda entry, *a: built.append(entry.version) or real_artifact_file(entry, *a)
    )

    run = evaluate(with_values(pin="v3", slots={"blue": "v3", "green": "v2"}, retain=[], artifacts={"bucket": bucket}))
    assert "source" not in run.inputs("lockstep-artifacts-v3")
    assert options["lockstep-artifacts-v3"]["import_id"] == f"{bucket}/{catalog.get('v3').artifact_key}"
    assert built == ["v2"]  # only the version whose object is absent depends on a build
    assert "source" in run.inputs("lockstep-artifacts-v2") and not options["lockstep-artifacts-v2"]["import_id"]


# ---------------------------------------- defect 8: a slot's role may read both of its versions


def test_a_new_version_in_a_slot_adds_its_grant_and_keeps_the_old_one_until_the_end():
    before = evaluate(with_values(pin="v2", slots={"blue": "v1", "green": "v2"}, retain=[]))
    after = evaluate(with_values(pin="v2", slots={"blue": "v3", "green": "v2"}, retain=[]))

    def grants(run):
        return {
            name: json.loads(inputs["policy"])["Statement"][0]["Resource"]
            for name, inputs in run.of_type(POLICY).items()
            if name.startswith("lockstep-blue-")
        }

    assert grants(before) == {
        "lockstep-blue-policy-v1": "arn:aws:s3:::acme-lockstep-dev-artifacts/models/hashgram/v1/*"
    }
    assert grants(after) == {"lockstep-blue-policy-v3": "arn:aws:s3:::acme-lockstep-dev-artifacts/models/hashgram/v3/*"}
    # The v1 grant is never rewritten: it is deleted after the endpoint update, as a removed resource.
    assert "lockstep-blue-role" not in changed_resources(before, after)
    statements = {s["Sid"]: s for s in json.loads(after.inputs("lockstep-blue-policy-v3")["policy"])["Statement"]}
    assert statements["ReadRollbackAlarms"]["Resource"] == [
        "arn:aws:cloudwatch:eu-west-1:123456789012:alarm:lockstep-dev-blue-5xx",
        "arn:aws:cloudwatch:eu-west-1:123456789012:alarm:lockstep-dev-blue-latency",
    ]


# --------------------------------------------------------------------------------- region, secrets


def test_lockstep_region_and_aws_region_must_agree(tmp_path):
    import shutil

    stacks = tmp_path / "stacks"
    shutil.copytree(config.STACKS_DIR, stacks)
    path = stacks / "Pulumi.dev.yaml"
    path.write_text(
        path.read_text().replace("  aws:region: eu-west-1\n", "  aws:region: eu-west-1\n  lockstep:region: us-east-1\n")
    )
    with pytest.raises(ConfigError, match=r"lockstep:region is 'us-east-1' but aws:region is 'eu-west-1'"):
        config.load_stack("dev", stacks)
    with pytest.raises(Exception, match=r"lockstep:region is 'us-east-1' but aws:region is 'eu-west-1'"):
        evaluate(with_values(region="us-east-1"))


def test_the_aws_profile_reaches_the_resources_and_their_boto3_sessions(monkeypatch):
    """issue 18: the providers honour `aws:profile`, not only boto3's ambient chain."""
    run = evaluate({**dev_values(), "aws:profile": "deployer"})
    assert run.inputs("lockstep-cutover")["settings"]["awsProfile"] == "deployer"
    document = {"config": {**dev_values(), "aws:profile": "deployer"}}  # the CLI reads the stack file alike
    assert config.settings_from_document("dev", document, config.load_catalog(), "dev").aws_profile == "deployer"

    made: list[dict] = []

    class Session:
        def __init__(self, **kwargs):
            made.append(kwargs)

        def client(self, service, **kwargs):
            return (service, kwargs["region_name"], kwargs["endpoint_url"])

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # real AWS: no emulator's test credentials
    monkeypatch.setattr(clients.boto3.session, "Session", Session)
    clients._session_client.cache_clear()
    try:
        settings = settings_with().model_copy(update={"aws_profile": "deployer"})
        assert clients.aws_for(settings, "ssm") == ("ssm", "eu-west-1", None)
        assert made == [{"profile_name": "deployer"}]
    finally:
        clients._session_client.cache_clear()


def test_sigv4_signs_in_the_stacks_region():
    settings = settings_with()
    assert settings.opensearch.auth == "sigv4" and settings.opensearch.region == settings.region == "eu-west-1"
    values = {
        key.removeprefix("lockstep:"): value for key, value in dev_values().items() if key.startswith("lockstep:")
    }
    del values["opensearch"]["region"]
    values["region"] = "ap-south-1"
    resolved = config.settings_from_config("dev", values, config.load_catalog())
    assert resolved.opensearch.region == "ap-south-1"


def test_the_opensearch_password_is_a_secret_in_the_served_schema():
    from components import plugin

    inputs = plugin.schema()["resources"]["lockstep:index:ModelRelease"]["inputProperties"]
    assert inputs["opensearchPassword"].get("secret") is True
    assert not any(prop.get("secret") for name, prop in inputs.items() if name != "opensearchPassword")
