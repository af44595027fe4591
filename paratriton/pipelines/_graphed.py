"""``parallelize(pipe, method, cuda_graph=True)``: every solver iteration is one CUDA-graph replay, kept between calls.

The parallel methods run on the graphed engine (every windowed method; full or sliding window) and
``"sequential"`` as ``GraphedSequential`` (the whole loop in one graph). A graph records the addresses of the
tensors it reads, so the pipeline's conditioning (prompt embeddings, SDXL's added conditions, class labels, ...)
lives in tensors owned by a cached ``GraphedSolvers`` object. A later call with the same shapes, coefficients and
guidance copies its own conditioning, initial latents and step noise into them and replays the captured graphs;
anything else rebuilds (and frees the old graphs: one problem shape is cached per pipeline).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import torch

from ..schedule import SamplerCoefficients
from ..solvers._common import IterationInfo, SolveResult
from ..solvers.graphed_sequential import GraphedSequential
from ..solvers.registry import REGISTRY, WINDOWED_METHODS, make_solver

GRAPHED_METHODS = ("sequential", *WINDOWED_METHODS)
GRAPHED_SEQUENTIAL_OPTIONS = ("state_dtype",)


def _graphed_options(method: str) -> tuple[str, ...]:
    """The engine options a pipeline user may set (callback is the pipeline's, cuda_graph is what it sets)."""
    if method == "sequential":
        return GRAPHED_SEQUENTIAL_OPTIONS
    return tuple(n for n in REGISTRY[method].option_names if n not in ("callback", "cuda_graph"))


def check_graphed_options(method: str, options: dict) -> None:
    """Range and name checks of ``parallelize(..., cuda_graph=True)`` options (``window='auto'`` already removed)."""
    if method not in GRAPHED_METHODS:
        raise ValueError(f"cuda_graph=True supports method in {GRAPHED_METHODS}, got method={method!r}")
    allowed = _graphed_options(method)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"options {unknown} do not apply to method={method!r} with cuda_graph=True; "
                        f"allowed: {allowed}")
    if method != "sequential":
        REGISTRY[method].check_options(options)  # its range checks (window >= 1, tol > 0, ...)


def _fingerprint(coeffs: SamplerCoefficients) -> tuple:
    fields = (coeffs.a, coeffs.b, coeffs.c, coeffs.posterior_std, coeffs.timesteps)
    return coeffs.prediction_type, torch.stack([f.detach().to("cpu", torch.float64) for f in fields]).numpy().tobytes()


def _clone_tree(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.clone()
    if isinstance(value, dict):
        return {k: _clone_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clone_tree(v) for v in value)
    return value


class GraphedSolvers:
    """One pipeline problem (shapes, coefficients, guidance): the denoiser reading static conditioning tensors and
    one captured solver per (method, options)."""

    def __init__(self, key: tuple, branches, make_denoiser: Callable, coeffs: SamplerCoefficients) -> None:
        branches.kwargs = _clone_tree(branches.kwargs)  # ours: later calls copy into them (never the caller's)
        self.key, self.branches, self.coeffs = key, branches, coeffs
        self.denoiser = make_denoiser(branches)
        self.solvers: dict[tuple, Any] = {}

    def solve(self, method: str, options: dict, x_T: torch.Tensor, noise: torch.Tensor | None,
              callback: Callable[[IterationInfo], None]) -> SolveResult:
        """Replay (capturing on first use) and return a result that owns its trajectory."""
        k = (method, tuple(sorted(options.items())))
        if method == "sequential":
            seq = self.solvers.get(k)
            if seq is None:
                seq = self.solvers[k] = GraphedSequential(self.denoiser, self.coeffs, x_T, noise, **options)
            else:
                seq.load(x_T, noise)
            res = seq.run()
            T, B = res.trajectory.shape[:2]
            callback(IterationInfo(1, (0, T), 0, torch.full((T, B), math.nan), res.trajectory))
        else:
            solver = self.solvers.get(k)
            if solver is None:
                solver = self.solvers[k] = make_solver(method, cuda_graph=True, **options)
            solver.callback = callback
            res = solver.solve(self.denoiser, self.coeffs, x_T, noise)
        traj = res.trajectory.clone()  # the solver's buffers are rewritten by the next call
        return dataclasses.replace(res, sample=traj[0], trajectory=traj)


def graphed_solvers(pipe, model: torch.nn.Module, branches, guidance: tuple, make_denoiser: Callable,
                    coeffs: SamplerCoefficients, x_T: torch.Tensor, noise: torch.Tensor | None) -> GraphedSolvers:
    """The pipeline's cached ``GraphedSolvers`` for this problem, loaded with this call's conditioning; a new one
    (replacing the old) when the problem differs."""
    from ._wrap import tree_signature

    key = (id(model), branches.latent_name, tree_signature(branches.kwargs), branches.g, branches.B, branches.N0,
           str(branches.x_dtype), branches.flow_timestep, branches.learned_sigma_channels, guidance,
           _fingerprint(coeffs), tuple(x_T.shape), str(x_T.device), noise is None)
    cached = pipe.__dict__.get("_paratriton_graphed")
    if cached is not None and cached.key == key:
        cached.branches.load(branches.kwargs)
        return cached
    pipe.__dict__["_paratriton_graphed"] = None  # free the old graphs and buffers before capturing new ones
    entry = GraphedSolvers(key, branches, make_denoiser, coeffs)
    pipe.__dict__["_paratriton_graphed"] = entry
    return entry
