"""The step operator of one parallel call: extracted (one-tap) or traced (k-tap) from the scheduler copy, and cut
to the steps the stock loop takes."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..schedulers import TRACED_SCHEDULERS, SamplerCoefficients, coefficients_from_scheduler, one_tap_family
from ..schedulers.traced import multistep_from_scheduler

_COEFF_FIELDS = ("a", "b", "c", "posterior_std", "timesteps", "signal_scale", "noise_scale")
# the per-step fields of a k-tap ``MultistepCoefficients`` (``b`` is [T, k])
_MULTISTEP_FIELDS = _COEFF_FIELDS + ("input_scale", "output_scale", "output_mix")
# instance attributes the call sets on its scheduler copy (never traced: the tracer deep-copies the scheduler)
_OVERRIDES = ("step", "scale_model_input")


def _slice_steps(coeffs, lo: int, hi: int):
    """The sub-problem of solver steps ``lo .. hi-1`` (a one-tap operator's steps are independent rows).

    A k-tap operator (``MultistepCoefficients``) is traced from the loop's own first step (``start``: img2img's
    ``strength``, the refiner's ``denoising_start``), so only its end may be cut: a loop that stops early (``lo >
    0``: SDXL's ``denoising_end``) runs exactly the first steps of the traced loop. Its start cannot be cut, since
    the scheduler's history (warm-up orders, stored outputs) starts at the loop's first step.
    """
    T = coeffs.num_steps
    if (lo, hi) == (0, T):
        return coeffs
    if isinstance(coeffs, SamplerCoefficients):
        clip = None if coeffs.x0_clip is None else coeffs.x0_clip.steps(lo, hi)
        return type(coeffs)(
            **{f: getattr(coeffs, f)[lo:hi] for f in _COEFF_FIELDS},
            prediction_type=coeffs.prediction_type,
            x0_clip=clip,
        )
    if hi < T and coeffs.taps != 1:
        raise RuntimeError(
            f"{coeffs.scheduler}: a {coeffs.taps}-tap operator traced from an earlier step than the loop's first "
            "cannot be cut at its start (trace it from the loop's first step)"
        )
    draws = tuple(i - lo for i in coeffs.noise_draw_steps if lo <= i < hi)
    return dataclasses.replace(
        coeffs,
        **{f: getattr(coeffs, f)[lo:hi] for f in _MULTISTEP_FIELDS},
        noise_draw_steps=draws,
        noise_dtype=coeffs.noise_dtype if draws else None,
    )


def _traceable(sched):
    """A scheduler like the call's copy ``sched`` without its overrides (``step``, ``scale_model_input``) and with
    the step index the loop's first ``scale_model_input`` set cleared: what the tracer deep-copies and steps. The
    begin index the pipeline set (img2img's ``get_timesteps``) is kept: the stock loop steps from it."""
    clean = object.__new__(type(sched))
    clean.__dict__.update({k: v for k, v in sched.__dict__.items() if k not in _OVERRIDES})
    if "_step_index" in clean.__dict__:
        clean.__dict__["_step_index"] = None
    return clean


def step_operator(sched: Any, eta: float | None, start: int) -> Any:
    """The call's step operator; a traced (k-tap) one over the loop's own steps from ``start`` on."""
    if type(sched).__name__ in TRACED_SCHEDULERS:
        return multistep_from_scheduler(_traceable(sched), start=start)
    family = one_tap_family(sched)  # e.g. DDPM with timesteps=[...]: the count its loop steps through
    return coefficients_from_scheduler(sched if family is None else family.as_stepped(sched), eta=eta)
