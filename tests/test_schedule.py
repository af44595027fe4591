"""Coefficients extracted from diffusers schedulers reproduce the schedulers' own step() exactly."""

import itertools

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler, KDPM2DiscreteScheduler

from paratriton import coefficients_from_scheduler

SHAPE = (2, 3, 5, 5)


def fake_model(x, t):
    # any smooth nonlinear function of (x, t) will do: the step must be affine in the *output*, whatever it is
    return torch.tanh(1.3 * x) * (0.5 + float(t) / 2000) + 0.1 * torch.sin(3 * x)


def _as_float64(s):
    s.alphas_cumprod = s.alphas_cumprod.double()
    if hasattr(s, "final_alpha_cumprod"):
        s.final_alpha_cumprod = s.final_alpha_cumprod.double()
    if hasattr(s, "one"):
        s.one = s.one.double()
    return s


def _sequential_with_coeffs(cf, x_T, noise):
    x = x_T
    for i in range(cf.num_steps - 1, -1, -1):
        x = cf.a[i] * x + cf.b[i] * fake_model(x, cf.timesteps[i]) + cf.c[i] * noise[i]
    return x


DDIM_CASES = list(
    itertools.product(
        [0.0, 0.5, 1.0],
        ["epsilon", "v_prediction", "sample"],
        ["leading", "trailing", "linspace"],
        [True, False],
        [0, 1],
    )
)


@pytest.mark.parametrize("eta,pred,spacing,alpha_one,offset", DDIM_CASES)
def test_ddim_matches_step(eta, pred, spacing, alpha_one, offset):
    T = 10
    sched = DDIMScheduler(
        clip_sample=False,
        prediction_type=pred,
        timestep_spacing=spacing,
        set_alpha_to_one=alpha_one,
        steps_offset=offset,
    )
    cf = coefficients_from_scheduler(sched, T, eta=eta)
    _as_float64(sched)
    sched.set_timesteps(T)
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    noise = torch.randn(T, *SHAPE, generator=g, dtype=torch.float64)
    x = x_T
    for k, t in enumerate(sched.timesteps):
        i = T - 1 - k
        x = sched.step(fake_model(x, t), t, x, eta=eta, variance_noise=noise[i]).prev_sample
    ours = _sequential_with_coeffs(cf, x_T, noise)
    assert ours.dtype == torch.float64
    assert (ours - x).abs().max().item() <= 1e-10
    assert torch.equal(cf.timesteps, sched.timesteps.flip(0).double())
    assert (cf.c == 0).all() if eta == 0 else (cf.c[1:] > 0).all()


DDPM_CASES = list(
    itertools.product(
        ["epsilon", "v_prediction", "sample"],
        ["leading", "trailing", "linspace"],
        ["fixed_small", "fixed_small_log", "fixed_large"],
        [0, 1],
    )
)


@pytest.mark.parametrize("pred,spacing,variance,offset", DDPM_CASES)
def test_ddpm_matches_step(pred, spacing, variance, offset):
    T = 12
    sched = DDPMScheduler(
        clip_sample=False, prediction_type=pred, timestep_spacing=spacing, variance_type=variance, steps_offset=offset
    )
    cf = coefficients_from_scheduler(sched, T)
    _as_float64(sched)
    sched.set_timesteps(T)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    # DDPMScheduler.step draws its noise from the generator only when t > 0, in sampling order: do the same
    g = torch.Generator().manual_seed(3)
    noise = torch.zeros(T, *SHAPE, dtype=torch.float64)
    for k, t in enumerate(sched.timesteps):
        if t > 0:
            noise[T - 1 - k] = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    x = x_T
    for t in sched.timesteps:
        x = sched.step(fake_model(x, t), t, x, generator=g).prev_sample
    ours = _sequential_with_coeffs(cf, x_T, noise)
    assert (ours - x).abs().max().item() <= 1e-10


@pytest.mark.parametrize("shift,stochastic,karras", list(itertools.product([1.0, 3.0], [False, True], [False, True])))
def test_flow_match_matches_step(shift, stochastic, karras):
    # FlowMatchEulerDiscreteScheduler.step computes in float32 whatever the input dtype: compare in float32
    T = 9
    sched = FlowMatchEulerDiscreteScheduler(shift=shift, stochastic_sampling=stochastic, use_karras_sigmas=karras)
    cf = coefficients_from_scheduler(sched, T)
    sched.set_timesteps(T)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(5)
    noise = (
        torch.stack([torch.randn(SHAPE, generator=g) for _ in range(T)]).flip(0)
        if stochastic
        else torch.zeros(T, *SHAPE)
    )
    g = torch.Generator().manual_seed(5)
    x = x_T
    for t in sched.timesteps:
        x = sched.step(fake_model(x, t), t, x, generator=g).prev_sample
    ours = _sequential_with_coeffs(cf, x_T.double(), noise.double())
    assert ((ours - x.double()).abs().max() / x.double().abs().max()).item() <= 2e-6
    assert cf.prediction_type == "flow"
    assert (cf.posterior_std >= 0).all() and cf.posterior_std[0] == 0


def test_dynamic_shifting_needs_and_takes_mu():
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    with pytest.raises(ValueError, match="mu"):
        coefficients_from_scheduler(sched, 8)
    a = coefficients_from_scheduler(sched, 8, mu=0.5)
    b = coefficients_from_scheduler(sched, 8, mu=1.0)
    assert not torch.allclose(a.b, b.b)


def test_posterior_std_is_ddpm_posterior():
    sched = DDIMScheduler(clip_sample=False, set_alpha_to_one=True)
    cf = coefficients_from_scheduler(sched, 20)
    ac = sched.alphas_cumprod.double()
    t = cf.timesteps.long()
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[t[:-1]]])
    expected = ((1 - ab_prev) / (1 - ac[t]) * (1 - ac[t] / ab_prev)).sqrt()
    torch.testing.assert_close(cf.posterior_std, expected)
    assert cf.posterior_std[0] == 0  # the last step lands on alpha = 1


def test_num_inference_steps_does_not_touch_user_scheduler():
    sched = DDIMScheduler(clip_sample=False)
    sched.set_timesteps(7)
    coefficients_from_scheduler(sched, 30)
    assert sched.num_inference_steps == 7
    assert coefficients_from_scheduler(sched).num_steps == 7


@pytest.mark.parametrize(
    "make,kwargs,match",
    [
        (lambda: KDPM2DiscreteScheduler(), {}, "KDPM2DiscreteScheduler is not supported.*EulerDiscreteScheduler"),
        (lambda: DDIMScheduler(clip_sample_range=-1.0), {}, r"clip_sample_range=-1.0\) must be > 0"),
        (lambda: DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=1.5), {}, r"ratio=1.5\) must be in"),
        (lambda: DDPMScheduler(clip_sample=False, variance_type="learned_range"), {}, "variance_type='learned_range'"),
        (lambda: DDIMScheduler(clip_sample=False), {"eta": 1.5}, r"eta must be in \[0, 1\]"),
        (lambda: DDIMScheduler(clip_sample=False), {"eta": -0.1}, r"eta must be in \[0, 1\]"),
        (lambda: DDPMScheduler(clip_sample=False), {"eta": 0.0}, "eta=0.0 is not supported for DDPMScheduler"),
        (lambda: FlowMatchEulerDiscreteScheduler(), {"eta": 0.5}, "stochastic_sampling"),
    ],
)
def test_unsupported_scheduler_or_option(make, kwargs, match):
    with pytest.raises(ValueError, match=match):
        coefficients_from_scheduler(make(), 10, **kwargs)


def test_bad_step_count():
    with pytest.raises(ValueError, match="num_inference_steps"):
        coefficients_from_scheduler(DDIMScheduler(clip_sample=False), 0)
    with pytest.raises(ValueError, match="set_timesteps"):
        coefficients_from_scheduler(DDIMScheduler(clip_sample=False))
