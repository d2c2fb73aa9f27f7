"""The program side of lockstep's custom resources: `pulumi.CustomResource`s whose type tokens the
`lockstep` plugin serves (components/providers/provider.py). Properties are camelCase on the wire
and also readable as snake_case attributes (`index.doc_count`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Any

import pulumi

from components import deferred
from components.package import package_version
from components.providers.base import Handler, dump
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
from lockstep.config import Catalog, CatalogEntry, DerivedStore, StackSettings
from lockstep.ops import corpus_store
from lockstep.ops import endpoints as ops_endpoints


def _given(settings: StackSettings) -> dict[str, Any]:
    return settings.model_dump(by_alias=True, mode="json", exclude_defaults=True, exclude_none=True)


def _given_setting(name: str, settings: StackSettings) -> Any:
    return _given(settings).get(name)


def typed_inputs(handler: type[Handler], settings: StackSettings, entry: CatalogEntry | None = None) -> dict:
    """The stack settings and catalog entry fields `handler` uses, without defaults (a default is
    the provider's to fill in: a later lockstep may add a setting without changing any input).
    A setting the program gave in part as outputs is an output of the resolved settings."""
    given, pending = _given(settings), deferred.pending_keys(settings)
    inputs: dict[str, Any] = {name: given[name] for name in handler.SETTINGS if name in given}
    if "namePrefix" in handler.SETTINGS:
        # Sent even when it is the default: the program always sets it (`release_settings`), so a
        # stack that drops an explicit prefix goes back to the default, shown as a rename. Inputs
        # that do not name one (an older program's) keep the stack's recorded prefix (provider.check).
        inputs["namePrefix"] = settings.name_prefix
    for name in pending & set(handler.SETTINGS):
        inputs[name] = deferred.value(settings, partial(_given_setting, name))
    if entry is not None:
        fields = entry.model_dump(by_alias=True, mode="json", exclude_defaults=True)
        inputs.update({name: fields[name] for name in handler.ENTRY if name in fields})
    return inputs


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class LockstepResource(pulumi.CustomResource):
    """A custom resource of the `lockstep` plugin, registered with lockstep's version (the engine runs
    that version's plugin); every schema property becomes an attribute."""

    HANDLER: Any = None

    def __init__(self, name: str, inputs: dict, opts: pulumi.ResourceOptions | None = None):
        outputs = {key: None for key, prop in self.HANDLER.properties().items() if prop.output_only}
        props = {**outputs, **inputs}
        opts = pulumi.ResourceOptions.merge(pulumi.ResourceOptions(version=package_version()), opts)
        super().__init__(self.HANDLER.TOKEN, name, props, opts)
        for key in props:  # camelCase on the wire, snake_case in Python
            if _snake(key) != key:
                setattr(self, _snake(key), getattr(self, key))


# ----------------------------------------------------------------------------- the release's own


@dataclass
class IndexArgs:
    settings: StackSettings
    entry: CatalogEntry

    def inputs(self) -> dict[str, Any]:
        entry, search = self.entry, self.settings.opensearch
        return {
            **typed_inputs(IndexHandler, self.settings, entry),
            "index": search.index_name(entry.version),
            "engine": search.engine,
            **({} if self.settings.embedded else {"embedded": False}),  # the default is not sent
        }


class Index(LockstepResource):
    """`lockstep:index:Index`"""

    HANDLER = IndexHandler
    index: pulumi.Output[str]
    version: pulumi.Output[str]
    doc_count: pulumi.Output[int]
    meta: pulumi.Output[dict]

    def __init__(self, name: str, args: IndexArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(name, args.inputs(), opts)


@dataclass
class CutoverArgs:
    settings: StackSettings
    entry: CatalogEntry
    endpoint: pulumi.Input[str]
    # Per filled slot: the entry it serves and, on SageMaker, the endpoint configuration just created.
    slot_deployments: dict[str, dict[str, Any]] | None = None

    def inputs(self) -> dict[str, Any]:
        settings, entry = self.settings, self.entry
        return {
            **typed_inputs(CutoverHandler, settings, entry),
            "pointer": settings.pointer_name,
            "alias": settings.opensearch.alias_name,
            "index": settings.opensearch.index_name(entry.version),
            "endpoint": self.endpoint,
            **({"slotDeployments": self.slot_deployments} if self.slot_deployments else {}),
        }


class Cutover(LockstepResource):
    """`lockstep:index:Cutover`"""

    HANDLER = CutoverHandler
    version: pulumi.Output[str]
    index: pulumi.Output[str]
    endpoint: pulumi.Output[str]
    switched_at: pulumi.Output[str]
    alias_targets: pulumi.Output[list]

    def __init__(self, name: str, args: CutoverArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(name, args.inputs(), opts)


@dataclass
class DerivedRepairArgs:
    settings: StackSettings
    catalog: Catalog
    store: DerivedStore
    table: pulumi.Input[str]  # the table resource's name: the repair waits for the table

    def inputs(self) -> dict[str, Any]:
        return {
            **typed_inputs(DerivedRepairHandler, self.settings),
            "table": self.table,
            "store": dump(self.store),
            "catalog": dump(self.catalog),
        }


class DerivedRepair(LockstepResource):
    """`lockstep:index:DerivedRepair`"""

    HANDLER = DerivedRepairHandler
    repaired: pulumi.Output[str]
    records_by_version: pulumi.Output[dict]

    def __init__(self, name: str, args: DerivedRepairArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(name, args.inputs(), opts)


@dataclass
class CheckArgs:
    settings: StackSettings
    catalog: Catalog
    # What is live: any change re-runs the check (the cutover's switchedAt changes on every cutover).
    triggers: list[pulumi.Input[Any]]

    def inputs(self) -> dict[str, Any]:
        return {**typed_inputs(CheckHandler, self.settings), "catalog": dump(self.catalog), "triggers": self.triggers}


class Check(LockstepResource):
    """`lockstep:index:Check`"""

    HANDLER = CheckHandler
    record: pulumi.Output[str]
    passed: pulumi.Output[bool]
    failed: pulumi.Output[list]
    verified: pulumi.Output[list]

    def __init__(self, name: str, args: CheckArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(name, args.inputs(), opts)


# -------------------------------------------------------------------------- the embedded leaves


class Bucket(LockstepResource):
    """`lockstep:embedded:Bucket`"""

    HANDLER = BucketHandler
    bucket: pulumi.Output[str]

    def __init__(self, name: str, settings: StackSettings, opts: pulumi.ResourceOptions | None = None):
        bucket = deferred.value(settings, lambda resolved: resolved.artifacts.bucket)
        super().__init__(name, {**typed_inputs(BucketHandler, settings), "bucket": bucket}, opts)


class Corpus(LockstepResource):
    """`lockstep:embedded:Corpus`"""

    HANDLER = CorpusHandler

    def __init__(self, name: str, settings: StackSettings, opts: pulumi.ResourceOptions | None = None):
        inputs = {**typed_inputs(CorpusHandler, settings), "uri": deferred.value(settings, corpus_store.corpus_uri)}
        super().__init__(name, inputs, opts)


class Artifact(LockstepResource):
    """`lockstep:embedded:Artifact`"""

    HANDLER = ArtifactHandler
    key: pulumi.Output[str]

    def __init__(
        self, name: str, settings: StackSettings, entry: CatalogEntry, opts: pulumi.ResourceOptions | None = None
    ):
        inputs = {
            **typed_inputs(ArtifactHandler, settings, entry),
            "bucket": deferred.value(settings, lambda resolved: resolved.artifacts.bucket),
            "key": entry.artifact_key,
            **({} if settings.embedded else {"embedded": False}),  # the default is not sent
        }
        super().__init__(name, inputs, opts)


class EndpointSlot(LockstepResource):
    """`lockstep:embedded:EndpointSlot`"""

    HANDLER = EndpointSlotHandler
    name: pulumi.Output[str]
    version: pulumi.Output[str]
    url: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        settings: StackSettings,
        slot: str,
        entry: CatalogEntry,
        opts: pulumi.ResourceOptions | None = None,
    ):
        inputs = {
            **typed_inputs(EndpointSlotHandler, settings, entry),
            "slot": slot,
            "name": ops_endpoints.endpoint_name(settings, slot),
        }
        super().__init__(name, inputs, opts)


class DerivedTable(LockstepResource):
    """`lockstep:embedded:DerivedTable`"""

    HANDLER = DerivedTableHandler
    name: pulumi.Output[str]

    def __init__(
        self, name: str, settings: StackSettings, store: DerivedStore, opts: pulumi.ResourceOptions | None = None
    ):
        inputs = {**typed_inputs(DerivedTableHandler, settings), "name": store.table, "store": dump(store)}
        super().__init__(name, inputs, opts)
