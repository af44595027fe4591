"""Triton kernel of the window fixed-point step, and the window walk it shares with the TAA push.

``_walk_kernel``: one program owns a ``BLOCK_D`` slice of one trajectory and walks the window ``lo .. lo+H-1``
from the top down in tiles of ``BLOCK_P`` steps (``lo``, ``top``, ``slot`` are loaded from their device pointers, so
the launch is capturable and the same for every window position). Per tile it forms the order-1 residual ``r``
(``where``-masked to zero above ``top``: a NaN in a frozen or padded row never leaks), the order-k residual

    R_p = r_p + w_p R_{p+1} - [p + k < H] W_p r_{p+k},   W_p = prod_{s=p}^{p+k-1} w_s,

as an associative scan inside the tile with the lowest row's value carried into the next tile (``k = 1``: ``R = r``;
``k >= H``: no subtracted term), and then either

* fixed point (``PUSH = False``): ``x_s += R_s`` in place for the live steps ``s <= top``, or
* TAA push (``PUSH = True``): ``R`` and ``Y = x + R`` into ring slot ``slot`` (every window row) and the per-step
  Gram products of the ``m = M - 1`` newest differences ``dR_j``, suffix-summed over the steps inside the program
  (a carry per product), into ``part [B, nblk, NG, H]``; ``window_taa/fused.py`` reduces them over the D blocks.

In place hazards (fixed point): a tile reads ``x_{s+1}``, which the tile above it has already overwritten for its
lowest row, so that value comes from a register carry of the old ``x``; inside a tile every load happens before a
barrier and the stores after it. For a banded order the subtracted ``r_{p+k}`` is read back from a scratch copy of
``r`` written by this program (stored, barrier, loaded), since the inputs it was formed from may be overwritten.
All tensors are contiguous, so offsets follow from T, B and D.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_grid import batch_and_d_block

MAX_RING = 9  # hist.shape[0] = history + 1 <= 9 (8 secant columns)


@triton.jit
def _affine_combine(a1, b1, a2, b2):
    # composition of y -> a1 y + b1 followed by y -> a2 y + b2
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _ring_load(h_ptr, slot, j: tl.constexpr, M: tl.constexpr, T, B, D, idx, bb, offs_d, mask, acc: tl.constexpr):
    """Rows ``idx`` of the ``j``-th newest ring slot ``(slot - j) mod M`` of ``h [M, T, B, D]``, in ``acc``."""
    s = (slot + M - j) % M
    return tl.load(h_ptr + ((s * T + idx[:, None]) * B + bb) * D + offs_d[None, :], mask=mask, other=0.0).to(acc)


@triton.jit
def _put(P, gidx, g: tl.constexpr, u, v):
    """Row ``g`` of the ``[NGP, BLOCK_P]`` product table: the per-step inner product ``<u, v>`` over the D slice."""
    return tl.where(gidx[:, None] == g, tl.sum(u * v, axis=1)[None, :], P)


@triton.jit
def _gram_rows(P, gidx, R, c0, c1, c2, c3, c4, c5, c6, c7, MH: tl.constexpr):
    """Slots ``g < MH``: ``h_g = <dR_g, R>``; then ``G_ij`` (``i <= j``) row by row at ``MH + i*MH - i(i-1)/2 + j-i``.
    Columns ``j >= MH`` are never touched (constexpr guards)."""
    P = _put(P, gidx, 0, c0, R)
    P = _put(P, gidx, MH + 0 * MH - 0 + 0, c0, c0)
    if MH > 1:
        P = _put(P, gidx, 1, c1, R)
        P = _put(P, gidx, MH + 0 * MH - 0 + 1, c0, c1)
        P = _put(P, gidx, MH + 1 * MH - 0 + 0, c1, c1)
    if MH > 2:
        P = _put(P, gidx, 2, c2, R)
        P = _put(P, gidx, MH + 0 * MH - 0 + 2, c0, c2)
        P = _put(P, gidx, MH + 1 * MH - 0 + 1, c1, c2)
        P = _put(P, gidx, MH + 2 * MH - 1 + 0, c2, c2)
    if MH > 3:
        P = _put(P, gidx, 3, c3, R)
        P = _put(P, gidx, MH + 0 * MH - 0 + 3, c0, c3)
        P = _put(P, gidx, MH + 1 * MH - 0 + 2, c1, c3)
        P = _put(P, gidx, MH + 2 * MH - 1 + 1, c2, c3)
        P = _put(P, gidx, MH + 3 * MH - 3 + 0, c3, c3)
    if MH > 4:
        P = _put(P, gidx, 4, c4, R)
        P = _put(P, gidx, MH + 0 * MH - 0 + 4, c0, c4)
        P = _put(P, gidx, MH + 1 * MH - 0 + 3, c1, c4)
        P = _put(P, gidx, MH + 2 * MH - 1 + 2, c2, c4)
        P = _put(P, gidx, MH + 3 * MH - 3 + 1, c3, c4)
        P = _put(P, gidx, MH + 4 * MH - 6 + 0, c4, c4)
    if MH > 5:
        P = _put(P, gidx, 5, c5, R)
        P = _put(P, gidx, MH + 0 * MH - 0 + 5, c0, c5)
        P = _put(P, gidx, MH + 1 * MH - 0 + 4, c1, c5)
        P = _put(P, gidx, MH + 2 * MH - 1 + 3, c2, c5)
        P = _put(P, gidx, MH + 3 * MH - 3 + 2, c3, c5)
        P = _put(P, gidx, MH + 4 * MH - 6 + 1, c4, c5)
        P = _put(P, gidx, MH + 5 * MH - 10 + 0, c5, c5)
    if MH > 6:
        P = _put(P, gidx, 6, c6, R)
        P = _put(P, gidx, MH + 0 * MH - 0 + 6, c0, c6)
        P = _put(P, gidx, MH + 1 * MH - 0 + 5, c1, c6)
        P = _put(P, gidx, MH + 2 * MH - 1 + 4, c2, c6)
        P = _put(P, gidx, MH + 3 * MH - 3 + 3, c3, c6)
        P = _put(P, gidx, MH + 4 * MH - 6 + 2, c4, c6)
        P = _put(P, gidx, MH + 5 * MH - 10 + 1, c5, c6)
        P = _put(P, gidx, MH + 6 * MH - 15 + 0, c6, c6)
    if MH > 7:
        P = _put(P, gidx, 7, c7, R)
        P = _put(P, gidx, MH + 0 * MH - 0 + 7, c0, c7)
        P = _put(P, gidx, MH + 1 * MH - 0 + 6, c1, c7)
        P = _put(P, gidx, MH + 2 * MH - 1 + 5, c2, c7)
        P = _put(P, gidx, MH + 3 * MH - 3 + 4, c3, c7)
        P = _put(P, gidx, MH + 4 * MH - 6 + 3, c4, c7)
        P = _put(P, gidx, MH + 5 * MH - 10 + 2, c5, c7)
        P = _put(P, gidx, MH + 6 * MH - 15 + 1, c6, c7)
        P = _put(P, gidx, MH + 7 * MH - 21 + 0, c7, c7)
    return P


@triton.jit(do_not_specialize=["H", "T", "k"])
def _walk_kernel(
    x_ptr,
    m_ptr,
    xi_ptr,
    a_ptr,
    b_ptr,
    c_ptr,
    lo_ptr,
    top_ptr,
    slot_ptr,
    hR_ptr,
    hY_ptr,
    part_ptr,
    scr_ptr,
    H,
    T,
    B,
    D,
    nblk,
    k,
    HAS_NOISE: tl.constexpr,
    UNIT: tl.constexpr,
    ORDER1: tl.constexpr,
    BANDED: tl.constexpr,
    PUSH: tl.constexpr,
    M: tl.constexpr,
    NG: tl.constexpr,
    NGP: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    dt: tl.constexpr = x_ptr.dtype.element_ty
    _pid, bb, blk, offs_d, dmask = batch_and_d_block(nblk, D, BLOCK_D)
    lo = tl.load(lo_ptr)
    top = tl.load(top_ptr)
    rows = tl.arange(0, BLOCK_P)
    carry = tl.zeros([BLOCK_D], dtype=dt)  # R of the lowest row of the tile above
    xcarry = tl.zeros([BLOCK_D], dtype=dt)  # old x of the lowest row of the tile above (in place)
    if PUSH:
        acc: tl.constexpr = part_ptr.dtype.element_ty
        slot = tl.load(slot_ptr)
        gidx = tl.arange(0, NGP)
        gcarry = tl.zeros([NGP], dtype=acc)  # suffix sums of the products over the steps above this tile
        pbase = (bb * nblk + blk) * NG * H
    for t in tl.range(0, tl.cdiv(H, BLOCK_P), num_stages=NUM_STAGES):
        p = (H - 1 - t * BLOCK_P - rows).to(tl.int64)  # descending window rows: row 0 is the highest
        pvalid = p >= 0
        idx = lo + p
        live = pvalid & (idx <= top)
        mask = pvalid[:, None] & dmask[None, :]
        lmask = live[:, None] & dmask[None, :]
        xo = (idx[:, None] * B + bb) * D + offs_d[None, :]
        x_lo = tl.load(x_ptr + xo, mask=mask, other=0.0).to(dt)
        if PUSH:
            x_hi = tl.load(x_ptr + xo + B * D, mask=lmask, other=0.0).to(dt)
        else:
            from_carry = (rows == 0) & (t > 0)
            x_hi = tl.load(x_ptr + xo + B * D, mask=lmask & ~from_carry[:, None], other=0.0).to(dt)
            x_hi = tl.where(from_carry[:, None], xcarry[None, :], x_hi)
            xcarry = tl.sum(tl.where(rows[:, None] == BLOCK_P - 1, x_lo, 0.0), axis=0)
        mo = tl.load(m_ptr + (p[:, None] * B + bb) * D + offs_d[None, :], mask=lmask, other=0.0).to(dt)
        if PUSH:  # issue the ring loads with the others: one memory round trip per tile
            h1 = _ring_load(hR_ptr, slot, 1, M, T, B, D, idx, bb, offs_d, lmask, acc)
            h2 = h1
            h3 = h1
            h4 = h1
            h5 = h1
            h6 = h1
            h7 = h1
            h8 = h1
            if M > 2:
                h2 = _ring_load(hR_ptr, slot, 2, M, T, B, D, idx, bb, offs_d, lmask, acc)
            if M > 3:
                h3 = _ring_load(hR_ptr, slot, 3, M, T, B, D, idx, bb, offs_d, lmask, acc)
            if M > 4:
                h4 = _ring_load(hR_ptr, slot, 4, M, T, B, D, idx, bb, offs_d, lmask, acc)
            if M > 5:
                h5 = _ring_load(hR_ptr, slot, 5, M, T, B, D, idx, bb, offs_d, lmask, acc)
            if M > 6:
                h6 = _ring_load(hR_ptr, slot, 6, M, T, B, D, idx, bb, offs_d, lmask, acc)
            if M > 7:
                h7 = _ring_load(hR_ptr, slot, 7, M, T, B, D, idx, bb, offs_d, lmask, acc)
            if M > 8:
                h8 = _ring_load(hR_ptr, slot, 8, M, T, B, D, idx, bb, offs_d, lmask, acc)
        av = tl.load(a_ptr + idx, mask=live, other=0.0).to(dt)
        bv = tl.load(b_ptr + idx, mask=live, other=0.0).to(dt)
        r = av[:, None] * x_hi + bv[:, None] * mo - x_lo
        if HAS_NOISE:
            cv = tl.load(c_ptr + idx, mask=live, other=0.0).to(dt)
            r = r + cv[:, None] * tl.load(xi_ptr + xo, mask=lmask, other=0.0).to(dt)
        r = tl.where(lmask, r, 0.0)
        if ORDER1:
            R = r
        else:
            if UNIT:
                w = tl.full([BLOCK_P], 1.0, dt)
            else:
                w = tl.load(a_ptr + idx, mask=pvalid, other=1.0).to(dt)
            rr = r
            if BANDED:
                so = (p[:, None] * B + bb) * D + offs_d[None, :]
                tl.store(scr_ptr + so, r, mask=mask)
                tl.debug_barrier()  # r_{p+k} may be this tile's own, stored by another thread
                qvalid = pvalid & (p + k < H)
                rq = tl.load(scr_ptr + so + k * B * D, mask=qvalid[:, None] & dmask[None, :], other=0.0)
                W = tl.full([BLOCK_P], 1.0, dt)
                if not UNIT:
                    for j in range(k):
                        W = W * tl.load(a_ptr + idx + j, mask=qvalid, other=1.0).to(dt)
                rr = tl.where(qvalid[:, None], r - W[:, None] * rq, r)
            A, Bv = tl.associative_scan((tl.broadcast_to(w[:, None], (BLOCK_P, BLOCK_D)), rr), 0, _affine_combine)
            R = Bv + A * carry[None, :]
            carry = tl.sum(tl.where(rows[:, None] == BLOCK_P - 1, R, 0.0), axis=0)
        if PUSH:
            ho = ((slot * T + idx[:, None]) * B + bb) * D + offs_d[None, :]
            Rh = R.to(hR_ptr.dtype.element_ty)
            tl.store(hR_ptr + ho, Rh, mask=mask)
            tl.store(hY_ptr + ho, (x_lo + R).to(hY_ptr.dtype.element_ty), mask=mask)
            c0 = tl.where(lmask, Rh.to(acc) - h1, 0.0)
            c1 = h1 - h2
            c2 = h2 - h3
            c3 = h3 - h4
            c4 = h4 - h5
            c5 = h5 - h6
            c6 = h6 - h7
            c7 = h7 - h8
            P = _gram_rows(tl.zeros([NGP, BLOCK_P], dtype=acc), gidx, R.to(acc), c0, c1, c2, c3, c4, c5, c6, c7, M - 1)
            S = tl.cumsum(P, axis=1) + gcarry[:, None]  # rows descend: the cumsum is the suffix sum over steps
            gcarry = gcarry + tl.sum(P, axis=1)
            tl.store(part_ptr + pbase + gidx[:, None] * H + p[None, :], S, mask=(gidx < NG)[:, None] & pvalid[None, :])
        else:
            tl.debug_barrier()  # every thread has read this tile's x before any row of it is overwritten
            tl.store(x_ptr + xo, (x_lo + R).to(x_ptr.dtype.element_ty), mask=lmask)


def num_slots(mh: int) -> int:
    """Product slots of ``mh`` columns: ``h`` (mh) and the upper triangle of ``G``."""
    return mh + mh * (mh + 1) // 2


def walk_config(B: int, D: int, mh: int) -> tuple[int, int, int, int]:
    """``(BLOCK_P, BLOCK_D, num_warps, num_stages)`` of the walk (step_residual's H200 defaults, with the D slice
    narrowed when ``B * D`` is too small to give every SM a couple of programs)."""
    block_p, block_d, num_warps, num_stages = (2, 128, 2, 3) if mh <= 3 else (4, 256, 4, 1)
    while block_d > 32 and B * triton.cdiv(D, block_d) < 264:
        block_d //= 2
    block_d = min(block_d, max(16, triton.next_power_of_2(max(D, 1))))
    return block_p, block_d, num_warps, num_stages


def launch_walk(
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
    *,
    hist_R=None,
    hist_Y=None,
    slot=None,
    part_dtype=None,
    config=None,
):
    """Launch ``_walk_kernel`` on contiguous tensors; returns ``(part, nblk)`` (``part`` None without a ring)."""
    H, B, D = model_out.shape
    T = x.shape[0] - 1
    push = hist_R is not None
    M = hist_R.shape[0] if push else 1
    if push and not 2 <= M <= MAX_RING:
        raise ValueError(f"the window TAA kernels support a ring of 2 .. {MAX_RING} slots, got {M}")
    k = max(1, min(order, H))
    block_p, block_d, num_warps, num_stages = config or walk_config(B, D, M - 1)
    nblk = triton.cdiv(D, block_d)
    ng = num_slots(M - 1) if push else 1
    part = torch.empty(B, nblk, ng, H, dtype=part_dtype, device=x.device) if push else None
    banded = 1 < k < H
    if banded or not push:
        num_stages = 1  # barriers around in-place / scratch traffic: no software pipelining across them
    scr = torch.empty(H, B, D, dtype=x.dtype, device=x.device) if banded else x
    if B * nblk * H == 0:
        return part, nblk
    _walk_kernel[(B * nblk,)](
        x,
        model_out,
        noise if noise is not None else x,
        a,
        b,
        c,
        lo,
        top,
        slot if push else lo,
        hist_R if push else x,
        hist_Y if push else x,
        part if push else x,
        scr,
        H,
        T,
        B,
        D,
        nblk,
        k,
        HAS_NOISE=noise is not None,
        UNIT=unit_weights,
        ORDER1=k == 1,
        BANDED=banded,
        PUSH=push,
        M=M,
        NG=ng,
        NGP=triton.next_power_of_2(ng),
        BLOCK_P=block_p,
        BLOCK_D=block_d,
        NUM_STAGES=num_stages,
        num_warps=num_warps,
    )
    return part, nblk


def contiguous_inputs(x, model_out, noise, a, b, c, lo, top):
    """The read-only inputs contiguous (copies only where they are not), scalars as 0-d views."""
    return (
        model_out.contiguous(),
        None if noise is None else noise.contiguous(),
        a.contiguous(),
        b.contiguous(),
        c.contiguous(),
        lo.reshape(()),
        top.reshape(()),
    )


def window_fixed_point_triton(
    x: torch.Tensor,
    model_out: torch.Tensor,
    noise: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    lo: torch.Tensor,
    top: torch.Tensor,
    order: int,
    unit_weights: bool = False,
    config: tuple[int, int, int, int] | None = None,
) -> None:
    """Triton ``naive.window_fixed_point``: in place ``x_s += R_s`` for ``lo <= s <= top`` (one launch, no sync).
    ``config``: ``(BLOCK_P, BLOCK_D, num_warps, num_stages)``, default ``walk_config``."""
    model_out, noise, a, b, c, lo, top = contiguous_inputs(x, model_out, noise, a, b, c, lo, top)
    xc = x if x.is_contiguous() else x.contiguous()
    launch_walk(xc, model_out, noise, a, b, c, lo, top, order, unit_weights, config=config)
    if xc is not x:
        x.copy_(xc)
