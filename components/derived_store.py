"""A derived store's DynamoDB table: encrypted, point-in-time recovery on, indexed by model_version.

The key, the version attribute and the index are lockstep.ops.derived's: the ops layer counts and
repairs by exactly what this declares.
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from lockstep.config import DerivedStore
from lockstep.ops import derived


def derived_table(name: str, store: DerivedStore, opts: pulumi.ResourceOptions) -> aws.dynamodb.Table:
    return aws.dynamodb.Table(
        name,
        name=store.table,
        billing_mode="PAY_PER_REQUEST",
        hash_key=derived.KEY,
        attributes=[
            aws.dynamodb.TableAttributeArgs(name=derived.KEY, type="S"),
            aws.dynamodb.TableAttributeArgs(name=derived.VERSION_ATTRIBUTE, type="S"),
        ],
        global_secondary_indexes=[
            aws.dynamodb.TableGlobalSecondaryIndexArgs(
                name=derived.VERSION_INDEX,
                key_schemas=[
                    aws.dynamodb.TableGlobalSecondaryIndexKeySchemaArgs(
                        attribute_name=derived.VERSION_ATTRIBUTE, key_type="HASH"
                    )
                ],
                projection_type="INCLUDE",
                non_key_attributes=list(derived.PROJECTED),
            )
        ],
        server_side_encryption=aws.dynamodb.TableServerSideEncryptionArgs(enabled=True),
        point_in_time_recovery=aws.dynamodb.TablePointInTimeRecoveryArgs(enabled=True),
        # The records are the lineage of past releases: deleting the table takes a deliberate step.
        deletion_protection_enabled=True,
        # ...so `pulumi destroy` leaves it (marked `[retain]`) instead of failing on the protection.
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(retain_on_delete=True)),
    )
