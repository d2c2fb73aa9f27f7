"""The `hashgram` embedding model family: hashed character n-grams and a seeded random projection.

Cheap on 2 cores, no download at run time, and real enough for the problem lockstep solves: two
versions with the same dimension but different seeds put the same text at unrelated points, so a
query embedded by one version finds nonsense in an index built by the other (and nothing errors).

An artifact is a SageMaker-style `model.tar.gz` holding `model.json` (metadata) and
`projection.npy` (the weights). Building is deterministic, so the catalog can pin its sha256.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lockstep import models
from lockstep.errors import IntegrityError
from lockstep.models import sha256_of

FAMILY = "hashgram"


@dataclass(frozen=True)
class ModelSpec:
    version: str
    dimension: int
    seed: int
    ngram_min: int = 3
    ngram_max: int = 4
    buckets: int = 8192
    normalize: bool = True
    model: str = FAMILY


# The family's published versions. v1 and v2 share a dimension (the dangerous rollback case);
# v3 has another one.
SPECS = {
    "v1": ModelSpec("v1", dimension=192, seed=11),
    "v2": ModelSpec("v2", dimension=192, seed=22, ngram_max=5),
    "v3": ModelSpec("v3", dimension=128, seed=33),
}


class Embedder:
    """Loaded model: `encode(texts) -> float32 array (n, dimension)`."""

    family = FAMILY

    def __init__(self, spec: ModelSpec, projection: np.ndarray, artifact_sha256: str = ""):
        if projection.shape != (spec.buckets, spec.dimension):
            raise IntegrityError(
                f"artifact {spec.version}: projection shape {projection.shape} does not match "
                f"model.json ({spec.buckets}, {spec.dimension}); rebuild the artifact"
            )
        self.spec = spec
        self.projection = projection.astype(np.float32, copy=False)
        self.artifact_sha256 = artifact_sha256
        rng = np.random.default_rng(spec.seed + 1)
        # One odd multiplier per n-gram position: a seeded polynomial hash over bytes.
        self._multipliers = (rng.integers(1, 2**31, size=spec.ngram_max) | 1).astype(np.uint64)

    @property
    def version(self) -> str:
        return self.spec.version

    @property
    def dimension(self) -> int:
        return self.spec.dimension

    @property
    def normalized(self) -> bool:
        return self.spec.normalize

    def _bucket_counts(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        data = np.frombuffer(f" {text.lower()} ".encode(), dtype=np.uint8).astype(np.uint64)
        ids: list[np.ndarray] = []
        for n in range(self.spec.ngram_min, self.spec.ngram_max + 1):
            if data.size < n:
                continue
            h = np.full(data.size - n + 1, n, dtype=np.uint64)
            for offset in range(n):
                h = h * np.uint64(1_000_003) + data[offset : data.size - n + 1 + offset] * self._multipliers[offset]
            ids.append(h % np.uint64(self.spec.buckets))
        if not ids:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        buckets, counts = np.unique(np.concatenate(ids).astype(np.int64), return_counts=True)
        return buckets, (1.0 + np.log(counts)).astype(np.float32)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.spec.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            buckets, weights = self._bucket_counts(text)
            if buckets.size:
                out[row] = weights @ self.projection[buckets]
        if self.spec.normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            np.divide(out, norms, out=out, where=norms > 0)
        return out


def projection_for(spec: ModelSpec) -> np.ndarray:
    rng = np.random.default_rng(spec.seed)
    return (rng.standard_normal((spec.buckets, spec.dimension)) / np.sqrt(spec.dimension)).astype(np.float32)


def build_artifact(spec: ModelSpec) -> bytes:
    """A deterministic model.tar.gz (fixed mtimes and owners), so its sha256 is stable."""
    return models.pack_files(
        {
            "model.json": json.dumps(asdict(spec), sort_keys=True, indent=2).encode(),
            "projection.npy": _npy_bytes(projection_for(spec)),
        }
    )


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def load_artifact(data: bytes, expected_sha256: str | None = None) -> Embedder:
    """Load a hashgram model.tar.gz; refuse bytes whose sha256 is not the catalog's."""
    embedder = models.load_artifact(data, expected_sha256, FAMILY)
    assert isinstance(embedder, Embedder)
    return embedder


class Hashgram(models.Family):
    """The family plug-in: `model.json` + `projection.npy`, the projection regenerated from the seed."""

    name = FAMILY

    def recognizes(self, directory: Path) -> bool:
        return (directory / "model.json").is_file() and (directory / "projection.npy").is_file()

    def _read(self, directory: Path) -> tuple[ModelSpec, np.ndarray]:
        try:
            spec = ModelSpec(**json.loads((directory / "model.json").read_text()))
            projection = np.load(directory / "projection.npy", allow_pickle=False)
        except (OSError, ValueError, TypeError) as exc:
            raise IntegrityError(
                f"{directory} holds no readable hashgram model ({exc}); rebuild the artifact"
            ) from None
        return spec, projection

    def verify(self, directory: Path) -> None:
        """The family is deterministic: the files must equal what their model.json builds."""
        spec, projection = self._read(directory)
        if spec.model != FAMILY or not np.array_equal(projection, projection_for(spec)):
            raise IntegrityError(
                f"{directory}: projection.npy does not match its model.json; the artifact was altered — rebuild it"
            )

    def load(self, directory: Path, version: str | None, artifact_sha256: str) -> Embedder:
        spec, projection = self._read(directory)
        if version is not None and version != spec.version:
            raise IntegrityError(
                f"artifact holds hashgram {spec.version}, not {version}; fix the catalog entry or the artifact"
            )
        return Embedder(spec, projection, artifact_sha256 or sha256_of(build_artifact(spec)))
