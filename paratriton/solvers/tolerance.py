"""What a tolerance means: a target distance of the final sample to the sequential sample, mapped onto steps.

The user's tolerance ``tol`` is an RMS distance in the sample's units: the parallel sample ``x_0`` should be within
``tol`` (RMS over the sample's elements, per trajectory) of what the sequential sampler returns. The solvers test
the order-1 residual of each step, ``r_i = x_i - f_i(x_{i+1})``, so the target is mapped onto per-step thresholds.

Derivation
----------
Let ``x*`` be the sequential trajectory and ``e = x - x*`` the error of an iterate whose residuals are ``r``. From
``x_i = f_i(x_{i+1}) + r_i`` and ``x*_i = f_i(x*_{i+1})``, to first order ``e_i = J_i e_{i+1} + r_i`` with ``J_i``
the step's Jacobian, and ``e_T = 0``::

    e_0 = sum_{i<T} G_i r_i,        G_i = J_0 J_1 ... J_{i-1}   (the amplification from step i to the sample).

``G_i`` is the Jacobian of the sampler's map from the state at step ``i`` to the sample. For a variance-preserving
sampler on data of unit scale that map preserves scale (it takes a unit-variance Gaussian to the data), so
``|G_i| ~ 1``; for a state of level ``x = alpha x0 + sigma eps`` in general it scales by ``1 / sqrt(alpha^2 +
sigma^2)`` (sigma-space samplers such as Euler carry states of size ``sigma_max``, flow matching dips below 1). So
``g_i = 1 / sqrt(alpha_i^2 + sigma_i^2)`` with the state's level (``g_0 = 1`` for the sample itself).

By the triangle inequality ``RMS(e_0) <= sum_i |G_i| RMS(r_i)``, so every step within::

    threshold_i = tol / (g_i T)

gives ``RMS(e_0) <= tol`` to first order, as long as ``|G_i| <= g_i``. Two things decide how tight this is, and
both were measured (``benchmarks/tolerance.py``, RESULTS.md "A tolerance on the final sample"):

* Residuals do not all sit at their thresholds, nor point the same way: on the exact Gaussian mixture the
  quadrature sum (``tol / (g_i sqrt(T))``) already held the sample within ``2 tol`` everywhere but flow matching at
  T = 1000 (1.7 tol; its Euler steps make coherent residuals).
* A trained, guided network is not norm-preserving in every direction: on the shipped digits model (CFG 2) single
  directions grow up to 7x from step 20 of 25 to the sample, and the iteration's errors live in exactly those slow
  directions. The quadrature thresholds left DDIM-50 samples 18 tol away; the linear sum holds them within tol.

So the thresholds are the linear sum's; the tests hold the sample to ``2 tol`` on the Gaussian mixture and the
default model, DDIM and DDPM, T from 10 to 1000.

Measured amplification
----------------------
``g_i`` is the schedule's state-level amplification; a trained, guided network can amplify far more. The DiT crops model
(CFG, DDIM-25, CPU, float32) stretches the iteration's errors by about 1.2 per step over its last steps: an error at
step 21 reaches the sample about 30x larger, so Picard and TAA stopped 1.5e-3 and 1.2e-3 from the sequential sample
while ``sum g_i RMS(r_i)`` said 5.9e-4 and 3.2e-4. So the engine measures the gains the sampler applies: between the
last two evaluations of step ``i``, at inputs ``x`` and ``x'``, ``gain_i = |f_i(x') - f_i(x)| / |x' - x|`` (largest over
the batch), which is ``|J_i v|`` along the direction ``v`` the iteration moved; the iteration's moves are its errors'
changes, so these are the directions that matter. With ``geff_i = max(g_i, prod_{j<i} gain_j)`` (``geff_0 = 1``) the
bound becomes ``sum_i geff_i RMS(r_i)`` and the thresholds ``tol / (geff_i T)``. A move smaller than ``GAIN_MIN_CHANGE``
of the state (``GAIN_ROUNDINGS`` roundings for a rough model), or a model change within ``GAIN_FLOOR_MARGIN`` measured
floors, measures rounding rather than the Jacobian and is not used; each gain is at most ``GAIN_MAX``. The gains change
as the iteration goes, so a step that froze earlier can be over its threshold when the window reaches step 0: unless the
sum test holds, that step and every step below it are live again (their residuals are exact, their rows being frozen),
so ``converged`` still means every step within its threshold at the returned trajectory. On the DiT at DDIM-25 Picard
then takes 11 iterations instead of 10 and ends at 4.7e-4 (bound 8.3e-4, largest ``geff`` 44), TAA 10 as before at
1.6e-4 (bound 4.5e-4); the digits model and the Gaussian mixture at T = 100 measure no gain above ``g`` and keep their
iterations. Not exact: the latest gains are those of the iteration's last, small moves, which may point elsewhere than
the remaining error: Picard on the DiT at DDIM-100 ends 1.4e-3 from the sequential sample with a bound of 8.3e-4 (60 dB,
within the 2e-3 promise). Keeping the largest gain so far instead fixes that case (19 iterations, 5.5e-4) but holds
large moves' secants: a Gaussian mixture at DDIM-25 then measured 1857x, and AA ran out of iterations. The result
reports the largest ``geff_i / g_i`` as ``amplification``.

The stopping rule
-----------------
The per-step thresholds are one split of the budget ``sum_i geff_i RMS(r_i) <= tol``; the bound itself needs no
split. So the engine tests both, at the trajectory it would return: a step freezes when it is within its
threshold (that is what lets a sliding window move on), and once the window reaches step 0 the solve stops as soon
as the sum itself is within ``tol``, the residuals of frozen steps entering at their last, exact, values
(per trajectory, the largest over the batch). That is an a-posteriori test on the accumulated residual: early,
high-noise steps that settled far below their share pay for the last slow ones. On the digits model (DDIM-100,
batch 1, CPU) it stops TAA at 10 iterations instead of 12 and Picard at 13 instead of 15, the sample then at
0.35 tol and 0.17 tol (the bound said 0.77 and 0.92). The result reports the bound as ``error_bound``, and
``converged`` means one of the two tests held at the returned trajectory. The expert form (``tol_abs``/``tol_rel``)
keeps its per-step meaning and no sum test.

The per-step form
-----------------
``tol_abs``/``tol_rel`` (the official ParaTAA code's rule) test every step against its own threshold ``thr_i`` and
stop when all are met; its thresholds and stopping point do not change with what the engine measures. What they
promise at the sample, to first order with the schedule's amplification, is ``sum_i g_i thr_i``; ``converged`` says
only that (issue 32 item 7). A trajectory that passes near a boundary between two modes of the data amplifies an
error of one step by orders of magnitude along one direction: on the exact Gaussian mixture (DDIM eta = 1, T = 100,
``tol_abs = tol_rel = 1e-3``) TAA met every threshold with an error of 2.5e-3 at step 65 that grew ~500x, into the
other mode, 1.2 RMS from the sequential sample. The gains measured to the sample do not see it (amplification 1.0:
below step 52 the returned trajectory sits in its new mode and contracts, 0.94 per step), nor does a power iteration
on every step's Jacobian at the returned trajectory (16 batched calls: ``prod_{j<i} |J_j|`` at most 7.6, a bound of
0.04 against the 0.1 promised). What does see it is the amplification *between states*: the same secant gains
(measured in this form too, leaving its thresholds alone) are 1.2-2.3 per step over steps 55-67. So at a converged
result the engine also bounds the error at every state ``k`` of the trajectory, in the sample's units::

    A_i = max_{k <= i} prod_{k <= j < i} gain_j / (g_i / g_k)   (at least 1),     sum_i g_i A_i RMS(r_i)

and where that exceeds ``sum_i g_i max(thr_i, floor_i)`` the result is not converged (one warning; ``amplification``
reports the largest ``A_i``): the linearisation behind the per-step promise does not hold there. No extra model
call, no host read in the iteration (one at the end). Measured (CPU): the mixture's trajectory above 0.41 against
0.1 (flagged), trajectories 0 and 5 and Picard's 0.03 (kept); on the shipped digits model (CFG 2, 3 labels) at DDIM-25
and DDIM-50 TAA and Picard bound 0.027-0.16 against 0.025 / 0.05 and are no longer converged although they ended
8e-3 to 1.7e-2 away: the engine cannot certify what the per-step thresholds promise there (its own sample bound, the
``tol`` form's, is above it too), so it does not claim it. Keeping the per-step thresholds but dividing them by
``A_i`` instead (so the run goes on to the sequential mode) took the mixture's TAA from 17 to 43 iterations (27 at
B = 8; the ``tol`` form: 29) and changed Picard's count too; not done: ``tol=`` is that rule already.

Low-precision models
--------------------
A model computed in fp16 or bf16 (unit roundoff ``u``: ``2^-8`` for bf16, ``2^-11`` for fp16) is a rough function
of its input at the level of one rounding: an input change of one rounding moves its output by a jump ``J_i``
(for an epsilon model at low noise far more than ``u |m|``: its Jacobian is large there). As the iterates settle,
their model inputs keep moving by about that much, so no iteration drives a step's residual below about
``|b_i| J_i``: measured on the shipped digits model in bf16, residuals stagnate at 0.7-1 such jumps. The engine
measures ``J`` at the ``FLOOR_PROBES`` steps just below the anchor, whose inputs are exact (a small extra model call
with those inputs perturbed by ``u``, only for fp16/bf16 models, after iterations 1, 2, 4, 8, ...: ``log2 T`` calls
of ``2 * FLOOR_PROBES`` rows), and tests each step against ``max(threshold_i, FLOOR_ROUNDINGS |b_i| J_i)``.
Residuals of a rough model stagnate at one to a few jumps, not exactly at one: on an H200 the fp16 digits model
(Picard) and the DiT in fp16 (TAA) took 27 and 38 iterations to pass the one-jump test, against 13 and 11 in
fp32. So a step whose residual has not halved for ``STALL_ITERS`` iterations and is within ``STALL_ROUNDINGS``
measured floors is at the floor: it is tested against that many floors. With it the same runs take 12 and 11
iterations, TF32 digits 9 / 13 (TAA / Picard, fp32: 10 / 13), at 1.1e-3 to 2.6e-3 RMS from the sequential sample
(``benchmarks/precision_floor.py``, RESULTS.md session 4).

When the floor binds, the result says so (``precision_limited``; for a bf16/fp16 model ``converged`` then only where
the residuals still meet the tolerance asked for: the bound within ``tol``, or every step within its own threshold in
the per-step form, issue 32), ``precision_floor`` gives its size at the sample
(``sum_i geff_i floor_i`` over the floors the tests used, the stalled steps' multiplied: the most the tests allowed),
and one warning says that the tolerance asked for is below what the model's precision allows; the sum test's budget
grows by the measured floors' ``sum_i geff_i floor_i``. On the digits model in bf16 (DDIM-25, batch 3, CPU) TAA
stops after 8 iterations, Picard after 9 (fp32: 14 and 13), 0.13 and 0.11 from the fp32 sequential sample, with a
reported floor of 0.26-0.27; the bf16 sequential sample is itself 3.4e-2 from the fp32 one (0.16 at T = 50: this
model in bf16 is chaotic at rounding level). A quadrature allowance (``sqrt(sum g_i^2 floor_i^2)``, as for
independent roundings) halved TAA's distance on the CPU, but on an H200 the fp16 digits model then took 36
iterations instead of 9. (Two bf16 sequential runs at batch 3 and 8 are bitwise identical on the CPU and on an
H200, ``benchmarks/bf16_batch.py``, so the issue's batch-size scale is 0 there.)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch

DEFAULT_TOL = 1e-3
"""The default target: 1e-3 RMS between the parallel and the sequential sample (images in [-1, 1]: ~66 dB, well
below one 8-bit quantisation step of 2/255 = 7.8e-3)."""

DEFAULT_TOL_PER_100_STEPS = 1e-3


def default_tol_abs(num_steps: int) -> float:
    """The default per-step tolerance: 1e-3 for up to 100 steps, ``1e-3 * 100 / T`` beyond.

    Per-step residuals add up along the trajectory, so a fixed per-step tolerance lets the error of the final
    sample grow with ``T`` (at T = 1000 a per-step 1e-3 left the default model's sample 11 dB from the sequential
    one while every step reported convergence); scaling by ``1/T`` keeps the accumulated bound constant.
    """
    return DEFAULT_TOL_PER_100_STEPS * min(1.0, 100.0 / num_steps)


# the floor is this many measured rounding jumps of the model term: residuals stagnate at about one
FLOOR_ROUNDINGS = 1.0
# measured at this many steps just below the anchor, where the model inputs are exact
FLOOR_PROBES = 8
# a step whose residual has not halved for this many iterations, and is within STALL_ROUNDINGS measured floors,
# is at the floor (residuals of a rough model stagnate at 1-3 jumps; the iteration cannot take them lower)
STALL_ITERS = 2
STALL_ROUNDINGS = 4.0
# a model whose measured floor is below this fraction of every probed threshold is smooth: no floor, no more probes
SMOOTH_FRACTION = 0.05
# the measured amplification (engine._gains): a step's gain is measured where its input moved by more than this
# fraction of itself and its model term by more than GAIN_FLOOR_MARGIN measured floors, and is at most GAIN_MAX
GAIN_MIN_CHANGE = 1e-5
GAIN_FLOOR_MARGIN = 16.0
GAIN_MAX = 4.0
# a rough model's gains: only from input moves of at least this many of its roundings (smaller ones measure the
# rounding: a GMM whose input is rounded to 10 bits measured 14x amplification from 1e-5 moves, against a true 1)
GAIN_ROUNDINGS = 32.0
_UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def unit_roundoff(dtype: torch.dtype) -> float | None:
    """The unit roundoff of a low-precision model output dtype, None for float32/float64 (no floor)."""
    return _UNIT_ROUNDOFF.get(dtype)


def amplification(coeffs) -> torch.Tensor:
    """``g [T]`` float64: how much an error at state ``x_i`` (``i = 0 .. T-1``) grows by the sample (see above).

    ``x_0`` is the sample (``g_0 = 1``); ``x_i`` for ``i >= 1`` is the input of step ``i-1``, of level
    ``(signal_scale, noise_scale)[i-1] / input_scale[i-1]`` (input_scale: the model input is ``input_scale * x``).
    """
    sig = coeffs.signal_scale.to("cpu", torch.float64)
    noi = coeffs.noise_scale.to("cpu", torch.float64)
    scale = getattr(coeffs, "input_scale", None)
    level = (sig.square() + noi.square()).sqrt()
    if scale is not None:
        level = level / scale.to("cpu", torch.float64).abs()
    g = torch.ones_like(sig)
    g[1:] = 1.0 / level[:-1].clamp_min(1e-12)
    return g


TOLERANCE_OPTIONS = ("tol", "tol_abs", "tol_rel")


def positive_number(name: str, value: Any, allowed: str = "a finite number > 0") -> float:
    """``value`` as a float; raises naming ``name`` and ``allowed`` unless it is a finite number > 0 (a bool is not)."""
    if isinstance(value, bool):  # True would read as 1.0
        raise TypeError(f"{name} must be {allowed}, got bool {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be {allowed}, got {type(value).__name__} {value!r}") from None
    if not (number > 0) or math.isinf(number):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return number


@dataclass(frozen=True)
class Tolerance:
    """What a solve converges to, validated once: here, where it is made (the registry makes it from the options).

    tol:              target RMS distance of the final sample to the sequential sample (``threshold_i = tol /
                      (g_i T)``); None with ``tol_abs = tol_rel = None`` means ``DEFAULT_TOL``.
    tol_abs, tol_rel: the expert, per-step form ``max(tol_abs, tol_rel * posterior_std_i)`` (either given: the other
                      takes its old default, ``default_tol_abs(T)`` and 1e-3). Exclusive with ``tol``. A run meets
                      it when every step does; ``converged`` also needs the measured bound within what the thresholds
                      promise at the sample (``sum_i g_i thr_i``; "The per-step form" above).

    Each given value is a finite number > 0 (``positive_number``; a bool or a string raises ``TypeError``).
    """

    tol: float | None = None
    tol_abs: float | None = None
    tol_rel: float | None = None

    def __post_init__(self) -> None:
        for name in TOLERANCE_OPTIONS:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, positive_number(name, value, "a finite number > 0 or None"))
        if self.tol is not None and (self.tol_abs is not None or self.tol_rel is not None):
            raise ValueError(
                "tol (a target RMS distance of the sample to the sequential sample) and tol_abs/tol_rel (per-step "
                "residual thresholds) exclude each other: pass one or the other"
            )

    @property
    def target(self) -> float | None:
        """The target RMS distance of the sample: ``tol`` (``DEFAULT_TOL`` when nothing is given); None in the
        expert per-step form (``tol_abs``/``tol_rel`` given)."""
        if self.tol_abs is not None or self.tol_rel is not None:
            return None
        return DEFAULT_TOL if self.tol is None else self.tol

    def step_thresholds(self, coeffs) -> torch.Tensor:
        """``[T]`` float64 RMS thresholds of the order-1 residuals (step ``i`` converged when ``RMS(r_i) <=
        thr_i``)."""
        T = coeffs.num_steps
        if self.target is not None:
            return self.target / (amplification(coeffs) * T)
        tol_abs = default_tol_abs(T) if self.tol_abs is None else self.tol_abs
        tol_rel = 1e-3 if self.tol_rel is None else self.tol_rel
        return torch.clamp(tol_rel * coeffs.posterior_std.to("cpu", torch.float64), min=tol_abs)

    def sample_threshold(self, coeffs) -> float:
        """The final-sample form, for solvers that test the sample itself (SRDS): the target, or the per-step
        threshold of step 0 in the expert form."""
        if self.target is not None:
            return self.target
        return float(self.step_thresholds(coeffs)[0])

    def text(self) -> str:
        """How a message names it: ``tol=0.001``, or ``tol_abs=..., tol_rel=...`` in the expert form."""
        if self.target is None:
            return f"tol_abs={self.tol_abs}, tol_rel={self.tol_rel}"
        return f"tol={self.target:g}"


def step_thresholds(coeffs, tol: float | None, tol_abs: float | None, tol_rel: float | None) -> torch.Tensor:
    """``Tolerance(tol, tol_abs, tol_rel).step_thresholds(coeffs)``."""
    return Tolerance(tol, tol_abs, tol_rel).step_thresholds(coeffs)


_warned: set[tuple] = set()


def warn_precision_floor(dtype: torch.dtype | None, floor_rms: float, tol_text: str) -> None:
    """One warning per (dtype, tolerance) and process: the tolerance is below the model's roughness floor."""
    key = (dtype, tol_text)
    if key in _warned:
        return
    _warned.add(key)
    note = ""
    if unit_roundoff(dtype) is not None:
        note = "; result.converged is False unless the residuals still meet the tolerance"
        name = str(dtype).replace("torch.", "")
        what = f"a {name} model can resolve (its outputs are rounded at ~{unit_roundoff(dtype):.1e})"
        fix = "Use a float32 model for a tighter result."
    else:
        what = "this model can resolve (its outputs jump by more than the tolerance under tiny input changes)"
        fix = (
            "On a GPU, TF32 convolutions/matmuls do this: torch.backends.cudnn.allow_tf32 = False and "
            "torch.backends.cuda.matmul.allow_tf32 = False give float32 precision."
        )
    warnings.warn(
        f"the tolerance ({tol_text}) is below what {what}: that puts a floor of about {floor_rms:.2e} RMS on the "
        "final sample's distance to the sequential sample; the solver stopped at that floor "
        f"(result.precision_limited{note}). {fix}",
        RuntimeWarning,
        stacklevel=3,
    )
