"""Triton residual pass (quarantined, see ``paratriton.ops.legacy``; it was the CUDA kernel of ``step_residual``,
``order_k_residual`` and ``taa_residual``): order-1 residual, per-step RMS, top unconverged step, order-k residual
and (optionally) the Anderson Gram partials and the history push, in one read of the window.

One program owns a ``BLOCK_D`` slice of one trajectory and walks the window from the anchor down in tiles of
``BLOCK_P`` steps. The order-k residual obeys ``R_p = r_p + w_p R_{p+1} - [p + k < n] W_p r_{p+k}`` (``w = a`` or 1,
``W_p = prod_{s=p}^{p+k-1} w_s``); inside a tile this affine recurrence is an associative scan, and the value of the
lowest step of a tile carries into the next one. For a banded order (``k < n``) the subtracted ``r_{p+k}`` is
recomputed from its inputs (a second read, usually from L2); with the default ``k = n`` nothing is read twice.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_grid import batch_and_d_block
from .anderson_gram.fused import _gram_tile, launch_reduce, num_slots


@triton.jit
def _affine_combine(a1, b1, a2, b2):
    # composition of y -> a1 y + b1 followed by y -> a2 y + b2
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _order1(
    x_ptr,
    m_ptr,
    xi_ptr,
    a_ptr,
    b_ptr,
    c_ptr,
    p64,
    pvalid,
    b,
    offs_d,
    mask,
    s_xp,
    s_xb,
    s_xd,
    s_mp,
    s_mb,
    s_md,
    s_np,
    s_nb,
    s_nd,
    FROM_R: tl.constexpr,
    HAS_NOISE: tl.constexpr,
    dt: tl.constexpr,
):
    """Order-1 residual tile ``[BLOCK_P, BLOCK_D]`` of steps ``p64`` (zero where masked) and ``x_p`` beside it."""
    xo = x_ptr + p64[:, None] * s_xp + b * s_xb + offs_d[None, :] * s_xd
    x_lo = tl.load(xo, mask=mask, other=0.0).to(dt)
    if FROM_R:
        r = x_lo
    else:
        x_hi = tl.load(xo + s_xp, mask=mask, other=0.0).to(dt)
        mo = tl.load(m_ptr + p64[:, None] * s_mp + b * s_mb + offs_d[None, :] * s_md, mask=mask, other=0.0).to(dt)
        av = tl.load(a_ptr + p64, mask=pvalid, other=0.0).to(dt)
        bv = tl.load(b_ptr + p64, mask=pvalid, other=0.0).to(dt)
        r = av[:, None] * x_hi + bv[:, None] * mo - x_lo
        if HAS_NOISE:
            xi = tl.load(xi_ptr + p64[:, None] * s_np + b * s_nb + offs_d[None, :] * s_nd, mask=mask, other=0.0)
            cv = tl.load(c_ptr + p64, mask=pvalid, other=0.0).to(dt)
            r = r + cv[:, None] * xi.to(dt)
    return r, x_lo


@triton.jit
def _ring_load(H_ptr, slot, j: tl.constexpr, M_ring, s_Hs, off, mask, dt: tl.constexpr):
    s = (slot + M_ring - j) % M_ring  # slot arrives as an int64 tensor
    return tl.load(H_ptr + s * s_Hs + off, mask=mask, other=0.0).to(dt)


@triton.jit
def _residual_kernel(
    # outputs
    r_out,
    R_out,
    Y_out,
    part_ptr,
    top_ptr,
    # inputs
    x_ptr,
    m_ptr,
    xi_ptr,
    a_ptr,
    b_ptr,
    c_ptr,
    wk_ptr,
    H_ptr,
    # sizes and ring position
    n,
    D,
    nblk,
    order,
    slot,
    M_ring,
    # strides (elements)
    s_xp,
    s_xb,
    s_xd,
    s_mp,
    s_mb,
    s_md,
    s_np,
    s_nb,
    s_nd,
    s_rp,
    s_rb,
    s_rd,
    s_Rp,
    s_Rb,
    s_Rd,
    s_Yp,
    s_Yb,
    s_Yd,
    s_Hs,
    s_Hp,
    s_Hb,
    s_Hd,
    FROM_R: tl.constexpr,
    HAS_NOISE: tl.constexpr,
    SUMSQ: tl.constexpr,
    WRITE_R1: tl.constexpr,
    ORDER_K: tl.constexpr,
    WRITE_RK: tl.constexpr,
    BANDED: tl.constexpr,
    UNIT: tl.constexpr,
    WRITE_Y: tl.constexpr,
    MH: tl.constexpr,
    NG: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    dt: tl.constexpr = x_ptr.dtype.element_ty
    pid, b, blk, offs_d, dmask = batch_and_d_block(nblk, D, BLOCK_D)
    rows = tl.arange(0, BLOCK_P)
    base = (b * nblk + blk) * NG * n
    if SUMSQ:
        # top starts at -1; the reduction kernel (launched after this one) takes the atomic max
        tl.store(top_ptr, tl.full((), -1, tl.int64), mask=pid == 0)
    slot64 = b * 0 + slot  # int64 tensor even when Triton specialises slot == 1
    carry = tl.zeros([BLOCK_D], dtype=dt)
    for t in tl.range(0, tl.cdiv(n, BLOCK_P), num_stages=NUM_STAGES):
        p = n - 1 - t * BLOCK_P - rows  # descending steps: row 0 is the highest
        pvalid = p >= 0
        p64 = p.to(tl.int64)
        mask = pvalid[:, None] & dmask[None, :]
        r, x_lo = _order1(
            x_ptr,
            m_ptr,
            xi_ptr,
            a_ptr,
            b_ptr,
            c_ptr,
            p64,
            pvalid,
            b,
            offs_d,
            mask,
            s_xp,
            s_xb,
            s_xd,
            s_mp,
            s_mb,
            s_md,
            s_np,
            s_nb,
            s_nd,
            FROM_R,
            HAS_NOISE,
            dt,
        )
        if MH > 0:
            # issue the history loads together with the others: one memory round trip per tile, not two
            off = p64[:, None] * s_Hp + b * s_Hb + offs_d[None, :] * s_Hd
            h1 = _ring_load(H_ptr, slot64, 1, M_ring, s_Hs, off, mask, dt)
            h2 = h1
            h3 = h1
            h4 = h1
            h5 = h1
            if MH > 1:
                h2 = _ring_load(H_ptr, slot64, 2, M_ring, s_Hs, off, mask, dt)
            if MH > 2:
                h3 = _ring_load(H_ptr, slot64, 3, M_ring, s_Hs, off, mask, dt)
            if MH > 3:
                h4 = _ring_load(H_ptr, slot64, 4, M_ring, s_Hs, off, mask, dt)
            if MH > 4:
                h5 = _ring_load(H_ptr, slot64, 5, M_ring, s_Hs, off, mask, dt)
        if SUMSQ:
            tl.store(part_ptr + base + p64, tl.sum(r * r, axis=1), mask=pvalid)
        if WRITE_R1:
            tl.store(r_out + p64[:, None] * s_rp + b * s_rb + offs_d[None, :] * s_rd, r, mask=mask)
        if ORDER_K:
            if UNIT:
                w = tl.full([BLOCK_P], 1.0, dt)
            else:
                w = tl.load(a_ptr + p64, mask=pvalid, other=1.0).to(dt)
            rr = r
            if BANDED:
                q64 = p64 + order
                qvalid = pvalid & (q64 < n)
                qmask = qvalid[:, None] & dmask[None, :]
                rq, _unused = _order1(
                    x_ptr,
                    m_ptr,
                    xi_ptr,
                    a_ptr,
                    b_ptr,
                    c_ptr,
                    q64,
                    qvalid,
                    b,
                    offs_d,
                    qmask,
                    s_xp,
                    s_xb,
                    s_xd,
                    s_mp,
                    s_mb,
                    s_md,
                    s_np,
                    s_nb,
                    s_nd,
                    FROM_R,
                    HAS_NOISE,
                    dt,
                )
                wk = tl.load(wk_ptr + p64, mask=qvalid, other=0.0).to(dt)
                rr = r - wk[:, None] * rq
            A, Bv = tl.associative_scan((tl.broadcast_to(w[:, None], (BLOCK_P, BLOCK_D)), rr), 0, _affine_combine)
            R = Bv + A * carry[None, :]
            carry = tl.sum(tl.where(rows[:, None] == BLOCK_P - 1, R, 0.0), axis=0)
            if WRITE_RK:
                tl.store(R_out + p64[:, None] * s_Rp + b * s_Rb + offs_d[None, :] * s_Rd, R, mask=mask)
            if WRITE_Y:  # history push of Y = x + R, the fixed-point image
                tl.store(Y_out + p64[:, None] * s_Yp + b * s_Yb + offs_d[None, :] * s_Yd, x_lo + R, mask=mask)
            if MH > 0:  # Gram partials of the newest history columns
                c0 = R - h1
                c1 = h1 - h2
                c2 = h2 - h3
                c3 = h3 - h4
                c4 = h4 - h5
                _gram_tile(part_ptr, base, n, p64, pvalid, R, c0, c1, c2, c3, c4, MH)


def band_tail_weights(a: torch.Tensor, order: int, unit_weights: bool, n: int, dtype: torch.dtype) -> torch.Tensor:
    """``W [n]``: ``prod_{s=p}^{p+k-1} a_s`` (1 for unit weights) where ``p + k < n``, else 0 (device ops, no sync)."""
    a = a.to(dtype)
    if unit_weights:
        w = torch.ones(n, dtype=dtype, device=a.device)
    else:
        w = torch.cat([a, a.new_ones(order)]).unfold(0, order, 1)[:n].prod(-1)
    idx = torch.arange(n, device=a.device)
    return torch.where(idx + order < n, w, torch.zeros((), dtype=dtype, device=a.device))


# (BLOCK_P, BLOCK_D, num_warps, num_stages) per history size, set by benchmarks/bench_kernels.py --sections sweep
TUNED: dict[int, tuple[int, int, int, int]] = {}


def default_config(mh: int, state_dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BLOCK_P, BLOCK_D, num_warps, num_stages) of the residual pass (measured on an H200, see RESULTS.md)."""
    if mh in TUNED:
        return TUNED[mh]
    # H200, W=100, D=262144 (benchmarks/RESULTS.md): few steps per tile and a pipelined loop win for short
    # histories; with 5 columns the 21 per-tile reductions favour wider tiles and no extra stages (registers)
    return (2, 128, 2, 3) if mh <= 3 else (4, 256, 4, 1)


def residual_pass(
    x: torch.Tensor,
    model_out: torch.Tensor | None,
    noise: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor | None,
    c: torch.Tensor | None,
    threshold: torch.Tensor | None,
    *,
    order: int | None = None,
    unit_weights: bool = False,
    write_r: bool = False,
    write_R: bool = False,
    from_r: bool = False,
    hist_R: torch.Tensor | None = None,
    hist_Y: torch.Tensor | None = None,
    slot: int = 0,
    config: tuple[int, int, int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Launch the residual pass (and its reduction) on a window of ``n`` steps, ``B`` trajectories of ``D`` values.

    x:         ``[n+1, B, D]`` states (``x[n]`` is the anchor), or with ``from_r`` the order-1 residuals ``[n, B, D]``
    model_out: ``[n, B, D]`` fp16/bf16/fp32/fp64; noise ``[n, B, D]`` or None; a, b, c, threshold: ``[n]``
    order:     compute the order-k residual ``R`` (None: don't); ``unit_weights``: Picard weights
    hist_R, hist_Y: ``[M, n, B, D]`` ring buffers (state dtype): ``R`` goes to ``hist_R[slot]``, ``x + R`` to
               ``hist_Y[slot]`` and the Gram of the ``M - 1 <= 5`` newest differences of ``hist_R`` is returned
    config:    ``(BLOCK_P, BLOCK_D, num_warps, num_stages)``, default ``default_config``
    Returns a dict with ``r``, ``R``, ``rms [n, B]``, ``top`` (0-d int64), ``G [n, B, M-1, M-1]``, ``h [n, B, M-1]``
    (what was asked for). Every tensor stays on the device; nothing syncs.
    """
    n = x.shape[0] - (0 if from_r else 1)
    B, D = x.shape[1], x.shape[2]
    dt = x.dtype
    dev = x.device
    ring = hist_R is not None
    mh = hist_R.shape[0] - 1 if ring else 0
    if mh > 5:
        raise ValueError(f"the Triton residual pass supports at most 5 history columns, got {mh}")
    if ring and order is None:
        raise ValueError("the history push needs the order-k residual (order=None)")
    sumsq = not from_r
    out: dict[str, torch.Tensor] = {}
    ng = num_slots(mh)
    block_p, block_d, num_warps, num_stages = config or default_config(mh, dt)
    nblk = max(triton.cdiv(D, block_d), 1)
    r = torch.empty(n, B, D, dtype=dt, device=dev) if write_r else None
    R = None
    if order is not None:
        R = hist_R[slot] if ring else (torch.empty(n, B, D, dtype=dt, device=dev) if write_R else None)
    if r is not None:
        out["r"] = r
    if R is not None:
        out["R"] = R
    if sumsq:
        out["rms"] = torch.empty(n, B, dtype=dt, device=dev)
        out["top"] = (
            torch.full((), -1, dtype=torch.int64, device=dev)
            if n * B == 0
            else torch.empty((), dtype=torch.int64, device=dev)
        )
    if ring:
        # every entry is written by the reduction (zeros only when nothing is launched)
        alloc = torch.empty if n * B * D > 0 else torch.zeros
        out["G"] = alloc(n, B, mh, mh, dtype=dt, device=dev)
        out["h"] = alloc(n, B, mh, dtype=dt, device=dev)
    if n == 0 or B == 0:
        return out
    if D == 0:
        if R is not None:
            R.zero_()
        if sumsq:
            out["rms"].zero_()
            out["top"].fill_(-1)
        return out
    banded = order is not None and order < n
    wk = band_tail_weights(a, order, unit_weights, n, dt) if banded else x
    part = torch.empty(B, nblk, ng, n, dtype=dt, device=dev) if (sumsq or ring) else x
    dummy = x
    Y = hist_Y[slot] if ring else dummy
    H = hist_R if ring else dummy
    st = lambda t: tuple(t.stride()) if t is not None else (0, 0, 0)  # noqa: E731
    _residual_kernel[(B * nblk,)](
        r if r is not None else dummy,
        R if R is not None else dummy,
        Y,
        part,
        out["top"] if sumsq else dummy,
        x,
        model_out if model_out is not None else dummy,
        noise if noise is not None else dummy,
        a,
        b if b is not None else a,
        c if c is not None else a,
        wk,
        H,
        n,
        D,
        nblk,
        order if order is not None else 0,
        slot,
        mh + 1,
        *x.stride(),
        *st(model_out),
        *st(noise),
        *st(r),
        *st(R),
        *(st(Y) if ring else (0, 0, 0)),
        *(hist_R.stride() if ring else (0, 0, 0, 0)),
        FROM_R=from_r,
        HAS_NOISE=noise is not None,
        SUMSQ=sumsq,
        WRITE_R1=r is not None,
        ORDER_K=order is not None,
        WRITE_RK=R is not None,
        BANDED=banded,
        UNIT=unit_weights,
        WRITE_Y=ring,
        MH=mh,
        NG=ng,
        BLOCK_P=block_p,
        BLOCK_D=block_d,
        NUM_STAGES=num_stages,
        num_warps=num_warps,
    )
    if sumsq or ring:
        launch_reduce(
            part,
            out.get("G", part[:0]),
            out.get("h", part[:0]),
            out.get("rms"),
            threshold,
            out.get("top"),
            n,
            B,
            D,
            mh,
            with_sumsq=sumsq,
        )
    return out
