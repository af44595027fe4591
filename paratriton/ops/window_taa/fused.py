"""Triton kernels of the window TAA ops (``naive.window_taa_push`` / ``naive.window_taa_update`` are the oracles).

* push: the window walk of ``window_fixed_point/fused.py`` with ``PUSH`` (one read of the window's inputs and the
  ``m`` older ring slots; writes ``R`` and ``Y = x + R`` into slot ``slot`` and suffix-summed Gram partials per D
  block), then ``_gram_reduce_kernel``: a deterministic sum over the D blocks, parallel over (trajectory, product
  slot x step chunk), scattered into ``G [H, B, m, m]`` (both triangles) and ``h [H, B, m]``. Two launches.
* update: ``_update_kernel``, one launch: ``x_s = Y_0 - sum_j gamma_j (Y_j - Y_{j+1})`` for ``lo <= s <= top``;
  rows whose gamma is all zero read ``Y_0`` only (the older slots' loads are masked off).

``lo``, ``top`` and ``slot`` are loaded from their device pointers: capturable, nothing read on the host.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_grid import batch_and_d_block
from ..window_fixed_point.fused import contiguous_inputs, launch_walk, num_slots


@triton.jit(do_not_specialize=["H", "nblk"])
def _gram_reduce_kernel(
    part_ptr, G_ptr, h_ptr, H, B, nblk, MH: tl.constexpr, NG: tl.constexpr, CH: tl.constexpr, BC: tl.constexpr
):
    """Program ``(b, chunk)``: ``CH`` flat (slot, step) entries ``j = g * H + p`` summed over the D blocks."""
    bb = tl.program_id(0).to(tl.int64)
    j = (tl.program_id(1) * CH + tl.arange(0, CH)).to(tl.int64)
    jm = j < NG * H
    g = j // H
    p = j % H
    tot = tl.zeros([CH], dtype=part_ptr.dtype.element_ty)
    for k0 in range(0, nblk, BC):
        kk = (k0 + tl.arange(0, BC)).to(tl.int64)
        ptrs = part_ptr + (bb * nblk + kk[:, None]) * NG * H + j[None, :]
        tot += tl.sum(tl.load(ptrs, mask=(kk < nblk)[:, None] & jm[None, :], other=0.0), axis=0)
    is_h = g < MH
    tl.store(h_ptr + (p * B + bb) * MH + g, tot, mask=jm & is_h)
    kq = g - MH  # pair number: row i of the upper triangle starts at i*MH - i(i-1)/2
    gi = kq * 0
    gj = kq * 0
    for i in tl.static_range(MH):
        start = i * MH - i * (i - 1) // 2
        sel = (kq >= start) & (kq < start + MH - i)
        gi = tl.where(sel, i, gi)
        gj = tl.where(sel, i + kq - start, gj)
    pm = jm & ~is_h
    row = (p * B + bb) * MH
    tl.store(G_ptr + (row + gi) * MH + gj, tot, mask=pm)
    tl.store(G_ptr + (row + gj) * MH + gi, tot, mask=pm)


@triton.jit(do_not_specialize=["H", "T"])
def _update_kernel(
    x_ptr,
    Y_ptr,
    g_ptr,
    slot_ptr,
    lo_ptr,
    top_ptr,
    H,
    T,
    B,
    D,
    nblk,
    M: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    dt: tl.constexpr = Y_ptr.dtype.element_ty
    _pid, bb, _blk, offs_d, dmask = batch_and_d_block(nblk, D, BLOCK_D)
    p = (tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
    idx = tl.load(lo_ptr) + p
    live = (p < H) & (idx <= tl.load(top_ptr))
    mask = live[:, None] & dmask[None, :]
    slot = tl.load(slot_ptr)
    yo = (idx[:, None] * B + bb) * D + offs_d[None, :]  # row offset inside one ring slot
    acc = tl.load(Y_ptr + slot * T * B * D + yo, mask=mask, other=0.0).to(dt)
    goff = (p * B + bb) * (M - 1)
    active = p < 0
    for j in tl.static_range(M - 1):
        active = active | (tl.load(g_ptr + goff + j, mask=live, other=0.0) != 0)
    amask = mask & active[:, None]
    prev = acc
    corr = tl.zeros([BLOCK_P, BLOCK_D], dtype=dt)
    for j in tl.static_range(M - 1):
        gj = tl.load(g_ptr + goff + j, mask=live, other=0.0).to(dt)
        sj = (slot + M - 1 - j) % M
        nxt = tl.load(Y_ptr + sj * T * B * D + yo, mask=amask, other=0.0).to(dt)
        corr += gj[:, None] * (prev - nxt)
        prev = nxt
    tl.store(x_ptr + (idx[:, None] * B + bb) * D + offs_d[None, :], (acc - corr).to(x_ptr.dtype.element_ty), mask=mask)


def reduce_config(nblk: int) -> tuple[int, int]:
    """``(CH, BC)`` of the Gram reduce: a fixed chunk of (slot, step) entries (so a new H never recompiles) and
    as many D blocks per load as fit 4096 elements."""
    ch = 128
    return ch, max(1, min(triton.next_power_of_2(max(nblk, 1)), 4096 // ch))


def window_taa_push_triton(
    x: torch.Tensor,
    model_out: torch.Tensor,
    noise: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    lo: torch.Tensor,
    top: torch.Tensor,
    hist_R: torch.Tensor,
    hist_Y: torch.Tensor,
    slot: torch.Tensor,
    order: int,
    unit_weights: bool = False,
    config: tuple[int, int, int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton ``naive.window_taa_push``: writes ring slot ``slot`` and returns ``G [H, B, m, m]``, ``h [H, B, m]``
    (``promote(hist_R.dtype, float32)``). Two launches, no sync."""
    H, B = model_out.shape[0], model_out.shape[1]
    M = hist_R.shape[0]
    m = M - 1
    acc = torch.promote_types(hist_R.dtype, torch.float32)
    model_out, noise, a, b, c, lo, top = contiguous_inputs(x, model_out, noise, a, b, c, lo, top)
    x = x.contiguous()
    hR = hist_R if hist_R.is_contiguous() else hist_R.contiguous()
    hY = hist_Y if hist_Y.is_contiguous() else hist_Y.contiguous()
    part, nblk = launch_walk(
        x,
        model_out,
        noise,
        a,
        b,
        c,
        lo,
        top,
        order,
        unit_weights,
        hist_R=hR,
        hist_Y=hY,
        slot=slot.reshape(()),
        part_dtype=acc,
        config=config,
    )
    if hR is not hist_R:
        hist_R.copy_(hR)
    if hY is not hist_Y:
        hist_Y.copy_(hY)
    ng = num_slots(m)
    if H * B == 0 or nblk == 0:
        return (torch.zeros(H, B, m, m, dtype=acc, device=x.device), torch.zeros(H, B, m, dtype=acc, device=x.device))
    G = torch.empty(H, B, m, m, dtype=acc, device=x.device)
    h = torch.empty(H, B, m, dtype=acc, device=x.device)
    ch, bc = reduce_config(nblk)
    _gram_reduce_kernel[(B, triton.cdiv(ng * H, ch))](part, G, h, H, B, nblk, MH=m, NG=ng, CH=ch, BC=bc, num_warps=4)
    return G, h


def window_taa_update_triton(
    x: torch.Tensor,
    hist_Y: torch.Tensor,
    gamma: torch.Tensor,
    slot: torch.Tensor,
    lo: torch.Tensor,
    top: torch.Tensor,
    *,
    block_p: int = 4,
    block_d: int = 256,
    num_warps: int = 4,
) -> None:
    """Triton ``naive.window_taa_update``: in place on the live rows ``lo .. top`` of x (one launch, no sync)."""
    H = gamma.shape[0]
    T1, B, D = x.shape
    M = hist_Y.shape[0]
    if not 2 <= M <= 9:
        raise ValueError(f"the window TAA kernels support a ring of 2 .. 9 slots, got {M}")
    xc = x if x.is_contiguous() else x.contiguous()
    Y, gamma = hist_Y.contiguous(), gamma.contiguous()
    block_d = min(block_d, max(16, triton.next_power_of_2(max(D, 1))))
    nblk = triton.cdiv(D, block_d)
    if H * B * nblk > 0:
        _update_kernel[(B * nblk, triton.cdiv(H, block_p))](
            xc,
            Y,
            gamma,
            slot.reshape(()),
            lo.reshape(()),
            top.reshape(()),
            H,
            T1 - 1,
            B,
            D,
            nblk,
            M=M,
            BLOCK_P=block_p,
            BLOCK_D=block_d,
            num_warps=num_warps,
        )
    if xc is not x:
        x.copy_(xc)


@triton.jit(do_not_specialize=["H", "B"])
def _plan_kernel(
    rms_ptr,
    count_ptr,
    prev_rms_ptr,
    prev_acc_ptr,
    lo_ptr,
    anchor_ptr,
    top_ptr,
    nc_ptr,
    first_ptr,
    H,
    B,
    M: tl.constexpr,
    SAFEGUARD: tl.constexpr,
    GLOBAL: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """One program walks the window in blocks: count, pair numbers, safeguard memory, ``num_cols``, ``first``."""
    lo = tl.load(lo_ptr)
    anchor = tl.load(anchor_ptr)
    top = tl.load(top_ptr)
    first = tl.zeros((), dtype=tl.int64) + H
    for start in range(0, H, BLOCK):
        p = (start + tl.arange(0, BLOCK)).to(tl.int64)
        pm = p < H
        idx = lo + p
        active = (idx < anchor) & pm
        cnt = tl.load(count_ptr + idx, mask=pm, other=0) + active.to(tl.int64)
        tl.store(count_ptr + idx, cnt, mask=pm)
        m_i = tl.minimum(cnt, M) - 1
        accel = active & (idx < top) & (m_i >= 1)
        if SAFEGUARD:
            worst = tl.full([BLOCK], float("-inf"), dtype=rms_ptr.dtype.element_ty)
            nan = tl.zeros([BLOCK], dtype=tl.int32)
            for b0 in range(0, B, BLOCK_B):
                bb = b0 + tl.arange(0, BLOCK_B)
                v = tl.load(
                    rms_ptr + p[:, None] * B + bb[None, :], mask=pm[:, None] & (bb < B)[None, :], other=float("-inf")
                )
                worst = tl.maximum(worst, tl.max(v, axis=1))
                nan = tl.maximum(nan, tl.max((v != v).to(tl.int32), axis=1))
            worst = tl.where(nan > 0, float("nan"), worst)  # as torch's amax: a NaN residual is the worst
            old_r = tl.load(prev_rms_ptr + idx, mask=pm, other=0.0)
            old_a = tl.load(prev_acc_ptr + idx, mask=pm, other=0) != 0
            accel = accel & ~(old_a & (worst.to(old_r.dtype) > old_r))
            tl.store(prev_rms_ptr + idx, tl.where(active, worst.to(old_r.dtype), old_r), mask=pm)
            tl.store(prev_acc_ptr + idx, tl.where(active, accel, old_a).to(tl.int8), mask=pm)
        tl.store(nc_ptr + p, tl.where(accel, m_i, 0), mask=pm)
        first = tl.minimum(first, tl.min(tl.where(accel, p, H)))
    first = tl.where(first < H, first, 0)
    tl.store(first_ptr, first)
    if GLOBAL:
        tl.debug_barrier()  # num_cols of the whole window is written before its lowest entry is read back
        nf = tl.load(nc_ptr + first)
        for start in range(0, H, BLOCK):
            p = (start + tl.arange(0, BLOCK)).to(tl.int64)
            pm = p < H
            nc = tl.load(nc_ptr + p, mask=pm, other=0)
            tl.store(nc_ptr + p, tl.where(nc > 0, nf, 0), mask=pm)


def window_taa_plan_triton(
    rms: torch.Tensor,
    count: torch.Tensor,
    prev_rms: torch.Tensor,
    prev_accel: torch.Tensor,
    lo: torch.Tensor,
    anchor: torch.Tensor,
    top: torch.Tensor,
    ring: int,
    safeguard: bool = True,
    triangular: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``naive.window_taa_plan`` in one launch (count, prev_rms and prev_accel updated in place)."""
    H, B = rms.shape
    rms = rms.contiguous()
    num_cols = torch.empty(H, dtype=torch.int64, device=rms.device)
    first = torch.empty((), dtype=torch.int64, device=rms.device)
    acc = prev_accel.view(torch.int8)  # bool storage read and written as bytes
    _plan_kernel[(1,)](
        rms,
        count,
        prev_rms,
        acc,
        lo,
        anchor,
        top,
        num_cols,
        first,
        H,
        B,
        M=ring,
        SAFEGUARD=bool(safeguard),
        GLOBAL=not triangular,
        BLOCK=256,
        BLOCK_B=min(16, triton.next_power_of_2(B)),
    )
    return num_cols, first
