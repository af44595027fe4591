"""Reliability: safeguards, adversarial models, running out of memory, determinism, fuzzed shapes and options."""

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import paratriton as pt
from paratriton.solvers import make_solver
from paratriton.testing import GaussianMixture
from paratriton.testing.gaussian_mixture import default_schedule

PARALLEL = ["fp", "picard", "aa", "taa"]


def gm_problem(T=30, eta=0.0, B=1, shape=(2, 3, 3), seed=0):
    cf = default_schedule(T, eta=eta)
    model = GaussianMixture.random(shape, 3, std=0.3, seed=seed).denoiser(cf)
    g = torch.Generator().manual_seed(seed + 11)
    x_T = torch.randn(B, *shape, generator=g, dtype=torch.float64)
    noise = torch.randn(T, B, *shape, generator=g, dtype=torch.float64)
    return cf, model, x_T, noise


def test_safeguard_rescues_low_order_taa():
    # low order + long history: unsafeguarded TAA needed twice the iterations of plain fixed point here
    cf, model, x_T, noise = gm_problem(T=50)
    kw = dict(order=5, history=5, tol_abs=1e-3, tol_rel=1e-3)
    fp = pt.solve(model, cf, x_T, noise, method="fp", order=5, tol_abs=1e-3, tol_rel=1e-3).iterations
    off = pt.solve(model, cf, x_T, noise, method="taa", safeguard=False, **kw).iterations
    on = pt.solve(model, cf, x_T, noise, method="taa", safeguard=True, **kw).iterations
    assert on < off and on <= fp + 3, (on, off, fp)


class LipschitzMap:
    """A random map with a given Lipschitz constant: nothing like a denoiser, all the solvers may assume."""

    def __init__(self, dim, lipschitz, seed):
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(dim, dim, generator=g, dtype=torch.float64)
        self.w = w * (lipschitz / torch.linalg.matrix_norm(w, 2))
        self.bias = torch.randn(dim, generator=g, dtype=torch.float64)

    def __call__(self, x, steps):
        flat = x.reshape(x.shape[0], -1)
        return (torch.sin(flat @ self.w.T) + self.bias * (1 + steps[:, None])).reshape(x.shape)


@pytest.mark.parametrize("method", PARALLEL)
@pytest.mark.parametrize("lipschitz", [0.5, 5.0, 50.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_adversarial_lipschitz_models_stay_within_T(method, lipschitz, seed):
    cf, _, x_T, noise = gm_problem(T=20, eta=1.0, shape=(6,), seed=seed)
    model = LipschitzMap(6, lipschitz, seed)
    ref = pt.solve(model, cf, x_T, noise, method="sequential")
    res = pt.solve(model, cf, x_T, noise, method=method, tol_abs=1e-9, tol_rel=1e-9)
    assert res.iterations <= 20 and res.converged
    # the returned trajectory solves every step's equation to tolerance ...
    traj = res.trajectory
    steps = torch.arange(20).repeat_interleave(1)
    f = cf.a[:, None, None] * traj[1:] + cf.b[:, None, None] * torch.stack(
        [model(traj[i + 1], steps[i:i + 1]) for i in range(20)]) + cf.c[:, None, None] * noise
    assert (f - traj[:-1]).square().mean(dim=(1, 2)).sqrt().max() <= 1e-7
    # ... which pins the sample down as far as the map's conditioning allows (a Lipschitz-50 map amplifies
    # per-step errors by orders of magnitude over 20 steps, the sequential sampler's own rounding included)
    if lipschitz <= 5:
        scale = ref.sample.abs().max().clamp_min(1.0)
        assert ((res.sample - ref.sample).abs().max() / scale).item() <= 1e-6


@pytest.mark.parametrize("method", PARALLEL)
def test_model_that_changes_at_every_call_terminates(method):
    # no fixed point exists exactly; the window top still drops every iteration, so at most T iterations
    cf, model, x_T, noise = gm_problem(T=25, eta=1.0)
    g = torch.Generator().manual_seed(5)

    def jittery(x, s):
        return model(x, s) + 1e-2 * torch.randn(x.shape, generator=g, dtype=x.dtype)

    res = pt.solve(jittery, cf, x_T, noise, method=method, tol_abs=1e-6, tol_rel=1e-6)
    assert res.iterations <= 25 and res.converged and torch.isfinite(res.sample).all()


def test_out_of_memory_shrinks_the_window_and_stays_exact():
    cf, model, x_T, noise = gm_problem(T=30, eta=1.0, B=2)
    limit = 9  # rows the "device" can hold

    def small_device(x, s):
        if x.shape[0] > limit * 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return model(x, s)

    ref = pt.solve(model, cf, x_T, noise, method="sequential")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        solver = make_solver("taa", tol_abs=1e-10, tol_rel=1e-10)
        res = solver.solve(small_device, cf, x_T, noise)
    assert solver.window_shrunk_to is not None and solver.window_shrunk_to <= limit
    assert any("out of memory" in str(w.message) for w in caught)
    assert (res.sample - ref.sample).square().mean().sqrt() <= 1e-8 and res.converged


def test_out_of_memory_with_window_one_is_raised():
    cf, model, x_T, noise = gm_problem(T=5)

    def no_memory(x, s):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.raises(torch.OutOfMemoryError), pytest.warns(RuntimeWarning, match="continuing with window=1"):
        pt.solve(no_memory, cf, x_T, noise, method="taa")


@pytest.mark.parametrize("method", ["sequential", *PARALLEL])
def test_same_seed_bit_identical(method):
    outs = []
    for _ in range(2):
        cf, model, x_T, noise = gm_problem(T=20, eta=1.0, B=2)
        outs.append(pt.solve(model, cf, x_T, noise, method=method).sample)
    assert torch.equal(outs[0], outs[1])


def test_static_taa_bit_identical():
    cf, model, x_T, noise = gm_problem(T=20, eta=1.0, B=2)
    a, b = (make_solver("taa", cuda_graph=True).solve(model, cf, x_T, noise).sample for _ in range(2))
    assert torch.equal(a, b)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(T=st.integers(1, 24), B=st.integers(1, 3), shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       eta=st.sampled_from([0.0, 0.5, 1.0]), method=st.sampled_from(PARALLEL), window=st.integers(1, 30),
       order=st.one_of(st.none(), st.integers(1, 30)), history=st.integers(1, 5), seed=st.integers(0, 3))
def test_fuzz_every_solver_is_exact(T, B, shape, eta, method, window, order, history, seed):
    cf, model, x_T, noise = gm_problem(T=T, eta=eta, B=B, shape=tuple(shape), seed=seed)
    # a frozen step keeps the value its residual test passed at (converged means within threshold at the returned
    # trajectory), so the sample's distance is the per-step tolerance propagated along T steps: up to ~100x here
    opts = dict(window=window, tol_abs=1e-11, tol_rel=1e-11)
    if method in ("fp", "aa", "taa"):
        opts["order"] = order
    if method in ("aa", "taa"):
        opts["history"] = history
    ref = pt.solve(model, cf, x_T, noise, method="sequential")
    res = pt.solve(model, cf, x_T, noise, method=method, **opts)
    assert res.converged and res.iterations <= T
    assert res.sample.shape == x_T.shape
    assert (res.sample - ref.sample).square().mean().sqrt() <= 1e-8


def test_fp16_model_never_sees_inf_and_still_converges():
    # DDPM-100 with order-k = T: early fixed-point iterates leave the fp16 range (the weights reach ~1e2)
    from diffusers import DDPMScheduler

    cf = pt.coefficients_from_scheduler(DDPMScheduler(clip_sample=False), 100)
    exact = GaussianMixture.random((2, 4, 4), 3, std=0.3, seed=0).denoiser(cf)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(2, 2, 4, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(100, 2, 2, 4, 4, generator=g, dtype=torch.float64)
    seen = []

    def fp16_network(x, s):  # half-precision input, a bounded output, as a normalised network has
        xh = x.to(torch.float16)
        seen.append(bool(torch.isinf(xh).any()))
        return exact(xh.double(), s).clamp(-1e4, 1e4).to(torch.float16)

    ref = pt.solve(fp16_network, cf, x_T, noise, method="sequential")
    seen.clear()
    res = pt.solve(fp16_network, cf, x_T, noise, method="fp", tol_abs=1e-6, tol_rel=1e-6)
    assert not any(seen) and res.converged and res.iterations <= 100
    assert (res.sample - ref.sample).square().mean().sqrt() <= 1e-4
