"""Plain-torch reference of the measured amplification (the engine's secant gains), updated in place."""

from __future__ import annotations

import torch

from .._window import window_rows


def window_gains(
    xin: torch.Tensor,
    model_out: torch.Tensor,
    xin_prev: torch.Tensor,
    out_prev: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    floor: torch.Tensor,
    g: torch.Tensor,
    gain: torch.Tensor,
    geff: torch.Tensor,
    seen: torch.Tensor,
    gain_min: torch.Tensor,
    lo: torch.Tensor,
    anchor: torch.Tensor,
    floor_margin: float,
    gain_max: float,
    update_geff: bool,
) -> None:
    """Measure the secant gain of every window step against its previous evaluation, then store this evaluation.

    xin: ``[H, B, D]`` the model inputs of steps ``lo .. lo+H-1`` (state dtype); model_out: ``[H, B, D]`` their model
    terms (any float dtype, read in the state dtype); xin_prev, out_prev: ``[T, B, D]`` every step's previous input
    and term (state dtype, overwritten at the window's rows); a, b, floor, g, gain, geff: ``[T]`` state dtype; seen:
    ``[T]`` bool; gain_min: 0-d state dtype; lo, anchor: 0-d int64.

    Step ``i``'s gain is ``rms(a_i dx + b_i dm) / rms(dx)`` with ``dx``, ``dm`` the moves of its input and term (the
    largest over the batch), kept only where the input moved by more than ``gain_min`` of itself, the term
    ``b_i dm`` by more than ``floor_margin`` floors, the step is below ``anchor`` and was evaluated before; at most
    ``gain_max``. Other steps keep their gain. With ``update_geff``: ``geff[j] = max(g[j], prod_{i<j} gain[i])`` for
    ``j >= 1``. Mutates ``gain``, ``geff``, ``seen``, ``xin_prev`` and ``out_prev``; returns nothing.
    """
    H = xin.shape[0]
    idx = window_rows(lo, H)
    live, out = idx < anchor, model_out.to(xin.dtype)
    dx = xin - xin_prev.index_select(0, idx)
    dm = out - out_prev.index_select(0, idx)
    bc = b.index_select(0, idx).view(-1, 1, 1)
    df = a.index_select(0, idx).view(-1, 1, 1) * dx + bc * dm
    rms = lambda v: v.square().mean(2).sqrt()  # noqa: E731  [H, B]
    moved, model_moved = rms(dx), rms(bc * dm)
    ok = (moved > gain_min * rms(xin)) & (model_moved > floor_margin * floor.index_select(0, idx).view(-1, 1))
    ok &= (live & seen.index_select(0, idx)).view(-1, 1)
    # the latest gain: the largest so far would hold a large move's secant (a Gaussian mixture at DDIM-25 measured
    # 1857x over 25 steps that way, and AA then ran out of iterations)
    step_gain = torch.where(ok, rms(df) / moved.clamp_min(torch.finfo(moved.dtype).tiny), 0.0).amax(1)
    old = gain.index_select(0, idx)
    gain.index_copy_(0, idx, torch.where(ok.any(1), step_gain.clamp(max=gain_max), old))
    xin_prev.index_copy_(0, idx, xin)
    out_prev.index_copy_(0, idx, out)
    seen.index_fill_(0, idx, True)
    if update_geff:
        geff[1:].copy_(torch.maximum(g[1:], gain[:-1].cumprod(0)))
