"""The solver engine: every windowed parallel method, eager or CUDA-graphed, is this one loop.

The trajectory ``x [T+1, B, D]`` lives in one buffer. An iteration works on ``H`` consecutive steps
``lo .. lo+H-1`` with ``lo = max(F - H, 0)`` and the anchor ``F`` 0-d int64 *device* tensors (steps ``>= F`` are
frozen and masked out of every sum and update), so its shapes are static:

1. steps entering a sliding window start as a copy of the lowest initialised state (a stochastic or sigma-space
   sampler's cold start initialises every state: ``schedulers/guess.py``); gather the model inputs;
2. one batched model call on the window;
3. ``ops.window_residual``: the order-1 residual test, the highest unconverged step ``top``;
4. the method's rule (``rules.py``) updates the live steps ``lo .. top``; steps above ``top`` freeze *unchanged*,
   so every frozen step meets its threshold at the returned trajectory (``converged`` means exactly that);
5. ``F <- top``, and a per-iteration log on the device.

Eager (``cuda_graph=False``, and always off CUDA) the loop runs each iteration with ``H`` the live window (no
padding); graphed, each window size ``H`` (buckets ``T, T/2, ...`` for a full window, ``W`` for a sliding one) is
captured once with the model call, and an iteration is one replay followed by the one host read of ``F`` (and a
finiteness flag). Both run the same ``_iteration``: the iterates are the same (bit for bit where the model's
output per row does not depend on the batch size). Running out of memory halves the window (same fixed point).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from .._cuda_graph import NestedCUDAGraphError, capture, warn_nested_graphs
from ..model import Denoiser
from ..schedulers.guess import GaussianGuess, guess_applies
from ..schedulers.operator import SamplerCoefficients, coefficient_versions, one_tap_view
from ._common import (
    MODEL_INPUT_BOUND,
    IterationInfo,
    ModelCaller,
    NonFiniteError,
    SolveResult,
    check_problem,
    exclusive,
)
from .rules import KERNELS, Rule, WindowView
from .tolerance import (
    FLOOR_PROBES,
    FLOOR_ROUNDINGS,
    GAIN_FLOOR_MARGIN,
    GAIN_MAX,
    GAIN_MIN_CHANGE,
    GAIN_ROUNDINGS,
    SMOOTH_FRACTION,
    STALL_ITERS,
    STALL_ROUNDINGS,
    Tolerance,
    amplification,
    unit_roundoff,
    warn_precision_floor,
)


def bucket_sizes(T: int, buckets: int) -> list[int]:
    """The full-window sizes the graphed engine captures: ``ceil(T / 2^j)`` for ``j < buckets`` (ascending)."""
    return sorted({max(1, math.ceil(T / 2**j)) for j in range(buckets)})


@dataclass(eq=False, slots=True)
class _State:
    """One problem's static buffers and host scalars (``Engine._setup``): attribute reads, no allocation, and the
    tensors' addresses fixed for the captured graphs. ``[T]`` per step, ``[T+1, B, D]`` the trajectory."""

    T: int
    B: int
    shape: tuple[int, ...]
    sliding: bool
    x: torch.Tensor  # [T+1, B, D] the iterates
    a: torch.Tensor  # [T] step coefficients (state dtype)
    b: torch.Tensor
    c: torch.Tensor
    thr0: torch.Tensor  # [T] the tolerance's per-step thresholds
    g: torch.Tensor  # [T] the schedule's amplification
    tol: float | None  # the target (None: the expert per-step form)
    gain: torch.Tensor  # [T] measured gains (_gains)
    geff: torch.Tensor  # [T] the amplification the tests use
    seen: torch.Tensor  # [T] bool: a gain was measured
    gain_min: torch.Tensor  # 0-d: the smallest relative move a gain is measured from
    xin_prev: torch.Tensor  # [T, B, D] last model inputs (_gains)
    out_prev: torch.Tensor  # [T, B, D] last model terms (_gains)
    floor: torch.Tensor  # [T] the measured rounding floor
    best: torch.Tensor  # [T] lowest residual so far
    stall: torch.Tensor  # [T] iterations since that residual last halved
    dtype_model: torch.dtype | None
    xi: torch.Tensor | None  # [T, B, D] step noise
    F: torch.Tensor  # 0-d (a view of head): steps >= F are frozen
    U: torch.Tensor  # 0-d: the highest uninitialised step (sliding windows)
    arange: torch.Tensor  # [T+1]
    bad: torch.Tensor  # 0-d int64 0/1 (a view of head): a non-finite value was seen
    n_it: torch.Tensor  # 0-d (a view of head): iterations run
    zero: torch.Tensor  # 0-d int64 zero
    rms_all: torch.Tensor  # [T, B] latest residual RMS per step
    log_F: torch.Tensor  # [cap] the window top per iteration
    log_res: torch.Tensor  # [cap, T] residuals per iteration
    head: torch.Tensor  # [5 + iters_per_sync] int64: what the host reads after a replay (_pack_head)
    n0: torch.Tensor  # 0-d: the iterations run before this replay
    probe_smooth: torch.Tensor  # 0-d int64 0/1 (a view of head): every step the floor probes looked at was smooth
    probe_bad: torch.Tensor  # 0-d int64 0/1 (a view of head): a floor probe's output (or its floor) was not finite
    call: ModelCaller
    rule: dict  # the rule's buffers (Rule.allocate)
    taps: int | None  # a multistep operator's taps (None: one-tap)
    bk: torch.Tensor  # the operator's tap weights
    b_own: torch.Tensor  # weight of a step's own output
    ring: torch.Tensor | None  # multistep: the tap outputs
    in_scale: torch.Tensor | None
    out_scale: torch.Tensor | None
    out_mix: torch.Tensor | None
    floor_next: int = 1  # the floor probes run after iterations 1, 2, 4, ...
    floor_on: bool = True
    floor_calls: int = 0
    probe: dict | None = None  # the floor probe's buffers, made at its first run (_probe)
    guess: GaussianGuess | None = None  # the cold start, where it is the operator's Gaussian guess (``guess_applies``)


class Engine:
    """One parallel method (a rule) on the windowed triangular system; see the module docstring.

    rule:       ``FixedPointRule`` or ``AndersonRule`` (``registry.py`` builds them from method names).
    window:     None (all ``T`` steps) or a sliding window of ``W`` steps.
    tolerance:  a ``Tolerance`` (default: ``tol = DEFAULT_TOL``): the target RMS distance of the sample to the
                sequential sample, mapped onto per-step residual thresholds (``tolerance.py``; a low-precision
                model's rounding floor raises them), or the expert per-step ``tol_abs``/``tol_rel`` (its thresholds
                and stopping point fixed; ``converged`` checked against the measured amplification at the end).
    state_dtype: float32 or float64 (None: float32 on CUDA, float64 elsewhere).
    cuda_graph: the graphed schedule: each window size captured once (on CUDA; the model must be capturable),
                ``iters_per_sync`` iterations per host read. Off CUDA the same static program runs uncaptured.
    iters_per_sync: iterations per replay between host reads of ``F`` (graphed only; same iterates).
    """

    def __init__(
        self,
        rule: Rule,
        *,
        method: str,
        window: int | None = None,
        tolerance: Tolerance | None = None,
        max_iters: int | None = None,
        state_dtype: torch.dtype | None = None,
        callback: Callable[[IterationInfo], None] | None = None,
        cuda_graph: bool = False,
        buckets: int = 4,
        iters_per_sync: int = 1,
        backend: str = "auto",
    ) -> None:
        self.rule, self.method, self.window = rule, method, window
        self.tolerance = Tolerance() if tolerance is None else tolerance
        self.max_iters = max_iters
        self.state_dtype, self.callback = state_dtype, callback
        self.cuda_graph, self.buckets, self.iters_per_sync = cuda_graph, buckets, iters_per_sync
        self.backend = backend
        self.window_shrunk_to: int | None = None
        self._key = None

    # -- one replay: k iterations and what the host reads after them -----------------------------------------------
    def _program(self, H: int, k: int) -> None:
        """``k`` iterations of window ``H``, then ``_pack_head``: what a graph replay runs, and the uncaptured
        schedule too."""
        self._s.n0.copy_(self._s.n_it)
        for _ in range(k):
            self._iteration(H)
        self._pack_head(k)

    def _pack_head(self, k: int) -> None:
        """``head``: the window top ``F``, the non-finite flag, the iteration count, whether the floor probes found
        the model smooth, whether a probe's output was not finite (those five are the state itself: views of
        ``head``), then the window tops of this replay's iterations (``log_F[n0 .. n0+k-1]``; the live ones are the
        first ``n_it - n0``), copied here."""
        s = self._s
        s.head[5 : 5 + k].copy_(s.log_F.index_select(0, s.n0 + s.arange[:k]))

    # -- one iteration (static shapes, device-side state) ----------------------------------------------------------
    def _iteration(self, H: int) -> None:
        s = self._s
        x, F, U = s.x, s.F, s.U
        if s.sliding:
            lo = (F - H).clamp_min(0)
            rows = lo + s.arange[: H + 1]  # the window and its anchor row
        else:  # a full window always starts at step 0
            lo, rows = s.zero, s.arange[: H + 1]
        if s.sliding:  # steps entering the window start as a copy of the lowest initialised state
            fresh = rows <= U
            x.index_copy_(0, rows, x.index_select(0, torch.where(fresh, U + 1, rows)))
            U.copy_(torch.minimum(U, lo - 1))
        idx = rows[:H]
        # a full window starts at step 0 (lo is 0): its model inputs are a view, no gather
        xin = x.index_select(0, rows[1:]) if s.sliding else x[1 : H + 1]
        out = self._model_out(xin, idx)
        self._last = (out, idx)  # for naming the steps when the iteration reports a non-finite value
        if s.taps is not None:  # a multistep operator: the drift of step i reads the tap outputs of i .. i+k-1
            out = self._stencil(out, lo, F)
        self._gains(xin, out, lo, F)  # both forms: the per-step form's honesty check reads them (_report_excess)
        kern = KERNELS[self.backend]
        # the thresholds shrink where the measured amplification exceeds the schedule's (``_gains``), never below
        # the floor; a step whose residual has stalled within STALL_ROUNDINGS of the measured floor is at the floor:
        # the model's rounding, not the iteration, sets its residual now (tolerance.py, "Low-precision models")
        thr = kern.thresholds(s.thr0, s.g, s.geff, s.floor, s.stall, STALL_ITERS, STALL_ROUNDINGS)
        rms, top, bad = kern.residual(x, out, s.xi, s.a, s.b, s.c, thr, lo, F)
        s.bad.logical_or_(bad)
        # every live step's latest residual, lowest residual and stall count (frozen rows keep theirs: the kernel gives
        # 0 there); with a target, the sample test (tolerance.py): once the window reaches step 0, stop as soon as the
        # first-order bound on the sample's distance holds at this trajectory, whatever the split by step
        top, fits, worst = kern.track(rms, s.rms_all, s.best, s.stall, s.geff, s.floor, top, lo, F, s.tol)
        self.rule.update(WindowView(x, out, s.xi, s.a, s.b, s.c, lo, F, top, rms, kern), s.rule)
        # the log of live iterations (an iteration after convergence changes nothing and is not counted), then the
        # new anchor: top (>= lo >= 0). With a target, converged only if every step is within its threshold now: a
        # step that froze before the gains below it were measured may not be (its residual is exact: its rows are
        # frozen), and then it and every step below it are live again
        kern.close(worst, s.rms_all, thr, s.log_F, s.log_res, s.n_it, F, top, fits, lo, s.tol is not None)

    def _gains(self, xin: torch.Tensor, out: torch.Tensor, lo: torch.Tensor, F: torch.Tensor) -> None:
        """The measured amplification (``tolerance.py``, "Measured amplification").

        Step ``i``'s gain is ``|f_i(x') - f_i(x)| / |x' - x|`` between its last two evaluations (largest over the
        batch), measured where the input moved by more than ``gain_min`` of itself (``GAIN_MIN_CHANGE``; for a rough
        model ``GAIN_ROUNDINGS`` of its roundings) and the model term by more than ``GAIN_FLOOR_MARGIN`` measured
        floors: a smaller move measures the model's rounding, not its Jacobian. Then ``geff_i = max(g_i, prod_{j<i}
        gain_j)``, each gain at most ``GAIN_MAX``, unmeasured ones the schedule's ``g_{j+1} / g_j``. One op
        (``ops.window_gains``: two Triton launches on CUDA) for the window ``lo .. lo+H-1``.
        """
        s = self._s
        KERNELS[self.backend].gains(
            xin, out, s.xin_prev, s.out_prev, s.a, s.b, s.floor, s.g, s.gain, s.geff, s.seen, s.gain_min,
            lo, F, GAIN_FLOOR_MARGIN, GAIN_MAX, s.tol is not None,
        )  # fmt: skip

    def _model_out(self, xin: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The model term of steps ``idx`` from their inputs ``xin [H, B, D]``: the raw output for one-tap
        operators; for multistep ones the tap output ``M_i = output_scale_i m(input_scale_i x_{i+1}) +
        output_mix_i x_{i+1}`` (``schedulers/operator.py``), in the state dtype."""
        s = self._s
        if s.taps is None:
            return s.call(xin, idx)
        col = lambda v: v.index_select(0, idx).view(-1, 1, 1)  # noqa: E731
        m = s.call(xin * col(s.in_scale), idx)
        return m.to(xin.dtype) * col(s.out_scale) + col(s.out_mix) * xin

    def _stencil(self, M: torch.Tensor, lo: torch.Tensor, F: torch.Tensor) -> torch.Tensor:
        """Store the live rows' tap outputs in the ring of every step's latest one (frozen rows keep theirs: they were
        computed at the frozen inputs), and return the window's drift ``g_i = sum_j b[i, j] M_{i+j}`` ``[H, B, D]``
        (one fused pass: ``ops.multistep_drift``). The one-tap kernels then run with ``b = 1`` on ``g``: every rule
        is linear in ``b m``."""
        s = self._s
        return KERNELS[self.backend].drift(M, s.ring, s.bk, lo, F)

    # -- set-up ------------------------------------------------------------------------------------------------------
    def _setup(
        self, model: Denoiser, coeffs: SamplerCoefficients, x_T: torch.Tensor, noise: torch.Tensor | None
    ) -> None:
        T, B, shape = coeffs.num_steps, x_T.shape[0], tuple(x_T.shape[1:])
        D, dev = math.prod(shape), x_T.device
        dt = self.state_dtype or (torch.float32 if dev.type == "cuda" else torch.float64)
        cap = (T if self.max_iters is None else self.max_iters) + self.iters_per_sync  # + no-op iterations' slots
        a, b, c = coeffs.coefficients(dt, dev)
        multistep = not isinstance(coeffs, SamplerCoefficients)
        bk = b.contiguous()
        if multistep:  # the kernels see the drift g = sum_j b[i, j] M_{i+j} with unit weights (``_stencil``)
            b = torch.ones(T, dtype=dt, device=dev)
        thr = self.tolerance.step_thresholds(coeffs).to(dev, dt)
        tol = self.tolerance.target  # None in the expert per-step form
        # what the host reads after a replay: the anchor, the flags and the iteration count live in it (0-d views),
        # so a replay only adds its window tops (_pack_head)
        head = torch.zeros(5 + self.iters_per_sync, dtype=torch.long, device=dev)
        self._s = _State(
            T=T,
            B=B,
            shape=shape,
            sliding=self.window is not None and self.window < T,
            x=torch.empty(T + 1, B, D, dtype=dt, device=dev),
            a=a,
            b=b,
            c=c,
            thr0=thr,
            g=amplification(coeffs).to(dev, dt),
            tol=tol,
            # the measured amplification (_gains): per step its gain, its last model input and term, whether it had
            # one; and geff, the amplification the tests use (at least the schedule's g)
            gain=torch.empty(T, dtype=dt, device=dev),
            geff=torch.empty(T, dtype=dt, device=dev),
            seen=torch.zeros(T, dtype=torch.bool, device=dev),
            gain_min=torch.zeros((), dtype=dt, device=dev),
            xin_prev=torch.empty(T, B, D, dtype=dt, device=dev),
            out_prev=torch.empty(T, B, D, dtype=dt, device=dev),
            floor=torch.zeros(T, dtype=dt, device=dev),
            best=torch.empty(T, dtype=dt, device=dev),  # per step its lowest residual (largest over the batch) so far
            stall=torch.zeros(T, dtype=torch.long, device=dev),  # iterations since that residual last halved
            dtype_model=getattr(model, "compute_dtype", None),
            xi=None if noise is None else torch.empty(T, B, D, dtype=dt, device=dev),
            F=head[0],
            U=torch.empty((), dtype=torch.long, device=dev),
            arange=torch.arange(max(T + 1, self.iters_per_sync), device=dev),  # (also indexes a replay's iterations)
            bad=head[1],
            n_it=head[2],
            zero=torch.zeros((), dtype=torch.long, device=dev),
            rms_all=torch.empty(T, B, dtype=dt, device=dev),
            log_F=torch.empty(cap, dtype=torch.long, device=dev),
            log_res=torch.empty(cap, T, dtype=dt, device=dev),
            head=head,
            n0=torch.zeros((), dtype=torch.long, device=dev),
            probe_smooth=head[3],
            probe_bad=head[4],
            call=ModelCaller(model, shape, B, coeffs=coeffs, device=dev),
            rule=self.rule.allocate(T, B, D, dt, dev),
            taps=coeffs.taps if multistep else None,
            bk=bk,
            b_own=(bk[:, 0] * coeffs.output_scale.to(dev, dt)) if multistep else b,  # weight of a step's own output
            ring=torch.zeros(T, B, D, dtype=dt, device=dev) if multistep else None,
            in_scale=coeffs.input_scale.to(dev, dt) if multistep else None,
            out_scale=coeffs.output_scale.to(dev, dt) if multistep else None,
            out_mix=coeffs.output_mix.to(dev, dt) if multistep else None,
            guess=GaussianGuess(coeffs, dev, dt) if guess_applies(coeffs) else None,
        )
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}  # (window, iterations per replay)
        self._probe_graphs: dict[bool, torch.cuda.CUDAGraph] = {}  # the floor probe, first or later
        self._uncaptured = False

    def _reset(self, x_T: torch.Tensor, noise: torch.Tensor | None, init: torch.Tensor | None) -> None:
        """Fill the static buffers in place (captured graphs keep pointing at them)."""
        s = self._s
        T, x = s.T, s.x
        if init is None and s.guess is not None:
            # a stochastic or sigma-space sampler: its trajectory under a Gaussian's exact denoiser, with this
            # problem's step noise (``schedulers/guess.py``): every state starts initialised, also below a sliding
            # window
            init = s.guess(x_T, noise)
        if init is None:
            x.copy_(x_T.reshape(1, *x.shape[1:]).expand_as(x))  # every step starts as a copy of x_T
        else:
            x[T].copy_(x_T.reshape(x.shape[1:]))
            x[:T].copy_(init[:T].reshape(T, *x.shape[1:]))
        if s.xi is not None:
            s.xi.copy_(noise.reshape(s.xi.shape))
        self.rule.reset(s.rule)
        for t in (s.bad, s.n_it, s.floor, s.stall, s.seen, s.probe_smooth, s.probe_bad):
            t.zero_()
        g = s.g
        s.gain[:-1].copy_(g[1:] / g[:-1])  # unmeasured: the schedule's, so that geff starts as g
        s.gain[-1:].fill_(1.0)
        s.geff.copy_(g)
        s.gain_min.fill_(GAIN_MIN_CHANGE)
        s.best.fill_(float("inf"))
        s.rms_all.fill_(float("inf"))  # a step never measured has no bound
        s.floor_next, s.floor_on = 1, True  # (after iterations 1, 2, 4, ...)
        s.floor_calls = 0
        memo = getattr(self, "_floor_memo", None)
        if memo is not None:  # measured by an earlier solve of this problem: no probes (see ``solve``)
            s.floor_on = False
            if memo[0] == "rough":
                s.floor.copy_(memo[1])
                s.gain_min.copy_(memo[2])
        if s.probe is not None:
            s.probe["rows_bad"].zero_()
        s.F.fill_(T)
        s.U.fill_(T - 1 if s.sliding and init is None else -1)

    def _window_size(self, F_host: int, static: bool) -> int:
        T = self._s.T
        W = T if self._W is None else min(self._W, T)
        if not static:
            return min(W, F_host)
        if self._W is None:
            sizes = bucket_sizes(T, self.buckets)
            return next((h for h in sizes if h >= F_host), sizes[-1])
        return W

    def _capture(self, H: int, k: int) -> "torch.cuda.CUDAGraph":
        """Capture ``k`` iterations of window ``H``. ``capture`` runs them once for real first (lazy initialisation
        outside the capture), so the state is saved before and restored after."""
        s = self._s
        state = [s.x, s.F, s.U, s.bad, s.n_it, s.best, s.stall, s.rms_all, *s.rule.values()]
        state += [s.gain, s.geff, s.seen, s.xin_prev, s.out_prev]
        if s.ring is not None:
            state.append(s.ring)
        saved = [t.clone() for t in state]
        try:
            graph, _ = capture(lambda: self._program(H, k))
        finally:
            for t, v in zip(state, saved):
                t.copy_(v)
        return graph

    # -- the loop ----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def solve(
        self,
        model: Denoiser,
        coeffs: SamplerCoefficients,
        x_T: torch.Tensor,
        noise: torch.Tensor | None = None,
        init: torch.Tensor | None = None,
    ) -> SolveResult:
        """See ``_solve``; one solve at a time per engine (``exclusive``), no autograd (inputs that require grad
        are read as values)."""
        with exclusive(self):
            return self._solve(model, coeffs, x_T, noise, init)

    def _solve(
        self,
        model: Denoiser,
        coeffs: SamplerCoefficients,
        x_T: torch.Tensor,
        noise: torch.Tensor | None = None,
        init: torch.Tensor | None = None,
    ) -> SolveResult:
        """Solve the triangular system for ``B`` trajectories from ``x_T [B, *sample_shape]``.

        noise: ``[T, B, *sample_shape]`` pre-drawn standard normals (required when the sampler adds noise).
        init:  optional warm start ``[T, B, ...]`` (or ``[T+1, ...]``) guess of ``x_0 .. x_{T-1}``; the result is
               still the exact sequential sample of this problem, only the iteration count changes.
        Solving again with the same model, coefficients and shapes reuses the buffers and captured graphs.
        """
        check_problem(one_tap_view(coeffs), x_T, noise, init)
        # the coefficients' versions: an in-place edit after a solve is read again (as the sequential sampler does)
        key = (tuple(x_T.shape), x_T.device, noise is None, self.state_dtype, coefficient_versions(coeffs))
        if self._key is None or self._key[0] is not model or self._key[1] is not coeffs or self._key[2:] != key:
            self._setup(model, coeffs, x_T, noise)
            self._key = (model, coeffs, *key)
            # what the floor probes found in an earlier solve of this problem (the same model, operator and shapes):
            # the model's rounding does not depend on the noise, so later solves reuse it instead of probing again
            self._floor_memo: tuple | None = None
        self.window_shrunk_to = None
        self._W = self.window  # the effective window (halved on out-of-memory, for this solve only)
        self._s.sliding = self.window is not None and self.window < coeffs.num_steps
        self._reset(x_T, noise, init)
        s = self._s
        T, B, shape = s.T, s.B, s.shape
        # static: the graphed schedule (bucketed window sizes, k iterations per host read); captured on CUDA, run
        # as it is elsewhere (how the CPU tests check the padded, masked iterations)
        static = self.cuda_graph
        graphed = static and x_T.device.type == "cuda" and not self._uncaptured
        max_iters = T if self.max_iters is None else self.max_iters
        F_host, it, nfe, windows = T, 0, 0, []
        while F_host > 0 and it < max_iters:
            H = self._window_size(F_host, static)
            k = min(self.iters_per_sync, max_iters - it) if static else 1
            try:
                if graphed and (H, k) not in self._graphs:
                    try:
                        self._graphs[H, k] = self._capture(H, k)
                    except NestedCUDAGraphError:  # a reduce-overhead compiled model: its graphs, our iteration eager
                        warn_nested_graphs()
                        self._uncaptured, graphed = True, False
                        continue
                if graphed:
                    self._graphs[H, k].replay()
                else:
                    self._program(H, k)
            except torch.OutOfMemoryError as e:
                if H == 1:
                    raise torch.OutOfMemoryError(
                        f"out of memory even with a window of 1 step ({s.B} trajectories per call): {e}"
                    ) from e
                # a smaller window solves the same system (the fixed point does not depend on W): halve and retry
                self._W = self.window_shrunk_to = max(1, min(H, F_host) // 2)
                s.sliding = True
                self._graphs.clear()
                warnings.warn(
                    f"out of memory with a window of {H} steps: continuing with window={self.window_shrunk_to}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                if x_T.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            # the one host read per replay (packed by the replay itself: one copy, no launches here)
            vals = s.head.tolist()
            F_new, bad, n = vals[:3]
            if vals[4]:  # the floor probe before these iterations: its outputs are checked like theirs
                self._raise_probe_nonfinite(it)
            if bad:
                self._raise_nonfinite(it, k, F_host)
            if vals[3]:  # smooth at every probe: no floor, no further probes
                s.floor_on = False
                self._floor_memo = ("smooth",)
            for top in vals[5 : 5 + n - it]:
                lo = max(top - H, 0)
                nfe += top - lo
                windows.append((lo, top))
            F_host, it = F_new, n
            if s.floor_on and F_host > 0 and it >= s.floor_next:  # iterations 1, 2, 4, 8, ...
                s.floor_next = 2 * it
                self._measure_floor(first=s.floor_calls == 0)
            if self.callback is not None and windows:
                lo, hi = windows[-1]
                self.callback(
                    IterationInfo(
                        it,
                        (lo, hi),
                        F_host,
                        s.rms_all[lo:hi],
                        s.x.reshape(T + 1, B, *shape),
                        s.floor_calls,
                    )
                )
        if s.probe is not None and s.floor_calls and bool(s.probe["bad"]):  # a probe after the last iteration read
            self._raise_probe_nonfinite(it)
        if s.floor_calls and self._floor_memo is None:  # a rough model: its floor, for later solves
            self._floor_memo = ("rough", s.floor.clone(), s.gain_min.clone())
        if s.sliding:  # stopped early: steps the window never reached get the best guess there is
            U = int(s.U)
            if U >= 0:
                s.x[: U + 1] = s.x[U + 1]
        traj = s.x.reshape(T + 1, B, *shape)
        if not torch.isfinite(traj[0]).all():
            raise NonFiniteError("the final sample is NaN/inf; the sampler returns no image")
        # per iteration and step the largest RMS over the batch, NaN outside that iteration's window
        res = s.log_res[:it].to("cpu", torch.float64)
        if it:
            bounds = torch.tensor(windows, dtype=torch.long).view(-1, 2, 1)
            step = torch.arange(T).view(1, -1)
            res.masked_fill_((step < bounds[:, 0]) | (step >= bounds[:, 1]), float("nan"))
        result = SolveResult(
            traj[0],
            traj,
            it,
            nfe,
            res,
            F_host == 0,
            self.method + ("(graphed)" if static else ""),
            windows,
            probe_calls=s.floor_calls,
            error_bound=self._error_bound(),
            amplification=float((s.geff / s.g).amax()),
        )
        self._report_excess(result)
        self._report_precision(result)
        self._report_clamp(result)
        return result

    def _report_clamp(self, result: SolveResult) -> None:
        """An fp16 model's input clamp (``MODEL_INPUT_BOUND``) is a guard for early iterates only: where the returned
        trajectory's model inputs are beyond it, the answer is not the sequential one: not converged, one warning."""
        s = self._s
        if not s.call.clamp:
            return
        level = s.x[1:].abs().amax((1, 2))
        if s.in_scale is not None:
            level = level * s.in_scale.abs()
        big = float(level.amax())
        if big > MODEL_INPUT_BOUND:
            result.input_clamped, result.converged = True, False
            warnings.warn(
                f"the fp16 model's inputs reach {big:.3g} at the returned trajectory, beyond its range (clamped at "
                f"+-{MODEL_INPUT_BOUND:g}): the result is not the sequential sample (whose model would see inf); "
                "converged=False",
                RuntimeWarning,
                stacklevel=3,
            )

    def _excess(self) -> torch.Tensor:
        """``A [T]``: per step ``i`` the largest measured amplification from state ``i`` to any state ``k <= i``
        beyond the schedule's, ``max_k prod_{k<=j<i} gain_j / (g_i / g_k)`` (at least 1; ``tolerance.py``, "The
        per-step form"): ``exp(c_i - min_{k<=i} c_k)`` with ``c_i = sum_{j<i} log gain_j - log g_i``."""
        s = self._s
        logs = torch.cat([s.zero.view(1).to(s.gain.dtype), s.gain[:-1].clamp_min(torch.finfo(s.gain.dtype).tiny).log()])
        c = logs.cumsum(0) - s.g.log()
        return (c - c.cummin(0).values).exp()

    def _report_excess(self, result: SolveResult) -> None:
        """The per-step form's check (``tolerance.py``, "The per-step form"): every step within its threshold, but
        the first-order bound with the measured amplification to every intermediate state, ``sum_i g_i A_i
        RMS(r_i)``, above what the thresholds promise at the sample (``sum_i g_i thr_i``): not converged, one
        warning. ``amplification`` reports the largest ``A_i``."""
        s = self._s
        if s.tol is not None:
            return
        A = self._excess()
        result.amplification = float(A.amax())
        if not result.converged:
            return
        bound = float(((s.g * A).view(-1, 1) * s.rms_all).sum(0).amax())
        # the thresholds the steps were tested against: a rough model's floor raises them (_report_precision)
        promise = float((s.g * torch.maximum(s.thr0, self._floor_used())).sum())
        if bound > promise:
            result.converged = False
            warnings.warn(
                f"every step's residual is within its threshold ({self.tolerance.text()}), but the sampler was "
                f"measured to amplify errors up to {result.amplification:.3g}x from one state to another (as near a "
                "boundary between two modes of the data): the first-order bound on the trajectory's distance to the "
                f"sequential one is {bound:.3g}, above the {promise:.3g} the per-step thresholds promise, so "
                "converged=False (the sample may lie in another mode). Pass tol= (a target on the sample) for a "
                "result that is tested against it.",
                RuntimeWarning,
                stacklevel=3,
            )

    def _sums(self) -> torch.Tensor:
        """``sum_i geff_i RMS(r_i)`` per trajectory ``[B]`` over every step's latest residual (on the device): the
        first-order bound on the sample's RMS distance to the sequential sample, with the measured amplification
        (``tolerance.py``)."""
        s = self._s
        return (s.geff.view(-1, 1) * s.rms_all).sum(0)

    def _bound(self) -> torch.Tensor:
        """The bound, largest over the batch (0-d, on the device)."""
        return self._sums().amax()

    def _error_bound(self) -> float | None:
        """The bound at the returned trajectory; None where a step was never measured."""
        bound = float(self._bound())
        return bound if math.isfinite(bound) else None

    def _measure_floor(self, first: bool) -> None:
        """The model's roughness floor, measured where the iterates are exact (one small extra model call).

        A model computed at limited precision (a bf16/fp16 network, TF32 convolutions and matmuls, batch-dependent
        kernels) is a rough function of its input. The ``P`` (at most ``FLOOR_PROBES``) steps just below the anchor
        ``F`` have (nearly) exact inputs: the frozen state and the states the exact step just produced. Evaluate them
        at ``x``, ``x + d`` and ``x + 2 d`` with ``d`` random of the size the iterates still move by (``4 thr_i``, at
        least one rounding ``u |x|`` of a known low-precision dtype); a smooth model's second difference is
        ``O(d^2)``, a rough one's is its rounding jump ``J`` times ``sqrt(3)``. Then ``floor_i = FLOOR_ROUNDINGS *
        |b_i| J_i`` there, the lowest probe's value for every step below, and every live step is tested against
        ``max(threshold_i, floor_i)`` (``tolerance.py``). Measured after iterations 1, 2, 4, 8, ... as the anchor
        descends.

        Static shapes, indices from the device ``F``, fixed directions drawn once: on CUDA the graphed schedule
        replays it as a captured graph (an eager call of a small network costs several of its graphed window calls
        in launches). Whether the model was smooth everywhere is read with the next iteration's host read.
        """
        s = self._s
        if s.probe is None:  # fixed at the first probe of a solve key: the model's dtype and the row counts
            raw = s.call.raw_dtype or self._last[0].dtype  # the network's dtype (before a clipped-x0 transform)
            dtype = raw if unit_roundoff(raw) else s.dtype_model
            s.dtype_model = dtype
            rows = max(1, min(self._W or s.T, s.T) // 3)  # three evaluations per probe: at most a window's rows
            P = min(FLOOR_PROBES, rows, s.T)
            S = min(FLOOR_PROBES, rows - P)
            gen = torch.Generator(device=s.x.device).manual_seed(0)
            xi = torch.randn((P + S, *s.x.shape[1:]), generator=gen, device=s.x.device, dtype=s.x.dtype)
            s.probe = dict(
                P=P,
                S=S,
                u=unit_roundoff(dtype) or 0.0,
                xi=xi,
                smooth=s.probe_smooth,
                bad=s.probe_bad,  # a non-finite output or floor
                rows_bad=torch.zeros(3 * (P + S), dtype=torch.bool, device=xi.device),
                steps=torch.zeros(3 * (P + S), dtype=torch.long, device=xi.device),
            )
        key = first
        graphed = self.cuda_graph and s.x.device.type == "cuda" and not self._uncaptured
        try:
            if graphed and key not in self._probe_graphs:
                try:
                    self._probe_graphs[key] = capture(lambda: self._probe(first))[0]
                except NestedCUDAGraphError:
                    self._uncaptured, graphed = True, False
            if graphed:
                self._probe_graphs[key].replay()
            else:
                self._probe(first)
        except torch.OutOfMemoryError:  # at most a window's rows: keep what was measured, probe no more
            s.floor_on = False
            return
        s.floor_calls += 1

    def _probe(self, first: bool) -> None:
        """The probe itself (see ``_measure_floor``): device tensors in, ``floor`` updated in place
        unless every probed step was smooth (then ``probe["smooth"]`` is set and nothing changes)."""
        s = self._s
        p, x, F = s.probe, s.x, s.F
        P, S = p["P"], (p["S"] if first else 0)
        ar = s.arange
        lo = (F - P).clamp_min(0)
        exact = (F - P + ar[:P]).clamp_min(0)  # the P steps below the anchor (step 0 repeated when F < P)
        steps = exact
        if S:  # the first probe also looks at steps spread over the schedule, only to see whether the model is
            # rough at all (their inputs are not exact yet, so their values set no floor)
            frac = ar[:S].to(x.dtype) / max(S - 1, 1)
            steps = torch.cat([exact, (frac * (lo - 1).clamp_min(0)).round().long()])
        inp = x.index_select(0, steps + 1)
        d = p["xi"][: P + S] * torch.maximum(4 * s.thr0.index_select(0, steps).view(-1, 1, 1), p["u"] * inp.abs())
        m = self._model_out(torch.cat([inp, inp + d, inp + 2 * d]), steps.repeat(3)).double()
        m0, m1, m2 = m.chunk(3)
        jump = ((m0 - 2 * m1 + m2).square().mean(2).sqrt().amax(1) / math.sqrt(3)).to(s.floor.dtype)
        floor = FLOOR_ROUNDINGS * s.b_own.index_select(0, steps).abs() * jump
        # every model output is checked, the probe's too: a NaN/inf there (or a floor that is not finite) is an
        # error at the next host read, never an infinite threshold
        n = m.shape[0]
        p["rows_bad"][:n].copy_(~torch.isfinite(m).flatten(1).all(1))
        p["steps"][:n].copy_(steps.repeat(3))
        p["bad"].logical_or_(p["rows_bad"][:n].any() | ~torch.isfinite(floor).all())
        smooth = (floor < SMOOTH_FRACTION * s.thr0.index_select(0, steps)).all()
        p["smooth"].copy_(smooth)
        # below the probes: the lowest exact probe's value (refined as the anchor descends); above F: kept
        new = torch.where(ar[: s.T] < lo, floor[0], s.floor).index_copy(0, exact, floor[:P])
        s.floor.copy_(torch.where(smooth, s.floor, new))
        # a rough model's gain is measured only from input moves of many roundings (of unknown precision: TF32's)
        rough_min = max(GAIN_MIN_CHANGE, GAIN_ROUNDINGS * (p["u"] or 2.0**-11))
        s.gain_min.copy_(torch.where(smooth, s.gain_min, rough_min))

    def _floor_used(self) -> torch.Tensor:
        """``[T]`` the floor the tests used: STALL_ROUNDINGS times the measured one at the steps that stalled there."""
        s = self._s
        stalled = (s.stall >= STALL_ITERS).to(s.floor.dtype)
        return s.floor * (1 + (STALL_ROUNDINGS - 1) * stalled)

    def _report_precision(self, result: SolveResult) -> None:
        """The model's roughness floor at the sample, when it bound at some step (and then one warning)."""
        s = self._s
        floor = self._floor_used().to("cpu", torch.float64)
        if bool((floor > s.thr0.to("cpu", torch.float64)).any()):
            result.precision_limited = True
            result.precision_floor = float((s.geff.to("cpu", torch.float64) * floor).sum())
            expert = s.tol is None
            tol = self.tolerance.text()
            # a bf16/fp16 model: converged means within the tolerance asked for, not within the floor; only where
            # the residuals meet the user's own thresholds (the sum test: the bound within tol) does the run count.
            # (A float32 model whose roughness bound, e.g. TF32 kernels, keeps converged: its floor is the level at
            # which its own sequential sample is reproducible; precision_limited says it.)
            if unit_roundoff(s.dtype_model) is None:
                within = True
            elif expert:
                thr = (s.thr0 * s.g / s.geff).view(-1, 1)
                within = bool((s.rms_all <= thr).all())
            else:
                within = result.error_bound is not None and result.error_bound <= s.tol
            result.converged = result.converged and within
            warn_precision_floor(s.dtype_model, result.precision_floor, tol)

    def _raise_probe_nonfinite(self, it: int) -> None:
        """The floor probe's model outputs (or the floor from them) were NaN/inf: name the steps."""
        p = self._s.probe
        rows = p["rows_bad"]
        steps = sorted(set(p["steps"][rows].tolist()))
        what = (
            f"the model output is NaN/inf at step(s) {steps[:8]}{' ...' if len(steps) > 8 else ''}"
            if steps
            else (
                "the rounding floor measured from finite model outputs is NaN/inf (their second difference overflowed)"
            )
        )
        raise NonFiniteError(
            f"{what} in the roughness probe after iteration {it} (the model called at its states perturbed by "
            "about one rounding, solvers/tolerance.py); the sampler stopped and returns no image"
        )

    def _raise_nonfinite(self, it: int, k: int, anchor: int) -> None:
        """Name the steps (of the last iteration run) and whether the model or the iterates went non-finite."""
        out, idx = self._last
        where = f"iteration {it}" if k == 1 else f"iterations {it}..{it + k - 1}"
        live = idx < anchor
        bad_out = (~torch.isfinite(out)).flatten(1).any(1) & live
        bad_state = live & (~torch.isfinite(self._s.x.index_select(0, idx))).flatten(1).any(1)
        if bad_out.any():
            source, rows = "the model output", bad_out
        elif bad_state.any():
            source, rows = "the residual (the iterates diverged)", bad_state
        else:  # finite states whose residual's square overflowed
            source = "the residual overflowed (|r| above ~1e154; the iterates diverged)"
            rows = live & ~torch.isfinite(self._s.rms_all.index_select(0, idx)).any(1)
        steps = idx[rows].tolist()
        raise NonFiniteError(
            f"{source} is NaN/inf at step(s) {steps[:8]}{' ...' if len(steps) > 8 else ''} in "
            f"{where}; the sampler stopped and returns no image"
        )
