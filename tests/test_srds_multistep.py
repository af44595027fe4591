"""SRDS (plain and pipelined Parareal) on the multistep step operators of issue 18: the scheduler's own sequential
loop, exactly, on the Gaussian mixture of ``test_multistep_engine.py`` and its scheduler option sets, in at most
``T`` model-call rounds; the per-iteration exactness front; both schedules doing the same arithmetic."""

from __future__ import annotations

import pytest
import torch

import paratriton
from paratriton.solvers.srds import critical_path_model, default_blocks

pytest.importorskip("diffusers")
from test_multistep_engine import SCHEDULERS, problem, rms  # noqa: E402 - after importorskip

METHODS = ("srds", "srds_pipelined")
TIGHT = dict(tol_abs=1e-12, tol_rel=1e-12)


class CountingModel:
    """Wraps a denoiser and counts its calls."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, x, step_index):
        self.calls += 1
        return self.model(x, step_index)


def block_counts(T: int) -> list[int]:
    """A middle block count (the default, if it is neither 1 nor T) and one-step blocks (every tap reaches over
    the block start, up to 12 blocks back for PNDM's Runge-Kutta warm-up)."""
    mid = default_blocks(T)
    return ([mid] if 1 < mid < T else []) + [T]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_srds_returns_the_sequential_multistep_sample(name, batch):
    coeffs, model, x_T, noise, ref = problem(name, batch)
    T = coeffs.num_steps
    for K in block_counts(T):
        for method in METHODS:
            cm = CountingModel(model)
            res = paratriton.solve(cm, coeffs, x_T, noise, method=method, blocks=K, **TIGHT)
            assert res.converged and 1 <= res.iterations <= K, (method, K)
            assert bool(torch.isfinite(res.sample).all())
            assert rms(res.sample, ref.sample) <= 1e-8, (method, K, rms(res.sample, ref.sample))
            assert res.critical_path == cm.calls <= T, (method, K)


@pytest.mark.parametrize("name,blocks", [("dpm++2m", 4), ("lms", 4), ("pndm-skip-prk", 11), ("unipc-bh2", 6)])
def test_exact_front_after_each_iteration(name, blocks):
    """After p iterations every state from boundary K-p up is the sequential one (block interiors included: their
    last fine solve started from an exact state with the exact taps of the steps above it). LMS (4 taps) at two
    steps per block and PNDM (5 taps) at one read taps from several blocks back."""
    coeffs, model, x_T, noise, ref = problem(name, 2)
    T, K = coeffs.num_steps, blocks
    S = T // K
    seen = []

    def cb(info):
        p = info.iteration
        assert info.frozen_from == (K - p) * S
        assert rms(info.trajectory[(K - p) * S :], ref.trajectory[(K - p) * S :]) <= 1e-12, p
        seen.append(p)

    res = paratriton.solve(
        model, coeffs, x_T, noise, method="srds_pipelined", blocks=K, tol_abs=1e-300, tol_rel=1e-300, callback=cb
    )
    # one-step blocks may see a zero increment (and stop) at p = K - 1, when the sample is already exact
    assert seen == list(range(1, res.iterations + 1)) and res.iterations >= K - 1
    assert res.converged and res.critical_path == T
    assert rms(res.trajectory, ref.trajectory) <= 1e-12  # at p = K all is exact


@pytest.mark.parametrize("name,K", [("dpm++3m-sde", 5), ("heun", 11)])
def test_plain_and_pipelined_same_iterates(name, K):
    """The schedules read the same histories (a data-independent rule), so after the same iterations they agree."""
    coeffs, model, x_T, noise, ref = problem(name, 2)
    out = [
        paratriton.solve(model, coeffs, x_T, noise, method=m, blocks=K, max_iters=2, tol_abs=1e-300, tol_rel=1e-300)
        for m in METHODS
    ]
    assert all(r.iterations == 2 and not r.converged for r in out)
    assert rms(out[0].sample, out[1].sample) <= 1e-13
    assert rms(out[0].sample, ref.sample) > 1e-8  # two iterations are not yet exact here
    assert torch.allclose(out[0].increments, out[1].increments, rtol=1e-9, atol=1e-15)
    assert out[0].critical_path == critical_path_model(coeffs.num_steps, K, 2, pipelined=out[0].method != "srds")


@pytest.mark.parametrize("method", METHODS)
def test_warm_start(method):
    """A warm start replaces the predictor; the taps before each block still come from the fine solves, so the
    answer is the exact sample whatever the guess."""
    coeffs, model, x_T, noise, ref = problem("unipc-bh2", 2)
    T = coeffs.num_steps
    for init in (ref.trajectory, torch.randn(T, *x_T.shape, dtype=torch.float64)):
        res = paratriton.solve(model, coeffs, x_T, noise, method=method, blocks=4, init=init, **TIGHT)
        assert res.converged and res.iterations <= 4 and res.critical_path <= T
        assert rms(res.sample, ref.sample) <= 1e-8
