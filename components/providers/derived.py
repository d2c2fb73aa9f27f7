"""`lockstep:index:DerivedRepair`: the repair of a derived store, part of the release unit, after the cutover.

It calls lockstep.ops.derived.repair, the same call `lockstep apply` makes (recomputing related
lists queries OpenSearch, hence the password input).
"""

from __future__ import annotations

from typing import Any

from components.providers.base import (
    EVERY_SETTING,
    STATE_VERSION,
    STATE_VERSION_KEY,
    Handler,
    Property,
    catalog_of,
    failures,
    store_of,
)
from lockstep.ops import derived

STORE = Property(
    "The derived store (stack config's derived entry).", spec={"$ref": "#/types/lockstep:index:DerivedStore"}
)


class DerivedRepairHandler(Handler):
    TOKEN = "lockstep:index:DerivedRepair"
    DESCRIPTION = (
        "Records another version wrote into a derived store are recomputed with the pin or quarantined "
        "(the store's repair policy). Deleting the resource keeps the records."
    )
    SETTINGS = EVERY_SETTING
    OWN = {
        "table": Property("The store's table."),
        "store": STORE,
        "catalog": Property("The catalog.", spec={"$ref": "#/types/lockstep:index:Catalog"}),
        "repaired": Property("What the last repair did.", output_only=True),
        "recordsByVersion": Property("Records per writing version.", "any", output_only=True),
        "quarantinedByVersion": Property("Quarantined records per version.", "any", output_only=True),
    }
    OBSERVED = frozenset({"repaired", "recordsByVersion", "quarantinedByVersion"})

    def check(self, olds: dict, news: dict) -> list[tuple[str, str]]:
        return super().check(olds, news) + failures(news, ("catalog", catalog_of), ("store", store_of))

    def create(self, urn: str, news: dict) -> tuple[str, dict]:
        settings, catalog, store = self.settings_of(news), catalog_of(news), store_of(news)
        done = derived.repair(settings, catalog, store, progress=False)
        return f"{news['table']}:{news['pin']}", {
            **news,
            "repaired": done.summary(),
            **self._counts(settings, catalog, store),
            STATE_VERSION_KEY: STATE_VERSION,
        }

    def read(self, urn: str, id_: str, state: dict) -> tuple[str, dict]:
        settings = self.settings_of(state)
        return id_, {**state, **self._counts(settings, catalog_of(state), store_of(state))}

    @staticmethod
    def _counts(settings, catalog, store) -> dict[str, Any]:
        counts = derived.count_by_version(settings, catalog, store)
        return {
            "recordsByVersion": counts.records_by_version,
            "quarantinedByVersion": counts.quarantined_by_version,
        }
