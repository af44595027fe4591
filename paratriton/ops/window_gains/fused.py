"""Triton kernels of the measured amplification (``naive.window_gains`` is the oracle).

Two launches in place of the reference's few dozen small ones, both capturable (``lo`` and ``anchor`` are loaded
from their device pointers, never read on the host):

1. ``_gain_sums_kernel``: program ``(b * nsplit + split, step tile)`` reads its ``BLOCK_P`` window steps of
   trajectory ``b`` over ``chunks`` consecutive ``BLOCK_D`` slices of D (the input, the model term and their previous
   values, each once), writes the four partial sums of squares (input move, term move, secant, input) into
   ``part [4, B, nsplit, H]`` and stores this evaluation as the previous one (each element is read, then written, by
   the same program).
2. ``_gain_update_kernel`` (one program): walks the steps ``0 .. T-1`` in tiles, sums the partials in a fixed order
   (deterministic), updates the window's gains and ``seen``, and with ``UPDATE_GEFF`` writes ``geff`` from the
   running product of the gains (carried across tiles).

Tensors are taken contiguous (the wrapper copies anything that is not), so every offset follows from B and D.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_grid import split_config, split_step_tile
from .._window import require_contiguous


@triton.jit(do_not_specialize=["H", "nsplit", "chunks"])
def _gain_sums_kernel(
    part_ptr,
    xin_ptr,
    m_ptr,
    xprev_ptr,
    mprev_ptr,
    a_ptr,
    b_ptr,
    lo_ptr,
    H,
    B,
    D,
    nsplit,
    chunks,
    BLOCK_P: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    dt: tl.constexpr = xin_ptr.dtype.element_ty
    bb, sp, p, pvalid, idx = split_step_tile(lo_ptr, H, nsplit, BLOCK_P)
    av = tl.load(a_ptr + idx, mask=pvalid, other=0.0).to(dt)
    bv = tl.load(b_ptr + idx, mask=pvalid, other=0.0).to(dt)
    wrow = (p * B + bb) * D  # xin, model_out [H, B, D]
    prow = (idx * B + bb) * D  # xin_prev, out_prev [T, B, D]
    s_dx = tl.zeros([BLOCK_P, BLOCK_D], dtype=dt)
    s_dm = tl.zeros([BLOCK_P, BLOCK_D], dtype=dt)
    s_df = tl.zeros([BLOCK_P, BLOCK_D], dtype=dt)
    s_x = tl.zeros([BLOCK_P, BLOCK_D], dtype=dt)
    d0 = sp.to(tl.int64) * chunks * BLOCK_D
    for i in range(chunks):
        d = d0 + i * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
        mask = pvalid[:, None] & (d < D)[None, :]
        wo = wrow[:, None] + d[None, :]
        po = prow[:, None] + d[None, :]
        xi = tl.load(xin_ptr + wo, mask=mask, other=0.0).to(dt)
        mo = tl.load(m_ptr + wo, mask=mask, other=0.0).to(dt)
        dx = xi - tl.load(xprev_ptr + po, mask=mask, other=0.0)
        bdm = bv[:, None] * (mo - tl.load(mprev_ptr + po, mask=mask, other=0.0))
        df = av[:, None] * dx + bdm
        s_dx += dx * dx
        s_dm += bdm * bdm
        s_df += df * df
        s_x += xi * xi
        tl.store(xprev_ptr + po, xi, mask=mask)
        tl.store(mprev_ptr + po, mo, mask=mask)
    out = (bb * nsplit + sp) * H + p
    stride = B * nsplit * H  # one of the four sums to the next
    tl.store(part_ptr + out, tl.sum(s_dx, axis=1), mask=pvalid)
    tl.store(part_ptr + stride + out, tl.sum(s_dm, axis=1), mask=pvalid)
    tl.store(part_ptr + 2 * stride + out, tl.sum(s_df, axis=1), mask=pvalid)
    tl.store(part_ptr + 3 * stride + out, tl.sum(s_x, axis=1), mask=pvalid)


@triton.jit(do_not_specialize=["H", "T", "nsplit"])
def _gain_update_kernel(
    part_ptr,
    floor_ptr,
    g_ptr,
    gain_ptr,
    geff_ptr,
    seen_ptr,
    gmin_ptr,
    lo_ptr,
    anchor_ptr,
    H,
    T,
    B,
    D,
    nsplit,
    floor_margin,
    gain_max,
    UPDATE_GEFF: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    lo = tl.load(lo_ptr)
    anchor = tl.load(anchor_ptr)
    gmin = tl.load(gmin_ptr)
    stride = B * nsplit * H
    carry = tl.full((), 1.0, gmin.dtype)  # prod of the gains of the steps below this tile
    for t0 in range(0, T, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        tvalid = t < T
        p = (t - lo).to(tl.int64)
        inwin = tvalid & (p >= 0) & (p < H)
        seen = tl.load(seen_ptr + t, mask=tvalid, other=0) != 0
        old = tl.load(gain_ptr + t, mask=tvalid, other=1.0)
        live = inwin & (t < anchor) & seen
        fl = floor_margin * tl.load(floor_ptr + t, mask=tvalid, other=0.0)
        best = tl.zeros([BLOCK_T], dtype=old.dtype)
        anyok = tl.zeros([BLOCK_T], dtype=tl.int1)
        for bb in range(B):
            s_dx = tl.zeros([BLOCK_T], dtype=old.dtype)
            s_dm = tl.zeros([BLOCK_T], dtype=old.dtype)
            s_df = tl.zeros([BLOCK_T], dtype=old.dtype)
            s_x = tl.zeros([BLOCK_T], dtype=old.dtype)
            for s in range(nsplit):
                o = (bb * nsplit + s) * H + p
                s_dx += tl.load(part_ptr + o, mask=inwin, other=0.0)
                s_dm += tl.load(part_ptr + stride + o, mask=inwin, other=0.0)
                s_df += tl.load(part_ptr + 2 * stride + o, mask=inwin, other=0.0)
                s_x += tl.load(part_ptr + 3 * stride + o, mask=inwin, other=0.0)
            moved = tl.sqrt(s_dx / D)
            ok = live & (moved > gmin * tl.sqrt(s_x / D)) & (tl.sqrt(s_dm / D) > fl)
            best = tl.maximum(best, tl.where(ok, tl.sqrt(s_df / D) / tl.where(ok, moved, 1.0), 0.0))
            anyok = anyok | ok
        new = tl.where(anyok, tl.minimum(best, gain_max), old)
        tl.store(gain_ptr + t, new, mask=tvalid)
        tl.store(seen_ptr + t, (seen | inwin).to(tl.int8), mask=tvalid)
        if UPDATE_GEFF:  # geff[j] = max(g[j], prod_{i<j} gain[i]), j >= 1: the running product, shifted by one
            run = carry * tl.cumprod(tl.where(tvalid, new, 1.0), axis=0)
            j = t + 1
            jm = j < T
            tl.store(geff_ptr + j, tl.maximum(tl.load(g_ptr + j, mask=jm, other=0.0), run), mask=jm)
            carry = tl.sum(tl.where(t == t0 + BLOCK_T - 1, run, 0.0), axis=0)


def window_gains_triton(
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
    """Triton ``naive.window_gains`` (same arguments, same in-place updates). Nothing is read on the host and
    nothing syncs. The mutated tensors must be contiguous (the engine's are); the others are copied if not."""
    require_contiguous("window_gains", xin_prev=xin_prev, out_prev=out_prev, gain=gain, geff=geff, seen=seen)
    H, B, D = xin.shape
    T = xin_prev.shape[0]
    xin, model_out = xin.contiguous(), model_out.contiguous()
    a, b, floor, g = a.contiguous(), b.contiguous(), floor.contiguous(), g.contiguous()
    lo, anchor, gain_min = lo.reshape(()), anchor.reshape(()), gain_min.reshape(())
    block_p, block_d, num_warps, nsplit, chunks = split_config(H, B, D)
    part = torch.empty(4, B, nsplit, H, dtype=xin.dtype, device=xin.device)
    if B * H > 0:
        _gain_sums_kernel[(B * nsplit, triton.cdiv(H, block_p))](
            part, xin, model_out, xin_prev, out_prev, a, b, lo, H, B, D, nsplit, chunks,
            BLOCK_P=block_p, BLOCK_D=block_d, num_warps=num_warps,
        )  # fmt: skip
    seen_bytes = seen.view(torch.int8)  # bool storage, written as 0/1 bytes
    _gain_update_kernel[(1,)](
        part, floor, g, gain, geff, seen_bytes, gain_min, lo, anchor, H, T, B, D, nsplit,
        float(floor_margin), float(gain_max), UPDATE_GEFF=bool(update_geff), BLOCK_T=256, num_warps=4,
    )  # fmt: skip
