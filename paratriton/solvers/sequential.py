"""The sequential sampler: the ground truth every parallel solver must reproduce."""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..model import Denoiser
from ..schedule import SamplerCoefficients
from ._common import IterationInfo, ModelCaller, SolveResult, check_problem, raise_nonfinite


def solve_sequential(model: Denoiser, coeffs: SamplerCoefficients, x_T: torch.Tensor,
                     noise: torch.Tensor | None = None, *, state_dtype: torch.dtype = torch.float64,
                     callback: Callable[[IterationInfo], None] | None = None,
                     check_finite: bool = True) -> SolveResult:
    """Run ``x_i = a_i x_{i+1} + b_i m(x_{i+1}, i) + c_i xi_i`` for ``i = T-1 .. 0``, one model call per step.

    ``check_finite`` syncs once per step to stop on a non-finite model output (turn it off to time the loop).
    """
    check_problem(coeffs, x_T, noise)
    T, B, shape = coeffs.num_steps, x_T.shape[0], tuple(x_T.shape[1:])
    D = math.prod(shape)
    call = ModelCaller(model, shape, B)
    x = torch.empty(T + 1, B, D, dtype=state_dtype, device=x_T.device)
    x[T] = x_T.reshape(B, D)
    steps = torch.arange(T, device=x_T.device)
    residuals = torch.full((T, T), float("nan"), dtype=torch.float64)
    for i in range(T - 1, -1, -1):
        m_out = call(x[i + 1:i + 2], steps[i:i + 1])[0].to(state_dtype)
        if check_finite and not torch.isfinite(m_out).all():
            raise_nonfinite(m_out[None], i, T - 1 - i, "the model output")
        x[i] = coeffs.step(i, x[i + 1], m_out, None if noise is None else noise[i].reshape(B, D))
        residuals[T - 1 - i, i] = 0.0
        if callback is not None:
            callback(IterationInfo(T - i, (i, i + 1), i, torch.zeros(1, B, dtype=state_dtype),
                                   x.reshape(T + 1, B, *shape)))
    traj = x.reshape(T + 1, B, *shape)
    return SolveResult(traj[0], traj, T, T, residuals, True, "sequential", [(i, i + 1) for i in range(T - 1, -1, -1)])


class SequentialSolver:
    """``method="sequential"`` behind the registry: ``solve_sequential``, or the whole loop as one CUDA graph
    (``GraphedSequential``) with ``cuda_graph=True`` on CUDA."""

    method = "sequential"

    def __init__(self, *, state_dtype: torch.dtype | None = None,
                 callback: Callable[[IterationInfo], None] | None = None, cuda_graph: bool = False,
                 check_finite: bool = True) -> None:
        self.state_dtype, self.callback, self.cuda_graph, self.check_finite = (state_dtype, callback, cuda_graph,
                                                                               check_finite)

    def solve(self, model: Denoiser, coeffs: SamplerCoefficients, x_T: torch.Tensor,
              noise: torch.Tensor | None = None, init: torch.Tensor | None = None) -> SolveResult:
        if init is not None:
            raise ValueError("init (warm start) does not apply to method='sequential'")
        if self.cuda_graph and x_T.device.type == "cuda":
            from .graphed_sequential import GraphedSequential

            return GraphedSequential(model, coeffs, x_T, noise, state_dtype=self.state_dtype or torch.float32).run()
        return solve_sequential(model, coeffs, x_T, noise, state_dtype=self.state_dtype or torch.float64,
                                callback=self.callback, check_finite=self.check_finite)
