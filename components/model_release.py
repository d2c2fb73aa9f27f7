"""`lockstep:index:ModelRelease`: a stack's model versions as one unit, cut over and checked together."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_command as command

from components.artifact_store import ArtifactStore, ArtifactStoreArgs
from components.endpoints import EndpointSlot, EndpointSlotArgs
from components.providers import Cutover, CutoverArgs, Index, IndexArgs
from lockstep.config import Catalog, StackSettings
from lockstep.errors import ConfigError
from lockstep.ops.clients import PASSWORD_VARIABLE


def require_aws_stack(settings: StackSettings) -> None:
    """The component declares AWS resources; an embedded stack is driven by `lockstep apply`."""
    if settings.endpoints.backend != "sagemaker":
        raise ConfigError(
            f"lockstep:endpoints.backend: is {settings.endpoints.backend!r}; ModelRelease deploys SageMaker "
            "endpoints, so set it to 'sagemaker' or drive this stack with `lockstep apply`"
        )
    if not settings.opensearch.url:
        raise ConfigError(
            "lockstep:opensearch.url: is required for an AWS stack; set it to the OpenSearch domain's "
            "endpoint (https://search-…es.amazonaws.com)"
        )


def check_command(stack: str) -> str:
    return f"lockstep check --stack {stack} --json"


@dataclass
class ModelReleaseArgs:
    settings: StackSettings
    catalog: Catalog
    # Only for opensearch.auth=basic: handed to the check's environment, never to a plain input.
    opensearch_password: pulumi.Input[str] | None = None
    # Where the deterministic artifacts are built before upload (default: services.home()/artifacts).
    artifact_cache: Path | None = None


class ModelRelease(pulumi.ComponentResource):
    """Artifacts, one index per kept version, a SageMaker endpoint per slot, the cutover and the check.

    Changing only the pin between the two slot versions changes only the cutover and the check: no
    endpoint, model or index input moves (a flip). The check runs after every cutover and its
    failure fails `pulumi up`.
    """

    pin: pulumi.Output[str]
    live_endpoint: pulumi.Output[str]
    live_index: pulumi.Output[str]
    slots: pulumi.Output[dict]
    retained_indices: pulumi.Output[list]
    check_record: pulumi.Output[str]

    def __init__(self, name: str, args: ModelReleaseArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("lockstep:index:ModelRelease", name, None, opts)
        settings = args.settings
        require_aws_stack(settings)
        entries = {version: args.catalog.get(version) for version in settings.versions}

        self.artifacts = ArtifactStore(
            f"{name}-artifacts",
            ArtifactStoreArgs(settings.artifacts.bucket, list(entries.values()), args.artifact_cache),
            pulumi.ResourceOptions(parent=self),
        )
        self.indices = {
            version: Index(
                f"{name}-index-{version}",
                IndexArgs(settings, entry),
                # The provider embeds the corpus with the artifact it reads from the bucket.
                pulumi.ResourceOptions(parent=self, depends_on=[self.artifacts.objects[version]]),
            )
            for version, entry in entries.items()
        }
        self.endpoint_slots = {
            slot: EndpointSlot(
                f"{name}-{slot}",
                EndpointSlotArgs(
                    stack=settings.stack, slot=slot, entry=entries[version],
                    bucket=settings.artifacts.bucket, endpoints=settings.endpoints, region=settings.region,
                    artifact=self.artifacts.objects[version],
                ),
                pulumi.ResourceOptions(parent=self),
            )
            for slot, version in settings.slots.as_dict().items()
        }

        live = self.endpoint_slots[settings.live_slot]
        pin_entry, pin_index = entries[settings.pin], self.indices[settings.pin]
        self.cutover = Cutover(
            f"{name}-cutover",
            CutoverArgs(settings, pin_entry, endpoint=live.endpoint.name),
            pulumi.ResourceOptions(parent=self, depends_on=[pin_index, live.endpoint]),
        )
        environment = {PASSWORD_VARIABLE: args.opensearch_password} if args.opensearch_password is not None else None
        self.check = command.local.Command(
            f"{name}-check",
            create=check_command(settings.stack),
            update=check_command(settings.stack),
            environment=environment,
            # Any change of what is live re-runs the check (a trigger change replaces the command).
            triggers=[
                settings.pin,
                live.config.name,
                live.model_data_url,
                pin_index.index,
                pin_entry.artifact_sha256,
            ],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.cutover]),
        )

        self.pin = pulumi.Output.from_input(settings.pin)
        self.live_endpoint = live.endpoint.name
        self.live_index = pin_index.index
        self.slots = pulumi.Output.from_input(settings.slots.as_dict())
        self.retained_indices = pulumi.Output.all(*(self.indices[v].index for v in settings.retain))
        self.check_record = self.check.stdout
        self.register_outputs({
            "pin": self.pin,
            "liveEndpoint": self.live_endpoint,
            "liveIndex": self.live_index,
            "slots": self.slots,
            "retainedIndices": self.retained_indices,
            "checkRecord": self.check_record,
        })
