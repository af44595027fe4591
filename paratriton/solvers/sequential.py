"""The sequential sampler: the ground truth every parallel solver must reproduce.

It steps any ``StepOperator``: the one-tap ``SamplerCoefficients`` and the k-tap
``paratriton.schedulers.MultistepCoefficients`` alike. Per step ``i = T-1 .. 0``::

    m_i = model(input_scale_i * x_{i+1}, i)                  (coeffs.model_input)
    M_i = output_scale_i * m_i + output_mix_i * x_{i+1}      (coeffs.tap_output; M_i = m_i for one-tap operators)
    x_i = a_i x_{i+1} + sum_{j<k} b[i, j] M_{i+j} + c_i xi_i (coeffs.step, with the last k outputs kept)
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..model import Denoiser
from ..schedulers.operator import StepOperator, one_tap_view
from ._common import IterationInfo, ModelCaller, SolveResult, check_problem, diagnose_step, first_bad_step
from .graphed_sequential import GraphedSequential


@torch.no_grad()
def solve_sequential(
    model: Denoiser,
    coeffs: StepOperator,
    x_T: torch.Tensor,
    noise: torch.Tensor | None = None,
    *,
    state_dtype: torch.dtype = torch.float64,
    callback: Callable[[IterationInfo], None] | None = None,
    check_finite: bool = True,
) -> SolveResult:
    """Run ``x_i = a_i x_{i+1} + sum_j b[i, j] M_{i+j} + c_i xi_i`` for ``i = T-1 .. 0``, one model call per step
    (``M_i`` from ``m_i = model(input_scale_i x_{i+1}, i)``, see the module docstring; the last ``taps`` outputs are
    kept). ``x_T [B, *S]``, ``noise [T, B, *S]`` or None; the trajectory is ``[T+1, B, *S]``.

    Never returns a non-finite sample: ``check_finite`` syncs once per step to stop at the first NaN/inf model
    output or state (turn it off to time the loop: the whole trajectory is then checked once at the end, and the
    failing step diagnosed). The model sees the state unclamped: this is the reference answer.
    """
    if state_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"state_dtype must be torch.float32 or torch.float64, got {state_dtype}")
    check_problem(one_tap_view(coeffs), x_T, noise)
    T, B, shape = coeffs.num_steps, x_T.shape[0], tuple(x_T.shape[1:])
    D = math.prod(shape)
    taps = int(coeffs.taps)
    call = ModelCaller(model, shape, B, clamp=False, coeffs=coeffs, device=x_T.device)
    outs: list[torch.Tensor] = []  # the tap outputs M_i, M_{i+1}, ... of the last ``taps`` steps, newest first
    # every step starts as x_T (as in the parallel solvers): a callback never reads uninitialised memory
    x = x_T.reshape(1, B, D).to(state_dtype).expand(T + 1, B, D).clone()
    steps = torch.arange(T, device=x_T.device)
    residuals = torch.full((T, T), float("nan"), dtype=torch.float64)

    def noise_of(i: int) -> torch.Tensor | None:
        return None if noise is None else noise[i].reshape(B, D)

    for i in range(T - 1, -1, -1):
        m_out = call(coeffs.model_input(i, x[i + 1 : i + 2]), steps[i : i + 1])[0].to(state_dtype)
        outs = [coeffs.tap_output(i, x[i + 1], m_out), *outs[: taps - 1]]
        x[i] = coeffs.step(i, x[i + 1], outs, noise_of(i))
        if check_finite and not bool(torch.isfinite(m_out).all() & torch.isfinite(x[i]).all()):
            raise diagnose_step(i, T - 1 - i, x[i + 1], m_out, noise_of(i), coeffs, x[i])
        residuals[T - 1 - i, i] = 0.0
        if callback is not None:
            if i > 0:  # the estimate of the sample so far: the latest state
                x[0] = x[i]
            callback(
                IterationInfo(T - i, (i, i + 1), i, torch.zeros(1, B, dtype=state_dtype), x.reshape(T + 1, B, *shape))
            )
    if not check_finite and not bool(torch.isfinite(x).all()):
        i = first_bad_step(x, T)
        out = call(coeffs.model_input(i, x[i + 1 : i + 2]), steps[i : i + 1])[0].to(state_dtype)
        raise diagnose_step(i, T - 1 - i, x[i + 1], out, noise_of(i), coeffs, x[i])
    traj = x.reshape(T + 1, B, *shape)
    return SolveResult(traj[0], traj, T, T, residuals, True, "sequential", [(i, i + 1) for i in range(T - 1, -1, -1)])


class SequentialSolver:
    """``method="sequential"`` behind the registry: ``solve_sequential``, or the whole loop as one CUDA graph
    (``GraphedSequential``) with ``cuda_graph=True`` on CUDA."""

    method = "sequential"

    def __init__(
        self,
        *,
        state_dtype: torch.dtype | None = None,
        callback: Callable[[IterationInfo], None] | None = None,
        cuda_graph: bool = False,
        check_finite: bool = True,
    ) -> None:
        self.state_dtype, self.callback, self.cuda_graph, self.check_finite = (
            state_dtype,
            callback,
            cuda_graph,
            check_finite,
        )

    @torch.no_grad()
    def solve(
        self,
        model: Denoiser,
        coeffs: StepOperator,
        x_T: torch.Tensor,
        noise: torch.Tensor | None = None,
        init: torch.Tensor | None = None,
    ) -> SolveResult:
        if init is not None:
            raise ValueError("init (warm start) does not apply to method='sequential'")
        if self.cuda_graph and x_T.device.type == "cuda":
            return GraphedSequential(model, coeffs, x_T, noise, state_dtype=self.state_dtype or torch.float32).run()
        return solve_sequential(
            model,
            coeffs,
            x_T,
            noise,
            state_dtype=self.state_dtype or torch.float64,
            callback=self.callback,
            check_finite=self.check_finite,
        )
