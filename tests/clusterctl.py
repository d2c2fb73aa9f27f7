"""The 3-node OpenSearch cluster of the cluster tests and bench/cluster.py: start it (`lockstep
services up --nodes 3` under its own LOCKSTEP_HOME), SIGKILL a node, start it again, and a fault
proxy rule (`NodeLoss`) that kills a node at a chosen request."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from lockstep import opensearch_node, runtime
from tests.faultproxy import FORWARD


def lockstep(*args: str, env: dict[str, str], timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lockstep.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=timeout,
    )


@dataclass
class Cluster:
    """A 3-node OpenSearch cluster under its own LOCKSTEP_HOME (`lockstep services up --nodes 3`),
    beside the session's single node. Tests point OPENSEARCH_URL at `url` (node 1, which they never
    kill), SIGKILL another node and start it again with the same `up` (its data kept)."""

    home: Path
    url: str
    nodes: int = 3

    def env(self) -> dict[str, str]:
        return {"LOCKSTEP_HOME": str(self.home), "OPENSEARCH_URL": ""}

    def node(self, number: int) -> runtime.Managed:
        record = self.home / "run" / f"{opensearch_node.node_name(number)}.json"
        return runtime.Managed(**json.loads(record.read_text()))

    def kill(self, number: int) -> None:
        """SIGKILL node `number` (its whole process group) and wait until it is gone."""
        node = self.node(number)
        os.killpg(node.pid, signal.SIGKILL)
        while node.alive():
            time.sleep(0.05)

    def up(self) -> None:
        """Start every node that is not running (a killed one rejoins with its data)."""
        result = lockstep("services", "up", "--nodes", str(self.nodes), env=self.env())
        if result.returncode != 0:
            raise RuntimeError(f"lockstep services up --nodes {self.nodes} failed: {result.stderr[-500:]}")

    def health(self, **params: str) -> dict:
        return requests.get(f"{self.url}/_cluster/health", params=params, timeout=120).json()

    def wait_green(self) -> None:
        """All nodes back and every copy assigned (the next test starts from a whole cluster)."""
        self.up()
        body = self.health(wait_for_status="green", wait_for_nodes=str(self.nodes), timeout="110s")
        if body["status"] != "green" or body["timed_out"]:
            raise RuntimeError(f"the cluster is not green after 110 s: {body}")


class NodeLoss:
    """Kill a node at the `nth` request that `match`es (before it is forwarded), start it again
    `restart_after` seconds later. `wait()`: the restart is done and the cluster green again."""

    def __init__(self, cluster, match, nth: int = 1, node: int | None = 3, restart_after: float = 3.0):
        self.cluster, self.match, self.nth, self.node, self.restart_after = cluster, match, nth, node, restart_after
        self.seen, self.killed = 0, None
        self.lock = threading.Lock()
        self.restart: threading.Thread | None = None

    def __call__(self, request):
        if not self.match(request):
            return FORWARD
        with self.lock:
            self.seen += 1
            if self.seen != self.nth:
                return FORWARD
            self.killed = self.node or self.cluster_manager()
            self.cluster.kill(self.killed)
        self.restart = threading.Thread(target=self._restart, daemon=True)
        self.restart.start()
        return FORWARD

    def cluster_manager(self) -> int:
        """The elected cluster manager's number, unless it is node 1 (then node 3)."""
        name = requests.get(f"{self.cluster.url}/_cat/cluster_manager", params={"h": "node"}, timeout=30).text.strip()
        number = int(name.rsplit("-", 1)[1])
        return number if number != 1 else 3

    def _restart(self) -> None:
        time.sleep(self.restart_after)
        self.cluster.up()

    def wait(self) -> None:
        if self.killed is None:
            raise RuntimeError("the node-loss hook never fired: no request matched")
        if self.restart is not None:
            self.restart.join(timeout=400)
        self.cluster.wait_green()
