"""The embedded default's leaves (endpoints.backend local): what pulumi-aws declares for an AWS stack,
realised against the embedded servers (moto, local endpoint processes) with lockstep.ops. The
Artifact serves AWS stacks too: adopting an object already at its key is no import (issue 24).

- `lockstep:embedded:Bucket`: the artifact bucket with the AWS stack's posture (lockstep.ops.artifacts).
- `lockstep:embedded:Corpus`: the stack's corpus and golden queries, generated when missing.
- `lockstep:embedded:Artifact`: one version's content-addressed artifact (immutable: kept on delete;
  one already at its key with the catalog's sha256 is adopted, not rebuilt), on any stack.
- `lockstep:embedded:EndpointSlot`: the slot's local endpoint process serving one version.
- `lockstep:embedded:DerivedTable`: a derived store's table (kept on delete, like deletion protection).
"""

from __future__ import annotations

from components.providers.base import Handler, Property, detached_settings, entry_of, failures
from components.providers.derived import store_of
from lockstep import runtime
from lockstep.ops import artifacts, clients, corpus_store, derived, endpoints


def _s3(props: dict):
    return clients.aws_for(detached_settings(props), "s3")


class BucketHandler(Handler):
    TOKEN = "lockstep:embedded:Bucket"
    DESCRIPTION = "The artifact bucket on the embedded S3: private, versioned, encrypted, TLS-only (kept on delete)."
    PROPERTIES = {
        "bucket": Property("Bucket name."),
        "settings": Property("The stack settings (where things live).", "any"),
    }
    REPLACE_ON = ("bucket",)

    def check(self, news: dict) -> list[tuple[str, str]]:
        return failures(news, ("settings", detached_settings))

    def create(self, urn: str, news: dict) -> tuple[str, dict]:
        s3 = _s3(news)
        with clients.reaching("AWS (S3)", clients.aws_endpoint() or "AWS"):
            artifacts.ensure_bucket(s3, news["bucket"])
        return news["bucket"], news

    def delete(self, urn: str, id_: str, state: dict) -> str | None:
        return f"kept bucket {id_}: it holds the artifacts and the check records"


class CorpusHandler(Handler):
    TOKEN = "lockstep:embedded:Corpus"
    DESCRIPTION = "The embedded stack's corpus and golden queries in the embedded S3 (generated when missing)."
    PROPERTIES = {
        "uri": Property("s3:// location of the corpus."),
        "settings": Property("The stack settings (corpus location and size).", "any"),
    }
    REPLACE_ON = ("uri",)

    def check(self, news: dict) -> list[tuple[str, str]]:
        return failures(news, ("settings", detached_settings))

    def create(self, urn: str, news: dict) -> tuple[str, dict]:
        settings = detached_settings(news)
        with clients.reaching("AWS (S3)", clients.aws_endpoint() or "AWS"):
            corpus_store.ensure_corpus(clients.aws_for(settings, "s3"), settings)
        return news["uri"], news

    def delete(self, urn: str, id_: str, state: dict) -> str | None:
        return f"kept corpus {id_}: it is data, not part of the release"


class ArtifactHandler(Handler):
    TOKEN = "lockstep:embedded:Artifact"
    DESCRIPTION = "One version's model artifact at its content-addressed key, verified by sha256 (kept on delete)."
    PROPERTIES = {
        "bucket": Property("Artifact bucket."),
        "key": Property("Content-addressed key."),
        "version": Property("Catalog version."),
        "artifactSha256": Property("sha256 of the artifact."),
        "entry": Property("The catalog entry.", "any"),
        "settings": Property("The stack settings (where things live).", "any"),
    }
    REPLACE_ON = ("bucket", "key", "artifactSha256")

    def check(self, news: dict) -> list[tuple[str, str]]:
        return failures(news, ("settings", detached_settings), ("entry", entry_of))

    def create(self, urn: str, news: dict) -> tuple[str, dict]:
        settings = detached_settings(news)
        with clients.reaching("AWS (S3)", clients.aws_endpoint() or "AWS"):
            artifacts.publish_artifact(clients.aws_for(settings, "s3"), settings, entry_of(news))
        return f"s3://{news['bucket']}/{news['key']}", news

    def delete(self, urn: str, id_: str, state: dict) -> str | None:
        return f"kept artifact {id_}: content-addressed artifacts are immutable (a rollback may need it)"


class EndpointSlotHandler(Handler):
    TOKEN = "lockstep:embedded:EndpointSlot"
    DESCRIPTION = "A blue/green slot's local endpoint process serving one version's artifact."
    PROPERTIES = {
        "slot": Property("blue or green."),
        "name": Property("The slot's endpoint name (fixed per slot)."),
        "version": Property("Version the slot serves."),
        "artifactSha256": Property("sha256 of the artifact the slot serves."),
        "entry": Property("The catalog entry.", "any"),
        "settings": Property("The stack settings (where things live).", "any"),
        "url": Property("Where the endpoint process listens.", output_only=True),
    }
    REPLACE_ON = ("slot", "name")
    OBSERVED = frozenset({"url"})

    def check(self, news: dict) -> list[tuple[str, str]]:
        return failures(news, ("settings", detached_settings), ("entry", entry_of))

    def create(self, urn: str, news: dict) -> tuple[str, dict]:
        running = endpoints.deploy_local_slot(detached_settings(news), news["slot"], entry_of(news))
        return news["name"], {**news, "url": running.url}

    def read(self, urn: str, id_: str, state: dict) -> tuple[str, dict]:
        running = endpoints.local_slot(detached_settings(state), state["slot"])
        if running is None:
            return "", {}
        described = running.describe()
        return id_, {
            **state,
            "version": described.get("version"),
            "artifactSha256": described.get("artifact_sha256"),
            "url": running.url,
        }

    def delete(self, urn: str, id_: str, state: dict) -> str | None:
        managed = runtime.Managed.load(endpoints.process_name(detached_settings(state), state["slot"]))
        if managed is not None:
            managed.stop()
        return None


class DerivedTableHandler(Handler):
    TOKEN = "lockstep:embedded:DerivedTable"
    DESCRIPTION = "A derived store's table on the embedded DynamoDB, indexed by model_version (kept on delete)."
    PROPERTIES = {
        "name": Property("Table name."),
        "store": Property("The derived store (stack config's derived entry).", "any"),
        "settings": Property("The stack settings (where things live).", "any"),
    }
    REPLACE_ON = ("name",)

    def check(self, news: dict) -> list[tuple[str, str]]:
        return failures(news, ("settings", detached_settings), ("store", store_of))

    def create(self, urn: str, news: dict) -> tuple[str, dict]:
        derived.ensure_table(detached_settings(news), store_of(news))
        return news["name"], news

    def delete(self, urn: str, id_: str, state: dict) -> str | None:
        return f"kept table {id_}: its records are the lineage of past releases"
