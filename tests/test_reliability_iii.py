"""Reliability III (issue 32): no process-wide state, every model output checked, no silently wrong answer.

Every test here failed on c5e3ac1 (the commit before the fixes) and runs real computations: the tiny offline
pipelines of ``test_pipelines.py``, the exact Gaussian mixture and the shipped digits model.
"""

from __future__ import annotations

import logging
import threading
import warnings

import pytest
import torch

import paratriton as pt

logging.getLogger("diffusers").setLevel(logging.ERROR)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


# ---------------------------------------------------------------------------------------------------------------
# 1. the scheduler tracer changes nothing process-wide
# ---------------------------------------------------------------------------------------------------------------
def test_tracing_in_threads_beside_stock_calls_changes_nothing_process_wide():
    """8 threads: traced parallel pipelines (Euler ancestral, DPM-Solver++ 2M, SDE-DPM-Solver++ 2M) beside stock
    calls of other pipelines with the same scheduler classes, 4 calls each. Every result equals its serial run, the
    default dtype (polled by a ninth thread, and seen by each thread's new tensors) never leaves float32. On
    c5e3ac1 the tracer set the default dtype to float64 and patched diffusers' ``randn_tensor`` meanwhile."""
    pytest.importorskip("diffusers")
    from test_pipelines import _gen, _images, make_sd, sd_inputs
    from test_pipelines_schedulers import SCHEDULERS

    assert torch.get_default_dtype() == torch.float32
    names = ["euler_ancestral", "dpm++2m_karras", "sde-dpm++2m_karras"]
    jobs = []  # (callable, kind) per thread: each thread has its own pipeline (no shared lock serialises them)
    for i in range(8):
        name = names[i % 3]
        pipe = make_sd(SCHEDULERS[name]())
        parallel = i < 5
        run = pt.parallelize(pipe, "taa", tol_abs=1e-7, tol_rel=1e-7) if parallel else pipe
        jobs.append((run, i))
    inputs = sd_inputs(1, False, output_type="latent", num_inference_steps=5)

    def call(run, seed: int) -> torch.Tensor:
        return _images(run(**inputs, generator=_gen(seed)))

    serial = [call(run, i) for run, i in jobs]
    reps, results, errors, dtypes = 4, [[] for _ in jobs], [], set()
    start, stop = threading.Barrier(len(jobs)), threading.Event()

    def worker(k: int) -> None:
        run, seed = jobs[k]
        try:
            start.wait(30)
            for _ in range(reps):
                results[k].append(call(run, seed))
                dtypes.add(torch.tensor(0.5).dtype)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def poll() -> None:
        while not stop.is_set():
            dtypes.add(torch.get_default_dtype())

    poller = threading.Thread(target=poll)
    poller.start()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stop.set()
    poller.join(10)
    assert not errors, repr(errors[0])
    assert dtypes == {torch.float32}
    for k, outs in enumerate(results):
        assert len(outs) == reps
        for out in outs:
            assert torch.equal(out, serial[k]) if k >= 5 else (out - serial[k]).abs().max() <= 1e-5
    # stock calls after all that: still their serial image (no leftover fake noise source)
    for k in range(5, 8):
        assert torch.equal(call(*jobs[k]), serial[k])
    assert torch.get_default_dtype() == torch.float32


# ---------------------------------------------------------------------------------------------------------------
# 2. every model output is checked, the floor probe's too
# ---------------------------------------------------------------------------------------------------------------
def _gm(T=20, eta=0.0, B=1, shape=(2, 3, 3), seed=0, std=0.3):
    from paratriton.testing import GaussianMixture
    from paratriton.testing.gaussian_mixture import default_schedule

    cf = default_schedule(T, eta=eta)
    model = GaussianMixture.random(shape, 3, std=std, seed=seed).denoiser(cf)
    g = torch.Generator().manual_seed(seed + 11)
    x_T = torch.randn(B, *shape, generator=g, dtype=torch.float64)
    noise = torch.randn(T, B, *shape, generator=g, dtype=torch.float64)
    return cf, model, x_T, noise


class _CallLog:
    """The model, with its calls' row counts logged; ``poison(call_number)`` returns that call's output spoiled."""

    def __init__(self, model, poison=None, value=float("nan")):
        self.model, self.poison, self.value, self.rows = model, poison, value, []

    def __call__(self, x, s):
        self.rows.append(x.shape[0])
        out = self.model(x, s)
        if self.poison is not None and self.poison(len(self.rows)):
            out = torch.full_like(out, self.value)
        return out


@pytest.mark.parametrize("method", ["picard", "taa", "fp"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_a_non_finite_floor_probe_is_an_error(method, value):
    """c5e3ac1 used the probe's NaN/inf outputs as a floor: infinite thresholds, ``converged=True`` after 2
    iterations, far from the sequential sample (an all-NaN probe silently ran all T iterations)."""
    cf, model, x_T, noise = _gm(T=20)
    clean = _CallLog(model)
    res = pt.solve(clean, cf, x_T, method=method)
    assert res.probe_calls >= 1 and clean.rows[1] != clean.rows[0]  # call 2 is the probe after iteration 1
    spoiled = _CallLog(model, poison=lambda n: n == 2, value=value)
    with pytest.raises(pt.NonFiniteError, match=r"model output is NaN/inf at step\(s\) \[.*roughness probe after "):
        pt.solve(spoiled, cf, x_T, method=method)
    assert len(spoiled.rows) == 3  # stopped at the next host read, not after T iterations


def test_a_probe_after_the_last_iteration_is_checked_too():
    cf, model, x_T, _ = _gm(T=20)
    spoiled = _CallLog(model, poison=lambda n: n == 2)
    with pytest.raises(pt.NonFiniteError, match="roughness probe after iteration 1"):
        pt.solve(spoiled, cf, x_T, method="picard", max_iters=1)


# ---------------------------------------------------------------------------------------------------------------
# 4. the model-input clamp: only for fp16 networks, and reported where it binds at the answer
# ---------------------------------------------------------------------------------------------------------------
def _linear_problem():
    from paratriton.testing.gaussian_mixture import default_schedule

    cf = default_schedule(20, eta=1.0)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(1, 6, generator=g, dtype=torch.float64)
    noise = torch.randn(20, 1, 6, generator=g, dtype=torch.float64)
    return cf, x_T, noise


@pytest.mark.parametrize("method", ["fp", "picard", "aa", "taa"])
def test_a_trajectory_beyond_the_fp16_range_is_solved_exactly_for_a_float_model(method):
    """A linear map with L = 5 whose sequential trajectory reaches 1e12: c5e3ac1 clamped every model's input to
    +-6e4 and returned ``converged=True`` with ~100 % relative error."""
    cf, x_T, noise = _linear_problem()

    def model(x, s):
        return -5.0 * x

    ref = pt.solve(model, cf, x_T, noise, method="sequential")
    assert ref.trajectory.abs().max() > 1e10
    res = pt.solve(model, cf, x_T, noise, method=method, tol_abs=1e-9, tol_rel=1e-9)
    assert res.converged and not res.input_clamped
    assert ((res.sample - ref.sample).norm() / ref.sample.norm()) <= 1e-6


def test_an_fp16_model_clamped_at_the_answer_is_reported_not_converged():
    """The clamp stays for an fp16 network (its range), and where the returned trajectory needs inputs beyond it
    (here ``x_T`` itself, at 1e5: the sequential sampler's fp16 model sees inf), the result says so instead of
    ``converged=True``."""
    cf, x_T, noise = _linear_problem()
    x_T = x_T * 1e5
    seen = []

    def fp16_model(x, s):
        xh = x.to(torch.float16)
        seen.append(bool(torch.isinf(xh).any()))
        return 0.01 * xh

    fp16_model.compute_dtype = torch.float16  # declared: the very first call is guarded too
    with pytest.raises(pt.NonFiniteError):
        pt.solve(fp16_model, cf, x_T, noise, method="sequential")
    seen.clear()
    with pytest.warns(RuntimeWarning, match="beyond its range"):
        res = pt.solve(fp16_model, cf, x_T, noise, method="taa", tol_abs=1e-9, tol_rel=1e-9)
    assert not any(seen)  # the guard: never inf into the network
    assert res.input_clamped and not res.converged


# ---------------------------------------------------------------------------------------------------------------
# 8. a low-precision model: converged means the tolerance asked for, the floor is the distance it can reach
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", [{}, {"tol_abs": 1e-3, "tol_rel": 1e-3}], ids=["tol", "per_step"])
def test_a_bf16_model_at_its_floor_is_not_called_converged(form):
    """c5e3ac1: the digits model in bf16 ended 0.01-0.3 RMS from its own bf16 sequential sample (10-300x the
    tolerance) with ``converged=True``. Now ``converged`` is False and ``precision_floor`` bounds the distance."""
    import os

    from paratriton.models import WEIGHTS_DIR, load_default

    if not os.path.exists(os.path.join(WEIGHTS_DIR, "model.safetensors")):
        pytest.skip("the default model's weights are not shipped in this checkout")
    bf16 = load_default(device="cpu", dtype=torch.bfloat16)
    coeffs = pt.coefficients_from_scheduler(bf16.scheduler, 25, eta=0.0)
    model = bf16.denoiser(coeffs, torch.tensor([1, 4]))
    x_T, _ = bf16.problem(2, 25, torch.Generator().manual_seed(0))
    seq = pt.solve(model, coeffs, x_T, method="sequential").sample
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = pt.solve(model, coeffs, x_T, method="taa", **form)
    dist = (res.sample - seq).flatten(1).square().mean(1).sqrt().max().item()
    assert dist > 5e-3  # the floor binds: far above the 1e-3 asked for ...
    assert res.precision_limited and not res.converged  # ... and the result says so
    assert dist <= res.precision_floor  # the reported floor is the distance the result can be from sequential


# ---------------------------------------------------------------------------------------------------------------
# 5. coefficients edited in place after a solve: every path reads the new values
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["one_tap", "multistep"])
def test_coefficients_edited_after_a_solve_are_read_by_every_method(kind):
    """c5e3ac1: ``method="sequential"`` kept a cached host copy of ``a, b, c`` (and a reused engine its device
    copy), while a fresh parallel solve read the edited values."""
    from dataclasses import replace

    from paratriton.solvers import make_solver

    cf, model, x_T, noise = _gm(T=12, eta=1.0)
    if kind == "multistep":
        diffusers = pytest.importorskip("diffusers")
        cf = pt.coefficients_from_scheduler(diffusers.DPMSolverMultistepScheduler(), 12)
        noise = None
    engine = make_solver("taa", tol_abs=1e-10, tol_rel=1e-10)
    before = [pt.solve(model, cf, x_T, noise, method="sequential").sample, engine.solve(model, cf, x_T, noise).sample]
    with torch.no_grad():
        cf.b.mul_(0.9)  # edited in place after the solves
    fresh = replace(cf, b=cf.b.clone())  # a new object with the edited values: the answer to match
    want = pt.solve(model, fresh, x_T, noise, method="sequential").sample
    assert (want - before[0]).abs().max() > 1e-3  # the edit matters
    for got in (
        pt.solve(model, cf, x_T, noise, method="sequential").sample,
        engine.solve(model, cf, x_T, noise).sample,  # the same solver object as before the edit
        pt.solve(model, cf, x_T, noise, method="picard", tol_abs=1e-10, tol_rel=1e-10).sample,
    ):
        assert (got - want).abs().max() <= 1e-8
