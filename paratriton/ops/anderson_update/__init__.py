"""Anderson update. ``naive.anderson_update`` is the oracle; ``torch.ops.paratriton.anderson_update`` is the
registered op (CPU: the oracle, CUDA: the Triton kernel of ``fused.py``)."""

from __future__ import annotations

import torch

from .naive import anderson_update


@torch.library.custom_op("paratriton::anderson_update", mutates_args=())
def anderson_update_op(
    x: torch.Tensor, R: torch.Tensor, dX: torch.Tensor, dR: torch.Tensor, gamma: torch.Tensor
) -> torch.Tensor:
    """Registered ``anderson_update``: x, R ``[n, B, D]``, dX, dR ``[m, n, B, D]``, gamma ``[n, B, m]`` -> new x."""
    return anderson_update(x, R, dX, dR, gamma)


@anderson_update_op.register_fake
def _(x, R, dX, dR, gamma):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@anderson_update_op.register_kernel("cuda")
def _(x, R, dX, dR, gamma):
    from .fused import anderson_update_triton

    return anderson_update_triton(x, R, dX, dR, gamma)


__all__ = ["anderson_update", "anderson_update_op"]
