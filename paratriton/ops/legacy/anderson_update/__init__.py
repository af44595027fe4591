"""Anderson update (quarantined, see ``paratriton.ops.legacy``): ``anderson_update`` is the registered
``torch.ops.paratriton.anderson_update`` (CPU: the oracle ``naive.anderson_update``, CUDA: the Triton kernel of
``fused.py``)."""

from __future__ import annotations

import torch

from ..._register import register_triton
from . import naive


@torch.library.custom_op("paratriton::anderson_update", mutates_args=())
def anderson_update(
    x: torch.Tensor, R: torch.Tensor, dX: torch.Tensor, dR: torch.Tensor, gamma: torch.Tensor
) -> torch.Tensor:
    """x, R ``[n, B, D]``, dX, dR ``[m, n, B, D]``, gamma ``[n, B, m]`` -> ``x + R - sum_j (dX_j + dR_j) gamma_j``."""
    return naive.anderson_update(x, R, dX, dR, gamma)


@anderson_update.register_fake
def _(x, R, dX, dR, gamma):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


register_triton(__name__, {anderson_update: "anderson_update_triton"})
anderson_update.naive = naive

__all__ = ["anderson_update", "naive"]
