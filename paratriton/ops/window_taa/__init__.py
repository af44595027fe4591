"""The engine's TAA ops: ``paratriton.ops.window_taa.push`` (order-k residual, ring push, Gram), ``.plan`` (which
steps are accelerated, with the safeguard) and ``.update``.
``naive`` holds the oracles. CPU: the sliced fused ``taa_residual`` / ``taa_update`` kernels on the window
``lo .. top`` (C++ when built); CUDA: the Triton kernels of ``fused.py``."""

from __future__ import annotations

import torch

from .._register import register_triton
from . import naive


@torch.library.custom_op("paratriton::window_taa_push", mutates_args=("hist_R", "hist_Y"))
def push(
    x: torch.Tensor,
    model_out: torch.Tensor,
    noise: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    lo: torch.Tensor,
    top: torch.Tensor,
    hist_R: torch.Tensor,
    hist_Y: torch.Tensor,
    slot: torch.Tensor,
    order: int,
    unit_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shapes in ``naive.window_taa_push``; returns ``G [H, B, m, m]``, ``h [H, B, m]``."""
    return naive.window_taa_push(x, model_out, noise, a, b, c, lo, top, hist_R, hist_Y, slot, order, unit_weights)


@push.register_fake
def _(x, model_out, noise, a, b, c, lo, top, hist_R, hist_Y, slot, order, unit_weights=False):
    H, B, m = model_out.shape[0], model_out.shape[1], hist_R.shape[0] - 1
    acc = torch.promote_types(hist_R.dtype, torch.float32)
    return x.new_empty(H, B, m, m, dtype=acc), x.new_empty(H, B, m, dtype=acc)


@push.register_kernel("cpu")
def _(x, model_out, noise, a, b, c, lo, top, hist_R, hist_Y, slot, order, unit_weights=False):
    H, B, m = model_out.shape[0], model_out.shape[1], hist_R.shape[0] - 1
    lo_, n = int(lo), int(top) - int(lo) + 1
    xi = None if noise is None else noise[lo_ : lo_ + n]
    s = slice(lo_, lo_ + n)
    _, _, G_n, h_n = torch.ops.paratriton.taa_residual(
        x[lo_ : lo_ + n + 1],
        model_out[:n],
        xi,
        a[s],
        b[s],
        c[s],
        a[s],
        hist_R[:, s],
        hist_Y[:, s],
        int(slot),
        min(order, n),
        unit_weights,
    )
    G = G_n.new_zeros(H, B, m, m)
    h = h_n.new_zeros(H, B, m)
    G[:n], h[:n] = G_n, h_n
    return G, h


@torch.library.custom_op("paratriton::window_taa_update", mutates_args=("x",))
def update(
    x: torch.Tensor, hist_Y: torch.Tensor, gamma: torch.Tensor, slot: torch.Tensor, lo: torch.Tensor, top: torch.Tensor
) -> None:
    """In place ``x_s = Y_0 - sum_j gamma_j (Y_j - Y_{j+1})`` for ``lo <= s <= top`` (``naive.window_taa_update``)."""
    naive.window_taa_update(x, hist_Y, gamma, slot, lo, top)


@update.register_fake
def _(x, hist_Y, gamma, slot, lo, top):
    return None


@update.register_kernel("cpu")
def _(x, hist_Y, gamma, slot, lo, top):
    lo_, n = int(lo), int(top) - int(lo) + 1
    torch.ops.paratriton.taa_update(x[lo_ : lo_ + n], hist_Y[:, lo_ : lo_ + n], gamma[:n].contiguous(), int(slot))


@torch.library.custom_op("paratriton::window_taa_plan", mutates_args=("count", "prev_rms", "prev_accel"))
def plan(
    rms: torch.Tensor,
    count: torch.Tensor,
    prev_rms: torch.Tensor,
    prev_accel: torch.Tensor,
    lo: torch.Tensor,
    anchor: torch.Tensor,
    top: torch.Tensor,
    ring: int,
    safeguard: bool = True,
    triangular: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The accelerated steps' pair counts ``num_cols [H]`` and ``first`` (``naive.window_taa_plan``)."""
    return naive.window_taa_plan(rms, count, prev_rms, prev_accel, lo, anchor, top, ring, safeguard, triangular)


@plan.register_fake
def _(rms, count, prev_rms, prev_accel, lo, anchor, top, ring, safeguard=True, triangular=True):
    return (
        torch.empty(rms.shape[0], dtype=torch.int64, device=rms.device),
        torch.empty((), dtype=torch.int64, device=rms.device),
    )


register_triton(
    __name__, {push: "window_taa_push_triton", update: "window_taa_update_triton", plan: "window_taa_plan_triton"}
)
push.naive = plan.naive = update.naive = naive

__all__ = ["push", "plan", "update", "naive"]
