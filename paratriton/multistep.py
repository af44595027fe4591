"""Re-exports for one release: the tracer lives in ``paratriton.schedulers.traced``, ``MultistepCoefficients`` in
``paratriton.schedulers.operator``."""

from __future__ import annotations

from .schedulers.operator import _VECTORS, MultistepCoefficients, check_steps, host_values
from .schedulers.traced import (
    _LINEAR_TOL,
    _PNDM_PRK_MIN,
    _PREDICTIONS,
    _TAP_TOL,
    _VE_SCHEDULERS,
    MULTISTEP_SCHEDULERS,
    TRACED_SCHEDULERS,
    _basis,
    _check_linear,
    _check_options,
    _final_level,
    _fit_taps,
    _Float64Mode,
    _options_text,
    _output_transforms,
    _posterior_std,
    _private_noise,
    _Probe,
    _probe,
    _run_loop,
    _scalar_scale,
    _set_start,
    _state_level,
    _trace_rows,
    float64_mode,
    float64_scheduler,
    multistep_from_scheduler,
)

__all__ = [
    "MultistepCoefficients",
    "multistep_from_scheduler",
    "MULTISTEP_SCHEDULERS",
    "float64_scheduler",
    "float64_mode",
]
