"""The multistep drift (issue 18). ``naive.multistep_drift`` is the oracle; ``paratriton.ops.multistep_drift`` is the
registered ``torch.ops.paratriton.multistep_drift`` (CPU: the oracle, CUDA: the Triton kernel of ``fused.py``)."""

from __future__ import annotations

import torch

from .._register import register_triton
from . import naive


@torch.library.custom_op("paratriton::multistep_drift", mutates_args=("ring",))
def multistep_drift(
    tap_out: torch.Tensor, ring: torch.Tensor, weights: torch.Tensor, lo: torch.Tensor, anchor: torch.Tensor
) -> torch.Tensor:
    """Shapes in ``naive.multistep_drift``: returns the drift ``[H, B, D]``; the ring is updated in place."""
    return naive.multistep_drift(tap_out, ring, weights, lo, anchor)


@multistep_drift.register_fake
def _(tap_out, ring, weights, lo, anchor):
    return ring.new_empty(tap_out.shape)


register_triton(__name__, {multistep_drift: "multistep_drift_triton"})
multistep_drift.naive = naive

__all__ = ["multistep_drift", "naive"]
