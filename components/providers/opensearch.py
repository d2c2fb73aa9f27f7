"""`lockstep:index:Index` and `lockstep:index:Cutover`: a version's k-NN index and the cutover.

Both call lockstep.ops and nothing else. Their inputs are typed (components/providers/base.py):
the stack settings and catalog entry fields each uses; the password is the provider's configuration.

What the stack keeps (pin, slots, retain, and those versions' index names) is recorded by the
Cutover next to the live pointer (`<pointer>-kept`); an Index's delete reads it and never deletes
the live, the standby or a retained index:
- in a replace or a removal while the release stands, the delete fails with one line, so the
  engine keeps the resource in its state (the next `up` after putting the change back works);
- once the Cutover itself is deleted (`destroy`, marked `released`), the delete leaves the index,
  says so, and the resource leaves the state: the data stays;
- an index a replacement adopted (`pulumi up --replace`: same physical index) is the
  replacement's: each Index resource records itself as the index's `_meta.holder`.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict
from typing import Any

from botocore.exceptions import ClientError

from components.providers.base import (
    EMBEDDER,
    PLACEMENT,
    STATE_VERSION,
    STATE_VERSION_KEY,
    Diff,
    Handler,
    Property,
    dump,
    entry_of,
    opensearch_where,
)
from lockstep.config import CatalogEntry, StackSettings
from lockstep.errors import LockstepError
from lockstep.ops import clients, endpoints, index, live_state
from lockstep.ops.backfill import engine as backfill_engine

# A change to any of these means another mapping, another embedder or another cluster: replace,
# never an update that leaves the index as it was. `opensearch.replicas` is an update (put-settings).
MAPPING_FIELDS = (
    "index",
    "version",
    "dimension",
    "spaceType",
    "engine",
    "artifactSha256",
    "model",
    "family",
    "opensearch.url",
    "opensearch.engine",
    "opensearch.shards",
    "opensearch.hnswM",
    "opensearch.efConstruction",
)


# This Index resource's mark (a state output, and the index's `_meta.holder`): a delete acts only on
# an index its own resource holds.
HOLDER = "holder"


def shapes_of_kept(kept: dict) -> dict:
    """The stack settings fields of a kept record (what an index's delete guards with)."""
    return {key: kept[key] for key in ("pin", "slots", "retain") if key in kept}


def kept_parameter(pointer_name: str) -> str:
    return f"{pointer_name}-kept"


def write_kept(ssm, settings: StackSettings) -> None:
    """What the stack keeps after this cutover: read by an index's delete."""
    kept = {
        "pin": settings.pin,
        "slots": settings.slots.as_dict(),
        "retain": list(settings.retain),
        "indices": sorted({settings.opensearch.index_name(version) for version in settings.versions}),
    }
    _put_kept(ssm, settings.pointer_name, kept)


def release_kept(ssm, pointer_name: str) -> None:
    """The release is gone (its Cutover deleted): its indices' deletes leave them and say so."""
    kept = read_kept(ssm, pointer_name)
    if kept is not None:
        _put_kept(ssm, pointer_name, {**kept, "released": True})


def _put_kept(ssm, pointer_name: str, kept: dict) -> None:
    ssm.put_parameter(
        Name=kept_parameter(pointer_name), Value=json.dumps(kept, sort_keys=True), Type="String", Overwrite=True
    )


def read_kept(ssm, pointer_name: str) -> dict | None:
    try:
        return json.loads(ssm.get_parameter(Name=kept_parameter(pointer_name))["Parameter"]["Value"])
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ParameterNotFound":
            return None
        raise
    except ValueError:
        return None


# ------------------------------------------------------------------------------------ the index


class IndexHandler(Handler):
    TOKEN = "lockstep:index:Index"
    DESCRIPTION = (
        "One model version's k-NN index, provisioned and filled from the corpus with the version's artifact. "
        "A delete never removes the live, the standby or a retained index: it leaves it and says why."
    )
    SETTINGS = PLACEMENT
    ENTRY = EMBEDDER
    OWN = {
        "index": Property("Name of the index (<indexPrefix>-<version>)."),
        "engine": Property("k-NN engine (lucene, faiss, nmslib)."),
        "docCount": Property("Documents in the index.", "integer", output_only=True),
        "meta": Property("The index mapping's _meta.", "any", output_only=True),
        "embedded": Property(
            "Whether the stack runs on the embedded servers (default). An AWS stack's index reads its pointer, "
            "corpus and artifacts from AWS, never from an embedded moto that happens to run on the machine.",
            "boolean",
            optional=True,
            default=True,
        ),
    }
    REPLACE_ON = MAPPING_FIELDS
    ADOPTION = (
        "name its version in the stack (lockstep:slots or lockstep:retain) and run `pulumi up`: the index {id} "
        "already there is adopted as it is (caught up, not rebuilt)"
    )
    OBSERVED = frozenset({"docCount", "meta"})

    def settings_of(self, props: dict) -> StackSettings:
        """The stack's placement; `embedded: false` (an AWS stack) makes its AWS clients AWS's — the
        delete guard then reads the stack's real pointer, not an embedded moto's empty one."""
        settings = super().settings_of(props)
        if props.get("embedded") is not False:
            return settings
        aws = settings.endpoints.model_copy(update={"backend": "sagemaker"})
        return settings.model_copy(update={"endpoints": aws})

    def diff(self, olds: dict, news: dict) -> Diff:
        diff = super().diff(olds, news)
        # Same name, new mapping: the old index has to go before the new one can be created
        # (and its delete refuses while the stack keeps it: the replace then stops, nothing lost).
        diff.delete_before_replace = bool(diff.replaces) and olds.get("index") == news.get("index")
        return diff

    def create(self, urn: str, news: dict) -> tuple[str, dict]:
        """Build the index, or adopt the one already there (caught up, not rebuilt): this resource
        holds it from now on."""
        return news["index"], self._apply(news, holder=uuid.uuid4().hex)

    def update(self, urn: str, id_: str, olds: dict, news: dict) -> dict:
        """Only non-mapping inputs changed (replicas, corpus location, backfill tuning): catch the
        index up and apply them."""
        return self._apply(news, holder=olds.get(HOLDER) or uuid.uuid4().hex)

    def _apply(self, news: dict, holder: str) -> dict:
        settings = self.settings_of(news)
        backfill_engine.sync_index(settings, entry_of(news), progress=False)
        client = clients.opensearch(settings.opensearch)
        # In line with the configured corpus now: a moved corpus is re-stamped (issue 18, defect 2).
        index.restamp_corpus(client, settings, entry_of(news))
        # A replica count changed since the index was built is applied in place (put-settings).
        index.set_replicas(client, news["index"], settings.opensearch.replicas)
        index.set_holder(client, news["index"], holder)
        return {**news, **self._observed(settings, news["index"]), HOLDER: holder, STATE_VERSION_KEY: STATE_VERSION}

    def read(self, urn: str, id_: str, state: dict) -> tuple[str, dict]:
        """`pulumi refresh`: what the cluster holds now; an empty id tells the engine the index is gone."""
        settings = self.settings_of(state)
        client = clients.opensearch(settings.opensearch)
        with clients.reaching("OpenSearch", opensearch_where(settings)):
            meta = index.read_meta(client, id_)
            if meta is None:
                return "", {}
            observed = self._observed(settings, id_, client)
        found = {"version": meta["version"]} if "version" in meta else {}
        if "dimension" in meta:
            found["dimension"] = meta["dimension"]
        if "artifact_sha256" in meta:
            found["artifactSha256"] = meta["artifact_sha256"]
        return id_, {**state, **found, "index": id_, **observed}

    def delete(self, urn: str, id_: str, state: dict) -> str | None:
        """Delete the index unless the stack keeps it. A kept one fails the delete while the release
        stands (the engine keeps the resource: nothing is lost, the next `up` works once the change
        is put back) and is left, said plainly, once the release is destroyed."""
        settings = self.settings_of(state)
        ssm = clients.aws_for(settings, "ssm")
        client = clients.opensearch(settings.opensearch)
        with clients.reaching("OpenSearch", opensearch_where(settings)), clients.reaching("AWS", "SSM"):
            meta = index.read_meta(client, id_)
            if meta is None:
                return None
            if meta.get(index.HOLDER_KEY) != state.get(HOLDER):
                return f"left index {id_} in place: its replacement holds it"
            owner = index.other_stack(meta, settings)
            if owner:
                return f"left index {id_} in place: {index.shared_prefix('it', owner, settings)}"
            kept = read_kept(ssm, settings.pointer_name)
            if kept:
                settings = settings.model_validate({**settings.model_dump(by_alias=True), **shapes_of_kept(kept)})
            pointer = live_state.read_pointer(ssm, settings.pointer_name)
            if kept is None and pointer is not None:  # live, yet no Cutover recorded the slots and retain
                reason: str | None = (
                    f"stack {settings.stack} is live ({settings.pointer_name} names {pointer.version}) but no Cutover "
                    f"has recorded what it keeps ({kept_parameter(settings.pointer_name)}), so a standby or retained "
                    "index cannot be told apart"
                )
            else:
                by_version = kept is None or id_ in kept.get("indices", [id_])
                reason = live_state.drop_named_index(client, settings, state["version"], id_, pointer, by_version)
        if reason is None:
            return None
        if kept and kept.get("released"):
            return f"kept index {id_}: {reason} (the data stays; delete it by hand if you mean to)"
        raise LockstepError(
            f"refusing to delete index {id_}: {reason}. A change that needs a new index (mapping, shards, "
            "engine) cannot replace an index the stack keeps: put the change back, or build new indices "
            "under another opensearch.indexPrefix; the resource stays in the state"
        )

    @staticmethod
    def _observed(settings: StackSettings, name: str, client=None) -> dict[str, Any]:
        client = client or clients.opensearch(settings.opensearch)
        total, _ = live_state.count_by_model_version(client, name)
        return {"meta": index.read_meta(client, name) or {}, "docCount": total}


# ---------------------------------------------------------------------------------- the cutover


class CutoverHandler(Handler):
    TOKEN = "lockstep:index:Cutover"
    DESCRIPTION = (
        "The live alias and the live pointer, moved together to the pin's index and endpoint (after catching "
        "the index up). A refresh sees an alias or pointer moved by hand; the next update moves them back."
    )
    SETTINGS = (*PLACEMENT, "pin", "slots", "retain", "endpoints", "derived")
    ENTRY = EMBEDDER
    OWN = {
        "pointer": Property("Name of the live pointer (SSM parameter)."),
        "alias": Property("Name of the live alias."),
        "index": Property("The pin's index."),
        "endpoint": Property("Name of the endpoint serving the pin."),
        "slotDeployments": Property(
            "Per filled slot: the catalog entry it serves and (SageMaker) the endpoint configuration this "
            "update created. The cutover refuses unless each slot's endpoint serves that artifact on that "
            "configuration, InService: a rolled-back update is not success, whatever changed.",
            "object",
            optional=True,
        ),
        "switchedAt": Property("When the pointer last moved.", output_only=True),
        "aliasTargets": Property("Indices the live alias points to.", "array", output_only=True),
    }
    # Another parameter is another pointer; the old one is left in place (see delete).
    REPLACE_ON = ("pointer",)
    ADOPTION = (
        "name it as the stack's lockstep:pointerParameter and run `pulumi up`: the cutover takes over the "
        "pointer {id} and the live alias where they are"
    )
    OBSERVED = frozenset({"switchedAt", "aliasTargets"})

    def diff(self, olds: dict, news: dict) -> Diff:
        diff = super().diff(olds, news)
        if "slotDeployments" not in self.migrate(olds):  # state from before it: what it says is in the other inputs
            diff.detailed = {p: r for p, r in diff.detailed.items() if not p.startswith("slotDeployments")}
            diff.diffs = [d for d in diff.diffs if d != "slotDeployments"]
            diff.changes = bool(diff.detailed)
        # Drift seen by a refresh (the alias moved by hand): the update moves it back.
        if not diff.changes and olds.get("aliasTargets") not in (None, [news.get("index")]):
            diff.changes, diff.diffs, diff.detailed = True, ["aliasTargets"], {"aliasTargets": False}
        # A replacement deletes first: the delete only marks the release's kept record released
        # (alias and pointer stay), so run last it would release the record the new one just wrote
        # (`up --replace` on one pointer), and the Index deletes it guards would pass.
        diff.delete_before_replace = bool(diff.replaces)
        return diff

    def create(self, urn: str, news: dict) -> tuple[str, dict]:
        settings, entry = self.settings_of(news), entry_of(news)
        client = clients.opensearch(settings.opensearch)
        ssm = clients.aws_for(settings, "ssm")
        # Reattach: catch up the delta (new, changed, gone documents) before anyone reads the index.
        backfill_engine.sync_index(settings, entry, progress=False)
        # Both slots must serve what this update deployed before the alias follows the pin
        # (issue 18, defect 5; issue 24: the configuration too, the standby too).
        deployed = news.get("slotDeployments") or {settings.live_slot: {"entry": dump(entry)}}
        endpoints.require_slots_serving(
            settings,
            {slot: CatalogEntry.model_validate(deployment["entry"]) for slot, deployment in deployed.items()},
            {slot: d["endpointConfig"] for slot, d in deployed.items() if d.get("endpointConfig")},
        )
        with clients.reaching("OpenSearch", opensearch_where(settings)):
            pointer = live_state.cutover(client, ssm, settings, entry, news["endpoint"])
            write_kept(ssm, settings)
            targets = live_state.alias_targets(client, settings.opensearch.alias_name)
        outputs = {"switchedAt": pointer.switched_at, "aliasTargets": targets, STATE_VERSION_KEY: STATE_VERSION}
        return settings.pointer_name, {**news, **outputs}

    def update(self, urn: str, id_: str, olds: dict, news: dict) -> dict:
        """The cutover; then an alias the stack renamed (`opensearch.alias`, or `indexPrefix` without
        one) leaves the indices it named, once the new one is live: left there, it would keep
        serving the old version to alias readers, and its old index could never be deleted."""
        outputs = self.create(urn, news)[1]
        retired = self.migrate(olds).get("alias")
        if retired and retired != news["alias"]:
            settings = self.settings_of(news)
            with clients.reaching("OpenSearch", opensearch_where(settings)):
                live_state.retire_alias(clients.opensearch(settings.opensearch), retired)
        return outputs

    def read(self, urn: str, id_: str, state: dict) -> tuple[str, dict]:
        settings = self.settings_of(state)
        ssm = clients.aws_for(settings, "ssm")
        client = clients.opensearch(settings.opensearch)
        with clients.reaching("OpenSearch", opensearch_where(settings)):
            pointer = live_state.read_pointer(ssm, id_)
            if pointer is None:
                return "", {}
            targets = live_state.alias_targets(client, settings.opensearch.alias_name)
        observed = {key: value for key, value in asdict(pointer).items() if key in ("version", "endpoint", "index")}
        return id_, {**state, **observed, "switchedAt": pointer.switched_at, "aliasTargets": targets}

    def delete(self, urn: str, id_: str, state: dict) -> str | None:
        """Leaves the alias and the pointer in place: removing the resource must not take search
        offline. The release is gone: what it kept is marked released, so its indices' deletes leave
        them (and say so) instead of failing."""
        settings = self.settings_of(state)
        with clients.reaching("AWS", "SSM"):
            release_kept(clients.aws_for(settings, "ssm"), id_)
        return f"left the live alias {state.get('alias')} and the pointer {id_} in place (search stays online)"
