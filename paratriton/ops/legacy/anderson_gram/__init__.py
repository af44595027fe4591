"""Anderson Gram pass (quarantined, see ``paratriton.ops.legacy``): ``anderson_gram`` is the registered
``torch.ops.paratriton.anderson_gram`` (CPU: the oracle ``naive.anderson_gram``, CUDA: the Triton kernels of
``fused.py``)."""

from __future__ import annotations

import torch

from ..._register import register_triton
from . import naive


@torch.library.custom_op("paratriton::anderson_gram", mutates_args=())
def anderson_gram(dR: torch.Tensor, R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """dR ``[m, n, B, D]``, R ``[n, B, D]`` -> suffix-summed ``G [n, B, m, m]``, ``h [n, B, m]`` in
    ``promote(dR.dtype, float32)``."""
    return naive.anderson_gram(dR, R)


@anderson_gram.register_fake
def _(dR, R):
    m, n, B, _ = dR.shape
    acc = torch.promote_types(dR.dtype, torch.float32)
    return dR.new_empty(n, B, m, m, dtype=acc), dR.new_empty(n, B, m, dtype=acc)


register_triton(__name__, {anderson_gram: "anderson_gram_triton"})
anderson_gram.naive = naive

__all__ = ["anderson_gram", "naive"]
