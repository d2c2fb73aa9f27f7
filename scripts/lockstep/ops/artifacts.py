"""Model artifacts and the corpus in S3: private, versioned, encrypted buckets; sha256-verified bytes.

An artifact lives under its content-addressed key (`CatalogEntry.artifact_key`), so the key never
changes meaning. Every read verifies the catalog's sha256: bytes that differ are refused, never
served. `ensure_bucket` is the embedded-default twin of the bucket the Pulumi component declares.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from functools import lru_cache

from botocore.exceptions import ClientError

from lockstep import models, runtime
from lockstep.config import CatalogEntry, StackSettings
from lockstep.errors import IntegrityError, UsageError
from lockstep.models import builds
from lockstep.ops import corpus
from lockstep.ops.clients import reaching
from lockstep.ops.corpus import Document

PUBLIC_ACCESS_BLOCK = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}
# models/<model>/<version>/<sha256>/model.tar.gz, as written by CatalogEntry.artifact_key.
ARTIFACT_KEY = re.compile(r"(?:^|/)models/(?P<model>[^/]+)/(?P<version>[^/]+)/(?P<sha256>[0-9a-f]{64})/model\.tar\.gz$")
MISSING = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}


def _where(s3) -> str:
    return s3.meta.endpoint_url


def _missing(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code", "") in MISSING


def deny_insecure_transport_policy(bucket: str) -> dict:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ],
    }


def ensure_bucket(s3, bucket: str, require_tls: bool | None = None) -> None:
    """Create `bucket` if missing and (re)apply its posture: private, versioned, encrypted, TLS only.

    `require_tls` (default: whether this client speaks https) adds the DenyInsecureTransport
    policy. The embedded moto server is plain http on loopback and ignores policy conditions, so
    there the policy would deny every object request: it is left out unless asked for.
    """
    if require_tls is None:
        require_tls = _where(s3).startswith("https://")
    with reaching("S3", _where(s3)):
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if not _missing(exc):
                raise
            region = s3.meta.region_name
            location = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
            s3.create_bucket(Bucket=bucket, ObjectOwnership="BucketOwnerEnforced", **location)
        s3.put_bucket_ownership_controls(
            Bucket=bucket, OwnershipControls={"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
        )
        s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCK)
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        s3.put_bucket_encryption(
            Bucket=bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [
                    {
                        "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"},
                        "BucketKeyEnabled": True,
                    }
                ]
            },
        )
        if require_tls:
            s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(deny_insecure_transport_policy(bucket)))


# ------------------------------------------------------------------------------------ artifacts


def artifact_uri(bucket: str, entry: CatalogEntry) -> str:
    return f"s3://{bucket}/{entry.artifact_key}"


def parse_artifact_url(url: str) -> dict:
    """`s3://bucket/models/<model>/<version>/<sha>/model.tar.gz` -> {model, version, sha256}."""
    match = ARTIFACT_KEY.search(url)
    if not match:
        raise IntegrityError(
            f"{url} is not a content-addressed lockstep artifact (models/<model>/<version>/<sha256>/model.tar.gz); "
            "deploy the model from its catalog key"
        )
    return match.groupdict()


def _b64_sha256(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def published_version(s3, bucket: str, entry: CatalogEntry) -> str | None:
    """VersionId of the object at the entry's key if its bytes have the catalog's sha256, else None."""
    try:
        head = s3.head_object(Bucket=bucket, Key=entry.artifact_key, ChecksumMode="ENABLED")
    except ClientError as exc:
        if _missing(exc):
            return None
        raise
    if head.get("Metadata", {}).get("sha256") != entry.artifact_sha256:
        return None
    checksum = head.get("ChecksumSHA256")
    if checksum is not None:
        same = checksum == _b64_sha256(entry.artifact_sha256)
    else:  # uploaded without a checksum (not by us): only the bytes can tell
        body = s3.get_object(Bucket=bucket, Key=entry.artifact_key)["Body"].read()
        same = models.sha256_of(body) == entry.artifact_sha256
    return head.get("VersionId", "null") if same else None


def verified_build(entry: CatalogEntry) -> bytes:
    """The entry's model.tar.gz, built by its recipe (lockstep.models.builds) and refused unless
    its sha256 is the catalog's. Callers check this before their first write, so a wrong catalog
    sha256 changes nothing; the bytes are kept for the publish that follows (hashgram ~1 s,
    MiniLM ~7 s the first time, then read from the model cache)."""
    return _verified_build(entry)


@lru_cache(maxsize=4)
def _verified_build(entry: CatalogEntry) -> bytes:
    version, sha256 = entry.version, entry.artifact_sha256
    data = builds.build(entry)
    actual = models.sha256_of(data)
    if actual != sha256:
        raise IntegrityError(
            f"built artifact for {version} has sha256 {actual[:12]}…, the catalog says "
            f"{sha256[:12]}…; fix artifactSha256 in the catalog (nothing was uploaded)"
        )
    return data


def publish_artifact(s3, settings: StackSettings, entry: CatalogEntry) -> str:
    """Build the entry's model.tar.gz, verify it against the catalog, upload it; return the VersionId.

    Idempotent: an object already holding these bytes is left alone. The bucket must exist
    (`ensure_bucket`, or the Pulumi component in AWS stacks).
    """
    return upload_artifact(s3, settings.artifacts.bucket, entry, verified_build(entry))


def upload_artifact(s3, bucket: str, entry: CatalogEntry, data: bytes) -> str:
    """Put `data` (whose sha256 must be the entry's) at the entry's content-addressed key, with
    its sha256 as metadata and checksum; an object already holding these bytes is left alone."""
    actual = models.sha256_of(data)
    if actual != entry.artifact_sha256:
        raise IntegrityError(
            f"artifact bytes have sha256 {actual[:12]}…, the entry says {entry.artifact_sha256[:12]}…; nothing was uploaded"
        )
    with reaching("S3", _where(s3)):
        existing = published_version(s3, bucket, entry)
        if existing is not None:
            return existing
        response = s3.put_object(
            Bucket=bucket,
            Key=entry.artifact_key,
            Body=data,
            ContentType="application/gzip",
            Metadata={"sha256": actual, "model-version": entry.version},
            ChecksumAlgorithm="SHA256",
        )
    return response.get("VersionId", "null")


def fetch_artifact(s3, bucket: str, entry: CatalogEntry) -> bytes:
    """The artifact's bytes, refused unless their sha256 is the catalog's."""
    uri = artifact_uri(bucket, entry)
    with reaching("S3", _where(s3)):
        try:
            data = s3.get_object(Bucket=bucket, Key=entry.artifact_key)["Body"].read()
        except ClientError as exc:
            if _missing(exc):
                raise UsageError(f"artifact {uri} not found; run `lockstep apply` to publish it") from None
            raise
    actual = models.sha256_of(data)
    if actual != entry.artifact_sha256:
        raise IntegrityError(
            f"artifact {uri} has sha256 {actual[:12]}…, the catalog says {entry.artifact_sha256[:12]}…; "
            "the object was overwritten — run `lockstep apply` to re-publish it (or restore the previous S3 version)"
        )
    return data


def load_embedder(s3, bucket: str, entry: CatalogEntry) -> models.Embedder:
    """The version's model, loaded by its family from the verified artifact."""
    return models.load_artifact(fetch_artifact(s3, bucket, entry), entry.artifact_sha256, entry.family, entry.version)


# A text every family can encode: the catalog's claims about a model are checked on its answer.
PROBE_TEXT = "lockstep probe: does this model produce what its catalog entry says?"
_TRUTHFUL: set[CatalogEntry] = set()  # entries verified in this process (a model load each)


def verify_model(s3, bucket: str, entry: CatalogEntry) -> None:
    """The catalog entry tells the truth about its artifact (the published object, else the
    build): sha256, and — by loading it and encoding one probe text — its dimension and, where
    the family declares one, its space type. Callers run it before their first write, so a
    catalog that lies creates no index of the wrong dimension."""
    if entry in _TRUTHFUL:
        return
    with reaching("S3", _where(s3)):
        published = published_version(s3, bucket, entry) is not None
    data = fetch_artifact(s3, bucket, entry) if published else verified_build(entry)
    embedder = models.load_artifact(data, entry.artifact_sha256, entry.family, entry.version)
    produced = embedder.encode([PROBE_TEXT]).shape[-1]
    space = getattr(embedder, "space_type", None)
    claims = [f"dimension {entry.dimension}"] if produced != entry.dimension else []
    claims += [f"spaceType {entry.space_type}"] if space not in (None, entry.space_type) else []
    if claims:
        actual = ", ".join(
            ([f"{produced}-dimensional vectors"] if produced != entry.dimension else [])
            + ([f"space {space}"] if space not in (None, entry.space_type) else [])
        )
        raise IntegrityError(
            f"catalog version {entry.version} says {' and '.join(claims)}, but its artifact "
            f"({entry.artifact_sha256[:12]}…) produces {actual}; fix versions.{entry.version} in the catalog "
            "(nothing was created)"
        )
    _TRUTHFUL.add(entry)


def artifact_status(s3, bucket: str, entry: CatalogEntry) -> dict:
    """For the consistency check: does the object exist, and do its bytes hash to the catalog's sha256?"""
    status = {
        "uri": artifact_uri(bucket, entry),
        "exists": False,
        "sha256_ok": False,
        "sha256": None,
        "version_id": None,
    }
    with reaching("S3", _where(s3)):
        try:
            response = s3.get_object(Bucket=bucket, Key=entry.artifact_key)
        except ClientError as exc:
            if _missing(exc):
                return status
            raise
        actual = models.sha256_of(response["Body"].read())
    status.update(
        exists=True, sha256=actual, sha256_ok=actual == entry.artifact_sha256, version_id=response.get("VersionId")
    )
    return status


# --------------------------------------------------------------------------------------- corpus


def corpus_uri(settings: StackSettings) -> str:
    return settings.corpus.uri


def golden_uri(settings: StackSettings) -> str:
    return f"s3://{settings.corpus.bucket}/{settings.corpus.golden_key}"


def _exists(s3, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        if _missing(exc):
            return False
        raise


def _default_documents(size: int) -> list[Document]:
    """The stdlib corpus of `size` documents, cached on disk: generating it takes seconds."""
    cache = runtime.home() / f"corpus-r{corpus.REVISION}-{size}.jsonl"
    if cache.exists():
        return corpus.parse_documents(cache.read_bytes(), str(cache))
    documents = corpus.stdlib_documents(size)
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".partial")
    partial.write_bytes(corpus.documents_jsonl(documents))
    partial.replace(cache)
    return documents


def ensure_corpus(s3, settings: StackSettings, documents: list[Document] | None = None) -> list[str]:
    """Ensure the corpus bucket and upload the corpus and golden JSONL when missing; return what was uploaded."""
    bucket = settings.corpus.bucket
    ensure_bucket(s3, bucket)
    uploaded = []
    with reaching("S3", _where(s3)):
        if not _exists(s3, bucket, settings.corpus.key):
            documents = documents if documents is not None else _default_documents(settings.corpus.size)
            write_corpus(s3, settings, documents)
            uploaded.append(corpus_uri(settings))
        if not _exists(s3, bucket, settings.corpus.golden_key):
            documents = documents if documents is not None else read_corpus(s3, settings)
            s3.put_object(
                Bucket=bucket,
                Key=settings.corpus.golden_key,
                Body=corpus.to_jsonl(corpus.golden_queries(documents)),
                ContentType="application/x-ndjson",
            )
            uploaded.append(golden_uri(settings))
    return uploaded


def _read(s3, bucket: str, key: str, uri: str) -> bytes:
    with reaching("S3", _where(s3)):
        try:
            return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if _missing(exc):
                raise UsageError(
                    f"corpus {uri} not found; run `lockstep apply` (seeds the embedded corpus) or upload it"
                ) from None
            raise


def read_corpus(s3, settings: StackSettings) -> list[Document]:
    uri = corpus_uri(settings)
    return corpus.parse_documents(_read(s3, settings.corpus.bucket, settings.corpus.key, uri), uri)


def read_golden(s3, settings: StackSettings) -> list[dict]:
    uri = golden_uri(settings)
    return corpus.parse_golden(_read(s3, settings.corpus.bucket, settings.corpus.golden_key, uri), uri)


def write_corpus(s3, settings: StackSettings, documents: list[Document]) -> str:
    """Replace the corpus JSONL (the golden set is left as is); return the new object's VersionId.
    The document count rides along as object metadata, so a plan can size work without reading."""
    with reaching("S3", _where(s3)):
        response = s3.put_object(
            Bucket=settings.corpus.bucket,
            Key=settings.corpus.key,
            Body=corpus.documents_jsonl(documents),
            ContentType="application/x-ndjson",
            Metadata={"documents": str(len(documents))},
        )
    return response.get("VersionId", "null")


@dataclass(frozen=True)
class CorpusRef:
    """Which corpus this is (ETag: changes with the bytes) and how many documents it holds."""

    etag: str
    documents: int | None


def corpus_ref(s3, settings: StackSettings) -> CorpusRef | None:
    """The corpus object's identity from one HEAD request (None when there is no corpus)."""
    with reaching("S3", _where(s3)):
        try:
            head = s3.head_object(Bucket=settings.corpus.bucket, Key=settings.corpus.key)
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
    count = head.get("Metadata", {}).get("documents")
    return CorpusRef(head["ETag"].strip('"'), int(count) if count and count.isdigit() else None)


# A line as lockstep writes it (keys sorted): the id comes first, so lines can be found by id
# without parsing every document.
_LINE_ID = re.compile(rb'^\{"id": "((?:[^"\\]|\\.)*)"', re.MULTILINE)


class CorpusIndex:
    """The corpus as bytes with its lines indexed by id: counting and sampling without parsing
    100k documents (the check needs the count and the hashes of a few)."""

    def __init__(self, data: bytes, uri: str):
        self.data, self.uri = data, uri
        lines = sum(1 for line in data.splitlines() if line.strip())
        self._starts = {json.loads(b'"' + m.group(1) + b'"'): m.start() for m in _LINE_ID.finditer(data)}
        if len(self._starts) != lines:  # not lockstep's layout, or duplicate ids: parse it all
            self._starts = None
            self._documents = {d.id: d for d in corpus.parse_documents(data, uri)}

    @property
    def count(self) -> int:
        return len(self._starts) if self._starts is not None else len(self._documents)

    def lines(self) -> dict[str, bytes] | None:
        """{id: the document's raw line}, or None when the file is not in lockstep's layout."""
        if self._starts is None:
            return None
        out = {}
        for doc_id, start in self._starts.items():
            end = self.data.find(b"\n", start)
            out[doc_id] = self.data[start : end if end >= 0 else None]
        return out

    def changes_since(self, older: CorpusIndex) -> tuple[list[str], list[str], list[str]] | None:
        """(new, changed, gone) ids between two versions of the corpus, by comparing raw lines:
        no document is parsed. None when either file is not in lockstep's layout."""
        now, before = self.lines(), older.lines()
        if now is None or before is None:
            return None
        new = [i for i in now if i not in before]
        changed = [i for i, line in now.items() if i in before and before[i] != line]
        gone = [i for i in before if i not in now]
        return new, changed, gone

    def content_sha256(self, ids: list[str]) -> dict[str, str]:
        if self._starts is None:
            return {i: self._documents[i].content_sha256 for i in ids if i in self._documents}
        found = {}
        for doc_id in ids:
            start = self._starts.get(doc_id)
            if start is not None:
                end = self.data.find(b"\n", start)
                row = json.loads(self.data[start : end if end >= 0 else None])
                found[doc_id] = corpus.content_sha256(str(row["text"]))
        return found


def corpus_index(s3, settings: StackSettings, version_id: str | None = None) -> CorpusIndex:
    """The corpus (or one earlier version of it, in the versioned bucket) indexed by id."""
    uri = corpus_uri(settings)
    if version_id is None:
        return CorpusIndex(_read(s3, settings.corpus.bucket, settings.corpus.key, uri), uri)
    with reaching("S3", _where(s3)):
        body = s3.get_object(Bucket=settings.corpus.bucket, Key=settings.corpus.key, VersionId=version_id)[
            "Body"
        ].read()
    return CorpusIndex(body, f"{uri}?versionId={version_id}")


def corpus_version_with_etag(s3, settings: StackSettings, etag: str) -> str | None:
    """The VersionId of the corpus version whose ETag is `etag` (what an index was synced with)."""
    with reaching("S3", _where(s3)):
        pages = s3.get_paginator("list_object_versions").paginate(
            Bucket=settings.corpus.bucket, Prefix=settings.corpus.key
        )
        for page in pages:
            for version in page.get("Versions", []):
                if version["Key"] == settings.corpus.key and version["ETag"].strip('"') == etag:
                    return version["VersionId"]
    return None
