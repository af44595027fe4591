"""The parallel engine on multistep step operators (issue 18): every windowed method returns the scheduler's own
sequential loop on the exact Gaussian mixture, for windows 1, 7 and T, batches 1 and 3, eager and static."""

from __future__ import annotations

import pytest
import torch

import paratriton
from paratriton.multistep import MultistepCoefficients
from paratriton.testing import GaussianMixture

diffusers = pytest.importorskip("diffusers")

SCHEDULERS = {
    "dpm++2m": (lambda: diffusers.DPMSolverMultistepScheduler(), 12),
    "dpm++2m-karras": (lambda: diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True), 12),
    "dpm++3m-sde": (
        lambda: diffusers.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=3),
        10,
    ),
    "unipc-bh2": (lambda: diffusers.UniPCMultistepScheduler(), 12),
    "unipc-bh1": (lambda: diffusers.UniPCMultistepScheduler(solver_type="bh1", final_sigmas_type="sigma_min"), 10),
    "unipc-o3-no-corrector": (
        lambda: diffusers.UniPCMultistepScheduler(solver_order=3, disable_corrector=[0, 1, 2]),
        10,
    ),
    "euler": (lambda: diffusers.EulerDiscreteScheduler(), 12),
    "euler-karras": (lambda: diffusers.EulerDiscreteScheduler(use_karras_sigmas=True), 10),
    "euler-ancestral": (lambda: diffusers.EulerAncestralDiscreteScheduler(), 10),
    "heun": (lambda: diffusers.HeunDiscreteScheduler(), 6),
    "pndm": (lambda: diffusers.PNDMScheduler(), 8),
    "pndm-skip-prk": (lambda: diffusers.PNDMScheduler(skip_prk_steps=True), 10),
    "lms": (lambda: diffusers.LMSDiscreteScheduler(), 8),
    "deis": (lambda: diffusers.DEISMultistepScheduler(), 10),
}
METHODS = ["fp", "picard", "aa", "taa"]


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).square().mean().sqrt())


def problem(name: str, batch: int):
    make, n = SCHEDULERS[name]
    coeffs = paratriton.coefficients_from_scheduler(make(), n)
    assert isinstance(coeffs, MultistepCoefficients)
    T = coeffs.num_steps
    gm = GaussianMixture.random((2, 3, 3), num_components=3, std=0.3, seed=1)
    model = gm.denoiser(coeffs)
    g = torch.Generator().manual_seed(2)
    sigma_max = float(coeffs.noise_scale[-1] / coeffs.input_scale[-1])  # x_T = init_noise_sigma * N(0, 1)
    x_T = sigma_max * torch.randn(batch, 2, 3, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(T, batch, 2, 3, 3, generator=g, dtype=torch.float64) if coeffs.is_stochastic else None
    ref = paratriton.solve(model, coeffs, x_T, noise, method="sequential")
    return coeffs, model, x_T, noise, ref


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.filterwarnings("ignore:the tolerance .* is below what:RuntimeWarning")  # 1e-12: some reach float64's
def test_every_method_returns_the_sequential_multistep_sample(name, batch):
    coeffs, model, x_T, noise, ref = problem(name, batch)
    T = coeffs.num_steps
    for method in METHODS:
        for window in (1, 7, None):
            res = paratriton.solve(
                model, coeffs, x_T, noise, method=method, window=window, tol_abs=1e-12, tol_rel=1e-12
            )
            assert res.converged and res.iterations <= T, (method, window)
            assert rms(res.sample, ref.sample) <= 1e-8, (method, window)
            if window == 1:  # window 1 is the sequential sampler, step by step, with its history ring
                assert res.iterations == T and rms(res.trajectory, ref.trajectory) <= 1e-12


@pytest.mark.parametrize("name", ["dpm++2m", "unipc-bh2", "pndm", "euler-ancestral"])
def test_static_schedule_and_default_tolerance(name):
    """The graphed schedule (run uncaptured on the CPU: padded, masked windows) gives the same answer, and the
    default tolerance holds its promise on multistep samplers too."""
    coeffs, model, x_T, noise, ref = problem(name, 2)
    static = paratriton.solve(
        model, coeffs, x_T, noise, method="taa", cuda_graph=True, window=5, tol_abs=1e-12, tol_rel=1e-12
    )
    assert static.converged and rms(static.sample, ref.sample) <= 1e-8
    res = paratriton.solve(model, coeffs, x_T, noise, method="taa")
    assert res.converged and rms(res.sample, ref.sample) <= 2e-3
