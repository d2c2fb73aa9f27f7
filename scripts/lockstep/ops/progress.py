"""Batches and progress bars shared by the long loops (re-embed, derived repair, guarded writes).

Its own module so the loops need not import one another: ops.derived once imported ops.reembed for
these two helpers, which made a circle once the cutover (ops.live_state) started writing derived fences.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import nullcontext

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def batched(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def progress_bar(enabled: bool):
    """A rich progress bar on stderr (a task's `rate` field shown beside it), or nothing."""
    if not enabled:
        return nullcontext(None)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
