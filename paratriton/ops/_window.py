"""Shared plumbing of the window ops: the engine's fixed-shape view of the trajectory.

The engine keeps the whole trajectory ``x [T+1, B, D]`` and works on ``H`` consecutive steps ``lo .. lo+H-1``
(``H`` static, ``lo`` a 0-d int64 *device* tensor), so an iteration has the same shapes whatever the window and is
capturable into one CUDA graph. Steps at or above the anchor ``F`` are frozen; the window ops also receive the
highest unconverged step ``top`` (``lo <= top < F``) and treat the steps above it as frozen too: a step that passed
the residual test is never moved afterwards, so the test holds at the returned trajectory.

On CPU tensors the registered kernels read ``lo`` and ``top`` (free there) and run the sliced per-op kernels
(the C++ ones when ``paratriton._C`` is built) on the truncated window ``lo .. top``: masking everything above
``top`` is the same as putting the anchor at ``top + 1``.
"""

from __future__ import annotations

import torch


def require_contiguous(op: str, **updated: torch.Tensor) -> None:
    """Refuse, naming the op and the argument, a tensor a kernel updates in place that is not contiguous (a copy
    would take the update, not the caller's tensor)."""
    for name, t in updated.items():
        if not t.is_contiguous():
            raise ValueError(f"{op}: {name} must be contiguous (it is updated in place)")


def window_rows(lo: torch.Tensor, H: int) -> torch.Tensor:
    """``[H]`` int64 step indices ``lo .. lo+H-1`` (device-side: no host read of ``lo``)."""
    return lo + torch.arange(H, device=lo.device)


def gather_rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``t[idx]`` along dim 0 as a new contiguous tensor (index_select: capturable, no sync)."""
    return t.index_select(0, idx)


def col(v: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    """``[n]`` -> ``[n, 1, 1]`` in ``dt`` (broadcast over ``[n, B, D]``)."""
    return v.to(dt)[:, None, None]


def ring_newest(slot: torch.Tensor, M: int) -> torch.Tensor:
    """``[M]`` ring slots from the newest (``slot``, 0-d int64 device tensor) to the oldest."""
    return (slot - torch.arange(M, device=slot.device)) % M


def order1_rows(
    x: torch.Tensor,
    model_out: torch.Tensor,
    noise: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    idx: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Order-1 residuals ``r [H, B, D]`` of steps ``idx`` and their states ``x[idx]`` (state dtype)."""
    dt = x.dtype
    xw, xin = gather_rows(x, idx), gather_rows(x, idx + 1)
    r = col(a.index_select(0, idx), dt) * xin + col(b.index_select(0, idx), dt) * model_out.to(dt) - xw
    if noise is not None:
        r = r + col(c.index_select(0, idx), dt) * gather_rows(noise, idx).to(dt)
    return r, xw
