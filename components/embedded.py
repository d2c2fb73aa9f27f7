"""The embedded default's leaves (endpoints.backend local), in place of what pulumi-aws declares on AWS.

The same shapes as components/artifact_store.py, components/endpoints.py and
components/derived_store.py (`objects[version]`, `endpoint.name`, a table's `name`), so
ModelRelease wires Index, Cutover, DerivedRepair and Check identically in both; the resources
are lockstep's own (components/providers/embedded.py), so an embedded stack has no `aws:` resource.
"""

from __future__ import annotations

import pulumi

from components.endpoints import EndpointSlotArgs
from components.providers.resources import Artifact, Bucket, Corpus, DerivedTable, EndpointSlot
from lockstep.config import CatalogEntry, DerivedStore, StackSettings


class EmbeddedArtifactStore(pulumi.ComponentResource):
    """The artifact bucket, one object per kept version, and the corpus, on the embedded S3."""

    objects: dict[str, Artifact]

    def __init__(
        self,
        name: str,
        settings: StackSettings,
        entries: list[CatalogEntry],
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("lockstep:index:EmbeddedArtifactStore", name, None, opts)
        bucket = Bucket(f"{name}-bucket", settings, pulumi.ResourceOptions(parent=self))
        corpus = Corpus(f"{name}-corpus", settings, pulumi.ResourceOptions(parent=self))
        # An index is built from the corpus with the artifact: it waits for both through the object.
        self.objects = {
            entry.version: Artifact(
                f"{name}-{entry.version}",
                settings,
                entry,
                pulumi.ResourceOptions(parent=self, depends_on=[bucket, corpus]),
            )
            for entry in entries
        }
        self.bucket = bucket.bucket
        self.register_outputs({"bucket": self.bucket})


class EmbeddedEndpointSlot(pulumi.ComponentResource):
    """One blue/green slot: a local endpoint process serving the slot's version."""

    endpoint: EndpointSlot

    def __init__(self, name: str, args: EndpointSlotArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("lockstep:index:EmbeddedEndpointSlot", name, None, opts)
        self.endpoint = EndpointSlot(
            f"{name}-endpoint",
            args.settings,
            args.slot,
            args.entry,
            # Replaced delete first (the handler's diff says so; `up --replace` does not ask it).
            pulumi.ResourceOptions(
                parent=self,
                depends_on=[r for r in [args.artifact] if r is not None],
                delete_before_replace=True,
            ),
        )
        # Changes when the slot is redeployed: the check runs again.
        self.revision = self.endpoint.url
        self.register_outputs({"version": args.entry.version, "endpoint": self.endpoint.name})


def embedded_table(
    name: str, settings: StackSettings, store: DerivedStore, opts: pulumi.ResourceOptions
) -> DerivedTable:
    return DerivedTable(name, settings, store, opts)
