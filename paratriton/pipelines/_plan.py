"""``paratriton.plan``: pick method and window for a diffusers pipeline by timing them on it.

The diffusers layer plans pipelines; ``paratriton.planner`` plans denoisers and knows nothing of diffusers. ``plan``
here is ``paratriton.plan``: a pipeline goes to ``plan_pipeline`` (which runs ``parallelize(pipe, window="auto")``
per method and reads what each timed from its ``ParallelState``), anything else to ``planner.plan_denoiser``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .. import _plan_cache
from ..planner import Plan, plan_denoiser, remembered
from ..solvers.registry import WINDOWED_METHODS, method_spec
from ._wrap import parallelize

__all__ = ["PipelinePlan", "plan", "plan_pipeline"]


@dataclass
class PipelinePlan:
    """What ``plan(pipe, steps)`` measured and chose.

    method/window/history: the fastest sampler ("sequential": no parallel sampler won, with window None);
    predicted_ms: its solve time on the calibration problem (the pipeline's own model and shapes, other noise);
    sequential_ms: the sequential sampler's there (graphed when ``cuda_graph``); wall_ms: every candidate, keyed
    like ``"taa W=25"``; reason: one line saying why. ``plan.parallelize(pipe)`` builds the chosen pipeline.
    """

    method: str
    window: int | None
    history: int | None
    cuda_graph: bool
    predicted_ms: float
    sequential_ms: float
    wall_ms: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    remembered: str | None = None  # the plan-cache file it was read from (None: timed in this process)

    def parallelize(self, pipe):
        """``paratriton.parallelize`` with the chosen method, window and options."""
        if self.method == "sequential":
            return parallelize(pipe, "sequential", cuda_graph=self.cuda_graph)
        return parallelize(pipe, self.method, window=self.window, cuda_graph=self.cuda_graph, **self.options)


def plan_pipeline(
    pipe,
    steps: int,
    devices: int = 1,
    *,
    methods: tuple[str, ...] = ("taa", "picard"),
    cuda_graph: bool | None = None,
    options: dict[str, Any] | None = None,
    plan_cache: bool | None = None,
    **call_kwargs: Any,
) -> PipelinePlan:
    """Time every method in ``methods`` at its candidate windows and the sequential sampler on ``pipe``, and
    return the fastest as a ``PipelinePlan``.

    steps:       ``num_inference_steps`` of the sampling to plan;
    devices:     1 (a pipeline samples on its own device; multi-GPU sampling runs under ``torchrun`` with
                 ``paratriton.distributed.ShardedDenoiser``);
    methods:     windowed methods to try, from ``paratriton.solvers.WINDOWED_METHODS``;
    cuda_graph:  time the CUDA-graphed solvers (default: when the pipeline's model is on CUDA);
    options:     solver options shared by all candidates (``history``, ``tol_abs``, ...);
    plan_cache:  remember the plan on disk and reuse it in later processes without running anything (default: on
                 unless ``PARATRITON_PLAN_CACHE=0``; ``paratriton._plan_cache``): keyed by the device, torch and
                 paratriton versions, the pipeline's class, every component's fingerprint, the scheduler's
                 configuration, ``steps``, ``methods``, ``options`` and ``call_kwargs`` (tensors by shape and dtype,
                 prompts and numbers by value); ``plan.remembered`` is the file it came from;
    call_kwargs: the pipeline call to plan for (prompt or ``prompt_embeds``, ``guidance_scale``, ``height``, ...).

    Runs the pipeline once per method (``window="auto"``: each call times the candidates on a calibration problem
    with other noise, then samples); the batch-time curve of the model decides, so the answer is for this
    device, dtype, resolution and batch. The sequential sampler is timed once (by the first method's pass), and
    a later method's candidates stop once slower than the fastest so far (their ``wall_ms`` are then lower bounds).
    The plan is remembered on disk (``plan_cache``); within a process, call it once and keep the plan.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if devices != 1:
        raise ValueError(
            f"devices must be 1 for a pipeline, got {devices!r}: multi-GPU sampling runs under "
            "torchrun with paratriton.distributed.ShardedDenoiser (see benchmarks/scaling.py)"
        )
    if not methods or isinstance(methods, str) or any(m not in WINDOWED_METHODS for m in methods):
        raise ValueError(f"methods must be a non-empty tuple from {WINDOWED_METHODS}, got {methods!r}")
    if "num_inference_steps" in call_kwargs:
        raise TypeError("pass the step count as steps, not num_inference_steps")

    options = dict(options or {})
    if cuda_graph is None:
        cuda_graph = pipe.device.type == "cuda"
    key = None
    if _plan_cache.enabled(plan_cache):
        modules = {k: v for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}
        key = _plan_cache.make_key(
            "pipeline",
            pipe.device,
            pipeline=type(pipe).__name__,
            components={k: _plan_cache.fingerprint(v) for k, v in modules.items()},
            scheduler=[type(pipe.scheduler).__name__, dict(pipe.scheduler.config)],
            steps=steps,
            methods=list(methods),
            cuda_graph=cuda_graph,
            options=options,
            call=call_kwargs,
        )

    def timed() -> PipelinePlan:
        return _plan_pipeline(pipe, steps, methods, cuda_graph, options, plan_cache, call_kwargs)

    return remembered("plan", key, timed, lambda d: PipelinePlan(**d))


def _plan_pipeline(
    pipe, steps: int, methods: tuple[str, ...], cuda_graph: bool, options: dict, plan_cache, call_kwargs: dict
) -> PipelinePlan:
    walls: dict[str, float] = {}
    sequential_ms = float("inf")
    best: tuple[float, str, int | None] = (float("inf"), "sequential", None)
    hints: dict[tuple, float] = {}
    for method in methods:
        par = parallelize(pipe, method, window="auto", cuda_graph=cuda_graph, **options)  # with a fresh state
        par.paratriton.plan_cache = plan_cache
        par.set_progress_bar_config(disable=True)
        par.paratriton.auto_hints.update(hints)  # the sequential time and the best so far: not re-timed, a bound
        par(num_inference_steps=steps, **call_kwargs)
        ((key, choice),) = par.paratriton.window_choices.items()
        sequential_ms = min(sequential_ms, choice.wall_ms["sequential"])
        finished = [ms for name, ms in choice.wall_ms.items() if name not in choice.stopped]
        hints[(key[:3], cuda_graph, "sequential_ms")] = choice.wall_ms["sequential"]
        hints[(key[:3], "bound_ms")] = min(finished + [hints.get((key[:3], "bound_ms"), float("inf"))])
        for name, ms in choice.wall_ms.items():
            if name != "sequential":
                walls[f"{method} {name}"] = ms
                if ms < best[0]:  # a stopped candidate is past a finished one: never the least
                    best = (ms, method, int(name[2:]))
    walls["sequential"] = sequential_ms
    ms, method, window = best
    kind = "graphed " if cuda_graph else ""
    if ms < sequential_ms:
        history = method_spec(method).check_options(options).get("history")  # the registry's default if unset
        reason = (
            f"{method} with window {window}: {ms:.1f} ms against {sequential_ms:.1f} ms for the {kind}"
            f"sequential sampler ({sequential_ms / ms:.2f}x) at {steps} steps"
        )
        return PipelinePlan(method, window, history, cuda_graph, ms, sequential_ms, walls, reason, options)
    reason = (
        f"sequential: the fastest parallel candidate ({method} window {window}, {ms:.1f} ms) is slower than "
        f"the {kind}sequential sampler ({sequential_ms:.1f} ms) on this device: the model's batch time grows "
        "too fast with the window for parallel sampling to win"
    )
    return PipelinePlan("sequential", None, None, cuda_graph, sequential_ms, sequential_ms, walls, reason, {})


def _is_pipeline(obj: Any) -> bool:
    # by class name, so planning a denoiser never imports diffusers (paratriton.parallelize checks the pipeline)
    return any(c.__name__ == "DiffusionPipeline" for c in type(obj).__mro__)


def plan(model: Any, *args: Any, **kwargs: Any) -> Plan | PipelinePlan:
    """Plan parallel sampling (``paratriton.plan``); two forms.

    ``plan(pipe, steps, devices=1, **call_kwargs)``: a diffusers pipeline. Times every windowed method at its
    candidate windows and the sequential sampler on the pipeline's own model, and returns a ``PipelinePlan``
    (method, window, history, predicted time, reason); ``plan.parallelize(pipe)`` builds the chosen sampler.
    See ``plan_pipeline`` for the options.

    ``plan(model, coeffs, x_T, noise=None, ...)``: a denoiser. Predicts full-window TAA's wall time from the model's
    batch-time curve and a calibration solve, and returns a ``Plan``; see ``paratriton.planner.plan_denoiser``.
    """
    if _is_pipeline(model):
        return plan_pipeline(model, *args, **kwargs)
    return plan_denoiser(model, *args, **kwargs)
