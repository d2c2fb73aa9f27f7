"""`lockstep:index:DerivedRepair`: the repair of a derived store, part of the release unit, after the cutover.

It calls lockstep.ops.derived.repair, the same call `lockstep apply` makes (recomputing related
lists queries OpenSearch, hence the password input).
"""

from __future__ import annotations

from typing import Any

from components.providers.base import PASSWORD, Handler, Property, credentials, failures, settings_of
from components.providers.opensearch import PASSWORD_PROPERTY
from lockstep.config import Catalog, DerivedStore
from lockstep.ops import derived


def catalog_of(props: dict) -> Catalog:
    return Catalog.model_validate(props["catalog"])


def store_of(props: dict) -> DerivedStore:
    return DerivedStore.model_validate(props["store"])


class DerivedRepairHandler(Handler):
    TOKEN = "lockstep:index:DerivedRepair"
    DESCRIPTION = (
        "Records another version wrote into a derived store are recomputed with the pin or quarantined "
        "(the store's repair policy). Deleting the resource keeps the records."
    )
    PROPERTIES = {
        "pin": Property("The pin the records are repaired for."),
        "table": Property("The store's table."),
        "store": Property("The derived store (stack config's derived entry).", "any"),
        "catalog": Property("The catalog.", "any"),
        "settings": Property("The stack settings.", "any"),
        PASSWORD: PASSWORD_PROPERTY,
        "repaired": Property("What the last repair did.", output_only=True),
        "recordsByVersion": Property("Records per writing version.", "any", output_only=True),
        "quarantinedByVersion": Property("Quarantined records per version.", "any", output_only=True),
    }
    OBSERVED = frozenset({"repaired", "recordsByVersion", "quarantinedByVersion"})

    def check(self, news: dict) -> list[tuple[str, str]]:
        return failures(news, ("settings", settings_of), ("catalog", catalog_of), ("store", store_of))

    def create(self, urn: str, news: dict) -> tuple[str, dict]:
        with credentials(news):
            settings, catalog, store = settings_of(news), catalog_of(news), store_of(news)
            done = derived.repair(settings, catalog, store, progress=False)
            return f"{news['table']}:{news['pin']}", {
                **news,
                "repaired": done.summary(),
                **self._counts(settings, catalog, store),
            }

    def read(self, urn: str, id_: str, state: dict) -> tuple[str, dict]:
        with credentials(state):
            return id_, {**state, **self._counts(settings_of(state), catalog_of(state), store_of(state))}

    @staticmethod
    def _counts(settings, catalog, store) -> dict[str, Any]:
        counts = derived.count_by_version(settings, catalog, store)
        return {
            "recordsByVersion": counts.records_by_version,
            "quarantinedByVersion": counts.quarantined_by_version,
        }
