"""The `lockstep` resource provider: the custom resources lockstep owns, plus the ModelRelease component.

Served by `pulumi-resource-lockstep` (components/plugin.py) with the SDK's experimental provider
server. Custom resources are dispatched by type token to their handler (components/providers/*),
run in a worker thread (the ops calls block) one at a time; `construct` of the component is
delegated to the SDK's component servicer, which builds ModelRelease from its inferred schema.

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

from components.providers.base import SECRET_KEYS, UNKNOWN, Handler
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
from lockstep.errors import LockstepError

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
    return {key: wire(value).with_secret(key in SECRET_KEYS) for key, value in values.items()}


# ------------------------------------------------------------------------------------- schema


def _schema_property(prop) -> dict:
    if prop.type == "any":
        return {"$ref": "pulumi.json#/Any", "description": prop.description}
    if prop.type == "array":
        return {"type": "array", "items": {"$ref": "pulumi.json#/Any"}, "description": prop.description}
    return {"type": prop.type, "description": prop.description}


def resource_schema(handler: Handler) -> dict:
    inputs = {name: prop for name, prop in handler.PROPERTIES.items() if not prop.output_only}
    properties = {name: _schema_property(prop) for name, prop in handler.PROPERTIES.items()}
    for name in SECRET_KEYS & set(properties):
        properties[name]["secret"] = True
    return {
        "description": handler.DESCRIPTION,
        "properties": properties,
        "inputProperties": {name: properties[name] for name in inputs},
        "requiredInputs": sorted(name for name, prop in inputs.items() if not prop.optional),
    }


def package_schema(component_schema: dict) -> dict:
    """The component's inferred schema plus the custom resources."""
    schema = json.loads(json.dumps(component_schema))
    for component in schema.get("resources", {}).values():  # the analyzer cannot mark an input secret
        for name in SECRET_KEYS & set(component.get("inputProperties", {})):
            component["inputProperties"][name]["secret"] = True
    schema["resources"] = {
        **schema.get("resources", {}),
        **{handler.TOKEN: resource_schema(handler) for handler in HANDLERS},
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
        # No work in a preview: create/update run only in `up`.
        return api.ConfigureResponse(accept_secrets=True, supports_preview=False, accept_resources=True)

    async def check(self, request: api.CheckRequest) -> api.CheckResponse:
        found = self.handler(request.type).check(plain_map(request.new_inputs))
        return api.CheckResponse(
            inputs=request.new_inputs, failures=[api.CheckFailure(name, reason) for name, reason in found]
        )

    async def diff(self, request: api.DiffRequest) -> api.DiffResponse:
        diff = self.handler(request.type).diff(plain_map(request.old_state), plain_map(request.new_inputs))
        return api.DiffResponse(
            changes=diff.changes,
            replaces=diff.replaces,
            diffs=diff.diffs,
            delete_before_replace=diff.delete_before_replace,
        )

    async def create(self, request: api.CreateRequest) -> api.CreateResponse:
        handler = self.handler(request.type)
        id_, outputs = await self._run(handler.create, request.urn, plain_map(request.properties))
        return api.CreateResponse(resource_id=id_, properties=wire_map(outputs))

    async def read(self, request: api.ReadRequest) -> api.ReadResponse:
        handler = self.handler(request.type)
        id_, outputs = await self._run(handler.read, request.urn, request.resource_id, plain_map(request.properties))
        return api.ReadResponse(resource_id=id_, properties=wire_map(outputs), inputs=request.inputs if id_ else {})

    async def update(self, request: api.UpdateRequest) -> api.UpdateResponse:
        handler = self.handler(request.type)
        olds, news = plain_map(request.olds), plain_map(request.news)
        outputs = await self._run(handler.update, request.urn, request.resource_id, olds, news)
        return api.UpdateResponse(properties=wire_map(outputs))

    async def delete(self, request: api.DeleteRequest) -> None:
        handler = self.handler(api._extract_type(request.urn))
        said = await self._run(handler.delete, request.urn, request.resource_id, plain_map(request.properties))
        if said:
            self.warn(request.urn, said)

    async def _run(self, call, *args):
        """Run a blocking handler call in a thread; a LockstepError becomes its one line."""
        try:
            return await asyncio.to_thread(call, *args)
        except LockstepError as exc:
            raise RuntimeError(f"{MESSAGE_PREFIX}{exc}") from None

    def warn(self, urn: str, message: str) -> None:
        """A warning the engine shows with the resource (what a delete kept, and why)."""
        if not self.engine_address:
            print(message, file=sys.stderr)
            return
        with grpc.insecure_channel(self.engine_address) as channel:
            engine_pb2_grpc.EngineStub(channel).Log(
                engine_pb2.LogRequest(severity=engine_pb2.WARNING, message=message, urn=urn), timeout=10
            )


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
