"""`lockstep:index:ModelRelease`: a stack's model versions as one unit, cut over and checked together.

The same class is the Python program's component (components/program.py) and the component the
package hosts for other languages (components/plugin.py). Its args are TypedDicts
(components/release_args.py) so the schema is inferred from them; inside, they are validated by
lockstep.config's pydantic models, so every language gets the CLI's rules and one-line messages.

No `from __future__ import annotations`: the schema analyzer reads `__init__`'s annotations.
"""

import copy
import json
import os
import re
import typing
from collections.abc import Awaitable
from typing import Any

import pulumi
from pulumi.provider.experimental.util import camel_case
from pydantic import ValidationError

from components import deferred
from components.artifact_store import ArtifactStore, ArtifactStoreArgs
from components.derived_store import derived_table
from components.embedded import EmbeddedArtifactStore, EmbeddedEndpointSlot, embedded_table
from components.endpoints import EndpointSlot, EndpointSlotArgs
from components.providers import (
    Check,
    CheckArgs,
    Cutover,
    CutoverArgs,
    DerivedRepair,
    DerivedRepairArgs,
    Index,
    IndexArgs,
)
from components.release_args import ModelReleaseArgs
from lockstep.config import (
    Catalog,
    StackSettings,
    describe_validation_error,
    one_region,
    settings_from_config,
    validate_catalog,
)
from lockstep.errors import ConfigError
from lockstep.up import AUTO_REVERT_ACTOR

TOKEN = "lockstep:index:ModelRelease"
NAMESPACE = "lockstep"
# The engine's own read of another stack's outputs (what a StackReference resolves with), as a call.
READ_STACK_OUTPUTS = "pulumi:pulumi:readStackOutputs"


def require_revert_actor(settings: StackSettings) -> None:
    """autoRevert is a second update after a failed check: only `lockstep up` runs one. A plain
    `pulumi up` (any language) is refused in one line rather than leave a failed version live while
    the config promises a revert; a preview is not refused (it deploys nothing)."""
    if settings.auto_revert and not pulumi.runtime.is_dry_run() and not os.environ.get(AUTO_REVERT_ACTOR):
        raise ConfigError(
            f"{NAMESPACE}:autoRevert: only `lockstep up --stack {settings.stack}` acts on it (a plain `pulumi up` "
            "cannot run the second update that reverts); deploy with `lockstep up`, or set autoRevert to false"
        )


def require_reachable(settings: StackSettings) -> None:
    """An AWS stack names its OpenSearch domain (its endpoint, or its name to look the endpoint up);
    an embedded one uses the embedded node."""
    if not settings.embedded and not settings.opensearch.url and not settings.opensearch.domain_name:
        raise ConfigError(
            "lockstep:opensearch.url: is required for an AWS stack; set it to the OpenSearch domain's "
            "endpoint (https://search-…es.amazonaws.com), or set opensearch.domainName to look it up"
        )


def settings_document(settings: StackSettings, catalog: Catalog) -> str:
    return json.dumps(
        {
            "settings": settings.model_dump(mode="json", by_alias=True),
            "catalog": catalog.model_dump(mode="json", by_alias=True),
        },
        sort_keys=True,
    )


# ------------------------------------------------------------------------------ the promotion gate


def stack_name(stack: str) -> str:
    """A stack of this project as the backend names it; a self-managed backend's organization is
    literally `organization` (organization/<project>/<stack>)."""
    return f"{pulumi.get_organization() or 'organization'}/{pulumi.get_project()}/{stack}"


def stack_outputs(name: str, source_key: str) -> dict[str, Any]:
    """Another stack's outputs, read now (the engine answers before anything is registered)."""
    try:
        return dict(pulumi.runtime.invoke(READ_STACK_OUTPUTS, {"name": name}).value.get("outputs") or {})
    except Exception as exc:  # the engine's error, e.g. no such stack in this backend
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"{NAMESPACE}:{source_key}: cannot read the outputs of stack {name} ({reason}); "
            "deploy that stack first, or name the stack this one is promoted from"
        ) from None


def require_promotable(settings: StackSettings) -> None:
    """Invariant 7, in the component so every consumer gets it: a stack promoted from A places in
    its slots only versions A verified (A's `verifiedVersions` output) or versions this stack's own
    slots already run (its `slots` output), so it can stay on, or flip back to, what it runs.
    Raised before anything is registered: a refused gate changes nothing."""
    source = settings.promoted_from
    if not source:
        return
    verified = [str(v) for v in stack_outputs(stack_name(source), "promotedFrom").get("verifiedVersions") or []]
    running = stack_outputs(stack_name(pulumi.get_stack()), "promotedFrom").get("slots") or {}
    allowed = set(verified) | {str(v) for v in running.values()}
    for slot, version in sorted(settings.slots.filled.items(), key=lambda item: item[1] != settings.pin):
        if version not in allowed:
            what = "pin" if version == settings.pin else f"slots.{slot}"
            raise ConfigError(
                f"{NAMESPACE}:{what}: {version} is not verified in {source} (verified there: "
                f"{', '.join(verified) or 'nothing'}) and runs in none of {settings.stack}'s slots; "
                f"deploy and check it in {source}, then `lockstep promote --from {source} --to {settings.stack}`"
            )


# ------------------------------------------------------------------------- args -> validated settings


def _is_typeddict(hint: Any) -> bool:
    return isinstance(hint, type) and typing.is_typeddict(hint)


def _hints(typed_dict: Any) -> dict[str, Any]:
    """A TypedDict's value types without NotRequired/Required or pulumi.Input (no evaluation:
    pulumi.Input holds a ForwardRef)."""
    hints = {}
    for key, hint in typed_dict.__annotations__.items():
        while typing.get_origin(hint) in (typing.NotRequired, typing.Required):
            hint = typing.get_args(hint)[0]
        if typing.get_origin(hint) is typing.Union:  # pulumi.Input[T]: T | Awaitable[T] | Output[T]
            hint = typing.get_args(hint)[0]
        hints[key] = hint
    return hints


def _is_unresolved(value: Any) -> bool:
    return isinstance(value, (pulumi.Output, Awaitable)) or type(value).__name__ == "Unknown"


# What to_wire leaves where an output stands that has no placeholder: the field takes its default.
_DROPPED = object()


def to_wire(value: Any, hint: Any, path: str, pending: dict[str, tuple[Any, Any]] | None = None) -> Any:
    """Python-named args (snake_case, as the SDK's `construct` maps them) back to the camelCase wire
    names the pydantic models and the CLI's messages use; map keys (version names) stay as they are.

    An output of another resource is taken where components.deferred accepts one (recorded in
    `pending` as (output, hint), a placeholder in its place); anywhere else it is refused with a
    one-line message naming the input: that input decides which resources exist, or their names.
    """
    if _is_unresolved(value):
        if pending is None or not deferred.accepts_output(path):
            raise ConfigError(
                f"lockstep:{path}: must be a plain value known when the program runs (it decides which "
                "resources exist or how they are named), not an Output of another resource; pass a literal "
                "or a config value"
            )
        pending[path] = (value, hint)
        return deferred.PLACEHOLDERS.get(path, _DROPPED)
    origin = typing.get_origin(hint)
    if _is_typeddict(hint) and isinstance(value, dict):
        hints = _hints(hint)
        items = {
            camel_case(key): to_wire(
                item, hints.get(key), f"{path}.{camel_case(key)}" if path else camel_case(key), pending
            )
            for key, item in value.items()
        }
        return {key: item for key, item in items.items() if item is not _DROPPED}
    if origin is dict and isinstance(value, dict):
        item_hint = typing.get_args(hint)[1]
        return {key: to_wire(item, item_hint, f"{path}.{key}", pending) for key, item in value.items()}
    if origin is list and isinstance(value, (list, tuple)):
        item_hint = typing.get_args(hint)[0]
        return [to_wire(item, item_hint, f"{path}[{i}]", pending) for i, item in enumerate(value)]
    if hint is None and isinstance(value, dict):  # a key the args do not declare: keep it for pydantic to name
        return {
            camel_case(key): to_wire(item, None, f"{path}.{camel_case(key)}", pending) for key, item in value.items()
        }
    return value


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def catalog_from_wire(data: Any) -> Catalog:
    """`Catalog.model_validate`, with errors named like the CLI names them in stacks/catalog.yaml.

    A map sent over the wire (a protobuf Struct) keeps no order: versions are put in natural order
    (v1, v2, …, v10) so "use one of …" lists them as a catalog file would.
    """
    if isinstance(data, dict) and isinstance(data.get("versions"), dict):
        data = {**data, "versions": dict(sorted(data["versions"].items(), key=lambda item: _natural(item[0])))}
    return validate_catalog(data, f"{NAMESPACE}:catalog.")


def release_settings(args: ModelReleaseArgs) -> tuple[StackSettings, Catalog]:
    """Validate the args with the stack config's models: (settings, catalog) or a one-line ConfigError.

    Args given as outputs hold placeholders in the settings returned; the same settings, validated
    again with the outputs' values, are attached to them (components.deferred)."""
    hints = _hints(ModelReleaseArgs)
    pending: dict[str, tuple[Any, Any]] = {}
    wire = {
        camel_case(key): to_wire(value, hints.get(key), camel_case(key), pending)
        for key, value in dict(args).items()
        if value is not None
    }
    if "catalog" not in wire:
        raise ConfigError(f"{NAMESPACE}:catalog: is required; pass the catalog of model versions (stacks/catalog.yaml)")
    catalog = catalog_from_wire(wire.pop("catalog"))
    stack = wire.pop("stack", None) or pulumi.get_stack()
    if region := pulumi.Config("aws").get("region"):
        wire["region"] = one_region(wire.get("region"), region)
    wire.setdefault("namePrefix", re.sub(r"[^a-z0-9-]+", "-", pulumi.get_project().lower()).strip("-")[:30])
    if isinstance(wire.get("endpoints"), dict):
        wire["endpoints"].setdefault("backend", "sagemaker")  # the component deploys SageMaker endpoints
    settings = validated(stack, wire, catalog)
    require_reachable(settings)
    require_revert_actor(settings)
    require_provider_placement(settings)
    if pending:
        deferred.attach(settings, resolved(stack, wire, catalog, pending), list(pending))
    return settings, catalog


def validated(stack: str, wire: dict[str, Any], catalog: Catalog) -> StackSettings:
    try:
        return settings_from_config(stack, wire, catalog)
    except ValidationError as exc:
        raise ConfigError(f"{NAMESPACE}:{describe_validation_error(exc)}") from None


def resolved(
    stack: str, wire: dict[str, Any], catalog: Catalog, pending: dict[str, tuple[Any, Any]]
) -> pulumi.Output[StackSettings]:
    """The settings with the outputs' values, validated as the plain ones are (a bad value fails the
    update with the same one-line message)."""
    paths = list(pending)

    def validate(values: list[Any]) -> StackSettings:
        real = copy.deepcopy(wire)
        for path, got in zip(paths, values, strict=True):
            *parents, leaf = path.split(".")
            target = real
            for parent in parents:
                target = target.setdefault(parent, {})
            target[leaf] = to_wire(got, pending[path][1], path)
        return validated(stack, real, catalog)

    return pulumi.Output.all(*(pending[path][0] for path in paths)).apply(validate)


def require_provider_placement(settings: StackSettings) -> None:
    """lockstep's own resources work in the region and AWS profile of lockstep's provider configuration
    (`lockstep:region`, `lockstep:awsProfile`: the default provider cannot read `aws:` config), so on
    AWS those must name the stack's region and its `aws:profile`, or the check and the cutover would
    read and write elsewhere than the aws provider deploys."""
    if settings.embedded:
        return
    configured = pulumi.Config(NAMESPACE)
    if configured.get("region") != settings.region:
        raise ConfigError(
            f"{NAMESPACE}:region: lockstep's provider must work in the stack's region {settings.region}, but "
            f"its configuration says {configured.get('region') or 'nothing'} (it cannot read aws:region); "
            f"run `pulumi config set {NAMESPACE}:region {settings.region}`"
        )
    profile = pulumi.Config("aws").get("profile")
    if profile and configured.get("awsProfile") != profile:
        raise ConfigError(
            f"{NAMESPACE}:awsProfile: lockstep's provider must use the stack's aws:profile {profile}, but its "
            f"configuration says {configured.get('awsProfile') or 'nothing'}; "
            f"run `pulumi config set {NAMESPACE}:awsProfile {profile}`"
        )


def release_args(settings: StackSettings, catalog: Catalog) -> ModelReleaseArgs:
    """The args for validated settings (how the Python program in this repository calls the component)."""
    # The AWS profile is the providers' configuration, not an arg (require_provider_placement).
    args: dict[str, Any] = settings.model_dump(mode="json", exclude_none=True, exclude={"stack", "aws_profile"})
    args["stack"] = settings.stack
    args["catalog"] = {
        "model": catalog.model,
        "versions": {
            # A version's own model (its artifact key's folder) only when it differs from the catalog's.
            entry.version: entry.model_dump(
                mode="json", exclude={"version"} | ({"model"} if entry.model == catalog.model else set())
            )
            for entry in catalog.versions
        },
    }
    return typing.cast(ModelReleaseArgs, args)


# ------------------------------------------------------------------------------------ the component


class ModelRelease(pulumi.ComponentResource):
    """A model version as one deployable unit: content-addressed artifacts in a private S3 bucket, one OpenSearch k-NN index per kept version, a SageMaker endpoint per blue/green slot, the cutover (live alias and live pointer, together) and a consistency check that fails the deployment. Changing only the pin between the two slot versions is a flip: only the cutover and the check change."""

    pin: pulumi.Output[str]
    """The live version."""
    live_endpoint: pulumi.Output[str]
    """Name of the SageMaker endpoint serving the pin (the live slot's endpoint)."""
    live_index: pulumi.Output[str]
    """Name of the pin's k-NN index, the one the live alias points to."""
    slots: pulumi.Output[dict[str, str]]
    """Version per endpoint slot (blue, green)."""
    retained_indices: pulumi.Output[list[str]]
    """Indices kept for an instant rollback (the retain list's)."""
    check_record: pulumi.Output[str]
    """The last consistency check's result record (JSON), what `lockstep promote` reads."""

    def __init__(self, name: str, args: ModelReleaseArgs, opts: pulumi.ResourceOptions | None = None):
        # Validated, and the promotion gate passed, before anything is registered: a bad arg or an
        # unverified version changes nothing.
        settings, catalog = release_settings(args)
        require_promotable(settings)
        super().__init__(TOKEN, name, None, opts)
        entries = {version: catalog.get(version) for version in settings.versions}

        child = pulumi.ResourceOptions(parent=self)
        if settings.promoted_from:
            # The dependency on the source stack as the engine records it (the gate read it already).
            self.upstream = pulumi.StackReference(stack_name(settings.promoted_from), opts=child)
        # The leaves: AWS resources, or lockstep's own against the embedded servers (same shapes).
        self.artifacts: EmbeddedArtifactStore | ArtifactStore
        if settings.embedded:
            self.artifacts = EmbeddedArtifactStore(f"{name}-artifacts", settings, list(entries.values()), child)
        else:
            self.artifacts = ArtifactStore(
                f"{name}-artifacts", ArtifactStoreArgs(settings, list(entries.values())), child
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
        slot_class = EmbeddedEndpointSlot if settings.embedded else EndpointSlot
        self.endpoint_slots = {
            slot: slot_class(
                f"{name}-{slot}",
                EndpointSlotArgs(settings, slot, entries[version], artifact=self.artifacts.objects[version]),
                pulumi.ResourceOptions(parent=self),
            )
            for slot, version in settings.slots.filled.items()
        }

        live = self.endpoint_slots[settings.live_slot]
        pin_entry, pin_index = entries[settings.pin], self.indices[settings.pin]
        # Derived records belong to the unit. The tables come before the cutover, which writes their
        # fences (lockstep.derived refuses writes to a table without one); after the flip, what other
        # versions wrote is repaired.
        self.derived_tables = {
            store.name: (
                embedded_table(f"{name}-derived-{store.name}", settings, store, child)
                if settings.embedded
                else derived_table(f"{name}-derived-{store.name}", store, child)
            )
            for store in settings.derived
        }
        # Both slots must serve what this update deployed (on SageMaker: on the configuration it created).
        slot_deployments = {
            slot: {
                "entry": entries[version].model_dump(by_alias=True, mode="json"),
                **({"endpointConfig": deployed.config.name} if isinstance(deployed, EndpointSlot) else {}),
            }
            for slot, version in settings.slots.filled.items()
            for deployed in [self.endpoint_slots[slot]]
        }
        self.cutover = Cutover(
            f"{name}-cutover",
            CutoverArgs(settings, pin_entry, live.endpoint.name, slot_deployments),
            pulumi.ResourceOptions(
                parent=self,
                # Every kept index, not only the pin's: the cutover records what the stack keeps, so a
                # destroy deletes it (marking the release gone) before any index (opensearch.py).
                depends_on=[
                    *self.indices.values(),
                    *(deployed.endpoint for deployed in self.endpoint_slots.values()),
                    *self.derived_tables.values(),
                ],
                # Replaced delete first (the handler's diff says so; `up --replace` does not ask it).
                delete_before_replace=True,
            ),
        )
        self.derived_repairs = [
            DerivedRepair(
                f"{name}-repair-{store.name}",
                DerivedRepairArgs(settings, catalog, store, self.derived_tables[store.name].name),
                pulumi.ResourceOptions(parent=self, depends_on=[self.cutover]),
            )
            for store in settings.derived
        ]
        # Runs in the provider, in-process; any change of what is live re-runs it (every cutover
        # changes switched_at; a redeployed live slot changes its revision).
        revision = live.revision if isinstance(live, EmbeddedEndpointSlot) else live.config.name
        self.check = Check(
            f"{name}-check",
            CheckArgs(
                settings,
                catalog,
                [settings.pin, live.endpoint.name, revision, pin_index.index, self.cutover.switched_at],
            ),
            pulumi.ResourceOptions(parent=self, depends_on=[self.cutover, *self.derived_repairs]),
        )

        self.pin = pulumi.Output.from_input(settings.pin)
        self.live_endpoint = live.endpoint.name
        self.live_index = pin_index.index
        self.slots = pulumi.Output.from_input(settings.slots.filled)
        self.retained_indices = pulumi.Output.all(*(self.indices[v].index for v in settings.retain))
        self.check_record = self.check.record
        self.register_outputs(
            {
                "pin": self.pin,
                "liveEndpoint": self.live_endpoint,
                "liveIndex": self.live_index,
                "slots": self.slots,
                "retainedIndices": self.retained_indices,
                "checkRecord": self.check_record,
            }
        )
