"""Reference solvers (plain torch, float64 state). ``solve(..., method=...)`` picks one by name."""

from __future__ import annotations

from typing import Any

import torch

from ..model import Denoiser
from ..schedule import SamplerCoefficients
from ._common import IterationInfo, NonFiniteError, ParallelSolver, SolveResult
from .anderson import Anderson, TriangularAnderson
from .fixed_point import FixedPoint, Picard
from .sequential import solve_sequential
from .srds import SRDS, SRDSPipelined, SRDSResult

PARALLEL_SOLVERS: dict[str, type[ParallelSolver]] = {
    "fp": FixedPoint, "picard": Picard, "aa": Anderson, "taa": TriangularAnderson,
}
SRDS_SOLVERS: dict[str, type[SRDS]] = {"srds": SRDS, "srds_pipelined": SRDSPipelined}  # Parareal (own loop)
METHODS = ("sequential", *PARALLEL_SOLVERS, *SRDS_SOLVERS)


def solve(model: Denoiser, coeffs: SamplerCoefficients, x_T: torch.Tensor, noise: torch.Tensor | None = None, *,
          method: str = "taa", init: torch.Tensor | None = None, **options: Any) -> SolveResult:
    """Sample ``B`` trajectories with one of ``METHODS``.

    model:   ``model(x [N, *S], step_index [N]) -> [N, *S]`` (see ``paratriton.model``)
    coeffs:  ``SamplerCoefficients`` (e.g. from ``coefficients_from_scheduler``)
    x_T:     ``[B, *S]`` initial noise; noise: ``[T, B, *S]`` pre-drawn step noise (stochastic samplers)
    options: window, order, history, ridge, tol_abs, tol_rel, max_iters, state_dtype, callback (per method)
    """
    if method == "sequential":
        unknown = set(options) - {"state_dtype", "callback", "check_finite"}
        if unknown:
            raise TypeError(f"options {sorted(unknown)} do not apply to method='sequential'")
        if init is not None:
            raise ValueError("init (warm start) does not apply to method='sequential'")
        return solve_sequential(model, coeffs, x_T, noise, **options)
    if method not in PARALLEL_SOLVERS and method not in SRDS_SOLVERS:
        raise ValueError(f"method={method!r} is not supported; use one of {METHODS}")
    try:
        solver = {**PARALLEL_SOLVERS, **SRDS_SOLVERS}[method](**options)
    except TypeError as e:
        raise TypeError(f"method={method!r}: {e}") from None
    return solver.solve(model, coeffs, x_T, noise, init=init)


__all__ = ["solve", "solve_sequential", "METHODS", "FixedPoint", "Picard", "Anderson", "TriangularAnderson",
           "ParallelSolver", "SRDS", "SRDSPipelined", "SRDSResult", "SolveResult", "IterationInfo", "NonFiniteError"]
