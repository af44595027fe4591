"""The engine's fixed-point step on the order-k equations. ``naive.window_fixed_point`` is the oracle;
``paratriton.ops.window_fixed_point`` is the registered ``torch.ops.paratriton.window_fixed_point`` (CPU: the
sliced ``step_residual``/``order_k_residual`` kernels on the window ``lo .. top``, C++ when built; CUDA: Triton)."""

from __future__ import annotations

import torch

from .._register import register_triton
from . import naive


@torch.library.custom_op("paratriton::window_fixed_point", mutates_args=("x",))
def window_fixed_point(
    x: torch.Tensor,
    model_out: torch.Tensor,
    noise: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    lo: torch.Tensor,
    top: torch.Tensor,
    order: int,
    unit_weights: bool = False,
) -> None:
    """In place ``x_s += R_s`` for ``lo <= s <= top`` (shapes in ``naive.window_fixed_point``)."""
    naive.window_fixed_point(x, model_out, noise, a, b, c, lo, top, order, unit_weights)


@window_fixed_point.register_fake
def _(x, model_out, noise, a, b, c, lo, top, order, unit_weights=False):
    return None


@window_fixed_point.register_kernel("cpu")
def _(x, model_out, noise, a, b, c, lo, top, order, unit_weights=False):
    lo_, n = int(lo), int(top) - int(lo) + 1  # CPU tensors: reading them costs nothing
    xi = None if noise is None else noise[lo_ : lo_ + n]
    r, _, _ = torch.ops.paratriton.step_residual(
        x[lo_ : lo_ + n + 1], model_out[:n], xi, a[lo_ : lo_ + n], b[lo_ : lo_ + n], c[lo_ : lo_ + n], a[lo_ : lo_ + n]
    )
    x[lo_ : lo_ + n] += torch.ops.paratriton.order_k_residual(r, a[lo_ : lo_ + n], min(order, n), unit_weights)


register_triton(__name__, {window_fixed_point: "window_fixed_point_triton"})
window_fixed_point.naive = naive

__all__ = ["window_fixed_point", "naive"]
