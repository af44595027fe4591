"""Plain-torch reference of the fused TAA iteration ops (composed from the per-op references).

The history is a ring of ``M = m + 1`` slots over the window: ``hist_R[s]`` holds an order-k residual and
``hist_Y[s]`` the matching fixed-point image ``Y = x + R``. Since ``dX_j + dR_j = Y_j - Y_{j+1}``, the update needs
``Y`` only, and the Gram needs ``R`` only: each is read once per iteration.
"""

from __future__ import annotations

import torch

from ..order_k_residual.naive import order_k_residual
from ..step_residual.naive import step_residual


def anderson_gram(dR: torch.Tensor, R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Suffix-summed Gram matrices of the residual differences (the triangular least squares of TAA).

    dR: ``[m, n, B, D]`` residual differences (column ``j`` is the ``j``-th newest), R: ``[n, B, D]``.
    Returns ``G [n, B, m, m]`` with ``G[p] = sum_{q >= p} dR_q^T dR_q`` and ``h [n, B, m]`` with
    ``h[p] = sum_{q >= p} dR_q^T R_q``, accumulated in at least float32 (float64 for float64 inputs).
    """
    acc = torch.promote_types(dR.dtype, torch.float32)
    dR, R = dR.to(acc), R.to(acc)
    G = torch.einsum("jnbd,knbd->nbjk", dR, dR)
    h = torch.einsum("jnbd,nbd->nbj", dR, R)
    suffix = lambda t: t.flip(0).cumsum(0).flip(0)  # noqa: E731 -- sum over steps q >= p
    return suffix(G), suffix(h)


def ring_order(slot: int, M: int) -> list[int]:
    """Ring slots from the newest (``slot``) to the oldest."""
    return [(slot - j) % M for j in range(M)]


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
    """Residual pass + order-k residual + history push + Anderson Gram, in place on the ring.

    x: ``[n+1, B, D]`` (state dtype), model_out/noise: ``[n, B, D]``, a/b/c/threshold: ``[n]``,
    hist_R/hist_Y: ``[M, n, B, D]`` state dtype (mutated: slot ``slot`` receives ``R`` and ``x[:n] + R``).
    Returns ``rms [n, B]``, ``top`` (0-d int64), ``G [n, B, M-1, M-1]`` and ``h [n, B, M-1]`` of the ``M - 1``
    newest differences of ``hist_R`` (suffix-summed over steps, see ``anderson_gram``).
    """
    r, rms, top = step_residual(x, model_out, noise, a, b, c, threshold)
    R = order_k_residual(r, a, order, unit_weights)
    M = hist_R.shape[0]
    hist_R[slot] = R
    hist_Y[slot] = x[:-1].to(hist_Y.dtype) + R
    s = ring_order(slot, M)
    if M > 1:
        dR = torch.stack([hist_R[s[j]] - hist_R[s[j + 1]] for j in range(M - 1)])
        G, h = anderson_gram(dR, R)
    else:
        n, B = R.shape[:2]
        G, h = R.new_zeros(n, B, 0, 0), R.new_zeros(n, B, 0)
    return rms, top, G, h


def taa_update(x: torch.Tensor, hist_Y: torch.Tensor, gamma: torch.Tensor, slot: int) -> None:
    """In place ``x = Y_0 - sum_j gamma_j (Y_j - Y_{j+1})`` (= ``x + R - (dX + dR) gamma``), ``Y_j`` the ``j``-th
    newest slot of ``hist_Y [M, n, B, D]``; x ``[n, B, D]``, gamma ``[n, B, M-1]``."""
    M = hist_Y.shape[0]
    s = ring_order(slot, M)
    new = hist_Y[slot].clone()
    if M > 1:
        dY = torch.stack([hist_Y[s[j]] - hist_Y[s[j + 1]] for j in range(M - 1)])
        new -= torch.einsum("jnbd,nbj->nbd", dY, gamma.to(new.dtype))
    x.copy_(new)
