"""lockstep as a Pulumi component package (issue #12), verified without the Pulumi CLI.

- The provider is built the way `component_provider_host` builds it (the host's own code runs with
  its gRPC `main` swapped for a capture), and the plugin's entry point is started the way the
  Python language host starts it (`python components <engine>`), answering GetSchema over gRPC.
- `construct` runs under the SDK's mock runtime with inputs decoded from a protobuf Struct, the way
  the provider server decodes what a TypeScript or YAML program sends (camelCase names, JSON
  numbers), and the registered children are compared with what the Python program declares.
- The examples' resource types and properties are checked against the inferred schema and then
  constructed themselves.
- Bad args fail with the CLI's own one-line messages.

Not verified here: `pulumi package add`, SDK generation and `pulumi up` (they need the CLI).
"""

from __future__ import annotations

import asyncio
import copy
import importlib.metadata
import json
import re
import subprocess
import sys
import typing
from pathlib import Path

import grpc
import pulumi
import pytest
from google.protobuf import empty_pb2, struct_pb2
from pulumi.provider.experimental.component import ComponentProvider
from pulumi.provider.server import ComponentInitError, ProviderServicer
from pulumi.runtime.proto import provider_pb2_grpc
from ruamel.yaml import YAML

from components import plugin
from lockstep import config as lockstep_config
from lockstep.errors import ConfigError
from tests.pulumi_harness import CHECK_STDOUT, CaptureMocks, Registered, run_mocked
from tests.test_program import dev_values, evaluate

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "lockstep:index:ModelRelease"
YAML_EXAMPLE = ROOT / "examples" / "yaml" / "Pulumi.yaml"
TS_EXAMPLE = ROOT / "examples" / "typescript" / "index.ts"


# ------------------------------------------------------------------------------ the provider


@pytest.fixture(scope="module")
def hosted(request) -> ComponentProvider:
    """The ComponentProvider whose `construct` components/plugin.main()'s server delegates to."""
    provider = plugin.build_provider()
    assert isinstance(provider, ComponentProvider)
    return provider


@pytest.fixture(scope="module")
def schema(hosted) -> dict:
    """What the plugin serves: the component's inferred schema plus the custom resources."""
    served = plugin.schema()
    inferred = json.loads(hosted.schema)["resources"][TOKEN]
    assert served["resources"][TOKEN] == inferred
    return served


def resolve(prop: dict, schema: dict) -> dict:
    """A property's object type definition when it is a $ref into the package's types."""
    ref = prop.get("$ref", "")
    return schema["types"][ref.removeprefix("#/types/")] if ref.startswith("#/types/") else prop


def test_the_host_serves_one_component_at_the_package_version(hosted, schema):
    assert hosted.version == importlib.metadata.version("lockstep") == schema["version"]
    assert schema["name"] == "lockstep"
    assert set(schema["resources"]) == {TOKEN, *CUSTOM_RESOURCES}
    assert schema["resources"][TOKEN]["isComponent"] is True
    assert not [token for token in CUSTOM_RESOURCES if schema["resources"][token].get("isComponent")]
    check = schema["resources"]["lockstep:index:Check"]["properties"]
    assert {"record", "passed", "failed", "pin"} <= set(check)
    # Credentials are the provider's configuration (issue 24), never a resource input.
    for token in CUSTOM_RESOURCES:
        assert "opensearchPassword" not in schema["resources"][token]["inputProperties"], token
    assert schema["provider"]["inputProperties"]["opensearchPassword"]["secret"] is True
    assert set(schema["config"]["variables"]) == {"region", "awsProfile", "roleArn", "opensearchPassword"}
    assert "blue/green" in schema["resources"][TOKEN]["description"]


CUSTOM_RESOURCES = {
    "lockstep:index:Index",
    "lockstep:index:Cutover",
    "lockstep:index:DerivedRepair",
    "lockstep:index:Check",
    "lockstep:embedded:Bucket",
    "lockstep:embedded:Corpus",
    "lockstep:embedded:Artifact",
    "lockstep:embedded:EndpointSlot",
    "lockstep:embedded:DerivedTable",
}

# What another language sees: name -> (type or $ref, required). Plain: decides the graph.
EXPECTED_INPUTS = {
    "pin": ("string", True),
    "slots": ("SlotVersions", True),
    "catalog": ("ReleaseCatalog", True),
    "artifacts": ("ArtifactBucket", True),
    "opensearch": ("OpenSearchIndexes", True),
    "corpus": ("CorpusLocation", True),
    "endpoints": ("SageMakerEndpoints", True),
    "retain": ("array", False),
    "derived": ("array", False),
    "check": ("ConsistencyCheck", False),
    "backfill": ("BackfillEngine", False),
    "region": ("string", False),
    "stack": ("string", False),
    "pointerParameter": ("string", False),
    "promotedFrom": ("string", False),
    "namePrefix": ("string", False),
    "autoRevert": ("boolean", False),
}


def kind(prop: dict) -> str:
    return prop["$ref"].rsplit(":", 1)[-1] if "$ref" in prop else prop["type"]


def test_every_input_with_its_type_requiredness_and_description(schema):
    resource = schema["resources"][TOKEN]
    inputs = resource["inputProperties"]
    assert {name: kind(prop) for name, prop in inputs.items()} == {n: t for n, (t, _) in EXPECTED_INPUTS.items()}
    assert set(resource["requiredInputs"]) == {n for n, (_, required) in EXPECTED_INPUTS.items() if required}
    assert inputs["retain"]["items"]["type"] == "string"
    assert kind(inputs["derived"]["items"]) == "DerivedRecordStore"
    # Top-level inputs are plain (the password is the provider's configuration, not an input); where
    # things are takes outputs (components/deferred.py), what decides the graph does not.
    assert {name for name, prop in inputs.items() if not prop.get("plain")} == set()
    opensearch = schema["types"]["lockstep:index:OpenSearchIndexes"]["properties"]
    assert not opensearch["url"].get("plain") and opensearch["indexPrefix"].get("plain")
    endpoints = schema["types"]["lockstep:index:SageMakerEndpoints"]["properties"]
    assert not endpoints["imageUri"].get("plain") and endpoints["deployment"].get("plain")
    assert not schema["types"]["lockstep:index:ArtifactBucket"]["properties"]["bucket"].get("plain")

    catalog = schema["types"]["lockstep:index:ReleaseCatalog"]
    assert kind(catalog["properties"]["versions"]) == "object"
    version = resolve(catalog["properties"]["versions"]["additionalProperties"], schema)
    assert {n: kind(p) for n, p in version["properties"].items()} == {
        "artifactSha256": "string",
        "dimension": "integer",
        "spaceType": "string",
        "model": "string",
        "family": "string",
        "recallFloor": "VersionRecallFloor",
        "description": "string",
    }
    assert set(version["required"]) == {"artifactSha256", "dimension", "spaceType"}
    # imageUri and url are for a sagemaker release only: the component requires them there (tests/test_program.py).
    assert "required" not in resolve(inputs["endpoints"], schema)
    assert "required" not in resolve(inputs["opensearch"], schema)

    # The schema documents itself: every input, every type and every type property.
    for name, prop in inputs.items():
        assert prop.get("description"), name
    for type_name, definition in schema["types"].items():
        assert definition.get("description"), type_name
        for name, prop in definition["properties"].items():
            assert prop.get("description"), f"{type_name}.{name}"


def test_outputs_live_index_endpoint_slots_and_check_record(schema):
    resource = schema["resources"][TOKEN]
    outputs = resource["properties"]
    assert {name: kind(prop) for name, prop in outputs.items()} == {
        "pin": "string",
        "liveEndpoint": "string",
        "liveIndex": "string",
        "slots": "object",
        "retainedIndices": "array",
        "checkRecord": "string",
    }
    assert outputs["slots"]["additionalProperties"]["type"] == "string"
    assert set(resource["required"]) == set(outputs)
    assert all(prop.get("description") for prop in outputs.values())


# The component's inputs are the stack settings: the same names, for the same pydantic models.
PARITY = {
    "slots": (lockstep_config.Slots, "SlotVersions"),
    "artifacts": (lockstep_config.ArtifactSettings, "ArtifactBucket"),
    "opensearch": (lockstep_config.OpenSearchSettings, "OpenSearchIndexes"),
    "corpus": (lockstep_config.CorpusSettings, "CorpusLocation"),
    "endpoints": (lockstep_config.EndpointSettings, "SageMakerEndpoints"),
    "check": (lockstep_config.CheckSettings, "ConsistencyCheck"),
    "backfill": (lockstep_config.BackfillSettings, "BackfillEngine"),
    "derived": (lockstep_config.DerivedStore, "DerivedRecordStore"),  # the list's items
}


def wire_type(annotation) -> str:
    if typing.get_origin(annotation) in (typing.Union, __import__("types").UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is tuple:
        return "array"
    if isinstance(annotation, type) and issubclass(annotation, lockstep_config.Model):
        return "object"
    return {int: "integer", float: "number", str: "string", bool: "boolean"}.get(annotation, "string")


def fields_by_alias(model) -> dict[str, str]:
    return {(f.alias or n): wire_type(f.annotation) for n, f in model.model_fields.items()}


def test_inputs_mirror_the_stack_config_models_field_for_field(schema):
    inputs = schema["resources"][TOKEN]["inputProperties"]
    settings = fields_by_alias(lockstep_config.StackSettings)
    settings.pop("stack")
    settings.pop("awsProfile")  # the providers' configuration (lockstep:awsProfile), not an input
    component_only = {"catalog", "stack"}
    assert set(inputs) - component_only == set(settings)
    for name, (model, type_name) in PARITY.items():
        definition = schema["types"][f"lockstep:index:{type_name}"]
        expected = fields_by_alias(model)
        got = {n: ("object" if "$ref" in p else p["type"]) for n, p in definition["properties"].items()}
        assert got == expected, name
    deployment = schema["types"]["lockstep:index:BlueGreenDeployment"]["properties"]
    assert {n: ("object" if "$ref" in p else p["type"]) for n, p in deployment.items()} == fields_by_alias(
        lockstep_config.DeploymentSettings
    )
    entry = fields_by_alias(lockstep_config.CatalogEntry)
    version = schema["types"]["lockstep:index:CatalogVersion"]["properties"]
    # version comes from the map key, as in stacks/catalog.yaml (model defaults to the catalog's).
    assert set(version) == set(entry) - {"version"}


def test_checked_in_schema_is_the_inferred_one(schema):
    checked_in = json.loads((ROOT / "schema.json").read_text(encoding="utf-8"))
    assert checked_in == schema, "schema.json is stale: run `make schema` and commit it"


def test_the_entry_point_serves_the_schema_over_grpc_as_the_language_host_starts_it(tmp_path):
    """`python <plugin dir> <engine address>` from another directory, as pulumi-language-python runs it."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "components"), "127.0.0.1:1"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        port = process.stdout.readline().decode().strip()
        assert port.isdigit(), process.stderr.read().decode() if process.poll() is not None else port
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = provider_pb2_grpc.ResourceProviderStub(channel)
            info = stub.GetPluginInfo(empty_pb2.Empty(), timeout=30)
            from pulumi.runtime.proto import provider_pb2

            served = stub.GetSchema(provider_pb2.GetSchemaRequest(), timeout=30)
        assert info.version == importlib.metadata.version("lockstep")
        assert json.loads(served.schema) == json.loads((ROOT / "schema.json").read_text(encoding="utf-8"))
    finally:
        process.terminate()
        process.wait(timeout=10)


# ------------------------------------------------------------------------------- construct


def wire_inputs(properties: dict) -> dict:
    """What the provider server hands to `construct` for JSON properties another language sent."""
    struct = struct_pb2.Struct()
    struct.update(properties)
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(ProviderServicer._construct_inputs(struct, {}))
    finally:
        loop.close()


def construct(
    provider: ComponentProvider,
    properties: dict,
    *,
    name: str = "lockstep",
    stack: str = "dev",
    raw: dict | None = None,
) -> Registered:
    """Run the provider's construct under fresh mocks; `raw` bypasses the wire (e.g. to pass an Output)."""
    inputs = raw if raw is not None else wire_inputs(properties)

    def body():
        result = provider.construct(name, TOKEN, inputs, pulumi.ResourceOptions())
        assert result.state.keys() == {"pin", "liveEndpoint", "liveIndex", "slots", "retainedIndices", "checkRecord"}
        return pulumi.Output.all(urn=result.urn, **result.state)

    # The consumer's lockstep provider works in the release's region (require_provider_placement).
    config = {"lockstep:region": "eu-west-1"}
    return run_mocked(body, stack=stack, project="consumer", config=config)


def catalog_document() -> dict:
    return YAML(typ="safe").load((ROOT / "stacks" / "catalog.yaml").read_text())


def dev_properties() -> dict:
    """The dev stack's `lockstep:*` settings and the catalog as camelCase JSON: what a YAML or
    TypeScript program declaring the dev stack's release would send."""
    values = dev_values()
    properties = {key.removeprefix("lockstep:"): value for key, value in values.items() if key.startswith("lockstep:")}
    properties["region"] = values["aws:region"]
    properties["namePrefix"] = "lockstep"  # the Python program's project (a consumer's names carry its own)
    properties["catalog"] = catalog_document()
    return properties


def test_construct_registers_the_same_graph_as_the_python_program(hosted):
    constructed = construct(hosted, dev_properties())
    program = evaluate(dev_values())

    # Same children, same types, same inputs (the engine would diff them identically).
    assert {n: r["type"] for n, r in constructed.resources.items()} == {
        n: r["type"] for n, r in program.resources.items()
    }
    for name, resource in program.resources.items():
        assert constructed.inputs(name) == resource["inputs"], name

    assert constructed.resources["lockstep"]["type"] == TOKEN
    assert constructed.inputs("lockstep-artifacts-bucket")["bucket"] == "acme-lockstep-dev-artifacts"
    assert set(constructed.of_type("lockstep:embedded:Artifact")) == {
        "lockstep-artifacts-v1",
        "lockstep-artifacts-v2",
    }
    indices = constructed.of_type("lockstep:index:Index")
    assert {n: (i["index"], i["dimension"]) for n, i in indices.items()} == {
        "lockstep-index-v1": ("docs-v1", 192),
        "lockstep-index-v2": ("docs-v2", 192),
    }
    assert {e["name"] for e in constructed.of_type("aws:sagemaker/endpoint:Endpoint").values()} == {
        "lockstep-dev-blue",
        "lockstep-dev-green",
    }
    cutover = constructed.inputs("lockstep-cutover")
    assert (cutover["version"], cutover["index"], cutover["endpoint"]) == ("v2", "docs-v2", "lockstep-dev-green")
    assert constructed.inputs("lockstep-check")["stack"] == "dev"

    assert constructed.state["urn"].endswith(f"{TOKEN}::lockstep")
    assert {k: v for k, v in constructed.state.items() if k != "urn"} == {
        "pin": "v2",
        "liveEndpoint": "lockstep-dev-green",
        "liveIndex": "docs-v2",
        "slots": {"blue": "v1", "green": "v2"},
        "retainedIndices": ["docs-v1"],
        "checkRecord": CHECK_STDOUT,
    }


def test_a_rollback_pin_through_the_package_is_a_flip(hosted):
    before = construct(hosted, dev_properties())
    after = construct(hosted, {**dev_properties(), "pin": "v1"})
    changed = {
        n
        for n in set(before.resources) | set(after.resources)
        if before.resources.get(n, {}).get("inputs") != after.resources.get(n, {}).get("inputs")
    }
    assert changed == {"lockstep-cutover", "lockstep-check"}
    assert after.state["liveIndex"] == "docs-v1" and after.state["liveEndpoint"] == "lockstep-dev-blue"


def test_the_stack_name_defaults_to_the_consumer_stack(hosted):
    constructed = construct(hosted, dev_properties(), name="search", stack="staging")
    assert constructed.inputs("search-check")["stack"] == "staging"
    assert constructed.inputs("search-cutover")["pointer"] == "/lockstep/staging/live"
    assert constructed.state["liveEndpoint"] == "lockstep-staging-green"
    # Without namePrefix, fixed names carry the consumer's project: two projects never share one.
    own = construct(hosted, {k: v for k, v in dev_properties().items() if k != "namePrefix"}, stack="staging")
    assert own.inputs("lockstep-cutover")["pointer"] == "/consumer/staging/live"
    assert own.state["liveEndpoint"] == "consumer-staging-green"


# -------------------------------------------------------------------------------- the examples


def check_value(value, prop: dict, schema: dict, path: str, errors: list[str]) -> None:
    """Every key the example uses exists in the schema with a matching type; required keys are present."""
    prop = resolve(prop, schema)
    kind_ = prop.get("type", "object")
    if "properties" in prop:
        if not isinstance(value, dict):
            errors.append(f"{path}: expected an object")
            return
        for key, item in value.items():
            if key not in prop["properties"]:
                errors.append(f"{path}.{key}: not in the schema")
            else:
                check_value(item, prop["properties"][key], schema, f"{path}.{key}", errors)
        errors.extend(f"{path}.{key}: required, missing" for key in prop.get("required", []) if key not in value)
    elif kind_ == "object" and "additionalProperties" in prop:
        for key, item in value.items():
            check_value(item, prop["additionalProperties"], schema, f"{path}.{key}", errors)
    elif kind_ == "array":
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list")
        for i, item in enumerate(value or []):
            check_value(item, prop["items"], schema, f"{path}[{i}]", errors)
    else:
        ok = {"string": str, "integer": int, "number": (int, float), "boolean": bool}[kind_]
        if not isinstance(value, ok) or (kind_ != "boolean" and isinstance(value, bool)):
            errors.append(f"{path}: {value!r} is not a {kind_}")


def check_resource(properties: dict, schema: dict) -> list[str]:
    resource = schema["resources"][TOKEN]
    wrapper = {"properties": resource["inputProperties"], "required": resource["requiredInputs"]}
    errors: list[str] = []
    check_value(properties, wrapper, schema, "", errors)
    return errors


def typescript_args(source: str) -> tuple[str, dict]:
    """The object literal passed to `new lockstep.ModelRelease(name, {...})`, as JSON (data only)."""
    match = re.search(r'new\s+lockstep\.ModelRelease\(\s*"([^"]+)"\s*,\s*\{', source)
    assert match, "index.ts declares no lockstep.ModelRelease"
    start, depth = match.end() - 1, 0
    for end in range(start, len(source)):
        depth += {"{": 1, "}": -1}.get(source[end], 0)
        if depth == 0:
            break
    literal = re.sub(r"^\s*//[^\n]*", "", source[start : end + 1], flags=re.MULTILINE)
    literal = re.sub(r"([{,]\s*)([A-Za-z_$][\w$]*)\s*:", r'\1"\2":', literal)
    literal = re.sub(r",(\s*[}\]])", r"\1", literal)
    return match.group(1), json.loads(literal)


def test_the_yaml_example_uses_only_what_the_schema_declares_and_constructs(hosted, schema):
    program = YAML(typ="safe").load(YAML_EXAMPLE.read_text())
    assert program["runtime"] == "yaml"
    assert (YAML_EXAMPLE.parent / program["packages"]["lockstep"] / "PulumiPlugin.yaml").is_file()
    ours = {n: r for n, r in program["resources"].items() if r["type"].startswith("lockstep:")}
    assert ours and all(r["type"] in schema["resources"] for r in ours.values())
    ((name, resource),) = ours.items()
    assert check_resource(resource["properties"], schema) == []
    outputs = schema["resources"][TOKEN]["properties"]
    for expression in program["outputs"].values():
        ref_name, _, prop = expression.strip("${}").partition(".")
        assert ref_name == name and prop in outputs, expression

    constructed = construct(hosted, resource["properties"], name=name, stack="example")
    assert constructed.state["liveIndex"] == "docs-v2"
    assert constructed.state["liveEndpoint"] == "consumer-example-green"
    assert set(constructed.of_type("lockstep:index:Index")) == {
        "release-index-v1",
        "release-index-v2",
    }


def test_the_typescript_example_uses_only_what_the_schema_declares_and_constructs(hosted, schema):
    source = TS_EXAMPLE.read_text()
    name, properties = typescript_args(source)
    assert properties["pin"] == "v2"  # a pinned version
    assert check_resource(properties, schema) == []
    outputs = schema["resources"][TOKEN]["properties"]
    for prop in re.findall(r"release\.(\w+)", source):
        assert prop in outputs, prop
    project = YAML(typ="safe").load((TS_EXAMPLE.parent / "Pulumi.yaml").read_text())
    assert (TS_EXAMPLE.parent / project["packages"]["lockstep"] / "PulumiPlugin.yaml").is_file()
    package = json.loads((TS_EXAMPLE.parent / "package.json").read_text())
    assert package["dependencies"]["@pulumi/lockstep"] == "file:sdks/lockstep"

    constructed = construct(hosted, properties, name=name, stack="example")
    assert constructed.state["pin"] == "v2" and constructed.state["slots"] == {"blue": "v1", "green": "v2"}


def test_the_schema_check_catches_what_a_typo_would_break(schema):
    """The example checks can fail: a misspelt key, a wrong type and a missing required input."""
    properties = copy.deepcopy(dev_properties())
    properties["opensearch"]["indexPrefx"] = "docs"
    properties["catalog"]["versions"]["v1"]["dimension"] = "192"
    del properties["corpus"]
    errors = check_resource(properties, schema)
    assert ".opensearch.indexPrefx: not in the schema" in errors
    assert ".catalog.versions.v1.dimension: '192' is not a integer" in errors
    assert ".corpus: required, missing" in errors


# ------------------------------------------------------------------------------------ bad args


def cli_message(tmp_path: Path, properties: dict) -> str:
    """What the CLI says for the same settings written as stacks/Pulumi.dev.yaml + catalog.yaml."""
    (tmp_path / "catalog.yaml").write_text(json.dumps(properties["catalog"]))
    config = {f"lockstep:{k}": v for k, v in properties.items() if k not in {"catalog", "region"}}
    config["aws:region"] = properties["region"]
    (tmp_path / "Pulumi.dev.yaml").write_text(json.dumps({"config": config}))
    with pytest.raises(ConfigError) as failure:
        lockstep_config.load_stack("dev", tmp_path)
    return str(failure.value)


def construct_failure(provider: ComponentProvider, properties: dict) -> tuple[str, ComponentInitError]:
    """The component's own message, and the error the provider server turns into the engine's diagnostic."""
    with pytest.raises(ComponentInitError) as failure:
        construct(provider, properties)
    assert isinstance(failure.value.inner, ConfigError)
    return str(failure.value.inner), failure.value


def bad_sha(properties: dict) -> dict:
    properties["catalog"]["versions"]["v1"]["artifactSha256"] = "abc123"
    return properties


@pytest.mark.parametrize(
    "change, starts",
    [
        (lambda p: {**p, "pin": "v3"}, "lockstep:pin: 'v3' is in neither slot"),
        (lambda p: {**p, "slots": {"blue": "v9", "green": "v2"}}, "lockstep:slots: version 'v9' is not in the catalog"),
        (lambda p: {**p, "retain": ["latest"]}, "lockstep:retain: version 'latest' is not in the catalog"),
        (
            lambda p: {**p, "opensearch": {**p["opensearch"], "indexPrefix": "Docs"}},
            "lockstep:opensearch.indexPrefix: is not a valid OpenSearch index name",
        ),
        (bad_sha, "lockstep:catalog.versions.v1.artifactSha256: must be 64 lowercase hex characters"),
    ],
)
def test_bad_args_fail_with_the_cli_message(hosted, tmp_path, change, starts):
    properties = change(copy.deepcopy(dev_properties()))
    message, _ = construct_failure(hosted, properties)
    assert message.startswith(starts), message
    assert "\n" not in message
    cli = cli_message(tmp_path, properties)
    if starts.startswith("lockstep:catalog."):
        # CLI: "<dir>/catalog.yaml: versions.v1.artifactSha256: …" — the same location and words.
        assert cli == f"{tmp_path / 'catalog.yaml'}: {message.removeprefix('lockstep:catalog.')}"
    else:
        assert cli == f"{tmp_path / 'Pulumi.dev.yaml'}: {message}"


def test_a_bad_arg_registers_nothing(hosted):
    mocks_seen: list[CaptureMocks] = []
    original = pulumi.runtime.set_mocks

    def spy(mocks, *args, **kwargs):
        mocks_seen.append(mocks)
        return original(mocks, *args, **kwargs)

    pulumi.runtime.set_mocks = spy
    try:
        with pytest.raises(ComponentInitError):
            construct(hosted, {**dev_properties(), "pin": "v3"})
    finally:
        pulumi.runtime.set_mocks = original
    assert mocks_seen[-1].resources == {}


def test_an_output_where_a_plain_value_decides_the_graph_is_refused_by_name(hosted):
    inputs = wire_inputs(dev_properties())
    inputs["slots"] = {"blue": "v1", "green": pulumi.Output.from_input("v2")}
    with pytest.raises(ComponentInitError) as failure:
        construct(hosted, {}, raw=inputs)
    message = str(failure.value.inner)
    assert message.startswith("lockstep:slots.green: must be a plain value known when the program runs"), message
    assert "\n" not in message


def test_a_local_backend_constructs_the_embedded_leaves_and_no_aws_resource(hosted):
    # The schema asks for an image (SageMaker's); the embedded slots do not use it.
    properties = {**dev_properties(), "endpoints": {**dev_properties()["endpoints"], "backend": "local"}}
    properties["opensearch"] = {"url": "http://127.0.0.1:9200", "indexPrefix": "docs"}
    constructed = construct(hosted, properties)
    types = {r["type"] for r in constructed.resources.values()}
    assert not [t for t in types if t.startswith("aws:")]
    assert {"lockstep:embedded:EndpointSlot", "lockstep:index:Index", "lockstep:index:Check"} <= types
    assert constructed.state["liveEndpoint"] == "lockstep-dev-green"
