"""Plain-torch reference of the multistep drift: store the window's tap outputs, apply the k-tap stencil."""

from __future__ import annotations

import torch


def multistep_drift(
    tap_out: torch.Tensor, ring: torch.Tensor, weights: torch.Tensor, lo: torch.Tensor, anchor: torch.Tensor
) -> torch.Tensor:
    """The drift ``g_i = sum_j weights[i, j] M_{i+j}`` of window steps ``i = lo .. lo+H-1``; in place, the ring of
    every step's latest tap output takes the live rows' ``M`` (rows ``>= anchor`` are frozen: they keep theirs).

    tap_out: ``[H, B, D]`` the window's tap outputs ``M`` (any float dtype); ring: ``[T, B, D]`` (state dtype);
    weights: ``[T, k]`` (0 where ``i + j >= T``); lo, anchor: 0-d int64 on the device. Returns ``[H, B, D]`` in the
    ring's dtype.
    """
    H, T = tap_out.shape[0], ring.shape[0]
    idx = lo + torch.arange(H, device=ring.device)
    live = (idx < anchor).view(-1, 1, 1)
    ring.index_copy_(0, idx, torch.where(live, tap_out.to(ring.dtype), ring.index_select(0, idx)))
    g = torch.zeros(tap_out.shape, dtype=ring.dtype, device=ring.device)
    for j in range(weights.shape[1]):  # k is small (1-5; 13 during PNDM's Runge-Kutta warm-up)
        w = weights[:, j].index_select(0, idx).to(ring.dtype).view(-1, 1, 1)
        g.add_(w * ring.index_select(0, (idx + j).clamp_max(T - 1)))
    return g
