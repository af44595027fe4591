"""The program-grid convention the fused kernels share: axis 0 enumerates (trajectory ``b``, D-block ``blk``)."""

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
