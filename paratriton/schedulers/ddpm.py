"""``DDPMScheduler``: its operator (fixed variances, ``clip_sample`` / ``thresholding`` as a
``ClippedPrediction``; ``eta`` is fixed at 1) and its noise rule (one draw per step with ``t > 0``, in the model
output's dtype)."""

from __future__ import annotations

import copy
from typing import Any

import torch

from .family import OneTapFamily
from .operator import ClippedPrediction, SamplerCoefficients
from .prediction import _check_terminal_snr, _clip_options, _f64, _vp_posterior_std, affine_prediction

__all__ = ["FAMILY"]


def _ddpm(scheduler: Any, eta: float | None, use_clipped_model_output: bool = False) -> SamplerCoefficients:
    """The float64 ``[T]`` coefficients of ``DDPMScheduler.step`` (its fixed variance) over the set timesteps."""
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
    p, q, _, _ = affine_prediction(cfg.prediction_type, alpha, sigma)
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


def _draws_at(scheduler: Any, timestep: torch.Tensor, eta: float | None) -> bool:
    """DDPM draws wherever ``t > 0`` (``DDPMScheduler.step`` adds no noise at the last timestep 0)."""
    return bool(timestep > 0)


def _as_stepped(scheduler: Any) -> Any:
    """DDPM with ``timesteps=[...]`` leaves ``num_inference_steps`` unset although its step follows the list; the
    coefficients follow the list as well (the next-smaller timestep), so a copy tells the extractor the count."""
    if getattr(scheduler, "custom_timesteps", False) and getattr(scheduler, "num_inference_steps", None) is None:
        scheduler = copy.copy(scheduler)
        scheduler.num_inference_steps = len(scheduler.timesteps)
    return scheduler


FAMILY = OneTapFamily("DDPMScheduler", _ddpm, _draws_at, noise_dtype="model", as_stepped=_as_stepped)
