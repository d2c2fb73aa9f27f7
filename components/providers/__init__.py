"""lockstep's custom resources: program-side classes (resources.py) and the provider's handlers."""

from components.providers.resources import (
    Artifact,
    Bucket,
    Check,
    CheckArgs,
    Corpus,
    Cutover,
    CutoverArgs,
    DerivedRepair,
    DerivedRepairArgs,
    DerivedTable,
    EndpointSlot,
    Index,
    IndexArgs,
)

__all__ = [
    "Artifact",
    "Bucket",
    "Check",
    "CheckArgs",
    "Corpus",
    "Cutover",
    "CutoverArgs",
    "DerivedRepair",
    "DerivedRepairArgs",
    "DerivedTable",
    "EndpointSlot",
    "Index",
    "IndexArgs",
]
