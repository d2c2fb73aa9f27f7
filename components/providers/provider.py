"""The `lockstep` resource provider: the custom resources lockstep owns, plus the ModelRelease component.

Served by `pulumi-resource-lockstep` (components/plugin.py) with the SDK's experimental provider
server. Custom resources are dispatched by type token to their handler (components/providers/*),
each run in a worker thread of its own (the ops calls block; independent resources run concurrently,
as the engine schedules them); `construct` of the component is delegated to the SDK's component
servicer, which builds ModelRelease from its inferred schema.

The provider's configuration (`Configure`: `lockstep:region`, `awsProfile`, `roleArn`,
`opensearchPassword`, a secret) is the one credential story: every client the handlers build
honours it (lockstep.ops.clients.configure). It is not a resource input, so a rotated password
re-runs nothing, and refresh and destroy use the current configuration.

An error a person can fix reaches the engine as its one line (`lockstep: …`), not a traceback;
what a delete keeps (an index the stack still uses, an artifact) is logged as a warning.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from pulumi.provider.experimental import provider as api
from pulumi.provider.experimental.property_value import Computed, PropertyValue
from pulumi.provider.experimental.server import ProviderServicer
from pulumi.provider.provider import Provider as ComponentBase
from pulumi.provider.server import ProviderServicer as ComponentServicer
from pulumi.runtime.proto import engine_pb2, engine_pb2_grpc, provider_pb2, provider_pb2_grpc
from pydantic import ValidationError

from components.providers.base import UNKNOWN, Handler
from components.providers.check import CheckHandler
from components.providers.derived import DerivedRepairHandler
from components.providers.embedded import (
    ArtifactHandler,
    BucketHandler,
    CorpusHandler,
    DerivedTableHandler,
    EndpointSlotHandler,
)
from components.providers.opensearch import CutoverHandler, IndexHandler
from components.providers.shapes import object_types
from lockstep.config import Catalog, DerivedStore, describe_validation_error
from lockstep.errors import LockstepError
from lockstep.ops import clients

HANDLERS: list[Handler] = [
    IndexHandler(),
    CutoverHandler(),
    DerivedRepairHandler(),
    CheckHandler(),
    BucketHandler(),
    CorpusHandler(),
    ArtifactHandler(),
    EndpointSlotHandler(),
    DerivedTableHandler(),
]
MESSAGE_PREFIX = "lockstep: "
# The provider's configuration (lockstep:<key> in the stack config, or an explicit provider's inputs).
CONFIG = {
    "region": "AWS region of lockstep's AWS clients (default: AWS_REGION, then us-east-1).",
    "awsProfile": "AWS profile of lockstep's AWS clients (default: boto3's credential chain).",
    "roleArn": "IAM role lockstep's AWS clients assume (STS AssumeRole, refreshed before it expires).",
    "opensearchPassword": "Password for opensearch.auth basic (a secret).",
}
SECRET_CONFIG = frozenset({"opensearchPassword"})


# --------------------------------------------------------------------------- values on the wire


def plain(value: PropertyValue) -> Any:
    """A PropertyValue as plain JSON-like Python (secrets unwrapped, integral numbers as int)."""
    inner = value.value
    if isinstance(inner, Computed):
        return UNKNOWN
    if isinstance(inner, float) and inner.is_integer():
        return int(inner)
    if isinstance(inner, Mapping):
        return {key: plain(item) for key, item in inner.items()}
    if isinstance(inner, Sequence) and not isinstance(inner, str):
        return [plain(item) for item in inner]
    return inner


def plain_map(values: dict[str, PropertyValue]) -> dict[str, Any]:
    return {key: plain(value) for key, value in values.items()}


def wire(value: Any) -> PropertyValue:
    if value is UNKNOWN:
        return PropertyValue.computed()
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return PropertyValue(value)
    if isinstance(value, (int, float)):
        return PropertyValue(float(value))
    if isinstance(value, dict):
        return PropertyValue({key: wire(item) for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        return PropertyValue([wire(item) for item in value])
    raise TypeError(f"cannot send {type(value).__name__} to the engine")


def wire_map(values: dict[str, Any]) -> dict[str, PropertyValue]:
    return {key: wire(value) for key, value in values.items()}


def secret_keys(*given: dict[str, PropertyValue]) -> frozenset[str]:
    """The top-level properties that carry a secret anywhere in them."""
    return frozenset(key for values in given for key, value in values.items() if value.contains_secret())


def wire_outputs(outputs: dict[str, Any], secret: frozenset[str]) -> dict[str, PropertyValue]:
    """Outputs on the wire, secret where their input was: this provider accepts secrets, so the
    engine leaves the marking to it, and an unmarked copy would be plain text in the state."""
    return {key: value.with_secret(True) if key in secret else value for key, value in wire_map(outputs).items()}


# ------------------------------------------------------------------------------------- schema


def _schema_property(prop) -> dict:
    if prop.spec is not None:
        return {**prop.spec, "description": prop.description}
    if prop.type == "any":
        return {"$ref": "pulumi.json#/Any", "description": prop.description}
    if prop.type == "array":
        return {"type": "array", "items": {"$ref": "pulumi.json#/Any"}, "description": prop.description}
    return {"type": prop.type, "description": prop.description}


def resource_schema(handler: Handler, types: dict) -> dict:
    declared = handler.properties(types)
    inputs = {name: prop for name, prop in declared.items() if not prop.output_only}
    properties = {name: _schema_property(prop) for name, prop in declared.items()}
    return {
        "description": handler.DESCRIPTION,
        "properties": properties,
        "inputProperties": {name: properties[name] for name in inputs},
        "requiredInputs": sorted(name for name, prop in inputs.items() if not prop.optional),
    }


def package_schema(component_schema: dict) -> dict:
    """The component's inferred schema plus the custom resources, their object types and the
    provider's configuration."""
    schema = json.loads(json.dumps(component_schema))
    found: dict = {"lockstep:index:Catalog": Catalog, "lockstep:index:DerivedStore": DerivedStore}
    schema["resources"] = {
        **schema.get("resources", {}),
        **{handler.TOKEN: resource_schema(handler, found) for handler in HANDLERS},
    }
    schema["types"] = {**schema.get("types", {}), **object_types(found)}
    config = {
        name: {"type": "string", "description": text, **({"secret": True} if name in SECRET_CONFIG else {})}
        for name, text in CONFIG.items()
    }
    schema["config"] = {"variables": config}
    schema["provider"] = {
        "description": "lockstep's provider: its configuration is the credentials.",
        "inputProperties": config,
    }
    return schema


# ------------------------------------------------------------------------------------ provider


class LockstepProvider(api.Provider):
    def __init__(self, components: ComponentBase, engine_address: str | None = None):
        self.components = components
        self.engine_address = engine_address
        self.handlers = {handler.TOKEN: handler for handler in HANDLERS}
        self.schema = package_schema(json.loads(components.schema or "{}"))

    def handler(self, type_: str) -> Handler:
        token = type_.rsplit("$", 1)[-1]  # a URN's type names the parents' types first
        try:
            return self.handlers[token]
        except KeyError:
            raise LockstepError(
                f"lockstep has no resource type {token}; use one of {', '.join(self.handlers)}"
            ) from None

    async def get_schema(self, request: api.GetSchemaRequest) -> api.GetSchemaResponse:
        return api.GetSchemaResponse(schema=json.dumps(self.schema))

    async def configure(self, request: api.ConfigureRequest) -> api.ConfigureResponse:
        clients.configure(clients.Credentials(**provider_config(request)))
        # No work in a preview: create/update run only in `up`.
        return api.ConfigureResponse(accept_secrets=True, supports_preview=False, accept_resources=True)

    async def diff_config(self, request: api.DiffRequest) -> api.DiffResponse:
        """Only the credentials are this provider's: a change of them is an update of the provider,
        never a replacement of the resources it manages (other lockstep:* keys are the program's)."""
        olds, news = plain_map(request.old_state), plain_map(request.new_inputs)
        changed = [key for key in CONFIG if olds.get(key) != news.get(key)]
        return api.DiffResponse(changes=bool(changed), diffs=changed)

    async def check(self, request: api.CheckRequest) -> api.CheckResponse:
        handler = self.handler(request.type)
        olds, news = handler.migrate(plain_map(request.old_inputs)), plain_map(request.new_inputs)
        inputs = dict(request.new_inputs)
        # A name whose default may change between lockstep versions keeps what the stack has.
        if "namePrefix" in handler.SETTINGS and "namePrefix" not in news and olds.get("namePrefix"):
            inputs["namePrefix"] = PropertyValue(olds["namePrefix"])
            news["namePrefix"] = olds["namePrefix"]
        found = handler.check(olds, news)
        return api.CheckResponse(inputs=inputs, failures=[api.CheckFailure(name, reason) for name, reason in found])

    async def diff(self, request: api.DiffRequest) -> api.DiffResponse:
        diff = self.handler(request.type).diff(plain_map(request.old_state), plain_map(request.new_inputs))
        kind = {True: api.PropertyDiffKind.UPDATE_REPLACE, False: api.PropertyDiffKind.UPDATE}
        return api.DiffResponse(
            changes=diff.changes,
            replaces=diff.replaces,
            diffs=diff.diffs,
            delete_before_replace=diff.delete_before_replace,
            detailed_diff={path: api.PropertyDiff(kind[replaces], True) for path, replaces in diff.detailed.items()},
        )

    async def create(self, request: api.CreateRequest) -> api.CreateResponse:
        handler = self.handler(request.type)
        id_, outputs = await self._run(handler.create, request.urn, plain_map(request.properties))
        return api.CreateResponse(resource_id=id_, properties=wire_outputs(outputs, secret_keys(request.properties)))

    async def read(self, request: api.ReadRequest) -> api.ReadResponse:
        handler = self.handler(request.type)
        if not request.properties:  # `pulumi import`: the engine hands over the id alone
            raise RuntimeError(f"{MESSAGE_PREFIX}{handler.import_refusal(request.resource_id)}")
        state = handler.migrate(plain_map(request.properties))
        id_, outputs = await self._run(handler.read, request.urn, request.resource_id, state)
        secret = secret_keys(request.properties, request.inputs)
        return api.ReadResponse(
            resource_id=id_, properties=wire_outputs(outputs, secret), inputs=request.inputs if id_ else {}
        )

    async def update(self, request: api.UpdateRequest) -> api.UpdateResponse:
        handler = self.handler(request.type)
        olds, news = handler.migrate(plain_map(request.olds)), plain_map(request.news)
        outputs = await self._run(handler.update, request.urn, request.resource_id, olds, news)
        return api.UpdateResponse(properties=wire_outputs(outputs, secret_keys(request.news)))

    async def delete(self, request: api.DeleteRequest) -> None:
        handler = self.handler(api._extract_type(request.urn))
        state = handler.migrate(plain_map(request.properties))
        said = await self._run(handler.delete, request.urn, request.resource_id, state)
        if said:
            self.warn(request.urn, said)

    async def _run(self, call, *args):
        """Run a blocking handler call in a thread; a LockstepError becomes its one line."""
        try:
            return await asyncio.to_thread(call, *args)
        except LockstepError as exc:
            raise RuntimeError(f"{MESSAGE_PREFIX}{exc}") from None
        except ValidationError as exc:  # recorded settings an older lockstep accepted and this one refuses
            raise RuntimeError(
                f"{MESSAGE_PREFIX}the resource's recorded settings are not valid for this lockstep "
                f"({describe_validation_error(exc)}); set a valid value in the stack's config and run `pulumi up`"
            ) from None

    def warn(self, urn: str, message: str) -> None:
        """A warning the engine shows with the resource (what a delete kept, and why)."""
        if not self.engine_address:
            print(message, file=sys.stderr)
            return
        with grpc.insecure_channel(self.engine_address) as channel:
            engine_pb2_grpc.EngineStub(channel).Log(
                engine_pb2.LogRequest(severity=engine_pb2.WARNING, message=message, urn=urn), timeout=10
            )


def provider_config(request: api.ConfigureRequest) -> dict[str, str | None]:
    """The configuration from the request's args (an explicit provider, or a newer engine) or its
    variables (`lockstep:config:<key>` for the default provider)."""
    found: dict[str, str | None] = {}
    for key in CONFIG:
        value = plain(request.args[key]) if key in request.args else None
        for name in (f"lockstep:config:{key}", f"lockstep:{key}"):
            value = value if value not in (None, "") else request.variables.get(name)
        found[key] = value if isinstance(value, str) and value else None
    return {
        "region": found["region"],
        "profile": found["awsProfile"],
        "role_arn": found["roleArn"],
        "opensearch_password": found["opensearchPassword"],
    }


# -------------------------------------------------------------------------------------- server


class Servicer(ProviderServicer):
    """The SDK's servicer; `construct` goes to the component servicer, and a failure this
    provider expected (prefixed `lockstep: `) reaches the engine without a traceback."""

    def __init__(self, args: list[str], version: str, provider: LockstepProvider, engine_address: str):
        super().__init__(args, version, provider, engine_address)
        self._components = ComponentServicer(provider.components, args, engine_address=engine_address)

    async def Construct(self, request, context):
        return await self._components.Construct(request, context)

    async def DiffConfig(self, request, context):
        """No change, ever: the provider has no configuration of its own. The engine hands the default
        provider the stack's whole `lockstep:` config, which is the program's (a pin flip changes
        it), so without this every flip under plain `pulumi up` also "updated" the provider."""
        return provider_pb2.DiffResponse(changes=provider_pb2.DiffResponse.DIFF_NONE)

    async def _plainly(self, method, request, context):
        try:
            return await method(request, context)
        except Exception as exc:  # noqa: BLE001 - the SDK re-raises every error as a bare Exception
            text = str(exc)
            if not text.startswith(MESSAGE_PREFIX):
                raise
            await context.abort(grpc.StatusCode.UNKNOWN, text.split(":\n", 1)[0])

    async def Create(self, request, context):
        return await self._plainly(super().Create, request, context)

    async def Update(self, request, context):
        return await self._plainly(super().Update, request, context)

    async def Read(self, request, context):
        return await self._plainly(super().Read, request, context)

    async def Delete(self, request, context):
        return await self._plainly(super().Delete, request, context)


def serve(args: list[str], version: str, components: ComponentBase) -> None:
    """What pulumi.provider.experimental.server.main does, with the servicer above."""
    engine_address = next((arg for arg in args if not arg.startswith("-")), None)
    if engine_address is None:
        sys.exit("usage: pulumi-resource-lockstep <engine address> (the Pulumi engine starts this plugin)")
    provider = LockstepProvider(components, engine_address)

    async def run() -> None:
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 400 * 1024 * 1024)])
        provider_pb2_grpc.add_ResourceProviderServicer_to_server(
            Servicer(args, version, provider, engine_address), server
        )
        port = server.add_insecure_port(address="127.0.0.1:0")
        await server.start()
        sys.stdout.buffer.write(f"{port}\n".encode())
        sys.stdout.buffer.flush()
        await server.wait_for_termination()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
