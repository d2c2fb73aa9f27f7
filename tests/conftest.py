"""One embedded environment per test session (real OpenSearch + moto server), shared by all tests.

Tests isolate by index prefix and bucket name (`unique`), never by restarting servers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from lockstep import runtime, services
from tests.clusterctl import Cluster


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
def the_engine():
    """The Pulumi engine (CLI + hosts); a test that needs it fails with build.sh's line when it cannot be had."""
    from lockstep import engine

    try:
        return engine.engine()
    except engine.EngineUnavailable as exc:
        pytest.fail(f"the Pulumi engine is missing ({exc}); build it with `make engine`", pytrace=False)


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


@dataclass
class Deployment:
    """A stack applied on the embedded servers (v1 live in blue, v2 warm in green), with its stack
    file in `stacks_dir`: what tests that damage and inspect a live stack share (module fixtures)."""

    settings: object  # lockstep.config.StackSettings (imported lazily, like the other fixtures)
    catalog: object
    stacks_dir: Path

    @property
    def stack(self) -> str:
        return self.settings.stack

    @property
    def live_index(self) -> str:
        return self.settings.opensearch.index_name(self.settings.pin)

    @property
    def alias(self) -> str:
        return self.settings.opensearch.alias_name

    def load(self):
        """The stack file as it is now (a test may have pinned another version)."""
        from lockstep import config

        return config.load_stack(self.stack, self.stacks_dir)

    def s3(self):
        from lockstep.ops import clients

        return clients.aws("s3", self.settings.region)

    def embedder(self, version: str):
        from lockstep.ops import artifacts

        return artifacts.load_embedder(self.s3(), self.settings.artifacts.bucket, self.catalog.get(version))

    def documents(self) -> list:
        from lockstep.ops import corpus_store

        return corpus_store.read_corpus(self.s3(), self.settings)

    def golden_ids(self) -> set[str]:
        from lockstep.ops import corpus_store

        return {doc_id for query in corpus_store.read_golden(self.s3(), self.settings) for doc_id in query["expected"]}

    def live(self) -> tuple[list[str], str | None]:
        """(alias targets, pointer version) read from the real servers."""
        from lockstep.ops import clients, live_state

        pointer = live_state.read_pointer(clients.aws("ssm"), self.settings.pointer_name)
        return live_state.alias_targets(clients.opensearch(), self.alias), pointer.version if pointer else None

    def state_of(self, version: str) -> tuple[list[str], str]:
        return [self.settings.opensearch.index_name(version)], version

    def flip(self) -> tuple[str, str]:
        """Pin the other slot's version in the stack file; (old pin, new pin)."""
        from lockstep import stackfile

        current = self.load()
        stackfile.set_pin(self.stack, current.standby, self.stacks_dir)
        return current.pin, current.standby

    def cli(self, *args: str, **env: str):
        """`lockstep <args>` in this process (click's runner), reading this stack file."""
        from lockstep import cli

        result = CliRunner().invoke(cli.cli, list(args), env={"LOCKSTEP_STACKS_DIR": str(self.stacks_dir), **env})
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"`lockstep {' '.join(args)}` crashed: {result.exception!r}\n{result.stderr}")
        return result

    def apply(self, **env: str):
        return self.cli("apply", "--stack", self.stack, "--quiet", **env)


def deploy(tmp_path_factory, **overrides) -> Iterator[Deployment]:
    """Apply a fresh stack (stack_values + `overrides`) and yield it; stop its slots and delete its
    indices afterwards. For module fixtures: `yield from deploy(tmp_path_factory, corpus={"size": 120})`."""
    from lockstep import config, orchestrator, stackfile
    from lockstep.ops import clients, endpoints

    stack = f"t{uuid.uuid4().hex[:10]}"
    UNIQUE_NAMES.add(stack)
    stacks_dir = tmp_path_factory.mktemp("stacks")
    stackfile.write_stack(stacks_dir, stack, stack_values(stack, **overrides))
    catalog = config.load_catalog(stacks_dir)
    settings = config.load_stack(stack, stacks_dir, catalog)
    result = orchestrator.apply(settings, catalog, progress=False, say=lambda _: None)
    assert result.record is not None and result.record.passed, [c.name for c in result.record.failures]
    yield Deployment(settings, catalog, stacks_dir)
    endpoints.stop_local_slots(settings)
    clients.opensearch().indices.delete(
        index=f"{stack}-*", params={"expand_wildcards": "all", "ignore_unavailable": "true"}
    )


@pytest.fixture(scope="session")
def cluster(servers, tmp_path_factory) -> Iterator[Cluster]:
    """The 3-node cluster, started once per session by the first test that asks for it. Its home:
    LOCKSTEP_CLUSTER_HOME (kept with LOCKSTEP_KEEP_SERVICES=1), else a session temp dir (stopped)."""
    given = os.environ.get("LOCKSTEP_CLUSTER_HOME")
    home = Path(given) if given else tmp_path_factory.mktemp("cluster-home")
    started = Cluster(home, "")
    started.up()
    started.url = started.node(1).url
    started.wait_green()
    yield started
    if not (given and os.environ.get("LOCKSTEP_KEEP_SERVICES") == "1"):
        lockstep("services", "down", env=started.env())


@pytest.fixture(scope="session")
def replicated_deployment(cluster, tmp_path_factory) -> Iterator[Deployment]:
    """One stack applied on the cluster (3 shards, 1 replica), shared by every cluster test file
    that only reads it or kills nodes under it (an apply on the cluster costs minutes on 2 cores).
    OPENSEARCH_URL points at the cluster only while it is applied and torn down: use `replicated`."""
    deployment = deploy(tmp_path_factory, corpus={"size": 60}, opensearch={"shards": 3, "replicas": 1})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENSEARCH_URL", cluster.url)
        applied = next(deployment)
    yield applied
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENSEARCH_URL", cluster.url)
        next(deployment, None)


@pytest.fixture
def replicated(replicated_deployment, cluster, monkeypatch) -> Deployment:
    """The shared cluster stack, with OPENSEARCH_URL on the cluster for this test."""
    monkeypatch.setenv("OPENSEARCH_URL", cluster.url)
    return replicated_deployment
