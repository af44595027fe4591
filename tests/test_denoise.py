"""``paratriton.denoise`` and clipped/thresholded x0 predictions against the scheduler's own ``step()`` loop.

The loop is the one diffusion policies run (Chi et al., LeRobot): ``for t in timesteps: x = scheduler.step(
model(x, t, global_cond=c), t, x, generator=g).prev_sample``, with ``DDPMScheduler(clip_sample=True)``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

import paratriton

B, H, A, G = 2, 8, 3, 5  # batch, horizon, action dim, condition width
ALL_METHODS = ["sequential", "fp", "picard", "aa", "taa", "srds", "srds_pipelined"]


class TinyPolicyNet(torch.nn.Module):
    """A ConditionalUnet1D-shaped network: Conv1d over the horizon, FiLM from [timestep embedding; global_cond]."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.c1 = torch.nn.Conv1d(A, 16, 3, padding=1)
        self.c2 = torch.nn.Conv1d(16, A, 3, padding=1)
        self.film = torch.nn.Linear(G + 8, 32)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.4
        self.calls = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        t = t.to(x.device)  # (the stock loop passes the scheduler's CPU timesteps, as to a diffusers UNet)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        emb = torch.stack([torch.sin(t.to(x.dtype) * k / 17) for k in range(8)], 1)
        scale, shift = self.film(torch.cat([global_cond, emb], 1)).chunk(2, 1)
        h = self.c1(x.transpose(1, 2)) * (1 + scale[:, :, None]) + shift[:, :, None]
        return 1.5 * torch.tanh(self.c2(torch.nn.functional.mish(h)).transpose(1, 2))  # bounded, as a trained eps


def _net() -> TinyPolicyNet:
    return TinyPolicyNet().double()


def _f64(sched):
    sched.alphas_cumprod = sched.alphas_cumprod.double()  # the loop in float64 too: agreement to rounding
    return sched


def _ddpm(**kw):
    kw = {"clip_sample": True, "beta_schedule": "squaredcos_cap_v2", **kw}
    return _f64(DDPMScheduler(num_train_timesteps=100, **kw))


def _ddim(**kw):
    kw = {"clip_sample": True, "set_alpha_to_one": True, "beta_schedule": "squaredcos_cap_v2", **kw}
    return _f64(DDIMScheduler(num_train_timesteps=100, **kw))


SCHEDULERS = {
    "ddpm_clip": (_ddpm, {}, 100),
    "ddpm_noclip": (lambda: _ddpm(clip_sample=False, beta_schedule="linear"), {}, 100),
    "ddpm_clip_range": (lambda: _ddpm(clip_sample_range=0.3), {}, 40),
    "ddpm_threshold_v": (lambda: _ddpm(thresholding=True, prediction_type="v_prediction"), {}, 30),
    "ddim_clip": (_ddim, {}, 16),
    "ddim_noclip": (lambda: _ddim(clip_sample=False, beta_schedule="linear"), {}, 16),
    "ddim_clip_eta": (_ddim, {"eta": 0.5}, 16),
    "ddim_clipped_output": (_ddim, {"use_clipped_model_output": True}, 16),
    "ddim_threshold_sample": (lambda: _ddim(thresholding=True, prediction_type="sample"), {}, 12),
}


def stock_loop(net, sched, x_T, T, cond, generator, **step_kw):
    """The policies' own loop, verbatim in shape."""
    s = copy.deepcopy(sched)
    s.set_timesteps(T)
    x = x_T
    with torch.no_grad():
        for t in s.timesteps:
            out = net(x, t, global_cond=cond)
            x = s.step(out, t, x, generator=generator, **step_kw).prev_sample
    return x


def _problem(seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(B, H, A, generator=g, dtype=torch.float64)
    cond = torch.randn(B, G, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return g, x_T, cond


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("method", ALL_METHODS)
def test_denoise_equals_the_stock_loop_at_tight_tolerance(name, method):
    make, step_kw, T = SCHEDULERS[name]
    net, sched = _net(), make()
    g, x_T, cond = _problem()
    ref = stock_loop(net, sched, x_T, T, cond, g, **step_kw)
    g, x_T, cond = _problem()  # the same generator state: x_T drawn, the steps' noise follows
    opts = {} if method == "sequential" else {"tol": 1e-9}
    res = paratriton.denoise(
        net,
        sched,
        x_T,
        T,
        generator=g,
        model_kwargs={"global_cond": cond},
        method=method,
        return_result=True,
        **step_kw,
        **opts,
    )
    assert res.converged
    assert res.sample.dtype == x_T.dtype and res.sample.shape == x_T.shape
    err = ((res.sample - ref).abs().max() / ref.abs().max().clamp_min(1)).item()  # unclipped DDPM grows large
    assert err <= 1e-7, f"{name} {method}: relative error {err:.3e} to the stock loop"


def test_clipping_is_active_in_these_problems():
    # the clipped and unclipped loops must differ, or the tests above would not test clipping at all
    g, x_T, cond = _problem()
    clip = stock_loop(_net(), _ddpm(), x_T, 100, cond, g)
    g, x_T, cond = _problem()
    plain = stock_loop(_net(), _ddpm(clip_sample=False), x_T, 100, cond, g)
    assert (clip - plain).abs().max() > 0.1


@pytest.mark.parametrize("method", ALL_METHODS[1:])
@pytest.mark.parametrize("name", ["ddpm_clip", "ddpm_noclip", "ddim_clip", "ddim_noclip"])
def test_denoise_default_tolerance_within_two_tol(method, name):
    make, step_kw, T = SCHEDULERS[name]
    net, sched = _net(), make()
    g, x_T, cond = _problem(7)
    ref = stock_loop(net, sched, x_T, T, cond, g)
    g, x_T, cond = _problem(7)
    tol = 1e-3
    res = paratriton.denoise(
        net, sched, x_T, T, generator=g, model_kwargs={"global_cond": cond}, method=method, return_result=True
    )
    assert res.converged
    rms = (res.sample - ref).square().mean().sqrt().item()
    assert rms <= 2 * tol, f"RMS {rms:.3e} > 2 tol"


@pytest.mark.parametrize(
    "make,T",
    [(lambda: EulerDiscreteScheduler(num_train_timesteps=100), 12), (lambda: FlowMatchEulerDiscreteScheduler(), 10)],
)
def test_denoise_traced_and_flow_schedulers(make, T):
    # scale_model_input is part of the loop: the traced operator applies it inside the step
    net, sched = _net(), make()
    g, x_T, cond = _problem()
    s = copy.deepcopy(sched)
    s.set_timesteps(T)
    x = x_T * getattr(s, "init_noise_sigma", 1.0)
    scale = getattr(s, "scale_model_input", lambda x, t: x)  # flow matching has none
    with torch.no_grad():
        for t in s.timesteps:
            x = s.step(net(scale(x, t), t, global_cond=cond), t, x, generator=g).prev_sample
    g, x_T, cond = _problem()
    x_T = x_T * getattr(s, "init_noise_sigma", 1.0)
    out = paratriton.denoise(
        net, sched, x_T, T, generator=g, model_kwargs={"global_cond": cond}, method="taa", tol=1e-9
    )
    assert (out - x.to(out.dtype)).abs().max().item() <= 1e-5


def test_denoise_warm_start_is_still_the_exact_sample():
    net, sched = _net(), _ddpm()
    g, x_T, cond = _problem()
    kw = {"model_kwargs": {"global_cond": cond}, "method": "taa", "tol": 1e-9, "return_result": True}
    first = paratriton.denoise(net, sched, x_T, 100, generator=g, **kw)
    g2, x_T2, _ = _problem(11)
    cold = paratriton.denoise(net, sched, x_T2, 100, generator=g2, **kw)
    g2, x_T2, _ = _problem(11)
    warm = paratriton.denoise(net, sched, x_T2, 100, generator=g2, init=first.trajectory, **kw)
    assert warm.converged and (warm.sample - cold.sample).abs().max().item() <= 1e-7


def test_denoise_auto_is_sequential_on_the_cpu_and_leaves_the_scheduler_alone():
    net, sched = _net(), _ddpm()
    before = copy.deepcopy(sched.__dict__.get("timesteps"))
    g, x_T, cond = _problem()
    res = paratriton.denoise(net, sched, x_T, 20, generator=g, model_kwargs={"global_cond": cond}, return_result=True)
    assert res.method == "sequential" and res.iterations == 20
    assert torch.equal(sched.timesteps, before) and sched.num_inference_steps is None


@pytest.mark.parametrize(
    "device,steps,method",
    [("cpu", 100, "sequential"), ("cuda", 16, "sequential"), ("cuda", 8, "sequential"), ("cuda", 17, "taa"),
     ("cuda:0", 100, "taa")],
)  # fmt: skip
def test_auto_keeps_short_schedules_sequential_on_cuda(device, steps, method):
    """``method="auto"``: TAA on CUDA only where the schedule is longer than DDIM-16, which measured a loss."""
    from paratriton.denoise import AUTO_SEQUENTIAL_MAX_STEPS, auto_method

    assert AUTO_SEQUENTIAL_MAX_STEPS == 16
    assert auto_method(torch.device(device), steps) == method


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_denoise_auto_on_cuda_picks_by_the_schedule_length():
    net, sched = TinyPolicyNet().double().cuda(), _ddim()
    g, x_T, cond = _problem()
    x_T, cond = x_T.cuda(), cond.cuda()
    for steps, method in ((16, "sequential"), (20, "taa")):
        res = paratriton.denoise(net, sched, x_T, steps, model_kwargs={"global_cond": cond}, return_result=True)
        assert res.method == method


# ---- bad input: a clear error naming it, before the solve ------------------------------------------------------
class _WrongShape(TinyPolicyNet):
    def forward(self, x, t, global_cond):
        return super().forward(x, t, global_cond)[:, :-1]


class _ScalarTimestepOnly(TinyPolicyNet):
    def forward(self, x, t, global_cond):
        if t.ndim != 0:
            raise ValueError("this network takes one timestep for the whole batch")
        return super().forward(x, t, global_cond)


@pytest.mark.parametrize(
    "model,kwargs,exc,match",
    [
        (_WrongShape().double(), {}, ValueError, r"must return a tensor shaped like x \[4, 8, 3\], got \[4, 7, 3\]"),
        (_ScalarTimestepOnly().double(), {}, ValueError, "1-D tensor of 4 timesteps, one per row.*whole batch"),
        (_net(), {"num_inference_steps": 2.5}, TypeError, "num_inference_steps must be an int >= 1, got 2.5"),
        (_net(), {"num_inference_steps": True}, TypeError, "num_inference_steps must be an int"),
        (_net(), {"num_inference_steps": 0}, ValueError, "num_inference_steps must be an int >= 1, got 0"),
        (_net(), {"method": "newton"}, ValueError, "method='newton' is not supported"),
        (_net(), {"tol": -1.0}, ValueError, "tol must be a finite number > 0"),
        (_net(), {"tol": True}, ValueError, "tol must be a finite number > 0"),
        (_net(), {"x_T": torch.zeros(0, H, A, dtype=torch.float64)}, ValueError, "x_T must be a floating-point"),
        (_net(), {"model_kwargs": [1]}, TypeError, "model_kwargs must be a dict"),
        (_net(), {"eta": 0.5}, ValueError, "eta=0.5 is not supported for DDPMScheduler"),
        (_net(), {"use_clipped_model_output": True}, ValueError, "use_clipped_model_output is an argument of DDIM"),
        (_net(), {"cuda_graph": True}, ValueError, "cuda_graph=True needs x_T on a CUDA device"),
        (_net(), {"init_sample": torch.zeros(B, H, A), "init": torch.zeros(10, B, H, A)}, ValueError, "exclude"),
        (_net(), {"init_sample": torch.zeros(B, H)}, ValueError, "init_sample must be a tensor shaped like x_T"),
        (_net(), {"method": "sequential", "tol": 1e-3}, TypeError, "tol does not apply to method='sequential'"),
    ],
)
def test_bad_input_is_named_before_any_solve(model, kwargs, exc, match):
    g, x_T, cond = _problem()
    args = {"x_T": x_T, "num_inference_steps": 10, "model_kwargs": {"global_cond": cond}, "method": "taa", **kwargs}
    calls = model.calls
    with pytest.raises(exc, match=match):
        paratriton.denoise(model, _ddpm(), generator=g, **args)
    assert model.calls - calls <= 1  # at most the one probe call


def test_bad_scheduler_options_are_named():
    g, x_T, cond = _problem()
    with pytest.raises(ValueError, match="clip_sample_range=0.0"):
        paratriton.denoise(_net(), _ddpm(clip_sample_range=0.0), x_T, 10, model_kwargs={"global_cond": cond})
    with pytest.raises(ValueError, match="sample_max_value=0.5"):
        paratriton.denoise(
            _net(), _ddpm(thresholding=True, sample_max_value=0.5), x_T, 10, model_kwargs={"global_cond": cond}
        )


def test_the_graph_cache_of_denoise_reuses_one_problem_per_model():
    """``denoise(cuda_graph=True)``'s cache (the pipelines' GraphedSolvers), run uncaptured on the CPU: a second call
    with other conditioning replays the same solver object and gives that call's exact sample."""
    import importlib

    from paratriton.schedulers import coefficients_from_scheduler

    dn = importlib.import_module("paratriton.denoise")  # the module (paratriton.denoise is also the function)

    net, sched = _net(), _ddim()
    cf = coefficients_from_scheduler(sched, 16)
    outs = []
    for seed in (3, 4):
        _, x_T, cond = _problem(seed)
        den = dn.LoopDenoiser(net, cf.timesteps.long(), {"global_cond": cond}, B, x_T.dtype)
        res = dn._graphed_solve(net, den, cf, x_T, None, "taa", {"tol": 1e-9}, None)
        ref = paratriton.solve(den, cf, x_T, None, method="sequential")
        assert res.converged and (res.sample - ref.sample).abs().max().item() <= 1e-7
        outs.append(dn._GRAPHED[net])
    assert outs[0] is outs[1] and len(outs[0].solvers) == 1


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


PLAN = ([9, 7, 4, 3, 1], 10, 3, 2, (8, 3))  # draws (loop order), T, rows drawn, rows kept, sample shape


def _eager(generator, device):
    from paratriton.schedulers import draw_step_noise

    return draw_step_noise(*PLAN, generator, device, torch.float32)


def _eager_draws(seed, generator, device="cpu"):
    """The eager draws from ``seed``, and the generator's next draw after them."""
    generator.manual_seed(seed)
    noise = _eager(generator, device)
    return noise, torch.randn(4, generator=generator, device=device)


def test_graphed_draws_off_cuda_are_the_eager_draws():
    """A CPU generator (or a CPU device) draws eagerly: the same noise and the same generator state after."""
    from paratriton.schedulers import GraphedDraws

    draws, g = GraphedDraws(), torch.Generator()
    ref, after = _eager_draws(5, g)
    for _ in range(2):
        g.manual_seed(5)
        noise = draws(*PLAN, g, "cpu", torch.float32)
        assert torch.equal(noise, ref) and torch.equal(torch.randn(4, generator=g), after)
    assert noise[8].abs().sum() == 0 and noise[9].abs().sum() > 0  # steps that draw nothing stay zero


@CUDA
@pytest.mark.parametrize("kind", ["default", "user"])
def test_graphed_draws_equal_the_eager_draws_bit_for_bit(kind):
    """Chunk after chunk (reseeded or not), the graphed draws are the eager draws and leave the generator where
    they leave it; a user generator is captured on its second use, the default one on its first."""
    from paratriton.schedulers import GraphedDraws

    gen = torch.cuda.default_generators[0] if kind == "default" else torch.Generator("cuda")
    passed = None if kind == "default" else gen  # what the caller hands denoise
    draws = GraphedDraws()
    for seed in (0, 1, 1, 2):
        ref, after = _eager_draws(seed, gen, device="cuda")
        gen.manual_seed(seed)
        noise = draws(*PLAN, passed, "cuda", torch.float32)
        assert torch.equal(noise, ref), seed
        assert torch.equal(torch.randn(4, generator=gen, device="cuda"), after), seed
    assert any(plan is not None for _, plan in draws._plans.values()), "never graphed"
    gen.manual_seed(7)  # two chunks without reseeding
    refs = [_eager(gen, "cuda") for _ in range(2)]
    gen.manual_seed(7)
    outs = [draws(*PLAN, passed, "cuda", torch.float32) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(refs, outs))


@CUDA
def test_graphed_denoise_chunks_equal_the_stock_loop_with_the_default_generator():
    """A control loop on the GPU with generator=None (LeRobot's, Chi's): chunk after chunk, ``denoise(cuda_graph=
    True)`` (graphed solve, graphed draws) gives the stock loop's sample from the same global seed."""
    net, sched = TinyPolicyNet().double().cuda(), _ddpm()
    for seed in (11, 12, 12):
        _, x_T, cond = _problem(seed)
        x_T, cond = x_T.cuda(), cond.cuda()
        torch.manual_seed(seed)
        ref = stock_loop(net, sched, x_T, 100, cond, None)
        torch.manual_seed(seed)
        res = paratriton.denoise(
            net, sched, x_T, 100, model_kwargs={"global_cond": cond}, method="taa", tol=1e-9, cuda_graph=True,
            return_result=True,
        )  # fmt: skip
        assert res.converged
        err = ((res.sample - ref).abs().max() / ref.abs().max().clamp_min(1)).item()
        assert err <= 1e-7, f"seed {seed}: relative error {err:.3e} to the stock loop"
