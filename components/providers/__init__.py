"""Dynamic providers (serialized into the stack state with dill): they call lockstep.ops only."""

from components.providers.opensearch import Cutover, CutoverArgs, Index, IndexArgs

__all__ = ["Cutover", "CutoverArgs", "Index", "IndexArgs"]
