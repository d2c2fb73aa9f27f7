"""Model artifacts in S3: private, versioned, encrypted buckets; sha256-verified bytes.

An artifact lives under its content-addressed key (`CatalogEntry.artifact_key`), so the key never
changes meaning. Every read verifies the catalog's sha256: bytes that differ are refused, never
served. `ensure_bucket` (the corpus bucket's posture too) is the embedded-default twin of the bucket the Pulumi component declares.
"""

from __future__ import annotations

import base64
import json
import re
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from botocore.exceptions import ClientError

from lockstep import models
from lockstep.config import CatalogEntry, StackSettings
from lockstep.errors import IntegrityError, UsageError
from lockstep.models import builds
from lockstep.ops.clients import reaching

PUBLIC_ACCESS_BLOCK = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}
# models/<model>/<version>/<sha256>/model.tar.gz, as written by CatalogEntry.artifact_key.
ARTIFACT_KEY = re.compile(r"(?:^|/)models/(?P<model>[^/]+)/(?P<version>[^/]+)/(?P<sha256>[0-9a-f]{64})/model\.tar\.gz$")
MISSING = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}


def s3_endpoint(s3) -> str:
    return s3.meta.endpoint_url


def is_missing(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code", "") in MISSING


def deny_insecure_transport_policy(bucket: str, partition: str) -> dict:
    """The TLS-only statement for `bucket` in its ARN `partition` (`clients.partition`; an S3
    client knows its own: `s3.meta.partition`)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [f"arn:{partition}:s3:::{bucket}", f"arn:{partition}:s3:::{bucket}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ],
    }


def _statements(policy: dict) -> list[dict]:
    """A GetBucketPolicy answer's statements ([] for a bucket without a policy)."""
    return json.loads(policy.get("Policy") or "{}").get("Statement", [])


def _put_tls_policy(s3, bucket: str) -> None:
    """The DenyInsecureTransport statement, beside whatever other statements the policy has."""
    ours = deny_insecure_transport_policy(bucket, s3.meta.partition)
    try:
        others = [
            s for s in _statements(s3.get_bucket_policy(Bucket=bucket)) if s.get("Sid") != "DenyInsecureTransport"
        ]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchBucketPolicy":
            raise
        others = []
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({**ours, "Statement": others + ours["Statement"]}))


def _encrypts_by_default(answer: dict, *_: str) -> bool:
    """Any default encryption holds: a KMS key someone chose is never downgraded to SSE-S3."""
    rules = answer.get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
    return any(rule.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm") for rule in rules)


@dataclass(frozen=True)
class PostureSetting:
    """One part of a bucket's posture: the GET that reads it, whether its answer holds, the PUT."""

    name: str
    get: str  # the S3 client method
    unset: str  # the error code of a bucket without the setting (read as the answer {})
    holds: Callable[[dict, str, str], bool]  # (answer, bucket, the client's ARN partition)
    put: Callable[[Any, str], object]  # (s3, bucket)

    def held_by(self, s3, bucket: str) -> bool:
        try:
            answer = getattr(s3, self.get)(Bucket=bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != self.unset:
                raise
            answer = {}
        return self.holds(answer, bucket, s3.meta.partition)


OWNER_ENFORCED = [{"ObjectOwnership": "BucketOwnerEnforced"}]
POSTURE = (
    PostureSetting(
        "ownership",
        "get_bucket_ownership_controls",
        "OwnershipControlsNotFoundError",
        lambda answer, *_: answer.get("OwnershipControls", {}).get("Rules") == OWNER_ENFORCED,
        lambda s3, b: s3.put_bucket_ownership_controls(Bucket=b, OwnershipControls={"Rules": OWNER_ENFORCED}),
    ),
    PostureSetting(
        "public access block",
        "get_public_access_block",
        "NoSuchPublicAccessBlockConfiguration",
        lambda answer, *_: answer.get("PublicAccessBlockConfiguration") == PUBLIC_ACCESS_BLOCK,
        lambda s3, b: s3.put_public_access_block(Bucket=b, PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCK),
    ),
    PostureSetting(
        "versioning",
        "get_bucket_versioning",
        "",
        lambda answer, *_: answer.get("Status") == "Enabled",
        lambda s3, b: s3.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"}),
    ),
    PostureSetting(
        "default encryption",
        "get_bucket_encryption",
        "ServerSideEncryptionConfigurationNotFoundError",
        _encrypts_by_default,
        lambda s3, b: s3.put_bucket_encryption(
            Bucket=b,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}, "BucketKeyEnabled": True}]
            },
        ),
    ),
)
TLS_ONLY = PostureSetting(
    "TLS-only policy",
    "get_bucket_policy",
    "NoSuchBucketPolicy",
    lambda answer, bucket, partition: (
        deny_insecure_transport_policy(bucket, partition)["Statement"][0] in _statements(answer)
    ),
    _put_tls_policy,
)


def posture_for(s3, require_tls: bool | None = None) -> tuple[PostureSetting, ...]:
    """The settings a bucket behind this client must have. `require_tls` (default: whether this
    client speaks https) adds the TLS-only policy. The embedded moto server is plain http on loopback
    and ignores policy conditions, so there the policy would deny every object request: it is left
    out unless asked for."""
    if require_tls is None:
        require_tls = s3_endpoint(s3).startswith("https://")
    return (*POSTURE, TLS_ONLY) if require_tls else POSTURE


class NoBucket(Exception):
    """posture_drift's answer for a bucket that does not exist."""


def posture_drift(s3, bucket: str, require_tls: bool | None = None) -> tuple[PostureSetting, ...]:
    """The posture settings `bucket` lacks, read together (one GET each, no write); raises NoBucket."""
    settings = posture_for(s3, require_tls)
    with reaching("S3", s3_endpoint(s3)), ThreadPoolExecutor(len(settings)) as pool:
        try:
            holding = list(pool.map(lambda setting: setting.held_by(s3, bucket), settings))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                raise NoBucket(bucket) from None
            raise
    return tuple(setting for setting, holds in zip(settings, holding, strict=True) if not holds)


def ensure_bucket(
    s3, bucket: str, require_tls: bool | None = None, drift: tuple[PostureSetting, ...] | None = None
) -> tuple[str, ...]:
    """Create `bucket` if missing and put what its posture lacks: private, versioned, encrypted, TLS only.
    Return the names of the settings it put.

    Like a Pulumi resource with no diff, a bucket that has its posture gets no write (a rollback
    needs no s3:PutBucket* and leaves no CloudTrail write events); the reads that tell are one round
    trip, or none when the caller passes the `drift` it read beside other work (`posture_drift`).
    """
    with reaching("S3", s3_endpoint(s3)):
        try:
            drift = posture_drift(s3, bucket, require_tls) if drift is None else drift
        except NoBucket:
            region = s3.meta.region_name
            location = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
            s3.create_bucket(Bucket=bucket, ObjectOwnership="BucketOwnerEnforced", **location)
            drift = posture_for(s3, require_tls)
        if drift:
            with ThreadPoolExecutor(len(drift)) as pool:  # independent settings: sent together
                for done in [pool.submit(setting.put, s3, bucket) for setting in drift]:
                    done.result()
    return tuple(setting.name for setting in drift)


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
        if is_missing(exc):
            return None
        raise
    if head.get("Metadata", {}).get("sha256") != entry.artifact_sha256:
        return None
    checksum = head.get("ChecksumSHA256")
    if checksum is not None:
        same = checksum == _b64_sha256(entry.artifact_sha256)
    else:  # uploaded without a checksum (not by us): only the bytes can tell — those of the version headed
        try:
            body = s3.get_object(Bucket=bucket, Key=entry.artifact_key, IfMatch=head["ETag"])["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "PreconditionFailed":
                raise
            return published_version(s3, bucket, entry)  # overwritten since the HEAD: look again
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

    Idempotent: an object already at its key with the catalog's sha256 is adopted as it is, without
    a build, so a rollback to a dropped version (its object retained) never depends on rebuilding its
    bytes. The bucket must exist (`ensure_bucket`, or the Pulumi component in AWS stacks).
    """
    with reaching("S3", s3_endpoint(s3)):
        existing = published_version(s3, settings.artifacts.bucket, entry)
    if existing is not None:
        return existing
    return upload_artifact(s3, settings.artifacts.bucket, entry, verified_build(entry))


def upload_artifact(s3, bucket: str, entry: CatalogEntry, data: bytes) -> str:
    """Put `data` (whose sha256 must be the entry's) at the entry's content-addressed key, with
    its sha256 as metadata and checksum; an object already holding these bytes is left alone."""
    actual = models.sha256_of(data)
    if actual != entry.artifact_sha256:
        raise IntegrityError(
            f"artifact bytes have sha256 {actual[:12]}…, the entry says {entry.artifact_sha256[:12]}…; nothing was uploaded"
        )
    with reaching("S3", s3_endpoint(s3)):
        existing = published_version(s3, bucket, entry)
        if existing is not None:
            return existing
        try:
            response = s3.put_object(
                Bucket=bucket,
                Key=entry.artifact_key,
                Body=data,
                ContentType="application/gzip",
                Metadata={"sha256": actual, "model-version": entry.version},
                ChecksumAlgorithm="SHA256",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchBucket":
                raise
            raise UsageError(
                f"artifact bucket {bucket} does not exist; deploy the stack first (`pulumi up` creates it) "
                "or fix lockstep:artifacts.bucket; nothing was uploaded"
            ) from None
    return response.get("VersionId", "null")


def fetch_artifact(s3, bucket: str, entry: CatalogEntry) -> bytes:
    """The artifact's bytes, refused unless their sha256 is the catalog's."""
    uri = artifact_uri(bucket, entry)
    with reaching("S3", s3_endpoint(s3)):
        try:
            data = s3.get_object(Bucket=bucket, Key=entry.artifact_key)["Body"].read()
        except ClientError as exc:
            if is_missing(exc):
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
    """The version's model, loaded by its family from the verified artifact — or the one this
    process already loaded from the same S3 object version (one HEAD instead of a second load:
    an apply verifies every model before its first write, then embeds with it)."""
    with reaching("S3", s3_endpoint(s3)):
        version_id = published_version(s3, bucket, entry)
    return _embedder_at(s3, bucket, entry, version_id)


def _embedder_at(s3, bucket: str, entry: CatalogEntry, version_id: str | None) -> models.Embedder:
    """The model published as `version_id` (None: not published with the catalog's sha256)."""
    key = (s3_endpoint(s3), bucket, entry, version_id)
    if version_id is not None and key in _LOADED:
        _LOADED.move_to_end(key)
        return _LOADED[key]
    embedder = models.load_artifact(
        fetch_artifact(s3, bucket, entry), entry.artifact_sha256, entry.family, entry.version
    )
    if version_id is not None:
        _remember(key, embedder)
    return embedder


_LOADED: OrderedDict[tuple, models.Embedder] = OrderedDict()  # (S3 endpoint, bucket, entry, VersionId) → model
LOADED_MODELS = 4  # kept per process: a few versions of an apply, not every model a long process met


def _remember(key: tuple, embedder: models.Embedder) -> None:
    _LOADED[key] = embedder
    while len(_LOADED) > LOADED_MODELS:
        _LOADED.popitem(last=False)


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
    with reaching("S3", s3_endpoint(s3)):
        version_id = published_version(s3, bucket, entry)
    if version_id is not None:
        embedder = _embedder_at(s3, bucket, entry, version_id)
    else:
        embedder = models.load_artifact(verified_build(entry), entry.artifact_sha256, entry.family, entry.version)
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


ARTIFACT_PREFIX = "models/"
ARCHIVED = frozenset({"GLACIER", "DEEP_ARCHIVE"})  # readable only after a restore: a rollback would wait hours


def lifecycle_threats(s3, bucket: str, prefix: str = ARTIFACT_PREFIX) -> list[str]:
    """The bucket's enabled lifecycle rules that would expire or archive objects under `prefix`,
    one phrase each. Versioning keeps an expired object only as a noncurrent version, which other
    rules delete: a retained rollback artifact would be gone (or hours away) when it is needed.
    Read only: a team's rule is theirs to change. A rule filtered by tag or size may cover an
    artifact, so it counts."""
    with reaching("S3", s3_endpoint(s3)):
        try:
            rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchLifecycleConfiguration":
                return []
            raise
    threats = []
    for rule in rules:
        scope = rule.get("Filter", {})
        start = rule.get("Prefix", scope.get("Prefix", scope.get("And", {}).get("Prefix", "")))
        if rule.get("Status") != "Enabled" or not (prefix.startswith(start) or start.startswith(prefix)):
            continue
        name = f"lifecycle rule {rule.get('ID') or '(no ID)'}"
        expiration = rule.get("Expiration", {})
        if "Days" in expiration or "Date" in expiration:
            when = f"after {expiration['Days']} days" if "Days" in expiration else f"on {expiration['Date']}"
            threats.append(f"{name} expires {start or 'every object'} {when}")
        archived = sorted({t["StorageClass"] for t in rule.get("Transitions", []) if t.get("StorageClass") in ARCHIVED})
        if archived:
            threats.append(f"{name} archives {start or 'every object'} to {'/'.join(archived)}")
    return threats


def artifact_status(s3, bucket: str, entry: CatalogEntry) -> dict:
    """For the consistency check: does the object exist, and do its bytes hash to the catalog's sha256?"""
    status = {
        "uri": artifact_uri(bucket, entry),
        "exists": False,
        "sha256_ok": False,
        "sha256": None,
        "version_id": None,
    }
    with reaching("S3", s3_endpoint(s3)):
        try:
            response = s3.get_object(Bucket=bucket, Key=entry.artifact_key)
        except ClientError as exc:
            if is_missing(exc):
                return status
            raise
        actual = models.sha256_of(response["Body"].read())
    status.update(
        exists=True, sha256=actual, sha256_ok=actual == entry.artifact_sha256, version_id=response.get("VersionId")
    )
    return status
