"""Plain-torch reference of the window TAA ops: push the history ring and form the Gram, then update.

The ring ``hist_R, hist_Y [M, T, B, D]`` is indexed by step; slot ``slot`` (0-d int64) is this iteration's.
``hist_R`` holds order-k residuals ``R`` and ``hist_Y`` the fixed-point images ``Y = x + R``; since
``dX_j + dR_j = Y_j - Y_{j+1}``, the update needs ``Y`` only and the Gram ``R`` only.
"""

from __future__ import annotations

import torch

from .._window import ring_newest, window_rows
from ..taa.naive import anderson_gram
from ..window_fixed_point.naive import masked_order_k


def window_taa_push(
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
    """Write ``R`` and ``Y`` of steps ``lo .. lo+H-1`` into ring slot ``slot`` and return the suffix-summed Gram
    ``G [H, B, m, m]`` and ``h [H, B, m]`` (``m = M - 1``, float32 or better) of the ``m`` newest differences
    ``dR_j = R_j - R_{j+1}``, summed over the steps ``s`` with ``p <= s <= top`` (``R`` is masked as in
    ``window_fixed_point``)."""
    R, xw, idx, live = masked_order_k(x, model_out, noise, a, b, c, lo, top, order, unit_weights)
    M = hist_R.shape[0]
    sl = slot.view(1)
    hist_R.index_put_((sl[:, None], idx[None]), R.to(hist_R.dtype)[None])
    hist_Y.index_put_((sl[:, None], idx[None]), (xw + R).to(hist_Y.dtype)[None])
    newest = ring_newest(slot, M)
    hR = hist_R.index_select(0, newest).index_select(1, idx)  # [M, H, B, D]
    dR = torch.where(live[None, :, None, None], hR[:-1] - hR[1:], torch.zeros((), dtype=hR.dtype, device=hR.device))
    return anderson_gram(dR, R)


def window_taa_update(
    x: torch.Tensor, hist_Y: torch.Tensor, gamma: torch.Tensor, slot: torch.Tensor, lo: torch.Tensor, top: torch.Tensor
) -> None:
    """In place ``x_s = Y_0 - sum_j gamma_j (Y_j - Y_{j+1})`` for ``lo <= s <= top`` (``Y_j`` the ``j``-th newest
    ring slot); gamma ``[H, B, m]``; steps above ``top`` keep their value."""
    H, M = gamma.shape[0], hist_Y.shape[0]
    idx = window_rows(lo, H)
    Y = hist_Y.index_select(0, ring_newest(slot, M)).index_select(1, idx)  # [M, H, B, D]
    new = Y[0] - torch.einsum("jnbd,nbj->nbd", Y[:-1] - Y[1:], gamma.to(Y.dtype))
    x.index_copy_(0, idx, torch.where((idx <= top)[:, None, None], new.to(x.dtype), x.index_select(0, idx)))


def window_taa_plan(
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
    """Which window steps take the Anderson step, and with how many secant pairs (``num_cols [H]`` int64).

    rms: ``[H, B]`` residual RMS of steps ``lo .. lo+H-1``; count ``[T]`` int64 (iterations each step has been
    live; incremented here for the steps below ``anchor``), prev_rms ``[T]`` / prev_accel ``[T]`` bool (the
    safeguard's memory, updated here); ring: ``M = history + 1``. A step is accelerated when it is live, below
    ``top`` and has a secant pair; with the safeguard, not when its residual grew after its last accelerated
    update. Global (``triangular=False``, standard AA): every accelerated step takes the pair count of the lowest
    one, ``first`` (0-d int64, the window row of that step; 0 when none).
    """
    H = rms.shape[0]
    idx = lo + torch.arange(H, device=rms.device)
    active = idx < anchor
    count.index_add_(0, idx, active.long())
    m_i = count.index_select(0, idx).clamp(max=ring) - 1
    accel = active & (idx < top) & (m_i >= 1)
    if safeguard:
        worst = rms.amax(1).to(prev_rms.dtype)
        old_rms, old_accel = prev_rms.index_select(0, idx), prev_accel.index_select(0, idx)
        accel &= ~(old_accel & (worst > old_rms))
        prev_rms.index_copy_(0, idx, torch.where(active, worst, old_rms))
        prev_accel.index_copy_(0, idx, torch.where(active, accel, old_accel))
    num_cols = torch.where(accel, m_i, torch.zeros_like(m_i))
    first = torch.argmax(accel.to(torch.int8))
    if not triangular:
        num_cols = torch.where(accel, num_cols.index_select(0, first.view(1)), torch.zeros_like(num_cols))
    return num_cols, first
