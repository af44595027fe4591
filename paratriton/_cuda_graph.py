"""Capturing and timing CUDA graphs: the one place that knows the warm-up-then-capture dance."""

from __future__ import annotations

import contextlib
import statistics
import sys
import warnings
from typing import Any, Callable, Iterator

import torch


class NestedCUDAGraphError(RuntimeError):
    """The model records and replays CUDA graphs of its own (``torch.compile`` with ``mode="reduce-overhead"`` or
    ``"max-autotune"``: inductor's CUDA graph trees), which cannot run inside another graph's capture."""


NESTED_GRAPH_ADVICE = (
    "the model records CUDA graphs of its own (torch.compile mode='reduce-overhead' or "
    "'max-autotune'), which cannot run inside paratriton's graph capture, so the solver iterations "
    "run uncaptured around the model's own graphs. To capture the whole iteration (model "
    "included) compile with mode='max-autotune-no-cudagraphs' or 'default' instead."
)


@contextlib.contextmanager
def _watch_cudagraph_trees() -> Iterator[list[bool]]:
    """Yields a list that becomes ``[True]`` if inductor's CUDA graph tree manager runs inside the block. Inductor
    is only looked at when already imported: a model that never imported it cannot be using its graphs."""
    seen: list[bool] = []
    trees = sys.modules.get("torch._inductor.cudagraph_trees")
    manager = getattr(trees, "CUDAGraphTreeManager", None)
    if manager is None:
        yield seen
        return
    original = manager._run  # every cudagraphified call goes through it (warm-up, record and replay)

    def spy(self, *args, **kwargs):
        seen[:] = [True]
        return original(self, *args, **kwargs)

    manager._run = spy
    try:
        yield seen
    finally:
        manager._run = original


def warn_nested_graphs() -> None:
    warnings.warn(NESTED_GRAPH_ADVICE, RuntimeWarning, stacklevel=3)


def capture(fn: Callable[[], Any]) -> tuple["torch.cuda.CUDAGraph", Any]:
    """Run ``fn`` once on a side stream (lazy initialisation, autotuning and allocator warm-up happen outside the
    capture), then capture it into a CUDA graph. Returns the graph and the output tensors of the captured call
    (static: every replay writes into them). The warm-up call really runs, so callers that own state must save it.

    Raises ``NestedCUDAGraphError`` (after the warm-up, before any capture starts, so no CUDA state is left
    half-captured) when ``fn`` replays inductor CUDA graphs of its own."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with _watch_cudagraph_trees() as nested, torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    if nested:
        raise NestedCUDAGraphError(NESTED_GRAPH_ADVICE)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def median_ms(fn: Callable[[], Any], reps: int = 15) -> float:
    """Median device time of ``fn()`` in ms, measured with CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)
