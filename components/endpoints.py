"""One blue/green slot: a SageMaker model of one version behind the slot's fixed endpoint name."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from lockstep.config import CatalogEntry, DeploymentSettings, EndpointSettings
from lockstep.errors import ConfigError
from lockstep.ops.artifacts import artifact_uri

ECR_IMAGE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/(?P<repo>[a-z0-9._/-]+?)(?::[\w.-]+|@sha256:[0-9a-f]{64})?$"
)
# SageMaker's limit for both the traffic wait interval and the old fleet's termination wait.
MAX_WAIT_SECONDS = 3600


def endpoint_name(stack: str, slot: str) -> str:
    return f"lockstep-{stack}-{slot}"


def partition(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def ecr_repository_arn(image_uri: str) -> str:
    match = ECR_IMAGE.match(image_uri)
    if not match:
        raise ConfigError(
            f"lockstep:endpoints.imageUri: {image_uri!r} is not an ECR image "
            "(<account>.dkr.ecr.<region>.amazonaws.com/<repository>[:tag]); push the serving image to ECR"
        )
    region = match["region"]
    return f"arn:{partition(region)}:ecr:{region}:{match['account']}:repository/{match['repo']}"


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
    *, bucket: str, entry: CatalogEntry, image_uri: str, region: str, account: str, endpoint: str
) -> str:
    """Least privilege: this version's artifacts, this image's repository, this endpoint's logs."""
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
            ],
        }
    )


def deployment_config(deployment: DeploymentSettings) -> dict:
    """Blue/green update policy (SageMaker shifts traffic to the new fleet) plus alarm-driven auto-rollback."""
    for key, value in (
        ("waitSeconds", deployment.wait_seconds),
        ("terminationWaitSeconds", deployment.termination_wait_seconds),
    ):
        if value > MAX_WAIT_SECONDS:
            raise ConfigError(
                f"lockstep:endpoints.deployment.{key}: {value} exceeds SageMaker's {MAX_WAIT_SECONDS} s; lower it"
            )
    routing: dict = {"type": deployment.traffic_routing, "wait_interval_in_seconds": deployment.wait_seconds}
    step = {"type": "CAPACITY_PERCENT", "value": deployment.canary_percent}
    if deployment.traffic_routing == "CANARY":
        routing["canary_size"] = step
    elif deployment.traffic_routing == "LINEAR":
        routing["linear_step_size"] = step
    config: dict = {
        "blue_green_update_policy": {
            "traffic_routing_configuration": routing,
            "termination_wait_in_seconds": deployment.termination_wait_seconds,
        }
    }
    if deployment.rollback_alarms:
        config["auto_rollback_configuration"] = {
            "alarms": [{"alarm_name": alarm} for alarm in deployment.rollback_alarms]
        }
    return config


@dataclass
class EndpointSlotArgs:
    stack: str
    slot: str
    entry: CatalogEntry
    bucket: str
    endpoints: EndpointSettings
    region: str
    # The version's uploaded artifact: SageMaker reads it when the model is created.
    artifact: pulumi.Resource | None = None


class EndpointSlot(pulumi.ComponentResource):
    """Execution role, model, endpoint configuration and the slot's endpoint.

    The endpoint's name is fixed per slot; a new version in the slot replaces the model and the
    configuration (auto-named) and updates the endpoint in place through its blue/green policy.
    """

    endpoint: aws.sagemaker.Endpoint
    config: aws.sagemaker.EndpointConfiguration
    model: aws.sagemaker.Model
    model_data_url: str

    def __init__(self, name: str, args: EndpointSlotArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("lockstep:index:EndpointSlot", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        entry, endpoints = args.entry, args.endpoints
        if not endpoints.image_uri:
            raise ConfigError(
                "lockstep:endpoints.imageUri: is required when backend is 'sagemaker'; set the serving image"
            )
        endpoint = endpoint_name(args.stack, args.slot)
        self.model_data_url = artifact_uri(args.bucket, entry)
        deployment = deployment_config(endpoints.deployment)

        role = aws.iam.Role(f"{name}-role", assume_role_policy=assume_role_policy(), opts=child)
        account = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=self)).account_id
        policy = aws.iam.RolePolicy(
            f"{name}-policy",
            role=role.id,
            policy=account.apply(
                lambda account_id: execution_policy(
                    bucket=args.bucket,
                    entry=entry,
                    image_uri=endpoints.image_uri,
                    region=args.region,
                    account=account_id,
                    endpoint=endpoint,
                )
            ),
            opts=child,
        )
        self.model = aws.sagemaker.Model(
            f"{name}-model",
            execution_role_arn=role.arn,
            primary_container={
                "image": endpoints.image_uri,
                "model_data_url": self.model_data_url,
                "environment": {
                    "LOCKSTEP_MODEL_VERSION": entry.version,
                    "LOCKSTEP_ARTIFACT_SHA256": entry.artifact_sha256,
                },
            },
            tags={"lockstep:version": entry.version, "lockstep:slot": args.slot},
            # SageMaker checks the role can read the artifact when the model is created.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[policy, *filter(None, [args.artifact])]),
        )
        self.config = aws.sagemaker.EndpointConfiguration(
            f"{name}-config",
            production_variants=[
                {
                    "variant_name": "primary",
                    "model_name": self.model.name,
                    "initial_instance_count": endpoints.instance_count,
                    "instance_type": endpoints.instance_type,
                }
            ],
            tags={"lockstep:version": entry.version, "lockstep:slot": args.slot},
            opts=child,
        )
        self.endpoint = aws.sagemaker.Endpoint(
            f"{name}-endpoint",
            name=endpoint,
            endpoint_config_name=self.config.name,
            deployment_config=deployment,
            tags={"lockstep:version": entry.version, "lockstep:slot": args.slot},
            opts=child,
        )
        self.register_outputs(
            {
                "version": entry.version,
                "endpoint": self.endpoint.name,
                "endpointConfig": self.config.name,
            }
        )
