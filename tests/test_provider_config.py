"""lockstep's provider configuration (issue 24, points 1 and 7): credentials are the provider's,
read in Configure, honoured by every client; resources are not serialized on one lock; typed
inputs whose diff names each changed leaf and ignores defaults and retired inputs."""

from __future__ import annotations

import asyncio
import threading

import pytest
from pulumi.provider.experimental import provider as api
from pulumi.provider.experimental.property_value import PropertyValue

from components.plugin import build_provider
from components.providers.base import STATE_VERSION_KEY
from components.providers.embedded import BucketHandler, EndpointSlotHandler
from components.providers.opensearch import CutoverHandler, IndexHandler
from components.providers.provider import LockstepProvider, wire_map
from components.providers.resources import CutoverArgs, IndexArgs, typed_inputs
from lockstep import config
from lockstep.errors import Unreachable
from lockstep.ops import clients
from lockstep.ops.endpoints import endpoint_name
from tests.conftest import stack_values

URN = "urn:pulumi:s::lockstep::lockstep:index:ModelRelease$lockstep:index:Index::x"


@pytest.fixture
def provider():
    yield LockstepProvider(build_provider())
    clients.configure(clients.Credentials())


def run(coroutine):
    loop = asyncio.new_event_loop()  # not asyncio.run: it unsets the thread's loop (the mock runtime needs it)
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


def settings_and_entry(**overrides):
    catalog = config.load_catalog()
    values = stack_values("tconfig", **overrides)
    return config.settings_from_config("tconfig", values, catalog), catalog.get("v1")


def test_configure_reads_the_credentials_from_the_provider_configuration(provider):
    secret = PropertyValue("rotated-pw").with_secret(True)
    request = api.ConfigureRequest(
        variables={"lockstep:config:region": "eu-west-1", "lockstep:config:roleArn": "arn:aws:iam::1:role/deploy"},
        args={"opensearchPassword": secret, "awsProfile": PropertyValue("deployer")},
        accept_secrets=True,
        accept_resources=True,
    )
    run(provider.configure(request))
    assert clients.current() == clients.Credentials(
        region="eu-west-1", profile="deployer", role_arn="arn:aws:iam::1:role/deploy", opensearch_password="rotated-pw"
    )
    # Only the credentials are the provider's: a pin in the same namespace is no change of it.
    olds = {"opensearchPassword": PropertyValue("a"), "pin": PropertyValue("v1")}
    news = {"opensearchPassword": PropertyValue("a"), "pin": PropertyValue("v2")}
    assert run(provider.diff_config(api.DiffRequest("urn", "id", olds, news, []))).changes is False
    news["opensearchPassword"] = PropertyValue("b")
    rotated = run(provider.diff_config(api.DiffRequest("urn", "id", olds, news, [])))
    assert rotated.changes is True and rotated.replaces == []


def test_a_rotated_password_and_an_upgrade_that_adds_defaults_diff_no_resource():
    """302bdd0's state: the settings and the entry as opaque objects, the password an input."""
    settings, entry = settings_and_entry()
    news = IndexArgs(settings, entry).inputs()
    dumped = settings.model_dump(by_alias=True, mode="json", exclude_none=True)
    old_state = {
        "index": news["index"],
        "version": "v1",
        "dimension": entry.dimension,
        "spaceType": entry.space_type,
        "engine": "lucene",
        "artifactSha256": entry.artifact_sha256,
        "entry": entry.model_dump(by_alias=True, mode="json"),
        "settings": {k: v for k, v in dumped.items() if k not in ("pin", "slots", "retain")},
        "opensearchPassword": "the-old-password",
        "docCount": 60,
        "meta": {},
    }
    handler = IndexHandler()
    assert handler.diff(old_state, news).changes is False
    migrated = handler.migrate(old_state)
    assert "settings" not in migrated and "opensearchPassword" not in migrated
    assert migrated["opensearch"]["indexPrefix"] == "tconfig" and migrated["family"] == entry.family
    # A field an earlier lockstep had and this one dropped is ignored, not refused.
    old_state["settings"]["opensearch"] = {**old_state["settings"]["opensearch"], "removedSetting": 1}
    assert handler.diff(old_state, news).changes is False


def test_an_aws_stacks_index_reads_aws_never_an_embedded_moto():
    """The Index's delete guard reads the stack's pointer and kept slots through `settings_of`: on
    an AWS stack that must be AWS's SSM, not a moto that happens to run on the deploying machine
    (its empty pointer would let a retained index be dropped). The input is sent only when false,
    and a state without it (an older lockstep's) gets it by a plain update, never a replace."""
    settings, entry = settings_and_entry()
    aws = settings.model_copy(update={"endpoints": settings.endpoints.model_copy(update={"backend": "sagemaker"})})
    handler = IndexHandler()
    embedded_inputs, aws_inputs = IndexArgs(settings, entry).inputs(), IndexArgs(aws, entry).inputs()
    assert "embedded" not in embedded_inputs and aws_inputs["embedded"] is False
    assert handler.settings_of(embedded_inputs).embedded is True
    assert handler.settings_of(aws_inputs).embedded is False
    older = {**embedded_inputs, STATE_VERSION_KEY: 1}
    diff = handler.diff(older, aws_inputs)
    assert diff.detailed == {"embedded": False} and diff.replaces == []


def test_a_state_this_lockstep_refuses_is_one_line_not_a_traceback(provider):
    """Refresh, destroy and delete read a resource's recorded settings: a value an older lockstep
    accepted and this one refuses is one line naming it (the engine showed a pydantic traceback)."""
    settings, entry = settings_and_entry()
    state = IndexArgs(settings, entry).inputs()
    state["opensearch"] = {**state.get("opensearch", {}), "shards": 0}
    with pytest.raises(RuntimeError) as refused:
        run(provider._run(IndexHandler().settings_of, state))
    said = str(refused.value)
    assert "recorded settings are not valid for this lockstep (opensearch.shards: " in said and "\n" not in said


def test_an_unknown_input_shows_the_replace_any_of_its_leaves_would_do():
    """In a preview, `opensearch` may be unknown as a whole (its url an output of a domain being
    replaced): the Index shows a replace (its mapping leaves replace), not an update that turns
    into a delete-first replace at `up`; an unknown that nothing under replaces stays an update."""
    from components.providers.base import UNKNOWN

    settings, entry = settings_and_entry()
    state = {**IndexArgs(settings, entry).inputs(), STATE_VERSION_KEY: 1}
    handler = IndexHandler()
    diff = handler.diff(state, {**state, "opensearch": {"url": UNKNOWN}})
    assert diff.detailed == {"opensearch": True} and diff.replaces == ["opensearch"]
    assert handler.diff(state, {**state, "backfill": UNKNOWN}).detailed == {"backfill": False}


def test_a_recorded_value_this_lockstep_refuses_differs_only_where_it_differs():
    """State from an older lockstep whose value this one refuses (here shards 0) is compared with
    its defaults filled in: the diff names the refused leaf only, not every default the older
    input left out (engine, hnswM, efConstruction: mapping leaves, a replace of every index)."""
    settings, entry = settings_and_entry()
    news = IndexArgs(settings, entry).inputs()
    olds = {**news, "opensearch": {**news.get("opensearch", {}), "shards": 0}, STATE_VERSION_KEY: 1}
    more = settings.model_copy(update={"opensearch": settings.opensearch.model_copy(update={"shards": 2})})
    assert IndexHandler().diff(olds, IndexArgs(more, entry).inputs()).detailed == {"opensearch.shards": True}


def test_the_diff_names_each_changed_leaf_and_whether_it_replaces():
    settings, entry = settings_and_entry()
    state = {**IndexArgs(settings, entry).inputs(), STATE_VERSION_KEY: 1}
    handler = IndexHandler()
    more = settings.model_copy(
        update={"opensearch": settings.opensearch.model_copy(update={"replicas": 1, "shards": 2})}
    )
    diff = handler.diff(state, IndexArgs(more, entry).inputs())
    assert diff.detailed == {"opensearch.replicas": False, "opensearch.shards": True}
    assert diff.replaces == ["opensearch"] and diff.delete_before_replace is True
    explicit_default = settings.model_copy(
        update={"opensearch": settings.opensearch.model_copy(update={"replicas": 0})}
    )
    assert handler.diff(state, IndexArgs(explicit_default, entry).inputs()).changes is False


def test_the_programs_name_prefix_wins_and_inputs_without_one_keep_the_stacks(provider):
    """A stack that drops `namePrefix: acme` goes back to the default (it was kept as acme forever:
    the default was not sent); inputs that do not name a prefix, an older program's, keep the one
    the stack recorded."""
    settings, entry = settings_and_entry()
    assert settings.name_prefix == "lockstep"
    news = wire_map(IndexArgs(settings, entry).inputs())
    olds = {"settings": PropertyValue({"namePrefix": PropertyValue("acme")})}
    checked = run(provider.check(api.CheckRequest(URN, olds, news, b"")))
    assert checked.inputs["namePrefix"].value == "lockstep"

    older = {key: value for key, value in news.items() if key != "namePrefix"}
    checked = run(provider.check(api.CheckRequest(URN, olds, older, b"")))
    assert checked.inputs["namePrefix"].value == "acme"


def test_an_input_given_as_a_secret_stays_secret_in_the_outputs(provider, servers, unique):
    """The provider accepts secrets, so the engine leaves the outputs' marking to it: a secret input
    returned unmarked was plain text in the state (create, update and read alike)."""
    settings, _ = settings_and_entry()
    inputs = wire_map({**typed_inputs(BucketHandler, settings), "bucket": f"{unique}-secret"})
    inputs["bucket"] = inputs["bucket"].with_secret(True)
    urn = URN.replace("lockstep:index:Index", "lockstep:embedded:Bucket")

    created = run(provider.create(api.CreateRequest(urn, inputs, 60, False))).properties
    updated = run(provider.update(api.UpdateRequest(urn, f"{unique}-secret", created, inputs, 60, [], False)))
    read = run(provider.read(api.ReadRequest(urn, f"{unique}-secret", created, inputs)))
    for outputs in (created, updated.properties, read.properties):
        assert outputs["bucket"].is_secret and outputs["bucket"].value == f"{unique}-secret"
        assert not any(value.is_secret for key, value in outputs.items() if key != "bucket")


def test_an_embedded_slot_is_replaced_delete_first_and_updated_in_place():
    """Old and new slot are one process: created first, the new one adopted it and the old one's
    delete stopped it at the end of a successful up (nothing listening where the state said)."""
    settings, entry = settings_and_entry()
    renamed = settings.model_copy(update={"name_prefix": "renamed"})

    def inputs(of):
        return {**typed_inputs(EndpointSlotHandler, of, entry), "slot": "blue", "name": endpoint_name(of, "blue")}

    handler = EndpointSlotHandler()
    state = {**inputs(settings), "url": "http://127.0.0.1:1", STATE_VERSION_KEY: 2}
    replace = handler.diff(state, inputs(renamed))
    assert replace.replaces == ["name"] and replace.delete_before_replace is True
    bigger = settings.model_copy(update={"endpoints": settings.endpoints.model_copy(update={"max_batch": 8})})
    update = handler.diff(state, inputs(bigger))
    assert update.changes and update.replaces == [] and update.delete_before_replace is False


def test_a_cutover_is_replaced_delete_first():
    """Its delete only marks the release's kept record released: run last (create first), it
    released the record the replacement had just written, and the Index deletes it guards passed."""
    settings, entry = settings_and_entry()
    moved = settings.model_copy(update={"pointer_parameter": "/elsewhere/live"})
    state = {**CutoverArgs(settings, entry, endpoint="e").inputs(), STATE_VERSION_KEY: 2}
    diff = CutoverHandler().diff(state, CutoverArgs(moved, entry, endpoint="e").inputs())
    assert diff.replaces == ["pointer"] and diff.delete_before_replace is True


def test_sigv4_signs_for_opensearch_serverless_and_the_service_domain(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.delenv("OPENSEARCH_URL", raising=False)
    clients.configure(clients.Credentials())
    for url, service in (
        ("https://abc123.eu-west-1.aoss.amazonaws.com", "aoss"),
        ("https://search-docs-abc.eu-west-1.es.amazonaws.com", "es"),
    ):
        search = config.OpenSearchSettings(url=url, auth="sigv4", region="eu-west-1")
        signer = clients.opensearch(search).transport.get_connection().session.auth.signer
        assert (signer.service, signer.region) == (service, "eu-west-1")


def test_an_assumed_role_signs_every_aws_client(servers, monkeypatch):
    """The role comes from the provider's configuration; STS (moto here) hands out its credentials."""
    endpoint = clients.aws_endpoint()
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("OPENSEARCH_URL", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDBASE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    clients.configure(clients.Credentials(role_arn="arn:aws:iam::123456789012:role/lockstep-deploy"))
    try:
        assumed = clients.session(None, "eu-west-1").get_credentials().get_frozen_credentials()
        assert assumed.access_key != "AKIDBASE" and assumed.token
        signer = (
            clients.opensearch(
                config.OpenSearchSettings(url="https://x.eu-west-1.es.amazonaws.com", auth="sigv4", region="eu-west-1")
            )
            .transport.get_connection()
            .session.auth.signer
        )
        assert signer.credentials.get_frozen_credentials().access_key == assumed.access_key
    finally:
        clients.configure(clients.Credentials())


def test_independent_resources_are_served_concurrently(provider, monkeypatch):
    """No global lock (issue 24, point 7): two reads are inside their operations at once."""
    both_inside = threading.Barrier(2, timeout=60)

    def opensearch(*_args, **_kwargs):
        both_inside.wait()  # a serialized provider never lets the second read get here
        raise Unreachable("reached")

    monkeypatch.setattr(clients, "opensearch", opensearch)
    settings, entry = settings_and_entry()
    state = wire_map(IndexArgs(settings, entry).inputs())

    async def read_twice():
        reads = [provider.read(api.ReadRequest(URN, f"docs-{n}", state, {})) for n in (1, 2)]
        return await asyncio.gather(*reads, return_exceptions=True)

    results = run(read_twice())
    assert [str(r) for r in results] == ["lockstep: reached", "lockstep: reached"]


def test_the_deploy_role_session_outlasts_the_longest_validated_update():
    """Issue 24, point 7: the OIDC session must not expire mid-update (GitHub's default is one hour)."""
    from pathlib import Path

    from ruamel.yaml import YAML

    workflow = YAML(typ="safe").load(Path(__file__).parents[1].joinpath(".github/workflows/deploy.yml").read_text())
    steps = [s for job in workflow["jobs"].values() for s in job.get("steps", [])]
    (credentials,) = [s for s in steps if str(s.get("uses", "")).startswith("aws-actions/configure-aws-credentials")]
    assert int(credentials["with"]["role-duration-seconds"]) > 2 * config.PROVIDER_ENDPOINT_WAIT_SECONDS
