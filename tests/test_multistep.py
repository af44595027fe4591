"""k-tap step operators traced from diffusers schedulers: sequential stepping through the operator must equal the
scheduler's own ``step()`` loop (float64 scheduler state) for every supported scheduler and option."""

from __future__ import annotations

import functools

import diffusers
import pytest
import torch

import paratriton
from paratriton.multistep import (
    MULTISTEP_SCHEDULERS,
    MultistepCoefficients,
    _check_linear,
    _trace_rows,
    float64_mode,
    float64_scheduler,
    multistep_from_scheduler,
)
from paratriton.schedule import TRACED_SCHEDULERS, StepOperator, coefficients_from_scheduler
from paratriton.testing import GaussianMixture

SHAPE = (2, 3, 3)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

# (scheduler class name, config): every option combination issue 18 asks for
CONFIGS = [
    ("EulerDiscreteScheduler", {}),
    ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    ("EulerDiscreteScheduler", {"use_exponential_sigmas": True}),
    ("EulerDiscreteScheduler", {"use_beta_sigmas": True}),
    ("EulerDiscreteScheduler", {"timestep_spacing": "leading", "steps_offset": 1}),
    ("EulerDiscreteScheduler", {"timestep_spacing": "trailing", "prediction_type": "v_prediction"}),
    ("EulerDiscreteScheduler", {"interpolation_type": "log_linear", "final_sigmas_type": "sigma_min"}),
    ("EulerDiscreteScheduler", {"timestep_type": "continuous", "prediction_type": "v_prediction"}),
    (
        "EulerDiscreteScheduler",
        {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
    ),
    ("EulerAncestralDiscreteScheduler", {}),
    ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing", "prediction_type": "v_prediction"}),
    ("DPMSolverMultistepScheduler", {"solver_order": 1}),
    ("DPMSolverMultistepScheduler", {}),
    ("DPMSolverMultistepScheduler", {"solver_order": 2, "solver_type": "heun"}),
    ("DPMSolverMultistepScheduler", {"solver_order": 3}),
    ("DPMSolverMultistepScheduler", {"solver_order": 3, "solver_type": "heun", "lower_order_final": False}),
    ("DPMSolverMultistepScheduler", {"euler_at_final": True}),
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"}),
    ("DPMSolverMultistepScheduler", {"use_lu_lambdas": True, "prediction_type": "v_prediction"}),
    ("DPMSolverMultistepScheduler", {"prediction_type": "sample", "timestep_spacing": "trailing"}),
    (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver", "solver_order": 3, "final_sigmas_type": "sigma_min"},
    ),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 1}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}),
    (
        "DPMSolverMultistepScheduler",
        {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0},
    ),
    ("UniPCMultistepScheduler", {"solver_order": 1}),
    ("UniPCMultistepScheduler", {}),
    ("UniPCMultistepScheduler", {"solver_order": 3}),
    ("UniPCMultistepScheduler", {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}),
    ("UniPCMultistepScheduler", {"solver_type": "bh1", "solver_order": 3, "final_sigmas_type": "sigma_min"}),
    ("UniPCMultistepScheduler", {"disable_corrector": [0, 2]}),
    ("UniPCMultistepScheduler", {"use_karras_sigmas": True, "solver_type": "bh1", "final_sigmas_type": "sigma_min"}),
    (
        "UniPCMultistepScheduler",
        {"solver_order": 3, "lower_order_final": False, "final_sigmas_type": "sigma_min"},
    ),
    ("UniPCMultistepScheduler", {"predict_x0": False, "final_sigmas_type": "sigma_min"}),
    (
        "UniPCMultistepScheduler",
        {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 5.0},
    ),
    ("HeunDiscreteScheduler", {}),
    ("HeunDiscreteScheduler", {"use_karras_sigmas": True, "prediction_type": "v_prediction"}),
    ("PNDMScheduler", {}),
    ("PNDMScheduler", {"skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1}),
    ("LMSDiscreteScheduler", {}),
    ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    ("DEISMultistepScheduler", {"solver_order": 1}),
    ("DEISMultistepScheduler", {}),
    ("DEISMultistepScheduler", {"solver_order": 3}),
    ("CogVideoXDDIMScheduler", {}),
    (
        "CogVideoXDDIMScheduler",  # CogVideoX-2b's shipped config
        {
            "beta_schedule": "scaled_linear",
            "prediction_type": "v_prediction",
            "rescale_betas_zero_snr": True,
            "snr_shift_scale": 3.0,
            "timestep_spacing": "trailing",
            "set_alpha_to_one": True,
            "clip_sample": False,
        },
    ),
]
IDS = [f"{n.replace('Scheduler', '')}-{'-'.join(f'{k}={v}' for k, v in c.items()) or 'default'}" for n, c in CONFIGS]


def _make(name: str, cfg: dict, T: int):
    sched = getattr(diffusers, name)(**cfg)
    sched.set_timesteps(T)
    return sched


@functools.lru_cache(maxsize=None)
def _operator(idx: int, T: int) -> MultistepCoefficients:
    name, cfg = CONFIGS[idx]
    return coefficients_from_scheduler(getattr(diffusers, name)(**cfg), T)


def fake_net(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A nonlinear, input- and timestep-dependent stand-in for a network: ``[N, *S], [N] -> [N, *S]``."""
    tt = (t.to(torch.float64) / 1000.0).view(-1, *([1] * (z.ndim - 1)))
    zz = z.to(torch.float64)
    return (torch.tanh(0.7 * zz + tt) + 0.3 * torch.sin(2.0 * zz) * (1 + tt) - 0.2 * zz).to(z.dtype)


def _reference(sched, x_T: torch.Tensor, net, generator: torch.Generator | None, start: int = 0) -> torch.Tensor:
    """The scheduler's own loop in float64 over ``timesteps[start:]``, begun as diffusers' img2img pipelines begin
    it (``set_begin_index(start)``): ``net(z, n)`` is evaluation ``n``'s model (the states ``[T+1, B, *S]``)."""
    s = float64_scheduler(sched)
    if start and hasattr(s, "set_begin_index"):
        s.set_begin_index(start)
    x, states = x_T.clone(), [x_T.clone()]
    kw = {"generator": generator} if "generator" in s.step.__code__.co_varnames else {}
    with float64_mode():
        for n, t in enumerate(s.timesteps[start:]):
            z = s.scale_model_input(x, t)
            x = s.step(net(z, n), t, x, return_dict=False, **kw)[0]
            states.append(x)
    return torch.stack(states[::-1])  # [T+1, B, *S]: index i = x_i


def _draw_noise(coeffs: MultistepCoefficients, B: int, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """The step noise drawn up front in the stock order (``noise_draw_steps``), ``[T, B, *S]``."""
    noise = torch.zeros(coeffs.num_steps, B, *SHAPE, dtype=torch.float64)
    for i in coeffs.noise_draw_steps:
        noise[i] = torch.randn(B, *SHAPE, generator=generator, dtype=dtype).to(torch.float64)
    return noise


def _close(got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    err = (got.to(torch.float64) - want.to(torch.float64)).abs().max().item()
    scale = max(1.0, want.abs().max().item())
    assert err <= tol * scale, f"max |diff| {err:.3e} > {tol:.1e} * {scale:.3g}"


@pytest.mark.parametrize("T", [1, 2, 7, 25])
@pytest.mark.parametrize("idx", range(len(CONFIGS)), ids=IDS)
def test_operator_steps_like_the_scheduler(idx: int, T: int) -> None:
    name, cfg = CONFIGS[idx]
    if name == "LMSDiscreteScheduler" and T == 25:
        pytest.skip("LMS integrates its coefficients with scipy quad per step: slow; T=7 covers the 4-tap steps")
    try:
        sched = _make(name, cfg, T)
    except ValueError:  # the stock scheduler refuses this T (PNDM's Runge-Kutta warm-up needs T >= 3)
        with pytest.raises(ValueError):
            _operator(idx, T)
        pytest.skip(f"{name}.set_timesteps({T}) fails in diffusers itself")
    coeffs = _operator(idx, T)
    assert isinstance(coeffs, StepOperator) and coeffs.num_steps == len(sched.timesteps)
    assert torch.equal(coeffs.timesteps.flip(0), torch.as_tensor(sched.timesteps).to(torch.float64))
    ts_desc = torch.as_tensor(sched.timesteps)
    for B in (1, 3):
        g = torch.Generator().manual_seed(7 + B)
        x_T = torch.randn(B, *SHAPE, generator=g, dtype=torch.float64) * float(sched.init_noise_sigma)
        want = _reference(sched, x_T, lambda z, n: fake_net(z, ts_desc[n].expand(z.shape[0])), g)
        g = torch.Generator().manual_seed(7 + B)
        torch.randn(B, *SHAPE, generator=g, dtype=torch.float64)  # x_T's draw
        noise = _draw_noise(coeffs, B, g, torch.float64) if coeffs.noise_draw_steps else None
        assert coeffs.is_stochastic == (noise is not None and bool(coeffs.c.ne(0).any()))
        res = paratriton.solve(
            lambda z, i: fake_net(z, coeffs.timesteps[i]),
            coeffs,
            x_T,
            noise if coeffs.is_stochastic else None,
            method="sequential",
        )
        _close(res.trajectory, want, 1e-10)


@pytest.mark.parametrize("idx", range(len(CONFIGS)), ids=IDS)
def test_operator_from_a_late_start_steps_like_the_scheduler(idx: int) -> None:
    """``start``: the loop img2img's ``strength`` / the refiner's ``denoising_start`` runs (``timesteps[start:]``
    from the begin index, a fresh history): the warm-up orders restart there, the sigmas stay the global ones."""
    name, cfg = CONFIGS[idx]
    T, start = 8, 3
    sched = _make(name, cfg, T)
    coeffs = multistep_from_scheduler(sched, start=start)
    ts = torch.as_tensor(sched.timesteps)[start:]
    assert coeffs.num_steps == len(ts) and torch.equal(coeffs.timesteps.flip(0), ts.to(torch.float64))
    assert getattr(sched, "step_index", None) is None and getattr(sched, "begin_index", None) is None  # untouched
    g = torch.Generator().manual_seed(11)
    x_T = torch.randn(2, *SHAPE, generator=g, dtype=torch.float64) * 3.0
    want = _reference(sched, x_T, lambda z, n: fake_net(z, ts[n].expand(z.shape[0])), g, start)
    g = torch.Generator().manual_seed(11)
    torch.randn(2, *SHAPE, generator=g, dtype=torch.float64)
    noise = _draw_noise(coeffs, 2, g, torch.float64) if coeffs.is_stochastic else None
    res = paratriton.solve(lambda z, i: fake_net(z, coeffs.timesteps[i]), coeffs, x_T, noise, method="sequential")
    _close(res.trajectory, want, 1e-10)
    if name in ("DPMSolverMultistepScheduler", "DEISMultistepScheduler") and cfg.get("solver_order", 2) > 1:
        assert coeffs.step_taps[-1] == 1  # the warm-up restarts at the loop's first step


def test_late_start_needs_a_matching_begin_index() -> None:
    sched = _make("DPMSolverMultistepScheduler", {}, 8)
    with pytest.raises(ValueError, match="start must be in 0..7"):
        multistep_from_scheduler(sched, start=8)
    sched.set_begin_index(2)
    assert multistep_from_scheduler(sched, start=2).num_steps == 6
    with pytest.raises(ValueError, match="begin_index is 2 but the loop starts at timestep index 3"):
        multistep_from_scheduler(sched, start=3)


@pytest.mark.parametrize(
    "name,cfg,k",
    [
        ("EulerDiscreteScheduler", {}, 1),
        ("EulerAncestralDiscreteScheduler", {}, 1),
        ("DPMSolverMultistepScheduler", {"solver_order": 1}, 1),
        ("DPMSolverMultistepScheduler", {}, 2),
        ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, 2),
        ("DPMSolverMultistepScheduler", {"solver_order": 3}, 3),
        ("UniPCMultistepScheduler", {"solver_order": 1}, 2),
        ("UniPCMultistepScheduler", {}, 3),
        ("UniPCMultistepScheduler", {"solver_order": 3}, 4),
        ("UniPCMultistepScheduler", {"solver_order": 2, "disable_corrector": list(range(25))}, 2),
        ("HeunDiscreteScheduler", {}, 2),
        ("PNDMScheduler", {"skip_prk_steps": True}, 5),
        ("PNDMScheduler", {}, 13),
        ("LMSDiscreteScheduler", {}, 4),
        ("DEISMultistepScheduler", {}, 2),
        ("DEISMultistepScheduler", {"solver_order": 3}, 3),
    ],
)
def test_taps(name: str, cfg: dict, k: int) -> None:
    """The taps found are the solver's bandwidth: DPM-Solver++ reads its data predictions (order k), UniPC one more
    (its corrector reads the output at the predicted point), Heun's second stage its first stage's output."""
    coeffs = coefficients_from_scheduler(getattr(diffusers, name)(**cfg), 12)
    assert coeffs.taps == k
    if name.startswith("DPMSolver") and cfg.get("solver_order", 2) > 1:
        assert coeffs.output_kind == "data"
        assert coeffs.step_taps[-1] == 1  # the warm-up: the first step is first order


def test_dpm_solver_pp_2m_coefficients_by_hand() -> None:
    """DPM-Solver++ 2M (midpoint) on data predictions D: ``x_i = (sigma_t/sigma_s) x_{i+1} - alpha_t (e^{-h} - 1)
    ((1 + 1/(2r)) D_i - D_{i+1} / (2r))`` with ``h`` the log-SNR step and ``r = h_prev / h``."""
    sched = diffusers.DPMSolverMultistepScheduler(lower_order_final=False, final_sigmas_type="sigma_min")
    coeffs = coefficients_from_scheduler(sched, 10)
    sched.set_timesteps(10)
    s = float64_scheduler(sched)
    al, sg = s._sigma_to_alpha_sigma_t(s.sigmas)
    lam = torch.log(al) - torch.log(sg)
    T = 10
    for n in range(1, T):  # evaluation n -> step i = T-1-n, from sigma[n] to sigma[n+1]
        i = T - 1 - n
        h, h0 = lam[n + 1] - lam[n], lam[n] - lam[n - 1]
        r = h0 / h
        assert abs(coeffs.a[i] - sg[n + 1] / sg[n]) < 1e-12
        e = al[n + 1] * (torch.exp(-h) - 1.0)
        assert abs(coeffs.b[i, 0] - (-e * (1 + 0.5 / r))) < 1e-10
        assert abs(coeffs.b[i, 1] - (e * 0.5 / r)) < 1e-10


def test_stock_float32_loop_with_the_documented_noise_order() -> None:
    """The unmodified scheduler in float32 with a generator (what a pipeline runs) matches the operator fed with
    noise drawn up front as documented (``noise_draw_steps``, ``noise_dtype``) to float32 accuracy."""
    for name, cfg in [
        ("EulerAncestralDiscreteScheduler", {}),
        ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
        ("UniPCMultistepScheduler", {}),
        ("HeunDiscreteScheduler", {}),
    ]:
        sched = _make(name, cfg, 12)
        coeffs = coefficients_from_scheduler(sched)
        B = 2
        g = torch.Generator().manual_seed(3)
        x_T = torch.randn(B, *SHAPE, generator=g) * float(sched.init_noise_sigma)
        noise = _draw_noise(coeffs, B, g, torch.float32)  # noise_dtype is float32 or the model's (float32 here)
        assert coeffs.noise_dtype in (None, "model", "float32")
        g = torch.Generator().manual_seed(3)
        torch.randn(B, *SHAPE, generator=g)
        x = x_T.clone()
        ts = torch.as_tensor(sched.timesteps)
        kw = {"generator": g} if "generator" in sched.step.__code__.co_varnames else {}
        for t in ts:
            x = sched.step(fake_net(sched.scale_model_input(x, t), t.expand(B)), t, x, return_dict=False, **kw)[0]
        res = paratriton.solve(
            lambda z, i: fake_net(z, coeffs.timesteps[i]),
            coeffs,
            x_T.double(),
            noise if coeffs.is_stochastic else None,
            method="sequential",
        )
        _close(res.sample, x, 2e-4)


@pytest.mark.parametrize("idx", range(len(CONFIGS)), ids=IDS)
def test_gaussian_mixture_denoiser(idx: int) -> None:
    """The analytic denoiser of the model input gives finite outputs; stepping it through the operator equals the
    scheduler's loop with it, and the sample lands near the data (levels right)."""
    name, cfg = CONFIGS[idx]
    T = 7
    coeffs = _operator(idx, T)
    sched = _make(name, cfg, T)
    gm = GaussianMixture.random(SHAPE, num_components=3, std=0.2, seed=1)
    model = gm.denoiser(coeffs)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(3, *SHAPE, generator=g, dtype=torch.float64) * float(sched.init_noise_sigma)
    noise = _draw_noise(coeffs, 3, g, torch.float64) if coeffs.is_stochastic else None
    res = paratriton.solve(model, coeffs, x_T, noise, method="sequential")
    assert torch.isfinite(res.trajectory).all()
    if noise is None:
        n_steps = coeffs.num_steps
        want = _reference(sched, x_T, lambda z, n: model(z, torch.full((z.shape[0],), n_steps - 1 - n)), None)
        _close(res.trajectory, want, 1e-10)
    assert torch.isfinite(coeffs.posterior_std).all() and (coeffs.posterior_std >= 0).all()


def test_gaussian_mixture_levels_are_the_model_inputs() -> None:
    """For Euler the model sees ``x / sqrt(1 + sigma^2)``: signal ``1/sqrt(1+s^2)``, noise ``s/sqrt(1+s^2)``, and
    enough Euler steps with the exact denoiser sample the mixture (the means are recovered)."""
    sched = diffusers.EulerDiscreteScheduler()
    coeffs = coefficients_from_scheduler(sched, 40)
    s = torch.as_tensor(_make("EulerDiscreteScheduler", {}, 40).sigmas[:-1]).double().flip(0)
    assert torch.allclose(coeffs.input_scale, 1 / (1 + s**2).sqrt(), rtol=1e-6)
    assert torch.allclose(coeffs.signal_scale**2 + coeffs.noise_scale**2, torch.ones(40, dtype=torch.float64))
    gm = GaussianMixture(torch.tensor([[[[3.0]]], [[[-3.0]]]], dtype=torch.float64), std=0.1)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(64, 1, 1, 1, generator=g, dtype=torch.float64) * float(sched.init_noise_sigma)
    x0 = paratriton.solve(gm.denoiser(coeffs), coeffs, x_T, method="sequential").sample
    assert ((x0.abs() - 3.0).abs() < 0.3).float().mean() > 0.95


def test_operator_api() -> None:
    coeffs = coefficients_from_scheduler(diffusers.DPMSolverMultistepScheduler(), 6)
    a, b, c = coeffs.coefficients(torch.float32, "cpu")
    assert a.shape == (6,) and b.shape == (6, coeffs.taps) and c.shape == (6,) and b.dtype == torch.float32
    assert (coeffs.b[-1, 1:] == 0).all()  # no output beyond the first step
    for f in ("a", "b", "c", "input_scale", "posterior_std", "timesteps", "signal_scale", "noise_scale"):
        assert getattr(coeffs, f).dtype == torch.float64
    assert coeffs.to("cpu").taps == coeffs.taps
    x, m0, m1 = (torch.randn(2, 3, dtype=torch.float64) for _ in range(3))
    want = coeffs.a[2] * x + coeffs.b[2, 0] * m0 + coeffs.b[2, 1] * m1
    assert torch.allclose(coeffs.step(2, x, [m0, m1], None), want)
    assert torch.allclose(coeffs.step(2, x, torch.stack([m0, m1]), None), want)
    with pytest.raises(ValueError, match="m_3"):
        coeffs.step(2, x, [m0], None)
    one = coefficients_from_scheduler(diffusers.DDIMScheduler(clip_sample=False), 6)  # one-tap looks alike
    assert one.taps == 1 and (one.input_scale == 1).all() and (one.output_mix == 0).all()
    assert torch.equal(one.step(2, x, [m0], None), one.step(2, x, m0, None))
    with pytest.raises(ValueError, match="b must have shape"):
        MultistepCoefficients(**{**_fields(coeffs), "b": coeffs.b[:3]})
    with pytest.raises(ValueError, match="NaN/inf"):
        MultistepCoefficients(**{**_fields(coeffs), "a": coeffs.a * float("nan")})
    with pytest.raises(ValueError, match="i \\+ j >= T"):
        MultistepCoefficients(**{**_fields(coeffs), "b": coeffs.b + 1})


def _fields(c: MultistepCoefficients) -> dict:
    names = (
        "a b c input_scale posterior_std timesteps signal_scale noise_scale prediction_type output_kind "
        "output_scale output_mix scheduler noise_draw_steps noise_dtype"
    ).split()
    return {n: getattr(c, n) for n in names}


def test_user_scheduler_untouched_and_sets_match() -> None:
    assert TRACED_SCHEDULERS == MULTISTEP_SCHEDULERS
    sched = diffusers.DPMSolverMultistepScheduler()
    sched.set_timesteps(5)
    sigmas = sched.sigmas.clone()
    coeffs = coefficients_from_scheduler(sched, 9)
    assert coeffs.num_steps == 9 and sched.num_inference_steps == 5 and torch.equal(sched.sigmas, sigmas)
    assert sched.sigmas.dtype == torch.float32 and sched.step_index is None
    assert coefficients_from_scheduler(sched).num_steps == 5


@pytest.mark.parametrize(
    "make,kwargs,match",
    [
        (lambda: diffusers.DPMSolverMultistepScheduler(thresholding=True), {}, r"thresholding=True"),
        (lambda: diffusers.UniPCMultistepScheduler(thresholding=True), {}, r"thresholding=True.*supported: "),
        (lambda: diffusers.HeunDiscreteScheduler(clip_sample=True), {}, r"clip_sample=True"),
        (lambda: diffusers.DPMSolverMultistepScheduler(variance_type="learned_range"), {}, "learned_range"),
        (lambda: diffusers.EulerDiscreteScheduler(), {"eta": 0.5}, "eta is not an option of EulerDiscreteScheduler"),
        (lambda: diffusers.KDPM2DiscreteScheduler(), {}, r"KDPM2DiscreteScheduler is not supported.*UniPC"),
        (lambda: diffusers.DPMSolverSinglestepScheduler(), {}, r"DPMSolverSinglestepScheduler is not supported"),
        (
            lambda: diffusers.UniPCMultistepScheduler(solver_type="bh1"),
            {},
            r"NaN/inf states in its own step\(\) loop",
        ),
    ],
)
def test_unsupported_names_it(make, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        coefficients_from_scheduler(make(), 6, **kwargs)


def test_nonlinear_step_is_detected_without_the_option_check() -> None:
    """The random-input re-run catches a nonlinear step even where no option check names it (thresholding here)."""
    sched = _make("DPMSolverMultistepScheduler", {"thresholding": True, "sample_max_value": 1.0}, 6)
    one, zero = torch.ones(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
    rows = _trace_rows(sched, one, zero)
    with pytest.raises(ValueError, match="not linear"):
        _check_linear(sched, rows, one, zero)
    with pytest.raises(ValueError, match="already been stepped"):
        s = _make("EulerDiscreteScheduler", {}, 4)
        s.step(torch.zeros(1, 1), s.timesteps[0], torch.zeros(1, 1))
        multistep_from_scheduler(s)


@pytest.mark.parametrize(
    "idx", [i for i, (n, c) in enumerate(CONFIGS) if not c or "sde" in str(c.get("algorithm_type", ""))], ids=str
)
@pytest.mark.parametrize("graph", ["loop", "step"])
def test_graphed_sequential_steps_k_tap_operators(idx: int, graph: str) -> None:
    """The graphed sequential sampler's loop (eager off CUDA; captured on CUDA) gives the eager sampler's result."""
    from paratriton.solvers.graphed_sequential import GraphedSequential

    coeffs = _operator(idx, 7)
    g = torch.Generator().manual_seed(5)
    x_T = torch.randn(3, *SHAPE, generator=g, dtype=torch.float64)
    noise = _draw_noise(coeffs, 3, g, torch.float64) if coeffs.is_stochastic else None
    dev = "cuda" if torch.cuda.is_available() else "cpu"

    ts = {"cpu": coeffs.timesteps, dev: coeffs.timesteps.to(dev)}  # on the device up front: no copy in a capture

    def model(z, i):
        return fake_net(z, ts[z.device.type][i])

    want = paratriton.solve(model, coeffs, x_T, noise, method="sequential").trajectory
    x_T, noise = x_T.to(dev), None if noise is None else noise.to(dev)
    got = GraphedSequential(model, coeffs, x_T, noise, state_dtype=torch.float64, graph=graph).run().trajectory
    _close(got.cpu(), want, 1e-12)
    via_solve = paratriton.solve(
        model, coeffs, x_T, noise, method="sequential", cuda_graph=True, state_dtype=torch.float64
    )
    _close(via_solve.trajectory.cpu(), want, 1e-12)


def test_posterior_std() -> None:
    """VP: the DDPM posterior std between the steps' levels; Heun's second stage shares its first stage's value."""
    from paratriton.schedule import _vp_posterior_std

    coeffs = coefficients_from_scheduler(diffusers.DPMSolverMultistepScheduler(final_sigmas_type="sigma_min"), 8)
    ab_in = (coeffs.signal_scale / coeffs.input_scale) ** 2  # levels of x_{i+1}
    want = _vp_posterior_std(ab_in[1:], ab_in[:-1])  # steps i >= 1: from x_{i+1} (ab_in[i]) to x_i (ab_in[i-1])
    assert torch.allclose(coeffs.posterior_std[1:], want, rtol=1e-9)
    heun = coefficients_from_scheduler(diffusers.HeunDiscreteScheduler(), 6)
    post = heun.posterior_std.flip(0)  # sampling order: stage 1, stage 2, stage 1, ...
    assert (post[:-1] > 0).all() and torch.equal(post[1:-1:2], post[0:-2:2]) and post[-1] == 0
