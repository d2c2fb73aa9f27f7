"""The program side of lockstep's custom resources: `pulumi.CustomResource`s whose type tokens the
`lockstep` plugin serves (components/providers/provider.py). Properties are camelCase on the wire
and also readable as snake_case attributes (`index.doc_count`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pulumi

from components.providers.base import PASSWORD, dump
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

# What an index (or a slot, or an artifact) needs from the stack: where things live, never which
# version is live. A flip or a new retain list must not touch their inputs.
PLACEMENT = {
    "stack",
    "name_prefix",
    "region",
    "aws_profile",
    "artifacts",
    "opensearch",
    "corpus",
    "backfill",
    "pointer_parameter",
}


def placement(settings: StackSettings, *extra: str) -> dict:
    return settings.model_dump(by_alias=True, mode="json", include=PLACEMENT | set(extra), exclude_none=True)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _with_password(inputs: dict, password: pulumi.Input[str] | None) -> dict:
    if password is not None:
        inputs[PASSWORD] = pulumi.Output.secret(password)
    return inputs


class LockstepResource(pulumi.CustomResource):
    """A custom resource of the `lockstep` plugin: every schema property becomes an attribute."""

    HANDLER: Any = None

    def __init__(self, name: str, inputs: dict, opts: pulumi.ResourceOptions | None = None):
        outputs = {key: None for key, prop in self.HANDLER.PROPERTIES.items() if prop.output_only}
        props = {**outputs, **inputs}
        super().__init__(self.HANDLER.TOKEN, name, props, opts)
        for key in props:  # camelCase on the wire, snake_case in Python
            if _snake(key) != key:
                setattr(self, _snake(key), getattr(self, key))


# ----------------------------------------------------------------------------- the release's own


@dataclass
class IndexArgs:
    settings: StackSettings
    entry: CatalogEntry
    opensearch_password: pulumi.Input[str] | None = None

    def inputs(self) -> dict[str, Any]:
        entry, search = self.entry, self.settings.opensearch
        return _with_password(
            {
                "index": search.index_name(entry.version),
                "version": entry.version,
                "dimension": entry.dimension,
                "spaceType": entry.space_type,
                "engine": search.engine,
                "artifactSha256": entry.artifact_sha256,
                "entry": dump(entry),
                "settings": placement(self.settings),
            },
            self.opensearch_password,
        )


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
    opensearch_password: pulumi.Input[str] | None = None
    # Per filled slot: the entry it serves and, on SageMaker, the endpoint configuration just created.
    slot_deployments: dict[str, dict[str, Any]] | None = None

    def inputs(self) -> dict[str, Any]:
        settings, entry = self.settings, self.entry
        return _with_password(
            {
                "pointer": settings.pointer_name,
                "alias": settings.opensearch.alias_name,
                "version": entry.version,
                "index": settings.opensearch.index_name(entry.version),
                "artifactSha256": entry.artifact_sha256,
                "endpoint": self.endpoint,
                "entry": dump(entry),
                "settings": dump(settings),
                **({"slotDeployments": self.slot_deployments} if self.slot_deployments else {}),
            },
            self.opensearch_password,
        )


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
    opensearch_password: pulumi.Input[str] | None = None

    def inputs(self) -> dict[str, Any]:
        return _with_password(
            {
                "pin": self.settings.pin,
                "table": self.table,
                "store": dump(self.store),
                "catalog": dump(self.catalog),
                "settings": dump(self.settings),
            },
            self.opensearch_password,
        )


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
    opensearch_password: pulumi.Input[str] | None = None

    def inputs(self) -> dict[str, Any]:
        return _with_password(
            {
                "stack": self.settings.stack,
                "pin": self.settings.pin,
                "settings": dump(self.settings),
                "catalog": dump(self.catalog),
                "triggers": self.triggers,
            },
            self.opensearch_password,
        )


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
        super().__init__(name, {"bucket": settings.artifacts.bucket, "settings": placement(settings)}, opts)


class Corpus(LockstepResource):
    """`lockstep:embedded:Corpus`"""

    HANDLER = CorpusHandler

    def __init__(self, name: str, settings: StackSettings, opts: pulumi.ResourceOptions | None = None):
        inputs = {"uri": corpus_store.corpus_uri(settings), "settings": placement(settings)}
        super().__init__(name, inputs, opts)


class Artifact(LockstepResource):
    """`lockstep:embedded:Artifact`"""

    HANDLER = ArtifactHandler
    key: pulumi.Output[str]

    def __init__(
        self, name: str, settings: StackSettings, entry: CatalogEntry, opts: pulumi.ResourceOptions | None = None
    ):
        inputs = {
            "bucket": settings.artifacts.bucket,
            "key": entry.artifact_key,
            "version": entry.version,
            "artifactSha256": entry.artifact_sha256,
            "entry": dump(entry),
            "settings": placement(settings),
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
            "slot": slot,
            "name": ops_endpoints.endpoint_name(settings, slot),
            "version": entry.version,
            "artifactSha256": entry.artifact_sha256,
            "entry": dump(entry),
            "settings": placement(settings, "endpoints"),
        }
        super().__init__(name, inputs, opts)


class DerivedTable(LockstepResource):
    """`lockstep:embedded:DerivedTable`"""

    HANDLER = DerivedTableHandler
    name: pulumi.Output[str]

    def __init__(
        self, name: str, settings: StackSettings, store: DerivedStore, opts: pulumi.ResourceOptions | None = None
    ):
        inputs = {"name": store.table, "store": dump(store), "settings": placement(settings)}
        super().__init__(name, inputs, opts)
