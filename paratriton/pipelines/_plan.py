"""``paratriton.plan(pipe, steps)``: pick method and window for a diffusers pipeline by timing them on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._graphed import GRAPHED_METHODS


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

    def parallelize(self, pipe):
        """``paratriton.parallelize`` with the chosen method, window and options."""
        from ._wrap import parallelize

        if self.method == "sequential":
            return parallelize(pipe, "sequential", cuda_graph=self.cuda_graph)
        return parallelize(pipe, self.method, window=self.window, cuda_graph=self.cuda_graph, **self.options)


def plan_pipeline(pipe, steps: int, devices: int = 1, *, methods: tuple[str, ...] = ("taa", "picard"),
                  cuda_graph: bool | None = None, options: dict[str, Any] | None = None,
                  **call_kwargs: Any) -> PipelinePlan:
    """Time every method in ``methods`` at its candidate windows and the sequential sampler on ``pipe``, and
    return the fastest as a ``PipelinePlan``.

    steps:       ``num_inference_steps`` of the sampling to plan;
    devices:     1 (a pipeline samples on its own device; multi-GPU sampling runs under ``torchrun`` with
                 ``paratriton.distributed.ShardedDenoiser``);
    methods:     windowed methods to try, from ``("taa", "fp", "picard")``;
    cuda_graph:  time the CUDA-graphed solvers (default: when the pipeline's model is on CUDA);
    options:     solver options shared by all candidates (``history``, ``tol_abs``, ...);
    call_kwargs: the pipeline call to plan for (prompt or ``prompt_embeds``, ``guidance_scale``, ``height``, ...).

    Runs the pipeline once per method (``window="auto"``: each call times the candidates on a calibration problem
    with other noise, then samples); the batch-time curve of the model decides, so the answer is for this
    device, dtype, resolution and batch. Nothing is cached: call it once and keep the plan.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if devices != 1:
        raise ValueError(f"devices must be 1 for a pipeline, got {devices!r}: multi-GPU sampling runs under "
                         "torchrun with paratriton.distributed.ShardedDenoiser (see benchmarks/scaling.py)")
    if not methods or any(m not in GRAPHED_METHODS or m == "sequential" for m in methods):
        raise ValueError(f"methods must be a non-empty tuple from ('taa', 'fp', 'picard'), got {methods!r}")
    if "num_inference_steps" in call_kwargs:
        raise TypeError("pass the step count as steps, not num_inference_steps")
    from ._wrap import parallelize

    options = dict(options or {})
    if cuda_graph is None:
        cuda_graph = pipe.device.type == "cuda"
    walls: dict[str, float] = {}
    sequential_ms = float("inf")
    best: tuple[float, str, int | None] = (float("inf"), "sequential", None)
    for method in methods:
        par = parallelize(pipe, method, window="auto", cuda_graph=cuda_graph, **options)
        par.set_progress_bar_config(disable=True)
        par.__dict__["paratriton_window_choices"] = {}  # its own, not one shared through a parallelized pipe
        par(num_inference_steps=steps, **call_kwargs)
        (choice,) = par.__dict__["paratriton_window_choices"].values()
        sequential_ms = min(sequential_ms, choice.wall_ms["sequential"])
        for name, ms in choice.wall_ms.items():
            if name != "sequential":
                walls[f"{method} {name}"] = ms
                if ms < best[0]:
                    best = (ms, method, int(name[2:]))
    walls["sequential"] = sequential_ms
    ms, method, window = best
    kind = "graphed " if cuda_graph else ""
    if ms < sequential_ms:
        history = options.get("history", 2) if method == "taa" else None
        reason = (f"{method} with window {window}: {ms:.1f} ms against {sequential_ms:.1f} ms for the {kind}"
                  f"sequential sampler ({sequential_ms / ms:.2f}x) at {steps} steps")
        return PipelinePlan(method, window, history, cuda_graph, ms, sequential_ms, walls, reason, options)
    reason = (f"sequential: the fastest parallel candidate ({method} window {window}, {ms:.1f} ms) is slower than "
              f"the {kind}sequential sampler ({sequential_ms:.1f} ms) on this device: the model's batch time grows "
              "too fast with the window for parallel sampling to win")
    return PipelinePlan("sequential", None, None, cuda_graph, sequential_ms, sequential_ms, walls, reason, {})
