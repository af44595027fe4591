"""Pick sequential or parallel sampling for a denoiser on the hardware at hand, and predict the wall time.

Planning knows nothing of diffusers: a pipeline is planned by ``paratriton.pipelines.plan_pipeline`` (which uses
``choose_window`` from here), and ``paratriton.plan`` dispatches between the two forms.

The cost of one parallel iteration is one batched model call over the window plus the solver's own work and the
host round trip; the cost of the sequential sampler is ``T`` calls at the sampling batch. Model costs come from the
model's measured batch-time curve (CUDA-graphed where possible, cached per model and shape); the iterations, their
windows and the per-iteration overhead come from a calibration solve on the same model with another seed
(convergence varies little between seeds). If the parallel prediction does not beat the sequential one, the plan
says so and picks the sequential sampler.
"""

from __future__ import annotations

import functools
import statistics
import time
import weakref
from dataclasses import dataclass, field

import torch

from ._cuda_graph import capture, median_ms
from .model import Denoiser
from .schedule import SamplerCoefficients
from .solvers import solve
from .solvers.engine import bucket_sizes
from .solvers.graphed_sequential import GraphedSequential
from .solvers.registry import WINDOWED_METHODS, make_solver

__all__ = ["Plan", "WindowChoice", "batch_time_curve", "bucket_sizes", "choose_window", "plan", "plan_denoiser"]

_CURVES: weakref.WeakKeyDictionary[object, dict[tuple, dict[int, float]]] = weakref.WeakKeyDictionary()


@dataclass
class Plan:
    method: str  # "taa" or "sequential"
    history: int | None
    buckets: int
    predicted_ms: float  # of the chosen method
    sequential_ms: float
    parallel_ms: float
    schedule: list[int]  # bucket (window) size of every predicted iteration
    batch_ms: dict[int, float] = field(default_factory=dict)
    reason: str = ""


def _time_call(fn, device: torch.device, reps: int) -> float:
    """Median ms of ``fn()``; CUDA-graphed on CUDA (what the solvers replay), wall clock on the CPU."""
    if device.type == "cuda":
        graph, _ = capture(fn)
        return median_ms(graph.replay, reps)
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(ts)


def batch_time_curve(
    model: Denoiser, sample_shape: tuple[int, ...], rows: list[int], device: torch.device, reps: int = 10
) -> dict[int, float]:
    """Milliseconds per call of ``model`` on ``rows`` rows (float64 inputs, as the solvers pass them); cached."""
    curve = _CURVES.setdefault(model, {}).setdefault((tuple(sample_shape), str(device)), {})
    with torch.no_grad():
        for n in rows:
            if n not in curve:
                x = torch.randn(n, *sample_shape, device=device, dtype=torch.float64)
                s = torch.zeros(n, dtype=torch.long, device=device)
                curve[n] = _time_call(lambda x=x, s=s: model(x, s), device, reps)
    return {n: curve[n] for n in rows}


def plan_denoiser(
    model: Denoiser,
    coeffs: SamplerCoefficients,
    x_T: torch.Tensor,
    noise: torch.Tensor | None = None,
    *,
    history: int | None = None,
    buckets: int = 4,
    tol_abs: float | None = None,
    tol_rel: float = 1e-3,
    schedule: list[int] | None = None,
    solver_ms: float | None = None,
) -> Plan:
    """Plan sampling of ``x_T [B, ...]`` with ``model`` and ``coeffs`` on ``x_T``'s device.

    A calibration problem (``x_T``, ``noise``: use another seed than the one you will sample) is solved twice
    with the engine (CUDA graphs on CUDA); the second solve gives the window of every iteration and the
    per-iteration cost outside the model call (host round trip, solver ops), measured, not assumed.
    schedule:  window size per iteration, to skip the calibration's schedule; solver_ms: the same for the cost.
    """
    T, B, shape = coeffs.num_steps, x_T.shape[0], tuple(x_T.shape[1:])
    dev = x_T.device
    sizes = bucket_sizes(T, buckets)
    curve = batch_time_curve(model, shape, sorted({B, *[B * h for h in sizes]}), dev)
    if schedule is None or solver_ms is None:
        windows: list[int] = []
        cal = make_solver(
            "taa",
            history=history,
            buckets=buckets,
            tol_abs=tol_abs,
            tol_rel=tol_rel,
            cuda_graph=dev.type == "cuda",
            callback=lambda info: windows.append(next(h for h in sizes if h >= info.window[1])),
        )
        cal.solve(model, coeffs, x_T, noise)  # first solve: captures the graphs
        windows.clear()
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        cal.solve(model, coeffs, x_T, noise)
        sync()
        measured_ms = 1e3 * (time.perf_counter() - t0)
        if solver_ms is None:
            solver_ms = max(0.0, (measured_ms - sum(curve[B * h] for h in windows)) / max(1, len(windows)))
        if schedule is None:
            schedule = windows
    seq = T * curve[B]
    par = sum(curve[B * h] + solver_ms for h in schedule)
    if par < seq:
        return Plan(
            "taa",
            history,
            buckets,
            par,
            seq,
            par,
            list(schedule),
            curve,
            f"parallel: {len(schedule)} iterations at {par:.1f} ms beat {T} sequential calls at {seq:.1f} ms",
        )
    return Plan(
        "sequential",
        history,
        buckets,
        seq,
        seq,
        par,
        list(schedule),
        curve,
        f"sequential: {len(schedule)} parallel iterations would take {par:.1f} ms, more than {T} "
        f"sequential calls at {seq:.1f} ms on this device (the model's batch time grows too fast)",
    )


plan = plan_denoiser  # the denoiser form of ``paratriton.plan`` (which also takes a diffusers pipeline)


@dataclass
class WindowChoice:
    """The outcome of ``choose_window``: ``window`` is an int, or None for the sequential sampler."""

    window: int | None
    method: str
    wall_ms: dict[str, float]  # per candidate ("sequential", "W=8", ...), measured
    reason: str


def choose_window(
    model: Denoiser,
    coeffs: SamplerCoefficients,
    x_T: torch.Tensor,
    noise: torch.Tensor | None,
    method: str = "taa",
    candidates: list[int] | None = None,
    cuda_graph: bool = False,
    **options,
) -> WindowChoice:
    """Time what will run for each candidate window and the sequential sampler on a calibration problem, and
    return the fastest. Every window gives the same sample to the tolerance, so this only picks speed.
    candidates: default ``T`` and ``T/2, T/4, ...`` down to 4. cuda_graph: time the graphed engine and
    ``GraphedSequential`` (the graphs are captured by a first, untimed run) instead of ``paratriton.solve``.
    """
    if method not in WINDOWED_METHODS:
        raise ValueError(f"method must be a windowed method from {WINDOWED_METHODS}, got {method!r}")
    T = coeffs.num_steps
    if candidates is None:
        candidates = sorted({T, *[T // 2**j for j in range(1, 8) if T // 2**j >= 4]}, reverse=True)
    sync = torch.cuda.synchronize if x_T.device.type == "cuda" else (lambda: None)

    def wall(**kw) -> float:
        if not cuda_graph:
            run = functools.partial(solve, model, coeffs, x_T, noise, **kw)
        elif kw.pop("method") == "sequential":
            run = GraphedSequential(model, coeffs, x_T, noise).run  # captures
        else:
            solver = make_solver(method, cuda_graph=True, **kw)
            run = functools.partial(solver.solve, model, coeffs, x_T, noise)
            run()  # captures
        sync()
        t0 = time.perf_counter()
        run()
        sync()
        return 1e3 * (time.perf_counter() - t0)

    walls = {"sequential": wall(method="sequential")}
    for W in candidates:
        walls[f"W={W}"] = wall(method=method, window=W, **options)
    best = min(walls, key=walls.get)
    window = None if best == "sequential" else int(best[2:])
    return WindowChoice(
        window,
        "sequential" if window is None else method,
        walls,
        f"{best} was fastest: " + ", ".join(f"{k} {v:.0f} ms" for k, v in walls.items()),
    )
