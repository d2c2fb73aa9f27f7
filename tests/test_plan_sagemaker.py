"""`lockstep plan` on a SageMaker stack reads what each slot serves from SageMaker (moto).

The slots are created the way the program creates them: the ModelRelease is registered under the
SDK's mock runtime and its Model, EndpointConfiguration and Endpoint inputs are replayed against
moto's SageMaker control plane (auto-named like Pulumi names them, the endpoint by the name the
program gives it). The data side (artifacts, indices, alias, pointer) is what the program's
artifact objects, Index and Cutover leave behind, built with the same ops.
"""

from __future__ import annotations

import json
import os
import uuid

import pytest

from lockstep import config
from lockstep.ops import artifacts, clients, corpus_store, endpoints, live_state
from lockstep.ops.backfill import engine as backfill_engine
from tests.conftest import lockstep
from tests.pulumi_harness import register_release

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/lockstep-serve:0.1.0"
SIZE = 40
MODEL = "aws:sagemaker/model:Model"
CONFIG = "aws:sagemaker/endpointConfiguration:EndpointConfiguration"
ENDPOINT = "aws:sagemaker/endpoint:Endpoint"


def autoname(resource: str) -> str:
    """Pulumi's auto-name: the resource name and a random suffix."""
    return f"{resource}-{uuid.uuid4().hex[:7]}"


def create_slot_endpoints(settings: config.StackSettings, catalog: config.Catalog, slots: tuple[str, ...]) -> None:
    """Create `slots`' model -> endpoint config -> endpoint in moto from the inputs the program registers."""
    registered = register_release(settings, catalog)
    sm = clients.aws("sagemaker", settings.region)
    models, configs = registered.of_type(MODEL), registered.of_type(CONFIG)
    real_names: dict[str, str] = {}
    for slot in slots:
        [(model_resource, model)] = [(n, i) for n, i in models.items() if i["tags"]["lockstep:slot"] == slot]
        real_names[model_resource] = model.get("name") or autoname(model_resource)
        container = model["primaryContainer"]
        sm.create_model(
            ModelName=real_names[model_resource],
            ExecutionRoleArn=model["executionRoleArn"],
            PrimaryContainer={
                "Image": container["image"],
                "ModelDataUrl": container["modelDataUrl"],
                "Environment": container.get("environment", {}),
            },
        )
        [(config_resource, endpoint_config)] = [
            (n, i) for n, i in configs.items() if i["tags"]["lockstep:slot"] == slot
        ]
        real_names[config_resource] = endpoint_config.get("name") or autoname(config_resource)
        sm.create_endpoint_config(
            EndpointConfigName=real_names[config_resource],
            ProductionVariants=[
                {
                    "VariantName": variant["variantName"],
                    # Under the mocks a model's name output is its resource name.
                    "ModelName": real_names.get(variant["modelName"], variant["modelName"]),
                    "InitialInstanceCount": int(variant["initialInstanceCount"]),  # protobuf numbers are floats
                    "InstanceType": variant["instanceType"],
                }
                for variant in endpoint_config["productionVariants"]
            ],
        )
        [endpoint] = [i for i in registered.of_type(ENDPOINT).values() if i["tags"]["lockstep:slot"] == slot]
        sm.create_endpoint(
            EndpointName=endpoint["name"],
            EndpointConfigName=real_names.get(endpoint["endpointConfigName"], endpoint["endpointConfigName"]),
        )


def delete_slot_endpoint(settings: config.StackSettings, slot: str) -> None:
    clients.aws("sagemaker", settings.region).delete_endpoint(EndpointName=endpoints.endpoint_name(settings, slot))


def deploy_data(settings: config.StackSettings, catalog: config.Catalog) -> None:
    """Artifacts, one index per kept version and the cutover to the pin: the program's data side."""
    s3 = clients.aws_for(settings, "s3")
    artifacts.ensure_bucket(s3, settings.artifacts.bucket)
    corpus_store.ensure_corpus(s3, settings)
    for version in settings.versions:
        artifacts.publish_artifact(s3, settings, catalog.get(version))
        backfill_engine.sync_index(settings, catalog.get(version), progress=False)
    pin = catalog.get(settings.pin)
    live_state.cutover(
        clients.opensearch(settings.opensearch),
        clients.aws_for(settings, "ssm"),
        settings,
        pin,
        endpoints.endpoint_name(settings, settings.live_slot),
    )


@pytest.fixture
def sagemaker_stack(servers, scratch_stack, catalog):
    """An AWS stack (endpoints.backend sagemaker) live on v1 in blue, v2 warm in green."""
    stacks, stack = scratch_stack(
        pin="v1",
        slots={"blue": "v1", "green": "v2"},
        corpus={"size": SIZE},
        endpoints={"backend": "sagemaker", "imageUri": IMAGE},
        opensearch={"url": os.environ["OPENSEARCH_URL"]},
    )
    settings = config.load_stack(stack, stacks)
    assert not settings.embedded
    deploy_data(settings, catalog)
    create_slot_endpoints(settings, catalog, ("blue", "green"))
    return settings


def plan_json(stack: str, *args: str) -> dict:
    result = lockstep("plan", "--stack", stack, *args, "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def steps(plan: dict) -> list[tuple]:
    return [(s["kind"], s["version"], s["slot"]) for s in plan["steps"]]


def test_rollback_to_the_standby_on_sagemaker_is_a_flip(sagemaker_stack):
    plan = plan_json(sagemaker_stack.stack, "--to", "v2")

    assert plan["data_state"] == "observed"
    assert steps(plan) == [("cutover", "v2", "green"), ("check", "v2", None)]
    assert (plan["index_action"], plan["endpoint_action"], plan["reversible"]) == ("reattach", "flip", True)
    markdown = lockstep("plan", "--stack", sagemaker_stack.stack, "--to", "v2").stdout
    assert "**flip**" in markdown and "no endpoint changes" in markdown


def test_the_stack_as_deployed_plans_only_the_check(sagemaker_stack):
    assert steps(plan_json(sagemaker_stack.stack)) == [("check", "v1", None)]


def test_a_version_in_neither_slot_deploys_the_standby_and_provisions(sagemaker_stack):
    plan = plan_json(sagemaker_stack.stack, "--to", "v3")

    assert steps(plan) == [
        ("ensure_artifact", "v3", None),
        ("provision", "v3", None),
        ("deploy_slot", "v3", "green"),
        ("cutover", "v3", "green"),
        ("check", "v3", None),
        ("drop", "v2", None),
    ]
    assert (plan["index_action"], plan["endpoint_action"], plan["docs_to_embed"]) == ("provision", "deploy", SIZE)
    assert "green serves v2 now" in plan["steps"][2]["detail"]


def test_a_missing_endpoint_is_deployed(sagemaker_stack):
    delete_slot_endpoint(sagemaker_stack, "green")
    plan = plan_json(sagemaker_stack.stack, "--to", "v2")

    assert steps(plan) == [("deploy_slot", "v2", "green"), ("cutover", "v2", "green"), ("check", "v2", None)]
    assert plan["endpoint_action"] == "deploy"
    assert "green serves nothing now" in plan["steps"][0]["detail"]


def test_a_slot_serving_another_artifact_is_redeployed(sagemaker_stack, catalog):
    # Green runs v3's artifact (someone deployed by hand): the program would replace its model.
    delete_slot_endpoint(sagemaker_stack, "green")
    create_slot_endpoints(sagemaker_stack.with_pin("v3"), catalog, ("green",))
    plan = plan_json(sagemaker_stack.stack, "--to", "v2")

    assert steps(plan)[0] == ("deploy_slot", "v2", "green")
    assert "green serves v3 now" in plan["steps"][0]["detail"]


def test_a_dropped_index_is_provisioned_while_the_endpoints_stay(sagemaker_stack, opensearch):
    opensearch.indices.delete(index=sagemaker_stack.opensearch.index_name("v2"))
    plan = plan_json(sagemaker_stack.stack, "--to", "v2")

    assert steps(plan) == [("provision", "v2", None), ("cutover", "v2", "green"), ("check", "v2", None)]
    assert (plan["index_action"], plan["endpoint_action"]) == ("provision", "flip")


# ------------------------- issue 24 (2): a rolled-back SageMaker update is not success, whatever changed


def created_configs(settings: config.StackSettings, catalog: config.Catalog) -> dict[str, str]:
    """slot -> the endpoint configuration name the program declares for `settings`."""
    registered = register_release(settings, catalog)
    return {inputs["tags"]["lockstep:slot"]: inputs["name"] for inputs in registered.of_type(CONFIG).values()}


def test_a_rolled_back_update_of_either_slot_fails_the_cutover_even_when_the_version_is_the_same(
    sagemaker_stack, catalog
):
    """moto has no update_endpoint, so a rolled-back update is what it leaves behind: the update created
    new endpoint configurations (a new image: same versions, same artifacts) and each endpoint is
    InService on its old one. 302bdd0 compared the live slot's artifact sha256 only: success."""
    from components.providers.opensearch import CutoverHandler
    from components.providers.provider import plain_map, wire_map
    from components.providers.resources import CutoverArgs
    from lockstep.errors import IntegrityError

    settings = sagemaker_stack  # v1 live in blue, v2 warm in green, InService on what the program declared
    entries = {slot: catalog.get(version) for slot, version in settings.slots.filled.items()}
    running = created_configs(settings, catalog)
    assert endpoints.require_slots_serving(settings, entries, running) == endpoints.endpoint_name(settings, "blue")

    image = IMAGE.replace(":0.1.0", ":0.2.0")
    updated = settings.model_copy(update={"endpoints": settings.endpoints.model_copy(update={"image_uri": image})})
    created = created_configs(updated, catalog)
    assert created["blue"] != running["blue"] and created["green"] != running["green"]
    for slot in ("blue", "green"):  # the live slot's update rolled back, or the standby's
        with pytest.raises(IntegrityError) as refused:
            endpoints.require_slots_serving(updated, entries, {**running, slot: created[slot]})
        message = str(refused.value)
        assert f"endpoint {endpoints.endpoint_name(settings, slot)} serves" in message
        assert f"configuration {running[slot]})" in message and f"configuration {created[slot]})" in message
        assert "nothing was switched" in message and "\n" not in message

    # The Cutover resource (what `pulumi up` runs) fails the update and switches nothing.
    deployments = {
        slot: {"entry": entry.model_dump(by_alias=True, mode="json"), "endpointConfig": created[slot]}
        for slot, entry in entries.items()
    }
    ssm = clients.aws_for(settings, "ssm")
    before = live_state.read_pointer(ssm, settings.pointer_name)
    args = CutoverArgs(updated, catalog.get("v1"), endpoints.endpoint_name(settings, "blue"), deployments)
    urn = "urn:pulumi:s::lockstep::lockstep:index:ModelRelease$lockstep:index:Cutover::lockstep-cutover"
    with pytest.raises(IntegrityError, match="may have been rolled back"):
        CutoverHandler().create(urn, plain_map(wire_map(args.inputs())))
    assert live_state.read_pointer(ssm, settings.pointer_name) == before
