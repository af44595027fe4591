"""The sequential sampler under CUDA graphs: the strongest single-GPU baseline a parallel sampler must beat."""

from __future__ import annotations

import math
import time

import torch

from .._cuda_graph import NestedCUDAGraphError, capture, warn_nested_graphs
from ..model import Denoiser
from ..schedulers.operator import StepOperator, one_tap_view
from ._common import (
    ModelCaller,
    NonFiniteError,
    SolveResult,
    check_problem,
    diagnose_step,
    first_bad_step,
)

GRAPHS = ("loop", "step")
# the step graph's time is measured from this many replays (every replay is the same GPU work)
TIMED_STEPS = 8


def _rows(t: torch.Tensor, i: int | torch.Tensor, off: int = 0) -> torch.Tensor:
    """Row ``i + off`` of ``t`` as a one-row block: a view for a host step, a gather for the device counter."""
    if isinstance(i, int):
        return t[i + off : i + off + 1]
    return t.index_select(0, i + off if off else i)


def _put(t: torch.Tensor, i: int | torch.Tensor, row: torch.Tensor) -> None:
    if isinstance(i, int):
        t[i : i + 1] = row
    else:
        t.index_copy_(0, i, row)


class GraphedSequential:
    """The ``T`` steps ``x_i = a_i x_{i+1} + sum_j b[i, j] M_{i+j} + c_i xi_i`` under CUDA graphs
    (``M_i = output_scale_i m_i + output_mix_i x_{i+1}``, ``m_i = model(input_scale_i x_{i+1}, i)``: the identity
    maps for one-tap operators; every tap output is kept in a ``[T + k - 1, B, D]`` buffer).

    graph: ``"step"`` (default) captures one step, which reads its index from a device counter and decrements
           it, and replays it ``T`` times: capturing costs 2 eager model calls. ``"loop"`` captures all ``T`` steps
           into one graph: capturing costs ``2 T`` eager model calls (2.4-2.9 s for SD-1.5 or the digits model at
           DDIM-50 on an H200, against 0.02-0.07 s), and its replay was no faster there: 0.95-1.002x the step
           graph's time, with bit-identical samples (``benchmarks/sequential_graphs.py``).

    The constructor captures (the model must be capturable: static shapes, no host syncs); ``run`` replays and
    returns the trajectory. Off CUDA (or with ``use_cuda_graph=False``, or around a model that replays CUDA graphs
    of its own: ``torch.compile(mode="reduce-overhead")``, with a warning) the same step runs eagerly. The state
    dtype defaults to float32 here: this is the baseline timed against, and float64 would slow it for nothing.
    """

    def __init__(
        self,
        model: Denoiser,
        coeffs: StepOperator,
        x_T: torch.Tensor,
        noise: torch.Tensor | None = None,
        *,
        state_dtype: torch.dtype = torch.float32,
        use_cuda_graph: bool = True,
        graph: str = "step",
    ) -> None:
        if state_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"state_dtype must be torch.float32 or torch.float64, got {state_dtype}")
        if graph not in GRAPHS:
            raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
        check_problem(one_tap_view(coeffs), x_T, noise)
        T, B, self.shape = coeffs.num_steps, x_T.shape[0], tuple(x_T.shape[1:])
        D, dev = math.prod(self.shape), x_T.device
        cf = coeffs.to(dev)
        self.T, self.B = T, B
        self.a, self.b, self.c = (v.to(state_dtype) for v in (cf.a, cf.b, cf.c))
        if self.b.ndim == 1:
            self.b = self.b[:, None]
        # host structure (which taps and maps are not the identity), fixed at capture; the step graph serves every
        # step, so it applies the union (a unit scale, a zero mix or a zero weight changes no value)
        self.taps = [[j for j, w in enumerate(row) if w != 0.0] for row in coeffs.b.reshape(T, -1).tolist()]
        self.scale_in, self.scale_out, self.mix = (
            getattr(cf, n).to(state_dtype) for n in ("input_scale", "output_scale", "output_mix")
        )
        self.host_maps = [
            (s != 1.0, u != 1.0, v != 0.0)
            for s, u, v in zip(coeffs.input_scale.tolist(), coeffs.output_scale.tolist(), coeffs.output_mix.tolist())
        ]
        self.any_taps = sorted({j for row in self.taps for j in row})
        self.any_maps = tuple(any(f[n] for f in self.host_maps) for n in range(3))
        self.multi = int(coeffs.taps) > 1 or any(self.any_maps)
        k = self.b.shape[1]
        self.M = torch.zeros(T + k - 1, B, D, dtype=state_dtype, device=dev) if self.multi else None
        self.stochastic = noise is not None and coeffs.is_stochastic
        self.xi = noise.reshape(T, B, D).to(state_dtype, copy=True) if self.stochastic else None
        self.x = torch.empty(T + 1, B, D, dtype=state_dtype, device=dev)
        self.x[T] = x_T.reshape(B, D)
        self.steps = torch.arange(T, device=dev)
        self.counter = torch.full((1,), T - 1, dtype=torch.long, device=dev)  # the step graph's next step
        self.call = ModelCaller(
            model, self.shape, B, clamp=False, coeffs=coeffs, device=x_T.device
        )  # the reference answer: never clamped
        self.coeffs = coeffs
        self.per_step = graph == "step"
        self.graph = None
        if use_cuda_graph and dev.type == "cuda":
            try:  # the warm-up run only rewrites x[:T] (and M), which every run rewrites
                self.graph, _ = capture((lambda: self._step(self.counter)) if self.per_step else self._loop)
            except NestedCUDAGraphError:  # a reduce-overhead compiled model: its own graphs, our loop eager
                warn_nested_graphs()

    def _step(self, i: int | torch.Tensor) -> None:
        """Step ``i``: a host index (the loop), or the device counter ``[1]`` (the step graph; then decremented)."""
        host = isinstance(i, int)
        scaled_in, scaled_out, mixed = self.host_maps[i] if host else self.any_maps
        x, xin = self.x, _rows(self.x, i, 1)
        inp = _rows(self.scale_in, i) * xin if scaled_in else xin
        out = self.call(inp, self.steps[i : i + 1] if host else i).to(x.dtype)
        if not self.multi:
            nxt = _rows(self.a, i) * xin + _rows(self.b, i) * out
        else:
            m = _rows(self.scale_out, i) * out if scaled_out else out
            _put(self.M, i, m + _rows(self.mix, i) * xin if mixed else m)
            nxt, bi = _rows(self.a, i) * xin, _rows(self.b, i)
            for j in self.taps[i] if host else self.any_taps:
                nxt = nxt + bi[:, j] * _rows(self.M, i, j)
        _put(x, i, nxt + _rows(self.c, i) * _rows(self.xi, i) if self.stochastic else nxt)
        if not host:
            i.sub_(1)

    def _loop(self) -> None:
        for i in range(self.T - 1, -1, -1):
            self._step(i)

    def _run(self, steps: int | None = None) -> None:
        """Replay (or run) the loop; the step program runs ``steps`` of it (default all ``T``), captured or not
        (off CUDA it runs eagerly from the device counter, so the CPU tests check what the step graph replays)."""
        if not self.per_step:
            if self.graph is not None:
                self.graph.replay()
            else:
                self._loop()
            return
        self.counter.fill_(self.T - 1)
        for _ in range(self.T if steps is None else steps):
            if self.graph is not None:
                self.graph.replay()
            else:
                self._step(self.counter)

    def time_ms(self) -> float:
        """Wall ms of one run, measured on the current buffers: the loop (graph) run once; the step graph from
        ``TIMED_STEPS`` replays, times ``T / TIMED_STEPS`` (every replay is the same GPU work)."""
        sync = torch.cuda.synchronize if self.x.device.type == "cuda" else (lambda: None)
        steps = min(self.T, TIMED_STEPS) if self.per_step else None
        sync()
        t0 = time.perf_counter()
        self._run(steps)
        sync()
        return 1e3 * (time.perf_counter() - t0) * (1 if steps is None else self.T / steps)

    def load(self, x_T: torch.Tensor, noise: torch.Tensor | None = None) -> None:
        """Copy another problem's ``x_T`` (and step noise) into the captured buffers, for the next ``run``."""
        if tuple(x_T.shape) != (self.B, *self.shape):
            raise ValueError(
                f"x_T must have shape {[self.B, *self.shape]} like the captured problem, got {list(x_T.shape)}"
            )
        if self.stochastic and noise is None:
            raise ValueError("noise is required: the captured problem has step noise")
        if not torch.isfinite(x_T).all():
            raise NonFiniteError("x_T contains NaN or inf (the input is bad, not the model)")
        if self.stochastic:
            if tuple(noise.shape) != (self.T, self.B, *self.shape):
                raise ValueError(f"noise must have shape {[self.T, self.B, *self.shape]}, got {list(noise.shape)}")
            if not torch.isfinite(noise).all():
                raise NonFiniteError("noise contains NaN or inf (the input is bad, not the model)")
        self.x[self.T].copy_(x_T.reshape(self.B, -1))
        if self.stochastic:
            self.xi.copy_(noise.reshape(self.xi.shape))

    @torch.no_grad()
    def run(self) -> SolveResult:
        """Replay (or run) the loop; checks the whole trajectory once at the end (one host read): a NaN/inf state
        at any step is an error naming the first such step and what was non-finite there (diagnosed eagerly)."""
        self._run()
        if not torch.isfinite(self.x).all():
            i = first_bad_step(self.x, self.T)
            xin = self.x[i + 1 : i + 2]
            inp = self.scale_in[i] * xin if self.host_maps[i][0] else xin
            out = self.call(inp, self.steps[i : i + 1])[0].to(self.x.dtype)
            raise diagnose_step(
                i, self.T - 1 - i, self.x[i + 1], out, None if self.xi is None else self.xi[i], self.coeffs, self.x[i]
            )
        traj = self.x.reshape(self.T + 1, self.B, *self.shape)
        return SolveResult(
            traj[0], traj, self.T, self.T, torch.empty(0, self.T, dtype=torch.float64), True, "sequential(graphed)"
        )
