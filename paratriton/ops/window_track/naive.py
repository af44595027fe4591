"""Plain-torch reference of the engine's per-step tracking after the residual test, updated in place."""

from __future__ import annotations

import torch

from .._window import window_rows


def window_track(
    rms: torch.Tensor,
    rms_all: torch.Tensor,
    best: torch.Tensor,
    stall: torch.Tensor,
    geff: torch.Tensor,
    floor: torch.Tensor,
    top: torch.Tensor,
    lo: torch.Tensor,
    anchor: torch.Tensor,
    tol: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Record the window's residuals and, with a target ``tol``, run the sample test.

    rms: ``[H, B]`` the residual RMS of steps ``lo .. lo+H-1`` (state dtype); rms_all: ``[T, B]`` every step's latest
    one; best: ``[T]`` every step's lowest (largest over the batch); stall: ``[T]`` int64 iterations since it last
    halved; geff, floor: ``[T]``; top, lo, anchor: 0-d int64. Live steps (below ``anchor``) update ``rms_all``,
    ``best`` and ``stall`` in place; frozen ones keep theirs.

    Returns ``top`` (0 where the window starts at step 0 and the sample test passes: ``max_b sum_i geff_i
    rms_all[i, b] - sum_i geff_i floor_i <= tol``, else the input ``top``), ``fits`` (0-d bool: that test; False
    without ``tol``) and ``worst [H]`` (the largest residual over the batch per window step).
    """
    H = rms.shape[0]
    idx = window_rows(lo, H)
    live = (idx < anchor).view(-1, 1)
    rms_all.index_copy_(0, idx, torch.where(live, rms, rms_all.index_select(0, idx)))
    worst, low = rms.amax(1), best.index_select(0, idx)  # stalled: no halving of the step's best residual
    stalled = torch.where(worst < 0.5 * low, 0, stall.index_select(0, idx) + 1)
    stall.index_copy_(0, idx, torch.where(live[:, 0], stalled, stall.index_select(0, idx)))
    best.index_copy_(0, idx, torch.where(live[:, 0], torch.minimum(low, worst), low))
    if tol is None:
        return top.clone(), torch.zeros((), dtype=torch.bool, device=rms.device), worst
    # the first-order bound on the sample's distance at this trajectory, whatever the split by step (the floors'
    # share of the sum is allowed on top: the most the per-step test allows there)
    fits = ((geff.view(-1, 1) * rms_all).sum(0) - (geff * floor).sum()).amax() <= tol
    return torch.where((lo == 0) & fits, torch.zeros_like(top), top), fits, worst
