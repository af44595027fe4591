"""The step-operator types: what a sampler step is, as the solvers see it.

Every supported sampler step is affine in the current sample ``x_{i+1}``, the model outputs and a pre-drawn standard
normal ``xi_i``::

    x_i = a_i * x_{i+1} + sum_{j<k} b_{i,j} * M_{i+j} + c_i * xi_i,        i = T-1, ..., 0

Step ``i = T-1`` is the first (noisiest) step and ``i = 0`` the last, so ``x_T`` is the initial noise and ``x_0``
the sample. All arrays are float64, indexed by step ``i``. ``SamplerCoefficients`` is the one-tap operator (DDIM,
DDPM, flow-match Euler; with its ``ClippedPrediction`` x0-clip transform), ``MultistepCoefficients`` the k-tap one
(the traced schedulers, ``paratriton.schedulers.traced``), ``one_tap_view`` the one-tap stand-in of either.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

__all__ = [
    "StepOperator",
    "SamplerCoefficients",
    "ClippedPrediction",
    "MultistepCoefficients",
    "one_tap_view",
    "check_steps",
    "host_values",
    "coefficient_versions",
]


@runtime_checkable
class StepOperator(Protocol):
    """A sampler step as the solvers see it: ``x_i = a_i x_{i+1} + sum_{j<taps} b_{i,j} m_{i+j} + c_i xi_i``.

    ``taps`` is how many model outputs (its own and those of the ``taps - 1`` later steps, already computed
    along the trajectory) a step reads: 1 for first-order samplers (DDIM, DDPM, flow-match Euler), more for
    multistep ones (DPM-Solver++, UniPC; ``MultistepCoefficients``). The model is called as
    ``m_i = model(input_scale_i x_{i+1}, i)`` and a tap reads ``M_i = output_scale_i m_i + output_mix_i x_{i+1}``
    (``tap_output``; the identity for one-tap operators); ``step(i, x_next, outputs, noise)`` takes
    ``outputs[j] = M_{i+j}``. The sequential samplers call ``step``; the engine reads
    ``coefficients`` and runs the one-tap case through its kernels (a multistep operator adds a k-tap stencil
    there; ``../shared/design/multistep.md``).
    """

    taps: int

    @property
    def num_steps(self) -> int: ...

    @property
    def is_stochastic(self) -> bool: ...

    def step(self, i: int, x_next: torch.Tensor, outputs, noise: torch.Tensor | None) -> torch.Tensor: ...

    def model_input(self, i: int, x_next: torch.Tensor) -> torch.Tensor: ...

    def tap_output(self, i: int, x_next: torch.Tensor, model_out: torch.Tensor) -> torch.Tensor: ...

    def coefficients(
        self, dtype: torch.dtype, device: torch.device | str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


def host_values(owner: Any, name: str, tensors: tuple[torch.Tensor, ...]) -> Any:
    """``[t.tolist() for t in tensors]`` (a tuple, or the one list), cached on ``owner`` while the tensors are
    unchanged: an in-place edit bumps a tensor's version counter and the next read sees the new values, so the
    sequential sampler reads what the parallel solvers read (no device read per step otherwise)."""
    key = tuple((id(t), t._version) for t in tensors)
    cached = owner.__dict__.get(name)
    if cached is None or cached[0] != key:
        values = tuple(t.tolist() for t in tensors)
        cached = (key, values if len(values) > 1 else values[0])
        owner.__dict__[name] = cached  # a frozen dataclass: the cache bypasses __setattr__, as cached_property does
    return cached[1]


def coefficient_versions(coeffs: Any) -> tuple:
    """The identity and version of every coefficient tensor: changes when one is edited in place."""
    return tuple((id(v), v._version) for v in vars(coeffs).values() if torch.is_tensor(v))


@dataclass(frozen=True)
class ClippedPrediction:
    """A clipped (``clip_sample``) or thresholded (``thresholding``) x0 prediction, evaluated on the rows of the
    batched model call right after the network, so the step stays affine and the system triangular.

    With ``x0_hat = p_i x + q_i m`` (the scheduler's prediction map; ``x`` the model input ``x_{i+1}``, ``m`` the
    network output) and ``x0c`` its clamp to ``[-clip_range, clip_range]`` (or diffusers' dynamic thresholding, per
    row), the clipped step is the unclipped one plus ``w_i (x0c - x0_hat)``: the taps read
    ``M_i = m + k_i (x0c - x0_hat)`` with ``k_i = w_i / b_i``, and ``M = m`` wherever nothing is clipped (the
    iteration then runs exactly as without clipping). ``p, q, k``: ``[T]`` float64 tensors indexed by step.
    """

    p: torch.Tensor
    q: torch.Tensor
    k: torch.Tensor
    clip_range: float | None = None  # clip_sample_range (clip_sample=True)
    threshold_ratio: float | None = None  # dynamic_thresholding_ratio (thresholding=True)
    sample_max_value: float = 1.0  # the thresholding quantile's upper clamp

    _FIELDS: ClassVar[tuple[str, ...]] = ("p", "q", "k")

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float64) -> "ClippedPrediction":
        return replace(self, **{f: getattr(self, f).to(device=device, dtype=dtype) for f in self._FIELDS})

    def steps(self, lo: int, hi: int) -> "ClippedPrediction":
        """The transform of solver steps ``lo .. hi-1``."""
        return replace(self, **{f: getattr(self, f)[lo:hi] for f in self._FIELDS})

    def fingerprint(self) -> bytes:
        vals = [getattr(self, f).detach().to("cpu", torch.float64) for f in self._FIELDS]
        extra = torch.tensor([self.clip_range or 0.0, self.threshold_ratio or 0.0, self.sample_max_value])
        return torch.cat([*vals, extra.double()]).numpy().tobytes()

    def clip(self, x0: torch.Tensor) -> torch.Tensor:
        """``x0 [N, *S]`` clipped, or thresholded per row as diffusers' ``_threshold_sample``."""
        if self.threshold_ratio is None:
            return x0.clamp(-self.clip_range, self.clip_range)
        flat = x0.reshape(x0.shape[0], -1)
        wide = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
        s = torch.quantile(wide.abs(), self.threshold_ratio, dim=1).clamp(1.0, self.sample_max_value).unsqueeze(1)
        return (wide.clamp(-s, s) / s).to(flat.dtype).reshape(x0.shape)

    def __call__(self, x: torch.Tensor, m: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """The tap outputs ``M [N, *S]`` (``x``'s dtype) of rows ``x [N, *S]`` (model inputs) and ``m`` (network
        outputs) at solver steps ``steps [N]``; the fields must be on ``x``'s device (``to``)."""
        view = (-1,) + (1,) * (x.ndim - 1)
        p, q, k = (getattr(self, f).index_select(0, steps).to(x.dtype).view(view) for f in self._FIELDS)
        m = m.to(x.dtype)
        x0 = p * x + q * m
        return m + k * (self.clip(x0) - x0)


class _AffineSteps:
    """What every step operator derives from its ``a [T]`` and ``c [T]``."""

    a: torch.Tensor
    c: torch.Tensor

    @property
    def num_steps(self) -> int:
        return int(self.a.shape[0])

    @property
    def is_stochastic(self) -> bool:
        return bool((self.c != 0).any())


@dataclass(frozen=True)
class SamplerCoefficients(_AffineSteps):
    """Per-step coefficients of an affine sampler, all float64 tensors of shape ``[T]`` indexed by step: the
    one-tap ``StepOperator``.

    a, b, c:          ``x_i = a_i x_{i+1} + b_i m_i + c_i xi_i``
    posterior_std:    the DDPM posterior std of ``x_i`` given ``x_{i+1}`` and ``x_0`` (used by the stopping rule
                      ``RMS(r_i) <= max(tol_abs, tol_rel * posterior_std_i)``), also for deterministic samplers.
    timesteps:        the model timestep of step ``i`` (what the network is called with).
    signal_scale, noise_scale: ``x_{i+1} = signal_scale_i * x0 + noise_scale_i * eps`` (the model input's levels).
    prediction_type:  "epsilon", "v_prediction", "sample" or "flow" (velocity ``eps - x0``).
    x0_clip:          ``ClippedPrediction`` of a scheduler with ``clip_sample`` / ``thresholding`` (None otherwise):
                      the solvers apply it to every model output (``paratriton.solvers._common.ModelCaller``).
    """

    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor
    posterior_std: torch.Tensor
    timesteps: torch.Tensor
    signal_scale: torch.Tensor
    noise_scale: torch.Tensor
    prediction_type: str
    x0_clip: ClippedPrediction | None = None
    taps: ClassVar[int] = 1

    def __post_init__(self) -> None:
        n = self.a.shape[0]
        for name in ("b", "c", "posterior_std", "timesteps", "signal_scale", "noise_scale"):
            t = getattr(self, name)
            if t.ndim != 1 or t.shape[0] != n:
                raise ValueError(f"SamplerCoefficients.{name} must have shape [{n}], got {tuple(t.shape)}")
        if n < 1:
            raise ValueError(f"the number of steps T must be >= 1, got {n}")
        # values, not only shapes: a NaN threshold (posterior_std) would switch the convergence test off, and a
        # NaN/inf a, b or c makes every sample NaN (e.g. a scheduler with beta_start=0: 0/0 at the last step)
        for name in ("a", "b", "c", "posterior_std"):
            t = getattr(self, name)
            if not t.is_floating_point():
                raise ValueError(f"SamplerCoefficients.{name} must be a floating-point tensor, got {t.dtype}")
            finite = torch.isfinite(t)
            if not bool(finite.all()):
                steps = (~finite).nonzero().flatten().tolist()
                raise ValueError(
                    f"SamplerCoefficients.{name} is NaN/inf at step(s) {steps[:8]}"
                    f"{' ...' if len(steps) > 8 else ''}: the coefficients must be finite (a schedule "
                    "with alphas_cumprod = 1 at a step, e.g. beta_start=0, divides 0 by 0)"
                )
        if bool((self.posterior_std < 0).any()):
            raise ValueError("SamplerCoefficients.posterior_std must be >= 0 (it scales the convergence threshold)")

    output_kind: ClassVar[str] = "raw"

    @property
    def input_scale(self) -> torch.Tensor:
        """``[T]`` ones: the model is called on ``x_{i+1}`` itself (as ``MultistepCoefficients.input_scale``)."""
        return torch.ones_like(self.a)

    @property
    def output_scale(self) -> torch.Tensor:
        """``[T]`` ones: the taps read the raw model output (as ``MultistepCoefficients.output_scale``)."""
        return torch.ones_like(self.a)

    @property
    def output_mix(self) -> torch.Tensor:
        """``[T]`` zeros (as ``MultistepCoefficients.output_mix``)."""
        return torch.zeros_like(self.a)

    def model_input(self, i: int, x_next: torch.Tensor) -> torch.Tensor:
        """What the network is called with at step ``i``: ``x_{i+1}`` itself."""
        return x_next

    def tap_output(self, i: int, x_next: torch.Tensor, model_out: torch.Tensor) -> torch.Tensor:
        """The tap's output ``M_i``: the raw model output (in ``x_next``'s dtype)."""
        return model_out.to(x_next.dtype)

    def to(self, device: torch.device | str) -> "SamplerCoefficients":
        return replace(
            self,
            **{
                k: getattr(self, k).to(device)
                for k in ("a", "b", "c", "posterior_std", "timesteps", "signal_scale", "noise_scale")
            },
            x0_clip=None if self.x0_clip is None else self.x0_clip.to(device),
        )

    def step(self, i: int, x_next: torch.Tensor, model_out, noise: torch.Tensor | None) -> torch.Tensor:
        """One sequential step ``x_{i+1} -> x_i`` (result in ``x_next``'s dtype). The coefficients are read as
        host floats, once per operator (no device read per step). ``model_out``: ``m_i`` (a tensor shaped like
        ``x_next``, or a sequence / stack whose first entry is ``m_i``, as the k-tap operators take)."""
        a, b, c = self._host
        if not torch.is_tensor(model_out) or model_out.shape != x_next.shape:
            model_out = model_out[0]
        out = a[i] * x_next + b[i] * model_out.to(x_next.dtype)
        if noise is not None and c[i] != 0.0:
            out = out + c[i] * noise.to(x_next.dtype)
        return out

    @property
    def _host(self) -> tuple[list[float], list[float], list[float]]:
        return host_values(self, "_host", (self.a, self.b, self.c))

    def coefficients(
        self, dtype: torch.dtype, device: torch.device | str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``a, b, c [T]`` in ``dtype`` on ``device`` (what the engine's kernels read)."""
        return tuple(v.to(device=device, dtype=dtype) for v in (self.a, self.b, self.c))


@dataclass(frozen=True)
class MultistepCoefficients(_AffineSteps):
    """A k-tap ``StepOperator``: ``x_i = a_i x_{i+1} + sum_{j<k} b[i, j] m_{i+j} + c_i xi_i``.

    All tensors are float64 and indexed by step ``i`` (``T-1`` first/noisiest, ``0`` last):

    a [T], b [T, k], c [T]: the recurrence; ``b[i, j]`` multiplies the raw model output ``m_{i+j}`` of step
                      ``i + j`` (``j = 0``: the step's own output; ``b[i, j] = 0`` where ``i + j >= T``).
    input_scale [T]:  the model is called as ``m_i = model(input_scale_i * x_{i+1}, i)`` (``scale_model_input``).
    posterior_std [T]: the DDPM-style posterior std of the state ``x_i`` given ``x_{i+1}`` and ``x0`` for the state's
                      levels ``x = alpha x0 + sigma eps`` (VP: ``sqrt((1-ab_i)/(1-ab_{i+1}) (1-ab_{i+1}/ab_i))``;
                      sigma-space: ``sigma_i sqrt(sigma_{i+1}^2 - sigma_i^2) / sigma_{i+1}``); it scales the
                      convergence threshold ``max(tol_abs, tol_rel * posterior_std_i)``. A step that keeps the level
                      (Heun's second stage, PNDM's repeated Runge-Kutta evaluation) has the value of the step before
                      it; the last step to sigma 0 has 0 (as DDIM's), where only ``tol_abs`` applies.
    timesteps [T]:    the model timestep of step ``i`` (what the network is called with).
    signal_scale, noise_scale [T]: the levels of the *model input* ``z = input_scale_i x_{i+1} = signal x0 +
                      noise eps`` that the scheduler assumes at step ``i``.
    prediction_type:  "epsilon", "v_prediction", "sample" or "flow" (velocity ``eps - x0``).
    output_kind, output_scale [T], output_mix [T]: what a tap reads. The "model output" ``M_i`` of the recurrence
                      is the raw network output ``m_i = model(input_scale_i x_{i+1}, i)`` mapped per step as
                      ``M_i = output_scale_i m_i + output_mix_i x_{i+1}``: "raw" (``1, 0``: ``M_i = m_i``), "data"
                      (the data prediction ``x0_hat``) or "noise" (``eps_hat``). The tracer picks the kind with the
                      fewest taps (DPM-Solver++ on an epsilon model: "data", 2 taps; raw outputs would need all).
    taps:             ``k`` (instance attribute), the most outputs ``M`` any step reads; ``step_taps [T]`` per step.
    scheduler:        the scheduler's class name; noise_draw_steps: the steps whose ``step()`` draws one
                      ``randn_tensor`` in the stock loop, in draw order; noise_dtype: its dtype ("model" = the model
                      output's dtype, or "float32"); None when nothing is drawn.
    """

    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor
    input_scale: torch.Tensor
    posterior_std: torch.Tensor
    timesteps: torch.Tensor
    signal_scale: torch.Tensor
    noise_scale: torch.Tensor
    prediction_type: str
    output_kind: str
    output_scale: torch.Tensor
    output_mix: torch.Tensor
    scheduler: str = ""
    noise_draw_steps: tuple[int, ...] = ()
    noise_dtype: str | None = None
    taps: int = field(init=False)

    def __post_init__(self) -> None:
        n = self.a.shape[0]
        if self.a.ndim != 1 or n < 1:
            raise ValueError(f"MultistepCoefficients.a must have shape [T] with T >= 1, got {tuple(self.a.shape)}")
        if self.b.ndim != 2 or self.b.shape[0] != n or self.b.shape[1] < 1:
            raise ValueError(f"MultistepCoefficients.b must have shape [{n}, k] with k >= 1, got {tuple(self.b.shape)}")
        for name in _VECTORS[1:]:
            t = getattr(self, name)
            if t.ndim != 1 or t.shape[0] != n:
                raise ValueError(f"MultistepCoefficients.{name} must have shape [{n}], got {tuple(t.shape)}")
        for name in ("b",) + tuple(n for n in _VECTORS if n != "timesteps"):
            t = getattr(self, name)
            if not t.is_floating_point():
                raise ValueError(f"MultistepCoefficients.{name} must be a floating-point tensor, got {t.dtype}")
            finite = torch.isfinite(t)
            if not bool(finite.all()):
                steps = sorted({int(s) for s in (~finite).nonzero()[:, 0].tolist()})
                raise ValueError(
                    f"MultistepCoefficients.{name} is NaN/inf at step(s) {steps[:8]}"
                    f"{' ...' if len(steps) > 8 else ''}: the coefficients must be finite"
                )
        if bool((self.posterior_std < 0).any()):
            raise ValueError("MultistepCoefficients.posterior_std must be >= 0 (it scales the convergence threshold)")
        k = self.b.shape[1]
        rows = torch.arange(n)[:, None] + torch.arange(k)[None, :]
        if bool((self.b[rows >= n] != 0).any()):
            raise ValueError("MultistepCoefficients.b[i, j] must be 0 where i + j >= T (no model output there)")
        if self.output_kind not in ("raw", "data", "noise"):
            raise ValueError(f"output_kind must be 'raw', 'data' or 'noise', got {self.output_kind!r}")
        if bool((self.output_scale == 0).any()):
            raise ValueError("MultistepCoefficients.output_scale must be nonzero (the raw output must be recoverable)")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample", "flow"):
            raise ValueError(f"prediction_type {self.prediction_type!r} is not supported")
        object.__setattr__(self, "taps", int(k))

    @property
    def step_taps(self) -> torch.Tensor:
        """``[T]`` int64: how many outputs step ``i`` reads (1 + the last ``j`` with ``b[i, j] != 0``; 1 if none)."""
        nz = (self.b != 0).to(torch.int64) * torch.arange(1, self.taps + 1)
        return nz.max(1).values.clamp_min(1)

    def to(self, device: torch.device | str) -> "MultistepCoefficients":
        return replace(self, **{k: getattr(self, k).to(device) for k in ("b",) + _VECTORS})

    def tap_output(self, i: int, x_next: torch.Tensor, model_out: torch.Tensor) -> torch.Tensor:
        """``M_i = output_scale_i m_i + output_mix_i x_{i+1}`` in ``x_next``'s dtype (``m_i`` the raw output)."""
        u, v = self._host_output
        out = model_out.to(x_next.dtype)
        if u[i] != 1.0:
            out = u[i] * out
        return out + v[i] * x_next if v[i] != 0.0 else out

    def model_input(self, i: int, x_next: torch.Tensor) -> torch.Tensor:
        """``input_scale_i x_{i+1}``: what the network is called with at step ``i``."""
        s = self._host_input_scale[i]
        return x_next if s == 1.0 else s * x_next

    def coefficients(
        self, dtype: torch.dtype, device: torch.device | str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``a [T], b [T, k], c [T]`` in ``dtype`` on ``device``; ``b[i, j]`` multiplies ``m_{i+j}``."""
        return tuple(v.to(device=device, dtype=dtype) for v in (self.a, self.b, self.c))

    def step(
        self,
        i: int,
        x_next: torch.Tensor,
        outputs: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...],
        noise: torch.Tensor | None,
    ) -> torch.Tensor:
        """One sequential step ``x_{i+1} -> x_i`` (result in ``x_next``'s dtype).

        outputs: the tap outputs ``M_i, M_{i+1}, ..., M_{i+n-1}`` in that order (``outputs[j] = M_{i+j}``, newest
        first; ``M = tap_output(...)`` of the raw model outputs, which is the raw output itself when
        ``output_kind == "raw"``), each shaped like ``x_next``, as a sequence or stacked ``[n, *x_next.shape]``;
        ``n`` may be less than ``taps`` near the first step (``i + j >= T`` has no output and weight 0); a missing
        output with a nonzero weight is an error. A bare tensor shaped like ``x_next`` is ``M_i`` alone.
        noise: ``xi_i`` shaped like ``x_next`` (or None for a deterministic step).
        """
        a, b, c = self._host
        if torch.is_tensor(outputs) and outputs.shape == x_next.shape:
            outputs = (outputs,)
        n = len(outputs)
        out = a[i] * x_next
        for j, w in enumerate(b[i]):
            if w == 0.0:
                continue
            if j >= n:
                raise ValueError(
                    f"step {i} reads the model output m_{i + j} (weight {w:.3g}) but only {n} output(s) were given"
                )
            out = out + w * outputs[j].to(x_next.dtype)
        if noise is not None and c[i] != 0.0:
            out = out + c[i] * noise.to(x_next.dtype)
        return out

    @property
    def _host(self) -> tuple[list[float], list[list[float]], list[float]]:
        return host_values(self, "_host_abc", (self.a, self.b, self.c))

    @property
    def _host_input_scale(self) -> list[float]:
        return host_values(self, "_host_scale", (self.input_scale,))

    @property
    def _host_output(self) -> tuple[list[float], list[float]]:
        return host_values(self, "_host_out", (self.output_scale, self.output_mix))


_VECTORS = (
    "a",
    "c",
    "input_scale",
    "posterior_std",
    "timesteps",
    "signal_scale",
    "noise_scale",
    "output_scale",
    "output_mix",
)


def check_steps(value: Any, name: str = "num_inference_steps") -> int:
    """``value`` as an int >= 1, or an error naming ``name`` and the range: no silent truncation (2.7 is not 2; a
    bool is not a count). Integral floats (50.0) and integer tensors are accepted."""
    if torch.is_tensor(value):
        value = value.item() if value.numel() == 1 else value
    ok = not isinstance(value, bool) and (
        hasattr(value, "__index__") or (isinstance(value, float) and value.is_integer())
    )
    if not ok or int(value) < 1:
        raise ValueError(f"{name} (T) must be an int >= 1, got {type(value).__name__} {value!r}")
    return int(value)


def one_tap_view(coeffs: StepOperator) -> SamplerCoefficients:
    """``coeffs`` itself if one-tap ``SamplerCoefficients``, else a one-tap stand-in with the same ``T``, ``a``,
    ``c``, ``posterior_std`` and levels (``b`` = the own-output weight ``b[:, 0]``) for the shared input checks."""
    if isinstance(coeffs, SamplerCoefficients):
        return coeffs
    if not isinstance(coeffs, StepOperator) or not hasattr(coeffs, "b"):
        raise TypeError(f"coeffs must be a StepOperator (SamplerCoefficients, MultistepCoefficients), got {coeffs!r}")
    b = coeffs.b[:, 0] if coeffs.b.ndim == 2 else coeffs.b
    return SamplerCoefficients(
        coeffs.a,
        b,
        coeffs.c,
        coeffs.posterior_std,
        coeffs.timesteps,
        coeffs.signal_scale,
        coeffs.noise_scale,
        coeffs.prediction_type,
    )
