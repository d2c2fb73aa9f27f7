"""What the cluster holds, copy by copy: an index's health and every shard copy (primary and
replicas), so a reader can count what each copy holds instead of whichever copy a search hits.

A check must never call a system consistent from a partial view: `whole_copies` waits (within a
bound) until every copy of an index is assigned and started, else names what it could not read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from opensearchpy.exceptions import ConnectionError as OSConnectionError
from opensearchpy.exceptions import TransportError

from lockstep.errors import Unreachable


@dataclass(frozen=True)
class ShardCopy:
    shard: int
    primary: bool
    state: str  # STARTED, INITIALIZING, RELOCATING, UNASSIGNED
    node: str  # the node's name ("" when unassigned)
    node_id: str
    reason: str = ""  # why it is unassigned (NODE_LEFT, ...)

    @property
    def label(self) -> str:
        kind = "primary" if self.primary else "replica"
        return f"shard {self.shard} {kind}" + (f" on {self.node}" if self.node else "")

    @property
    def preference(self) -> str:
        """The `preference` that makes a search read this copy and no other."""
        return f"_shards:{self.shard}|_only_nodes:{self.node_id}"


def health(client, index: str | None = None) -> dict:
    """`_cluster/health` (of one index when given): status, nodes, unassigned and initializing shards."""
    return client.cluster.health(index=index) if index else client.cluster.health()


def by_index(client) -> tuple[dict, dict[str, dict]]:
    """(cluster health, health per index) in one request."""
    body = client.cluster.health(params={"level": "indices"})
    return body, body.pop("indices", {})


def unassigned_primaries(index_health: dict) -> int:
    return max(int(index_health.get("number_of_shards", 0)) - int(index_health.get("active_primary_shards", 0)), 0)


def copies(client, index: str) -> list[ShardCopy]:
    rows = client.cat.shards(
        index=index, params={"format": "json", "h": "shard,prirep,state,node,id,unassigned.reason"}
    )
    return sorted(
        (
            ShardCopy(
                int(row["shard"]),
                row["prirep"] == "p",
                row["state"],
                row.get("node") or "",
                row.get("id") or "",
                row.get("unassigned.reason") or "",
            )
            for row in rows
        ),
        key=lambda c: (c.shard, not c.primary, c.node),
    )


def missing(found: list[ShardCopy]) -> list[str]:
    """The copies that cannot be read as they should be: not started (unassigned, recovering)."""
    return [f"{c.label} {c.state}" + (f" ({c.reason})" if c.reason else "") for c in found if c.state != "STARTED"]


def listing(client, index: str) -> tuple[list[ShardCopy], list[str]]:
    """(every copy of `index`, the ones that cannot be read). A listing the cluster cannot give
    now (5xx: its manager just left, an election is on) is nothing readable, said as such."""
    try:
        found = copies(client, index)
    except TransportError as exc:
        if not isinstance(exc.status_code, int) or exc.status_code < 500:
            raise
        return [], [f"its shard copies could not be listed ({exc.error})"]
    return found, missing(found)


def whole_copies(client, index: str, bound: float) -> list[ShardCopy]:
    """Every copy of `index`, once all are started (the index is green); waits up to `bound`
    seconds (also a listing the cluster cannot give yet). A copy still missing then is one line
    naming it (`Unreachable`, exit 2)."""
    deadline = time.monotonic() + bound
    while True:
        found, gaps = listing(client, index)
        if not gaps:
            return found
        if time.monotonic() >= deadline:
            status = health(client, index).get("status", "unknown") if found else "not listed"
            raise Unreachable(
                f"index {index} is {status}: {'; '.join(gaps)} after waiting {bound:.0f}s — not every copy "
                "could be read; wait until the cluster is green (GET _cluster/health?wait_for_status=green) and check again"
            )
        time.sleep(1.0)


def read_copy(index: str, copy: ShardCopy, request):
    """`request(preference)` on one copy; a copy that cannot answer (its node just left: 400 "no data
    nodes with criteria", or a shard failure) is `Unreachable` naming it. A server that does not
    answer at all stays a connection error (the caller names the server)."""
    try:
        body = request(copy.preference)
    except OSConnectionError:
        raise
    except TransportError as exc:
        raise Unreachable(f"index {index}: {copy.label} could not be read ({exc.error})") from None
    if body.get("_shards", {}).get("successful", 0) != 1:
        raise Unreachable(f"index {index}: {copy.label} did not answer ({body.get('_shards')})")
    return body


def refuse_partial(answer: dict, searched: str, remedy: str) -> None:
    """A search answer read from part of the index (a shard failed, a node lost, a shard's search
    timed out) is `Unreachable`: the top k of part of an index is a wrong answer that looks right.
    An answer that is an error is the caller's to report."""
    if "error" in answer:
        return
    shards = answer.get("_shards")
    if shards is None:
        raise Unreachable(f"{searched} came back without its shard count, so it may be partial; {remedy}")
    if shards.get("failed") or shards.get("successful", 0) < shards.get("total", 0):
        raise Unreachable(f"{searched} read {shards.get('successful')} of {shards.get('total')} shards; {remedy}")
    if answer.get("timed_out"):
        raise Unreachable(f"{searched} timed out: it holds what the shards found in time; {remedy}")


def copy_count(client, index: str, copy: ShardCopy) -> int:
    """The documents one copy holds (its last refresh)."""
    body = read_copy(index, copy, lambda preference: client.count(index=index, params={"preference": preference}))
    return int(body["count"])
