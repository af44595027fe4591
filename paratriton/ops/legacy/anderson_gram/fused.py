"""Triton kernels of the Anderson Gram pass: per-block partial products, then a block sum and a suffix-sum kernel.

Partial layout (shared with the fused residual pass of ``legacy/residual_pass.py``): ``part [B, nblk, NG, n]`` in the
accumulation dtype, where slot ``g = 0`` holds the per-step sum of squared order-1 residuals (residual pass only),
``g = 1 + j`` holds ``<dR_j, R>`` and ``g = 1 + MH + pair(i, j)`` (``i <= j``) holds ``<dR_i, dR_j>``. One program of
the main pass owns a ``BLOCK_D`` slice of one trajectory and every step, so per-step products need only a reduction
along D inside the program; the sum over D blocks and the suffix sum over steps happen in ``launch_reduce``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._triton_grid import batch_and_d_block


def num_slots(mh: int) -> int:
    """Number of partial slots ``NG`` for ``mh`` history columns (sum of squares, ``h`` and the upper triangle)."""
    return 1 + mh + mh * (mh + 1) // 2


@triton.jit
def _store_slot(part_ptr, base, n, g: tl.constexpr, p, pvalid, val):
    tl.store(part_ptr + base + g * n + p, val, mask=pvalid)


@triton.jit
def _gram_tile(part_ptr, base, n, p, pvalid, R, c0, c1, c2, c3, c4, MH: tl.constexpr):
    """Per-step (row) products of a ``[BLOCK_P, BLOCK_D]`` tile: ``h_j = <c_j, R>`` and ``G_ij = <c_i, c_j>``.

    Unused columns (``j >= MH``) are never touched (constexpr guards), so callers may pass any tensor for them.
    """
    _store_slot(part_ptr, base, n, 1, p, pvalid, tl.sum(c0 * R, axis=1))
    _store_slot(part_ptr, base, n, 1 + MH, p, pvalid, tl.sum(c0 * c0, axis=1))
    if MH > 1:
        _store_slot(part_ptr, base, n, 2, p, pvalid, tl.sum(c1 * R, axis=1))
        _store_slot(part_ptr, base, n, 1 + MH + 1, p, pvalid, tl.sum(c0 * c1, axis=1))
        _store_slot(part_ptr, base, n, 1 + MH + MH, p, pvalid, tl.sum(c1 * c1, axis=1))
    if MH > 2:
        _store_slot(part_ptr, base, n, 3, p, pvalid, tl.sum(c2 * R, axis=1))
        _store_slot(part_ptr, base, n, 1 + MH + 2, p, pvalid, tl.sum(c0 * c2, axis=1))
        _store_slot(part_ptr, base, n, 1 + MH + MH + 1, p, pvalid, tl.sum(c1 * c2, axis=1))
        _store_slot(part_ptr, base, n, 1 + MH + 2 * MH - 1, p, pvalid, tl.sum(c2 * c2, axis=1))
    if MH > 3:
        _store_slot(part_ptr, base, n, 4, p, pvalid, tl.sum(c3 * R, axis=1))
        _store_slot(part_ptr, base, n, 1 + MH + 3, p, pvalid, tl.sum(c0 * c3, axis=1))
        _store_slot(part_ptr, base, n, 1 + MH + MH + 2, p, pvalid, tl.sum(c1 * c3, axis=1))
        _store_slot(part_ptr, base, n, 1 + MH + 2 * MH - 1 + 1, p, pvalid, tl.sum(c2 * c3, axis=1))
        _store_slot(part_ptr, base, n, 1 + MH + 3 * MH - 3, p, pvalid, tl.sum(c3 * c3, axis=1))
    if MH > 4:
        _store_slot(part_ptr, base, n, 5, p, pvalid, tl.sum(c4 * R, axis=1))
        _store_slot(part_ptr, base, n, 1 + MH + 4, p, pvalid, tl.sum(c0 * c4, axis=1))
        _store_slot(part_ptr, base, n, 1 + MH + MH + 3, p, pvalid, tl.sum(c1 * c4, axis=1))
        _store_slot(part_ptr, base, n, 1 + MH + 2 * MH - 1 + 2, p, pvalid, tl.sum(c2 * c4, axis=1))
        _store_slot(part_ptr, base, n, 1 + MH + 3 * MH - 3 + 1, p, pvalid, tl.sum(c3 * c4, axis=1))
        _store_slot(part_ptr, base, n, 1 + MH + 4 * MH - 6, p, pvalid, tl.sum(c4 * c4, axis=1))


@triton.jit
def _load_col(ptr, j: tl.constexpr, s_j, off, mask, dt: tl.constexpr):
    return tl.load(ptr + j * s_j + off, mask=mask, other=0.0).to(dt)


@triton.jit
def _gram_direct_kernel(
    part_ptr,
    dR_ptr,
    R_ptr,
    n,
    D,
    nblk,
    s_cj,
    s_cp,
    s_cb,
    s_cd,
    s_Rp,
    s_Rb,
    s_Rd,
    MH: tl.constexpr,
    NG: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Partial Gram products of explicit columns ``dR [MH, n, B, D]`` and ``R [n, B, D]`` (one program per D block)."""
    dt: tl.constexpr = part_ptr.dtype.element_ty
    pid, b, blk, offs_d, dmask = batch_and_d_block(nblk, D, BLOCK_D)
    rows = tl.arange(0, BLOCK_P)
    base = (b * nblk + blk) * NG * n
    for t in range(0, tl.cdiv(n, BLOCK_P)):
        p = t * BLOCK_P + rows
        pvalid = p < n
        p64 = p.to(tl.int64)
        mask = pvalid[:, None] & dmask[None, :]
        R = tl.load(R_ptr + p64[:, None] * s_Rp + b * s_Rb + offs_d[None, :] * s_Rd, mask=mask, other=0.0).to(dt)
        off = p64[:, None] * s_cp + b * s_cb + offs_d[None, :] * s_cd
        c0 = _load_col(dR_ptr, 0, s_cj, off, mask, dt)
        c1 = c0
        c2 = c0
        c3 = c0
        c4 = c0
        if MH > 1:
            c1 = _load_col(dR_ptr, 1, s_cj, off, mask, dt)
        if MH > 2:
            c2 = _load_col(dR_ptr, 2, s_cj, off, mask, dt)
        if MH > 3:
            c3 = _load_col(dR_ptr, 3, s_cj, off, mask, dt)
        if MH > 4:
            c4 = _load_col(dR_ptr, 4, s_cj, off, mask, dt)
        _gram_tile(part_ptr, base, n, p, pvalid, R, c0, c1, c2, c3, c4, MH)


@triton.jit
def _block_sum_kernel(
    part_ptr,
    tot_ptr,
    n,
    nblk,
    g_start,
    NG: tl.constexpr,
    P_CHUNK: tl.constexpr,
    BLK_CHUNK: tl.constexpr,
):
    """Program ``(b, g, chunk)``: ``tot[b, g, p] = sum_blk part[b, blk, g, p]`` for ``P_CHUNK`` steps ``p``."""
    b = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1) + g_start
    p = tl.program_id(2) * P_CHUNK + tl.arange(0, P_CHUNK)
    pmask = p < n
    acc = tl.zeros([P_CHUNK], dtype=part_ptr.dtype.element_ty)
    for k0 in range(0, nblk, BLK_CHUNK):
        kk = (k0 + tl.arange(0, BLK_CHUNK)).to(tl.int64)
        ptrs = part_ptr + ((b * nblk + kk[:, None]) * NG + g) * n + p[None, :]
        acc += tl.sum(tl.load(ptrs, mask=(kk[:, None] < nblk) & pmask[None, :], other=0.0), axis=0)
    tl.store(tot_ptr + (b * NG + g) * n + p, acc, mask=pmask)


@triton.jit
def _gram_finish_kernel(
    tot_ptr,
    G_ptr,
    h_ptr,
    rms_ptr,
    thr_ptr,
    top_ptr,
    n,
    B,
    D,
    g_start,
    MH: tl.constexpr,
    NG: tl.constexpr,
    N_PAD: tl.constexpr,
    WITH_SUMSQ: tl.constexpr,
):
    """Program ``(b, g)``: from the per-step totals, either the RMS and the top unconverged step (``g = 0``) or the
    suffix sum over steps (``sum_{q >= p}``) written into ``G [n, B, MH, MH]`` / ``h [n, B, MH]``.

    Steps are read in reverse order (``q = n - 1 - j``) so that a forward cumsum gives the suffix sum.
    """
    b = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1) + g_start
    j = tl.arange(0, N_PAD)
    jmask = j < n
    q = n - 1 - j
    acc = tl.load(tot_ptr + (b * NG + g) * n + q, mask=jmask, other=0.0)
    if WITH_SUMSQ:
        if g == 0:
            rms = tl.sqrt(acc / D)
            tl.store(rms_ptr + q * B + b, rms, mask=jmask)
            thr = tl.load(thr_ptr + q, mask=jmask, other=0.0).to(rms.dtype)
            # NaN compares false, as in the reference; the solver checks finiteness separately
            top = tl.max(tl.where(jmask & (rms > thr), q, -1), axis=0)
            tl.atomic_max(top_ptr, top.to(tl.int64))
        else:
            _store_suffix(G_ptr, h_ptr, g, acc, q, jmask, b, B, MH)
    else:
        _store_suffix(G_ptr, h_ptr, g, acc, q, jmask, b, B, MH)


@triton.jit
def _store_suffix(G_ptr, h_ptr, g, acc, q, jmask, b, B, MH: tl.constexpr):
    suffix = tl.cumsum(acc, axis=0)
    # invert the slot numbering of _gram_tile: g in [1, MH] is h_{g-1}, then the upper triangle row by row
    k = g - 1 - MH
    gi = k * 0 - 1
    gj = g - 1
    for i in tl.static_range(MH):
        start = i * MH - i * (i - 1) // 2
        if k >= start:
            gi = k * 0 + i
            gj = i + k - start
    if gi < 0:
        tl.store(h_ptr + (q * B + b) * MH + gj, suffix, mask=jmask)
    else:
        tl.store(G_ptr + ((q * B + b) * MH + gi) * MH + gj, suffix, mask=jmask)
        tl.store(G_ptr + ((q * B + b) * MH + gj) * MH + gi, suffix, mask=jmask)


def launch_reduce(
    part: torch.Tensor,
    G: torch.Tensor,
    h: torch.Tensor,
    rms: torch.Tensor | None,
    threshold: torch.Tensor | None,
    top: torch.Tensor | None,
    n: int,
    B: int,
    D: int,
    mh: int,
    with_sumsq: bool,
) -> None:
    """Reduce ``part [B, nblk, NG, n]`` into ``G [n, B, mh, mh]``, ``h [n, B, mh]`` (contiguous, part's dtype) and,
    when ``with_sumsq``, ``rms [n, B]`` plus an atomic max into ``top`` (which must hold -1 beforehand).

    Two launches: a block sum parallel over (trajectory, slot, step chunk), then a per-(trajectory, slot) finish.
    """
    ng, nblk = part.shape[2], part.shape[1]
    g_start = 0 if with_sumsq else 1
    if ng - g_start <= 0:
        return
    tot = torch.empty(B, ng, n, dtype=part.dtype, device=part.device)
    p_chunk = min(triton.next_power_of_2(n), 16)
    blk_chunk = max(1, min(triton.next_power_of_2(nblk), 2048 // p_chunk))
    _block_sum_kernel[(B, ng - g_start, triton.cdiv(n, p_chunk))](
        part, tot, n, nblk, g_start, NG=ng, P_CHUNK=p_chunk, BLK_CHUNK=blk_chunk, num_warps=4
    )
    dummy = part
    _gram_finish_kernel[(B, ng - g_start)](
        tot,
        G if G.numel() else dummy,
        h if h.numel() else dummy,
        rms if rms is not None else dummy,
        threshold if threshold is not None else dummy,
        top if top is not None else dummy,
        n,
        B,
        D,
        g_start,
        MH=max(mh, 1),
        NG=ng,
        N_PAD=triton.next_power_of_2(max(n, 1)),
        WITH_SUMSQ=with_sumsq,
        num_warps=4,
    )


def anderson_gram_triton(
    dR: torch.Tensor, R: torch.Tensor, *, block_p: int = 8, block_d: int = 128, num_warps: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of ``naive.anderson_gram``: dR ``[m, n, B, D]``, R ``[n, B, D]`` (any float dtypes, any
    strides) -> ``G [n, B, m, m]``, ``h [n, B, m]`` in ``promote(dR.dtype, float32)``."""
    m, n, B, D = dR.shape
    acc = torch.promote_types(dR.dtype, torch.float32)
    alloc = torch.empty if m * n * B * D > 0 and m <= 5 else torch.zeros  # the reduction writes every entry
    G = alloc(n, B, m, m, dtype=acc, device=dR.device)
    h = alloc(n, B, m, dtype=acc, device=dR.device)
    if m == 0 or n == 0 or B == 0:
        return G, h
    if m > 5:
        raise ValueError(f"the Triton Gram pass supports at most 5 history columns, got {m}")
    if D == 0:
        return G, h
    nblk = triton.cdiv(D, block_d)
    ng = num_slots(m)
    part = torch.empty(B, nblk, ng, n, dtype=acc, device=dR.device)
    _gram_direct_kernel[(B * nblk,)](
        part,
        dR,
        R,
        n,
        D,
        nblk,
        *dR.stride(),
        *R.stride(),
        MH=m,
        NG=ng,
        BLOCK_P=block_p,
        BLOCK_D=block_d,
        num_warps=num_warps,
    )
    launch_reduce(part, G, h, None, None, None, n, B, D, m, with_sumsq=False)
    return G, h
