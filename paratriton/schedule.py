"""Affine coefficients of first-order diffusion samplers, read from diffusers schedulers.

Every supported sampler step is affine in the current sample ``x_{i+1}``, the raw model output ``m`` and a
pre-drawn standard normal ``xi_i``::

    x_i = a_i * x_{i+1} + b_i * m(x_{i+1}, i) + c_i * xi_i,        i = T-1, ..., 0

Step ``i = T-1`` is the first (noisiest) step and ``i = 0`` the last, so ``x_T`` is the initial noise and ``x_0``
the sample. All arrays are float64, indexed by step ``i``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

__all__ = [
    "StepOperator",
    "SamplerCoefficients",
    "ClippedPrediction",
    "coefficients_from_scheduler",
    "SUPPORTED_SCHEDULERS",
    "ONE_TAP_SCHEDULERS",
    "TRACED_SCHEDULERS",
]

# the schedulers read analytically into one-tap ``SamplerCoefficients``
ONE_TAP_SCHEDULERS = ("DDIMScheduler", "DDPMScheduler", "FlowMatchEulerDiscreteScheduler")
# the schedulers ``coefficients_from_scheduler`` traces into k-tap ``MultistepCoefficients`` (``paratriton.multistep``;
# the sequential samplers and the engine's methods taa/picard/fp/aa solve them; SRDS does not)
TRACED_SCHEDULERS = (
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "UniPCMultistepScheduler",
    "HeunDiscreteScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "DEISMultistepScheduler",
)
# every scheduler ``coefficients_from_scheduler`` and ``parallelize`` accept
SUPPORTED_SCHEDULERS = ONE_TAP_SCHEDULERS + TRACED_SCHEDULERS
_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@runtime_checkable
class StepOperator(Protocol):
    """A sampler step as the solvers see it: ``x_i = a_i x_{i+1} + sum_{j<taps} b_{i,j} m_{i+j} + c_i xi_i``.

    ``taps`` is how many model outputs (its own and those of the ``taps - 1`` later steps, already computed
    along the trajectory) a step reads: 1 for first-order samplers (DDIM, DDPM, flow-match Euler), more for
    multistep ones (DPM-Solver++, UniPC; ``paratriton.multistep.MultistepCoefficients``). The model is called as
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


@dataclass(frozen=True)
class SamplerCoefficients:
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

    @property
    def num_steps(self) -> int:
        return int(self.a.shape[0])

    @property
    def is_stochastic(self) -> bool:
        return bool((self.c != 0).any())

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


def _f64(x) -> torch.Tensor:
    return torch.as_tensor(x).detach().to("cpu", torch.float64)


def _affine_prediction(prediction_type: str, alpha: torch.Tensor, sigma: torch.Tensor):
    """Write ``x0_hat = p x + q m`` and ``eps_hat = r x + s m`` for a VP model input ``x = alpha x0 + sigma eps``."""
    if prediction_type == "epsilon":
        p, q = 1.0 / alpha, -sigma / alpha
        r, s = torch.zeros_like(alpha), torch.ones_like(alpha)
    elif prediction_type == "sample":
        p, q = torch.zeros_like(alpha), torch.ones_like(alpha)
        r, s = 1.0 / sigma, -alpha / sigma
    elif prediction_type == "v_prediction":
        p, q = alpha, -sigma
        r, s = sigma, alpha
    else:
        raise ValueError(f"prediction_type={prediction_type!r} is not supported; use one of {_PREDICTION_TYPES}")
    return p, q, r, s


def _check_prediction_type(scheduler) -> None:
    pt = scheduler.config.prediction_type
    if pt not in _PREDICTION_TYPES:
        raise ValueError(
            f"{type(scheduler).__name__}(prediction_type={pt!r}) is not supported; use one of {_PREDICTION_TYPES}"
        )


def _clip_options(scheduler) -> dict | None:
    """The scheduler's x0 clipping (``clip_sample``) or dynamic thresholding (``thresholding``, which wins as in
    diffusers) as ``ClippedPrediction`` options; None when it does neither."""
    cfg = scheduler.config
    name = type(scheduler).__name__
    if getattr(cfg, "thresholding", False):
        ratio, smax = float(cfg.dynamic_thresholding_ratio), float(cfg.sample_max_value)
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"{name}(dynamic_thresholding_ratio={ratio}) must be in (0, 1]")
        if not smax >= 1.0:
            raise ValueError(f"{name}(sample_max_value={smax}) must be >= 1 (the thresholding quantile's upper clamp)")
        return dict(threshold_ratio=ratio, sample_max_value=smax)
    if getattr(cfg, "clip_sample", False):
        r = float(cfg.clip_sample_range)
        if not r > 0.0 or r != r:
            raise ValueError(f"{name}(clip_sample_range={r}) must be > 0")
        return dict(clip_range=r)
    return None


def _check_terminal_snr(scheduler, ab_t: torch.Tensor) -> None:
    """Zero terminal SNR (``alphas_cumprod = 0`` at a sampled timestep, e.g. ``rescale_betas_zero_snr=True``) with an
    epsilon model: ``x0 = (x - sigma eps) / alpha`` divides by ``alpha = 0``. Named, not blamed on ``beta_start``."""
    name, pt = type(scheduler).__name__, scheduler.config.prediction_type
    if pt == "epsilon" and bool((ab_t <= 0).any()):
        raise ValueError(
            f"{name} has zero terminal SNR (alphas_cumprod = 0 at timestep(s) "
            f"{scheduler.timesteps[(ab_t <= 0).flip(0)].tolist()}; rescale_betas_zero_snr="
            f"{getattr(scheduler.config, 'rescale_betas_zero_snr', False)}) with prediction_type='epsilon': the step "
            "divides by alpha = 0 there (no epsilon model can predict x0 from pure noise); use "
            "prediction_type='v_prediction' (how zero-SNR models are trained) or a schedule without zero SNR"
        )


def _vp_posterior_std(ab_t: torch.Tensor, ab_prev: torch.Tensor) -> torch.Tensor:
    return ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)).clamp_min(0).sqrt()


def _ddim(scheduler, eta: float | None, use_clipped_model_output: bool = False) -> SamplerCoefficients:
    eta = 0.0 if eta is None else float(eta)
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1] for DDIMScheduler, got {eta}")
    cfg = scheduler.config
    ts = scheduler.timesteps.flip(0).to("cpu", torch.long)  # step i uses the i-th smallest timestep
    ac = _f64(scheduler.alphas_cumprod)
    prev = ts - cfg.num_train_timesteps // scheduler.num_inference_steps  # diffusers' rule, whatever the spacing
    ab_t = ac[ts]
    _check_terminal_snr(scheduler, ab_t)
    ab_prev = torch.where(prev >= 0, ac[prev.clamp_min(0)], _f64(scheduler.final_alpha_cumprod))
    var = (1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)
    std = eta * var.sqrt()
    alpha, sigma = ab_t.sqrt(), (1 - ab_t).sqrt()
    p, q, r, s = _affine_prediction(cfg.prediction_type, alpha, sigma)
    d = (1 - ab_prev - std**2).sqrt()
    c = std if eta > 0 else torch.zeros_like(std)
    post, tsf = _vp_posterior_std(ab_t, ab_prev), ts.to(torch.float64)
    a = ab_prev.sqrt() * p + d * r
    b = ab_prev.sqrt() * q + d * s
    clip = _clip_options(scheduler)
    if clip is None:
        return SamplerCoefficients(a, b, c, post, tsf, alpha, sigma, cfg.prediction_type)
    # clipped: x_prev = sqrt(ab_prev) x0c + d eps', with eps' the unclipped eps_hat (diffusers' default) or the one
    # re-derived from x0c (use_clipped_model_output): the unclipped step plus w (x0c - x0_hat). |b| > 0 for every
    # prediction type while ab_prev > ab_t (``ClippedPrediction``)
    w = ab_prev.sqrt() - (d * alpha / sigma if use_clipped_model_output else 0.0)
    if not bool((b.abs() > 1e-12).all()):
        raise ValueError("DDIMScheduler: clipped steps need distinct timesteps (a step's model weight is 0)")
    x0_clip = ClippedPrediction(p, q, w / b, **clip)
    return SamplerCoefficients(a, b, c, post, tsf, alpha, sigma, cfg.prediction_type, x0_clip)


def _ddpm(scheduler, eta: float | None, use_clipped_model_output: bool = False) -> SamplerCoefficients:
    if eta is not None and float(eta) != 1.0:
        raise ValueError(
            f"eta={eta} is not supported for DDPMScheduler (its noise is fixed, eta=1); "
            "use DDIMScheduler for eta in [0, 1)"
        )
    cfg = scheduler.config
    if cfg.variance_type not in ("fixed_small", "fixed_small_log", "fixed_large"):
        raise ValueError(
            f"DDPMScheduler(variance_type={cfg.variance_type!r}) is not supported; use one of "
            "('fixed_small', 'fixed_small_log', 'fixed_large')"
        )
    ts_desc = scheduler.timesteps.to("cpu", torch.long)
    ts = ts_desc.flip(0)
    prev = torch.cat([torch.tensor([-1]), ts[:-1]])  # the next-smaller timestep in the list, -1 after the last
    ac = _f64(scheduler.alphas_cumprod)
    ab_t = ac[ts]
    _check_terminal_snr(scheduler, ab_t)
    ab_prev = torch.where(prev >= 0, ac[prev.clamp_min(0)], torch.ones_like(ab_t))
    cur_alpha = ab_t / ab_prev
    cur_beta = 1 - cur_alpha
    c0 = ab_prev.sqrt() * cur_beta / (1 - ab_t)
    cs = cur_alpha.sqrt() * (1 - ab_prev) / (1 - ab_t)
    alpha, sigma = ab_t.sqrt(), (1 - ab_t).sqrt()
    p, q, _, _ = _affine_prediction(cfg.prediction_type, alpha, sigma)
    a, b = c0 * p + cs, c0 * q
    clip = _clip_options(scheduler)  # x_prev = c0 x0c + cs x: the unclipped step plus c0 (x0c - x0_hat)
    x0_clip = None if clip is None else ClippedPrediction(p, q, c0 / b, **clip)
    var = ((1 - ab_prev) / (1 - ab_t) * cur_beta).clamp_min(1e-20)
    if cfg.variance_type == "fixed_large":
        var = cur_beta
    c = torch.where(ts > 0, var.sqrt(), torch.zeros_like(var))  # diffusers adds noise only when t > 0
    return SamplerCoefficients(
        a, b, c, _vp_posterior_std(ab_t, ab_prev), ts.to(torch.float64), alpha, sigma, cfg.prediction_type, x0_clip
    )


def _flow_match(scheduler, eta: float | None, use_clipped_model_output: bool = False) -> SamplerCoefficients:
    if eta is not None:
        raise ValueError(
            "eta is not an option of FlowMatchEulerDiscreteScheduler; set the scheduler's stochastic_sampling instead"
        )
    s = _f64(scheduler.sigmas)
    s_cur, s_next = s[:-1].flip(0), s[1:].flip(0)  # step i goes from s_cur[i] to s_next[i]
    ts = _f64(scheduler.timesteps).flip(0)
    alpha, sigma = 1 - s_cur, s_cur
    # posterior std of x(s_next) given x(s_cur) and x0 for x(s) = (1-s) x0 + s eps (reduces to DDPM's for VP)
    ratio = torch.where(s_next < 1, (1 - s_cur) / (1 - s_next).clamp_min(1e-300), torch.zeros_like(s_cur))
    trans_var = (s_cur**2 - ratio**2 * s_next**2).clamp_min(0)
    post = torch.where(s_cur > 0, s_next * trans_var.sqrt() / s_cur.clamp_min(1e-300), torch.zeros_like(s_cur))
    if scheduler.config.stochastic_sampling:
        a, b, c = 1 - s_next, -(1 - s_next) * s_cur, s_next
    else:
        a, b, c = torch.ones_like(s_cur), s_next - s_cur, torch.zeros_like(s_cur)
    return SamplerCoefficients(a, b, c, post, ts, alpha, sigma, "flow")


_EXTRACTORS = {"DDIMScheduler": _ddim, "DDPMScheduler": _ddpm, "FlowMatchEulerDiscreteScheduler": _flow_match}


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


def coefficients_from_scheduler(
    scheduler,
    num_inference_steps: int | None = None,
    *,
    eta: float | None = None,
    use_clipped_model_output: bool = False,
    **set_timesteps_kwargs,
):
    """Extract float64 sampler coefficients from a diffusers scheduler.

    DDIM, DDPM and flow-match Euler give a one-tap ``SamplerCoefficients``; the other ``SUPPORTED_SCHEDULERS``
    (Euler, Euler ancestral, DPM-Solver, UniPC, Heun, PNDM, LMS, DEIS) are traced into a k-tap
    ``paratriton.multistep.MultistepCoefficients`` (one step per model evaluation: ``T = len(timesteps)``).

    With ``num_inference_steps`` the scheduler is copied and ``set_timesteps`` is called on the copy (extra keyword
    arguments, e.g. ``mu`` for dynamically shifted flow matching, are passed on); without it the scheduler must
    already have its timesteps set. ``eta`` applies to ``DDIMScheduler`` only (0 = DDIM, 1 = DDPM posterior noise).

    ``clip_sample=True`` and ``thresholding=True`` (DDIM, DDPM) are exact: the clipped x0 prediction is an output
    transform evaluated inside the batched model call (``ClippedPrediction``, on ``x0_clip``);
    ``use_clipped_model_output`` is the argument the loop passes to ``DDIMScheduler.step`` (default False).
    """
    name = type(scheduler).__name__
    if name in TRACED_SCHEDULERS:
        from .multistep import multistep_from_scheduler

        if eta is not None:
            raise ValueError(
                f"eta is not an option of {name} (it applies to DDIMScheduler only); its noise, if any, is set by "
                "the scheduler's own options"
            )
        return multistep_from_scheduler(scheduler, num_inference_steps, **set_timesteps_kwargs)
    if name not in _EXTRACTORS:
        raise ValueError(f"scheduler {name} is not supported by parallel samplers; supported: {SUPPORTED_SCHEDULERS}")
    if use_clipped_model_output and name != "DDIMScheduler":
        raise ValueError(f"use_clipped_model_output is an argument of DDIMScheduler.step only, not of {name}.step")
    if name != "FlowMatchEulerDiscreteScheduler":
        _check_prediction_type(scheduler)
    if num_inference_steps is not None:
        num_inference_steps = check_steps(num_inference_steps)
        scheduler = copy.deepcopy(scheduler)
        scheduler.set_timesteps(num_inference_steps, **set_timesteps_kwargs)
    elif getattr(scheduler, "num_inference_steps", None) is None and scheduler.timesteps is None:
        raise ValueError(f"{name} has no timesteps: pass num_inference_steps or call set_timesteps first")
    if name != "FlowMatchEulerDiscreteScheduler" and getattr(scheduler, "num_inference_steps", None) is None:
        raise ValueError(f"{name}.set_timesteps has not been called: pass num_inference_steps")
    return _EXTRACTORS[name](scheduler, eta, bool(use_clipped_model_output))
