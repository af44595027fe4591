"""The end of an engine iteration. ``naive.window_close`` is the oracle; ``paratriton.ops.window_close`` is the
registered ``torch.ops.paratriton.window_close`` (CPU: the oracle, CUDA: the Triton kernel of ``fused.py``)."""

from __future__ import annotations

import torch

from .._register import register_triton
from . import naive


@torch.library.custom_op("paratriton::window_close", mutates_args=("rms_all", "log_F", "log_res", "n_it", "anchor"))
def window_close(
    worst: torch.Tensor,
    rms_all: torch.Tensor,
    threshold: torch.Tensor,
    log_F: torch.Tensor,
    log_res: torch.Tensor,
    n_it: torch.Tensor,
    anchor: torch.Tensor,
    top: torch.Tensor,
    fits: torch.Tensor,
    lo: torch.Tensor,
    reopen: bool,
) -> None:
    """Shapes in ``naive.window_close``; updates ``rms_all``, ``log_F``, ``log_res``, ``n_it``, ``anchor`` in place."""
    naive.window_close(worst, rms_all, threshold, log_F, log_res, n_it, anchor, top, fits, lo, reopen)


register_triton(__name__, {window_close: "window_close_triton"})
window_close.naive = naive

__all__ = ["window_close", "naive"]
