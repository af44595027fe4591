"""The engine's per-step thresholds. ``naive.thresholds`` is the oracle; ``paratriton.ops.thresholds`` is the
registered ``torch.ops.paratriton.thresholds`` (CPU: the oracle, CUDA: the Triton kernel of ``fused.py``)."""

from __future__ import annotations

import torch

from .._register import register_triton
from . import naive


@torch.library.custom_op("paratriton::thresholds", mutates_args=())
def thresholds(
    thr0: torch.Tensor,
    g: torch.Tensor,
    geff: torch.Tensor,
    floor: torch.Tensor,
    stall: torch.Tensor,
    stall_iters: int,
    stall_roundings: float,
) -> torch.Tensor:
    """Shapes in ``naive.thresholds``: returns ``[T]`` in the state dtype."""
    return naive.thresholds(thr0, g, geff, floor, stall, stall_iters, stall_roundings)


@thresholds.register_fake
def _(thr0, g, geff, floor, stall, stall_iters, stall_roundings):
    return torch.empty_like(thr0)


register_triton(__name__, {thresholds: "thresholds_triton"})
thresholds.naive = naive

__all__ = ["thresholds", "naive"]
