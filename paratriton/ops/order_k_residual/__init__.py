"""Order-k residual. ``naive.order_k_residual`` is the oracle; ``torch.ops.paratriton.order_k_residual`` is the
registered op (CPU: the oracle, CUDA: the scan of ``step_residual/fused.py`` reading r instead of the states)."""

from __future__ import annotations

import torch

from .naive import order_k_residual, order_k_weights


@torch.library.custom_op("paratriton::order_k_residual", mutates_args=())
def order_k_residual_op(r: torch.Tensor, a: torch.Tensor, order: int, unit_weights: bool = False) -> torch.Tensor:
    """Registered ``order_k_residual``: r ``[n, B, D]``, a ``[n]``, order ``k >= 1`` -> ``R [n, B, D]`` (r's dtype)."""
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    return order_k_residual(r, a, order, unit_weights)


@order_k_residual_op.register_fake
def _(r, a, order, unit_weights=False):
    return torch.empty_like(r, memory_format=torch.contiguous_format)


@order_k_residual_op.register_kernel("cuda")
def _(r, a, order, unit_weights=False):
    from ..step_residual.fused import residual_pass

    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    return residual_pass(
        r, None, None, a, None, None, None, order=order, unit_weights=unit_weights, write_R=True, from_r=True
    )["R"]


__all__ = ["order_k_residual", "order_k_weights", "order_k_residual_op"]
