"""The program-grid conventions the fused kernels share.

* ``batch_and_d_block``: axis 0 enumerates (trajectory ``b``, D-block ``blk``).
* ``split_step_tile`` / ``split_config``: the per-step reductions over D (``window_residual``, ``window_gains``):
  axis 0 enumerates (trajectory ``b``, D-split ``sp``), axis 1 tiles of ``BLOCK_P`` window steps; each program sums
  ``chunks`` consecutive ``BLOCK_D`` slices of its split, and a one-program pass adds the splits in a fixed order.
"""

import triton
import triton.language as tl


@triton.jit
def batch_and_d_block(nblk, D, BLOCK_D: tl.constexpr):
    """Return ``pid``, trajectory ``b`` (int64), D-block ``blk`` and the block's int64 offsets and mask ``< D``."""
    pid = tl.program_id(0)
    b = (pid // nblk).to(tl.int64)
    blk = pid % nblk
    offs_d = (blk * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)
    return pid, b, blk, offs_d, offs_d < D


@triton.jit
def split_step_tile(lo_ptr, H, nsplit, BLOCK_P: tl.constexpr):
    """Return trajectory ``b`` (int64), split ``sp``, the tile's window positions ``p`` (int64), their mask ``< H``
    and their steps ``lo + p`` (``lo`` loaded from the device)."""
    pid = tl.program_id(0)
    b = (pid // nsplit).to(tl.int64)
    p = (tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
    return b, pid % nsplit, p, p < H, tl.load(lo_ptr) + p


def split_config(H: int, B: int, D: int) -> tuple[int, int, int, int, int]:
    """``(BLOCK_P, BLOCK_D, num_warps, nsplit, chunks)``: enough programs to fill the GPU (~1024), few partials to
    add; grid ``(B * nsplit, cdiv(H, BLOCK_P))``."""
    block_p, block_d, num_warps = 4, min(512, max(16, triton.next_power_of_2(max(D, 1)))), 4
    nchunks = triton.cdiv(max(D, 1), block_d)
    want = max(1, 1024 // max(1, B * triton.cdiv(H, block_p)))
    nsplit = triton.cdiv(nchunks, triton.cdiv(nchunks, min(nchunks, want)))
    return block_p, block_d, num_warps, nsplit, triton.cdiv(triton.cdiv(D, block_d), nsplit)
