"""``OneTapFamily``: what paratriton knows about one analytic (one-tap) scheduler family, as one value.

Each family module (``ddim.py``, ``ddpm.py``, ``flow_match.py``) defines one: its operator (the float64
``SamplerCoefficients`` read from a scheduler) and the noise its stock ``step`` draws (at which steps, in which
dtype, with which ``eta``). ``paratriton.schedulers`` dispatches on them; nothing else names a family.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .operator import SamplerCoefficients

__all__ = ["OneTapFamily"]


@dataclass(frozen=True)
class OneTapFamily:
    """An analytic scheduler family.

    scheduler:            the diffusers class name (``type(scheduler).__name__``).
    coefficients:         ``(scheduler, eta, use_clipped_model_output) -> SamplerCoefficients`` of a scheduler
                          whose timesteps are set (the checks below already passed).
    draws_at:             ``(scheduler, timestep, eta) -> bool``: whether the stock ``step`` at ``timestep`` (a
                          0-d tensor of the loop's timesteps) draws one ``randn_tensor`` (mirrors diffusers 0.42.1).
    noise_dtype:          the dtype of that draw: "model" (the model output's) or "float32".
    takes_eta:            ``eta`` is an argument of the family's ``step`` (DDIM).
    clipped_model_output: ``use_clipped_model_output`` is an argument of the family's ``step`` (DDIM).
    config_prediction:    the scheduler's ``config.prediction_type`` says what the model predicts (one of
                          ``PREDICTION_TYPES``); False: the family fixes it (flow matching's velocity).
    counts_steps:         ``set_timesteps`` sets ``num_inference_steps``, which the operator reads (False: the
                          timesteps alone tell the loop).
    as_stepped:           ``scheduler -> scheduler``: the running loop's scheduler as ``coefficients_from_scheduler``
                          reads it (a copy where the loop's state says more than its fields; default: itself).
    """

    scheduler: str
    coefficients: Callable[[Any, float | None, bool], SamplerCoefficients]
    draws_at: Callable[[Any, torch.Tensor, float | None], bool]
    noise_dtype: str = "model"
    takes_eta: bool = False
    clipped_model_output: bool = False
    config_prediction: bool = True
    counts_steps: bool = True
    as_stepped: Callable[[Any], Any] = lambda scheduler: scheduler

    def loop_eta(self, eta: float | None) -> float | None:
        """The ``eta`` the stock loop's ``step`` uses when the pipeline is given ``eta`` (None: not given): a float
        (0 when not given) where ``step`` takes one, else None."""
        return float(eta or 0.0) if self.takes_eta else None
