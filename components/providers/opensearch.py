"""Dynamic providers for what no Pulumi provider manages: a version's k-NN index and the cutover.

Both call lockstep.ops and nothing else. The provider objects are dill-serialized into the stack
state, so they hold no clients and no credentials: every method builds its clients from the
environment (clients.opensearch / clients.aws). Inputs are plain JSON: the settings and the catalog
entry as dumped by pydantic, rebuilt with `model_validate` inside each method.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)
from pydantic import ValidationError

from lockstep.config import CatalogEntry, StackSettings, describe_validation_error
from lockstep.errors import Unreachable
from lockstep.ops import clients, index, reembed

PROVIDER_KEY = "__provider"

# What an index needs from the stack: where things live, never which version is live. A flip or a
# new retain list must not touch an index's inputs.
INDEX_SETTINGS = {"stack", "region", "artifacts", "opensearch", "corpus", "backfill", "pointer_parameter"}
# A change to any of these means another mapping (or another index): replace, never update.
MAPPING_FIELDS = ("index", "version", "dimension", "space_type", "engine", "artifact_sha256")
# Output-only properties: what the providers observed, never compared as inputs.
OBSERVED = {"doc_count", "meta", "switched_at", "alias_targets"}
# StackSettings requires a pin and two slots; an index's operations never read them, and naming no
# real version keeps drop_index's guard to what the cluster says (aliases, the live pointer).
DETACHED = {"pin": "(detached)", "slots": {"blue": "(detached)", "green": "(detached-standby)"}}


def dump(model) -> dict:
    return model.model_dump(by_alias=True, mode="json")


def index_settings(settings: StackSettings) -> dict:
    return settings.model_dump(by_alias=True, mode="json", include=INDEX_SETTINGS, exclude_none=True)


def _entry(props: dict) -> CatalogEntry:
    return CatalogEntry.model_validate(props["entry"])


def _detached_settings(props: dict) -> StackSettings:
    return StackSettings.model_validate({**props["settings"], **DETACHED})


def _settings(props: dict) -> StackSettings:
    return StackSettings.model_validate(props["settings"])


def _changed(olds: dict, news: dict) -> list[str]:
    """Inputs whose value differs (an unknown value in a preview differs too); outputs are not inputs."""
    keys = set(news) - {PROVIDER_KEY} - OBSERVED
    return sorted(key for key in keys if olds.get(key) != news.get(key))


def _validation_failures(props: dict, *builders) -> list[CheckFailure]:
    failures = []
    for field, build in builders:
        try:
            build(props)
        except ValidationError as exc:
            failures.append(CheckFailure(field, describe_validation_error(exc)))
        except (KeyError, TypeError):
            failures.append(CheckFailure(field, "is missing or not an object"))
    return failures


def _opensearch_where(settings: StackSettings) -> str:
    try:
        return clients.opensearch_url(settings.opensearch)
    except Unreachable:  # only used in messages; building the client raises the real error
        return "(unconfigured)"


# ------------------------------------------------------------------------------------ the index


class IndexProvider(ResourceProvider):
    """One version's k-NN index: provisioned and filled from the corpus; refuses to drop a live one."""

    # Holds no secrets (credentials come from the environment): keep the state readable.
    serialize_as_secret_always = False

    def check(self, _olds: dict, news: dict) -> CheckResult:
        return CheckResult(news, _validation_failures(news, ("settings", _detached_settings), ("entry", _entry)))

    def create(self, props: dict) -> CreateResult:
        settings, entry = _detached_settings(props), _entry(props)
        reembed.sync_index(settings, entry, progress=False)
        return CreateResult(props["index"], {**props, **self._observed(settings, props["index"])})

    def diff(self, _id: str, olds: dict, news: dict) -> DiffResult:
        changed = _changed(olds, news)
        replaces = [key for key in MAPPING_FIELDS if key in changed]
        # Same name, new mapping: the old index has to go before the new one can be created.
        same_name = olds.get("index") == news.get("index")
        return DiffResult(
            changes=bool(changed),
            replaces=replaces,
            delete_before_replace=bool(replaces) and same_name,
        )

    def update(self, _id: str, _olds: dict, news: dict) -> UpdateResult:
        """Only non-mapping inputs changed (corpus location, backfill tuning): catch the index up."""
        settings, entry = _detached_settings(news), _entry(news)
        reembed.sync_index(settings, entry, progress=False)
        return UpdateResult({**news, **self._observed(settings, news["index"])})

    def read(self, id_: str, props: dict) -> ReadResult:
        """`pulumi refresh`: what the cluster holds now; an empty id tells the engine the index is gone."""
        settings = _detached_settings(props)
        client = clients.opensearch(settings.opensearch)
        with clients.reaching("OpenSearch", _opensearch_where(settings)):
            meta = index.read_meta(client, id_)
            if meta is None:
                return ReadResult("", {})
            observed = self._observed(settings, id_, client)
        found = {key: meta.get(key) for key in MAPPING_FIELDS if key in meta}
        return ReadResult(id_, {**props, **found, "index": id_, **observed})

    def delete(self, id_: str, props: dict) -> None:
        settings = _detached_settings(props)
        client = clients.opensearch(settings.opensearch)
        ssm = clients.aws_for(settings, "ssm")
        with clients.reaching("OpenSearch", _opensearch_where(settings)):
            live = index.Inventory(pointer=index.read_pointer(ssm, settings.pointer_name))
            # GuardRefused while any alias or the live pointer still names the index.
            index.drop_index(client, settings, props["version"], live)

    @staticmethod
    def _observed(settings: StackSettings, name: str, client=None) -> dict[str, Any]:
        client = client or clients.opensearch(settings.opensearch)
        total, _ = index.count_by_model_version(client, name)
        return {"meta": index.read_meta(client, name) or {}, "doc_count": total}


@dataclass
class IndexArgs:
    settings: StackSettings
    entry: CatalogEntry

    def inputs(self) -> dict[str, Any]:
        entry, search = self.entry, self.settings.opensearch
        return {
            "index": search.index_name(entry.version),
            "version": entry.version,
            "dimension": entry.dimension,
            "space_type": entry.space_type,
            "engine": search.engine,
            "artifact_sha256": entry.artifact_sha256,
            "entry": dump(entry),
            "settings": index_settings(self.settings),
        }


class Index(Resource, module="opensearch", name="Index"):
    """`pulumi-python:dynamic/opensearch:Index`"""

    index: pulumi.Output[str]
    version: pulumi.Output[str]
    artifact_sha256: pulumi.Output[str]
    doc_count: pulumi.Output[int]
    meta: pulumi.Output[dict]

    def __init__(self, name: str, args: IndexArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(IndexProvider(), name, {**args.inputs(), "doc_count": None, "meta": None}, opts)


# ---------------------------------------------------------------------------------- the cutover


class CutoverProvider(ResourceProvider):
    """The live alias and the live pointer, moved together to the pin (after catching its index up)."""

    serialize_as_secret_always = False

    def check(self, _olds: dict, news: dict) -> CheckResult:
        return CheckResult(news, _validation_failures(news, ("settings", _settings), ("entry", _entry)))

    def create(self, props: dict) -> CreateResult:
        settings = _settings(props)
        return CreateResult(settings.pointer_name, {**props, **self._cut_over(props)})

    def diff(self, _id: str, olds: dict, news: dict) -> DiffResult:
        changed = _changed(olds, news)
        # Another parameter is another pointer; the old one is removed only by hand (see delete).
        return DiffResult(changes=bool(changed), replaces=[key for key in ("pointer",) if key in changed])

    def update(self, _id: str, _olds: dict, news: dict) -> UpdateResult:
        return UpdateResult({**news, **self._cut_over(news)})

    def read(self, id_: str, props: dict) -> ReadResult:
        settings = _settings(props)
        ssm = clients.aws_for(settings, "ssm")
        client = clients.opensearch(settings.opensearch)
        with clients.reaching("OpenSearch", _opensearch_where(settings)):
            pointer = index.read_pointer(ssm, id_)
            if pointer is None:
                return ReadResult("", {})
            targets = index.alias_targets(client, settings.opensearch.alias_name)
        observed = {key: value for key, value in asdict(pointer).items() if key != "switched_at"}
        return ReadResult(id_, {**props, **observed, "switched_at": pointer.switched_at, "alias_targets": targets})

    def delete(self, _id: str, _props: dict) -> None:
        """Leaves the alias and the pointer in place: removing the resource must not take search offline.

        The pin's index then refuses its own deletion while the alias still points to it.
        """

    @staticmethod
    def _cut_over(props: dict) -> dict[str, Any]:
        settings, entry = _settings(props), _entry(props)
        client = clients.opensearch(settings.opensearch)
        ssm = clients.aws_for(settings, "ssm")
        # Reattach: catch up the delta (new, changed, gone documents) before anyone reads the index.
        reembed.sync_index(settings, entry, progress=False)
        with clients.reaching("OpenSearch", _opensearch_where(settings)):
            pointer = index.cutover(client, ssm, settings, entry, props["endpoint"])
            targets = index.alias_targets(client, settings.opensearch.alias_name)
        return {"switched_at": pointer.switched_at, "alias_targets": targets}


@dataclass
class CutoverArgs:
    settings: StackSettings
    entry: CatalogEntry
    endpoint: pulumi.Input[str]

    def inputs(self) -> dict[str, Any]:
        settings, entry = self.settings, self.entry
        return {
            "pointer": settings.pointer_name,
            "alias": settings.opensearch.alias_name,
            "version": entry.version,
            "index": settings.opensearch.index_name(entry.version),
            "artifact_sha256": entry.artifact_sha256,
            "endpoint": self.endpoint,
            "entry": dump(entry),
            "settings": dump(settings),
        }


class Cutover(Resource, module="opensearch", name="Cutover"):
    """`pulumi-python:dynamic/opensearch:Cutover`"""

    pointer: pulumi.Output[str]
    version: pulumi.Output[str]
    index: pulumi.Output[str]
    endpoint: pulumi.Output[str]
    switched_at: pulumi.Output[str]
    alias_targets: pulumi.Output[list]

    def __init__(self, name: str, args: CutoverArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(CutoverProvider(), name, {**args.inputs(), "switched_at": None, "alias_targets": None}, opts)
