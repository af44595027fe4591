"""Plain-torch reference of the residual pass: order-1 residuals, their RMS and the first unconverged step."""

from __future__ import annotations

import torch


def step_residual(
    x: torch.Tensor,
    model_out: torch.Tensor,
    noise: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    threshold: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Order-1 residuals ``r_p = a_p x_{p+1} + b_p m_p + c_p xi_p - x_p`` of a window of ``n`` steps.

    x:          ``[n+1, B, D]`` window states, ``x[n]`` is the frozen anchor (state dtype, usually float64)
    model_out:  ``[n, B, D]`` any float dtype (upcast to the state dtype before use)
    noise:      ``[n, B, D]`` or None when every ``c_p`` is zero
    a, b, c, threshold: ``[n]`` float64
    Returns ``r [n, B, D]`` (state dtype), ``rms [n, B]`` and ``top_unconverged``: a 0-d int64 tensor holding the
    largest ``p`` with ``rms[p, b] > threshold[p]`` for some ``b``, or -1 when every step has converged.
    """
    dt = x.dtype
    col = lambda v: v.to(dt)[:, None, None]  # noqa: E731 -- broadcast [n] over [n, B, D]
    r = col(a) * x[1:] + col(b) * model_out.to(dt) - x[:-1]
    if noise is not None:
        r = r + col(c) * noise.to(dt)
    rms = r.square().mean(dim=-1).sqrt()
    unconverged = (rms > threshold.to(dt)[:, None]).any(dim=1)
    idx = torch.arange(r.shape[0], device=r.device)
    top = torch.where(unconverged, idx, torch.full_like(idx, -1)).max()
    return r, rms, top
