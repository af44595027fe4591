"""The engine's per-step tracking after the residual test. ``naive.window_track`` is the oracle;
``paratriton.ops.window_track`` is the registered ``torch.ops.paratriton.window_track`` (CPU: the oracle, CUDA: the
Triton kernel of ``fused.py``)."""

from __future__ import annotations

import torch

from .._register import register_triton
from . import naive


@torch.library.custom_op("paratriton::window_track", mutates_args=("rms_all", "best", "stall"))
def window_track(
    rms: torch.Tensor,
    rms_all: torch.Tensor,
    best: torch.Tensor,
    stall: torch.Tensor,
    geff: torch.Tensor,
    floor: torch.Tensor,
    top: torch.Tensor,
    lo: torch.Tensor,
    anchor: torch.Tensor,
    tol: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shapes in ``naive.window_track``: returns ``top`` (0-d int64), ``fits`` (0-d bool), ``worst [H]``."""
    return naive.window_track(rms, rms_all, best, stall, geff, floor, top, lo, anchor, tol)


@window_track.register_fake
def _(rms, rms_all, best, stall, geff, floor, top, lo, anchor, tol):
    return torch.empty_like(top), torch.empty((), dtype=torch.bool, device=rms.device), rms.new_empty(rms.shape[0])


register_triton(__name__, {window_track: "window_track_triton"})
window_track.naive = naive

__all__ = ["window_track", "naive"]
