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

import dataclasses
import functools
import logging
import math
import statistics
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from . import _plan_cache
from ._cuda_graph import capture, median_ms
from .model import Denoiser
from .schedulers.operator import SamplerCoefficients
from .solvers import solve
from .solvers.engine import bucket_sizes
from .solvers.graphed_sequential import GraphedSequential
from .solvers.registry import WINDOWED_METHODS, make_solver

__all__ = [
    "Plan",
    "WindowChoice",
    "batch_time_curve",
    "bucket_sizes",
    "choose_window",
    "plan",
    "plan_denoiser",
    "remembered",
]

log = logging.getLogger("paratriton")

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
    remembered: str | None = None  # the plan-cache file it was read from (None: timed in this process)


def remembered(kind: str, key: dict[str, Any] | None, compute: Callable[[], Any], restore: Callable[[dict], Any]):
    """``compute()``'s result, remembered on disk under ``key`` (``paratriton._plan_cache``; ``key`` None: not
    remembered). A hit is ``restore(stored fields)`` with ``remembered`` set to the file; a miss computes and
    stores ``dataclasses.asdict`` of the result."""
    if key is not None:
        stored = _plan_cache.load(key)
        if stored is not None:
            try:
                out = restore(stored)
            except (KeyError, TypeError, ValueError):  # an incompatible file: timed again, and overwritten
                out = None
            if out is not None:
                out.remembered = str(_plan_cache.path_of(key))
                log.info("paratriton: %s remembered from %s: %s", kind, out.remembered, out.reason)
                return out
    out = compute()
    if key is not None:
        fields = {k: v for k, v in dataclasses.asdict(out).items() if k != "remembered"}
        path = _plan_cache.store(key, fields)
        if path is not None:
            log.info("paratriton: %s stored in %s", kind, path)
    return out


def _plan_from(d: dict) -> Plan:
    d = dict(d)
    d["batch_ms"] = {int(k): float(v) for k, v in d["batch_ms"].items()}  # JSON keys are strings
    return Plan(**d)


def _choice_from(d: dict) -> WindowChoice:
    d = dict(d)
    d["stopped"], d["pruned"] = tuple(d["stopped"]), tuple(d["pruned"])
    return WindowChoice(**d)


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
    """Milliseconds per call of ``model`` on ``rows`` rows (float64 inputs, as the solvers pass them); cached per
    model (a model that cannot be a weak dictionary key, e.g. unhashable, is timed afresh each time)."""
    try:
        curve = _CURVES.setdefault(model, {}).setdefault((tuple(sample_shape), str(device)), {})
    except TypeError:  # unhashable or not weak-referenceable: no cache, the same timings
        curve = {}
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
    plan_cache: bool | None = None,
    cache_key: str | None = None,
) -> Plan:
    """Plan sampling of ``x_T [B, ...]`` with ``model`` and ``coeffs`` on ``x_T``'s device.

    A calibration problem (``x_T``, ``noise``: use another seed than the one you will sample) is solved twice
    with the engine (CUDA graphs on CUDA); the second solve gives the window of every iteration and the
    per-iteration cost outside the model call (host round trip, solver ops), measured, not assumed.
    schedule:   window size per iteration, to skip the calibration's schedule; solver_ms: the same for the cost.
    plan_cache: remember the plan on disk and reuse it in later processes (``paratriton._plan_cache``; default:
                on unless ``PARATRITON_PLAN_CACHE=0``). The key is the device, torch and paratriton versions, the
                model's fingerprint (an ``nn.Module``; for another callable pass ``cache_key``, a name you change
                whenever the model does, else nothing is remembered), the coefficients, the problem's shapes and
                these options. ``plan.remembered`` is the file a remembered plan came from.
    """
    if cache_key is not None and not isinstance(cache_key, str):
        raise TypeError(f"cache_key must be a str or None, got {type(cache_key).__name__}")
    key = None
    if _plan_cache.enabled(plan_cache):
        fp = cache_key if cache_key is not None else _plan_cache.fingerprint(model)
        if fp is not None:
            key = _plan_cache.make_key(
                "plan",
                x_T.device,
                model=fp,
                named=cache_key is not None,
                coeffs=_plan_cache.coeffs_digest(coeffs),
                x_T=x_T,
                noise=noise,
                history=history,
                buckets=buckets,
                tol_abs=tol_abs,
                tol_rel=tol_rel,
                schedule=schedule,
                solver_ms=solver_ms,
            )
    run = functools.partial(
        _plan_denoiser, model, coeffs, x_T, noise, history, buckets, tol_abs, tol_rel, schedule, solver_ms
    )
    return remembered("plan", key, run, _plan_from)


def _plan_denoiser(
    model: Denoiser,
    coeffs: SamplerCoefficients,
    x_T: torch.Tensor,
    noise: torch.Tensor | None,
    history: int | None,
    buckets: int,
    tol_abs: float | None,
    tol_rel: float,
    schedule: list[int] | None,
    solver_ms: float | None,
) -> Plan:
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
    """The outcome of ``choose_window``: ``window`` is an int, or None for the sequential sampler.

    wall_ms: per candidate ("sequential", "W=8", ...) its wall time on the calibration problem; for a candidate in
    ``stopped`` a lower bound of it (such a candidate is never the choice): the bound at which its run was stopped,
    once it was known to be slower than the fastest so far, or, for one also in ``pruned``, the bound that kept it
    from running at all (``choose_window``)."""

    window: int | None
    method: str
    wall_ms: dict[str, float]  # per candidate ("sequential", "W=8", ...), measured
    reason: str
    stopped: tuple[str, ...] = ()
    pruned: tuple[str, ...] = ()
    spent_s: dict[str, float] = field(default_factory=dict)  # per candidate the wall seconds its timing took
    remembered: str | None = None  # the plan-cache file it was read from (None: timed in this process)


class _Stop(Exception):
    """Raised from a timing run's callback once the run is known to be slower than the fastest candidate so far."""


# A graphed candidate's first run captures its window's iteration (and the roughness probes): the intervals between
# its host reads that captured are not timings of the replayed solve. The first ``_CAPTURED_INTERVALS`` always are
# (the window's capture, the probe's two captures after iterations 1 and 2); so is any interval of a new replay shape.
_CAPTURED_INTERVALS = 2
# a first run whose replay time is estimated within this factor of the fastest so far is timed again (replays only)
_RETIME_WITHIN = 1.1
# the smallest candidate window runs until it is known to take this many times the fastest so far, so that the
# rows it evaluates (exact if it finished) bound the wider windows' iterations (``window_lower_ms``)
FIRST_RUN_LIMIT = 2.0


def iterations_left(frozen_from: int, window: int, static: bool = True) -> int:
    """A lower bound on the iterations of width ``window`` a windowed solve still needs: every step below the
    window top ``frozen_from`` must leave the window, and the top descends by at most ``window`` steps per
    iteration. ``static`` (the graphed engine) keeps the width; otherwise the last window is narrower
    (``min(window, frozen_from)`` rows), so one iteration fewer is of the full width."""
    return max(0, -(-frozen_from // window) - (0 if static else 1))


class _RunClock:
    """The callback of one timing run: the wall time per host read, and a stop once the run is known to take
    longer than ``limit_ms``: its time so far plus ``iterations_left`` at its fastest iteration so far without a
    floor probe (``static``: the graphed engine, whose window keeps its width).

    ``capturing`` (a graphed solver's first run): the intervals that captured are replaced by the mean interval
    of the same replay shape (window, iterations per replay), so ``estimate_ms`` is the replayed solve's time; the
    time so far counts the replayed intervals alone (the captures' replays at the fastest such interval).
    Otherwise the run is the timing and its time so far is its wall time."""

    def __init__(self, window: int, limit_ms: float, capturing: bool, static: bool, min_rows: int = 0) -> None:
        self.window, self.limit, self.capturing, self.static = window, limit_ms, capturing, static
        self.min_rows = min_rows  # the most rows a smaller window's solve evaluated (``window_lower_ms``)
        self.t0 = self.last = time.perf_counter()
        self.it = 0
        self.clean: dict[tuple, list[float]] = {}
        self.captured: list[tuple] = []
        self.per_iteration = math.inf  # the fastest clean interval without a floor probe, per iteration
        self.probes = 0
        self.frozen_from: int | None = None
        self.rows = 0  # window rows evaluated so far (per trajectory)
        self.stopped = False

    def __call__(self, info) -> None:
        now = time.perf_counter()
        dt, self.last = 1e3 * (now - self.last), now
        key = (self.window, info.iteration - self.it)
        probed = info.probe_calls != self.probes  # a floor probe's model call is in this interval
        lo, hi = info.window
        self.rows += self.window * key[1] if self.static else hi - lo
        self.it, self.frozen_from, self.probes = info.iteration, info.frozen_from, info.probe_calls
        if self.capturing and (
            len(self.captured) + sum(map(len, self.clean.values())) < _CAPTURED_INTERVALS
            or key not in self.clean
            and key not in self.captured
        ):
            self.captured.append(key)
        else:
            self.clean.setdefault(key, []).append(dt)
            if not probed:
                self.per_iteration = min(self.per_iteration, dt / max(1, key[1]))
        if self.lower_ms() > self.limit:
            self.stopped = True
            raise _Stop

    def lower_ms(self) -> float:
        """The run's time so far plus the iterations it still needs at its fastest clean iteration (at least
        ``iterations_left``, and at least the rows of ``min_rows`` it has not evaluated yet)."""
        left = 0.0
        if self.frozen_from is not None and math.isfinite(self.per_iteration):
            iterations = iterations_left(self.frozen_from, self.window, self.static)
            left = max(iterations, (self.min_rows - self.rows) / self.window) * self.per_iteration
        if not self.capturing:
            return 1e3 * (time.perf_counter() - self.t0) + left
        fastest = min((min(v) for v in self.clean.values()), default=0.0)
        return sum(map(sum, self.clean.values())) + len(self.captured) * fastest + left

    def rows_lower(self) -> int:
        """The window rows the whole run evaluates: exact once it finished, a lower bound when stopped."""
        left = 0 if self.frozen_from is None else iterations_left(self.frozen_from, self.window, self.static)
        return self.rows + left * self.window

    def estimate_ms(self) -> float | None:
        """The replayed solve's time; None when a captured interval's shape never replayed in this run."""
        if not self.capturing:
            return 1e3 * (self.last - self.t0)
        if any(k not in self.clean for k in self.captured):
            return None
        return sum(map(sum, self.clean.values())) + sum(statistics.fmean(self.clean[k]) for k in self.captured)


def iteration_lower_ms(per_iteration: dict[int, float], window: int, step_ms: float = 0.0) -> float:
    """A lower bound on one iteration's time at ``window``, from the fastest iterations of the smaller windows
    timed (``per_iteration``; 0 without any) and the sequential sampler's time per step ``step_ms``.

    An iteration's time is a convex function of the window (the batch-time curve of a GPU is a constant up to the
    batch that fills it, then linear): the line through the two largest timed windows, extended, stays below it.
    With one timed window, the line from the sequential step (window 1) to it, at half its slope: the iteration
    also pays the solver's work and a host read, which the sequential step does not, so the full slope would
    overstate the growth; halved, the bound holds while that work is at most half the model call's growth from
    one step to the window. Without the sequential step, the time does not decrease."""
    pts = sorted((w, ms) for w, ms in per_iteration.items() if w < window and math.isfinite(ms))
    if not pts:
        return 0.0
    (w2, t2) = pts[-1]
    if len(pts) == 1:
        return t2 + (window - w2) * 0.5 * max(0.0, (t2 - step_ms) / (w2 - 1)) if step_ms > 0 and w2 > 1 else t2
    w1, t1 = pts[-2]
    return t2 + (window - w2) * max(0.0, (t2 - t1) / (w2 - w1))


def window_lower_ms(
    measured: dict[int, tuple[float, int]], window: int, T: int, static: bool = True, step_ms: float = 0.0
) -> float:
    """A lower bound on a solve's time at ``window`` from the smaller windows timed (``measured``: per window its
    fastest iteration in ms and the window rows its solve evaluates, or a lower bound of them):
    ``iterations * iteration_lower_ms``, with at least ``iterations_left(T, window)`` iterations and at least
    ``rows / window`` for the most rows a smaller window evaluated. The second assumes a wider window never
    evaluates fewer rows (it spends evaluations on steps whose inputs are not yet accurate; measured on the
    benchmark problems in ``benchmarks/RESULTS.md``) and that an iteration's time per row does not grow as its
    window narrows (a GPU's batch time has a fixed part)."""
    rows = max((r for w, (_, r) in measured.items() if w < window), default=0)
    iterations = max(iterations_left(T, window, static), rows / window)
    return iterations * iteration_lower_ms({w: ms for w, (ms, _) in measured.items()}, window, step_ms)


def choose_window(
    model: Denoiser,
    coeffs: SamplerCoefficients,
    x_T: torch.Tensor,
    noise: torch.Tensor | None,
    method: str = "taa",
    candidates: list[int] | None = None,
    cuda_graph: bool = False,
    *,
    solvers: dict | None = None,
    bound_ms: float | None = None,
    sequential_ms: float | None = None,
    **options,
) -> WindowChoice:
    """Time what will run for each candidate window and the sequential sampler on a calibration problem, and
    return the fastest. Every window gives the same sample to the tolerance, so this only picks speed.

    candidates: default ``T`` and ``T/2, T/4, ...`` down to 4. cuda_graph: time the graphed engine and
    ``GraphedSequential`` instead of ``paratriton.solve``.

    The sequential sampler is timed first (graphed: ``GraphedSequential``, one captured step whose replay is timed
    ``TIMED_STEPS`` times), then the candidates from the smallest window up:

    - the windows left are not run at all once ``window_lower_ms`` (from the smaller windows' iterations and
      rows) of every one exceeds the fastest so far (``pruned``); until then the smallest left runs, the
      cheapest to learn the curve from;
    - a run stops as soon as its time so far plus its remaining iterations (``iterations_left``, or the rows of
      a smaller window not yet evaluated) at its fastest iteration exceed the fastest so far (``stopped``; its
      ``wall_ms`` is then a lower bound); the smallest window's only past ``FIRST_RUN_LIMIT`` times it, so that
      its rows bound the wider windows';
    - graphed, a candidate's first run (which captures) is its timing: the intervals between host reads that
      captured are replaced by the replays of the same shape; it is timed again (replays only) when that
      estimate is within 10% of the fastest so far.

    solvers:       a dict (``GraphedSolvers.solvers`` of the pipeline layer): the graphed solvers are looked up
                   here by ``(method, sorted options)``, and the chosen one (captured, on this model and
                   coefficients) is left in it, so solving with the choice recaptures nothing;
    bound_ms:      a time known to be reachable otherwise (another method's best): candidates past it stop;
    sequential_ms: the sequential sampler's time if already measured (not timed again).
    """
    if method not in WINDOWED_METHODS:
        raise ValueError(f"method must be a windowed method from {WINDOWED_METHODS}, got {method!r}")
    T = coeffs.num_steps
    if candidates is None:
        candidates = sorted({T, *[T // 2**j for j in range(1, 8) if T // 2**j >= 4]}, reverse=True)
    sync = torch.cuda.synchronize if x_T.device.type == "cuda" else (lambda: None)
    built: dict[tuple, object] = {}  # graphed solvers timed here, by the pipeline layer's key

    def key_of(name: str, kw: dict) -> tuple:
        return name, tuple(sorted(kw.items()))

    def sequential() -> float:
        if not cuda_graph:
            run = functools.partial(solve, model, coeffs, x_T, noise, method="sequential")
            sync()
            t0 = time.perf_counter()
            run()
            sync()
            return 1e3 * (time.perf_counter() - t0)
        k = key_of("sequential", {})
        seq = (solvers or {}).get(k)
        if seq is None:
            seq = GraphedSequential(model, coeffs, x_T, noise)  # captures one step
        else:
            seq.load(x_T, noise)
        built[k] = seq
        return seq.time_ms()

    def candidate(W: int, limit: float) -> tuple[float, bool]:
        """(wall ms, whether the run was stopped past ``limit``); its clock's figures go to ``measured``."""
        kw = {"window": W, **options}
        rows = max((r for w, (_, r) in measured.items() if w < W), default=0)
        if not cuda_graph:
            clock = _RunClock(W, limit, capturing=False, static=False, min_rows=rows)
            out = timed_run(lambda: solve(model, coeffs, x_T, noise, method=method, callback=clock, **kw), clock)
            measured[W] = (clock.per_iteration, clock.rows_lower())
            return out
        k = key_of(method, kw)
        solver = (solvers or {}).get(k) or make_solver(method, cuda_graph=True, **kw)
        fresh = k not in (solvers or {}) and x_T.device.type == "cuda"  # its first run captures
        clock = _RunClock(W, limit, capturing=fresh, static=True, min_rows=rows)
        ms, was_stopped = timed_solver(solver, clock)
        measured[W] = (clock.per_iteration, clock.rows_lower())
        if was_stopped:
            return ms, True
        built[k] = solver
        ms = clock.estimate_ms()
        if not fresh or (ms is not None and ms > _RETIME_WITHIN * best):  # captured already, or a clear loser
            return ms, False
        retime = _RunClock(W, limit, capturing=False, static=True, min_rows=rows)
        return timed_solver(solver, retime)  # replays only: the timing

    def timed_run(run: Callable[[], object], clock: _RunClock) -> tuple[float, bool]:
        """(wall ms of ``run`` under ``clock``, whether the clock stopped it: then a lower bound)."""
        sync()
        clock.t0 = clock.last = time.perf_counter()
        try:
            run()
            sync()
        except _Stop:
            return clock.lower_ms(), True
        return 1e3 * (time.perf_counter() - clock.t0), False

    def timed_solver(solver, clock: _RunClock) -> tuple[float, bool]:
        """``timed_run`` for a graphed solver, ``clock`` as its callback for this run only."""
        solver.callback = clock
        try:
            return timed_run(functools.partial(solver.solve, model, coeffs, x_T, noise), clock)
        finally:
            solver.callback = None

    spent: dict[str, float] = {}
    t_start = time.perf_counter()
    walls = {"sequential": sequential() if sequential_ms is None else float(sequential_ms)}
    spent["sequential"] = time.perf_counter() - t_start
    best = min(walls["sequential"], math.inf if bound_ms is None else float(bound_ms))
    stopped: list[str] = []
    pruned: list[str] = []
    timed: dict[str, float] = {}
    measured: dict[int, tuple[float, int]] = {}  # per timed window: its fastest iteration (ms), its rows (lower)
    remaining = sorted(candidates)  # small windows first: cheap iterations, and they bound the wide ones
    while remaining:
        step_ms = walls["sequential"] / T
        lower = {W: window_lower_ms(measured, W, T, cuda_graph, step_ms) for W in remaining}
        if all(lower[W] > best for W in remaining):  # every one known slower before any capture: none is run
            for W in remaining:
                timed[f"W={W}"] = lower[W]
                stopped.append(f"W={W}")
                pruned.append(f"W={W}")
            break
        # otherwise the smallest runs, even if its own bound passed: it is the cheapest to learn the curve from
        W = remaining.pop(0)
        t_start = time.perf_counter()
        # the smallest window may run to FIRST_RUN_LIMIT x the fastest: its rows then bound the wide ones'
        ms, was_stopped = candidate(W, best * (FIRST_RUN_LIMIT if not measured else 1.0))
        spent[f"W={W}"] = time.perf_counter() - t_start
        timed[f"W={W}"] = ms
        if was_stopped:
            stopped.append(f"W={W}")
        else:
            best = min(best, ms)
    walls.update({f"W={W}": timed[f"W={W}"] for W in candidates})
    complete = {k: v for k, v in walls.items() if k not in stopped}
    best_name = min(complete, key=complete.get)
    window = None if best_name == "sequential" else int(best_name[2:])
    if solvers is not None:  # keep the chosen solver only (the others' graphs and buffers are freed)
        chosen = key_of("sequential", {}) if window is None else key_of(method, {"window": window, **options})
        if chosen in built:
            solvers[chosen] = built[chosen]
    reason = f"{best_name} was fastest: " + ", ".join(f"{k} {v:.0f} ms" for k, v in walls.items())
    ran = [n for n in stopped if n not in pruned]
    if ran:
        reason += f" ({', '.join(ran)} stopped once slower than the fastest)"
    if pruned:
        reason += f" ({', '.join(pruned)} not run: their lower bounds were slower than the fastest)"
    method_run = "sequential" if window is None else method
    return WindowChoice(window, method_run, walls, reason, tuple(stopped), tuple(pruned), spent)
