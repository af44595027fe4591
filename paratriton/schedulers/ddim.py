"""``DDIMScheduler``: its operator (``eta`` in [0, 1], ``clip_sample`` / ``thresholding`` as a
``ClippedPrediction``) and its noise rule (one draw per step when ``eta > 0``, in the model output's dtype)."""

from __future__ import annotations

from typing import Any

import torch

from .family import OneTapFamily
from .operator import ClippedPrediction, SamplerCoefficients
from .prediction import _check_terminal_snr, _clip_options, _f64, _vp_posterior_std, affine_prediction

__all__ = ["FAMILY"]


def _ddim(scheduler: Any, eta: float | None, use_clipped_model_output: bool = False) -> SamplerCoefficients:
    """The float64 ``[T]`` coefficients of ``DDIMScheduler.step`` with ``eta`` (None: 0) over the set timesteps."""
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
    p, q, r, s = affine_prediction(cfg.prediction_type, alpha, sigma)
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


def _draws_at(scheduler: Any, timestep: torch.Tensor, eta: float | None) -> bool:
    """DDIM draws at every step when ``eta > 0`` (``variance_noise`` of ``DDIMScheduler.step``)."""
    return eta is not None and eta > 0


FAMILY = OneTapFamily("DDIMScheduler", _ddim, _draws_at, noise_dtype="model", takes_eta=True, clipped_model_output=True)
