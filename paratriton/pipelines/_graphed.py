"""``parallelize(pipe, method, cuda_graph=True)``: every solver iteration is one CUDA-graph replay, kept between calls.

The parallel methods run on the graphed engine (every windowed method; full or sliding window) and
``"sequential"`` as ``GraphedSequential`` with one captured step replayed ``T`` times (capturing costs two eager
model calls, not ``2 T``). A graph records the addresses of the
tensors it reads, so the pipeline's conditioning (prompt embeddings, SDXL's added conditions, class labels, ...)
lives in tensors owned by a cached ``GraphedSolvers`` object. A later call with the same shapes, coefficients and
guidance copies its own conditioning, initial latents and step noise into them and replays the captured graphs;
anything else rebuilds (and frees the old graphs: one problem shape is cached per parallel pipeline, in its
``ParallelState.graphed``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Protocol

import torch

from ..schedulers.operator import SamplerCoefficients
from ..solvers._common import IterationInfo, SolveResult
from ..solvers.graphed_sequential import GraphedSequential
from ..solvers.registry import make_solver
from ._trees import clone_tree, tree_signature


def _fingerprint(coeffs: SamplerCoefficients) -> tuple:
    names = ("a", "b", "c", "posterior_std", "timesteps", "input_scale", "output_scale", "output_mix")
    fields = [getattr(coeffs, n).detach().to("cpu", torch.float64).reshape(-1) for n in names]  # b: [T] or [T, k]
    shape = tuple(coeffs.b.shape)
    clip = getattr(coeffs, "x0_clip", None)
    clip_key = None if clip is None else clip.fingerprint()
    return type(coeffs).__name__, coeffs.prediction_type, shape, torch.cat(fields).numpy().tobytes(), clip_key


class GraphedSolvers:
    """One pipeline problem (shapes, coefficients, guidance): the denoiser reading static conditioning tensors and
    one captured solver per (method, options)."""

    def __init__(self, key: tuple, branches, make_denoiser: Callable, coeffs: SamplerCoefficients) -> None:
        branches.kwargs = clone_tree(branches.kwargs)  # ours: later calls copy into them (never the caller's)
        self.key, self.branches, self.coeffs = key, branches, coeffs
        self.denoiser = make_denoiser(branches)
        self.solvers: dict[tuple, Any] = {}

    def solve(
        self,
        method: str,
        options: dict,
        x_T: torch.Tensor,
        noise: torch.Tensor | None,
        callback: Callable[[IterationInfo], None] | None = None,
        init: torch.Tensor | None = None,
    ) -> SolveResult:
        """Replay (capturing on first use) and return a result that owns its trajectory. ``init``: a warm start of
        the parallel methods' trajectory (``solve``'s)."""
        k = (method, tuple(sorted(options.items())))
        if method == "sequential":
            if init is not None:
                raise ValueError("init (warm start) does not apply to method='sequential'")
            seq = self.solvers.get(k)
            if seq is None:
                seq_options = {n: v for n, v in options.items() if n != "check_finite"}  # a graph step always checks
                seq = self.solvers[k] = GraphedSequential(self.denoiser, self.coeffs, x_T, noise, **seq_options)
            else:
                seq.load(x_T, noise)
            res = seq.run()
            if callback is not None:
                T, B = res.trajectory.shape[:2]
                callback(IterationInfo(1, (0, T), 0, torch.full((T, B), math.nan), res.trajectory))
        else:
            solver = self.solvers.get(k)
            if solver is None:
                solver = self.solvers[k] = make_solver(method, cuda_graph=True, **options)
            solver.callback = callback
            res = solver.solve(self.denoiser, self.coeffs, x_T, noise, init=init)
        traj = res.trajectory.clone()  # the solver's buffers are rewritten by the next call
        return dataclasses.replace(res, sample=traj[0], trajectory=traj)


class HoldsGraphed(Protocol):
    """Where the cached solvers live between calls (``_state.ParallelState``, which imports this module)."""

    graphed: GraphedSolvers | None


def graphed_solvers(
    state: HoldsGraphed,
    model_key: tuple,
    branches,
    guidance: tuple,
    make_denoiser: Callable,
    coeffs: SamplerCoefficients,
    x_T: torch.Tensor,
    noise: torch.Tensor | None,
) -> GraphedSolvers:
    """The parallel pipeline's cached ``GraphedSolvers`` (``state.graphed``) for this problem, loaded with this
    call's conditioning; a new one (replacing the old) when the problem differs.

    ``model_key`` is ``_guards.model_fingerprint(model)``: the storages and versions of every parameter and buffer,
    the module tree, attention processors, adapters and hooks. A graph replays what it captured, so after LoRA
    fusing, ``set_adapters``, a processor swap, fused projections or ``.to()`` the key differs and it recaptures.
    """
    key = (
        model_key,
        branches.latent_name,
        tree_signature(branches.kwargs),
        branches.g,
        branches.B,
        branches.N0,
        str(branches.x_dtype),
        branches.timestep_form,
        branches.learned_sigma_channels,
        guidance,
        _fingerprint(coeffs),
        tuple(x_T.shape),
        str(x_T.device),
        noise is None,
    )
    cached = state.graphed
    if cached is not None and cached.key == key:
        cached.branches.load(branches.kwargs)
        return cached
    state.graphed = None  # free the old graphs and buffers before capturing new ones
    state.graphed = GraphedSolvers(key, branches, make_denoiser, coeffs)
    return state.graphed
