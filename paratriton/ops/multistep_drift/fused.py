"""Triton kernel of the multistep drift (``naive.multistep_drift`` is the oracle): one launch, one pass.

Program ``(step h, D tile)`` stores its live tap output into the ring and sums the stencil. A tap ``i + j`` inside
this launch's window and live is read from ``tap_out`` (its ring row is being written by another program of the
same launch), every other tap from the ring: no race, no second launch. ``lo`` and ``anchor`` are loaded from
their device pointers (capturable). Tensors are taken contiguous, so every offset follows from ``B * D``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._window import require_contiguous


@triton.jit(do_not_specialize=["H", "T", "K"])
def _drift_kernel(g_ptr, m_ptr, ring_ptr, w_ptr, lo_ptr, anchor_ptr, H, T, K, BD, BLOCK: tl.constexpr):
    dt: tl.constexpr = ring_ptr.dtype.element_ty
    h = tl.program_id(0).to(tl.int64)
    off = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = off < BD
    lo = tl.load(lo_ptr)
    anchor = tl.load(anchor_ptr)
    i = lo + h
    m = tl.load(m_ptr + h * BD + off, mask=mask, other=0.0).to(dt)
    own = tl.load(ring_ptr + i * BD + off, mask=mask, other=0.0)
    mine = tl.where(i < anchor, m, own)
    tl.store(ring_ptr + i * BD + off, mine, mask=mask)
    acc = tl.load(w_ptr + i * K).to(dt) * mine  # tap 0: the step's own output
    for j in range(1, K):
        w = tl.load(w_ptr + i * K + j).to(dt)
        s = tl.minimum(i + j, T - 1)  # past the last step the weight is 0
        # live and in this window (its ring row is being written by this launch): read tap_out, else the ring
        lim = tl.where((h + j < H) & (s < anchor), BD, 0)
        in_launch = off < lim
        in_ring = mask & (off >= lim)
        from_out = tl.load(m_ptr + (h + j) * BD + off, mask=in_launch, other=0.0).to(dt)
        from_ring = tl.load(ring_ptr + s * BD + off, mask=in_ring, other=0.0)
        acc += w * tl.where(in_launch, from_out, from_ring)
    tl.store(g_ptr + h * BD + off, acc, mask=mask)


def multistep_drift_triton(
    tap_out: torch.Tensor, ring: torch.Tensor, weights: torch.Tensor, lo: torch.Tensor, anchor: torch.Tensor
) -> torch.Tensor:
    """Same contract as ``naive.multistep_drift`` (ring updated in place; it must be contiguous)."""
    require_contiguous("multistep_drift", ring=ring)
    H, T, K = tap_out.shape[0], ring.shape[0], weights.shape[1]
    BD = ring[0].numel()
    m = tap_out.contiguous()
    w = weights.contiguous()
    g = torch.empty(tap_out.shape, dtype=ring.dtype, device=ring.device)
    if H == 0 or BD == 0:
        return g
    BLOCK = min(1024, triton.next_power_of_2(BD))
    _drift_kernel[(H, triton.cdiv(BD, BLOCK))](g, m, ring, w, lo, anchor, H, T, K, BD, BLOCK=BLOCK)
    return g
