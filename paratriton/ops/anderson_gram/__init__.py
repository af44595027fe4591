"""Anderson Gram pass. ``naive.anderson_gram`` is the oracle; ``torch.ops.paratriton.anderson_gram`` is the
registered op (CPU: the oracle, CUDA: the Triton kernels of ``fused.py``)."""

from __future__ import annotations

import torch

from .naive import anderson_gram


@torch.library.custom_op("paratriton::anderson_gram", mutates_args=())
def anderson_gram_op(dR: torch.Tensor, R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Registered ``anderson_gram``: dR ``[m, n, B, D]``, R ``[n, B, D]`` -> suffix-summed ``G [n, B, m, m]``,
    ``h [n, B, m]`` in ``promote(dR.dtype, float32)``."""
    return anderson_gram(dR, R)


@anderson_gram_op.register_fake
def _(dR, R):
    m, n, B, _ = dR.shape
    acc = torch.promote_types(dR.dtype, torch.float32)
    return dR.new_empty(n, B, m, m, dtype=acc), dR.new_empty(n, B, m, dtype=acc)


@anderson_gram_op.register_kernel("cuda")
def _(dR, R):
    from .fused import anderson_gram_triton

    return anderson_gram_triton(dR, R)


__all__ = ["anderson_gram", "anderson_gram_op"]
