"""Plain-torch reference of the engine's per-step residual thresholds for one iteration."""

from __future__ import annotations

import torch


def thresholds(
    thr0: torch.Tensor,
    g: torch.Tensor,
    geff: torch.Tensor,
    floor: torch.Tensor,
    stall: torch.Tensor,
    stall_iters: int,
    stall_roundings: float,
) -> torch.Tensor:
    """``[T]`` thresholds: the tolerance's ``thr0`` scaled down where the measured amplification ``geff`` exceeds the
    schedule's ``g``, never below the ``floor``; at least ``stall_roundings`` floors where the step's residual has not
    halved for ``stall_iters`` iterations (``stall``, int64). thr0, g, geff, floor: ``[T]`` state dtype."""
    thr = torch.maximum(thr0 * g / geff, floor)
    return torch.where(stall >= stall_iters, torch.maximum(thr, stall_roundings * floor), thr)
