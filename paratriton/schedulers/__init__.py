"""Everything paratriton knows about a diffusers scheduler, in one place (the package's ground floor).

``operator.py``: the step-operator types (``StepOperator``, ``SamplerCoefficients`` with its ``ClippedPrediction``,
``MultistepCoefficients``, ``one_tap_view``); ``prediction.py``: x0/eps as affine maps of the model input, once;
``ddim.py``, ``ddpm.py``, ``flow_match.py``: one analytic family each (``OneTapFamily``: its operator and its noise
draws); ``traced.py``: the tracer of the k-tap schedulers. Here: ``coefficients_from_scheduler`` (the dispatch), the
scheduler lists, and ``stock_draws`` (which steps the stock loop draws noise at, in which dtype; ``noise.py`` draws
it). ``guess.py``: the stochastic samplers' first guess of a trajectory (their steps under a Gaussian's exact
denoiser).

Nothing here imports another paratriton subpackage: the solvers, the pipelines and the package face build on it
(``tests/test_imports.py``).

A new scheduler: an analytic one is a module with its ``FAMILY`` (operator and noise rule), added to
``ONE_TAP_FAMILIES`` below; a traced one is a ``TracedFacts`` row in ``traced.FACTS``. Either way, a parity test
against the stock loop (``tests/test_schedule.py``, ``tests/test_multistep.py``, ``tests/test_schedulers.py``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from . import ddim, ddpm, flow_match
from .family import OneTapFamily
from .guess import gaussian_guess
from .noise import GraphedDraws, draw_step_noise
from .operator import (
    ClippedPrediction,
    MultistepCoefficients,
    SamplerCoefficients,
    StepOperator,
    check_steps,
    one_tap_view,
)
from .prediction import _check_prediction_type
from .traced import TRACED_SCHEDULERS, multistep_from_scheduler

__all__ = [
    "StepOperator",
    "SamplerCoefficients",
    "ClippedPrediction",
    "MultistepCoefficients",
    "OneTapFamily",
    "one_tap_view",
    "coefficients_from_scheduler",
    "one_tap_family",
    "stock_draws",
    "draw_step_noise",
    "GraphedDraws",
    "gaussian_guess",
    "SUPPORTED_SCHEDULERS",
    "ONE_TAP_SCHEDULERS",
    "TRACED_SCHEDULERS",
    "REFUSED_SCHEDULERS",
]

# the analytic families by class name: each reads its schedulers into one-tap ``SamplerCoefficients``
ONE_TAP_FAMILIES: dict[str, OneTapFamily] = {f.scheduler: f for f in (ddim.FAMILY, ddpm.FAMILY, flow_match.FAMILY)}
ONE_TAP_SCHEDULERS = tuple(ONE_TAP_FAMILIES)
# ``TRACED_SCHEDULERS`` (one row each in ``traced.FACTS``): traced into k-tap ``MultistepCoefficients`` (the
# sequential samplers and the engine's methods taa/picard/fp/aa solve them; SRDS does not)
# every scheduler ``coefficients_from_scheduler`` and ``parallelize`` accept
SUPPORTED_SCHEDULERS = ONE_TAP_SCHEDULERS + TRACED_SCHEDULERS
# schedulers the pipelines of issue 34 ship with that no parallel solve can reproduce exactly, and why (the refusal
# names them; every other unsupported scheduler gets the list of supported ones)
REFUSED_SCHEDULERS: dict[str, str] = {
    "CosineDPMSolverMultistepScheduler": (
        "its SDE step noise comes from a torchsde BrownianTree seeded with generator.initial_seed() and queried at "
        "(sigma_i, sigma_i+1), not from randn_tensor draws, so the parallel solve cannot draw the same noise up front "
        "(it would need the Brownian tree rebuilt with the stock shape, dtype and seed, and queried in the stock "
        "order); use DPMSolverMultistepScheduler (v_prediction, optionally algorithm_type='sde-dpmsolver++') instead"
    ),
    "CogVideoXDPMScheduler": (
        "CogVideoXPipeline calls its step(noise_pred, old_pred_original_sample, t, t_prev, latents) and carries the "
        "previous x0 prediction from step to step (two outputs per step, a randn draw every step), which the replay "
        "of single-output step() calls cannot reproduce; supporting it needs a tracer entry for that 5-argument step "
        "and a replay that returns (latents, x0). Use CogVideoXDDIMScheduler (CogVideoX-2b's) instead"
    ),
}


def one_tap_family(scheduler: Any) -> OneTapFamily | None:
    """The ``OneTapFamily`` of ``scheduler`` (an instance or a class name), None when it is not one-tap."""
    name = scheduler if isinstance(scheduler, str) else type(scheduler).__name__
    return ONE_TAP_FAMILIES.get(name)


def coefficients_from_scheduler(
    scheduler: Any,
    num_inference_steps: int | None = None,
    *,
    eta: float | None = None,
    use_clipped_model_output: bool = False,
    **set_timesteps_kwargs: Any,
) -> SamplerCoefficients | MultistepCoefficients:
    """Extract float64 sampler coefficients from a diffusers scheduler.

    DDIM, DDPM and flow-match Euler give a one-tap ``SamplerCoefficients``; the other ``SUPPORTED_SCHEDULERS``
    (Euler, Euler ancestral, DPM-Solver, UniPC, Heun, PNDM, LMS, DEIS) are traced into a k-tap
    ``MultistepCoefficients`` (one step per model evaluation: ``T = len(timesteps)``).

    With ``num_inference_steps`` the scheduler is copied and ``set_timesteps`` is called on the copy (extra keyword
    arguments, e.g. ``mu`` for dynamically shifted flow matching, are passed on); without it the scheduler must
    already have its timesteps set. ``eta`` applies to ``DDIMScheduler`` only (0 = DDIM, 1 = DDPM posterior noise).

    ``clip_sample=True`` and ``thresholding=True`` (DDIM, DDPM) are exact: the clipped x0 prediction is an output
    transform evaluated inside the batched model call (``ClippedPrediction``, on ``x0_clip``);
    ``use_clipped_model_output`` is the argument the loop passes to ``DDIMScheduler.step`` (default False).
    """
    name = type(scheduler).__name__
    if name in TRACED_SCHEDULERS:
        if eta is not None:
            raise ValueError(
                f"eta is not an option of {name} (it applies to DDIMScheduler only); its noise, if any, is set by "
                "the scheduler's own options"
            )
        return multistep_from_scheduler(scheduler, num_inference_steps, **set_timesteps_kwargs)
    family = ONE_TAP_FAMILIES.get(name)
    if family is None:
        raise ValueError(f"scheduler {name} is not supported by parallel samplers; supported: {SUPPORTED_SCHEDULERS}")
    if use_clipped_model_output and not family.clipped_model_output:
        raise ValueError(f"use_clipped_model_output is an argument of DDIMScheduler.step only, not of {name}.step")
    if family.config_prediction:
        _check_prediction_type(scheduler)
    if num_inference_steps is not None:
        num_inference_steps = check_steps(num_inference_steps)
        scheduler = copy.deepcopy(scheduler)
        scheduler.set_timesteps(num_inference_steps, **set_timesteps_kwargs)
    elif getattr(scheduler, "num_inference_steps", None) is None and scheduler.timesteps is None:
        raise ValueError(f"{name} has no timesteps: pass num_inference_steps or call set_timesteps first")
    if family.counts_steps and getattr(scheduler, "num_inference_steps", None) is None:
        raise ValueError(f"{name}.set_timesteps has not been called: pass num_inference_steps")
    return family.coefficients(scheduler, eta, bool(use_clipped_model_output))


def stock_draws(
    scheduler: Any, coeffs: StepOperator, loop_timesteps: torch.Tensor, eta: float | None
) -> tuple[list[int], bool]:
    """The solver steps whose ``step`` draws noise, in the loop's draw order, and whether it draws in float32
    (else in the model output's dtype). ``loop_timesteps [T]``: the loop's timesteps, first (noisiest) first;
    solver step ``T - 1 - k`` runs at ``loop_timesteps[k]``. One-tap: the family's rule; traced: what the tracer
    recorded (``noise_draw_steps``, ``noise_dtype``)."""
    if not isinstance(coeffs, SamplerCoefficients):  # traced: the tracer recorded the draws
        return list(coeffs.noise_draw_steps), coeffs.noise_dtype == "float32"
    family = ONE_TAP_FAMILIES[type(scheduler).__name__]
    T = len(loop_timesteps)
    draws = [T - 1 - k for k in range(T) if family.draws_at(scheduler, loop_timesteps[k], eta)]
    return draws, family.noise_dtype == "float32"
