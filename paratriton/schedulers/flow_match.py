"""``FlowMatchEulerDiscreteScheduler``: its operator (Euler in sigma, ``stochastic_sampling`` included; the model
predicts the velocity ``eps - x0``) and its noise rule (with ``stochastic_sampling`` one draw per step, in the
float32 that ``step`` upcasts the sample to)."""

from __future__ import annotations

from typing import Any

import torch

from .family import OneTapFamily
from .operator import SamplerCoefficients
from .prediction import _f64

__all__ = ["FAMILY"]


def _flow_match(scheduler: Any, eta: float | None, use_clipped_model_output: bool = False) -> SamplerCoefficients:
    """The float64 ``[T]`` coefficients of ``FlowMatchEulerDiscreteScheduler.step`` over its sigmas (velocity
    prediction, ``stochastic_sampling`` included)."""
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


def _draws_at(scheduler: Any, timestep: torch.Tensor, eta: float | None) -> bool:
    """Flow-match Euler draws at every step with ``stochastic_sampling``, else never."""
    return bool(scheduler.config.stochastic_sampling)


FAMILY = OneTapFamily(
    "FlowMatchEulerDiscreteScheduler",
    _flow_match,
    _draws_at,
    noise_dtype="float32",
    config_prediction=False,
    counts_steps=False,
)
