"""One blue/green slot: a SageMaker model of one version behind the slot's fixed endpoint name."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from components import deferred
from lockstep.config import CatalogEntry, DeploymentSettings, StackSettings
from lockstep.errors import ConfigError
from lockstep.ops.artifacts import artifact_uri
from lockstep.ops.clients import partition
from lockstep.ops.endpoints import endpoint_name, sagemaker_name

ECR_IMAGE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/(?P<repo>[a-z0-9._/-]+?)(?::[\w.-]+|@sha256:[0-9a-f]{64})?$"
)
# The variant every slot's endpoint configuration declares (the alarms' dimension).
VARIANT = "primary"


def ecr_repository_arn(image_uri: str) -> str:
    match = ECR_IMAGE.match(image_uri)
    if not match:
        raise ConfigError(
            f"lockstep:endpoints.imageUri: {image_uri!r} is not an ECR image "
            "(<account>.dkr.ecr.<region>.amazonaws.com/<repository>[:tag]); push the serving image to ECR"
        )
    region = match["region"]
    return f"arn:{partition(region)}:ecr:{region}:{match['account']}:repository/{match['repo']}"


def content_name(endpoint: str, version: str, *content: Any) -> str:
    """`<endpoint>-<version>-<8 hex of the content's sha256>`, valid for SageMaker (ops.endpoints.sagemaker_name)."""
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:8]
    return sagemaker_name(endpoint, version, digest)


def assume_role_policy() -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "sagemaker.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
    )


def execution_policy(
    *, bucket: str, entry: CatalogEntry, image_uri: str, region: str, account: str, endpoint: str, alarms: list[str]
) -> str:
    """Least privilege: this version's artifacts, this image's repository, this endpoint's logs and alarms."""
    arn = partition(region)
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "ReadThisVersionsArtifact",
                    "Effect": "Allow",
                    "Action": "s3:GetObject",
                    "Resource": f"arn:{arn}:s3:::{bucket}/models/{entry.model}/{entry.version}/*",
                },
                {"Sid": "EcrLogin", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
                {
                    "Sid": "PullServingImage",
                    "Effect": "Allow",
                    "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
                    "Resource": ecr_repository_arn(image_uri),
                },
                {
                    "Sid": "WriteEndpointLogs",
                    "Effect": "Allow",
                    "Action": [
                        "logs:CreateLogGroup",
                        "logs:CreateLogStream",
                        "logs:PutLogEvents",
                        "logs:DescribeLogStreams",
                    ],
                    "Resource": f"arn:{arn}:logs:{region}:{account}:log-group:/aws/sagemaker/Endpoints/{endpoint}*",
                },
                {
                    # SageMaker reads the rollback alarms with the execution role during an update.
                    "Sid": "ReadRollbackAlarms",
                    "Effect": "Allow",
                    "Action": "cloudwatch:DescribeAlarms",
                    "Resource": [f"arn:{arn}:cloudwatch:{region}:{account}:alarm:{alarm}" for alarm in alarms],
                },
            ],
        }
    )


def alarm_names(endpoint: str) -> dict[str, str]:
    """lockstep's rollback alarms of one endpoint, by metric. Their names never change, so editing a
    threshold updates the alarm in place and never touches the endpoint (whose alarm list would
    force its replacement)."""
    return {"Invocation5XXErrors": f"{endpoint}-5xx", "ModelLatency": f"{endpoint}-latency"}


def config_alarm_name(endpoint: str) -> str:
    """The composite alarm standing for `rollbackAlarms` (the config's alarms declared elsewhere)."""
    return f"{endpoint}-rollback-alarms"


def config_alarm_rule(deployment: DeploymentSettings) -> str:
    """In ALARM when any of `rollbackAlarms` is; `FALSE` (never) when there are none."""
    return " OR ".join(f'ALARM("{alarm}")' for alarm in deployment.rollback_alarms) or "FALSE"


def rollback_alarms(endpoint: str) -> list[str]:
    """The endpoint's auto-rollback alarm list: fixed per endpoint, so no config edit ever changes it
    (the aws provider replaces an endpoint whose alarm list changes). `rollbackAlarms` reach it through
    the composite alarm, whose rule an edit updates in place."""
    return [*alarm_names(endpoint).values(), config_alarm_name(endpoint)]


def described_alarms(endpoint: str, deployment: DeploymentSettings) -> list[str]:
    """Every alarm SageMaker may read during an update: the endpoint's list and what the composite names."""
    return [*rollback_alarms(endpoint), *deployment.rollback_alarms]


def deployment_config(deployment: DeploymentSettings, endpoint: str) -> Any:  # the provider's args dict
    """Blue/green update policy (SageMaker shifts traffic to the new fleet) plus alarm-driven auto-rollback."""
    routing: dict = {"type": deployment.traffic_routing, "wait_interval_in_seconds": deployment.wait_seconds}
    step = {"type": "CAPACITY_PERCENT", "value": deployment.canary_percent}
    if deployment.traffic_routing == "CANARY":
        routing["canary_size"] = step
    elif deployment.traffic_routing == "LINEAR":
        routing["linear_step_size"] = step
    alarms = rollback_alarms(endpoint)
    return {
        "blue_green_update_policy": {
            "traffic_routing_configuration": routing,
            "termination_wait_in_seconds": deployment.termination_wait_seconds,
        },
        "auto_rollback_configuration": {"alarms": [{"alarm_name": alarm} for alarm in alarms]},
    }


def endpoint_timeouts(deployment: DeploymentSettings) -> pulumi.CustomTimeouts:
    """How long the engine lets a create or update of the endpoint run: the deployment's longest time."""
    minutes = f"{math.ceil(deployment.seconds / 60)}m"
    return pulumi.CustomTimeouts(create=minutes, update=minutes, delete="20m")


def declare_alarms(name: str, endpoint: str, deployment: DeploymentSettings, parent: pulumi.Resource) -> list:
    """The CloudWatch alarms the endpoint rolls back on: server errors and model latency, thresholds from
    config, and the composite alarm of `rollbackAlarms` (its rule is updated in place on an edit)."""
    limits = deployment.alarms
    thresholds = {
        "Invocation5XXErrors": ("Sum", limits.max_5xx_errors),
        "ModelLatency": ("Average", limits.max_latency_ms * 1000),
    }
    return [
        aws.cloudwatch.MetricAlarm(
            f"{name}-alarm-{metric}",
            name=alarm,
            namespace="AWS/SageMaker",
            metric_name=metric,
            dimensions={"EndpointName": endpoint, "VariantName": VARIANT},
            statistic=thresholds[metric][0],
            threshold=thresholds[metric][1],  # ModelLatency is in microseconds
            comparison_operator="GreaterThanThreshold",
            period=limits.period_seconds,
            evaluation_periods=limits.evaluation_periods,
            treat_missing_data="notBreaching",
            alarm_description=f"lockstep: SageMaker rolls an update of {endpoint} back when this fires",
            opts=pulumi.ResourceOptions(parent=parent),
        )
        for metric, alarm in alarm_names(endpoint).items()
    ] + [
        aws.cloudwatch.CompositeAlarm(
            f"{name}-alarm-config",
            alarm_name=config_alarm_name(endpoint),
            alarm_rule=config_alarm_rule(deployment),
            alarm_description=f"lockstep: rollbackAlarms of {endpoint}; SageMaker rolls an update back when it fires",
            opts=pulumi.ResourceOptions(parent=parent),
        )
    ]


@dataclass
class EndpointSlotArgs:
    settings: StackSettings
    slot: str
    entry: CatalogEntry
    # The version's uploaded artifact: SageMaker reads it when the model is created.
    artifact: pulumi.Resource | None = None


class EndpointSlot(pulumi.ComponentResource):
    """Execution role, model, endpoint configuration, rollback alarms and the slot's endpoint.

    The endpoint's name is fixed per slot; a new version (or image, instance type or count) in the
    slot replaces the model and the configuration (named by content) and updates the endpoint in
    place through its blue/green policy. Replaced models and configurations are retained (see
    `require_serving`: the endpoint may still run on them after a rollback).
    """

    endpoint: aws.sagemaker.Endpoint
    config: aws.sagemaker.EndpointConfiguration
    model: aws.sagemaker.Model
    model_data_url: pulumi.Input[str]

    def __init__(self, name: str, args: EndpointSlotArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("lockstep:index:EndpointSlot", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        settings, entry = args.settings, args.entry
        endpoints = settings.endpoints
        if not endpoints.image_uri:
            raise ConfigError(
                "lockstep:endpoints.imageUri: is required when backend is 'sagemaker'; set the serving image"
            )
        endpoint = endpoint_name(settings, args.slot)
        # Read from the resolved settings: the bucket, the image and the instances may be outputs.
        self.model_data_url = deferred.value(settings, lambda got: artifact_uri(got.artifacts.bucket, entry))

        role = aws.iam.Role(f"{name}-role", assume_role_policy=assume_role_policy(), opts=child)
        account = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=self)).account_id
        # One policy per version the slot serves: a new version adds its grant and the old one goes
        # only when the update is over (deletes come last), so while SageMaker shifts traffic, or
        # rolls the update back, the role can read both models.
        policy = aws.iam.RolePolicy(
            f"{name}-policy-{entry.version}",
            role=role.id,
            policy=pulumi.Output.all(account, deferred.value(settings, lambda got: got)).apply(
                lambda got: execution_policy(
                    bucket=got[1].artifacts.bucket,
                    entry=entry,
                    image_uri=got[1].endpoints.image_uri or "",
                    region=got[1].region,
                    account=got[0],
                    endpoint=endpoint,
                    alarms=described_alarms(endpoint, endpoints.deployment),
                )
            ),
            opts=child,
        )
        container: Any = deferred.value(
            settings,
            lambda got: {
                "image": got.endpoints.image_uri,
                "model_data_url": artifact_uri(got.artifacts.bucket, entry),
                "environment": {
                    "LOCKSTEP_MODEL_VERSION": entry.version,
                    "LOCKSTEP_ARTIFACT_SHA256": entry.artifact_sha256,
                },
            },
        )
        # Named by what they hold (every field of both forces a new one): a change gets a new name, so
        # the replacement is created before the old one goes; the name is valid whatever the stack's.
        model_name = pulumi.Output.all(role.arn, container).apply(
            lambda got: content_name(endpoint, entry.version, got[0], got[1])
        )
        self.model = aws.sagemaker.Model(
            f"{name}-model",
            name=model_name,
            execution_role_arn=role.arn,
            primary_container=container,
            tags={"lockstep:version": entry.version, "lockstep:slot": args.slot},
            # SageMaker checks the role can read the artifact when the model is created. Retained:
            # after an update SageMaker rolled back, the endpoint still runs on the old model and
            # configuration, which the engine would otherwise delete as replaced.
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[policy, *filter(None, [args.artifact])], retain_on_delete=True
            ),
        )
        variant: Any = deferred.value(
            settings,
            lambda got: {
                "variant_name": VARIANT,
                "initial_instance_count": got.endpoints.instance_count,
                "instance_type": got.endpoints.instance_type,
            },
        )
        self.config = aws.sagemaker.EndpointConfiguration(
            f"{name}-config",
            name=pulumi.Output.all(self.model.name, variant).apply(
                lambda got: content_name(endpoint, entry.version, got[0], got[1])
            ),
            production_variants=[
                pulumi.Output.all(variant, self.model.name).apply(lambda got: {**got[0], "model_name": got[1]})
            ],
            tags={"lockstep:version": entry.version, "lockstep:slot": args.slot},
            opts=pulumi.ResourceOptions(parent=self, retain_on_delete=True),
        )
        self.alarms = declare_alarms(name, endpoint, endpoints.deployment, self)
        self.endpoint = aws.sagemaker.Endpoint(
            f"{name}-endpoint",
            name=endpoint,
            endpoint_config_name=self.config.name,
            deployment_config=deployment_config(endpoints.deployment, endpoint),
            tags={"lockstep:version": entry.version, "lockstep:slot": args.slot},
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=self.alarms,
                custom_timeouts=endpoint_timeouts(endpoints.deployment),
                # The name is fixed per slot: a replacement can only delete first (a create first fails
                # with "Cannot create already existing endpoint"). Nothing in lockstep's config forces one.
                delete_before_replace=True,
            ),
        )
        self.register_outputs(
            {
                "version": entry.version,
                "endpoint": self.endpoint.name,
                "endpointConfig": self.config.name,
            }
        )
