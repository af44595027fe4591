"""The TAA ring ops on a ``(R, Y = x + R)`` history ring, CPU building blocks of ``window_taa``: ``taa_residual`` and
``taa_update`` are the registered ``torch.ops.paratriton.taa_residual`` / ``taa_update``, ``naive`` holds their
oracles. CPU: the C++ kernels of ``paratriton._C`` when built, else the oracles; CUDA: the oracles (the engine's
CUDA path is ``window_taa``'s Triton kernels)."""

from __future__ import annotations

import torch

from . import naive


@torch.library.custom_op("paratriton::taa_residual", mutates_args=("hist_R", "hist_Y"))
def taa_residual(
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
    """Residual, order-k residual, ring push and Gram in one op (shapes in ``naive.taa_residual``); returns
    ``rms, top, G, h``."""
    return naive.taa_residual(x, model_out, noise, a, b, c, threshold, hist_R, hist_Y, slot, order, unit_weights)


@taa_residual.register_fake
def _(x, model_out, noise, a, b, c, threshold, hist_R, hist_Y, slot, order, unit_weights=False):
    n, B = x.shape[0] - 1, x.shape[1]
    m = hist_R.shape[0] - 1
    return (
        x.new_empty(n, B),
        torch.empty((), dtype=torch.int64, device=x.device),
        x.new_empty(n, B, m, m),
        x.new_empty(n, B, m),
    )


@torch.library.custom_op("paratriton::taa_update", mutates_args=("x",))
def taa_update(x: torch.Tensor, hist_Y: torch.Tensor, gamma: torch.Tensor, slot: int) -> None:
    """In place ``x = Y_0 - sum_j gamma_j (Y_j - Y_{j+1})`` (see ``naive.taa_update``)."""
    naive.taa_update(x, hist_Y, gamma, slot)


@taa_update.register_fake
def _(x, hist_Y, gamma, slot):
    return None


taa_residual.naive = naive
taa_update.naive = naive

__all__ = ["taa_residual", "taa_update", "naive"]
