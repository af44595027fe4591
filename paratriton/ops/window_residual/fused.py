"""Triton kernels of the window residual test (``naive.window_residual`` is the oracle).

Two launches, both capturable (``lo`` and ``anchor`` are loaded from their device pointers, never read on the host):

1. ``_sumsq_kernel``: program ``(b * nsplit + split, step tile)`` reads its ``BLOCK_P`` steps of trajectory ``b``
   over ``chunks`` consecutive ``BLOCK_D`` slices of D (x rows ``s`` and ``s + 1``, the model output and the noise,
   each once) and writes the per-step partial sum of squared order-1 residuals into ``part [B, nsplit, H]``.
2. ``_rms_top_kernel`` (one program): sums the partials in a fixed order (deterministic), masks the steps at or
   above the anchor with ``where`` (a NaN in a padded row never leaks), writes ``rms [H, B]`` and reduces ``top``
   and ``bad``.

Tensors are taken contiguous (the wrapper copies anything that is not), so every offset follows from B and D.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_grid import split_config, split_step_tile


@triton.jit(do_not_specialize=["H", "nsplit", "chunks"])
def _sumsq_kernel(
    part_ptr,
    x_ptr,
    m_ptr,
    xi_ptr,
    a_ptr,
    b_ptr,
    c_ptr,
    lo_ptr,
    H,
    B,
    D,
    nsplit,
    chunks,
    HAS_NOISE: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    dt: tl.constexpr = x_ptr.dtype.element_ty
    bb, sp, p, pvalid, idx = split_step_tile(lo_ptr, H, nsplit, BLOCK_P)
    av = tl.load(a_ptr + idx, mask=pvalid, other=0.0).to(dt)
    bv = tl.load(b_ptr + idx, mask=pvalid, other=0.0).to(dt)
    if HAS_NOISE:
        cv = tl.load(c_ptr + idx, mask=pvalid, other=0.0).to(dt)
    xrow = (idx * B + bb) * D  # x [T+1, B, D] and noise [T, B, D] share the row offsets
    mrow = (p * B + bb) * D  # model_out [H, B, D]
    acc = tl.zeros([BLOCK_P, BLOCK_D], dtype=dt)
    d0 = sp.to(tl.int64) * chunks * BLOCK_D
    for i in range(chunks):
        d = d0 + i * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
        mask = pvalid[:, None] & (d < D)[None, :]
        xo = xrow[:, None] + d[None, :]
        x_lo = tl.load(x_ptr + xo, mask=mask, other=0.0).to(dt)
        x_hi = tl.load(x_ptr + xo + B * D, mask=mask, other=0.0).to(dt)
        mo = tl.load(m_ptr + mrow[:, None] + d[None, :], mask=mask, other=0.0).to(dt)
        r = av[:, None] * x_hi + bv[:, None] * mo - x_lo
        if HAS_NOISE:
            r = r + cv[:, None] * tl.load(xi_ptr + xo, mask=mask, other=0.0).to(dt)
        acc += r * r
    tl.store(part_ptr + (bb * nsplit + sp) * H + p, tl.sum(acc, axis=1), mask=pvalid)


@triton.jit(do_not_specialize=["H", "nsplit"])
def _rms_top_kernel(
    part_ptr, rms_ptr, top_ptr, bad_ptr, thr_ptr, lo_ptr, anchor_ptr, H, B, D, nsplit, CH: tl.constexpr
):
    lo = tl.load(lo_ptr)
    anchor = tl.load(anchor_ptr)
    best = lo
    nbad = tl.zeros((), dtype=tl.int32)
    for j0 in range(0, H * B, CH):
        j = j0 + tl.arange(0, CH)
        jm = j < H * B
        p = (j // B).to(tl.int64)
        bb = (j % B).to(tl.int64)
        ss = tl.load(part_ptr + bb * nsplit * H + p, mask=jm, other=0.0)
        for s in range(1, nsplit):
            ss += tl.load(part_ptr + (bb * nsplit + s) * H + p, mask=jm, other=0.0)
        idx = lo + p
        active = jm & (idx < anchor)
        rms = tl.where(active, tl.sqrt(ss / D), 0.0)
        tl.store(rms_ptr + j, rms, mask=jm)  # rms [H, B]: flat index p * B + b
        thr = tl.load(thr_ptr + idx, mask=jm, other=0.0).to(rms.dtype)
        unconverged = active & ~(rms <= thr)  # "not <=": a NaN residual is never converged
        best = tl.maximum(best, tl.max(tl.where(unconverged, idx, -1), axis=0))
        nbad = tl.maximum(nbad, tl.max((jm & ~(rms < float("inf"))).to(tl.int32), axis=0))
    tl.store(top_ptr, best)
    tl.store(bad_ptr, nbad != 0)


def window_residual_triton(
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
    """Triton ``naive.window_residual``: ``rms [H, B]`` (x's dtype), ``top`` (0-d int64), ``bad`` (0-d bool).
    Nothing is read on the host and nothing syncs."""
    H, B, D = model_out.shape
    dev = x.device
    x, model_out = x.contiguous(), model_out.contiguous()
    noise = None if noise is None else noise.contiguous()
    a, b, c, threshold = a.contiguous(), b.contiguous(), c.contiguous(), threshold.contiguous()
    lo, anchor = lo.reshape(()), anchor.reshape(())
    rms = torch.empty(H, B, dtype=x.dtype, device=dev)
    top = torch.empty((), dtype=torch.int64, device=dev)
    bad = torch.empty((), dtype=torch.bool, device=dev)
    block_p, block_d, num_warps, nsplit, chunks = split_config(H, B, D)
    part = torch.empty(B, nsplit, H, dtype=x.dtype, device=dev)
    if B * H > 0:
        _sumsq_kernel[(B * nsplit, triton.cdiv(H, block_p))](
            part,
            x,
            model_out,
            noise if noise is not None else x,
            a,
            b,
            c,
            lo,
            H,
            B,
            D,
            nsplit,
            chunks,
            HAS_NOISE=noise is not None,
            BLOCK_P=block_p,
            BLOCK_D=block_d,
            num_warps=num_warps,
        )
    _rms_top_kernel[(1,)](part, rms, top, bad, threshold, lo, anchor, H, B, D, nsplit, CH=256, num_warps=4)
    return rms, top, bad
