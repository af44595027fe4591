"""Masked regularised least squares, the Anderson methods' solve (the engine calls it on every device).
``masked_lstsq`` is the registered ``torch.ops.paratriton.masked_lstsq``, ``naive.masked_lstsq`` its oracle. CPU: the
C++ kernel of ``paratriton._C`` when built, else the oracle; CUDA: the Triton kernel of ``fused.py`` (or, opted in
with ``PARATRITON_CUDA_OPS``, the CUDA kernel of ``paratriton._C_cuda``)."""

from __future__ import annotations

import torch

from .._register import register_triton
from . import naive


@torch.library.custom_op("paratriton::masked_lstsq", mutates_args=())
def masked_lstsq(
    G: torch.Tensor, h: torch.Tensor, num_cols: torch.Tensor, ridge: float = 1e-3, floor: float = 1e-30
) -> torch.Tensor:
    """G ``[n, B, m, m]``, h ``[n, B, m]``, num_cols ``[n]`` int -> gamma ``[n, B, m]``; see ``naive.masked_lstsq``."""
    return naive.masked_lstsq(G, h, num_cols, ridge, floor)


@masked_lstsq.register_fake
def _(G, h, num_cols, ridge=1e-3, floor=1e-30):
    return G.new_empty(G.shape[:-1])


register_triton(__name__, {masked_lstsq: "masked_lstsq_triton"})
masked_lstsq.naive = naive

__all__ = ["masked_lstsq", "naive"]
