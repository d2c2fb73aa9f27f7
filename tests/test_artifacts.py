"""Artifacts and corpus in S3 (real moto server): bucket posture, idempotent publish, sha256 refusal."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

from lockstep.errors import IntegrityError, UsageError
from lockstep.models import hashgram as model
from lockstep.ops import artifacts, corpus, corpus_store


def object_versions(s3, bucket, key):
    listing = s3.list_object_versions(Bucket=bucket, Prefix=key)
    return [v["VersionId"] for v in listing.get("Versions", []) if v["Key"] == key]


def test_bucket_posture_is_private_versioned_encrypted_tls_only(s3, unique):
    bucket = f"{unique}-posture"
    artifacts.ensure_bucket(s3, bucket, require_tls=True)
    artifacts.ensure_bucket(s3, bucket, require_tls=True)  # idempotent: no failure, same posture

    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    rule = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms"}
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert block == artifacts.PUBLIC_ACCESS_BLOCK and all(block.values())
    ownership = s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]["Rules"]
    assert ownership == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    [deny] = [s for s in policy["Statement"] if s["Sid"] == "DenyInsecureTransport"]
    assert deny["Effect"] == "Deny"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert f"arn:aws:s3:::{bucket}/*" in deny["Resource"]


def test_ensure_bucket_writes_only_what_drifted_and_never_downgrades(s3, unique):
    """Like a Pulumi resource with no diff: a bucket with its posture gets no write; a lost setting
    is put back alone; the policy keeps statements that are not lockstep's; KMS stays KMS."""
    bucket = f"{unique}-drift"
    everything = ("ownership", "public access block", "versioning", "default encryption", "TLS-only policy")
    assert artifacts.ensure_bucket(s3, bucket, require_tls=True) == everything  # created
    assert artifacts.ensure_bucket(s3, bucket, require_tls=True) == ()

    theirs = {
        "Sid": "AnalyticsRead",
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{bucket}/*",
    }
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [theirs]}))
    s3.delete_bucket_encryption(Bucket=bucket)
    assert artifacts.ensure_bucket(s3, bucket, require_tls=True) == ("default encryption", "TLS-only policy")
    statements = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])["Statement"]
    assert [s["Sid"] for s in statements] == ["AnalyticsRead", "DenyInsecureTransport"]

    kms = {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "alias/team"}}
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [kms]})
    assert artifacts.ensure_bucket(s3, bucket, require_tls=True) == ()
    [rule] = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"


def test_the_tls_policy_names_the_buckets_own_partition(servers, unique):
    """In China the policy names `arn:aws-cn:` (an `arn:aws:` deny there guards nothing), and the
    posture read knows it holds: a second ensure writes nothing."""
    from lockstep.ops import clients

    s3 = clients.aws("s3", "cn-north-1")
    bucket = f"{unique}-china"
    artifacts.ensure_bucket(s3, bucket, require_tls=True)
    assert artifacts.ensure_bucket(s3, bucket, require_tls=True) == ()
    [deny] = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])["Statement"]
    assert deny["Resource"] == [f"arn:aws-cn:s3:::{bucket}", f"arn:aws-cn:s3:::{bucket}/*"]


def test_plain_http_endpoint_gets_the_posture_without_the_tls_policy(s3, unique):
    """moto over http ignores policy conditions: the TLS deny would lock every object call out."""
    bucket = f"{unique}-plain"
    artifacts.ensure_bucket(s3, bucket)
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    with pytest.raises(ClientError, match="NoSuchBucketPolicy"):
        s3.get_bucket_policy(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="probe", Body=b"ok")
    assert s3.get_object(Bucket=bucket, Key="probe")["Body"].read() == b"ok"


def test_publish_is_idempotent_and_fetch_returns_the_catalog_bytes(s3, make_settings, catalog):
    settings = make_settings()
    entry = catalog.get("v1")
    artifacts.ensure_bucket(s3, settings.artifacts.bucket)

    first = artifacts.publish_artifact(s3, settings, entry)
    second = artifacts.publish_artifact(s3, settings, entry)

    assert first == second
    assert object_versions(s3, settings.artifacts.bucket, entry.artifact_key) == [first]
    head = s3.head_object(Bucket=settings.artifacts.bucket, Key=entry.artifact_key)
    assert head["Metadata"]["sha256"] == entry.artifact_sha256
    data = artifacts.fetch_artifact(s3, settings.artifacts.bucket, entry)
    assert model.sha256_of(data) == entry.artifact_sha256
    embedder = artifacts.load_embedder(s3, settings.artifacts.bucket, entry)
    assert (embedder.version, embedder.dimension, embedder.artifact_sha256) == ("v1", 192, entry.artifact_sha256)
    assert artifacts.artifact_status(s3, settings.artifacts.bucket, entry) == {
        "uri": f"s3://{settings.artifacts.bucket}/{entry.artifact_key}",
        "exists": True,
        "sha256_ok": True,
        "sha256": entry.artifact_sha256,
        "version_id": first,
    }


def test_sha_mismatch_is_refused_before_anything_is_uploaded(s3, make_settings, catalog):
    settings = make_settings()
    artifacts.ensure_bucket(s3, settings.artifacts.bucket)
    wrong = catalog.get("v2").model_copy(update={"artifact_sha256": "0" * 64})

    with pytest.raises(IntegrityError, match="nothing was uploaded"):
        artifacts.publish_artifact(s3, settings, wrong)

    assert s3.list_objects_v2(Bucket=settings.artifacts.bucket).get("KeyCount", 0) == 0


def test_version_without_a_build_spec_is_a_usage_error(s3, make_settings, catalog):
    settings = make_settings()
    unknown = catalog.get("v1").model_copy(update={"version": "v9"})
    with pytest.raises(UsageError, match="is not an artifact lockstep builds"):
        artifacts.publish_artifact(s3, settings, unknown)


def test_tampered_object_is_refused_and_republish_repairs_it(s3, make_settings, catalog):
    settings = make_settings()
    bucket, entry = settings.artifacts.bucket, catalog.get("v1")
    artifacts.ensure_bucket(s3, bucket)
    original = artifacts.publish_artifact(s3, settings, entry)
    # Overwrite the bytes but keep the claimed sha256 in the metadata: only hashing the bytes tells.
    s3.put_object(
        Bucket=bucket,
        Key=entry.artifact_key,
        Body=model.build_artifact(model.SPECS["v2"]),
        Metadata={"sha256": entry.artifact_sha256},
    )

    with pytest.raises(IntegrityError, match="overwritten") as raised:
        artifacts.fetch_artifact(s3, bucket, entry)
    assert "\n" not in str(raised.value)
    status = artifacts.artifact_status(s3, bucket, entry)
    assert status["exists"] and not status["sha256_ok"]
    assert status["sha256"] == model.sha256_of(model.build_artifact(model.SPECS["v2"]))

    repaired = artifacts.publish_artifact(s3, settings, entry)
    assert repaired not in {original, status["version_id"]}
    assert artifacts.artifact_status(s3, bucket, entry)["sha256_ok"]


def test_a_checksumless_object_overwritten_between_head_and_read_names_the_version_it_hashed(
    s3, make_settings, catalog, monkeypatch
):
    """An object uploaded without a checksum is verified by hashing its bytes. If the key is
    overwritten between the HEAD and the read, the VersionId returned is that of the bytes hashed
    (the read is pinned to the HEAD's ETag and looked at again), never the HEAD's of other bytes."""
    settings = make_settings()
    bucket, entry = settings.artifacts.bucket, catalog.get("v1")
    artifacts.ensure_bucket(s3, bucket)
    claim = {"sha256": entry.artifact_sha256}
    tampered = s3.put_object(
        Bucket=bucket, Key=entry.artifact_key, Body=model.build_artifact(model.SPECS["v2"]), Metadata=claim
    )["VersionId"]
    right: list[str] = []
    head = s3.head_object

    def head_then_overwrite(**kwargs):
        headed = head(**kwargs)
        if not right:  # the right bytes land right after the first HEAD saw the tampered ones
            body = artifacts.verified_build(entry)
            right.append(s3.put_object(Bucket=bucket, Key=entry.artifact_key, Body=body, Metadata=claim)["VersionId"])
        return headed

    monkeypatch.setattr(s3, "head_object", head_then_overwrite)
    found = artifacts.published_version(s3, bucket, entry)
    assert found == right[0] and found != tampered


def test_a_model_is_loaded_once_per_object_version_never_from_memory_for_a_changed_object(s3, make_settings, catalog):
    settings = make_settings()
    bucket, entry = settings.artifacts.bucket, catalog.get("v1")
    artifacts.ensure_bucket(s3, bucket)
    artifacts.publish_artifact(s3, settings, entry)

    first = artifacts.load_embedder(s3, bucket, entry)
    assert artifacts.load_embedder(s3, bucket, entry) is first  # the same object version: not loaded again

    # Other bytes under the claimed sha256: refused, not answered from memory.
    s3.put_object(
        Bucket=bucket,
        Key=entry.artifact_key,
        Body=model.build_artifact(model.SPECS["v2"]),
        Metadata={"sha256": entry.artifact_sha256},
    )
    with pytest.raises(IntegrityError, match="overwritten"):
        artifacts.load_embedder(s3, bucket, entry)

    artifacts.publish_artifact(s3, settings, entry)  # a new object version: loaded anew
    again = artifacts.load_embedder(s3, bucket, entry)
    assert again is not first and again.artifact_sha256 == entry.artifact_sha256

    s3.delete_object(Bucket=bucket, Key=entry.artifact_key)
    with pytest.raises(UsageError, match="not found"):
        artifacts.load_embedder(s3, bucket, entry)


def test_verifying_a_published_model_reads_its_object_once_and_keeps_the_model(s3, make_settings, catalog, monkeypatch):
    """verify_model on a published artifact: one HEAD and one GET; the embed that follows (an
    apply's) is answered from the model it loaded, after one more HEAD."""
    settings = make_settings()
    bucket, entry = settings.artifacts.bucket, catalog.get("v1")
    artifacts.ensure_bucket(s3, bucket)
    artifacts.publish_artifact(s3, settings, entry)
    monkeypatch.setattr(artifacts, "_TRUTHFUL", set())
    monkeypatch.setattr(artifacts, "_LOADED", type(artifacts._LOADED)())
    calls: list[str] = []
    for name in ("head_object", "get_object"):
        real = getattr(s3, name)
        monkeypatch.setattr(s3, name, lambda real=real, name=name, **request: calls.append(name) or real(**request))

    artifacts.verify_model(s3, bucket, entry)
    assert calls == ["head_object", "get_object"], calls
    artifacts.load_embedder(s3, bucket, entry)
    assert calls == ["head_object", "get_object", "head_object"], calls


def test_missing_artifact_reads_as_not_existing(s3, make_settings, catalog):
    settings = make_settings()
    artifacts.ensure_bucket(s3, settings.artifacts.bucket)
    entry = catalog.get("v3")
    assert artifacts.artifact_status(s3, settings.artifacts.bucket, entry)["exists"] is False
    with pytest.raises(UsageError, match="not found; run `lockstep apply`"):
        artifacts.fetch_artifact(s3, settings.artifacts.bucket, entry)


def test_parse_artifact_url_reads_version_and_sha_from_the_key(catalog):
    entry = catalog.get("v3")
    parsed = artifacts.parse_artifact_url(artifacts.artifact_uri("bucket", entry))
    assert parsed == {"model": "hashgram", "version": "v3", "sha256": entry.artifact_sha256}
    with pytest.raises(IntegrityError):
        artifacts.parse_artifact_url("s3://bucket/latest/model.tar.gz")


def test_corpus_is_seeded_once_and_can_be_edited(s3, make_settings):
    settings = make_settings(corpus={"size": 30})
    documents = corpus.stdlib_documents(30)

    seeded = corpus_store.ensure_corpus(s3, settings, documents)
    assert seeded.uploaded == [corpus_store.corpus_uri(settings), corpus_store.golden_uri(settings)]
    again = corpus_store.ensure_corpus(s3, settings)
    assert again.uploaded == [] and again.ref == seeded.ref == corpus_store.corpus_ref(s3, settings)
    assert seeded.ref.documents == 30
    assert s3.get_bucket_versioning(Bucket=settings.corpus.bucket)["Status"] == "Enabled"
    assert corpus_store.read_corpus(s3, settings) == documents
    golden = corpus_store.read_golden(s3, settings)
    assert golden == corpus.golden_queries(documents)

    edited = [corpus.Document(documents[0].id, documents[0].text + " (edited)"), *documents[2:]]
    written = corpus_store.write_corpus(s3, settings, edited)
    assert written == corpus_store.corpus_ref(s3, settings) and written != seeded.ref
    assert corpus_store.read_corpus(s3, settings) == edited


def test_default_corpus_is_generated_and_cached(s3, make_settings, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCKSTEP_HOME", str(tmp_path))
    settings = make_settings(corpus={"size": 12})
    corpus_store.ensure_corpus(s3, settings)
    assert (tmp_path / f"corpus-r{corpus.REVISION}-12.jsonl").exists()
    assert corpus_store.read_corpus(s3, settings) == corpus.stdlib_documents(12)


def test_missing_corpus_is_a_usage_error_naming_the_object(s3, make_settings):
    settings = make_settings()
    with pytest.raises(UsageError, match=f"corpus s3://{settings.corpus.bucket}/corpus/docs.jsonl not found"):
        corpus_store.read_corpus(s3, settings)
