"""What a stack holds, as plain data, and the rule for what of it may go. Pure: no I/O, no clients.

The release plan reads these types, the ops layer fills them; both take the retention rule from
here, so the plan's `drop` steps and the index layer's delete guard can never disagree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from lockstep.config import StackSettings


@dataclass
class StoreCounts:
    """Items of one derived store per `model_version`, and how many of those are quarantined."""

    store: str
    table: str
    records_by_version: dict[str, int] = field(default_factory=dict)
    quarantined_by_version: dict[str, int] = field(default_factory=dict)
    fence: str | None = None  # the version the table's fence names; None: no fence (or no table)

    def stale(self, pin: str) -> dict[str, int]:
        """Items another version wrote that are not quarantined: what a repair must handle."""
        left = {v: n - self.quarantined_by_version.get(v, 0) for v, n in self.records_by_version.items() if v != pin}
        return {v: n for v, n in left.items() if n}

    def quarantined(self, pin: str) -> dict[str, int]:
        return {v: n for v, n in self.quarantined_by_version.items() if v != pin and n}

    def to_dict(self) -> dict:
        return asdict(self)


def keep_reason(
    settings: StackSettings,
    version: str,
    index: str,
    aliases: list[str],
    pointer_index: str | None,
    pointer_version: str | None = None,
) -> str | None:
    """Why `version`'s index must stay, or None when it may be dropped: it left the config
    (pin ∪ slots ∪ retain), no alias points to it and the live pointer does not name it."""
    if version == settings.pin:
        return "it is the live pin"
    if settings.slots.slot_of(version):
        return f"it serves the {settings.slots.slot_of(version)} slot"
    if version in settings.retain:
        return "it is retained for instant rollback"
    if aliases:
        return f"alias {', '.join(aliases)} points to it"
    if pointer_index is not None and pointer_index == index:
        return f"the live pointer names it ({pointer_version})" if pointer_version else "the live pointer names it"
    return None
