"""Plain-torch reference of the window residual test (device-side masking, no host read)."""

from __future__ import annotations

import torch

from .._window import order1_rows, window_rows


def window_residual(
    x: torch.Tensor,
    model_out: torch.Tensor,
    noise: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    threshold: torch.Tensor,
    lo: torch.Tensor,
    anchor: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Residual RMS of the window and its highest unconverged step.

    x: ``[T+1, B, D]`` trajectory (state dtype); model_out: ``[H, B, D]`` model outputs of steps ``lo .. lo+H-1``
    (any float dtype); noise: ``[T, B, D]`` or None; a, b, c, threshold: ``[T]``; lo, anchor: 0-d int64.
    Returns ``rms [H, B]`` (state dtype; 0 at steps ``>= anchor``), ``top`` (0-d int64: the highest step
    ``< anchor`` whose RMS exceeds its threshold, or is not finite, for some trajectory; ``lo`` when none does) and
    ``bad`` (0-d bool: a step ``< anchor`` has a non-finite residual).
    """
    H = model_out.shape[0]
    idx = window_rows(lo, H)
    active = idx < anchor
    r, _ = order1_rows(x, model_out, noise, a, b, c, idx)
    rms = r.square().mean(dim=-1).sqrt()
    rms = torch.where(active[:, None], rms, torch.zeros((), dtype=rms.dtype, device=rms.device))
    # "not <=": a NaN residual is never converged
    unconverged = (~(rms <= threshold.index_select(0, idx).to(rms.dtype)[:, None])).any(dim=1) & active
    top = torch.maximum(torch.where(unconverged, idx, torch.full_like(idx, -1)).max(), lo)
    bad = (~torch.isfinite(rms)).any()
    return rms, top, bad
