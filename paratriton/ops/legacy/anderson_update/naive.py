"""Plain-torch reference of the Anderson update ``x += R - (dX + dR) gamma``."""

from __future__ import annotations

import torch


def anderson_update(
    x: torch.Tensor, R: torch.Tensor, dX: torch.Tensor, dR: torch.Tensor, gamma: torch.Tensor
) -> torch.Tensor:
    """Return the accelerated iterate ``x + R - sum_j (dX_j + dR_j) gamma_j``.

    x, R: ``[n, B, D]``; dX, dR: ``[m, n, B, D]``; gamma: ``[n, B, m]`` (zero rows give the fixed-point step).
    """
    corr = torch.einsum("jnbd,nbj->nbd", dX + dR, gamma.to(x.dtype))
    return x + R - corr
