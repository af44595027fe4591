"""Masked regularised least squares. ``naive.masked_lstsq`` is the oracle; ``torch.ops.paratriton.masked_lstsq`` is
the registered op (CPU: the oracle, CUDA: the Triton kernel of ``fused.py``)."""

from __future__ import annotations

import torch

from .naive import masked_lstsq


@torch.library.custom_op("paratriton::masked_lstsq", mutates_args=())
def masked_lstsq_op(
    G: torch.Tensor, h: torch.Tensor, num_cols: torch.Tensor, ridge: float = 1e-3, floor: float = 1e-30
) -> torch.Tensor:
    """Registered ``masked_lstsq``: G ``[n, B, m, m]``, h ``[n, B, m]``, num_cols ``[n]`` int -> gamma ``[n, B, m]``."""
    return masked_lstsq(G, h, num_cols, ridge, floor)


@masked_lstsq_op.register_fake
def _(G, h, num_cols, ridge=1e-3, floor=1e-30):
    return G.new_empty(G.shape[:-1])


@masked_lstsq_op.register_kernel("cuda")
def _(G, h, num_cols, ridge=1e-3, floor=1e-30):
    from .fused import masked_lstsq_triton

    return masked_lstsq_triton(G, h, num_cols, ridge, floor)


__all__ = ["masked_lstsq", "masked_lstsq_op"]
