"""One embedded environment per test session (real OpenSearch + moto server), shared by all tests.

Tests isolate by index prefix and bucket name (`unique`), never by restarting servers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from lockstep import runtime, services


def lockstep(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`lockstep ARGS` in a fresh process (this environment plus `env`), output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "lockstep.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def servers():
    """Start (or reuse) the servers; export their addresses; stop only what this session started."""
    states = services.up()
    os.environ.update(services.environment())
    yield {state.name: state.url for state in states}
    # Endpoint slots this session's stacks left running go in any case (never another session's:
    # several pytest runs share the servers); the servers unless asked to stay.
    leftover = [slot.name for slot in runtime.endpoint_processes() if slot.name.split("-")[1] in UNIQUE_NAMES]
    keep = os.environ.get("LOCKSTEP_KEEP_SERVICES") == "1"
    services.down(leftover + ([] if keep else [s.name for s in states if s.source == "started"]))


# The names `unique` handed out in this session: its stacks, whose slot processes it stops at the end.
UNIQUE_NAMES: set[str] = set()


@pytest.fixture
def unique() -> str:
    """A lowercase name no other test uses: an index prefix, a bucket, a parameter path."""
    name = f"t{uuid.uuid4().hex[:10]}"
    UNIQUE_NAMES.add(name)
    return name


@pytest.fixture(scope="session")
def opensearch(servers):
    from lockstep.ops import clients

    return clients.opensearch()


@pytest.fixture(scope="session")
def s3(servers):
    from lockstep.ops import clients

    return clients.aws("s3")


@pytest.fixture(scope="session")
def ssm(servers):
    from lockstep.ops import clients

    return clients.aws("ssm")


@pytest.fixture(scope="session")
def catalog():
    from lockstep import config

    return config.load_catalog()


@pytest.fixture
def make_settings(catalog, unique):
    """A validated StackSettings isolated by name: its own index prefix, buckets and pointer.

    `make_settings(pin="v2", retain=["v1"], corpus={"size": 50})` overrides any field (camelCase
    or snake_case, as in a stack file). Each call in one test shares the same names.
    """
    from lockstep import config

    def build(**overrides):
        values = stack_values(unique, **overrides)
        return config.settings_from_config(overrides.pop("stack", unique), values, catalog)

    return build


def stack_values(unique: str, **overrides) -> dict:
    """`lockstep:` values of an isolated embedded stack (camelCase, as in a stack file)."""
    values = {
        "pin": "v1",
        "slots": {"blue": "v1", "green": "v2"},
        "artifacts": {"bucket": f"{unique}-artifacts"},
        "corpus": {"bucket": f"{unique}-corpus", "size": 200},
        "opensearch": {"indexPrefix": unique},
        "endpoints": {"backend": "local"},
        "pointerParameter": f"/{unique}/live",
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return values


@pytest.fixture
def scratch_stack(tmp_path, unique, monkeypatch):
    """Write stacks/Pulumi.<unique>.yaml in a scratch stacks dir (LOCKSTEP_STACKS_DIR points at it)
    and return (stacks_dir, stack). Call again with overrides to rewrite it."""
    from lockstep import stackfile

    stacks = tmp_path / "stacks"
    monkeypatch.setenv("LOCKSTEP_STACKS_DIR", str(stacks))

    def write(**overrides):
        stackfile.write_stack(stacks, unique, stack_values(unique, **overrides))
        return stacks, unique

    return write
