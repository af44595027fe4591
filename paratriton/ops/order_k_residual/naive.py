"""Plain-torch reference of the order-k residual: a banded, weighted suffix sum of order-1 residuals."""

from __future__ import annotations

import torch


def order_k_weights(a: torch.Tensor, order: int, unit_weights: bool = False) -> torch.Tensor:
    """The ``[n, n]`` band matrix ``L[p, q] = prod_{r=p}^{q-1} a_r`` for ``0 <= q - p < order`` (else 0).

    ``unit_weights=True`` gives ParaDiGMS' Picard weights (all ones in the band).
    """
    n = a.shape[0]
    idx = torch.arange(n, device=a.device)
    band = (idx[None, :] >= idx[:, None]) & (idx[None, :] - idx[:, None] < order)
    if unit_weights:
        return band.to(a.dtype)
    # E[p, r] = a_r for r >= p else 1; its running product along r is prod_{r'=p}^{r} a_r' (exact, no division)
    e = torch.where(idx[None, :] >= idx[:, None], a[None, :], torch.ones((), dtype=a.dtype, device=a.device))
    prod = torch.cumprod(e, dim=1)
    shifted = torch.cat([torch.ones(n, 1, dtype=a.dtype, device=a.device), prod[:, :-1]], dim=1)
    return torch.where(band, shifted, torch.zeros((), dtype=a.dtype, device=a.device))


def order_k_residual(r: torch.Tensor, a: torch.Tensor, order: int, unit_weights: bool = False) -> torch.Tensor:
    """``R_p = sum_{q=p}^{min(p+order, n)-1} L[p, q] r_q`` for a window whose anchor sits above step ``n-1``.

    r: ``[n, B, D]`` order-1 residuals; a: ``[n]`` step coefficients; returns ``[n, B, D]`` in r's dtype.
    ``x + R`` is the fixed-point update of the order-k transformed equations (k = order).
    """
    n = r.shape[0]
    L = order_k_weights(a.to(r.dtype), order, unit_weights)
    return (L @ r.reshape(n, -1)).reshape(r.shape)
