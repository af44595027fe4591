"""The solvers. ``solve(..., method=...)`` builds the method's solver from the registry and runs it.

``engine.py`` is the one windowed engine (eager and CUDA-graphed), ``rules.py`` the methods' update rules,
``registry.py`` the methods and their options (``Solver`` is what it builds, ``Rule`` a windowed method's update,
``Tolerance`` the validated tolerance), ``sequential.py`` / ``graphed_sequential.py`` the sequential
sampler, ``srds.py`` Parareal.
"""

from __future__ import annotations

from typing import Any

import torch

from ..model import Denoiser
from ..schedulers.operator import SamplerCoefficients
from ._common import IterationInfo, NonFiniteError, Solver, SolveResult
from .engine import Engine
from .registry import METHODS, REGISTRY, WINDOWED_METHODS, graphed_solver, make_solver, method_spec
from .rules import Rule
from .sequential import solve_sequential
from .srds import SRDS, SRDSPipelined, SRDSResult
from .tolerance import Tolerance


def solve(
    model: Denoiser,
    coeffs: SamplerCoefficients,
    x_T: torch.Tensor,
    noise: torch.Tensor | None = None,
    *,
    method: str = "taa",
    init: torch.Tensor | None = None,
    **options: Any,
) -> SolveResult:
    """Sample ``B`` trajectories with one of ``METHODS``.

    model:   ``model(x [N, *S], step_index [N]) -> [N, *S]`` (see ``paratriton.model``)
    coeffs:  ``SamplerCoefficients`` (e.g. from ``coefficients_from_scheduler``)
    x_T:     ``[B, *S]`` initial noise; noise: ``[T, B, *S]`` pre-drawn step noise (stochastic samplers)
    options: the method's options (``paratriton.solvers.REGISTRY[method].options``: window, order, history,
             ridge, tol_abs, tol_rel, max_iters, state_dtype, callback, cuda_graph, ...)
    """
    spec = method_spec(method)
    try:
        solver = spec.make(**options)
    except TypeError as e:
        if "method=" in str(e):
            raise
        raise TypeError(f"method={method!r}: {e}") from None
    return solver.solve(model, coeffs, x_T, noise, init=init)


__all__ = [
    "solve",
    "solve_sequential",
    "METHODS",
    "REGISTRY",
    "WINDOWED_METHODS",
    "Engine",
    "make_solver",
    "graphed_solver",
    "method_spec",
    "SRDS",
    "SRDSPipelined",
    "SRDSResult",
    "SolveResult",
    "IterationInfo",
    "NonFiniteError",
    "Solver",
    "Rule",
    "Tolerance",
]
