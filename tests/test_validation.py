"""Bad input gets a clear error naming the parameter (or the step); nothing non-finite is returned."""

import pytest
import torch

import paratriton as pt
from paratriton.schedule import SamplerCoefficients
from paratriton.testing import GaussianMixture
from paratriton.testing.gaussian_mixture import default_schedule

T = 8


@pytest.fixture
def prob():
    cf = default_schedule(T, eta=1.0)
    gm = GaussianMixture.random((2, 2), 3)
    x_T = torch.randn(2, 2, 2, dtype=torch.float64)
    noise = torch.randn(T, 2, 2, 2, dtype=torch.float64)
    return cf, gm.denoiser(cf), x_T, noise


@pytest.mark.parametrize(
    "method,opts,match",
    [
        ("taa", {"window": 0}, r"window must be an int >= 1 or None, got 0"),
        ("fp", {"window": -3}, r"window must be an int >= 1 or None, got -3"),
        ("fp", {"order": 0}, r"order must be an int >= 1 or None, got 0"),
        ("taa", {"order": -1}, r"order must be an int >= 1 or None, got -1"),
        ("taa", {"history": 0}, r"history must be an int in \[1, 8\] or None, got 0"),
        ("aa", {"history": -2}, r"history must be an int in \[1, 8\] or None, got -2"),
        ("taa", {"tol_abs": 0.0}, r"tol_abs must be a finite number > 0 or None, got 0.0"),
        ("fp", {"tol_rel": -1e-3}, r"tol_rel must be a finite number > 0"),
        ("fp", {"tol_abs": float("nan")}, r"tol_abs must be a finite number > 0"),
        ("taa", {"ridge": 0.0}, r"ridge must be a finite number > 0"),
        ("taa", {"max_iters": 0}, r"max_iters must be an int >= 1 or None, got 0"),
        ("fp", {"window": 2.5}, r"window must be an int"),
        (
            "taa",
            {"state_dtype": torch.float16},
            r"state_dtype must be torch.float32 or torch.float64 or None, got torch.float16",
        ),
        ("nope", {}, r"method='nope' is not supported; use one of"),
    ],
)
def test_bad_options(prob, method, opts, match):
    cf, model, x_T, noise = prob
    with pytest.raises((ValueError, TypeError), match=match):
        pt.solve(model, cf, x_T, noise, method=method, **opts)


def test_option_of_another_method_is_named(prob):
    cf, model, x_T, noise = prob
    with pytest.raises(TypeError, match=r"options \['history'\] do not apply to method='fp'"):
        pt.solve(model, cf, x_T, noise, method="fp", history=2)
    with pytest.raises(TypeError, match="window.*sequential"):
        pt.solve(model, cf, x_T, noise, method="sequential", window=3)
    with pytest.raises(TypeError, match=r"options \['order'\] do not apply to method='picard'"):
        pt.solve(model, cf, x_T, noise, method="picard", order=3)


def test_zero_steps_rejected():
    e = torch.zeros(0, dtype=torch.float64)
    with pytest.raises(ValueError, match="T must be >= 1"):
        SamplerCoefficients(e, e, e, e, e, e, e, "epsilon")


@pytest.mark.parametrize("method", ["sequential", "fp", "taa"])
def test_shape_and_dtype_mismatches(prob, method):
    cf, model, x_T, noise = prob
    with pytest.raises(ValueError, match=r"noise must have shape \[T, B, \*sample_shape\]"):
        pt.solve(model, cf, x_T, noise[:-1], method=method)
    with pytest.raises(ValueError, match=r"noise must have shape"):
        pt.solve(model, cf, x_T[:1], noise, method=method)
    with pytest.raises(ValueError, match="noise .* is required"):
        pt.solve(model, cf, x_T, None, method=method)
    with pytest.raises(ValueError, match="x_T must be a floating-point tensor"):
        pt.solve(model, cf, x_T.long(), noise, method=method)
    with pytest.raises(ValueError, match="x_T must be a floating-point tensor"):
        pt.solve(model, cf, x_T[0, 0], noise, method=method)
    with pytest.raises(ValueError, match="noise must be a floating-point tensor"):
        pt.solve(model, cf, x_T, noise.long(), method=method)
    with pytest.raises(ValueError, match=r"model output must have shape \[\d+, 2, 2\] like its input, got \[\d+, 1"):
        pt.solve(lambda x, s: x[:, :1], cf, x_T, noise, method=method)
    with pytest.raises(ValueError, match="model output must be floating point"):
        pt.solve(lambda x, s: x.long(), cf, x_T, noise, method=method)
    with pytest.raises(TypeError, match="coeffs must be a StepOperator"):
        pt.solve(model, {"a": 1}, x_T, noise, method=method)


def test_bad_warm_start(prob):
    cf, model, x_T, noise = prob
    with pytest.raises(ValueError, match=r"init must have shape \[T, B, \*sample_shape\]"):
        pt.solve(model, cf, x_T, noise, method="taa", init=torch.zeros(T - 1, 2, 2, 2, dtype=torch.float64))


def test_deterministic_sampler_needs_no_noise():
    cf = default_schedule(T, eta=0.0)
    model = GaussianMixture.random((2, 2), 3).denoiser(cf)
    x_T = torch.randn(1, 2, 2, dtype=torch.float64)
    a = pt.solve(model, cf, x_T, None, method="taa", tol_abs=1e-10, tol_rel=1e-10)
    b = pt.solve(model, cf, x_T, None, method="sequential")
    assert (a.sample - b.sample).abs().max() < 1e-8


@pytest.mark.parametrize("method", ["sequential", "fp", "picard", "aa", "taa"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_model_output_names_step_and_iteration(prob, method, bad):
    cf, model, x_T, noise = prob

    def broken(x, steps):
        out = model(x, steps)
        out[steps == 5] = bad  # step 5 breaks
        return out

    with pytest.raises(pt.NonFiniteError, match=r"model output is NaN/inf at step\(s\) \[5\] in iteration \d+"):
        pt.solve(broken, cf, x_T, noise, method=method)


def test_diverging_iterates_are_an_error_not_an_image(prob):
    cf, _, x_T, noise = prob

    def explosive(x, steps):  # finite outputs whose iterates overflow float64
        return x * 1e200

    with pytest.raises(pt.NonFiniteError, match="NaN/inf"):
        pt.solve(explosive, cf, x_T, noise, method="fp")


def test_non_finite_initial_noise(prob):
    cf, model, x_T, noise = prob
    x_T[0, 0, 0] = float("nan")
    with pytest.raises(pt.NonFiniteError, match="x_T contains NaN"):
        pt.solve(model, cf, x_T, noise, method="taa")


def test_model_must_be_callable(prob):
    cf, _, x_T, noise = prob
    with pytest.raises(TypeError, match="model must be callable"):
        pt.solve(None, cf, x_T, noise, method="taa")


def test_cfg_arguments():
    for bad in (-1.0, float("inf"), float("nan")):  # inf was accepted (issue 20)
        with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0"):
            pt.ClassifierFreeGuidance(lambda x, s: x, bad)
    with pytest.raises(TypeError, match="guidance_scale must be a finite number >= 0"):
        pt.ClassifierFreeGuidance(lambda x, s: x, "strong")
    with pytest.raises(ValueError, match=r"guidance_rescale must be in \[0, 1\]"):
        pt.ClassifierFreeGuidance(lambda x, s: x, 2.0, guidance_rescale=1.5)
