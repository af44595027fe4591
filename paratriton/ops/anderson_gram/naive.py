"""Plain-torch reference of the Anderson Gram pass with the triangular (suffix) mask."""

from __future__ import annotations

import torch


def anderson_gram(dR: torch.Tensor, R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Suffix-summed Gram matrices of the residual differences.

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
