"""A tolerance means what it says (issue 17): ``tol`` is the RMS distance of the sample to the sequential sample.

Every method at the default tolerance returns the sequential sampler's sample to within 2e-3 RMS (data in [-1, 1]:
60 dB, well below one 8-bit step), for T from 10 to 1000, DDIM, DDPM and flow matching, on the exact Gaussian
mixture and on the shipped digits model; other targets hold within 2x; a bf16 model stops at its rounding floor.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import paratriton
from paratriton.solvers import tolerance
from paratriton.solvers.tolerance import DEFAULT_TOL, amplification, step_thresholds
from paratriton.testing import GaussianMixture

ALL_METHODS = ["fp", "picard", "aa", "taa", "srds", "srds_pipelined"]


def worst_rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    """The largest over the batch of the per-trajectory RMS distance."""
    return float((x.double() - ref.double()).flatten(1).square().mean(1).sqrt().max())


def gmm_problem(sampler: str, T: int, batch: int = 2, seed: int = 0, shape=(4, 8, 8)):
    from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler

    cfg = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=False)
    sch = {
        "ddim": lambda: DDIMScheduler(**cfg, timestep_spacing="trailing"),
        "ddpm": lambda: DDPMScheduler(**cfg, timestep_spacing="trailing"),
        "flow": lambda: FlowMatchEulerDiscreteScheduler(shift=1.0),
    }[sampler]()
    coeffs = paratriton.coefficients_from_scheduler(sch, T, **({"eta": 0.0} if sampler == "ddim" else {}))
    gm = GaussianMixture.random(shape, num_components=8, std=math.sqrt(0.05), seed=seed, scale=0.8)
    g = torch.Generator().manual_seed(seed + 1)
    x_T = torch.randn(batch, *shape, generator=g, dtype=torch.float64)
    noise = torch.randn(T, batch, *shape, generator=g, dtype=torch.float64) if coeffs.is_stochastic else None
    model = gm.denoiser(coeffs)
    ref = paratriton.solve(model, coeffs, x_T, noise, method="sequential").sample
    return model, coeffs, x_T, noise, ref


@pytest.mark.parametrize("T", [10, 25, 100, 1000])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "flow"])
def test_default_tolerance_holds_on_the_gaussian_mixture(sampler, T):
    model, coeffs, x_T, noise, ref = gmm_problem(sampler, T)
    for method in ALL_METHODS:
        res = paratriton.solve(model, coeffs, x_T, noise, method=method)
        dist = worst_rms(res.sample, ref)
        assert res.converged and torch.isfinite(res.sample).all()
        assert dist <= 2 * DEFAULT_TOL, (method, dist)
        assert not res.precision_limited and res.precision_floor is None  # a float64 model has no floor


# (1e-2 is not among them: with per-step thresholds of 2e-4 one Gaussian-mixture trajectory of DDIM-50 TAA ended in
# another mode, RMS 1.0 away, with every residual within its threshold: near a boundary between modes the
# sampler's map amplifies without bound, and a first-order tolerance cannot hold there; RESULTS.md says so)
@pytest.mark.parametrize("tol", [3e-3, 1e-4])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_other_targets_hold_within_twice(sampler, tol):
    model, coeffs, x_T, noise, ref = gmm_problem(sampler, 50)
    iters = {}
    for method in ALL_METHODS:
        res = paratriton.solve(model, coeffs, x_T, noise, method=method, tol=tol)
        assert res.converged and worst_rms(res.sample, ref) <= 2 * tol, method
        iters[method] = res.iterations
    # a looser target costs no more plain fixed-point iterations than the default (the thresholds only grow;
    # Anderson's secant steps depend on the path, so it can take one or two more)
    if tol > DEFAULT_TOL:
        for method in ("fp", "picard"):
            assert iters[method] <= paratriton.solve(model, coeffs, x_T, noise, method=method).iterations


def test_thresholds_follow_the_derivation():
    _, coeffs, *_ = gmm_problem("ddim", 40)
    thr = step_thresholds(coeffs, None, None, None)
    g = amplification(coeffs)
    assert g[0] == 1.0 and torch.allclose(g, torch.ones_like(g))  # variance-preserving: levels of norm 1
    assert torch.allclose(thr, torch.full_like(thr, DEFAULT_TOL / 40))
    # the expert form keeps its old meaning
    old = step_thresholds(coeffs, None, 1e-3, None)
    assert torch.allclose(old, torch.clamp(1e-3 * coeffs.posterior_std, min=1e-3))
    # a sigma-space level (x = x0 + sigma eps, as Euler's states) lets a high-noise error shrink by the sample
    _, flow, *_ = gmm_problem("flow", 10)
    gf = amplification(flow)
    assert gf[0] == 1.0 and (gf[1:] >= 1.0).all() and (gf[1:] <= math.sqrt(2) + 1e-12).all()


def test_tol_and_the_expert_options_exclude_each_other():
    model, coeffs, x_T, noise, _ = gmm_problem("ddim", 10)
    for method in ALL_METHODS:
        with pytest.raises(ValueError, match="tol .* and tol_abs/tol_rel .* exclude each other"):
            paratriton.solve(model, coeffs, x_T, noise, method=method, tol=1e-3, tol_abs=1e-3)
        with pytest.raises(ValueError, match="tol must be a finite number > 0"):
            paratriton.solve(model, coeffs, x_T, noise, method=method, tol=-1.0)


def test_one_tolerance_value_is_made_and_validated_in_the_registry():
    """``tol``/``tol_abs``/``tol_rel`` become one ``Tolerance``, validated where it is made; every solver reads it."""
    from paratriton.solvers import SRDS, make_solver, method_spec
    from paratriton.solvers.tolerance import Tolerance

    for method in ALL_METHODS:
        checked = method_spec(method).check_options({"tol_abs": 2e-3})
        assert checked["tolerance"] == Tolerance(tol_abs=2e-3)
        assert not {"tol", "tol_abs", "tol_rel"} & set(checked)
        assert make_solver(method, tol=5e-4).tolerance == Tolerance(tol=5e-4)
    assert Tolerance().target == DEFAULT_TOL and Tolerance(tol_rel=1e-2).target is None
    assert Tolerance(tol=2).tol == 2.0 and isinstance(Tolerance(tol=2).tol, float)
    for bad, exc in ((0.0, ValueError), (float("nan"), ValueError), (float("inf"), ValueError), (True, TypeError)):
        with pytest.raises(exc, match="tol_rel must be a finite number > 0"):
            Tolerance(tol_rel=bad)
    with pytest.raises(ValueError, match="exclude each other"):
        Tolerance(tol=1e-3, tol_rel=1e-3)
    with pytest.raises(TypeError, match="not both"):
        SRDS(tol=1e-3, tolerance=Tolerance())
    _, coeffs, *_ = gmm_problem("ddim", 10)
    assert torch.equal(Tolerance(tol=1e-3).step_thresholds(coeffs), step_thresholds(coeffs, 1e-3, None, None))
    assert Tolerance(tol=1e-3).sample_threshold(coeffs) == 1e-3
    assert Tolerance(tol_abs=1e-2).sample_threshold(coeffs) == float(step_thresholds(coeffs, None, 1e-2, None)[0])


# -- the shipped digits model ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    from paratriton.models import load_default

    return load_default(device="cpu")


def digits_problem(pipe, sampler: str, T: int, labels=(3,)):
    from paratriton.models import default_scheduler

    coeffs = paratriton.coefficients_from_scheduler(
        default_scheduler(sampler), T, **({"eta": 0.0} if sampler == "ddim" else {})
    )
    g = torch.Generator().manual_seed(0)
    x_T, noise = pipe.problem(len(labels), T, g)
    return pipe.denoiser(coeffs, torch.tensor(labels)), coeffs, x_T, noise if coeffs.is_stochastic else None


@pytest.mark.slow
@pytest.mark.parametrize(
    "T", [25, 100, pytest.param(1000, marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU: ~4 min"))]
)
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_default_tolerance_holds_on_the_digits_model(digits, sampler, T, monkeypatch):
    # float32 arithmetic: TF32 convolutions make a rougher model, whose floor the solver stops at and reports
    # (test_a_rough_model_of_unknown_precision_stops_at_its_floor)
    if hasattr(torch.backends.cudnn, "allow_tf32"):
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        _check_digits_tolerance(digits, sampler, T)
    finally:
        torch.set_float32_matmul_precision(precision)


def _check_digits_tolerance(digits, sampler: str, T: int) -> None:
    model, coeffs, x_T, noise = digits_problem(digits, sampler, T)
    ref = paratriton.solve(model, coeffs, x_T, noise, method="sequential").sample
    methods = ["taa", "picard"] if T == 25 else ["taa"]
    for method in methods:
        res = paratriton.solve(model, coeffs, x_T, noise, method=method)
        assert res.converged and not res.precision_limited and worst_rms(res.sample, ref) <= 2 * DEFAULT_TOL, method


@pytest.mark.slow
def test_a_bf16_model_stops_at_its_floor(monkeypatch):
    """The digits model in bf16: the iteration stops at the model's rounding floor (reported, one warning), in at
    most 1.5x the fp32 model's iterations, with a sample of the bf16 sequential sampler's order of accuracy: within
    4x of its distance to the fp32 sequential sample (measured 2.6-3.9x at T = 25, 0.9x at T = 50; stopping at
    0.8 jumps instead of 1 runs all T iterations, see solvers/tolerance.py)."""
    from paratriton.models import load_default

    T, labels = 25, (1, 4, 7)
    fp32 = load_default(device="cpu")
    bf16 = load_default(device="cpu", dtype=torch.bfloat16)
    m32, coeffs, x_T, _ = digits_problem(fp32, "ddim", T, labels)
    it32 = paratriton.solve(m32, coeffs, x_T, method="taa").iterations
    seq32 = paratriton.solve(m32, coeffs, x_T, method="sequential").sample
    m16 = bf16.denoiser(coeffs, torch.tensor(labels))
    seq16 = paratriton.solve(m16, coeffs, x_T, method="sequential").sample
    monkeypatch.setattr(tolerance, "_warned", set())  # it warns once per process: whatever warned before in it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = paratriton.solve(m16, coeffs, x_T, method="taa")
    # issue 32: converged means within the tolerance asked for; at a floor far above it, the run says it is not
    assert not res.converged and res.precision_limited and res.precision_floor > 100 * DEFAULT_TOL
    assert res.iterations <= 1.5 * it32, (res.iterations, it32)
    # stopping at the floor trades distance for iterations, boundedly: measured 3.9x the bf16 sequential sample's
    # own error on the CPU, 4.1x on an H200. The literal scale, two bf16 sequential runs at different
    # batch sizes, is 0 here and on an H200 (bitwise equal, benchmarks/bf16_batch.py)
    assert worst_rms(res.sample, seq32) <= 5 * worst_rms(seq16, seq32)
    assert any("below what a bfloat16 model can resolve" in str(w.message) for w in caught)
    # the fp32 model has no floor: nothing is reported
    assert not paratriton.solve(m32, coeffs, x_T, method="taa").precision_limited


@pytest.mark.parametrize("method", ["taa", "picard"])
def test_a_rough_model_of_unknown_precision_stops_at_its_floor(method, floor_warning):
    """A float64 model that rounds its input to a 10-bit mantissa (as TF32 convolutions do on a GPU) says nothing
    about its precision: the engine measures its roughness, stops near the smooth model's iteration count and ends
    as close to that model's own sequential sample as the rounding allows."""
    model, coeffs, x_T, noise, ref = gmm_problem("ddim", 100)

    def rough(x, s):
        return model(x.to(torch.float16).to(x.dtype), s)

    seq = paratriton.solve(rough, coeffs, x_T, noise, method="sequential").sample
    smooth = paratriton.solve(model, coeffs, x_T, noise, method=method)
    res = paratriton.solve(rough, coeffs, x_T, noise, method=method)
    assert not smooth.precision_limited and res.converged and res.precision_limited
    assert res.iterations <= smooth.iterations + 5 < coeffs.num_steps
    # within the floor it reports, and of the order of the rounding's own effect on the sample (a step that
    # stalls within STALL_ROUNDINGS floors stops there: Picard measured 1.25x that effect, TAA below it)
    assert worst_rms(res.sample, seq) <= min(res.precision_floor, 1.5 * worst_rms(seq, ref))


def _amplifying_problem(T: int = 25, gain: float = 1.3):
    """DDIM on an epsilon model whose steps stretch the state by ``gain`` each from step 0 up to step ``T // 2`` (and
    contract it by 0.95 above): an error at step ``T // 2`` reaches the sample ``gain^(T/2)`` (23x) larger, far more
    than the schedule's state-level ``g_i`` (about 1) says, as the trained, guided DiT does."""
    from diffusers import DDIMScheduler

    sch = DDIMScheduler(
        beta_schedule="linear", beta_start=1e-4, beta_end=0.02, timestep_spacing="trailing", clip_sample=False
    )
    coeffs = paratriton.coefficients_from_scheduler(sch, T, eta=0.0)
    a, b, _ = coeffs.coefficients(torch.float64, "cpu")
    want = torch.full((T,), 0.95, dtype=torch.float64)
    want[: T // 2] = gain  # the Jacobian a_i + b_i k_i of step i, before the small nonlinear term
    k = ((want - a) / b).view(-1, 1, 1, 1)

    def model(x, step):
        return k[step] * x + 0.1 * torch.tanh(x)

    x_T = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    seq = paratriton.solve(model, coeffs, x_T, method="sequential")
    return model, coeffs, x_T, seq


@pytest.mark.parametrize("method", ["picard", "taa", "fp", "aa"])
def test_a_sampler_that_amplifies_more_than_its_schedule_still_holds_the_tolerance(method):
    """The engine measures each step's gain along the iteration's own moves (``tolerance.py``, "Measured
    amplification"): the sample stays within the tolerance, and the reported bound covers its distance."""
    model, coeffs, x_T, seq = _amplifying_problem()
    res = paratriton.solve(model, coeffs, x_T, method=method)
    dist = worst_rms(res.sample, seq.sample)
    assert res.converged and dist <= DEFAULT_TOL, dist
    assert res.amplification > 4 and res.error_bound >= dist


def test_without_the_measured_amplification_that_sampler_breaks_the_tolerance(monkeypatch):
    """The control: with every gain capped at 1 (the schedule's ``g_i`` alone) TAA stops with the sample further
    from the sequential one than the tolerance, while its bound claims less."""
    from paratriton.solvers import engine

    model, coeffs, x_T, seq = _amplifying_problem()
    monkeypatch.setattr(engine, "GAIN_MAX", 1.0)
    res = paratriton.solve(model, coeffs, x_T, method="taa")
    assert res.amplification == 1.0 and res.error_bound < DEFAULT_TOL < worst_rms(res.sample, seq.sample)
