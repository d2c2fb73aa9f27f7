"""The CrossGuard pack (policy/): its rules against the resources the real program declares.

The program's resources come from the SDK's mock runtime (tests/test_program.py's `evaluate`), so
the rules see exactly the input shapes the engine would hand them. One test starts the pack the way
the Pulumi CLI does and talks gRPC to it, so the wiring (names, MANDATORY, config) is proven too.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc
from ruamel.yaml import YAML

from policy import lockstep_policy as rules
from tests.test_program import evaluate

ROOT = Path(__file__).resolve().parents[1]
CATALOG = YAML(typ="safe").load((ROOT / "stacks" / "catalog.yaml").read_text())
V1_SHA = CATALOG["versions"]["v1"]["artifactSha256"]
V2_SHA = CATALOG["versions"]["v2"]["artifactSha256"]
VALIDATORS = [rules.validate_index, rules.validate_sagemaker_model, rules.validate_sagemaker_endpoint]


class Args:
    """What pulumi_policy hands a validate function: type, inputs, URN and the policy's config."""

    def __init__(
        self, resource_type: str, props: dict, stack: str = "prod", name: str = "r", config: dict | None = None
    ):
        self.resource_type = resource_type
        self.props = props
        self.name = name
        self.urn = f"urn:pulumi:{stack}::lockstep::{resource_type}::{name}"
        self._config = config or {}

    def get_config(self) -> dict:
        return self._config


def violations(args: Args) -> list[str]:
    found: list[str] = []
    for validate in VALIDATORS:
        validate(args, lambda message, urn=None: found.append(message))
    return found


@pytest.fixture(scope="module")
def prod_program():
    """Every resource the program declares for the prod stack file, as (name, type, inputs)."""
    data = YAML(typ="safe").load((ROOT / "stacks" / "Pulumi.prod.yaml").read_text())["config"]
    run = evaluate(copy.deepcopy(dict(data)), stack="prod")
    return [(name, r["type"], r["inputs"]) for name, r in run.resources.items()]


def of_type(program, resource_type: str) -> dict:
    found = [(name, inputs) for name, typ, inputs in program if typ == resource_type]
    assert found, f"the program declares no {resource_type}"
    return found[0]


# ------------------------------------------------------------------------ the real program passes


def test_the_prod_program_satisfies_every_rule(prod_program):
    checked = {typ for _, typ, _ in prod_program} & {
        rules.INDEX_TYPE,
        rules.CUTOVER_TYPE,
        rules.SAGEMAKER_MODEL_TYPE,
        *rules.SAGEMAKER_ENDPOINT_TYPES,
    }
    assert checked == {
        rules.INDEX_TYPE,
        rules.CUTOVER_TYPE,
        rules.SAGEMAKER_MODEL_TYPE,
        *rules.SAGEMAKER_ENDPOINT_TYPES,
    }
    for name, typ, inputs in prod_program:
        assert violations(Args(typ, inputs, name=name)) == [], name


# ------------------------------------------------------------------------ indices and the cutover


@pytest.mark.parametrize("resource_type", [rules.INDEX_TYPE, rules.CUTOVER_TYPE])
@pytest.mark.parametrize("tag", sorted(rules.config.FLOATING_TAGS) + ["LATEST"])
def test_a_floating_tag_on_an_index_is_refused(prod_program, resource_type, tag):
    _, inputs = of_type(prod_program, resource_type)
    props = {**inputs, "version": tag}
    found = violations(Args(resource_type, props))
    assert any("floating tag" in v for v in found), found


@pytest.mark.parametrize("sha", [None, "", "abc123", V1_SHA.upper(), V1_SHA[:-1], V1_SHA + "0"])
def test_an_index_without_a_real_sha256_is_refused(prod_program, sha):
    _, inputs = of_type(prod_program, rules.INDEX_TYPE)
    props = {**inputs, "artifactSha256": sha}
    assert any("artifact sha256" in v and "64 lowercase hex" in v for v in violations(Args(rules.INDEX_TYPE, props)))


def test_an_index_with_a_sha_the_catalog_does_not_have_is_refused(prod_program):
    _, inputs = of_type(prod_program, rules.INDEX_TYPE)
    forged = "0" * 64
    props = {**inputs, "artifactSha256": forged}
    found = violations(Args(rules.INDEX_TYPE, props))
    assert any("differs from the catalog" in v for v in found), found


def test_a_version_outside_the_catalog_is_refused(prod_program):
    _, inputs = of_type(prod_program, rules.INDEX_TYPE)
    props = {**inputs, "version": "v9"}
    assert any("not in the catalog" in v for v in violations(Args(rules.INDEX_TYPE, props)))


# ------------------------------------------------------------------------ SageMaker


def test_a_model_loading_a_floating_key_is_refused(prod_program):
    _, inputs = of_type(prod_program, rules.SAGEMAKER_MODEL_TYPE)
    container = {
        **inputs["primaryContainer"],
        "modelDataUrl": "s3://acme-lockstep-prod-artifacts/models/hashgram/latest/model.tar.gz",
    }
    found = violations(Args(rules.SAGEMAKER_MODEL_TYPE, {**inputs, "primaryContainer": container}))
    assert any("not content-addressed" in v for v in found), found


def test_a_model_whose_key_names_another_version_or_sha_is_refused(prod_program):
    _, inputs = of_type(prod_program, rules.SAGEMAKER_MODEL_TYPE)
    version = inputs["tags"][rules.VERSION_TAG]
    other, other_sha = ("v2", V2_SHA) if version != "v2" else ("v1", V1_SHA)
    url = f"s3://b/models/hashgram/{other}/{other_sha}/model.tar.gz"
    found = violations(
        Args(
            rules.SAGEMAKER_MODEL_TYPE,
            {**inputs, "primaryContainer": {**inputs["primaryContainer"], "modelDataUrl": url}},
        )
    )
    assert any("differs from tags.lockstep:version" in v for v in found), found

    url = f"s3://b/models/hashgram/{version}/{'f' * 64}/model.tar.gz"
    found = violations(
        Args(
            rules.SAGEMAKER_MODEL_TYPE,
            {**inputs, "primaryContainer": {**inputs["primaryContainer"], "modelDataUrl": url}},
        )
    )
    assert any("differs from the catalog" in v for v in found)
    assert any("LOCKSTEP_ARTIFACT_SHA256" in v for v in found), "the container's declared sha no longer matches the key"


@pytest.mark.parametrize("resource_type", [rules.SAGEMAKER_MODEL_TYPE, *rules.SAGEMAKER_ENDPOINT_TYPES])
@pytest.mark.parametrize("tags", [None, {}, {rules.VERSION_TAG: "stable"}, {rules.VERSION_TAG: "current"}])
def test_sagemaker_resources_without_an_immutable_version_tag_are_refused(prod_program, resource_type, tags):
    _, inputs = of_type(prod_program, resource_type)
    props = {k: v for k, v in inputs.items() if k != "tags"} | ({"tags": tags} if tags is not None else {})
    found = violations(Args(resource_type, props))
    assert any(v.startswith(f"tags.{rules.VERSION_TAG}") for v in found), found


def test_an_endpoint_tagged_with_a_sha_takes_it_over_the_catalog(prod_program):
    _, inputs = of_type(prod_program, "aws:sagemaker/endpoint:Endpoint")
    version = inputs["tags"][rules.VERSION_TAG]
    good = rules.config.load_catalog().get(version).artifact_sha256
    assert (
        violations(Args("aws:sagemaker/endpoint:Endpoint", {**inputs, "tags": {**inputs["tags"], rules.SHA_TAG: good}}))
        == []
    )
    found = violations(
        Args("aws:sagemaker/endpoint:Endpoint", {**inputs, "tags": {**inputs["tags"], rules.SHA_TAG: "deadbeef"}})
    )
    assert any("64 lowercase hex" in v for v in found), found


def test_an_endpoint_of_an_unknown_version_without_a_sha_tag_is_refused(prod_program):
    _, inputs = of_type(prod_program, "aws:sagemaker/endpoint:Endpoint")
    found = violations(Args("aws:sagemaker/endpoint:Endpoint", {**inputs, "tags": {rules.VERSION_TAG: "v9"}}))
    assert any(rules.SHA_TAG in v for v in found), found


# ------------------------------------------------------------------------ scope


@pytest.mark.parametrize(
    "stack,applies",
    [
        ("prod", True),
        ("production", True),
        ("prod-eu", True),
        ("prod.us", True),
        ("staging", False),
        ("dev", False),
        ("preprod", False),
        ("product-demo", False),
        ("local", False),
    ],
)
def test_only_production_stacks_are_held_to_the_rules(prod_program, stack, applies):
    _, inputs = of_type(prod_program, rules.INDEX_TYPE)
    floating = {**inputs, "version": "latest"}
    assert bool(violations(Args(rules.INDEX_TYPE, floating, stack=stack))) is applies


def test_the_stacks_setting_widens_the_scope(prod_program):
    _, inputs = of_type(prod_program, rules.INDEX_TYPE)
    floating = {**inputs, "version": "latest"}
    assert violations(Args(rules.INDEX_TYPE, floating, stack="staging", config={"stacks": "prod|staging"}))
    assert not violations(Args(rules.INDEX_TYPE, floating, stack="prod", config={"stacks": "staging"}))


def test_the_stacks_dir_setting_names_the_catalog(tmp_path, prod_program):
    (tmp_path / "catalog.yaml").write_text(
        "model: hashgram\nversions:\n  v7:\n    artifactSha256: "
        + "7" * 63
        + "a"
        + "\n    dimension: 8\n    spaceType: l2\n"
    )
    _, inputs = of_type(prod_program, rules.INDEX_TYPE)
    found = violations(Args(rules.INDEX_TYPE, inputs, config={"stacksDir": str(tmp_path)}))
    assert any("not in the catalog; use one of v7" in v for v in found), found


@pytest.mark.parametrize("catalog_text", [None, "model: hashgram\nversions:\n  v1:\n    dimension: 8\n"])
def test_an_unreadable_catalog_fails_the_prod_deploy(tmp_path, prod_program, catalog_text):
    if catalog_text is not None:
        (tmp_path / "catalog.yaml").write_text(catalog_text)
    _, inputs = of_type(prod_program, rules.INDEX_TYPE)
    found = violations(Args(rules.INDEX_TYPE, inputs, config={"stacksDir": str(tmp_path)}))
    assert found and all(v.startswith("catalog: ") for v in found), found


def test_other_resources_are_ignored():
    assert violations(Args("aws:s3/bucketV2:BucketV2", {"bucket": "latest"})) == []


# ------------------------------------------------------------------------ the pack as the CLI runs it


def struct(value: dict) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


@pytest.fixture
def analyzer():
    """`policy/` started as the CLI's python analyzer does (runpy of the directory); its gRPC stub."""
    process = subprocess.Popen(
        [sys.executable, "-u", str(ROOT / "policy")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        port = process.stdout.readline().strip()
        assert port.isdigit(), process.stderr.read() if process.poll() is not None else f"no port: {port!r}"
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        yield analyzer_pb2_grpc.AnalyzerStub(channel)
        channel.close()
    finally:
        process.kill()
        process.wait(timeout=10)


def test_the_pack_serves_mandatory_policies_and_refuses_a_floating_prod_index(analyzer, prod_program):
    info = analyzer.GetAnalyzerInfo(empty_pb2.Empty(), timeout=30)
    assert info.name == "lockstep"
    assert {p.name: p.enforcementLevel for p in info.policies} == {
        p.name: analyzer_pb2.MANDATORY for p in rules.POLICIES
    }

    name, inputs = of_type(prod_program, rules.INDEX_TYPE)
    good = analyzer.Analyze(
        analyzer_pb2.AnalyzeRequest(
            type=rules.INDEX_TYPE,
            properties=struct(inputs),
            name=name,
            urn=f"urn:pulumi:prod::lockstep::{rules.INDEX_TYPE}::{name}",
        ),
        timeout=30,
    )
    assert list(good.diagnostics) == []

    bad = analyzer.Analyze(
        analyzer_pb2.AnalyzeRequest(
            type=rules.INDEX_TYPE,
            properties=struct({**inputs, "version": "latest"}),
            name=name,
            urn=f"urn:pulumi:prod::lockstep::{rules.INDEX_TYPE}::{name}",
        ),
        timeout=30,
    )
    assert {d.policyName for d in bad.diagnostics} == {"lockstep-index-pinned-version"}
    assert {d.enforcementLevel for d in bad.diagnostics} == {analyzer_pb2.MANDATORY}
    assert any("floating tag" in d.message for d in bad.diagnostics)
