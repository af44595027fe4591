"""Fused TAA iteration ops on a ``(R, Y = x + R)`` history ring (see ``naive.py``).

``torch.ops.paratriton.taa_residual`` and ``torch.ops.paratriton.taa_update``: CPU runs the plain-torch composition
of the per-op references, CUDA the Triton kernels (one residual/Gram pass, its reduction, and the update).
"""

from __future__ import annotations

import torch

from .naive import ring_order, taa_residual, taa_update


@torch.library.custom_op("paratriton::taa_residual", mutates_args=("hist_R", "hist_Y"))
def taa_residual_op(
    x: torch.Tensor,
    model_out: torch.Tensor,
    noise: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    threshold: torch.Tensor,
    hist_R: torch.Tensor,
    hist_Y: torch.Tensor,
    slot: int,
    order: int,
    unit_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Registered ``taa_residual`` (shapes in ``naive.taa_residual``); returns ``rms, top, G, h``."""
    return taa_residual(x, model_out, noise, a, b, c, threshold, hist_R, hist_Y, slot, order, unit_weights)


@taa_residual_op.register_fake
def _(x, model_out, noise, a, b, c, threshold, hist_R, hist_Y, slot, order, unit_weights=False):
    n, B = x.shape[0] - 1, x.shape[1]
    m = hist_R.shape[0] - 1
    return (
        x.new_empty(n, B),
        torch.empty((), dtype=torch.int64, device=x.device),
        x.new_empty(n, B, m, m),
        x.new_empty(n, B, m),
    )


@taa_residual_op.register_kernel("cuda")
def _(x, model_out, noise, a, b, c, threshold, hist_R, hist_Y, slot, order, unit_weights=False):
    from ..step_residual.fused import residual_pass

    out = residual_pass(
        x,
        model_out,
        noise,
        a,
        b,
        c,
        threshold,
        order=order,
        unit_weights=unit_weights,
        hist_R=hist_R,
        hist_Y=hist_Y,
        slot=slot,
    )
    return out["rms"], out["top"], out["G"], out["h"]


@torch.library.custom_op("paratriton::taa_update", mutates_args=("x",))
def taa_update_op(x: torch.Tensor, hist_Y: torch.Tensor, gamma: torch.Tensor, slot: int) -> None:
    """Registered ``taa_update``: in place ``x = Y_0 - sum_j gamma_j (Y_j - Y_{j+1})`` (see ``naive.taa_update``)."""
    taa_update(x, hist_Y, gamma, slot)


@taa_update_op.register_fake
def _(x, hist_Y, gamma, slot):
    return None


@taa_update_op.register_kernel("cuda")
def _(x, hist_Y, gamma, slot):
    from ..anderson_update.fused import ring_update_triton

    ring_update_triton(x, hist_Y, gamma, slot)


__all__ = ["taa_residual", "taa_update", "ring_order", "taa_residual_op", "taa_update_op"]
