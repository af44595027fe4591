"""Triton kernel of the end of an engine iteration (``naive.window_close`` is the oracle).

One program, one launch in place of the reference's sixteen small ones, capturable (every index is loaded from a
device pointer, never read on the host). The reopen scan treats the row of ``top`` as zero instead of reading back
its own store, so no barrier is needed. Tensors are taken contiguous (the mutated ones must be), so every offset
follows from T and B.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._window import require_contiguous


@triton.jit(do_not_specialize=["H", "T"])
def _close_kernel(
    worst_ptr,
    rms_all_ptr,
    thr_ptr,
    log_F_ptr,
    log_res_ptr,
    n_it_ptr,
    anchor_ptr,
    top_ptr,
    fits_ptr,
    lo_ptr,
    H,
    T,
    B,
    REOPEN: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    n = tl.load(n_it_ptr)
    anchor = tl.load(anchor_ptr)
    top = tl.load(top_ptr)
    lo = tl.load(lo_ptr)
    tl.store(log_F_ptr + n, anchor)
    for b0 in range(0, B, BLOCK_B):
        bb = b0 + tl.arange(0, BLOCK_B)
        tl.store(rms_all_ptr + top * B + bb, tl.zeros([BLOCK_B], dtype=rms_all_ptr.dtype.element_ty), mask=bb < B)
    for p0 in range(0, H, BLOCK_T):
        p = p0 + tl.arange(0, BLOCK_T)
        pm = p < H
        tl.store(log_res_ptr + n * T + lo + p, tl.load(worst_ptr + p, mask=pm), mask=pm)
    tl.store(n_it_ptr, n + (anchor > 0).to(n.dtype))
    if REOPEN:
        fits = tl.load(fits_ptr) != 0
        opened = tl.zeros((), dtype=top.dtype)
        for t0 in range(0, T, BLOCK_T):
            t = (t0 + tl.arange(0, BLOCK_T)).to(tl.int64)
            tm = t < T
            worst = tl.full([BLOCK_T], float("-inf"), rms_all_ptr.dtype.element_ty)
            nan = tl.zeros([BLOCK_T], dtype=tl.int1)
            for b0 in range(0, B, BLOCK_B):
                bb = b0 + tl.arange(0, BLOCK_B)
                m = tm[:, None] & (bb < B)[None, :]
                v = tl.load(rms_all_ptr + t[:, None] * B + bb[None, :], mask=m, other=float("-inf"))
                worst = tl.maximum(worst, tl.max(v, axis=1))
                nan = nan | (tl.sum((v != v).to(tl.int32), axis=1) > 0)
            worst = tl.where(t == top, 0.0, worst)  # the row zeroed above
            over = tm & ~nan & (worst > tl.load(thr_ptr + t, mask=tm, other=0.0))  # amax: NaN if any is NaN
            opened = tl.maximum(opened, tl.max(tl.where(over, t + 1, 0), axis=0))
        top = tl.where((top == 0) & ~fits, opened, top)
    tl.store(anchor_ptr, top)


def window_close_triton(
    worst: torch.Tensor,
    rms_all: torch.Tensor,
    threshold: torch.Tensor,
    log_F: torch.Tensor,
    log_res: torch.Tensor,
    n_it: torch.Tensor,
    anchor: torch.Tensor,
    top: torch.Tensor,
    fits: torch.Tensor,
    lo: torch.Tensor,
    reopen: bool,
) -> None:
    """Triton ``naive.window_close`` (same arguments and in-place updates). Nothing is read on the host and nothing
    syncs."""
    require_contiguous("window_close", rms_all=rms_all, log_F=log_F, log_res=log_res)
    H = worst.shape[0]
    T, B = rms_all.shape
    block_b = min(triton.next_power_of_2(max(B, 1)), 128)
    _close_kernel[(1,)](
        worst.contiguous(), rms_all, threshold.contiguous(), log_F, log_res, n_it, anchor, top.reshape(()),
        fits.reshape(()).view(torch.int8), lo.reshape(()), H, T, B,
        REOPEN=bool(reopen), BLOCK_T=max(1, 1024 // block_b), BLOCK_B=block_b, num_warps=4,
    )  # fmt: skip
