"""Triton kernel of the engine's per-step thresholds (``naive.thresholds`` is the oracle): one elementwise launch
in place of the reference's seven. Tensors are taken contiguous (the wrapper copies anything that is not)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["T"])
def _thresholds_kernel(
    out_ptr, thr0_ptr, g_ptr, geff_ptr, floor_ptr, stall_ptr, T, stall_iters, stall_roundings, BLOCK: tl.constexpr
):
    t = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = t < T
    floor = tl.load(floor_ptr + t, mask=m, other=0.0)
    geff = tl.load(geff_ptr + t, mask=m, other=1.0)
    thr = tl.maximum(tl.load(thr0_ptr + t, mask=m, other=0.0) * tl.load(g_ptr + t, mask=m, other=0.0) / geff, floor)
    stalled = tl.load(stall_ptr + t, mask=m, other=0) >= stall_iters
    tl.store(out_ptr + t, tl.where(stalled, tl.maximum(thr, stall_roundings * floor), thr), mask=m)


def thresholds_triton(
    thr0: torch.Tensor,
    g: torch.Tensor,
    geff: torch.Tensor,
    floor: torch.Tensor,
    stall: torch.Tensor,
    stall_iters: int,
    stall_roundings: float,
) -> torch.Tensor:
    """Triton ``naive.thresholds``: ``[T]`` in ``thr0``'s dtype. Nothing is read on the host."""
    T = thr0.shape[0]
    out = torch.empty_like(thr0)
    block = min(1024, triton.next_power_of_2(max(T, 1)))
    _thresholds_kernel[(triton.cdiv(T, block),)](
        out, thr0.contiguous(), g.contiguous(), geff.contiguous(), floor.contiguous(), stall.contiguous(), T,
        int(stall_iters), float(stall_roundings), BLOCK=block, num_warps=4,
    )  # fmt: skip
    return out
