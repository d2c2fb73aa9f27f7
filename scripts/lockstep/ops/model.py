"""The `hashgram` embedding model family: hashed character n-grams and a seeded random projection.

Cheap on 2 cores, no download at run time, and real enough for the problem lockstep solves: two
versions with the same dimension but different seeds put the same text at unrelated points, so a
query embedded by one version finds nonsense in an index built by the other (and nothing errors).

An artifact is a SageMaker-style `model.tar.gz` holding `model.json` (metadata) and
`projection.npy` (the weights). Building is deterministic, so the catalog can pin its sha256.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lockstep.errors import IntegrityError

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

    def encode(self, texts: list[str]) -> np.ndarray:
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
    files = {
        "model.json": json.dumps(asdict(spec), sort_keys=True, indent=2).encode(),
        "projection.npy": _npy_bytes(projection_for(spec)),
    }
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(payload), 0, 0o644
            tar.addfile(info, io.BytesIO(payload))
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_artifact(data: bytes, expected_sha256: str | None = None) -> Embedder:
    """Load a model.tar.gz; refuse bytes whose sha256 is not the catalog's."""
    actual = sha256_of(data)
    if expected_sha256 and actual != expected_sha256:
        raise IntegrityError(
            f"artifact sha256 {actual[:12]}… does not match the catalog's {expected_sha256[:12]}…; "
            "the object was changed or the catalog entry is wrong — restore the object or fix the catalog"
        )
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        spec = ModelSpec(**json.loads(_member(tar, "model.json")))
        projection = np.load(io.BytesIO(_member(tar, "projection.npy")), allow_pickle=False)
    return Embedder(spec, projection, actual)


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    member = tar.extractfile(name)
    if member is None:
        raise IntegrityError(f"artifact has no {name}; rebuild it with `lockstep artifacts build`")
    return member.read()


def load_artifact_file(path: Path, expected_sha256: str | None = None) -> Embedder:
    return load_artifact(path.read_bytes(), expected_sha256)
