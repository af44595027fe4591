"""paratriton: parallel-in-time diffusion sampling (ParaTAA, fixed point, Picard, Anderson) with fused kernels.

import paratriton
coeffs = paratriton.coefficients_from_scheduler(scheduler, num_inference_steps=50, eta=0.0)
result = paratriton.solve(model, coeffs, x_T, noise, method="taa", tol=1e-3)  # tol: RMS distance to sequential
x_0 = paratriton.denoise(model, scheduler, x_T, 100, generator=g, model_kwargs={"global_cond": c})  # a user's loop
"""

from .model import ClassifierFreeGuidance, Denoiser
from .schedulers import MultistepCoefficients, SamplerCoefficients, coefficients_from_scheduler
from .solvers import METHODS, IterationInfo, NonFiniteError, SolveResult, solve, solve_sequential
from .denoise import denoise
from .pipelines import parallelize, parallelize_modular, plan  # plan: pipelines planned there, denoisers by .planner
from .planner import Plan
from ._backends import backends  # which kernel (C++ / CUDA / Triton / torch) each op uses; loads paratriton._C

__version__ = "0.1.0"

TESTED_DIFFUSERS = ((0, 42), (0, 43))  # [lo, hi): the diffusers releases the integration is tested against


def _check_diffusers_version() -> None:
    """One warning when the installed diffusers is outside the tested range (metadata only: no import)."""
    import importlib.metadata
    import re
    import warnings

    try:
        version = importlib.metadata.version("diffusers")
    except importlib.metadata.PackageNotFoundError:
        return
    m = re.match(r"(\d+)\.(\d+)", version)
    if m and not TESTED_DIFFUSERS[0] <= (int(m[1]), int(m[2])) < TESTED_DIFFUSERS[1]:
        lo, hi = (".".join(map(str, v)) for v in TESTED_DIFFUSERS)
        warnings.warn(
            f"paratriton is tested with diffusers >={lo},<{hi}; diffusers {version} is installed "
            "(the pipeline integration may not match it)",
            stacklevel=2,
        )


_check_diffusers_version()


def __getattr__(name: str):
    # the shipped model pulls in diffusers: load it only when asked for (``paratriton.models.load_default()``)
    if name == "models":
        import importlib

        return importlib.import_module(".models", __name__)
    raise AttributeError(f"module 'paratriton' has no attribute {name!r}")


__all__ = [
    "solve",
    "denoise",
    "solve_sequential",
    "METHODS",
    "SolveResult",
    "IterationInfo",
    "NonFiniteError",
    "SamplerCoefficients",
    "MultistepCoefficients",
    "coefficients_from_scheduler",
    "ClassifierFreeGuidance",
    "Denoiser",
    "parallelize",
    "parallelize_modular",
    "plan",
    "Plan",
    "backends",
    "__version__",
]
