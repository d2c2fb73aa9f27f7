"""The artifact store: a private, versioned, encrypted bucket holding one immutable object per version."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_aws as aws

from lockstep import runtime
from lockstep.config import CatalogEntry
from lockstep.errors import IntegrityError
from lockstep.models import builds, sha256_of
from lockstep.ops.artifacts import deny_insecure_transport_policy


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


@dataclass
class ArtifactStoreArgs:
    bucket: str
    entries: list[CatalogEntry]
    cache_dir: Path | None = None


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
        self.objects = {
            entry.version: aws.s3.BucketObjectv2(
                f"{name}-{entry.version}",
                bucket=bucket.id,
                key=entry.artifact_key,
                source=pulumi.FileAsset(str(artifact_file(entry, args.cache_dir))),
                checksum_algorithm="SHA256",
                content_type="application/gzip",
                # The same metadata lockstep.ops.artifacts.publish_artifact writes and verifies.
                metadata={"sha256": entry.artifact_sha256, "model-version": entry.version},
                # Content-addressed, so immutable: a version leaving the stack must not take its
                # artifact with it (deleting an object removes all of its versions), or rolling back
                # to it would depend on rebuilding the exact bytes.
                opts=pulumi.ResourceOptions(parent=self, depends_on=posture, retain_on_delete=True),
            )
            for entry in args.entries
        }
        self.bucket = bucket.bucket
        self.register_outputs(
            {
                "bucket": self.bucket,
                "keys": {version: obj.key for version, obj in self.objects.items()},
            }
        )
