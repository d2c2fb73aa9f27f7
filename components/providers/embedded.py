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

from components.providers.base import (
    EMBEDDER,
    STATE_VERSION,
    STATE_VERSION_KEY,
    Diff,
    Handler,
    Property,
    entry_of,
    failures,
    has_unknown,
    store_of,
)
from components.providers.derived import STORE
from lockstep import runtime
from lockstep.ops import artifacts, clients, corpus_store, derived, endpoints

# What an embedded leaf reads: where the bucket, the corpus and the tables are.
AWS_PLACEMENT = ("stack", "namePrefix", "artifacts", "corpus")


def versioned(outputs: dict) -> dict:
    return {**outputs, STATE_VERSION_KEY: STATE_VERSION}


class BucketHandler(Handler):
    TOKEN = "lockstep:embedded:Bucket"
    DESCRIPTION = "The artifact bucket on the embedded S3: private, versioned, encrypted, TLS-only (kept on delete)."
    SETTINGS = AWS_PLACEMENT
    OWN = {"bucket": Property("Bucket name.")}
    REPLACE_ON = ("bucket",)

    def create(self, urn: str, news: dict) -> tuple[str, dict]:
        settings = self.settings_of(news)
        with clients.reaching_aws(settings, "S3"):
            s3 = clients.aws_for(settings, "s3")
            artifacts.ensure_bucket(s3, news["bucket"])
        return news["bucket"], versioned(news)

    def delete(self, urn: str, id_: str, state: dict) -> str | None:
        return f"kept bucket {id_}: it holds the artifacts and the check records"


class CorpusHandler(Handler):
    TOKEN = "lockstep:embedded:Corpus"
    DESCRIPTION = "The embedded stack's corpus and golden queries in the embedded S3 (generated when missing)."
    SETTINGS = AWS_PLACEMENT
    OWN = {"uri": Property("s3:// location of the corpus.")}
    REPLACE_ON = ("uri",)

    def check(self, olds: dict, news: dict) -> list[tuple[str, str]]:
        """A new corpus.size for a corpus already generated at the same place would change nothing
        (it is generated only when missing): refused, naming the two ways that do change it."""
        found = super().check(olds, news)
        if found or not olds or has_unknown(news.get("corpus")) or olds.get("uri") != news.get("uri"):
            return found
        before, after = (self._normalized("corpus", props.get("corpus"))["size"] for props in (olds, news))
        if before != after:
            found.append(
                (
                    "corpus",
                    f"corpus.size: the corpus at {news['uri']} was generated with {before} documents and is "
                    f"generated only when missing; to use {after}, give it a new corpus.key (the indices catch "
                    f"up from it), or set corpus.size back to {before}",
                )
            )
        return found

    def create(self, urn: str, news: dict) -> tuple[str, dict]:
        settings = self.settings_of(news)
        with clients.reaching_aws(settings, "S3"):
            corpus_store.ensure_corpus(clients.aws_for(settings, "s3"), settings)
        return news["uri"], versioned(news)

    def delete(self, urn: str, id_: str, state: dict) -> str | None:
        return f"kept corpus {id_}: it is data, not part of the release"


class ArtifactHandler(Handler):
    TOKEN = "lockstep:embedded:Artifact"
    DESCRIPTION = "One version's model artifact at its content-addressed key, verified by sha256 (kept on delete)."
    SETTINGS = AWS_PLACEMENT
    ENTRY = EMBEDDER
    OWN = {
        "bucket": Property("Artifact bucket."),
        "key": Property("Content-addressed key."),
        "embedded": Property(
            "Whether the stack runs on the embedded servers (default); an AWS stack's artifact never goes to the embedded moto.",
            "boolean",
            optional=True,
            default=True,
        ),
    }
    REPLACE_ON = ("bucket", "key", "artifactSha256")

    def create(self, urn: str, news: dict) -> tuple[str, dict]:
        settings, embedded = self.settings_of(news), news.get("embedded") is not False
        s3 = clients.aws("s3", settings.region, embedded=embedded, profile=settings.aws_profile)
        with clients.reaching("AWS (S3)", clients.aws_endpoint(embedded) or "AWS"):
            artifacts.publish_artifact(s3, settings, entry_of(news))
        return f"s3://{news['bucket']}/{news['key']}", versioned(news)

    def delete(self, urn: str, id_: str, state: dict) -> str | None:
        return f"kept artifact {id_}: content-addressed artifacts are immutable (a rollback may need it)"


class EndpointSlotHandler(Handler):
    TOKEN = "lockstep:embedded:EndpointSlot"
    DESCRIPTION = "A blue/green slot's local endpoint process serving one version's artifact."
    SETTINGS = (*AWS_PLACEMENT, "endpoints")
    ENTRY = EMBEDDER
    OWN = {
        "slot": Property("blue or green."),
        "name": Property("The slot's endpoint name (fixed per slot)."),
        "url": Property("Where the endpoint process listens.", output_only=True),
    }
    REPLACE_ON = ("slot", "name")
    OBSERVED = frozenset({"url"})

    def diff(self, olds: dict, news: dict) -> Diff:
        """A replacement deletes first: old and new are one process (`endpoints.process_name` is per
        stack and slot), so a new one created first adopts it and the old one's delete, at the end
        of the update, would stop the endpoint the stack now runs."""
        diff = super().diff(olds, news)
        diff.delete_before_replace = bool(diff.replaces)
        return diff

    def create(self, urn: str, news: dict) -> tuple[str, dict]:
        running = endpoints.deploy_local_slot(self.settings_of(news), news["slot"], entry_of(news))
        return news["name"], versioned({**news, "url": running.url})

    def read(self, urn: str, id_: str, state: dict) -> tuple[str, dict]:
        running = endpoints.local_slot(self.settings_of(state), state["slot"])
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
        managed = runtime.Managed.load(endpoints.process_name(self.settings_of(state), state["slot"]))
        if managed is not None:
            managed.stop()
        return None


class DerivedTableHandler(Handler):
    TOKEN = "lockstep:embedded:DerivedTable"
    DESCRIPTION = "A derived store's table on the embedded DynamoDB, indexed by model_version (kept on delete)."
    SETTINGS = AWS_PLACEMENT
    OWN = {"name": Property("Table name."), "store": STORE}
    REPLACE_ON = ("name",)

    def _normalized(self, name: str, value):
        """Of the store, only its table is this resource's: a repair setting (k, writeRate, …) is
        the DerivedRepair's update, never an update of the table that changes nothing."""
        normal = super()._normalized(name, value)
        if name == "store" and isinstance(normal, dict):
            return {"table": normal.get("table")}
        return normal

    def check(self, olds: dict, news: dict) -> list[tuple[str, str]]:
        return super().check(olds, news) + failures(news, ("store", store_of))

    def create(self, urn: str, news: dict) -> tuple[str, dict]:
        derived.ensure_table(self.settings_of(news), store_of(news))
        return news["name"], versioned(news)

    def delete(self, urn: str, id_: str, state: dict) -> str | None:
        return f"kept table {id_}: its records are the lineage of past releases"
