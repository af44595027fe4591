"""Triton kernel of the engine's per-step tracking (``naive.window_track`` is the oracle).

One program, one launch in place of the reference's two dozen small ones, capturable (``top``, ``lo`` and ``anchor``
are loaded from their device pointers, never read on the host):

1. the window's steps in tiles of ``BLOCK_P`` x ``BLOCK_B``: the largest residual over the batch (NaN if any is
   NaN, as ``amax``), then ``rms_all``, ``best`` and ``stall`` at the live steps;
2. with ``HAS_TOL``, after a barrier (phase 1's stores are this program's own): every step's ``geff``-weighted
   residual summed per trajectory in a fixed order, the sample test, and ``top``.

Tensors are taken contiguous (the wrapper copies anything that is not), so every offset follows from B.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._window import require_contiguous


@triton.jit(do_not_specialize=["H", "T"])
def _track_kernel(
    rms_ptr,
    rms_all_ptr,
    best_ptr,
    stall_ptr,
    geff_ptr,
    floor_ptr,
    top_ptr,
    lo_ptr,
    anchor_ptr,
    top_out_ptr,
    fits_ptr,
    worst_ptr,
    tol,
    H,
    T,
    B,
    HAS_TOL: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    lo = tl.load(lo_ptr)
    anchor = tl.load(anchor_ptr)
    for p0 in range(0, H, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        pvalid = p < H
        idx = (lo + p).to(tl.int64)
        live = pvalid & (idx < anchor)
        worst = tl.full([BLOCK_P], float("-inf"), rms_ptr.dtype.element_ty)
        nan = tl.zeros([BLOCK_P], dtype=tl.int1)
        for b0 in range(0, B, BLOCK_B):
            bb = b0 + tl.arange(0, BLOCK_B)
            m = pvalid[:, None] & (bb < B)[None, :]
            r = tl.load(rms_ptr + p[:, None] * B + bb[None, :], mask=m, other=float("-inf"))
            worst = tl.maximum(worst, tl.max(r, axis=1))
            nan = nan | (tl.sum((r != r).to(tl.int32), axis=1) > 0)
            tl.store(rms_all_ptr + idx[:, None] * B + bb[None, :], r, mask=m & live[:, None])
        worst = tl.where(nan, float("nan"), worst)
        tl.store(worst_ptr + p, worst, mask=pvalid)
        low = tl.load(best_ptr + idx, mask=pvalid, other=0.0)
        st = tl.load(stall_ptr + idx, mask=pvalid, other=0)
        tl.store(stall_ptr + idx, tl.where(worst < 0.5 * low, 0, st + 1), mask=live)
        # torch.minimum: NaN if either is NaN
        tl.store(best_ptr + idx, tl.where(nan | (low != low), float("nan"), tl.minimum(low, worst)), mask=live)
    top = tl.load(top_ptr)
    fits = tl.zeros((), dtype=tl.int1)
    if HAS_TOL:
        tl.debug_barrier()  # phase 1's stores to rms_all, read below by other threads of this program
        sums = tl.zeros([BLOCK_B], dtype=rms_ptr.dtype.element_ty)
        worst_sum = tl.full((), float("-inf"), rms_ptr.dtype.element_ty)
        floor_sum = tl.zeros((), dtype=rms_ptr.dtype.element_ty)
        for t0 in range(0, T, BLOCK_P):
            t = t0 + tl.arange(0, BLOCK_P)
            tvalid = t < T
            gv = tl.load(geff_ptr + t, mask=tvalid, other=0.0)
            floor_sum += tl.sum(gv * tl.load(floor_ptr + t, mask=tvalid, other=0.0), axis=0)
        nan_sum = tl.zeros((), dtype=tl.int1)
        for b0 in range(0, B, BLOCK_B):
            bb = b0 + tl.arange(0, BLOCK_B)
            sums = tl.zeros([BLOCK_B], dtype=rms_ptr.dtype.element_ty)
            for t0 in range(0, T, BLOCK_P):
                t = (t0 + tl.arange(0, BLOCK_P)).to(tl.int64)
                tvalid = t < T
                m = tvalid[:, None] & (bb < B)[None, :]
                v = tl.load(rms_all_ptr + t[:, None] * B + bb[None, :], mask=m, other=0.0)
                gv = tl.load(geff_ptr + t, mask=tvalid, other=0.0)
                sums += tl.sum(tl.where(m, gv[:, None] * v, 0.0), axis=0)
            sums = tl.where(bb < B, sums, float("-inf"))
            worst_sum = tl.maximum(worst_sum, tl.max(sums, axis=0))
            nan_sum = nan_sum | (tl.sum((sums != sums).to(tl.int32), axis=0) > 0)
        fits = ~nan_sum & (worst_sum - floor_sum <= tol)  # "<=": a NaN bound never fits
        top = tl.where((lo == 0) & fits, 0, top)
    tl.store(top_out_ptr, top)
    tl.store(fits_ptr, fits.to(tl.int8))


def window_track_triton(
    rms: torch.Tensor,
    rms_all: torch.Tensor,
    best: torch.Tensor,
    stall: torch.Tensor,
    geff: torch.Tensor,
    floor: torch.Tensor,
    top: torch.Tensor,
    lo: torch.Tensor,
    anchor: torch.Tensor,
    tol: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton ``naive.window_track`` (same arguments, results and in-place updates). Nothing is read on the host
    and nothing syncs. The mutated tensors must be contiguous (the engine's are); the others are copied if not."""
    require_contiguous("window_track", rms_all=rms_all, best=best, stall=stall)
    H, B = rms.shape
    T = rms_all.shape[0]
    rms, geff, floor = rms.contiguous(), geff.contiguous(), floor.contiguous()
    top_out = torch.empty((), dtype=torch.int64, device=rms.device)
    fits = torch.empty((), dtype=torch.bool, device=rms.device)
    worst = rms.new_empty(H)
    block_b = min(triton.next_power_of_2(max(B, 1)), 128)
    _track_kernel[(1,)](
        rms, rms_all, best, stall, geff, floor, top.reshape(()), lo.reshape(()), anchor.reshape(()), top_out,
        fits.view(torch.int8), worst, 0.0 if tol is None else float(tol), H, T, B,
        HAS_TOL=tol is not None, BLOCK_P=max(1, 1024 // block_b), BLOCK_B=block_b, num_warps=4,
    )  # fmt: skip
    return top_out, fits, worst
