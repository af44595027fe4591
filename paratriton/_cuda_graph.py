"""Capturing and timing CUDA graphs: the one place that knows the warm-up-then-capture dance."""

from __future__ import annotations

import statistics
from typing import Any, Callable

import torch


def capture(fn: Callable[[], Any]) -> tuple["torch.cuda.CUDAGraph", Any]:
    """Run ``fn`` once on a side stream (lazy initialisation, autotuning and allocator warm-up happen outside the
    capture), then capture it into a CUDA graph. Returns the graph and the output tensors of the captured call
    (static: every replay writes into them). The warm-up call really runs, so callers that own state must save it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
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
