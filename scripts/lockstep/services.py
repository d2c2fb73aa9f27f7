"""The embedded environment: a moto server and a real OpenSearch with k-NN on loopback.

`up` starts what is not running and reuses what is (one `up` at a time per home); `down` stops
exactly the processes lockstep started (pid files, see `runtime`). When `OPENSEARCH_URL` or
`AWS_ENDPOINT_URL` is set, that server is used and nothing is started for it. How the OpenSearch
node is assembled and started lives in `opensearch_node`.
"""

from __future__ import annotations

import fcntl
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass

from lockstep import opensearch_node, runtime
from lockstep.errors import UsageError

DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
REGION = "us-east-1"


# ---------------------------------------------------------------------------------------- moto


def start_moto() -> runtime.Managed:
    port = runtime.free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    managed = runtime.spawn("moto", argv, url, env={**os.environ, **DUMMY_CREDENTIALS})
    runtime.wait_until(
        lambda: runtime.http_ok(f"{url}/moto-api/"),
        f"moto server on {url}",
        managed.log,
        timeout=60,
        alive=managed.alive,
    )
    return managed


# ------------------------------------------------------------------------------------- facade

SERVICES = {
    "opensearch": ("OPENSEARCH_URL", opensearch_node.start, opensearch_node.healthy),
    "moto": ("AWS_ENDPOINT_URL", start_moto, lambda url: runtime.http_ok(f"{url}/moto-api/")),
}


@dataclass
class ServiceState:
    name: str
    url: str
    source: str  # "external" (from the environment), "started", "running" (ours, already up)
    pid: int | None = None
    log: str | None = None


@contextmanager
def _exclusive():
    """One `up` at a time per home: two test sessions must not both start a server."""
    with open(runtime.run_dir() / "up.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def up(nodes: int | None = None) -> list[ServiceState]:
    """Start what is not running; reuse what is. Idempotent. `nodes`: OpenSearch as a cluster of
    that many nodes (default: as many as run, else 1)."""
    with _exclusive():
        return _up(nodes)


def _up(nodes: int | None = None) -> list[ServiceState]:
    states = []
    for name, (variable, start, healthy) in SERVICES.items():
        external = os.environ.get(variable)
        if external and not _is_ours(name, external):
            states.append(ServiceState(name, external, "external"))
            continue
        if name == "opensearch" and max(nodes or 1, opensearch_node.running_nodes()) > 1:
            states.append(_cluster_up(nodes or opensearch_node.running_nodes()))
            continue
        current = runtime.Managed.load(name)
        if current and current.alive() and (gone := current.code_gone()):
            runtime.log(
                f"lockstep services: {name} (pid {current.pid}) runs {gone}, which is gone; restarting it from {sys.executable}"
            )
            current.stop()
            current = None
        if current and current.alive():
            # Ours and running: a busy node answers slowly, it is never replaced from here
            # (replacing it would wipe its data). Wait for it; say so if it never answers.
            runtime.wait_until(
                lambda current=current, healthy=healthy: healthy(current.url),
                f"{name} (pid {current.pid}, running) on {current.url}",
                current.log,
                timeout=runtime.BUSY_TIMEOUT,
                alive=current.alive,
            )
            states.append(ServiceState(name, current.url, "running", current.pid, current.log))
            continue
        if current:
            current.stop()  # its pid file outlived it: clean up, then start anew
        started = start()
        states.append(ServiceState(name, started.url, "started", started.pid, started.log))
        if _ran_before(name):
            runtime.log(f"lockstep services: {name} started empty: {RESTARTED_EMPTY}")
    return states


def _cluster_up(nodes: int) -> ServiceState:
    """OpenSearch as N nodes: refuse to change the node count of a running cluster; start (or start
    again, keeping their data) the nodes that are not running."""
    first = runtime.Managed.load("opensearch")
    running = opensearch_node.running_nodes() if first and first.alive() else nodes
    if running != nodes:
        raise UsageError(
            f"OpenSearch in {runtime.home()} runs {running} node(s), not {nodes}: "
            f"run `lockstep services down` first, then `lockstep services up --nodes {nodes}`"
        )
    managed, started = opensearch_node.start_cluster(nodes)
    return ServiceState("opensearch", managed.url, "started" if started else "running", managed.pid, managed.log)


# Neither embedded server keeps its data across a restart; Pulumi's state of a stack deployed on the
# previous ones still lists it.
RESTARTED_EMPTY = (
    "stacks deployed on the previous servers have Pulumi state for data that is gone; "
    "run `pulumi refresh --stack S` on each before its next `pulumi up`"
)


def _ran_before(name: str) -> bool:
    """Whether a server of this name was started under this home before (a marker that outlives it)."""
    marker = runtime.run_dir() / f"{name}.started-before"
    before = marker.exists()
    marker.touch()
    return before


def _is_ours(name: str, url: str) -> bool:
    current = runtime.Managed.load(name)
    return bool(current and current.url == url)


def down(names: list[str] | None = None) -> list[str]:
    """Stop the processes we started (pid files), endpoint slots included; return their names."""
    stopped = []
    for path in sorted(runtime.run_dir().glob("*.json")):
        managed = runtime.Managed.load(path.stem)
        if managed and (names is None or managed.name in names):
            managed.stop()
            stopped.append(managed.name)
    if not any(runtime.run_dir().glob("opensearch*.json")):
        (runtime.run_dir() / "opensearch.layout").unlink(missing_ok=True)
    return stopped


def status() -> list[ServiceState]:
    states = []
    for name, (variable, _, healthy) in SERVICES.items():
        external = os.environ.get(variable)
        current = runtime.Managed.load(name)
        if external and not _is_ours(name, external):
            states.append(ServiceState(name, external, "external" if healthy(external) else "external (unreachable)"))
        elif current and current.alive():
            # Health is answering (and running the code it started with), not a live pid.
            gone = current.code_gone()
            source = (
                f"stale (runs {gone}, which is gone)"
                if gone
                else "running"
                if healthy(current.url)
                else "not answering"
            )
            states.append(ServiceState(name, current.url, source, current.pid, current.log))
        else:
            states.append(ServiceState(name, "", "stopped"))
    for number in range(2, opensearch_node.running_nodes() + 1):
        node = runtime.Managed.load(opensearch_node.node_name(number))
        alive = bool(node and node.alive())
        answering = alive and node is not None and opensearch_node.healthy(node.url)
        states.append(
            ServiceState(
                opensearch_node.node_name(number),
                node.url if node else "",
                ("running" if answering else "not answering") if alive else "stopped",
                node.pid if alive and node else None,
            )
        )
    return states


def environment() -> dict[str, str]:
    """The variables that point clients at the embedded servers (environment wins)."""
    env = {"AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", REGION)}
    for name, (variable, _, _) in SERVICES.items():
        if os.environ.get(variable):
            env[variable] = os.environ[variable]
        else:
            current = runtime.Managed.load(name)
            if current and current.alive():
                env[variable] = current.url
    if "AWS_ENDPOINT_URL" in env and not os.environ.get("AWS_ACCESS_KEY_ID"):
        env.update(DUMMY_CREDENTIALS)
    return env


def exports(states: list[ServiceState]) -> str:
    env = environment()
    for state in states:
        env[SERVICES[state.name][0]] = state.url
    if "AWS_ENDPOINT_URL" in env:
        for key, value in DUMMY_CREDENTIALS.items():
            env.setdefault(key, os.environ.get(key, value))
    return "\n".join(f"export {key}={value}" for key, value in sorted(env.items()))
