"""The engine's measured amplification. ``naive.window_gains`` is the oracle; ``paratriton.ops.window_gains`` is the
registered ``torch.ops.paratriton.window_gains`` (CPU: the oracle, CUDA: the two Triton kernels of ``fused.py``)."""

from __future__ import annotations

import torch

from .._register import register_triton
from . import naive


@torch.library.custom_op("paratriton::window_gains", mutates_args=("xin_prev", "out_prev", "gain", "geff", "seen"))
def window_gains(
    xin: torch.Tensor,
    model_out: torch.Tensor,
    xin_prev: torch.Tensor,
    out_prev: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    floor: torch.Tensor,
    g: torch.Tensor,
    gain: torch.Tensor,
    geff: torch.Tensor,
    seen: torch.Tensor,
    gain_min: torch.Tensor,
    lo: torch.Tensor,
    anchor: torch.Tensor,
    floor_margin: float,
    gain_max: float,
    update_geff: bool,
) -> None:
    """Shapes in ``naive.window_gains``; updates ``gain``, ``geff``, ``seen``, ``xin_prev``, ``out_prev`` in place."""
    naive.window_gains(
        xin, model_out, xin_prev, out_prev, a, b, floor, g, gain, geff, seen, gain_min, lo, anchor,
        floor_margin, gain_max, update_geff,
    )  # fmt: skip


register_triton(__name__, {window_gains: "window_gains_triton"})
window_gains.naive = naive

__all__ = ["window_gains", "naive"]
