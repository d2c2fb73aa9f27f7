"""Stack settings a program gave partly as outputs of other resources (issue 24, point 6).

A `ModelRelease` validates its settings twice: when the program runs, with a placeholder where an
output stands (enough to decide the resource graph, which no output may decide), and again when the
outputs resolve, with their values (`attach`). Whatever a resource takes from settings given in part
as outputs comes from the resolved ones (`value`, `typed_inputs` in components/providers/resources.py),
so a placeholder never reaches a resource.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pulumi

from lockstep.config import StackSettings

T = TypeVar("T")

# Inputs that may be outputs of other resources, in wire names (a name covers its leaves): where
# things are and how they are checked. The rest stays plain because it decides which resources
# exist or a name computed when the program runs: pin, slots, retain, catalog, derived, stack,
# namePrefix, pointerParameter, promotedFrom, autoRevert, region (held against the providers'
# configuration), opensearch.engine (checked against the catalog's spaces), opensearch.indexPrefix
# and alias (index names), endpoints.backend (AWS or embedded leaves) and endpoints.deployment
# (the endpoints' customTimeouts, a resource option, which takes no output).
OUTPUT_INPUTS = (
    "artifacts",
    "opensearch.url",
    "opensearch.auth",
    "opensearch.username",
    "opensearch.region",
    "opensearch.domainName",
    "opensearch.shards",
    "opensearch.replicas",
    "opensearch.hnswM",
    "opensearch.efConstruction",
    "corpus",
    "endpoints.imageUri",
    "endpoints.instanceType",
    "endpoints.instanceCount",
    "endpoints.maxBatch",
    "check",
    "backfill",
)
# What stands in for an output while the graph is decided, where a field's default would not pass
# validation (a required field, or one another field constrains); other outputs take the default.
PLACEHOLDERS: dict[str, Any] = {
    "artifacts": {"bucket": "output-pending"},
    "artifacts.bucket": "output-pending",
    "corpus": {"bucket": "output-pending"},
    "corpus.bucket": "output-pending",
    "opensearch.url": "https://output.pending",
    "endpoints.imageUri": "000000000000.dkr.ecr.us-east-1.amazonaws.com/output-pending",
    "endpoints.instanceCount": 2,  # passes the CANARY/LINEAR rule; the resolved count is checked again
}

# Settings validated with placeholders -> (the settings, the same settings resolved, top-level keys
# holding an output). Keyed by id with the settings kept alive, so an id is never reused.
_PENDING: dict[int, tuple[StackSettings, pulumi.Output[StackSettings], frozenset[str]]] = {}


def accepts_output(path: str) -> bool:
    return any(path == allowed or path.startswith(f"{allowed}.") for allowed in OUTPUT_INPUTS)


def attach(settings: StackSettings, resolved: pulumi.Output[StackSettings], paths: list[str]) -> None:
    _PENDING[id(settings)] = (settings, resolved, frozenset(path.split(".")[0] for path in paths))


def pending_keys(settings: StackSettings) -> frozenset[str]:
    """The top-level settings (wire names) given in part as outputs; empty for plain settings."""
    found = _PENDING.get(id(settings))
    return found[2] if found else frozenset()


def value(settings: StackSettings, read: Callable[[StackSettings], T]) -> pulumi.Input[T]:
    """`read(settings)`, from the resolved settings when any were given as outputs."""
    found = _PENDING.get(id(settings))
    return found[1].apply(read) if found else read(settings)
