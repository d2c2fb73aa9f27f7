"""`opensearch.auth: basic` end to end: the real OpenSearch behind a proxy that requires basic auth.

The embedded node has no security plugin, so tests/authproxy.py stands in for it (401 with
`WWW-Authenticate: Basic` without the right credentials) and records every request's verdict:
the CLI (apply, check, a rollback) and `pulumi up` (Index, Cutover, Check as lockstep's own
resources, the password a secret input) must send the credentials on every request.
"""

from __future__ import annotations

import json
import uuid

import pytest
import requests

from lockstep import config, up
from lockstep.ops import clients, live_state
from tests.authproxy import AUTHORIZED, MISSING, WRONG, AuthProxy
from tests.conftest import lockstep
from tests.test_engine import alias_targets, home, pointer_version, release  # noqa: F401 (fixtures)

USER = "lockstep"
JSON = {"Content-Type": "application/json"}
SIZE = 60


@pytest.fixture
def password() -> str:
    return f"pw-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def proxy(servers, password):
    with AuthProxy(servers["opensearch"], USER, password) as started:
        yield started


@pytest.fixture
def basic_stack(scratch_stack, proxy, opensearch, unique):
    """A scratch stack with auth basic (v1 live in blue, v2 in green) and its indices deleted afterwards."""
    stacks, stack = scratch_stack(corpus={"size": SIZE}, opensearch={"auth": "basic", "username": USER})
    yield stacks, stack
    from lockstep.ops import endpoints

    endpoints.stop_local_slots(config.load_stack(stack, stacks))
    opensearch.indices.delete(index=f"{unique}-*", params={"expand_wildcards": "all", "ignore_unavailable": "true"})


def run(stacks, *args: str, proxy: AuthProxy, **env: str):
    return lockstep(*args, env={"LOCKSTEP_STACKS_DIR": str(stacks), "OPENSEARCH_URL": proxy.url, **env})


def test_the_proxy_refuses_like_the_security_plugin_and_forwards_heads_and_chunked_bodies(proxy, password):
    refused = requests.get(proxy.url + "/", timeout=30)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic")
    assert requests.get(proxy.url + "/", auth=(USER, "wrong"), timeout=30).status_code == 401
    root = requests.get(proxy.url + "/", auth=(USER, password), timeout=30).json()
    assert root["version"]["distribution"] == "opensearch"
    assert requests.head(proxy.url + "/", auth=(USER, password), timeout=30).status_code == 200
    chunks = iter([b'{"query":', b'{"match_all":{}},"size":0}'])  # a generator body is sent chunked
    searched = requests.post(proxy.url + "/_search", data=chunks, auth=(USER, password), headers=JSON, timeout=30)
    assert searched.status_code == 200 and "hits" in searched.json()
    assert [v for _, _, v in proxy.seen] == [MISSING, WRONG, AUTHORIZED, AUTHORIZED, AUTHORIZED]


def test_apply_check_and_a_rollback_send_the_credentials_on_every_request(basic_stack, proxy, password, opensearch):
    stacks, stack = basic_stack
    env = {clients.PASSWORD_VARIABLE: password}
    steps = [
        ("apply", "--stack", stack, "--quiet"),
        ("check", "--stack", stack),
        ("pin", "--stack", stack, "v2"),
        ("apply", "--stack", stack, "--quiet"),
        ("pin", "--stack", stack, "v1"),  # the rollback
        ("apply", "--stack", stack, "--quiet"),
        ("check", "--stack", stack),
    ]
    for args in steps:
        result = run(stacks, *args, proxy=proxy, **env)
        assert result.returncode == 0, (args, result.stdout + result.stderr)

    assert proxy.refused() == []
    for method, suffix in (("GET", "/"), ("GET", "/_cat/plugins"), ("POST", "/_bulk"), ("POST", "/_aliases")):
        assert proxy.count(AUTHORIZED, method, suffix) > 0, (method, suffix, proxy.seen)
    assert proxy.count(AUTHORIZED, suffix="/_search") > 0 and proxy.count(AUTHORIZED, "HEAD") > 0, proxy.seen
    settings = config.load_stack(stack, stacks)
    assert live_state.alias_targets(opensearch, settings.opensearch.alias_name) == [
        f"{settings.opensearch.index_prefix}-v1"
    ]
    assert pointer_version(settings) == "v1"


@pytest.mark.parametrize("given", ["none", "wrong"])
def test_apply_without_the_password_or_with_a_wrong_one_is_one_line_exit_2_and_changes_nothing(
    basic_stack, proxy, opensearch, given
):
    stacks, stack = basic_stack
    env = {clients.PASSWORD_VARIABLE: "not-the-password"} if given == "wrong" else {clients.PASSWORD_VARIABLE: ""}
    result = run(stacks, "apply", "--stack", stack, "--quiet", proxy=proxy, **env)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    if given == "none":
        assert clients.PASSWORD_VARIABLE in line and "opensearch.username" in line, line
        assert proxy.count(WRONG) == 0
    else:
        assert "refused our credentials (HTTP 401)" in line and "user/password" in line, line
        assert proxy.count(WRONG) > 0 and proxy.count(AUTHORIZED) == 0
    assert proxy.count(MISSING) == 0  # never a request without credentials
    settings = config.load_stack(stack, stacks)
    assert (
        opensearch.indices.get(index=f"{settings.opensearch.index_prefix}-*", params={"expand_wildcards": "all"}) == {}
    )
    assert pointer_version(settings) is None


def test_pulumi_up_with_basic_auth_authenticates_every_resource_and_keeps_the_password_secret(
    release,  # noqa: F811 (the fixture imported from test_engine)
    proxy,
    password,
    opensearch,
):
    # The password as a user gives it, encrypted in the stack config. The provider process inherits
    # the engine's environment: a stale password there would be refused, so only the resources'
    # secret input can authenticate them.
    release.cli.env |= {"OPENSEARCH_URL": proxy.url, clients.PASSWORD_VARIABLE: "stale-env-password"}
    release.cli.run("config", "set", "--secret", "lockstep:opensearchPassword", password, *release.cli.config)
    steps = release.deploy(opensearch={"indexPrefix": release.unique, "auth": "basic", "username": USER})
    created = {name for name, op in steps.changed().items() if op == "create"}
    assert {"lockstep-index-v1", "lockstep-index-v2", "lockstep-cutover", "lockstep-check"} <= created, created

    assert proxy.refused() == []
    assert proxy.count(AUTHORIZED, "POST", "/_bulk") > 0  # Index
    assert proxy.count(AUTHORIZED, "POST", "/_aliases") > 0  # Cutover
    assert proxy.count(AUTHORIZED, suffix="/_search") > 0  # Check
    assert alias_targets(opensearch, release.settings) == [f"{release.unique}-v1"]
    assert json.loads(release.outputs()["checkRecord"])["passed"] is True

    state = release.cli.state_text()
    assert "opensearchPassword" in state and "ciphertext" in state
    assert password not in state


def test_the_engine_and_its_plugins_never_inherit_the_password_in_plain_text(monkeypatch, tmp_path):
    """The engine `lockstep up` starts (and the plugin the engine starts) get the password variable
    blanked: the password travels only as the stack's secret config, a secret input."""
    password = f"pw-{uuid.uuid4().hex}"
    monkeypatch.setenv(clients.PASSWORD_VARIABLE, password)
    monkeypatch.setenv("LOCKSTEP_PULUMI_BACKEND", str(tmp_path / "backend"))
    env = up.engine_env(up.the_engine())
    assert env[clients.PASSWORD_VARIABLE] == ""
    assert all(password not in value for value in env.values())
