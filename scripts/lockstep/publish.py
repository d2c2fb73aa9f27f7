"""`lockstep publish`: a team's model becomes a catalog version.

From a model directory (or an existing model.tar.gz) and a version name: find the family (named,
or the one installed family that recognises the files), pack deterministically, verify by loading
and encoding a probe (shape, finite values, unit norm where the family promises it, the declared
dimension), upload to the content-addressed key, and add the entry to stacks/catalog.yaml with a
comment-preserving edit. Every check runs before the first write: bad input changes nothing.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ruamel.yaml import YAML

from lockstep import config, models, stackfile
from lockstep.config import Catalog, CatalogEntry, StackSettings
from lockstep.errors import UsageError
from lockstep.ops import artifacts, clients

PROBE = [
    "This is an example sentence",
    "Rolling back a model must roll back its index too.",
    "Return the absolute value of a number.",
]


@dataclass(frozen=True)
class Published:
    entry: CatalogEntry
    version_id: str
    catalog_changed: bool  # False: the version was already in the catalog with these bytes


def artifact_of(source: Path) -> bytes:
    """The model.tar.gz for a directory (packed) or a file (read as is)."""
    if source.is_dir():
        return models.pack_directory(source)
    if source.is_file():
        return source.read_bytes()
    raise UsageError(f"{source}: no such model directory or model.tar.gz; pass a path that exists")


def verify(data: bytes, family: str | None, version: str, dimension: int | None) -> tuple[str, int]:
    """Load the artifact and encode the probe: (family, dimension) or a one-line error."""
    with tempfile.TemporaryDirectory(prefix="lockstep-publish-") as tmp:
        directory = Path(tmp)
        models.unpack(data, directory)
        name = family or models.detect(directory)
        embedder = models.load_directory(directory, name, version, models.sha256_of(data))
        vectors = embedder.encode(PROBE)
    if vectors.shape != (len(PROBE), embedder.dimension) or not np.isfinite(vectors).all():
        raise UsageError(
            f"the {name} model encoded {len(PROBE)} probe texts as {vectors.shape}, not ({len(PROBE)}, "
            f"{embedder.dimension}) finite values; fix the model"
        )
    if embedder.normalized and not np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3):
        raise UsageError(f"the {name} family promises unit-norm vectors but the model's are not; fix the model")
    if dimension is not None and dimension != embedder.dimension:
        raise UsageError(
            f"--dimension {dimension} differs from the model's {embedder.dimension}; declare {embedder.dimension}"
        )
    return name, embedder.dimension


def catalog_entry(catalog: Catalog, version: str, fields: dict) -> tuple[CatalogEntry, bool]:
    """The new entry validated, and whether the catalog needs it (False: already there, same bytes)."""
    if version in catalog:
        existing = catalog.get(version)
        if existing.artifact_sha256 != fields["artifactSha256"]:
            raise UsageError(
                f"version {version!r} is already in the catalog with artifact {existing.artifact_sha256[:12]}…, "
                f"these bytes are {fields['artifactSha256'][:12]}…; versions are immutable — publish under a new name"
            )
        return existing, False
    data = {"version": version, "model": fields.pop("model", None) or catalog.model, **fields}
    try:
        return CatalogEntry.model_validate(data), True
    except ValueError as exc:
        raise UsageError(f"catalog entry {version}: {config.describe_validation_error(exc)}") from None  # type: ignore[arg-type]


def catalog_with(stacks_dir: Path, version: str, fields: dict) -> str:
    """catalog.yaml's text with `version` added, comments kept, validated: nothing is written."""
    path = stacks_dir / config.CATALOG_FILE
    edit = stackfile.RoundTrip(path.read_text(encoding="utf-8"))
    document = edit.document
    versions = document["versions"]
    if isinstance(versions, list):  # the list form: each entry names its version and model
        versions.append({"version": version, "model": document.get("model"), **fields})
    else:
        versions[version] = fields
    text = edit.text()
    config.validate_catalog(YAML(typ="safe").load(text), f"{path} with {version} added: ")
    return text


def write_catalog(stacks_dir: Path, text: str, read: str) -> None:
    """Replace the catalog with `text` atomically (a temporary file of its own, the file's mode kept)
    — unless it is no longer the `read` it was made from (another publish wrote meanwhile)."""
    path = stacks_dir / config.CATALOG_FILE
    if path.read_text(encoding="utf-8") != read:
        raise UsageError(
            f"{path} changed while this publish uploaded (another publish?); the artifact is uploaded: "
            "run the same `lockstep publish` again to add its entry"
        )
    stackfile.replace_text(path, text)


def publish(
    settings: StackSettings,
    catalog: Catalog,
    stacks_dir: Path,
    source: Path,
    version: str,
    family: str | None = None,
    dimension: int | None = None,
    space_type: str = "cosinesimil",
    model: str | None = None,
    description: str = "",
) -> Published:
    data = artifact_of(source)
    try:
        name, dim = verify(data, family, version, dimension)
    except UsageError as exc:  # missing files, unknown family, a model that does not encode
        raise UsageError(f"{source}: {exc}") from None
    fields: dict = {"family": name, "artifactSha256": models.sha256_of(data), "dimension": dim, "spaceType": space_type}
    if model:
        fields = {"model": model, **fields}
    if description:
        fields["description"] = description
    entry, new = catalog_entry(catalog, version, dict(fields))
    read = (stacks_dir / config.CATALOG_FILE).read_text(encoding="utf-8")
    catalog_text = catalog_with(stacks_dir, version, fields) if new else None  # before anything is uploaded
    s3 = clients.aws_for(settings, "s3")  # an AWS stack's bucket, never the embedded moto
    if settings.embedded:
        artifacts.ensure_bucket(s3, settings.artifacts.bucket)
    version_id = artifacts.upload_artifact(s3, settings.artifacts.bucket, entry, data)
    if catalog_text is not None:
        write_catalog(stacks_dir, catalog_text, read)
    return Published(entry, version_id, new)
