"""The artifact store: a private, versioned, encrypted bucket holding one immutable object per version.

`pulumi destroy` keeps it on purpose (retainOnDelete on the bucket and its posture; the objects are
lockstep Artifacts, kept on delete): the bucket holds every version's artifact and the check records
promotion reads. The engine marks those deletes `[retain]`; delete the bucket by hand if you mean it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components import deferred
from components.providers.resources import Artifact
from lockstep.config import CatalogEntry, StackSettings
from lockstep.ops.artifacts import deny_insecure_transport_policy
from lockstep.ops.clients import partition


@dataclass
class ArtifactStoreArgs:
    settings: StackSettings
    entries: list[CatalogEntry]


class ArtifactStore(pulumi.ComponentResource):
    """Bucket posture plus one object per kept version at its content-addressed key."""

    bucket: pulumi.Output[str]
    objects: dict[str, Artifact]

    def __init__(self, name: str, args: ArtifactStoreArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("lockstep:index:ArtifactStore", name, None, opts)
        # Kept by destroy: a bucket with objects cannot be deleted, and its posture must outlive the stack.
        child = pulumi.ResourceOptions(parent=self, retain_on_delete=True)
        bucket_name = deferred.value(args.settings, lambda resolved: resolved.artifacts.bucket)

        bucket = aws.s3.Bucket(f"{name}-bucket", bucket=bucket_name, opts=child)
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
            policy=deferred.value(
                args.settings,
                lambda resolved: json.dumps(
                    deny_insecure_transport_policy(resolved.artifacts.bucket, partition(resolved.region))
                ),
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[public_access], retain_on_delete=True),
        )

        # Objects wait for the bucket's posture so no version is ever written unencrypted or unversioned.
        posture = [versioning, encryption, public_access, ownership, policy]
        # An object already at its key (a version retained when it left the stack) is adopted by the
        # Artifact's create, never imported: the engine plans no replacement of what the stack holds.
        self.objects = {
            entry.version: Artifact(
                f"{name}-{entry.version}",
                args.settings,
                entry,
                pulumi.ResourceOptions(parent=self, depends_on=posture),
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
