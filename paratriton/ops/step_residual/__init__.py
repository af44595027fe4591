"""Residual pass. ``naive.step_residual`` is the oracle; ``torch.ops.paratriton.step_residual`` is the registered op
(CPU: the oracle, CUDA: the Triton kernels of ``fused.py``)."""

from __future__ import annotations

import torch

from .naive import step_residual


@torch.library.custom_op("paratriton::step_residual", mutates_args=())
def step_residual_op(
    x: torch.Tensor,
    model_out: torch.Tensor,
    noise: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    threshold: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Registered ``step_residual``: x ``[n+1, B, D]``, model_out/noise ``[n, B, D]``, a/b/c/threshold ``[n]`` ->
    ``r [n, B, D]``, ``rms [n, B]`` (state dtype), ``top`` (0-d int64, stays on the device)."""
    return step_residual(x, model_out, noise, a, b, c, threshold)


@step_residual_op.register_fake
def _(x, model_out, noise, a, b, c, threshold):
    n, B, D = x.shape[0] - 1, x.shape[1], x.shape[2]
    return (x.new_empty(n, B, D), x.new_empty(n, B), torch.empty((), dtype=torch.int64, device=x.device))


@step_residual_op.register_kernel("cuda")
def _(x, model_out, noise, a, b, c, threshold):
    from .fused import residual_pass

    out = residual_pass(x, model_out, noise, a, b, c, threshold, write_r=True)
    return out["r"], out["rms"], out["top"]


__all__ = ["step_residual", "step_residual_op"]
