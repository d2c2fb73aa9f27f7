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

from lockstep import config, up
from lockstep.errors import ConfigError
from lockstep.ops import artifacts as ops_artifacts
from lockstep.ops import clients
from lockstep.ops import endpoints as ops_endpoints
from tests.pulumi_harness import CaptureMocks, run_mocked
from tests.test_program import changed_resources, dev_values, evaluate, with_values

ENDPOINT = "aws:sagemaker/endpoint:Endpoint"
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
OBJECT = "aws:s3/bucketObjectv2:BucketObjectv2"
ARTIFACT = "lockstep:embedded:Artifact"
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
            "delete_before_replace": request.deleteBeforeReplace,
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
    assert [a["alarmName"] for a in rollback] == [
        "lockstep-dev-green-5xx",
        "lockstep-dev-green-latency",
        "lockstep-dev-green-rollback-alarms",
    ]


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


# ----------------------------- issue 24 (9): editing rollbackAlarms updates, never replaces


def test_editing_rollback_alarms_updates_the_composite_alarm_and_no_endpoint(options):
    """The endpoint's alarm list is forced-new in the aws provider; 302bdd0 put `rollbackAlarms` in it,
    so an edit replaced a fixed-name endpoint (create-before-delete: "Cannot create already existing
    endpoint"). Now the list is fixed per endpoint and the edit is an in-place update of a composite alarm."""
    before = evaluate(dev_values())
    after = evaluate(with_values(endpoints=deployment(rollbackAlarms=["team-p99", "team-errors"])))

    changed = changed_resources(before, after)
    assert not {name for name in changed if before.resources[name]["type"].startswith("aws:sagemaker/")}
    assert before.of_type(ENDPOINT) == after.of_type(ENDPOINT)
    assert {"lockstep-green-alarm-config", "lockstep-blue-alarm-config"} <= changed
    composite = after.inputs("lockstep-green-alarm-config")
    assert composite["alarmName"] == before.inputs("lockstep-green-alarm-config")["alarmName"]  # same alarm
    assert composite["alarmRule"] == 'ALARM("team-p99") OR ALARM("team-errors")'
    assert before.inputs("lockstep-green-alarm-config")["alarmRule"] == "FALSE"
    # Should anything force a replacement of a fixed-name endpoint, it deletes first.
    assert options["lockstep-green-endpoint"]["delete_before_replace"] is True


# ------------------------------------------- issue 24 (5): names SageMaker accepts, derived


def test_every_sagemaker_name_is_valid_and_deterministic():
    """302bdd0 named the endpoint `<prefix>-<stack>-<slot>` whatever the stack (75 characters with `_`
    and `.` here) and left models and configurations to auto-naming from the component's name."""
    stack = "team_a.eu-west-1.production-candidate-with-a-long-name"
    first = evaluate(with_values(namePrefix="acme-search-platform"), stack=stack)
    again = evaluate(with_values(namePrefix="acme-search-platform"), stack=stack)
    named = {
        name: resource["inputs"]["name"]
        for name, resource in first.resources.items()
        if resource["type"].startswith("aws:sagemaker/")
    }
    assert len(named) == 6  # endpoint, configuration and model of each slot
    for name in named.values():
        assert len(name) <= 63 and ops_endpoints.SAGEMAKER_NAME.match(name), name
    assert named == {name: again.inputs(name)["name"] for name in named}
    assert named["lockstep-green-endpoint"].startswith("acme-search-platform-team-a-eu-west-1-")
    assert ops_endpoints.sagemaker_name("acme", "dev", "green") == "acme-dev-green"  # a valid name stays as it reads
    # The ops layer (the check, the cutover) names the same endpoint the program declares.
    settings = settings_with().model_copy(update={"stack": stack, "name_prefix": "acme-search-platform"})
    assert ops_endpoints.endpoint_name(settings, "green") == named["lockstep-green-endpoint"]


def test_a_new_image_replaces_model_and_configuration_under_new_names_and_retains_the_old(options):
    before = evaluate(dev_values())
    image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/lockstep-serve:0.2.0"
    after = evaluate(with_values(endpoints={**dev_values()["lockstep:endpoints"], "imageUri": image}))
    for part in ("model", "config"):
        assert before.inputs(f"lockstep-green-{part}")["name"] != after.inputs(f"lockstep-green-{part}")["name"]
        # Retained: after a rollback the endpoint still runs on the old one (issue 24, point 2).
        assert options[f"lockstep-green-{part}"]["retain_on_delete"] is True
    assert (
        after.inputs("lockstep-green-endpoint")["endpointConfigName"] == after.inputs("lockstep-green-config")["name"]
    )


# --------------------------- issue 24 (8): autoRevert is refused where nothing can act on it


def test_auto_revert_is_refused_under_a_plain_pulumi_up_and_accepted_under_lockstep_up(monkeypatch):
    """Only `lockstep up` runs the second update that reverts; 302bdd0 accepted autoRevert everywhere."""
    monkeypatch.delenv(up.AUTO_REVERT_ACTOR, raising=False)
    with pytest.raises(Exception, match=r"lockstep:autoRevert: only `lockstep up --stack dev` acts on it"):
        evaluate(with_values(autoRevert=True))
    assert evaluate(with_values(autoRevert=True), preview=True).resources  # a preview deploys nothing
    monkeypatch.setenv(up.AUTO_REVERT_ACTOR, "lockstep up")  # what `lockstep up` sets while it runs
    assert evaluate(with_values(autoRevert=True)).resources


# ---------------------------------------- issue 24 (3): adopting a retained artifact is no import


def test_no_artifact_is_an_aws_import_and_each_is_a_lockstep_artifact(options):
    """302bdd0 imported a stored object as an `aws:s3/bucketObjectv2` with the id `bucket/key` (the
    provider's id is the key): an import-replacement and a delete of every object the stack created."""
    run = evaluate(with_values(pin="v3", slots={"blue": "v3", "green": "v2"}, retain=[]))
    assert not any(seen["import_id"] for seen in options.values())
    assert not run.of_type(OBJECT)
    artifacts = run.of_type(ARTIFACT)
    assert set(artifacts) == {"lockstep-artifacts-v2", "lockstep-artifacts-v3"}
    v3 = config.load_catalog().get("v3")
    assert (artifacts["lockstep-artifacts-v3"]["key"], artifacts["lockstep-artifacts-v3"]["artifactSha256"]) == (
        v3.artifact_key,
        v3.artifact_sha256,
    )
    # The profile the Artifact's S3 client uploads with is the provider's configuration, not an input.
    profiled = {**with_values(pin="v3", slots={"blue": "v3", "green": "v2"}), "aws:profile": "deployer"}
    assert "awsProfile" not in evaluate({**profiled, "lockstep:awsProfile": "deployer"}).inputs("lockstep-artifacts-v3")


def test_the_artifact_adopts_a_retained_object_without_a_build_and_builds_a_missing_one(servers, monkeypatch):
    """The Artifact's create (what the provider runs under the engine) against S3 on moto: a version whose
    object was retained in the bucket is adopted as it is; one that is absent is built and uploaded."""
    from components.providers.embedded import ArtifactHandler
    from components.providers.resources import typed_inputs

    catalog = config.load_catalog()
    settings = settings_with().model_copy(
        update={"artifacts": config.ArtifactSettings(bucket=f"lockstep-adopt-{uuid.uuid4().hex[:8]}")}
    )
    s3 = clients.aws_for(settings, "s3")
    ops_artifacts.ensure_bucket(s3, settings.artifacts.bucket)
    retained = ops_artifacts.upload_artifact(
        s3, settings.artifacts.bucket, catalog.get("v3"), ops_artifacts.verified_build(catalog.get("v3"))
    )
    built: list[str] = []
    real_build = ops_artifacts.verified_build
    monkeypatch.setattr(ops_artifacts, "verified_build", lambda entry: built.append(entry.version) or real_build(entry))

    def props(version: str) -> dict:
        entry = catalog.get(version)
        return {
            **typed_inputs(ArtifactHandler, settings, entry),
            "bucket": settings.artifacts.bucket,
            "key": entry.artifact_key,
        }

    handler = ArtifactHandler()
    assert (
        handler.create("urn:v3", props("v3"))[0] == f"s3://{settings.artifacts.bucket}/{catalog.get('v3').artifact_key}"
    )
    assert built == []  # adopted: no build
    assert ops_artifacts.published_version(s3, settings.artifacts.bucket, catalog.get("v3")) == retained
    handler.create("urn:v2", props("v2"))
    assert built == ["v2"] and ops_artifacts.published_version(s3, settings.artifacts.bucket, catalog.get("v2"))
    assert "kept artifact" in (handler.delete("urn:v3", "s3://x", props("v3")) or "")


# --------------------------------------------- issue 24 (4): destroy finishes and keeps the data


def test_destroy_keeps_the_bucket_its_posture_and_the_derived_tables(options):
    """On AWS a versioned bucket holding objects, or a table with deletion protection, fails a delete:
    302bdd0's destroy stopped there. Retained, the engine leaves them (shown `[retain]`)."""
    stores = [{"name": "related", "kind": "related-documents", "table": "lockstep-dev-related"}]
    run = evaluate(with_values(derived=stores))
    kept = [name for name, inputs in run.resources.items() if inputs["type"].startswith("aws:s3/")]
    assert set(kept) == {
        "lockstep-artifacts-bucket",
        "lockstep-artifacts-versioning",
        "lockstep-artifacts-encryption",
        "lockstep-artifacts-public-access",
        "lockstep-artifacts-ownership",
        "lockstep-artifacts-tls-only",
    }
    assert all(options[name]["retain_on_delete"] for name in kept)
    [table] = run.of_type("aws:dynamodb/table:Table")
    assert options[table]["retain_on_delete"] and run.inputs(table)["deletionProtectionEnabled"] is True
    # What destroy deletes for real: the slots' SageMaker parts other than models and configurations.
    assert not options["lockstep-green-endpoint"]["retain_on_delete"]
    assert not options["lockstep-green-role"]["retain_on_delete"]


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
        "arn:aws:cloudwatch:eu-west-1:123456789012:alarm:lockstep-dev-blue-rollback-alarms",
    ]


# --------------------------------------------------------------------------------- region, secrets


def test_lockstep_region_and_aws_region_must_agree(tmp_path):
    import shutil

    stacks = tmp_path / "stacks"
    shutil.copytree(config.STACKS_DIR, stacks)
    path = stacks / "Pulumi.dev.yaml"
    path.write_text(path.read_text().replace("  lockstep:region: eu-west-1\n", "  lockstep:region: us-east-1\n"))
    with pytest.raises(ConfigError, match=r"lockstep:region is 'us-east-1' but aws:region is 'eu-west-1'"):
        config.load_stack("dev", stacks)
    with pytest.raises(Exception, match=r"lockstep:region is 'us-east-1' but aws:region is 'eu-west-1'"):
        evaluate(with_values(region="us-east-1"))


# ------------------- issue 24 (1): the region and the profile are the provider's configuration only


def test_an_aws_stack_names_its_region_and_profile_in_lockstep_s_provider_configuration_not_in_inputs():
    """302bdd0 (and the first pass of issue 24) sent `region` and `awsProfile` to every lockstep resource
    as inputs. They are the provider's configuration now: the program refuses, in one line, an AWS stack
    whose `lockstep:region`/`lockstep:awsProfile` would put lockstep's clients elsewhere than the aws
    provider deploys; no resource carries them."""
    without_region = {key: value for key, value in dev_values().items() if key != "lockstep:region"}
    with pytest.raises(
        Exception, match=r"lockstep:region: lockstep's provider must work in the stack's region eu-west-1"
    ):
        evaluate(without_region)
    with pytest.raises(Exception, match=r"run `pulumi config set lockstep:awsProfile deployer`"):
        evaluate({**dev_values(), "aws:profile": "deployer"})
    run = evaluate({**dev_values(), "aws:profile": "deployer", "lockstep:awsProfile": "deployer"})
    lockstep_resources = {name: r["inputs"] for name, r in run.resources.items() if r["type"].startswith("lockstep:")}
    assert {"lockstep-cutover", "lockstep-check", "lockstep-index-v2"} <= set(lockstep_resources)
    for name, inputs in lockstep_resources.items():
        assert not {"region", "awsProfile"} & set(inputs), name


def test_the_provider_reads_region_and_profile_from_its_configuration_and_old_inputs_are_no_change():
    """Inside the provider a resource's settings take the configured region and profile; state an
    earlier lockstep wrote with `region`/`awsProfile` inputs (stateVersion 1) diffs as no change."""
    from components.providers.opensearch import CutoverHandler
    from components.providers.provider import plain_map, wire_map
    from components.providers.resources import CutoverArgs

    settings = settings_with()
    catalog = config.load_catalog()
    news = plain_map(wire_map(CutoverArgs(settings, catalog.get("v2"), "lockstep-dev-green").inputs()))
    assert not {"region", "awsProfile"} & set(news)
    handler = CutoverHandler()
    try:
        clients.configure(clients.Credentials(region="ap-south-1", profile="deployer"))
        configured = handler.settings_of(news)
        assert (configured.region, configured.aws_profile) == ("ap-south-1", "deployer")
    finally:
        clients.configure(clients.Credentials())
    assert handler.settings_of(news).region == "us-east-1"  # unconfigured: the CLI's default
    old_state = {**news, "region": "eu-west-1", "awsProfile": "deployer", "stateVersion": 1}
    assert handler.diff(old_state, news).changes is False
    assert not {"region", "awsProfile"} & set(handler.migrate(old_state))


def test_the_aws_profile_reaches_the_clis_boto3_sessions(monkeypatch):
    """The CLI reads `aws:profile` from the stack file; its sessions use it (issue 18)."""
    document = {"config": {**dev_values(), "aws:profile": "deployer"}}
    assert config.settings_from_document("dev", document, config.load_catalog(), "dev").aws_profile == "deployer"
    made: list[dict] = []

    class Session:
        def __init__(self, **kwargs):
            made.append(kwargs)

        def client(self, service, **kwargs):
            return (service, kwargs["region_name"], kwargs["endpoint_url"])

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # real AWS: no emulator's test credentials
    monkeypatch.setattr(clients.boto3.session, "Session", Session)
    clients.configure(clients.Credentials())  # no client cached from before
    try:
        settings = settings_with().model_copy(update={"aws_profile": "deployer"})
        assert clients.aws_for(settings, "ssm") == ("ssm", "eu-west-1", None)
        assert made == [{"profile_name": "deployer", "region_name": "eu-west-1"}]
    finally:
        clients.configure(clients.Credentials())


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


def test_the_opensearch_password_is_a_secret_of_the_provider_configuration_not_an_input():
    from components import plugin

    schema = plugin.schema()
    assert schema["provider"]["inputProperties"]["opensearchPassword"].get("secret") is True
    assert schema["config"]["variables"]["opensearchPassword"].get("secret") is True
    for resource in schema["resources"].values():
        assert "opensearchPassword" not in resource.get("inputProperties", {})


def test_a_domain_name_without_a_url_is_looked_up_and_a_missing_domain_is_one_line(servers, monkeypatch):
    """`opensearch.domainName` was read and unused; without a url lockstep now takes the domain's endpoint
    from DescribeDomain (the provider and the CLI alike; here against moto's OpenSearch Service)."""
    from lockstep.errors import UsageError

    monkeypatch.delenv("OPENSEARCH_URL", raising=False)  # the embedded node's address would win
    clients.configure(clients.Credentials())  # no domain looked up before
    name = f"lockstep-{uuid.uuid4().hex[:8]}"
    described = clients.aws("opensearch", "eu-west-1").create_domain(DomainName=name)["DomainStatus"]
    search = config.OpenSearchSettings(domainName=name, region="eu-west-1", auth="sigv4")
    assert clients.opensearch_url(search) == f"https://{described['Endpoint']}"
    with pytest.raises(UsageError) as missing:
        clients.opensearch_url(search.model_copy(update={"domain_name": f"{name}-gone"}))
    assert str(missing.value).startswith(
        f"opensearch.domainName: no OpenSearch Service domain {name}-gone in eu-west-1"
    )
    # An AWS stack may name the domain instead of its endpoint.
    values = with_values(opensearch={"domainName": name, "auth": "sigv4"})
    assert evaluate(values).inputs("lockstep-index-v2")["opensearch"]["domainName"] == name


# ---------------------------------------------- issue 24 (6): inputs that take outputs


def own_outputs_program(plain: bool):
    """A program with its own OpenSearch domain, artifact bucket and ECR repository, passing their outputs
    (or, `plain`, the same values as literals) to the ModelRelease."""
    import pulumi
    import pulumi_aws as aws

    from components.model_release import ModelRelease, release_args

    def body():
        args = release_args(settings_with(), config.load_catalog())
        if plain:
            url, bucket, image = OWN_URL, OWN_BUCKET, f"{OWN_REPOSITORY}:0.3.0"
        else:
            domain = aws.opensearch.Domain("search", domain_name="acme-docs")
            url = domain.endpoint.apply(lambda endpoint: f"https://{endpoint}")
            bucket = aws.s3.Bucket("own-artifacts", bucket=OWN_BUCKET).bucket
            image = aws.ecr.Repository("serve").repository_url.apply(lambda repository: f"{repository}:0.3.0")
        args["opensearch"]["url"] = url
        args["artifacts"]["bucket"] = bucket
        args["endpoints"]["image_uri"] = image
        release = ModelRelease("lockstep", args)
        return pulumi.Output.all(live_index=release.live_index)

    return body


OWN_URL = "https://search-acme-docs-abc123.eu-west-1.es.amazonaws.com"
OWN_BUCKET = "acme-own-artifacts"
OWN_REPOSITORY = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/acme-serve"
AWS_CONFIG = {"aws:region": "eu-west-1", "lockstep:region": "eu-west-1"}


class DomainMocks(CaptureMocks):
    """The capture mocks plus what a program's own domain and image repository output."""

    def new_resource(self, args):
        name, state = super().new_resource(args)
        if args.typ == "aws:opensearch/domain:Domain":
            state["endpoint"] = OWN_URL.removeprefix("https://")
        if args.typ == "aws:ecr/repository:Repository":
            state["repositoryUrl"] = OWN_REPOSITORY
        return name, state


def test_a_program_passes_its_own_endpoint_bucket_and_image_as_outputs():
    """302bdd0 refused an output for every ModelRelease input. Where things are (the bucket, the
    OpenSearch endpoint, the image, …) now takes outputs: the resources get the resolved values,
    exactly what the same values given as literals give, and no placeholder reaches any of them."""
    given = run_mocked(own_outputs_program(plain=False), stack="dev", mocks=DomainMocks(), config=AWS_CONFIG)
    literal = run_mocked(own_outputs_program(plain=True), stack="dev", config=AWS_CONFIG)
    own = {"search", "own-artifacts", "serve"}
    assert set(given.resources) - own == set(literal.resources)
    for name, resource in literal.resources.items():
        assert given.inputs(name) == resource["inputs"], name
    assert "output-pending" not in json.dumps(given.resources)
    assert given.inputs("lockstep-index-v2")["opensearch"]["url"] == OWN_URL
    assert given.inputs("lockstep-artifacts-bucket")["bucket"] == OWN_BUCKET
    assert given.inputs("lockstep-artifacts-v2")["bucket"] == OWN_BUCKET
    container = given.inputs("lockstep-green-model")["primaryContainer"]
    assert container["image"] == f"{OWN_REPOSITORY}:0.3.0"
    assert container["modelDataUrl"].startswith(f"s3://{OWN_BUCKET}/models/hashgram/v2/")
    statements = {s["Sid"]: s for s in json.loads(given.inputs("lockstep-green-policy-v2")["policy"])["Statement"]}
    assert statements["PullServingImage"]["Resource"] == "arn:aws:ecr:eu-west-1:123456789012:repository/acme-serve"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (("pin",), "lockstep:pin: must be a plain value known when the program runs"),
        (("slots", "blue"), "lockstep:slots.blue: must be a plain value known when the program runs"),
        (("retain",), "lockstep:retain: must be a plain value known when the program runs"),
        (("endpoints", "deployment", "wait_seconds"), "lockstep:endpoints.deployment.waitSeconds: must be a plain"),
    ],
)
def test_an_input_that_decides_the_graph_given_as_an_output_is_refused_in_one_line(path, message):
    import pulumi

    from components.model_release import ModelRelease, release_args

    def body():
        args = release_args(settings_with(), config.load_catalog())
        target = args
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = pulumi.Output.from_input(target.get(path[-1]) or 600)
        ModelRelease("lockstep", args)

    with pytest.raises(ConfigError) as refused:
        run_mocked(body, stack="dev", config=AWS_CONFIG)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_an_output_that_resolves_to_a_bad_value_fails_with_the_same_one_line_message():
    """Validated again when the output resolves: the placeholder never hides a bad value."""
    import pulumi
    import pulumi_aws as aws

    from components.model_release import ModelRelease, release_args

    def body():
        args = release_args(settings_with(), config.load_catalog())
        args["artifacts"]["bucket"] = aws.s3.Bucket("own-artifacts", bucket="Not_A_Bucket").bucket
        release = ModelRelease("lockstep", args)
        return pulumi.Output.all(live_index=release.live_index)

    with pytest.raises(ConfigError) as refused:
        run_mocked(body, stack="dev", config=AWS_CONFIG)
    assert str(refused.value).startswith("lockstep:artifacts.bucket: is not a valid S3 bucket name")
