"""Re-exports for one release: the scheduler knowledge lives in ``paratriton.schedulers`` (the operator types in
``schedulers.operator``, the x0/eps maps in ``schedulers.prediction``, one module per family)."""

from __future__ import annotations

from .schedulers import (
    ONE_TAP_FAMILIES,
    ONE_TAP_SCHEDULERS,
    SUPPORTED_SCHEDULERS,
    TRACED_SCHEDULERS,
    coefficients_from_scheduler,
)
from .schedulers.ddim import _ddim
from .schedulers.ddpm import _ddpm
from .schedulers.flow_match import _flow_match
from .schedulers.operator import (
    ClippedPrediction,
    SamplerCoefficients,
    StepOperator,
    check_steps,
    coefficient_versions,
    host_values,
)
from .schedulers.prediction import (
    _PREDICTION_TYPES,
    _check_prediction_type,
    _check_terminal_snr,
    _clip_options,
    _f64,
    _vp_posterior_std,
)
from .schedulers.prediction import affine_prediction as _affine_prediction

_EXTRACTORS = {name: family.coefficients for name, family in ONE_TAP_FAMILIES.items()}

__all__ = [
    "StepOperator",
    "SamplerCoefficients",
    "ClippedPrediction",
    "coefficients_from_scheduler",
    "SUPPORTED_SCHEDULERS",
    "ONE_TAP_SCHEDULERS",
    "TRACED_SCHEDULERS",
    "check_steps",
    "coefficient_versions",
    "host_values",
]
