"""Order-k residual, a CPU building block of ``window_fixed_point`` and ``window_taa``. ``order_k_residual`` is the
registered ``torch.ops.paratriton.order_k_residual``, ``naive.order_k_residual`` its oracle. CPU: the C++ kernel of
``paratriton._C`` when built, else the oracle; CUDA: the oracle (the engine's CUDA path is the window ops' Triton
kernels)."""

from __future__ import annotations

import torch

from . import naive


@torch.library.custom_op("paratriton::order_k_residual", mutates_args=())
def order_k_residual(r: torch.Tensor, a: torch.Tensor, order: int, unit_weights: bool = False) -> torch.Tensor:
    """r ``[n, B, D]``, a ``[n]``, order ``k >= 1`` -> ``R [n, B, D]`` (r's dtype); see ``naive.order_k_residual``."""
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    return naive.order_k_residual(r, a, order, unit_weights)


@order_k_residual.register_fake
def _(r, a, order, unit_weights=False):
    return torch.empty_like(r, memory_format=torch.contiguous_format)


order_k_residual.naive = naive

__all__ = ["order_k_residual", "naive"]
