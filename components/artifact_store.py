"""The artifact store: a private, versioned, encrypted bucket holding one immutable object per version."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_aws as aws

from lockstep import runtime
from lockstep.config import CatalogEntry, StackSettings
from lockstep.errors import IntegrityError
from lockstep.models import builds, sha256_of
from lockstep.ops import clients
from lockstep.ops.artifacts import deny_insecure_transport_policy, published_version


def artifact_file(entry: CatalogEntry, cache_dir: Path | None = None) -> Path:
    """The version's model.tar.gz in the local cache, built deterministically and checked against the catalog."""
    path = (cache_dir or runtime.home() / "artifacts") / f"{entry.version}.tar.gz"
    if path.exists() and sha256_of(path.read_bytes()) == entry.artifact_sha256:
        return path
    data = builds.build(entry)
    if sha256_of(data) != entry.artifact_sha256:
        raise IntegrityError(
            f"built artifact of {entry.version} has sha256 {sha256_of(data)[:12]}…, the catalog says "
            f"{entry.artifact_sha256[:12]}…; fix artifactSha256 in stacks/catalog.yaml"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(path)
    return path


def stored_versions(settings: StackSettings, entries: list[CatalogEntry]) -> frozenset[str]:
    """Versions whose object is already at its content-addressed key with the catalog's sha256
    (retained when the version left the stack, or published earlier): read by ops, not the program."""
    s3 = clients.aws_for(settings, "s3")
    return frozenset(e.version for e in entries if published_version(s3, settings.artifacts.bucket, e) is not None)


@dataclass
class ArtifactStoreArgs:
    bucket: str
    entries: list[CatalogEntry]
    cache_dir: Path | None = None
    stored: frozenset[str] = frozenset()
    """Versions whose object is already in the bucket (`stored_versions`): adopted, never rebuilt."""


class ArtifactStore(pulumi.ComponentResource):
    """Bucket posture plus one object per kept version at its content-addressed key."""

    bucket: pulumi.Output[str]
    objects: dict[str, aws.s3.BucketObjectv2]

    def __init__(self, name: str, args: ArtifactStoreArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("lockstep:index:ArtifactStore", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        bucket = aws.s3.Bucket(f"{name}-bucket", bucket=args.bucket, opts=child)
        versioning = aws.s3.BucketVersioning(
            f"{name}-versioning",
            bucket=bucket.id,
            versioning_configuration={"status": "Enabled"},
            opts=child,
        )
        encryption = aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-encryption",
            bucket=bucket.id,
            rules=[
                {
                    "apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"},
                    "bucket_key_enabled": True,
                }
            ],
            opts=child,
        )
        public_access = aws.s3.BucketPublicAccessBlock(
            f"{name}-public-access",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        ownership = aws.s3.BucketOwnershipControls(
            f"{name}-ownership",
            bucket=bucket.id,
            rule={"object_ownership": "BucketOwnerEnforced"},
            opts=child,
        )
        policy = aws.s3.BucketPolicy(
            f"{name}-tls-only",
            bucket=bucket.id,
            policy=json.dumps(deny_insecure_transport_policy(args.bucket)),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[public_access]),
        )

        # Objects wait for the bucket's posture so no version is ever written unencrypted or unversioned.
        posture = [versioning, encryption, public_access, ownership, policy]
        self.objects = {entry.version: self._object(name, args, entry, bucket, posture) for entry in args.entries}
        self.bucket = bucket.bucket
        self.register_outputs(
            {
                "bucket": self.bucket,
                "keys": {version: obj.key for version, obj in self.objects.items()},
            }
        )

    def _object(
        self, name: str, args: ArtifactStoreArgs, entry: CatalogEntry, bucket: aws.s3.Bucket, posture: list
    ) -> aws.s3.BucketObjectv2:
        """The version's object. Content-addressed, so immutable: retained on delete (deleting an object
        removes all of its versions), and one already at its key is imported as it is, so a rollback to a
        dropped version never depends on rebuilding its bytes. `source` and `checksumAlgorithm` (which a
        read of the object may not return) are ignored once it exists: the key fixes the bytes. A version
        Pulumi uploaded itself is imported once on the next update (state only: its delete is retained)."""
        stored = entry.version in args.stored
        return aws.s3.BucketObjectv2(
            f"{name}-{entry.version}",
            bucket=bucket.id,
            key=entry.artifact_key,
            source=None if stored else pulumi.FileAsset(str(artifact_file(entry, args.cache_dir))),
            checksum_algorithm="SHA256",
            content_type="application/gzip",
            # The same metadata lockstep.ops.artifacts.publish_artifact writes and verifies.
            metadata={"sha256": entry.artifact_sha256, "model-version": entry.version},
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=posture,
                retain_on_delete=True,
                import_=f"{args.bucket}/{entry.artifact_key}" if stored else None,
                ignore_changes=["source", "checksumAlgorithm"],
            ),
        )
