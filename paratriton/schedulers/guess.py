"""A first guess of a sampler's trajectory that carries its step noise and its states' levels.

The parallel solvers start from a guess of every state ``x_0 .. x_{T-1}``. Copies of ``x_T`` (the deterministic
samplers' guess) ignore what a stochastic sampler (DDPM, DDIM with ``eta > 0``) adds at every step, ``c_i xi_i``,
although the solve draws those normals up front. This module's guess is the trajectory the operator would take if the
data were Gaussian, ``x0 ~ N(mean, var I)``, whose exact denoiser is affine: for a model input ``z = alpha x0 +
sigma eps`` (``L^2 = var alpha^2 + sigma^2``)::

    E[x0 | z]  = mean + var alpha (z - alpha mean) / L^2,        E[eps | z] = sigma (z - alpha mean) / L^2

and the network's target is a fixed combination of the two (epsilon: ``eps``; sample: ``x0``; v: ``alpha eps -
sigma x0``; flow: ``eps - x0``). With that model every step is affine, ``x_i = k_i x_{i+1} + d_i mean + c_i xi_i``,
and the whole guess is one weighted cumulative sum over the steps, with this problem's own noise. It is only a guess:
the solvers still converge to the exact sequential sample; what it changes is how many iterations they take
(measured on the shipped DDPM-100 policy: TAA 18.75 -> 15.9 iterations on average, Picard 28 -> 25, CPU,
``benchmarks/RESULTS.md``). The engine starts from it where it helps (``guess_applies``): stochastic samplers, and
sigma-space ones, whose ``x_T`` sits at ``sigma_max`` while the later states are near unit scale.
"""

from __future__ import annotations

import torch

from .operator import SamplerCoefficients, StepOperator

__all__ = [
    "GaussianGuess",
    "gaussian_steps",
    "gaussian_guess",
    "guess_applies",
    "GUESS_VAR",
    "WARM_VAR",
    "LEVEL_SPREAD",
]

GUESS_VAR = 1.0
"""The data variance the guess assumes: unit scale, as the tolerance's amplification does (``solvers/tolerance.py``).
On the shipped policy 0.1 / 0.3 / 1.0 gave 15.5 / 15.75 / 15.9 TAA iterations: the choice hardly matters."""

WARM_VAR = 0.05
"""The data variance around a guess of the sample (``denoise(init_sample=...)``, a policy's previous chunk shifted by
its executed actions): the guess is taken to be this close, in the sample's units."""

LEVEL_SPREAD = 2.0
"""A deterministic sampler whose states' levels (``sqrt(alpha^2 + sigma^2)`` of each state) span more than this
factor starts from the guess too: sigma-space samplers (Euler, Heun, LMS: ``x_T`` at ``sigma_max``, the sample at
1). Measured on the issue-23 mixture (CPU, TAA, 6 trajectories): Euler-50 13.7 -> 10.2 iterations, Euler Karras-30
13.5 -> 10.2; variance-preserving and flow samplers (levels within 1.5x) gain nothing (DDIM-50 6.17 -> 6.33, flow-28
6.0 -> 6.33) and keep copies of ``x_T``."""

# a product of step slopes below this (relative) cannot be divided by safely: the guess then runs step by step
_MIN_PRODUCT = 1e-30


def _oracle(prediction_type: str, alpha, sigma, z, mean, var: float):
    """The exact model output for ``N(mean, var I)`` data at a model input ``z`` of levels ``alpha, sigma`` (floats or
    tensors that broadcast): the network's target (epsilon: ``eps``; sample: ``x0``; v: ``alpha eps - sigma x0``;
    flow: ``eps - x0``) of the posterior means ``E[x0 | z]``, ``E[eps | z]``."""
    L2 = var * alpha * alpha + sigma * sigma
    L2 = L2.clamp_min(1e-300) if torch.is_tensor(L2) else max(L2, 1e-300)
    centred = z - alpha * mean
    x0, eps = mean + var * alpha / L2 * centred, sigma / L2 * centred
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        return alpha * eps - sigma * x0
    if prediction_type == "flow":
        return eps - x0
    raise ValueError(f"prediction_type={prediction_type!r} has no Gaussian guess")


def guess_applies(op: StepOperator) -> bool:
    """Whether a cold start from copies of ``x_T`` is worse than the guess: the operator adds step noise, or its
    states' levels span more than ``LEVEL_SPREAD`` (sigma space)."""
    if op.is_stochastic:
        return True
    level = (op.signal_scale.double().square() + op.noise_scale.double().square()).sqrt()
    level = level / op.input_scale.double().abs().clamp_min(1e-300)
    return float(level.max() / level.min().clamp_min(1e-300)) > LEVEL_SPREAD


def gaussian_steps(op: SamplerCoefficients, var: float = GUESS_VAR) -> tuple[torch.Tensor, torch.Tensor]:
    """``k, d [T]`` float64 on the CPU: step ``i`` under the exact denoiser of ``N(mean, var I)`` data is
    ``x_i = k_i x_{i+1} + d_i mean + c_i xi_i``."""
    alpha = op.signal_scale.to("cpu", torch.float64)
    sigma = op.noise_scale.to("cpu", torch.float64)
    a, b = op.a.to("cpu", torch.float64), op.b.to("cpu", torch.float64)

    def out(z: float, mean: float) -> torch.Tensor:
        return _oracle(op.prediction_type, alpha, sigma, z, mean, var)

    base = out(0.0, 0.0)  # zero: the output is affine in (z, mean)
    return a + b * (out(1.0, 0.0) - base), b * (out(0.0, 1.0) - base)


class GaussianGuess:
    """The guess of one step operator with its per-step weights computed once (``device``, ``dtype``): a solver that
    starts many problems of one operator (a control loop's chunks) pays only the device work per call.

    One-tap operators: ``x_i = P_i (x_T + sum_{j >= i} u_j / P_j)`` with ``u_j = d_j mean + c_j xi_j`` and ``P_i =
    prod_{l >= i} k_l``, one cumulative sum over the steps (step by step where a product is too small to divide by);
    k-tap operators (the traced SDE and ancestral schedulers) step by step through their own step.
    """

    def __init__(self, op: StepOperator, device: torch.device | str, dtype: torch.dtype, var: float = GUESS_VAR):
        self.op, self.var, self.dtype, self.device = op, var, dtype, torch.device(device)
        self.cumulative = False  # the one-tap closed form (else step by step)
        if isinstance(op, SamplerCoefficients):
            k, d = gaussian_steps(op, var)
            P = torch.flip(torch.cumprod(torch.flip(k, (0,)), 0), (0,))  # P_i = k_i k_{i+1} ... k_{T-1}
            if bool((k > 0).all()) and float(P.min()) > _MIN_PRODUCT:
                self.cumulative = True
                self.c, self.d, self.scale = (v.to(self.device, dtype) for v in (op.c, d, P))
                return
        self.alpha = op.signal_scale.to("cpu", torch.float64).tolist()
        self.sigma = op.noise_scale.to("cpu", torch.float64).tolist()

    @torch.no_grad()
    def __call__(self, x_T: torch.Tensor, noise: torch.Tensor | None, mean: torch.Tensor | None = None) -> torch.Tensor:
        """``[T, B, *S]`` guess of ``x_0 .. x_{T-1}`` from ``x_T [B, *S]`` (on this guess's device and dtype), with
        the step noise ``noise [T, B, *S]`` (None: none) and the data mean ``mean [B, *S]`` (None: 0)."""
        dev, dtype = self.device, self.dtype
        x_T = x_T.to(dev, dtype)
        noise = None if noise is None else noise.to(dev, dtype)
        mean = None if mean is None else mean.to(dev, dtype)
        if not self.cumulative:
            return self._stepwise(x_T, noise, mean)
        T = self.op.num_steps
        view = (T,) + (1,) * x_T.ndim
        u = torch.zeros((T, *x_T.shape), dtype=dtype, device=dev)
        if noise is not None:
            u.addcmul_(self.c.view(view), noise)
        if mean is not None:
            u.addcmul_(self.d.view(view), mean.unsqueeze(0))
        scale = self.scale.view(view)
        rev = u.div_(scale).flip(0)  # in place where it can: two [T, B, *S] buffers live at a time
        del u
        out = rev.cumsum_(0).flip(0)  # sum_{j >= i} u_j / P_j (summed from the noisy end: no cancellation)
        del rev
        return out.add_(x_T.unsqueeze(0)).mul_(scale)

    def _stepwise(self, x_T: torch.Tensor, noise: torch.Tensor | None, mean: torch.Tensor | None) -> torch.Tensor:
        """Step by step through the operator's own ``model_input`` / ``tap_output`` / ``step`` (any ``StepOperator``:
        k-tap ones, or a one-tap one whose slopes cannot be divided by)."""
        op = self.op
        T, taps = op.num_steps, int(op.taps)
        x = x_T
        out = torch.empty((T, *x_T.shape), dtype=x_T.dtype, device=x_T.device)
        taps_out: list[torch.Tensor] = []  # the tap outputs of the last ``taps`` steps, newest first
        for i in range(T - 1, -1, -1):
            z = op.model_input(i, x)
            m = _oracle(op.prediction_type, self.alpha[i], self.sigma[i], z, 0.0 if mean is None else mean, self.var)
            taps_out = [op.tap_output(i, x, m), *taps_out[: taps - 1]]
            x = out[i] = op.step(i, x, taps_out, None if noise is None else noise[i])
        return out


def gaussian_guess(
    op: StepOperator,
    x_T: torch.Tensor,
    noise: torch.Tensor | None,
    mean: torch.Tensor | None = None,
    var: float = GUESS_VAR,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``[T, B, *S]`` guess of ``x_0 .. x_{T-1}`` (``dtype``, default ``x_T``'s; on ``x_T``'s device): the
    operator's trajectory from ``x_T [B, *S]`` with the step noise ``noise [T, B, *S]`` (None: none) under the exact
    denoiser of ``N(mean, var I)`` data (``mean [B, *S]``, default 0). One use of ``GaussianGuess``."""
    return GaussianGuess(op, x_T.device, dtype or x_T.dtype, var)(x_T, noise, mean)
