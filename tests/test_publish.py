"""`lockstep publish`: a team's model directory becomes a catalog version that apply can deploy;
bad input is one line, exit 2, nothing uploaded, catalog untouched."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from ruamel.yaml import YAML

from lockstep import config, models
from lockstep.models import hashgram, minilm
from lockstep.ops import clients, endpoints
from tests.conftest import lockstep
from tests.test_plan_sagemaker import IMAGE

TEAM_SPEC = hashgram.ModelSpec("team-1", dimension=128, seed=77)


@pytest.fixture
def team_model(tmp_path):
    """A hashgram model directory lockstep has no recipe for."""
    directory = tmp_path / "team-model"
    directory.mkdir()
    models.unpack(hashgram.build_artifact(TEAM_SPEC), directory)
    return directory


def objects(s3, bucket: str) -> list[str]:
    if bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        return []
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_publish_then_pin_apply_check(servers, scratch_stack, team_model):
    stacks, stack = scratch_stack(corpus={"size": 60})
    catalog_file = stacks / "catalog.yaml"
    result = lockstep("publish", "--stack", stack, str(team_model), "team-1", "--dimension", "128", "--model", "team")
    assert result.returncode == 0, result.stderr
    sha = models.sha256_of(hashgram.build_artifact(TEAM_SPEC))
    assert f"artifact {sha[:12]}" in result.stdout and "added to the catalog" in result.stdout

    text = catalog_file.read_text()
    assert text.startswith("# The catalog of model versions")  # comments kept
    entry = config.load_catalog(stacks).get("team-1")
    assert (entry.family, entry.dimension, entry.artifact_sha256, entry.model) == ("hashgram", 128, sha, "team")
    settings = config.load_stack(stack, stacks)
    assert objects(clients.aws("s3"), settings.artifacts.bucket) == [entry.artifact_key]

    again = lockstep("publish", "--stack", stack, str(team_model), "team-1")
    assert again.returncode == 0 and "already in the catalog" in again.stdout
    assert catalog_file.read_text() == text

    assert lockstep("pin", "--stack", stack, "team-1").returncode == 0
    applied = lockstep("apply", "--stack", stack, "--quiet")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    checked = lockstep("check", "--stack", stack)
    assert checked.returncode == 0, checked.stdout
    endpoints.stop_local_slots(config.load_stack(stack, stacks))


def test_publish_a_model_tar_gz_detects_its_family(servers, scratch_stack, tmp_path):
    stacks, stack = scratch_stack()
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(minilm.artifact_bytes())
    result = lockstep("publish", "--stack", stack, str(archive), "minilm-copy", "--dimension", "384")
    assert result.returncode == 0, result.stderr
    entry = config.load_catalog(stacks).get("minilm-copy")
    assert (entry.family, entry.dimension, entry.artifact_sha256) == (
        "sentence-transformers",
        384,
        minilm.ARTIFACT_SHA256,
    )


def test_publish_adds_to_a_catalog_in_list_form(servers, scratch_stack, team_model):
    stacks, stack = scratch_stack()
    catalog_file = stacks / "catalog.yaml"
    document = YAML(typ="safe").load(catalog_file.read_text())
    listed = [{"version": name, "model": document["model"], **fields} for name, fields in document["versions"].items()]
    YAML().dump({**document, "versions": listed}, catalog_file)

    result = lockstep("publish", "--stack", stack, str(team_model), "team-1", "--dimension", "128")
    assert result.returncode == 0, result.stderr
    assert config.load_catalog(stacks).names == [*document["versions"], "team-1"]
    assert config.load_catalog(stacks).get("team-1").model == document["model"]


def test_a_version_the_catalog_refuses_is_refused_before_the_upload(servers, scratch_stack, tmp_path):
    stacks, stack = scratch_stack()
    before = (stacks / "catalog.yaml").read_text()
    model = _spec_dir(tmp_path, hashgram.ModelSpec("V1", dimension=128, seed=5))
    result = lockstep("publish", "--stack", stack, str(model), "V1", "--dimension", "128")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        f"lockstep: {stacks / 'catalog.yaml'} with V1 added: versions 'v1' and 'V1' differ only in case and would share one "
        "index (index names are lowercase); rename one"
    ]
    assert (stacks / "catalog.yaml").read_text() == before
    assert objects(clients.aws("s3"), config.load_stack(stack, stacks).artifacts.bucket) == []


def _without(directory, name):
    (directory / name).unlink()
    return directory


def _spec_dir(tmp_path, spec):
    directory = tmp_path / spec.version
    directory.mkdir()
    models.unpack(hashgram.build_artifact(spec), directory)
    return directory


BAD = {
    "missing path": (lambda d, t: [str(t / "nowhere"), "team-1"], "no such model directory"),
    "missing file": (
        lambda d, t: [str(_without(d, "projection.npy")), "team-1", "--family", "hashgram"],
        "projection.npy",
    ),
    "nothing recognised": (lambda d, t: [str(_without(d, "model.json")), "team-1"], "no installed family"),
    "unknown family": (lambda d, t: [str(d), "team-1", "--family", "onnx-magic"], "'onnx-magic' is not installed"),
    "dimension differs": (
        lambda d, t: [str(d), "team-1", "--dimension", "100"],
        "--dimension 100 differs from the model's 128",
    ),
    "version exists, other bytes": (
        lambda d, t: [str(_spec_dir(t, hashgram.ModelSpec("v1", dimension=128, seed=5))), "v1"],
        "already in the catalog",
    ),
    "another version's model": (lambda d, t: [str(d), "team-2"], "holds hashgram team-1, not team-2"),
    "bad space type": (lambda d, t: [str(d), "team-1", "--space-type", "hamming"], "spaceType"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_changes_nothing(case, servers, scratch_stack, team_model, tmp_path):
    stacks, stack = scratch_stack()
    before = (stacks / "catalog.yaml").read_text()
    arguments, expected = BAD[case]
    result = lockstep("publish", "--stack", stack, *arguments(team_model, tmp_path))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines
    assert (stacks / "catalog.yaml").read_text() == before
    settings = config.load_stack(stack, stacks)
    assert objects(clients.aws("s3"), settings.artifacts.bucket) == []
    assert set(YAML(typ="safe").load(before)["versions"]) == set(config.load_catalog(stacks).names)


def test_publishing_to_an_aws_stack_never_lands_in_the_embedded_moto(servers, scratch_stack, team_model):
    """An AWS stack's artifact goes to its bucket on AWS, in its region and profile. With no
    AWS_ENDPOINT_URL set, the embedded moto running beside (`make demo` leaves it up) is no
    fallback: it would take the upload, and the catalog would name an artifact AWS does not have."""
    stacks, stack = scratch_stack(
        endpoints={"backend": "sagemaker", "imageUri": IMAGE},
        opensearch={"url": os.environ["OPENSEARCH_URL"]},
    )
    bucket = config.load_stack(stack, stacks).artifacts.bucket
    moto = clients.aws("s3")
    moto.create_bucket(Bucket=bucket)
    before = (stacks / "catalog.yaml").read_text()
    without_endpoint = {name: value for name, value in os.environ.items() if name != "AWS_ENDPOINT_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "lockstep.cli", "publish", "--stack", stack, str(team_model), "team-1"],
        capture_output=True,
        text=True,
        env={**without_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    # Offline (CI) AWS is unreachable; online it refuses the test credentials. Either way: AWS, not moto.
    assert len(lines) == 1 and ("unreachable" in lines[0] or "refused our credentials" in lines[0]), lines
    assert os.environ["AWS_ENDPOINT_URL"] not in lines[0], lines
    assert objects(moto, bucket) == []
    assert (stacks / "catalog.yaml").read_text() == before


def test_publishing_to_a_bucket_that_does_not_exist_is_one_line(servers, scratch_stack, team_model):
    """An AWS stack before its first `pulumi up` (or a mistyped bucket): one line naming the bucket,
    exit 2, the catalog unchanged (it was a NoSuchBucket traceback)."""
    stacks, stack = scratch_stack(
        endpoints={"backend": "sagemaker", "imageUri": IMAGE},
        opensearch={"url": os.environ["OPENSEARCH_URL"]},
    )
    bucket = config.load_stack(stack, stacks).artifacts.bucket
    before = (stacks / "catalog.yaml").read_text()
    result = lockstep("publish", "--stack", stack, str(team_model), "team-1")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"lockstep: artifact bucket {bucket} does not exist; deploy the stack first (`pulumi up` creates it) "
        "or fix lockstep:artifacts.bucket; nothing was uploaded"
    ]
    assert (stacks / "catalog.yaml").read_text() == before


def test_a_catalog_changed_while_uploading_is_not_overwritten(servers, scratch_stack, team_model, monkeypatch):
    """Two publishes at once: the catalog written by the other one while this one uploaded is kept
    (this one says so and asks to run again), never replaced by a text made before it."""
    from lockstep import publish
    from lockstep.errors import UsageError
    from lockstep.ops import artifacts

    stacks, stack = scratch_stack()
    catalog_file = stacks / "catalog.yaml"
    upload = artifacts.upload_artifact

    def upload_while_another_publish_writes(*args, **kwargs):
        version = upload(*args, **kwargs)
        catalog_file.write_text(catalog_file.read_text() + "# another publish was here\n")
        return version

    monkeypatch.setattr(artifacts, "upload_artifact", upload_while_another_publish_writes)
    settings, catalog = config.load_stack(stack, stacks), config.load_catalog(stacks)
    with pytest.raises(UsageError, match="changed while this publish uploaded"):
        publish.publish(settings, catalog, stacks, team_model, "team-1", dimension=128)
    assert catalog_file.read_text().endswith("# another publish was here\n")
    assert "team-1" not in config.load_catalog(stacks).names
