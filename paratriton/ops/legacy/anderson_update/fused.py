"""Triton kernel of the Anderson update, from explicit differences or from the ``Y = x + R`` history ring.

Ring form: with ``Y_j`` the ``j``-th newest fixed-point image (``Y_0 = x + R`` of this iteration),
``dX_j + dR_j = Y_j - Y_{j+1}``, so ``x_new = Y_0 - sum_j gamma_j (Y_j - Y_{j+1})`` reads ``m + 1`` ring slots and
writes ``x`` in place. Rows whose ``gamma`` is all zero (steps that take the plain fixed-point step) read ``Y_0``
only: the loads of the older slots are masked off, so they cost no memory traffic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._triton_grid import batch_and_d_block


@triton.jit
def _update_kernel(
    out_ptr,
    x_ptr,
    R_ptr,
    dX_ptr,
    dR_ptr,
    Y_ptr,
    g_ptr,
    n,
    D,
    nblk,
    slot,
    M_ring,
    s_op,
    s_ob,
    s_od,
    s_xp,
    s_xb,
    s_xd,
    s_Rp,
    s_Rb,
    s_Rd,
    s_cj,
    s_cp,
    s_cb,
    s_cd,
    s_ej,
    s_ep,
    s_eb,
    s_ed,
    s_Ys,
    s_Yp,
    s_Yb,
    s_Yd,
    s_gp,
    s_gb,
    s_gj,
    RING: tl.constexpr,
    MH: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    dt: tl.constexpr = out_ptr.dtype.element_ty
    pid, b, blk, offs_d, dmask = batch_and_d_block(nblk, D, BLOCK_D)
    p = (tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
    pvalid = p < n
    mask = pvalid[:, None] & dmask[None, :]
    if RING:
        off = p[:, None] * s_Yp + b * s_Yb + offs_d[None, :] * s_Yd
        slot64 = b * 0 + slot  # int64 tensor even when Triton specialises slot == 1
        acc = tl.load(Y_ptr + slot64 * s_Ys + off, mask=mask, other=0.0).to(dt)
        active = p < 0
        for j in tl.static_range(MH):
            active = active | (tl.load(g_ptr + p * s_gp + b * s_gb + j * s_gj, mask=pvalid, other=0.0) != 0)
        amask = mask & active[:, None]
        prev = acc
        for j in tl.static_range(MH):
            gj = tl.load(g_ptr + p * s_gp + b * s_gb + j * s_gj, mask=pvalid, other=0.0).to(dt)
            sj = (slot64 + M_ring - 1 - j) % M_ring
            nxt = tl.load(Y_ptr + sj * s_Ys + off, mask=amask, other=0.0).to(dt)
            acc = acc - gj[:, None] * (prev - nxt)
            prev = nxt
    else:
        acc = tl.load(x_ptr + p[:, None] * s_xp + b * s_xb + offs_d[None, :] * s_xd, mask=mask, other=0.0).to(dt)
        acc += tl.load(R_ptr + p[:, None] * s_Rp + b * s_Rb + offs_d[None, :] * s_Rd, mask=mask, other=0.0).to(dt)
        for j in tl.static_range(MH):
            gj = tl.load(g_ptr + p * s_gp + b * s_gb + j * s_gj, mask=pvalid, other=0.0).to(dt)
            dx = tl.load(
                dX_ptr + j * s_cj + p[:, None] * s_cp + b * s_cb + offs_d[None, :] * s_cd, mask=mask, other=0.0
            ).to(dt)
            dr = tl.load(
                dR_ptr + j * s_ej + p[:, None] * s_ep + b * s_eb + offs_d[None, :] * s_ed, mask=mask, other=0.0
            ).to(dt)
            acc = acc - (dx + dr) * gj[:, None]
    tl.store(out_ptr + p[:, None] * s_op + b * s_ob + offs_d[None, :] * s_od, acc, mask=mask)


def _grid(n: int, B: int, D: int, block_p: int, block_d: int) -> tuple[tuple[int, int], int]:
    nblk = triton.cdiv(D, block_d)
    return (B * nblk, triton.cdiv(n, block_p)), nblk


def anderson_update_triton(
    x: torch.Tensor,
    R: torch.Tensor,
    dX: torch.Tensor,
    dR: torch.Tensor,
    gamma: torch.Tensor,
    *,
    block_p: int = 4,
    block_d: int = 256,
    num_warps: int = 4,
) -> torch.Tensor:
    """Triton version of ``naive.anderson_update``: x, R ``[n, B, D]``, dX, dR ``[m, n, B, D]``, gamma ``[n, B, m]``
    -> new ``[n, B, D]`` tensor in x's dtype."""
    n, B, D = x.shape
    m = dX.shape[0]
    out = torch.empty(n, B, D, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    grid, nblk = _grid(n, B, D, block_p, block_d)
    _update_kernel[grid](
        out,
        x,
        R,
        dX,
        dR,
        x,
        gamma,
        n,
        D,
        nblk,
        0,
        1,
        *out.stride(),
        *x.stride(),
        *R.stride(),
        *dX.stride(),
        *dR.stride(),
        0,
        0,
        0,
        0,
        *gamma.stride(),
        RING=False,
        MH=m,
        BLOCK_P=block_p,
        BLOCK_D=block_d,
        num_warps=num_warps,
    )
    return out


def ring_update_triton(
    x: torch.Tensor,
    hist_Y: torch.Tensor,
    gamma: torch.Tensor,
    slot: int,
    *,
    block_p: int = 4,
    block_d: int = 256,
    num_warps: int = 4,
) -> None:
    """In place ``x = Y_0 - sum_j gamma_j (Y_j - Y_{j+1})`` with ``Y_j = hist_Y[(slot - j) % M]``.

    x: ``[n, B, D]`` (any strides), hist_Y: ``[M, n, B, D]``, gamma: ``[n, B, M-1]``.
    """
    n, B, D = x.shape
    M = hist_Y.shape[0]
    if x.numel() == 0:
        return
    grid, nblk = _grid(n, B, D, block_p, block_d)
    z4 = (0, 0, 0, 0)
    _update_kernel[grid](
        x,
        x,
        x,
        x,
        x,
        hist_Y,
        gamma,
        n,
        D,
        nblk,
        slot,
        M,
        *x.stride(),
        *x.stride(),
        *x.stride(),
        *z4,
        *z4,
        *hist_Y.stride(),
        *gamma.stride(),
        RING=True,
        MH=M - 1,
        BLOCK_P=block_p,
        BLOCK_D=block_d,
        num_warps=num_warps,
    )
