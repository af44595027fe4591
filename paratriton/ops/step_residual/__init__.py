"""Residual pass, a CPU building block of ``window_fixed_point``. ``step_residual`` is the registered
``torch.ops.paratriton.step_residual``, ``naive.step_residual`` its oracle. CPU: the C++ kernel of ``paratriton._C``
when built, else the oracle; CUDA: the oracle (the engine's CUDA path is the window ops' Triton kernels)."""

from __future__ import annotations

import torch

from . import naive


@torch.library.custom_op("paratriton::step_residual", mutates_args=())
def step_residual(
    x: torch.Tensor,
    model_out: torch.Tensor,
    noise: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    threshold: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x ``[n+1, B, D]``, model_out/noise ``[n, B, D]``, a/b/c/threshold ``[n]`` -> ``r [n, B, D]``, ``rms [n, B]``
    (state dtype), ``top`` (0-d int64, stays on the device); see ``naive.step_residual``."""
    return naive.step_residual(x, model_out, noise, a, b, c, threshold)


@step_residual.register_fake
def _(x, model_out, noise, a, b, c, threshold):
    n, B, D = x.shape[0] - 1, x.shape[1], x.shape[2]
    return (x.new_empty(n, B, D), x.new_empty(n, B), torch.empty((), dtype=torch.int64, device=x.device))


step_residual.naive = naive

__all__ = ["step_residual", "naive"]
