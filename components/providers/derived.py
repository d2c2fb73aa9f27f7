"""Dynamic provider for the repair of a derived store: part of the release unit, after the cutover.

It calls lockstep.ops.derived.repair, the same call `lockstep apply` makes. Like the OpenSearch
providers it holds no clients and no credentials (dill-serialized into the state); inputs are the
settings, the catalog and the store as dumped by pydantic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.dynamic import CheckResult, CreateResult, DiffResult, ReadResult, Resource, ResourceProvider, UpdateResult

from components.providers.opensearch import OBSERVED, _changed, _settings, _validation_failures, dump
from lockstep.config import Catalog, DerivedStore, StackSettings
from lockstep.ops import derived

# What the provider reports, never compared as an input.
REPAIR_OBSERVED = OBSERVED | {"records_by_version", "quarantined_by_version", "repaired"}


def _catalog(props: dict) -> Catalog:
    return Catalog.model_validate(props["catalog"])


def _store(props: dict) -> DerivedStore:
    return DerivedStore.model_validate(props["store"])


class DerivedRepairProvider(ResourceProvider):
    """Records another version wrote into the store are recomputed with the pin or quarantined."""

    serialize_as_secret_always = False

    def check(self, _olds: dict, news: dict) -> CheckResult:
        return CheckResult(
            news, _validation_failures(news, ("settings", _settings), ("catalog", _catalog), ("store", _store))
        )

    def create(self, props: dict) -> CreateResult:
        return CreateResult(f"{props['table']}:{props['pin']}", {**props, **self._repair(props)})

    def diff(self, _id: str, olds: dict, news: dict) -> DiffResult:
        changed = [key for key in _changed(olds, news) if key not in REPAIR_OBSERVED]
        return DiffResult(changes=bool(changed))

    def update(self, _id: str, _olds: dict, news: dict) -> UpdateResult:
        return UpdateResult({**news, **self._repair(news)})

    def read(self, id_: str, props: dict) -> ReadResult:
        counts = derived.count_by_version(_settings(props), _catalog(props), _store(props))
        return ReadResult(
            id_,
            {
                **props,
                "records_by_version": counts.records_by_version,
                "quarantined_by_version": counts.quarantined_by_version,
            },
        )

    def delete(self, _id: str, _props: dict) -> None:
        """The records stay: they belong to the table, not to this release."""

    @staticmethod
    def _repair(props: dict) -> dict[str, Any]:
        settings, catalog, store = _settings(props), _catalog(props), _store(props)
        done = derived.repair(settings, catalog, store, progress=False)
        counts = derived.count_by_version(settings, catalog, store)
        return {
            "repaired": done.summary(),
            "records_by_version": counts.records_by_version,
            "quarantined_by_version": counts.quarantined_by_version,
        }


@dataclass
class DerivedRepairArgs:
    settings: StackSettings
    catalog: Catalog
    store: DerivedStore
    table: pulumi.Input[str]  # the table resource's name: the repair waits for the table

    def inputs(self) -> dict[str, Any]:
        return {
            "pin": self.settings.pin,
            "table": self.table,
            "store": dump(self.store),
            "catalog": dump(self.catalog),
            "settings": dump(self.settings),
        }


class DerivedRepair(Resource, module="dynamodb", name="DerivedRepair"):
    """`pulumi-python:dynamic/dynamodb:DerivedRepair`"""

    pin: pulumi.Output[str]
    table: pulumi.Output[str]
    repaired: pulumi.Output[str]
    records_by_version: pulumi.Output[dict]
    quarantined_by_version: pulumi.Output[dict]

    def __init__(self, name: str, args: DerivedRepairArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(
            DerivedRepairProvider(),
            name,
            {**args.inputs(), "repaired": None, "records_by_version": None, "quarantined_by_version": None},
            opts,
        )
