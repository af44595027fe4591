"""Triton kernel of the masked, regularised m x m solves: a block of systems per program, Gauss-Jordan unrolled.

The regularised system is symmetric positive definite (Gram plus a positive ridge), so elimination without
pivoting is stable. Each program holds ``BS`` systems as a ``[BS, MP, MP]`` tile (``MP`` = m rounded up to a power
of two, padding rows are identity rows) and eliminates one column per unrolled step with masked row/column picks.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _masked_lstsq_kernel(
    out_ptr,
    G_ptr,
    h_ptr,
    nc_ptr,
    n,
    B,
    ridge,
    ridge_lo,
    floor,
    s_Gp,
    s_Gb,
    s_Gi,
    s_Gj,
    s_hp,
    s_hb,
    s_hj,
    s_np,
    MH: tl.constexpr,
    MP: tl.constexpr,
    BS: tl.constexpr,
):
    dt: tl.constexpr = out_ptr.dtype.element_ty
    s = tl.program_id(0) * BS + tl.arange(0, BS)
    smask = s < n * B
    p = (s // B).to(tl.int64)
    bb = (s % B).to(tl.int64)
    i = tl.arange(0, MP)
    nc = tl.load(nc_ptr + p * s_np, mask=smask, other=0).to(tl.int32)
    valid = (i[None, :] < nc[:, None]) & (i[None, :] < MH) & smask[:, None]  # [BS, MP]
    pair = valid[:, :, None] & valid[:, None, :]
    gptr = (
        G_ptr + p[:, None, None] * s_Gp + bb[:, None, None] * s_Gb + i[None, :, None] * s_Gi + i[None, None, :] * s_Gj
    )
    A = tl.load(gptr, mask=pair, other=0.0).to(dt)
    eye = i[None, :, None] == i[None, None, :]
    trace = tl.sum(tl.sum(tl.where(eye, A, 0.0), axis=2), axis=1)
    k = tl.maximum(nc, 1).to(dt)
    # Triton passes Python floats as float32: the ridge arrives as two float32 parts, summed in the state dtype
    lam = (trace * ridge + trace * ridge_lo) / k + floor
    # masked (and padding) columns get an identity row, so their gamma is exactly 0
    diag = tl.where(valid, lam[:, None], 1.0)
    A = A + tl.where(eye, diag[:, :, None], 0.0)
    rhs = tl.load(h_ptr + p[:, None] * s_hp + bb[:, None] * s_hb + i[None, :] * s_hj, mask=valid, other=0.0).to(dt)
    for kk in tl.static_range(MH):
        row = tl.sum(tl.where(i[None, :, None] == kk, A, 0.0), axis=1)  # A[:, kk, :]
        col = tl.sum(tl.where(i[None, None, :] == kk, A, 0.0), axis=2)  # A[:, :, kk]
        piv = tl.sum(tl.where(i[None, :] == kk, row, 0.0), axis=1)
        rk = tl.sum(tl.where(i[None, :] == kk, rhs, 0.0), axis=1)
        f = tl.where(i[None, :] == kk, 0.0, col / piv[:, None])
        A = A - f[:, :, None] * row[:, None, :]
        rhs = rhs - f * rk[:, None]
    d = tl.sum(tl.where(eye, A, 0.0), axis=2)
    gamma = rhs / d
    tl.store(out_ptr + s.to(tl.int64)[:, None] * MH + i[None, :], gamma, mask=smask[:, None] & (i[None, :] < MH))


def _float32_parts(v: float) -> tuple[float, float]:
    """``v = hi + lo`` with ``hi`` and ``lo`` float32 values (``hi + lo`` carries about 48 bits of ``v``)."""
    hi = float(torch.tensor(v, dtype=torch.float32))
    return hi, float(torch.tensor(v - hi, dtype=torch.float32))


def masked_lstsq_triton(
    G: torch.Tensor,
    h: torch.Tensor,
    num_cols: torch.Tensor,
    ridge: float = 1e-3,
    floor: float = 1e-30,
    *,
    block: int | None = None,
) -> torch.Tensor:
    """Triton version of ``naive.masked_lstsq``: G ``[n, B, m, m]``, h ``[n, B, m]``, num_cols ``[n]`` int ->
    gamma ``[n, B, m]`` in G's dtype (computed in at least float32)."""
    n, B, m = G.shape[0], G.shape[1], G.shape[-1]
    out_dt = G.dtype
    work_dt = torch.promote_types(G.dtype, torch.float32)
    out = torch.empty(n, B, m, dtype=work_dt, device=G.device)
    if n * B == 0 or m == 0:
        return out.to(out_dt)
    if m > 8:
        raise ValueError(f"the Triton least squares supports at most 8 columns, got {m}")
    mp = triton.next_power_of_2(m)
    # a [BS, MP, MP] tile per program: keep it near 8 values per thread so nothing spills
    block = block or max(8, 1024 // (mp * mp))
    _masked_lstsq_kernel[(triton.cdiv(n * B, block),)](
        out,
        G,
        h,
        num_cols,
        n,
        B,
        *_float32_parts(ridge),
        float(floor),
        *G.stride(),
        *h.stride(),
        num_cols.stride(0),
        MH=m,
        MP=mp,
        BS=block,
        num_warps=4,
    )
    return out if out_dt == work_dt else out.to(out_dt)
