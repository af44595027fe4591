"""The engine's residual test. ``naive.window_residual`` is the oracle; ``paratriton.ops.window_residual`` is the
registered ``torch.ops.paratriton.window_residual`` (CPU: the oracle, CUDA: the Triton kernels of ``fused.py``)."""

from __future__ import annotations

import torch

from .._register import register_triton
from . import naive


@torch.library.custom_op("paratriton::window_residual", mutates_args=())
def window_residual(
    x: torch.Tensor,
    model_out: torch.Tensor,
    noise: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    threshold: torch.Tensor,
    lo: torch.Tensor,
    anchor: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shapes in ``naive.window_residual``: returns ``rms [H, B]``, ``top`` (0-d int64), ``bad`` (0-d bool)."""
    return naive.window_residual(x, model_out, noise, a, b, c, threshold, lo, anchor)


@window_residual.register_fake
def _(x, model_out, noise, a, b, c, threshold, lo, anchor):
    H, B = model_out.shape[0], model_out.shape[1]
    return (
        x.new_empty(H, B),
        torch.empty((), dtype=torch.int64, device=x.device),
        torch.empty((), dtype=torch.bool, device=x.device),
    )


register_triton(__name__, {window_residual: "window_residual_triton"})
window_residual.naive = naive

__all__ = ["window_residual", "naive"]
