"""What a model output predicts: x0 and eps as affine maps of the model input, per prediction type, once.

A model input at levels ``z = alpha x0 + sigma eps`` and the network output ``m`` give the data prediction
``x0_hat = p z + q m`` and the noise prediction ``eps_hat = r z + s m`` (``affine_prediction``); the one-tap
families, the tracer's tap outputs and SRDS's frozen quantity all read these four ``[T]`` float64 coefficients.
Also here: the checks and options every VP family shares (prediction type, zero terminal SNR, x0 clipping) and the
DDPM posterior std.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["PREDICTION_TYPES", "affine_prediction", "x0_prediction"]

# the prediction types a scheduler's config may name (flow matching's velocity ``eps - x0`` is "flow", set by the
# flow-match family and the tracer, never read from a config)
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
_PREDICTION_TYPES = PREDICTION_TYPES


def _f64(x: Any) -> torch.Tensor:
    """``x`` as a float64 CPU tensor (detached)."""
    return torch.as_tensor(x).detach().to("cpu", torch.float64)


def affine_prediction(
    prediction_type: str, alpha: torch.Tensor, sigma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``p, q, r, s`` (shaped as ``alpha``, its dtype) with ``x0_hat = p z + q m`` and ``eps_hat = r z + s m`` for a
    model input ``z = alpha x0 + sigma eps`` and output ``m``; ``prediction_type`` one of ``PREDICTION_TYPES`` or
    "flow" (``m = eps - x0``, so ``z = (alpha + sigma) x0 + sigma m``)."""
    if prediction_type == "epsilon":
        p, q = 1.0 / alpha, -sigma / alpha
        r, s = torch.zeros_like(alpha), torch.ones_like(alpha)
    elif prediction_type == "sample":
        p, q = torch.zeros_like(alpha), torch.ones_like(alpha)
        r, s = 1.0 / sigma, -alpha / sigma
    elif prediction_type == "v_prediction":
        p, q = alpha, -sigma
        r, s = sigma, alpha
    elif prediction_type == "flow":
        p, q = 1 / (alpha + sigma), -sigma / (alpha + sigma)
        r, s = 1 / (alpha + sigma), alpha / (alpha + sigma)
    else:
        raise ValueError(f"prediction_type={prediction_type!r} is not supported; use one of {PREDICTION_TYPES}")
    return p, q, r, s


def x0_prediction(op: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``p, q [T]`` (float64, CPU) with ``x0_hat = p_i z_i + q_i m_i`` for a step operator's model input ``z_i`` at
    its levels (``signal_scale``, ``noise_scale``) and prediction type."""
    alpha = op.signal_scale.to("cpu", torch.float64)
    sigma = op.noise_scale.to("cpu", torch.float64)
    p, q, _, _ = affine_prediction(op.prediction_type, alpha, sigma)
    return p, q


def _check_prediction_type(scheduler: Any) -> None:
    """The scheduler's ``config.prediction_type`` must be one of ``PREDICTION_TYPES``."""
    pt = scheduler.config.prediction_type
    if pt not in _PREDICTION_TYPES:
        raise ValueError(
            f"{type(scheduler).__name__}(prediction_type={pt!r}) is not supported; use one of {_PREDICTION_TYPES}"
        )


def _clip_options(scheduler: Any) -> dict | None:
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


def _check_terminal_snr(scheduler: Any, ab_t: torch.Tensor) -> None:
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
    """``[T]`` float64: the DDPM posterior std of ``x_prev`` given ``x_t`` and ``x0`` (``alphas_cumprod`` at the
    step's timestep ``ab_t [T]`` and at the one it steps to ``ab_prev [T]``)."""
    return ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)).clamp_min(0).sqrt()
