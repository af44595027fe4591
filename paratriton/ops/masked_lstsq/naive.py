"""Plain-torch reference of the masked, regularised m x m least-squares solves (one per step and trajectory)."""

from __future__ import annotations

import torch


def masked_lstsq(
    G: torch.Tensor, h: torch.Tensor, num_cols: torch.Tensor, ridge: float = 1e-3, floor: float = 1e-30
) -> torch.Tensor:
    """Solve ``(G_p + lambda_p I) gamma_p = h_p`` on the first ``num_cols[p]`` columns, zero elsewhere.

    G: ``[n, B, m, m]``, h: ``[n, B, m]`` (fp32 or fp64), num_cols: ``[n]`` int in ``[0, m]``.
    The ridge is relative, ``lambda_p = ridge * trace(G_p) / num_cols_p + floor``, so it does not depend on the
    sample size or the number of summed steps. Steps with ``num_cols = 0`` get ``gamma = 0``.
    Returns ``gamma [n, B, m]`` in G's dtype.
    """
    m = G.shape[-1]
    cols = torch.arange(m, device=G.device)
    valid = cols[None, :] < num_cols[:, None]  # [n, m]
    pair = (valid[:, :, None] & valid[:, None, :])[:, None]  # [n, 1, m, m]
    eye = torch.eye(m, dtype=G.dtype, device=G.device)
    Gm = torch.where(pair, G, torch.zeros((), dtype=G.dtype, device=G.device))
    k = num_cols.clamp_min(1).to(G.dtype)[:, None]
    lam = ridge * Gm.diagonal(dim1=-2, dim2=-1).sum(-1) / k + floor  # [n, B]
    # invalid columns get an identity row so the system stays non-singular and their gamma is 0
    system = Gm + eye * torch.where(valid[:, None, :], lam[..., None], torch.ones_like(lam)[..., None])[..., None, :]
    rhs = torch.where(valid[:, None, :], h, torch.zeros((), dtype=h.dtype, device=h.device))
    return torch.linalg.solve(system, rhs.to(G.dtype)[..., None])[..., 0]
