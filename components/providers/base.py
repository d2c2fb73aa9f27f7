"""What every lockstep custom resource shares inside the provider process (pulumi-resource-lockstep).

A handler sees plain Python values: the provider unwraps the engine's PropertyValues (secrets
included) before calling it and wraps the outputs again. A resource's inputs are typed
(components/providers/shapes.py): the stack settings and the catalog entry's fields it uses, plus
its own. Credentials are not inputs: they are the provider's configuration (lockstep.ops.clients).

The state an older lockstep wrote is read through `migrate` (STATE_VERSION): fields it no longer
has are ignored, fields it gained take their defaults, so an upgrade of lockstep is not a change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from components.providers import shapes
from lockstep.config import Catalog, CatalogEntry, DerivedStore, StackSettings, describe_validation_error
from lockstep.errors import Unreachable
from lockstep.ops import clients

# What an older lockstep kept in a resource's inputs and this one no longer takes: the password,
# the region and the AWS profile are the provider's configuration now (a change re-runs nothing).
RETIRED_INPUTS = frozenset({"opensearchPassword", "region", "awsProfile"})
# Stack settings no resource takes: the region and the AWS profile are the provider's configuration,
# autoRevert is `lockstep up`'s.
NOT_INPUTS = ("region", "awsProfile", "autoRevert")
# 0: lockstep up to 302bdd0 (`settings` and `entry` as opaque objects); 1: typed inputs.
STATE_VERSION = 1
STATE_VERSION_KEY = "stateVersion"
# StackSettings requires a pin and two slots; resources that must not change on a flip (indices,
# slots) never read them. Naming no real version keeps drop_index's guard to what is recorded.
DETACHED = {"pin": "(detached)", "slots": {"blue": "(detached)", "green": "(detached-standby)"}}
# Where things live, never what is live: a flip or a new retain list must not touch these resources.
PLACEMENT = (
    "stack",
    "namePrefix",
    "artifacts",
    "opensearch",
    "corpus",
    "backfill",
    "pointerParameter",
)
# Every stack setting a resource can take.
EVERY_SETTING = tuple(
    f.alias or name for name, f in StackSettings.model_fields.items() if (f.alias or name) not in NOT_INPUTS
)
# The catalog entry's fields that decide what an artifact embeds (not its description or floors).
EMBEDDER = ("version", "model", "family", "dimension", "spaceType", "artifactSha256")


class UnknownValue:
    """An input the engine does not know yet (a preview of an output of another resource)."""

    def __repr__(self) -> str:
        return "<unknown>"


UNKNOWN = UnknownValue()


def has_unknown(value: Any) -> bool:
    if value is UNKNOWN:
        return True
    if isinstance(value, dict):
        return any(has_unknown(item) for item in value.values())
    if isinstance(value, list):
        return any(has_unknown(item) for item in value)
    return False


@dataclass
class Diff:
    changes: bool
    replaces: list[str] = field(default_factory=list)
    diffs: list[str] = field(default_factory=list)
    delete_before_replace: bool = False
    # Every changed leaf (`opensearch.replicas`) and whether it replaces the resource.
    detailed: dict[str, bool] = field(default_factory=dict)


@dataclass
class Property:
    """One schema property: `type` a JSON schema type or "any"; inputs are required unless optional.
    `spec` is a full schema type (an object type of a stack setting) instead of `type`."""

    description: str
    type: str = "string"
    optional: bool = False
    output_only: bool = False
    spec: dict | None = None
    # What an absent optional input means (state written before the input existed has none).
    default: Any = None


def _model_property(model: type[BaseModel], name: str, what: str, found: dict) -> Property:
    """A typed input taken from one field of a pydantic model (its schema, its optionality)."""
    fields = {f.alias or key: f for key, f in model.model_fields.items()}
    return Property(
        what.format(name=name),
        optional=not fields[name].is_required(),
        spec=shapes.schema_of(fields[name].annotation, found),
    )


class Handler:
    """One custom resource type. Subclasses set TOKEN, DESCRIPTION, SETTINGS (the stack settings
    it uses), ENTRY (the catalog entry's fields it uses) and OWN (its other properties)."""

    TOKEN = ""
    DESCRIPTION = ""
    SETTINGS: tuple[str, ...] = ()
    ENTRY: tuple[str, ...] = ()
    OWN: dict[str, Property] = {}
    # Inputs (or leaves of one: `opensearch.shards`) whose change replaces the resource.
    REPLACE_ON: tuple[str, ...] = ()
    # Outputs the handler observes; never compared as inputs.
    OBSERVED: frozenset[str] = frozenset()
    # What `pulumi up` does with the thing `pulumi import` names (it cannot be imported by id alone).
    ADOPTION = "declare it in the stack config and run `pulumi up`, which adopts what is already there"

    @classmethod
    def properties(cls, types: dict | None = None) -> dict[str, Property]:
        found = types if types is not None else {}
        setting = "The stack's `{name}` setting (lockstep:{name} in stacks/Pulumi.<stack>.yaml)."
        entry = "The catalog entry's `{name}` (stacks/catalog.yaml)."
        props = {name: _model_property(StackSettings, name, setting, found) for name in cls.SETTINGS}
        props.update({name: _model_property(CatalogEntry, name, entry, found) for name in cls.ENTRY})
        props.update(cls.OWN)
        props[STATE_VERSION_KEY] = Property(
            "Shape of this resource's state (lockstep migrates older state when it reads it).",
            "integer",
            output_only=True,
        )
        return props

    @classmethod
    def input_names(cls) -> list[str]:
        return [name for name, prop in cls.properties().items() if not prop.output_only]

    # ---------------------------------------------------------------------- state and inputs

    @classmethod
    def migrate(cls, state: dict) -> dict:
        """State as this lockstep writes it. Version 0 held the settings and the catalog entry as
        two opaque objects (`settings`, `entry`): their fields become the resource's own."""
        if not state:
            return state
        state = {key: value for key, value in state.items() if key not in RETIRED_INPUTS}
        if state.get(STATE_VERSION_KEY) == STATE_VERSION:
            return state
        settings = state.pop("settings", None) if "settings" not in cls.OWN else None
        entry = state.pop("entry", None) if "entry" not in cls.OWN else None
        if isinstance(settings, dict):
            for name in cls.SETTINGS:
                if name in settings:
                    state.setdefault(name, settings[name])
        if isinstance(entry, dict):
            for name in cls.ENTRY:
                if name in entry:
                    state.setdefault(name, entry[name])
        return state

    def check(self, olds: dict, news: dict) -> list[tuple[str, str]]:
        """(property, reason) for inputs the models refuse; unknown inputs pass."""
        if any(has_unknown(news.get(name)) for name in self.SETTINGS):
            return []
        found = failures(news, ("settings", self.settings_of))
        if self.ENTRY and not any(has_unknown(news.get(name)) for name in self.ENTRY):
            found += failures(news, ("entry", entry_of))
        return found

    def settings_of(self, props: dict) -> StackSettings:
        """The stack settings this resource was given (a resource without the pin is detached), in
        the region and AWS profile of the provider's configuration."""
        values = {name: props[name] for name in self.SETTINGS if props.get(name) is not None}
        if "pin" not in self.SETTINGS:
            values.update(DETACHED)
        configured = clients.current()
        values.update({"region": configured.region, "awsProfile": configured.profile})
        values = {key: value for key, value in values.items() if value is not None}
        return StackSettings.model_validate(shapes.known_fields(StackSettings, values))

    # -------------------------------------------------------------------------------- diff

    def _normalized(self, name: str, value: Any) -> Any:
        if name in self.SETTINGS or name in self.ENTRY:
            model = StackSettings if name in self.SETTINGS else CatalogEntry
            fields = {f.alias or key: f for key, f in model.model_fields.items()}
            if value is None and not fields[name].is_required():
                value = shapes.dump_default(fields[name])
            return shapes.normalized(fields[name].annotation, value)
        if value is None and name in self.OWN:
            return self.OWN[name].default
        if name == "catalog":
            return shapes.catalog_normalized(value)
        if name == "store":
            return shapes.normalized(DerivedStore, value)
        return value

    def diff(self, olds: dict, news: dict) -> Diff:
        """Each changed input leaf, and whether it replaces; defaults and retired inputs are no change."""
        olds = self.migrate(olds)
        changed: list[str] = []
        unknown: set[str] = set()
        for name in self.input_names():
            old, new = olds.get(name), news.get(name)
            if has_unknown(new):
                changed.append(name)
                unknown.add(name)
            else:
                changed += shapes.changed_paths(self._normalized(name, old), self._normalized(name, new), name)
        detailed = {path: self.replaces(path, unknown=path in unknown) for path in changed}
        tops = list(dict.fromkeys(path.split(".")[0].split("[")[0] for path in changed))
        replaces = list(dict.fromkeys(p.split(".")[0].split("[")[0] for p, r in detailed.items() if r))
        return Diff(bool(changed), replaces, tops, detailed=detailed)

    def replaces(self, path: str, unknown: bool = False) -> bool:
        """Whether a change at `path` replaces the resource. A value not known until the update (a
        preview's output of a resource being replaced) replaces when any leaf under it would: the
        preview shows the replace the update may do, never an update that turns into one."""
        under = any(path == key or path.startswith(f"{key}.") or path.startswith(f"{key}[") for key in self.REPLACE_ON)
        return under or (unknown and any(key.startswith(f"{path}.") for key in self.REPLACE_ON))

    # ------------------------------------------------------------------------------ operations

    def create(self, urn: str, news: dict) -> tuple[str, dict]:
        raise NotImplementedError

    def read(self, urn: str, id_: str, state: dict) -> tuple[str, dict]:
        return id_, state

    def update(self, urn: str, id_: str, olds: dict, news: dict) -> dict:
        return self.create(urn, news)[1]

    def import_refusal(self, id_: str) -> str:
        """Why `pulumi import` of `id_` is refused, and what to do: a lockstep resource's inputs are
        the stack's settings (buckets, corpus, pointer, catalog entry), which nothing in the cloud
        records, so an id alone cannot make a resource whose next diff is honest."""
        return (
            f"{self.TOKEN} {id_} cannot be imported: its inputs are the stack's settings, which the id "
            f"does not carry; {self.ADOPTION.format(id=id_)}"
        )

    def delete(self, urn: str, id_: str, state: dict) -> str | None:
        """Default: the resource leaves the state, the data stays. Returns what to tell the user."""
        return None


# ------------------------------------------------------------------------------ validated inputs


def failures(props: dict, *builders) -> list[tuple[str, str]]:
    """(property, reason) for each input that its pydantic model refuses; unknown inputs pass."""
    found = []
    for name, build in builders:
        if has_unknown(props.get(name)):
            continue
        try:
            build(props)
        except ValidationError as exc:
            found.append((name, describe_validation_error(exc)))
        except (KeyError, TypeError, AttributeError):
            found.append((name, "is missing or not an object"))
    return found


def entry_of(props: dict) -> CatalogEntry:
    names = [f.alias or key for key, f in CatalogEntry.model_fields.items()]
    return CatalogEntry.model_validate({name: props[name] for name in names if props.get(name) is not None})


def catalog_of(props: dict) -> Catalog:
    return Catalog.model_validate(shapes.known_fields(Catalog, props["catalog"]))


def store_of(props: dict) -> DerivedStore:
    return DerivedStore.model_validate(shapes.known_fields(DerivedStore, props["store"]))


def dump(model) -> dict:
    return model.model_dump(by_alias=True, mode="json")


def opensearch_where(settings: StackSettings) -> str:
    try:
        return clients.opensearch_url(settings.opensearch)
    except Unreachable:  # only used in messages; building the client raises the real error
        return "(unconfigured)"
