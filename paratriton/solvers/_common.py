"""What every solver shares: argument checks, the result and callback types, and the model caller."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Iterator, Protocol, runtime_checkable

import torch

from ..model import Denoiser
from ..schedulers.operator import SamplerCoefficients, StepOperator
from .tolerance import Tolerance


class NonFiniteError(FloatingPointError):
    """A model output or an iterate became NaN or infinite; the message names the step and the iteration."""


@dataclass
class SolveResult:
    """What a solver returns.

    sample:      ``[B, *sample_shape]`` the estimate of ``x_0`` (state dtype)
    trajectory:  ``[T+1, B, *sample_shape]`` all iterates ``x_0 .. x_T``
    iterations:  parallel iterations (= batched model calls; ``T`` for the sequential sampler)
    nfe:         model evaluations per trajectory (a guided call counts once)
    residuals:   ``[iterations, T]`` float64 on the CPU: per step the largest RMS order-1 residual over the batch,
                 NaN for steps outside the window in that iteration
    converged:   at the returned trajectory, every step's residual is within its threshold, or (with ``tol``)
                 ``error_bound <= tol`` (False when stopped by ``max_iters``); in the per-step form
                 (``tol_abs``/``tol_rel``) also the bound with the measured amplification between states within
                 ``sum_i g_i thr_i``, what the thresholds promise (``solvers/tolerance.py``, "The per-step form";
                 False with a warning otherwise: the sample may be in another mode); always the tolerance asked for: a
                 run that stopped at a bf16/fp16 model's floor above it is ``precision_limited`` and not
                 converged (``precision_floor``: the distance it can be from the sequential sample)
    error_bound: the first-order bound on the sample's RMS distance to the sequential sample at the returned
                 trajectory, ``sum_i geff_i RMS(r_i)`` (``solvers/tolerance.py``), largest over the batch; None
                 when not every step was reached, or for solvers that do not measure it
    amplification: the largest ``geff_i / g_i``: how much more than the schedule's ``g_i`` the sampler was
                 measured to amplify the iteration's errors (at least 1; 1 when not measured); in the per-step form
                 the largest ``A_i``, from a state to any state below it
    precision_limited: a low-precision (fp16/bf16) model's rounding floor was above the tolerance at some step,
                 and the solver stopped at the floor there (then ``converged`` only if the residuals still meet
                 the tolerance asked for)
    precision_floor: that floor, as an RMS distance at the sample (None when it did not bind)
    input_clamped: an fp16 model's inputs were clamped to ``+-MODEL_INPUT_BOUND`` (its range) at the returned
                 trajectory, so it is not the sequential sampler's (whose model would see inf there); then
                 ``converged`` is False
    probe_calls: model calls outside the iterations: the roughness probes of ``solvers/tolerance.py`` (one for a
                 smooth model, ``log2 T`` at most for a rough one, of at most a window's rows; not in ``nfe``)
    """

    sample: torch.Tensor
    trajectory: torch.Tensor
    iterations: int
    nfe: int
    residuals: torch.Tensor
    converged: bool
    method: str
    window_history: list[tuple[int, int]] = field(default_factory=list)
    precision_limited: bool = False
    input_clamped: bool = False
    precision_floor: float | None = None
    probe_calls: int = 0
    error_bound: float | None = None
    amplification: float = 1.0


@runtime_checkable
class Solver(Protocol):
    """What ``make_solver(method, ...)`` returns and ``solve`` runs: the one signature every method's solver has
    (``Engine``, ``SequentialSolver``, ``SRDS``, ``SRDSPipelined``).

    model:  ``model(x [N, *S], step_index [N]) -> [N, *S]`` (``paratriton.model``)
    coeffs: a ``StepOperator`` (``T`` steps; the windowed engine takes ``SamplerCoefficients`` and multistep ones)
    x_T:    ``[B, *S]``; noise: ``[T, B, *S]`` pre-drawn step noise or None; init: a warm start ``[T(+1), B, *S]``
    """

    method: str

    def solve(
        self,
        model: Denoiser,
        coeffs: StepOperator,
        x_T: torch.Tensor,
        noise: torch.Tensor | None = None,
        init: torch.Tensor | None = None,
    ) -> SolveResult: ...


class IterationInfo:
    """Passed to ``callback`` after every iteration.

    ``residual_rms``, ``trajectory`` and ``sample`` are *copies*, made when first read (so a callback that reads
    nothing costs nothing): editing them cannot change the solver's state or its answer. Read them inside the
    callback; a copy made later shows the state of that later moment.
    """

    __slots__ = ("_copies", "_rms", "_traj", "frozen_from", "iteration", "probe_calls", "window")

    def __init__(
        self,
        iteration: int,
        window: tuple[int, int],
        frozen_from: int,
        residual_rms: torch.Tensor,
        trajectory: torch.Tensor,
        probe_calls: int = 0,
    ) -> None:
        self.iteration = iteration  # 1-based
        self.window = window  # updated steps lo .. hi-1 (hi is the anchor)
        self.frozen_from = frozen_from  # steps >= frozen_from are final
        self.probe_calls = probe_calls  # the engine's floor probes so far (model calls outside the iterations)
        self._rms, self._traj, self._copies = residual_rms, trajectory, {}

    def _copy(self, key: str, view: torch.Tensor) -> torch.Tensor:
        if key not in self._copies:
            self._copies[key] = view.detach().clone()
        return self._copies[key]

    @property
    def residual_rms(self) -> torch.Tensor:
        """``[hi - lo, B]`` the RMS residuals of the window (a copy)."""
        return self._copy("rms", self._rms)

    @property
    def trajectory(self) -> torch.Tensor:
        """``[T+1, B, *sample_shape]`` the current iterates (a copy)."""
        return self._copy("traj", self._traj)

    @property
    def sample(self) -> torch.Tensor:
        """``[B, *sample_shape]`` the current estimate of ``x_0`` (a copy; cheaper than ``trajectory[0]``)."""
        if "traj" in self._copies:
            return self._copies["traj"][0]
        return self._copy("sample", self._traj[0])

    def __repr__(self) -> str:
        return f"IterationInfo(iteration={self.iteration}, window={self.window}, frozen_from={self.frozen_from})"


@contextlib.contextmanager
def exclusive(solver: object) -> Iterator[None]:
    """One solve at a time per solver object: its buffers (and captured graphs) hold one problem. A second thread
    calling ``solve`` on the same object meanwhile gets a clear error instead of a mixed-up answer."""
    lock = solver.__dict__.setdefault("_solve_lock", threading.Lock())  # (dict.setdefault is atomic)
    if not lock.acquire(blocking=False):
        raise RuntimeError(
            f"this {type(solver).__name__} is already solving in another thread (or re-entered from a callback): "
            "one solver object runs one solve at a time; make one solver per thread (paratriton.solve does)"
        )
    try:
        yield
    finally:
        lock.release()


def _check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) and not (hasattr(value, "__index__")):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be {rng}, got {value}")
    return value


def set_common_options(
    solver,
    tolerance: Tolerance,
    max_iters: int | None,
    state_dtype: torch.dtype,
    callback,
) -> None:
    """Validate and set the options every solver shares (the tolerance is validated where it is made)."""
    solver.tolerance = tolerance
    solver.max_iters = None if max_iters is None else _check_int("max_iters", max_iters, 1)
    if state_dtype not in (torch.float64, torch.float32):
        raise ValueError(f"state_dtype must be torch.float64 or torch.float32, got {state_dtype}")
    solver.state_dtype = state_dtype
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable")
    solver.callback = callback


def _bad_steps(t: torch.Tensor) -> list[int]:
    return (~torch.isfinite(t)).flatten(1).any(1).nonzero().flatten().tolist()


def _steps_text(steps: list[int]) -> str:
    return f"{steps[:8]}{' ...' if len(steps) > 8 else ''}"


def check_coefficients_finite(coeffs: SamplerCoefficients) -> None:
    """Raise ``NonFiniteError`` naming the field and steps of a NaN/inf coefficient (they may be edited in place
    after construction, which checks them too)."""
    for name in ("a", "b", "c", "posterior_std"):
        t = getattr(coeffs, name)
        if not bool(torch.isfinite(t).all()):
            steps = (~torch.isfinite(t)).nonzero().flatten().tolist()
            raise NonFiniteError(
                f"the coefficients are NaN/inf: SamplerCoefficients.{name} at step(s) "
                f"{_steps_text(steps)}; the sampler stopped before any model call"
            )


def check_problem(
    coeffs: SamplerCoefficients, x_T: torch.Tensor, noise: torch.Tensor | None, init: torch.Tensor | None = None
) -> None:
    """Validate the shapes, dtypes and finiteness of a sampling problem (``T`` steps, ``B`` trajectories).

    A NaN/inf in ``x_T``, ``noise``, ``init`` or the coefficients is the input's fault, reported here (one
    ``isfinite`` over all of them, one host read) before the model is ever called.
    """
    if not isinstance(coeffs, SamplerCoefficients):
        raise TypeError(f"coeffs must be SamplerCoefficients, got {type(coeffs).__name__}")
    T = coeffs.num_steps
    if not torch.is_tensor(x_T) or not x_T.is_floating_point() or x_T.ndim < 2:
        raise ValueError(
            "x_T must be a floating-point tensor of shape [B, *sample_shape], "
            f"got {getattr(x_T, 'shape', type(x_T))} {getattr(x_T, 'dtype', '')}"
        )
    for name, t in (("x_T", x_T), ("noise", noise), ("init", init)):
        if torch.is_tensor(t) and t.device.type == "meta":
            raise ValueError(f"{name} is a meta tensor (shape only, no data): pass a tensor on a real device")
    if x_T.shape[0] == 0 or x_T.numel() == 0:
        raise ValueError(
            f"x_T must hold at least one trajectory of a non-empty sample: shape [B >= 1, *sample_shape] with no "
            f"zero dimension, got {list(x_T.shape)}"
        )
    if noise is None:
        if coeffs.is_stochastic:
            raise ValueError("noise [T, B, *sample_shape] is required: the sampler adds noise (some c_i != 0)")
    else:
        if not torch.is_tensor(noise) or not noise.is_floating_point():
            raise ValueError(f"noise must be a floating-point tensor, got {type(noise).__name__}")
        if tuple(noise.shape) != (T, *x_T.shape):
            raise ValueError(
                f"noise must have shape [T, B, *sample_shape] = {[T, *x_T.shape]}, got {list(noise.shape)}"
            )
        if noise.device != x_T.device:
            raise ValueError(f"noise is on {noise.device} but x_T is on {x_T.device}")
    if init is not None:
        if not torch.is_tensor(init):
            raise ValueError(f"init must be a tensor, got {type(init).__name__}")
        if tuple(init.shape) not in ((T, *x_T.shape), (T + 1, *x_T.shape)):
            raise ValueError(
                f"init must have shape [T, B, *sample_shape] = {[T, *x_T.shape]} "
                f"(or [T+1, ...]), got {list(init.shape)}"
            )
        if not init.is_floating_point():
            raise ValueError(f"init must be floating point, got {init.dtype}")
    # one host read for every input's finiteness; the names and steps are found only when something is bad
    inputs = [("x_T", x_T), ("noise", noise), ("init", None if init is None else init[:T])]
    flags = [torch.isfinite(t).all() for _, t in inputs if t is not None]
    if not bool(torch.stack([f.to(x_T.device) for f in flags]).all()):
        for name, t in inputs:
            if t is None or bool(torch.isfinite(t).all()):
                continue
            if name == "x_T":
                raise NonFiniteError(
                    "x_T contains NaN or inf (the input is bad, not the model); the sampler "
                    "stopped before any model call"
                )
            raise NonFiniteError(
                f"{name} contains NaN or inf at step(s) {_steps_text(_bad_steps(t))} (the input "
                "is bad, not the model); the sampler stopped before any model call"
            )
    check_coefficients_finite(coeffs)


def diagnose_step(
    i: int,
    iteration: int,
    x_next: torch.Tensor,
    out: torch.Tensor,
    noise_i: torch.Tensor | None,
    coeffs: StepOperator,
    x_i: torch.Tensor | None = None,
) -> NonFiniteError:
    """The error for step ``i`` whose state ``x_i`` (or model output) is NaN/inf: names the step, the iteration and
    which input was non-finite (the model's input state, the model output, the noise or the coefficients)."""
    where = f"at step(s) [{i}] in iteration {iteration}"
    tail = "; the sampler stopped and returns no image"
    if not bool(torch.isfinite(x_next).all()):
        return NonFiniteError(f"the state x_{i + 1} (the model's input) is NaN/inf {where}{tail}")
    if not bool(torch.isfinite(out).all()):
        return NonFiniteError(f"the model output is NaN/inf {where} (its input was finite){tail}")
    if noise_i is not None and not bool(torch.isfinite(noise_i).all()):
        return NonFiniteError(f"the noise is NaN/inf {where}{tail}")
    bad = [n for n in ("a", "b", "c") if not bool(torch.isfinite(getattr(coeffs, n)[i]).all())]
    if bad:
        return NonFiniteError(f"the coefficients {bad} are NaN/inf {where}{tail}")
    big = x_i.abs().max().item() if x_i is not None and bool(torch.isfinite(x_i).all()) else float("inf")
    return NonFiniteError(
        f"the state x_{i} overflowed (max |x| = {big:.3g}) {where}: a_i x_(i+1) + b_i m + c_i xi "
        f"is not finite in {x_next.dtype} although the model output, the noise and the "
        f"coefficients were finite (the model output reached {out.abs().max().item():.3g}){tail}"
    )


def first_bad_step(x: torch.Tensor, T: int) -> int | None:
    """The first step in sampling order (the highest ``i < T``) whose state in ``x [T+1, B, D]`` is NaN/inf."""
    bad = (~torch.isfinite(x[:T])).flatten(1).any(1).nonzero().flatten()
    return int(bad.max()) if bad.numel() else None


# Iterates of early parallel iterations can be far off the data manifold (order-k weights amplify errors); clamping
# the model input of an fp16 network to the fp16 range means it never sees inf. Only fp16 networks get the clamp: a
# float32/bfloat16 model sees the iterates as they are, as the sequential reference does (a trajectory that leaves
# the range then has the same fixed point as the sequential sampler). Where the clamp applies and the *returned*
# trajectory's model inputs are beyond it, the result says so (``input_clamped``, ``converged=False``).
MODEL_INPUT_BOUND = 6.0e4


def half_precision(model: Denoiser) -> bool:
    """Whether ``model`` computes in float16 (its ``compute_dtype``, or an ``nn.Module`` with float16 parameters)."""
    if getattr(model, "compute_dtype", None) == torch.float16:
        return True
    if isinstance(model, torch.nn.Module):
        return any(p.dtype == torch.float16 for p in model.parameters())
    return False


class ModelCaller:
    """Calls the denoiser on a block of states and checks what comes back.

    clamp: clamp the input to ``+-MODEL_INPUT_BOUND``. None (the parallel solvers): only for an fp16 network, known
           from ``half_precision(model)`` or from its first float16 output (the first iteration's inputs are copies
           of ``x_T``); their residual test still sees the unclamped state, so a NaN/inf state is reported. The
           sequential samplers pass ``clamp=False``: their state *is* the answer, and clamping it would hide an
           overflowed (or inf) state from the model and return a wrong, finite-looking sample.
    """

    def __init__(
        self,
        model: Denoiser,
        sample_shape: tuple[int, ...],
        batch: int,
        *,
        clamp: bool | None = None,
        coeffs: SamplerCoefficients | None = None,
        device: torch.device | None = None,
    ) -> None:
        if not callable(model):
            raise TypeError(f"model must be callable as model(x, step_index), got {type(model).__name__}")
        self.model = model
        self.sample_shape = sample_shape
        self.batch = batch
        self.auto = clamp is None
        self.clamp = half_precision(model) if clamp is None else clamp
        self.calls = 0
        self.raw_dtype: torch.dtype | None = None
        # a clipped/thresholded x0 prediction (``schedule.ClippedPrediction``): applied to every output, on the
        # device already (its index gathers are captured with the call)
        x0_clip = getattr(coeffs, "x0_clip", None)
        self.x0_clip = None if x0_clip is None else x0_clip.to(device if device is not None else "cpu")

    def __call__(self, x: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """x: ``[n, B, D]`` inputs of steps ``steps [n]``; returns ``[n, B, D]`` outputs (model dtype)."""
        n, B = x.shape[0], x.shape[1]
        # the model gets its own tensor, never a view of the solver's state: a model that edits its input in place
        # cannot change the answer
        x_in = x.clamp(-MODEL_INPUT_BOUND, MODEL_INPUT_BOUND) if self.clamp else x.clone()
        row_steps = steps.repeat_interleave(B)
        out = self.model(x_in.reshape(n * B, *self.sample_shape), row_steps)
        self.calls += 1
        if not torch.is_tensor(out) or tuple(out.shape) != (n * B, *self.sample_shape):
            raise ValueError(
                f"model output must have shape {[n * B, *self.sample_shape]} like its input, got "
                f"{list(getattr(out, 'shape', [type(out).__name__]))}"
            )
        if not out.is_floating_point():
            raise ValueError(f"model output must be floating point, got {out.dtype}")
        if out.device.type == "meta":
            raise ValueError("the model returned a meta tensor (shape only, no data): it must compute its output")
        if self.auto and out.dtype == torch.float16:
            self.clamp = True  # an fp16 network: its later inputs are clamped to the fp16 range
        if out.device != x.device:  # a model on another device than the state (e.g. a CUDA model, CPU x_T)
            out = out.to(x.device)
        self.raw_dtype = out.dtype  # the network's own output dtype (its rounding sets the precision floor)
        if self.x0_clip is not None:  # the taps read the clipped x0 of the state (in the state dtype)
            out = self.x0_clip(x.reshape(n * B, *self.sample_shape), out, row_steps)
        return out.reshape(n, B, -1)
