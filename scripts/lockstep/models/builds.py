"""The artifacts lockstep can build itself, byte for byte: the hashgram versions and MiniLM (v4).

A catalog version whose artifact is not one of these must already be in the artifact bucket
(uploaded by `lockstep publish` or by the team's own pipeline).
"""

from __future__ import annotations

from lockstep.config import CatalogEntry
from lockstep.errors import UsageError
from lockstep.models import hashgram, minilm


def build(entry: CatalogEntry) -> bytes:
    """The entry's model.tar.gz built from its recipe (the caller verifies the sha256)."""
    if entry.family == hashgram.FAMILY and entry.version in hashgram.SPECS:
        return hashgram.build_artifact(hashgram.SPECS[entry.version])
    if entry.artifact_sha256 == minilm.ARTIFACT_SHA256:
        return minilm.artifact_bytes()
    raise UsageError(
        f"version {entry.version!r} ({entry.family}) is not an artifact lockstep builds "
        f"(hashgram {', '.join(hashgram.SPECS)} or MiniLM); upload it to its catalog key with `lockstep publish`"
    )
