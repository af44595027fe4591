"""The stochastic samplers' first guess (``paratriton.schedulers.guess``): exact for Gaussian data, and the engine's
cold start."""

from __future__ import annotations

import pytest
import torch

import paratriton as pt
from paratriton.schedulers import guess as guess_mod
from paratriton.schedulers.guess import gaussian_guess
from paratriton.testing import GaussianMixture
from paratriton.testing.gaussian_mixture import default_schedule

diffusers = pytest.importorskip("diffusers")

T = 23  # odd, and not a divisor of the training steps


def _operator(kind: str, prediction_type: str = "epsilon"):
    if kind == "ddpm":
        sched = diffusers.DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type, clip_sample=False)
        return pt.coefficients_from_scheduler(sched, T)
    if kind == "flow":
        return pt.coefficients_from_scheduler(diffusers.FlowMatchEulerDiscreteScheduler(), T)
    eta = {"ddim": 0.0, "ddim_eta": 0.5}[kind]
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, prediction_type=prediction_type, clip_sample=False)
    return pt.coefficients_from_scheduler(sched, T, eta=eta)


def _gaussian(shape, mean_scale: float, std: float) -> GaussianMixture:
    """One Gaussian, ``N(mean, std^2 I)``: its exact denoiser is affine, as the guess assumes."""
    g = torch.Generator().manual_seed(3)
    return GaussianMixture(mean_scale * torch.randn(1, *shape, generator=g, dtype=torch.float64), std=std)


def _problem(coeffs, B=2, shape=(3, 5)):
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(B, *shape, generator=g, dtype=torch.float64)
    n = coeffs.num_steps  # T, or more where a scheduler's step has stages (Heun, PNDM)
    noise = torch.randn(n, B, *shape, generator=g, dtype=torch.float64) if coeffs.is_stochastic else None
    return x_T, noise


@pytest.mark.parametrize(
    "kind,prediction_type",
    [
        ("ddpm", "epsilon"),
        ("ddpm", "v_prediction"),
        ("ddpm", "sample"),
        ("ddim_eta", "epsilon"),
        ("ddim_eta", "v_prediction"),
        ("ddim", "epsilon"),
        ("flow", "flow"),
    ],
)
@pytest.mark.parametrize("step_by_step", [False, True], ids=["cumsum", "loop"])
def test_the_guess_is_the_sequential_trajectory_for_gaussian_data(kind, prediction_type, step_by_step, monkeypatch):
    """For ``N(mean, var I)`` data the guess is the sampler's own trajectory (its exact denoiser is the affine one
    the guess assumes), with this problem's step noise; both evaluations (one cumulative sum, or step by step)."""
    if step_by_step:
        monkeypatch.setattr(guess_mod, "_MIN_PRODUCT", float("inf"))
    coeffs = _operator(kind, prediction_type)
    x_T, noise = _problem(coeffs)
    data = _gaussian((3, 5), mean_scale=0.7, std=0.4)
    seq = pt.solve(data.denoiser(coeffs), coeffs, x_T, noise, method="sequential")
    mean = data.means[0].expand_as(x_T)
    got = gaussian_guess(coeffs, x_T, noise, mean=mean, var=0.16)
    assert got.shape == (T, *x_T.shape) and got.dtype == torch.float64
    torch.testing.assert_close(got, seq.trajectory[:T], rtol=1e-9, atol=1e-9)
    # the defaults: mean 0, unit variance
    unit = GaussianMixture(torch.zeros(1, 3, 5, dtype=torch.float64), std=1.0)
    seq_unit = pt.solve(unit.denoiser(coeffs), coeffs, x_T, noise, method="sequential")
    torch.testing.assert_close(gaussian_guess(coeffs, x_T, noise), seq_unit.trajectory[:T], rtol=1e-9, atol=1e-9)


def test_the_guess_keeps_the_requested_dtype_and_device():
    coeffs = _operator("ddpm")
    x_T, noise = _problem(coeffs)
    got = gaussian_guess(coeffs, x_T.float(), noise.float())
    assert got.dtype == torch.float32 and got.device == x_T.device
    torch.testing.assert_close(got.double(), gaussian_guess(coeffs, x_T, noise), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["taa", "picard", "fp", "aa"])
def test_a_stochastic_solve_of_unit_gaussian_data_is_done_in_one_iteration(method):
    """The engine's cold start of a stochastic sampler is the guess: for standard-normal data (what it assumes) the
    first iteration finds every residual at rounding level. A copy of ``x_T`` at every state, the cold start before,
    needs many iterations on the same problem; both give the sequential sample."""
    coeffs = _operator("ddpm")
    x_T, noise = _problem(coeffs)
    model = GaussianMixture(torch.zeros(1, 3, 5, dtype=torch.float64), std=1.0).denoiser(coeffs)
    ref = pt.solve(model, coeffs, x_T, noise, method="sequential").sample
    cold = pt.solve(model, coeffs, x_T, noise, method=method)
    copies = pt.solve(model, coeffs, x_T, noise, method=method, init=x_T.expand(T, *x_T.shape))
    assert cold.converged and cold.iterations == 1
    assert copies.converged and copies.iterations > 5
    for res in (cold, copies):
        assert (res.sample - ref).square().mean().sqrt() <= 1e-3


def test_a_deterministic_solve_still_starts_from_copies_of_x_T():
    """DDIM (eta = 0) carries no step noise: its cold start stays a copy of ``x_T`` (the same iterates)."""
    coeffs = default_schedule(T)
    x_T, _ = _problem(coeffs)
    model = GaussianMixture.random((3, 5), num_components=3, std=0.3).denoiser(coeffs)
    cold = pt.solve(model, coeffs, x_T, None, method="taa")
    copies = pt.solve(model, coeffs, x_T, None, method="taa", init=x_T.expand(T, *x_T.shape))
    assert cold.iterations == copies.iterations
    torch.testing.assert_close(cold.trajectory, copies.trajectory, rtol=0, atol=0)


def test_a_stochastic_mixture_takes_fewer_iterations_from_the_guess():
    """On a Gaussian mixture (not what the guess assumes) at DDPM, T = 23, every method still ends at the sequential
    sample, from the guess in no more iterations than from copies of ``x_T``."""
    coeffs = _operator("ddpm")
    x_T, noise = _problem(coeffs, B=3)
    model = GaussianMixture.random((3, 5), num_components=4, std=0.3, seed=1).denoiser(coeffs)
    ref = pt.solve(model, coeffs, x_T, noise, method="sequential").sample
    for method in ("taa", "picard"):
        cold = pt.solve(model, coeffs, x_T, noise, method=method)
        copies = pt.solve(model, coeffs, x_T, noise, method=method, init=x_T.expand(T, *x_T.shape))
        assert cold.converged and (cold.sample - ref).square().mean().sqrt() <= 2e-3
        assert cold.iterations <= copies.iterations, (method, cold.iterations, copies.iterations)


def test_a_warm_start_from_the_sample_is_done_in_one_iteration_for_gaussian_data():
    """``denoise(init_sample=...)`` of a stochastic sampler: its steps under ``N(init_sample, WARM_VAR I)`` with the
    loop's own step noise, so for exactly that data the first iteration confirms the whole trajectory."""
    from paratriton.schedulers.guess import WARM_VAR

    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    coeffs = pt.coefficients_from_scheduler(sched, T)
    center = 0.5 * torch.randn(1, 3, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    exact = GaussianMixture(center, std=WARM_VAR**0.5).denoiser(coeffs)
    steps = coeffs.timesteps.to(torch.float64)

    def model(x, t):  # the loop's call: diffusers timesteps, one per row
        return exact(x, (t.to(torch.float64).view(-1, 1) == steps.view(1, -1)).long().argmax(1))

    x_T = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(8), dtype=torch.float64)

    def run(**kw):
        return pt.denoise(model, sched, x_T, T, generator=torch.Generator().manual_seed(9), return_result=True, **kw)

    ref = run(method="sequential").sample
    warm = run(method="taa", init_sample=center.expand_as(x_T))
    cold = run(method="taa")
    assert warm.converged and warm.iterations == 1 and cold.iterations > 1
    assert (warm.sample - ref).square().mean().sqrt() <= 1e-3


def _traced(name: str):
    if name == "euler_ancestral":
        return pt.coefficients_from_scheduler(diffusers.EulerAncestralDiscreteScheduler(num_train_timesteps=1000), T)
    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, algorithm_type="sde-dpmsolver++")
    return pt.coefficients_from_scheduler(sched, T)


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2m_sde"])
def test_a_traced_stochastic_schedulers_guess_is_its_trajectory_for_gaussian_data(name):
    """The k-tap operators (traced: sigma-space Euler ancestral, DPM-Solver++ 2M SDE) step by step through their own
    step: for Gaussian data the guess is their sequential trajectory too, and the engine's cold start is it."""
    coeffs = _traced(name)
    assert coeffs.is_stochastic and coeffs.taps >= 1
    x_T, noise = _problem(coeffs)
    x_T = x_T * float(coeffs.noise_scale[-1] / coeffs.input_scale[-1])  # a sigma-space sampler starts at sigma_max
    data = _gaussian((3, 5), mean_scale=0.7, std=0.4)
    seq = pt.solve(data.denoiser(coeffs), coeffs, x_T, noise, method="sequential")
    got = gaussian_guess(coeffs, x_T, noise, mean=data.means[0].expand_as(x_T), var=0.16)
    torch.testing.assert_close(got, seq.trajectory[:T], rtol=1e-9, atol=1e-9)
    unit = GaussianMixture(torch.zeros(1, 3, 5, dtype=torch.float64), std=1.0).denoiser(coeffs)
    ref = pt.solve(unit, coeffs, x_T, noise, method="sequential").sample
    cold = pt.solve(unit, coeffs, x_T, noise, method="taa")
    assert cold.converged and cold.iterations == 1 and (cold.sample - ref).square().mean().sqrt() <= 1e-3


def test_a_zero_terminal_snr_schedule_takes_the_step_by_step_guess():
    """``rescale_betas_zero_snr``: the first step's input carries no signal, so a v-prediction DDPM's first slope is 0
    (the product cannot be divided by): the guess goes step by step, still exact for unit-normal data."""
    from paratriton.schedulers.guess import gaussian_steps

    sched = diffusers.DDPMScheduler(
        rescale_betas_zero_snr=True, prediction_type="v_prediction", clip_sample=False, timestep_spacing="trailing"
    )
    coeffs = pt.coefficients_from_scheduler(sched, T)
    k, _ = gaussian_steps(coeffs)
    assert float(k[-1]) == 0.0
    x_T, noise = _problem(coeffs)
    unit = GaussianMixture(torch.zeros(1, 3, 5, dtype=torch.float64), std=1.0).denoiser(coeffs)
    seq = pt.solve(unit, coeffs, x_T, noise, method="sequential")
    torch.testing.assert_close(gaussian_guess(coeffs, x_T, noise), seq.trajectory[:T], rtol=1e-9, atol=1e-9)
    assert pt.solve(unit, coeffs, x_T, noise, method="taa").iterations == 1


def _traced_configs():
    from test_multistep import CONFIGS, IDS  # every traced scheduler and option the parity tests cover

    return list(range(len(CONFIGS))), IDS


@pytest.mark.filterwarnings("ignore:`algorithm_types dpmsolver and sde-dpmsolver` is deprecated:FutureWarning")
@pytest.mark.parametrize("idx", _traced_configs()[0], ids=_traced_configs()[1])
def test_every_traced_operators_guess_is_its_trajectory_for_gaussian_data(idx):
    """Every traced operator of the parity tests (k-tap, sigma or alpha-sigma levels, flow, zero SNR, SDE): the
    guess steps through the operator's own step with the Gaussian's exact model, so for that data it is the
    sequential trajectory; the engine uses it where the operator adds noise."""
    from test_multistep import _operator as traced_operator

    coeffs = traced_operator(idx, T)
    x_T, noise = _problem(coeffs)
    data = _gaussian((3, 5), mean_scale=0.7, std=0.4)
    seq = pt.solve(data.denoiser(coeffs), coeffs, x_T, noise, method="sequential")
    got = gaussian_guess(coeffs, x_T, noise, mean=data.means[0].expand_as(x_T), var=0.16)
    torch.testing.assert_close(got, seq.trajectory[: coeffs.num_steps], rtol=1e-8, atol=1e-8)


def test_a_sigma_space_sampler_starts_from_the_guess_and_flow_from_copies():
    """``guess_applies``: Euler (sigma space: ``x_T`` at ``sigma_max``, the sample at unit scale) starts from the guess,
    so unit-normal data is solved in one iteration; deterministic VP (DDIM) and flow samplers keep copies of ``x_T``
    (the same iterates as ``init`` copies)."""
    from paratriton.schedulers.guess import guess_applies

    euler = pt.coefficients_from_scheduler(diffusers.EulerDiscreteScheduler(num_train_timesteps=1000), T)
    flow = _operator("flow")
    assert guess_applies(euler) and not guess_applies(flow) and not guess_applies(_operator("ddim"))
    assert guess_applies(_operator("ddpm")) and guess_applies(_operator("ddim_eta"))
    x_T, _ = _problem(euler)
    x_T = x_T * float(euler.noise_scale[-1] / euler.input_scale[-1])
    unit = GaussianMixture(torch.zeros(1, 3, 5, dtype=torch.float64), std=1.0).denoiser(euler)
    ref = pt.solve(unit, euler, x_T, None, method="sequential").sample
    res = pt.solve(unit, euler, x_T, None, method="taa")
    assert res.converged and res.iterations == 1 and (res.sample - ref).square().mean().sqrt() <= 1e-3
    model = GaussianMixture.random((3, 5), num_components=3, std=0.3).denoiser(flow)
    x_flow, _ = _problem(flow)
    cold = pt.solve(model, flow, x_flow, None, method="taa")
    copies = pt.solve(model, flow, x_flow, None, method="taa", init=x_flow.expand(T, *x_flow.shape))
    torch.testing.assert_close(cold.trajectory, copies.trajectory, rtol=0, atol=0)
