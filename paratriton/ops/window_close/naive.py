"""Plain-torch reference of the end of an engine iteration: its log, the reopen check and the new anchor."""

from __future__ import annotations

import torch

from .._window import window_rows


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
    """Log the iteration, zero the residual of the step that took the exact step, and move the anchor.

    worst: ``[H]`` the window's largest residual per step; rms_all: ``[T, B]`` every step's latest residual;
    threshold: ``[T]`` this iteration's; log_F: ``[cap]`` int64 the anchor per iteration; log_res: ``[cap, T]``;
    n_it, anchor, top, lo: 0-d int64; fits: 0-d bool (the sample test). ``log_F[n] = anchor``, ``log_res[n, lo ..
    lo+H-1] = worst``, ``rms_all[top] = 0``, ``n_it += anchor > 0`` (an iteration after convergence is not
    counted); then ``anchor = top``, except with ``reopen`` where ``top`` is 0 and the sample test failed: a step
    whose residual (largest over the batch) is above its threshold, or not measured, opens it and every step below
    (``anchor`` = the highest such step + 1; 0 if none). Mutates ``rms_all``, ``log_F``, ``log_res``, ``n_it`` and
    ``anchor``; returns nothing.
    """
    n = n_it.view(1)
    log_F.index_copy_(0, n, anchor.view(1))
    rms_all.index_fill_(0, top.view(1), 0.0)
    log_res.index_put_((n.expand(worst.shape[0]), window_rows(lo, worst.shape[0])), worst)
    n_it.add_(anchor > 0)
    if reopen:
        over = rms_all.amax(1) > threshold
        opened = torch.where(over, torch.arange(1, rms_all.shape[0] + 1, device=top.device), 0).amax()
        top = torch.where((top == 0) & ~fits, opened, top)
    anchor.copy_(top)
