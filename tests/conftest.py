"""One embedded environment per test session (real OpenSearch + moto server), shared by all tests.

Tests isolate by index prefix and bucket name (`unique`), never by restarting servers.
"""

from __future__ import annotations

import os
import uuid

import pytest

from lockstep import services


@pytest.fixture(scope="session")
def servers():
    """Start (or reuse) the servers; export their addresses; stop only what this session started."""
    states = services.up()
    os.environ.update(services.environment())
    yield {state.name: state.url for state in states}
    if os.environ.get("LOCKSTEP_KEEP_SERVICES") != "1":
        services.down([s.name for s in states if s.source == "started"])


@pytest.fixture
def unique() -> str:
    """A lowercase name no other test uses: an index prefix, a bucket, a parameter path."""
    return f"t{uuid.uuid4().hex[:10]}"


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
