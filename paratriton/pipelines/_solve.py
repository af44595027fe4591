"""The solve stage: eager, CUDA-graphed and ``window="auto"`` in one place.

``_Solve`` (mixed into ``_ParallelCall``) takes the problem (the pipeline's denoiser of the stacked guidance
branches, ``guidance``, the step operator ``coeffs``, ``x_T [B, *S]`` and the step noise) and the state's method and
options, solves the trajectory with progress and ``callback_on_step_end`` (the replay stage's ``_on_iteration``),
and leaves ``result`` and ``trajectory`` (or ``interrupted_at``) for the replay; ``state`` gets the result, the
window choices and the graph cache back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from .. import _plan_cache
from ..planner import WindowChoice, _choice_from, choose_window, remembered
from ..solvers import SolveResult, solve
from ._graphed import graphed_solvers
from ._guards import model_fingerprint
from ._guidance import GuidancePlan, guided
from ._options import pipeline_options
from ._problem import Problem
from ._replay import _Interrupted
from ._shard import RowSharded

logger = logging.getLogger("paratriton.pipelines")


class _Solve:
    """The solve stage of one parallel call."""

    state: Any
    spec: Any
    model: torch.nn.Module
    controlnet: torch.nn.Module | None
    pipeline_name: str
    T: int
    bar: Any
    dummy: Any
    result: SolveResult | None
    trajectory: torch.Tensor | None
    interrupted_at: int | None
    _progress: Callable[[int], Any]
    _on_iteration: Callable[[Any], None]

    def _solve_problem(self, problem: Problem) -> None:
        """Solve ``problem`` with the state's method and options; sets ``result`` and ``trajectory``
        (``interrupted_at`` where ``callback_on_step_end`` interrupted) and ``state.last_result``."""
        branches, guidance, coeffs, x_T, noise = (
            problem.branches,
            problem.guidance,
            problem.coeffs,
            problem.x_T,
            problem.noise,
        )
        method, options = self.state.method, dict(self.state.options)
        graphed = bool(options.pop("cuda_graph", False))
        mesh = options.pop("mesh", None)
        if mesh is not None:  # the rows of every window call split over the mesh's time groups
            branches = RowSharded(branches, mesh)
        with self._progress(self.T) as bar:
            self.bar = bar
            try:
                self.result = self._solve_with(branches, guidance, coeffs, x_T, noise, method, options, graphed)
            except _Interrupted as stop:
                self.interrupted_at, self.trajectory = stop.step, stop.trajectory
                self.dummy = self.dummy if self.dummy is not None else branches.dummy
                self.state.last_result = None
                logger.info("paratriton: interrupted by callback_on_step_end at step %d", stop.step)
                return
        if not self.result.converged and self.result.precision_limited:
            logger.warning(
                "paratriton: %s stopped at the model's precision floor, above the tolerance asked for: the image "
                "can be up to about %.2g RMS from the sequential one (result.precision_floor)",
                self.result.method,
                self.result.precision_floor,
            )
        elif not self.result.converged:
            logger.warning(
                "paratriton: %s stopped after %d iterations before every step converged "
                "(max_iters); the image is the current estimate",
                self.result.method,
                self.result.iterations,
            )
        self.trajectory = self.result.trajectory
        self.state.last_result = self.result

    def _solve_with(
        self,
        branches: Any,
        guidance: GuidancePlan,
        coeffs: Any,
        x_T: torch.Tensor,
        noise: torch.Tensor | None,
        method: str,
        options: dict,
        graphed: bool,
    ) -> SolveResult:
        """One solve, eager or (``graphed``) with the pipeline's cached CUDA-graphed solvers (see ``_graphed``);
        ``window="auto"`` chooses the window (or the sequential sampler) first."""
        entry = None
        if graphed and (branches.experts is not None or guidance.cfg_by_step is not None):
            raise ValueError(
                "cuda_graph=True is not supported where the loop calls another network per step (Wan 2.2's "
                "transformer_2) or turns CFG off after some steps (cfg_trunc_ratio, cfg_truncation): the rows each "
                "call gets change from iteration to iteration; use cuda_graph=False"
            )
        if graphed and branches.list_axis is not None:
            raise ValueError("cuda_graph=True is not supported for a network called with lists of tensors (Z-Image)")
        if graphed:
            fingerprints = (
                model_fingerprint(self.model),
                None if self.controlnet is None else model_fingerprint(self.controlnet),
            )
            entry = graphed_solvers(
                self.state,
                fingerprints,
                branches,
                (*guidance.key(), guidance.cond_first),
                lambda b: guided(b, guidance),
                coeffs,
                x_T,
                noise,
            )
            self.dummy = entry.branches.dummy
            denoiser, problem, solvers, kwargs = entry.denoiser, entry.coeffs, entry.solvers, entry.branches.kwargs
        else:
            denoiser = guided(branches, guidance)
            problem, solvers, kwargs = coeffs, None, branches.kwargs
        if options.get("window") == "auto":
            method, options["window"] = self._auto_window(
                denoiser,
                problem,
                x_T,
                noise,
                method,
                options,
                cuda_graph=graphed,
                solvers=solvers,
                conditioning=(kwargs, guidance.key()),
            )
            if method == "sequential":
                options = {k: v for k, v in options.items() if k in pipeline_options(method, graphed)}
        if entry is not None:
            result = entry.solve(method, options, x_T, noise, self._on_iteration)
            self.dummy = entry.branches.dummy
        else:
            result = solve(denoiser, coeffs, x_T, noise, method=method, callback=self._on_iteration, **options)
            self.dummy = branches.dummy
        return result

    def _auto_window(
        self,
        denoiser,
        coeffs,
        x_T,
        noise,
        method,
        options,
        cuda_graph: bool = False,
        solvers: dict | None = None,
        conditioning: Any = None,
    ) -> tuple[str, int | None]:
        """``window="auto"``: time the candidate windows and the sequential sampler once per problem shape (on a
        calibration problem with other noise), keep the choice in ``state.window_choices``, and reuse it; also on
        disk (``paratriton._plan_cache``, unless ``state.plan_cache`` is False or ``PARATRITON_PLAN_CACHE=0``),
        keyed by the device, the versions, the network's fingerprint, the shapes of the problem and of
        ``conditioning`` (the call's conditioning tensors and guidance), the coefficients and the options, so a new
        process reuses it without timing. ``solvers``: graphed, the problem's ``GraphedSolvers.solvers``, where the
        chosen (captured) solver is left."""
        key = (coeffs.num_steps, tuple(x_T.shape), str(x_T.device), method, cuda_graph)
        cache: dict[tuple, WindowChoice] = self.state.window_choices
        if key not in cache:
            rest = {k: v for k, v in options.items() if k != "window"}
            hints = self.state.auto_hints  # plan(): the sequential sampler's time and the best so far, if known
            bound_ms = hints.get((key[:3], "bound_ms"))

            def timed() -> WindowChoice:
                g = torch.Generator().manual_seed(1234)
                cal_x = torch.randn(x_T.shape, generator=g, dtype=x_T.dtype).to(x_T.device)
                cal_noise = (
                    None if noise is None else torch.randn(noise.shape, generator=g, dtype=noise.dtype).to(noise.device)
                )
                return choose_window(
                    denoiser,
                    coeffs,
                    cal_x,
                    cal_noise,
                    method,
                    cuda_graph=cuda_graph,
                    solvers=solvers,
                    bound_ms=bound_ms,
                    sequential_ms=hints.get((key[:3], cuda_graph, "sequential_ms")),
                    **rest,
                )

            disk_key = None
            # a choice bounded by another method's time (plan()) holds only beside it: not remembered alone
            if bound_ms is None and _plan_cache.enabled(self.state.plan_cache):
                disk_key = _plan_cache.make_key(
                    "window",
                    x_T.device,
                    pipeline=self.pipeline_name,
                    model=_plan_cache.fingerprint(self.model),
                    controlnet=None if self.controlnet is None else _plan_cache.fingerprint(self.controlnet),
                    coeffs=_plan_cache.coeffs_digest(coeffs),
                    steps=coeffs.num_steps,
                    x_T=x_T,
                    noise=noise,
                    conditioning=conditioning,
                    method=method,
                    cuda_graph=cuda_graph,
                    options=rest,
                )
            cache[key] = remembered("window='auto'", disk_key, timed, _choice_from)
            if cache[key].remembered is None:
                logger.info("paratriton: window='auto': %s", cache[key].reason)
        choice = cache[key]
        return choice.method, choice.window
