"""The engine: eager and graphed schedules give the same iterates; converged means within threshold."""

import contextlib
import functools

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

import paratriton as pt
from paratriton.solvers import make_solver, tolerance
from paratriton.solvers.graphed_sequential import GraphedSequential
from paratriton.solvers.tolerance import DEFAULT_TOL, amplification, step_thresholds
from paratriton.testing import GaussianMixture


def StaticTAA(method="taa", use_cuda_graph=True, **kw):
    """The graphed schedule (static shapes; captured on CUDA, run uncaptured on the CPU)."""
    return make_solver(method, cuda_graph=use_cuda_graph, **kw)


@functools.lru_cache(maxsize=None)
def problem(kind, T, B):
    sched = DDIMScheduler(clip_sample=False) if kind == "ddim" else DDPMScheduler(clip_sample=False)
    cf = pt.coefficients_from_scheduler(sched, T)
    model = GaussianMixture.random((2, 3, 3), 3, std=0.3, seed=0).denoiser(cf)
    g = torch.Generator().manual_seed(7)
    x_T = torch.randn(B, 2, 3, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(T, B, 2, 3, 3, generator=g, dtype=torch.float64)
    return cf, model, x_T, noise


@pytest.mark.parametrize("kind,T,B", [("ddim", 25, 3), ("ddpm", 25, 1), ("ddim", 50, 1), ("ddpm", 10, 2)])
@pytest.mark.parametrize("history,order", [(1, None), (2, None), (3, 5)])
def test_static_taa_equals_windowed_taa(kind, T, B, history, order):
    cf, model, x_T, noise = problem(kind, T, B)
    kw = dict(history=history, order=order, tol_abs=1e-6, tol_rel=1e-6)
    ref = pt.solve(model, cf, x_T, noise, method="taa", **kw)
    got = StaticTAA(**kw, buckets=3).solve(model, cf, x_T, noise)
    assert got.iterations == ref.iterations and got.nfe == ref.nfe and got.converged
    torch.testing.assert_close(got.trajectory, ref.trajectory, rtol=0, atol=1e-12)


def test_static_taa_exact_at_tight_tolerance():
    cf, model, x_T, noise = problem("ddpm", 25, 1)
    seq = pt.solve(model, cf, x_T, noise, method="sequential")
    got = StaticTAA(tol_abs=1e-10, tol_rel=1e-10).solve(model, cf, x_T, noise)
    assert got.iterations <= 25
    assert (got.sample - seq.sample).square().mean().sqrt() <= 1e-8


def test_static_taa_stops_on_non_finite_output():
    cf, model, x_T, noise = problem("ddim", 10, 1)

    def broken(x, s):
        out = model(x, s)
        return torch.where(s.view(-1, 1, 1, 1) == 3, float("nan"), out)

    with pytest.raises(pt.NonFiniteError, match="iteration 0"):
        StaticTAA().solve(broken, cf, x_T, noise)


@pytest.mark.parametrize("graph", ["loop", "step"])
@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_graphed_sequential_equals_sequential(kind, graph):
    """Both graphs (the step program runs from its device counter, captured on CUDA, eager elsewhere) give the
    sequential trajectory; a loaded second problem gives its own; ``time_ms`` times a run."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    cf, _, x_T, noise = problem(kind, 10, 2)
    model = GaussianMixture.random((2, 3, 3), 3, std=0.3, seed=0).to(dev).denoiser(cf)
    x_T, noise = x_T.to(dev), None if noise is None else noise.to(dev)
    ref = pt.solve(model, cf, x_T, noise, method="sequential")
    seq = GraphedSequential(model, cf, x_T, noise, state_dtype=torch.float64, graph=graph)
    assert (seq.graph is not None) == (dev == "cuda")
    torch.testing.assert_close(seq.run().trajectory, ref.trajectory, rtol=0, atol=1e-12)
    x2, n2 = torch.randn_like(x_T), None if noise is None else torch.randn_like(noise)
    seq.load(x2, n2)
    assert seq.time_ms() > 0
    torch.testing.assert_close(
        seq.run().trajectory, pt.solve(model, cf, x2, n2, method="sequential").trajectory, rtol=0, atol=1e-12
    )
    with pytest.raises(ValueError, match="graph must be one of"):
        GraphedSequential(model, cf, x_T, noise, graph="steps")


@pytest.mark.parametrize("k", [2, 3, 7])
@pytest.mark.parametrize("method,window", [("taa", None), ("picard", None), ("taa", 6), ("picard", 4), ("fp", 5)])
@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_iterations_per_sync_give_the_same_iterates(kind, method, window, k):
    """k iterations between host reads: masked extra iterations after convergence and larger buckets change
    nothing, so iterates, counts, windows and residuals equal one iteration per sync."""
    cf, model, x_T, noise = problem(kind, 25, 2)
    kw = dict(method=method, window=window, tol_abs=1e-6, tol_rel=1e-6)
    ref = StaticTAA(**kw).solve(model, cf, x_T, noise)
    infos = []
    got = StaticTAA(**kw, iters_per_sync=k, callback=infos.append).solve(model, cf, x_T, noise)
    assert (got.iterations, got.nfe, got.converged) == (ref.iterations, ref.nfe, True)
    assert got.window_history == ref.window_history
    torch.testing.assert_close(got.trajectory, ref.trajectory, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.residuals, ref.residuals, rtol=0, atol=1e-12, equal_nan=True)
    assert len(infos) == -(-ref.iterations // k) and infos[-1].iteration == ref.iterations  # once per replay


def test_iterations_per_sync_stop_at_max_iters_and_on_non_finite_output():
    cf, model, x_T, noise = problem("ddpm", 25, 1)
    got = StaticTAA(method="fp", window=5, max_iters=5, iters_per_sync=3).solve(model, cf, x_T, noise)
    ref = StaticTAA(method="fp", window=5, max_iters=5).solve(model, cf, x_T, noise)
    assert got.iterations == 5 and not got.converged  # 3 + 2, not 6
    torch.testing.assert_close(got.trajectory, ref.trajectory, rtol=0, atol=1e-12)

    def broken(x, s):
        out = model(x, s)
        return torch.where(s.view(-1, 1, 1, 1) == 20, float("nan"), out)

    with pytest.raises(pt.NonFiniteError, match=r"iterations 0\.\.3"):  # step 20 is in the first window
        StaticTAA(iters_per_sync=4).solve(broken, cf, x_T, noise)
    with pytest.raises(ValueError, match=r"iters_per_sync must be an int in \[1, 64\]"):
        StaticTAA(iters_per_sync=0)


@pytest.mark.gpu
def test_cuda_graphs_match_eager():
    cf, model, x_T, noise = problem("ddpm", 25, 2)
    dev = torch.device("cuda")
    x_T, noise = x_T.to(dev), noise.to(dev)
    gm = GaussianMixture.random((2, 3, 3), 3, std=0.3, seed=0).to(dev)
    model = gm.denoiser(cf)
    f64 = dict(state_dtype=torch.float64)  # float32 is the CUDA default; compare the iterates at float64
    eager = StaticTAA(use_cuda_graph=False, **f64).solve(model, cf, x_T, noise)
    graphed = StaticTAA(use_cuda_graph=True, **f64).solve(model, cf, x_T, noise)
    assert graphed.iterations == eager.iterations
    torch.testing.assert_close(graphed.sample, eager.sample, rtol=0, atol=1e-10)
    for k in (3, 8):  # several iterations per replay: the same iterates
        chunked = StaticTAA(use_cuda_graph=True, iters_per_sync=k, **f64).solve(model, cf, x_T, noise)
        assert (chunked.iterations, chunked.nfe) == (eager.iterations, eager.nfe)
        torch.testing.assert_close(chunked.sample, eager.sample, rtol=0, atol=1e-10)
    seq = GraphedSequential(model, cf, x_T, noise, state_dtype=torch.float64).run()
    ref = pt.solve(model, cf, x_T, noise, method="sequential")
    torch.testing.assert_close(seq.sample, ref.sample, rtol=0, atol=1e-10)


def test_static_taa_reuses_buffers_for_a_new_problem():
    cf, model, x_T, noise = problem("ddpm", 25, 1)
    solver = StaticTAA(tol_abs=1e-8, tol_rel=1e-8)
    first = solver.solve(model, cf, x_T, noise).sample.clone()
    buffers = solver._s
    second = solver.solve(model, cf, -x_T, noise.flip(0)).sample.clone()
    assert solver._s is buffers  # reused, not rebuilt
    fresh = StaticTAA(tol_abs=1e-8, tol_rel=1e-8).solve(model, cf, -x_T, noise.flip(0)).sample
    torch.testing.assert_close(second, fresh, rtol=0, atol=0)
    assert not torch.allclose(first, second)


def test_static_taa_rebuilds_for_other_coefficients():
    cf, model, x_T, noise = problem("ddpm", 25, 1)
    cf2, model2, _, _ = problem("ddim", 25, 1)
    solver = StaticTAA(tol_abs=1e-8, tol_rel=1e-8)
    solver.solve(model, cf, x_T, noise)
    got = solver.solve(model2, cf2, x_T, None).sample
    ref = pt.solve(model2, cf2, x_T, None, method="sequential").sample
    assert (got - ref).square().mean().sqrt() <= 1e-6


@pytest.mark.parametrize("method", ["taa", "fp", "picard"])
@pytest.mark.parametrize(
    "kind,T,B,window", [("ddim", 25, 3, 7), ("ddpm", 25, 1, 1), ("ddim", 50, 1, 12), ("ddpm", 10, 2, 4)]
)
def test_static_sliding_window_equals_windowed_reference(method, kind, T, B, window):
    cf, model, x_T, noise = problem(kind, T, B)
    kw = dict(window=window, tol_abs=1e-6, tol_rel=1e-6)
    if method != "picard":
        kw["order"] = 5
    if method == "taa":
        kw["history"] = 3
    ref = pt.solve(model, cf, x_T, noise, method=method, **kw)
    got = StaticTAA(method=method, **kw).solve(model, cf, x_T, noise)
    assert got.iterations == ref.iterations and got.nfe == ref.nfe and got.converged
    assert got.window_history == ref.window_history
    torch.testing.assert_close(got.trajectory, ref.trajectory, rtol=0, atol=1e-12)


def test_static_sliding_window_early_stop_fills_unreached_steps():
    cf, model, x_T, noise = problem("ddpm", 25, 1)
    got = StaticTAA(method="fp", window=5, max_iters=3).solve(model, cf, x_T, noise)
    ref = pt.solve(model, cf, x_T, noise, method="fp", window=5, max_iters=3)
    assert not got.converged and got.iterations == 3
    torch.testing.assert_close(got.sample, ref.sample, rtol=0, atol=1e-12)


def test_engine_options_are_checked():
    with pytest.raises(ValueError, match="method='nope' is not supported"):
        StaticTAA(method="nope")
    with pytest.raises(ValueError, match="window must be an int >= 1 or None, got 0"):
        StaticTAA(window=0)
    with pytest.raises(TypeError, match=r"options \['order'\] do not apply to method='picard'"):
        StaticTAA(method="picard", order=3)
    with pytest.raises(ValueError, match="history must be an int in"):
        StaticTAA(history=0)


def order1_rms(model, cf, res, noise):
    """``[T, B]`` RMS of ``f_i(x_{i+1}) - x_i`` at the returned trajectory (float64)."""
    traj = res.trajectory.double()
    T = cf.num_steps
    steps = torch.arange(T)
    B = traj.shape[1]
    x_in = traj[1:].reshape(T * B, *traj.shape[2:])
    out = model(x_in, steps.repeat_interleave(B)).reshape(traj[1:].shape)
    col = lambda v: v.double().view(T, *[1] * (traj.ndim - 1))  # noqa: E731
    f = col(cf.a) * traj[1:] + col(cf.b) * out
    if noise is not None:
        f = f + col(cf.c) * noise.double()
    return (f - traj[:T]).flatten(2).square().mean(-1).sqrt()


@pytest.mark.parametrize("method", ["fp", "picard", "aa", "taa"])
@pytest.mark.parametrize(
    "kind,T,window",
    [
        ("ddim", 10, None),
        ("ddpm", 50, None),
        ("ddim", 50, 7),
        ("ddpm", 50, 12),
        ("ddim", 1000, None),
        ("ddpm", 1000, 64),
    ],
)
@pytest.mark.parametrize("static", [False, True])
def test_converged_means_every_step_within_its_threshold(method, kind, T, window, static):
    """At the returned trajectory, when converged: every step's order-1 residual is within its threshold, or the
    first-order bound on the sample's distance (``sum_i g_i RMS(r_i)``) is within ``tol``; either way the reported
    ``error_bound`` is that bound, recomputed here in float64."""
    if T == 1000 and (static or method == "aa"):
        pytest.skip("one engine schedule per method at T=1000 keeps the CPU suite short")
    cf, model, x_T, noise = problem(kind, T, 2)
    noise = noise if kind == "ddpm" else None
    res = make_solver(method, window=window, cuda_graph=static).solve(model, cf, x_T, noise)
    assert res.converged and res.iterations <= T
    thr = step_thresholds(cf, None, None, None)
    r = order1_rms(model, cf, res, noise)
    bound = float((amplification(cf)[:, None] * r).sum(0).max())
    every_step = bool((r <= thr[:, None] * (1 + 1e-9)).all())
    assert every_step or bound <= DEFAULT_TOL * (1 + 1e-9), (bound, (r / thr[:, None]).max())
    assert res.error_bound == pytest.approx(bound, rel=1e-6, abs=1e-12)


def test_nan_in_a_frozen_row_is_never_returned():
    """A model writing NaN into rows the engine has frozen (or padded) cannot reach the result."""
    cf, model, x_T, noise = problem("ddim", 25, 1)
    calls = []

    def nan_above_anchor(x, s):
        out = model(x, s)
        calls.append(1)
        # the graphed schedule pads the window up to its bucket: NaN into every row at or above step 20 after
        # the first call, when those steps are frozen (the first iteration freezes the high-noise steps)
        return torch.where((s >= 20).view(-1, 1, 1, 1) & (len(calls) > 3), float("nan"), out)

    res = StaticTAA(method="taa").solve(model, cf, x_T, None)  # reference run
    try:
        got = StaticTAA(method="taa", buckets=1).solve(nan_above_anchor, cf, x_T, None)
    except pt.NonFiniteError:
        return  # refusing is fine; returning NaN as converged is not
    assert torch.isfinite(got.trajectory).all() and got.converged
    torch.testing.assert_close(got.sample, res.sample, rtol=0, atol=1e-6)


def test_reference_backend_gives_the_registered_ops_iterates():
    cf, model, x_T, noise = problem("ddpm", 25, 2)
    for method in ("fp", "taa", "aa"):
        a = pt.solve(model, cf, x_T, noise, method=method, window=9, tol_abs=1e-8, tol_rel=1e-8)
        b = pt.solve(model, cf, x_T, noise, method=method, window=9, tol_abs=1e-8, tol_rel=1e-8, backend="reference")
        assert a.iterations == b.iterations
        torch.testing.assert_close(a.trajectory, b.trajectory, rtol=0, atol=1e-12)


@pytest.mark.gpu
def test_a_model_on_another_device_than_the_state():
    """A CUDA model with CPU x_T / noise (the README's default-model snippet on a GPU machine): the outputs come
    back to the state's device and the sample is the sequential one."""
    cf, model, x_T, noise = problem("ddpm", 10, 2)
    gm = GaussianMixture.random((2, 3, 3), 3, std=0.3, seed=0).to("cuda")
    cuda_model = gm.denoiser(cf)

    def remote(x, s):
        return cuda_model(x.cuda(), s.cuda())

    ref = pt.solve(model, cf, x_T, noise, method="sequential")
    for method in ("taa", "picard", "sequential"):
        tol = {} if method == "sequential" else dict(tol_abs=1e-10, tol_rel=1e-10)
        got = pt.solve(remote, cf, x_T, noise, method=method, **tol)
        assert got.sample.device.type == "cpu"
        assert (got.sample - ref.sample).square().mean().sqrt() <= 1e-8


@pytest.mark.parametrize("rough", [False, True])
def test_a_later_solve_of_the_same_problem_reuses_the_floor_and_stays_within_tol(rough, monkeypatch):
    """The rounding floor (or smoothness) measured by the first solve of a problem is kept for later solves with
    other noise: no probe calls there, the same answer quality (issue 37: probes once per problem shape)."""
    cf, gm_model, _, _ = problem("ddpm", 25, 2)
    model = gm_model
    if rough:  # a bf16 network: its output rounded to 8 bits

        def model(x, i):
            return gm_model(x, i).to(torch.bfloat16).to(x.dtype)

        model.compute_dtype = torch.bfloat16
    solver = make_solver("taa")
    results = []
    for seed in (1, 2):
        g = torch.Generator().manual_seed(seed)
        x_T = torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64)
        noise = torch.randn(25, 2, 2, 3, 3, generator=g, dtype=torch.float64)
        monkeypatch.setattr(tolerance, "_warned", set())  # it warns once per process
        with contextlib.ExitStack() as stack:
            if rough:  # the bf16 floor is above tol: said once per solve here
                stack.enter_context(pytest.warns(RuntimeWarning, match="below what a bfloat16 model can resolve"))
            res = solver.solve(model, cf, x_T, noise)
        ref = pt.solve(model, cf, x_T, noise, method="sequential")
        results.append((res, (res.sample - ref.sample).square().mean().sqrt().item()))
    (first, d1), (second, d2) = results
    assert first.probe_calls >= 1 and second.probe_calls == 0
    assert first.precision_limited == second.precision_limited == rough
    limit = 2 * DEFAULT_TOL if not rough else 2 * max(DEFAULT_TOL, first.precision_floor)
    assert d1 <= limit and d2 <= limit


@pytest.mark.parametrize("iters_per_sync", [1, 3])
def test_the_host_read_launches_nothing_per_iteration(iters_per_sync):
    """Between replays the host only reads the head the replay packed (no op per iteration outside the replays and
    the floor probes): a solve of 1 iteration and one of many run the same ops outside them."""
    from torch.utils._python_dispatch import TorchDispatchMode

    cf, model, x_T, noise = problem("ddpm", 25, 1)
    seq = pt.solve(model, cf, x_T, noise, method="sequential").trajectory
    engine = solver = StaticTAA(iters_per_sync=iters_per_sync)  # (make_solver gives the Engine itself)

    class Outside(TorchDispatchMode):
        depth, ops = 0, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if self.depth == 0 and func is not torch.ops.aten._local_scalar_dense.default:
                self.ops += 1
            return func(*args, **(kwargs or {}))

    def counted(init):
        mode = Outside()
        for name in ("_program", "_measure_floor"):
            inner = getattr(type(engine), name).__get__(engine)

            def inside(*a, _inner=inner, **k):
                mode.depth += 1
                try:
                    return _inner(*a, **k)
                finally:
                    mode.depth -= 1

            setattr(engine, name, inside)
        try:
            with mode:
                res = solver.solve(model, cf, x_T, noise, init=init)
        finally:
            for name in ("_program", "_measure_floor"):
                delattr(engine, name)
        return res, mode.ops

    solver.solve(model, cf, x_T, noise)  # set up the buffers (and the floor memo) outside the counts
    near, n_near = counted(seq[:25].clone())
    far, n_far = counted(torch.zeros_like(seq[:25]))
    assert near.iterations <= iters_per_sync < far.iterations
    assert n_near == n_far
