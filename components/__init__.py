"""Pulumi components of lockstep: the release unit and its parts (no data logic: they call lockstep.ops)."""

from components.artifact_store import ArtifactStore, ArtifactStoreArgs
from components.endpoints import EndpointSlot, EndpointSlotArgs
from components.model_release import ModelRelease
from components.release_args import ModelReleaseArgs

__all__ = [
    "ArtifactStore",
    "ArtifactStoreArgs",
    "EndpointSlot",
    "EndpointSlotArgs",
    "ModelRelease",
    "ModelReleaseArgs",
]
