"""SRDS (Parareal) on the analytic Gaussian mixture: exactness, the per-iteration exactness front, the latency
accounting, and argument checks. CPU, float64, small samples so that the whole file runs in well under a minute."""

from __future__ import annotations

import math

import pytest
import torch

import paratriton
from paratriton.solvers.srds import (
    SRDS,
    SRDSPipelined,
    SRDSResult,
    allowed_blocks,
    build_schedule,
    coarse_coefficients,
    critical_path_model,
    default_blocks,
)
from paratriton.testing import GaussianMixture
from paratriton.testing.gaussian_mixture import default_schedule

METHODS = ("srds", "srds_pipelined")


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).square().mean().sqrt().item()


def problem(T: int, eta: float, batch: int = 2, seed: int = 0, coeffs=None):
    coeffs = default_schedule(T, eta=eta) if coeffs is None else coeffs
    gm = GaussianMixture.random((2, 3), num_components=3, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    x_T = torch.randn(batch, 2, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(T, batch, 2, 3, generator=g, dtype=torch.float64)
    model = gm.denoiser(coeffs)
    ref = paratriton.solve(model, coeffs, x_T, noise, method="sequential")
    return coeffs, model, x_T, noise, ref


class CountingModel:
    """Wraps a denoiser and records the rows of every call."""

    def __init__(self, model):
        self.model, self.rows = model, []

    def __call__(self, x, step_index):
        self.rows.append(x.shape[0])
        return self.model(x, step_index)


# --- exactness -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eta", [0.0, 1.0], ids=["ddim", "ddpm"])
@pytest.mark.parametrize("T,blocks", [(16, 2), (16, 4), (16, 8), (25, 5), (100, 4), (100, 10), (100, 25)])
@pytest.mark.parametrize("method", METHODS)
def test_matches_sequential(method, T, blocks, eta):
    coeffs, model, x_T, noise, ref = problem(T, eta)
    res = paratriton.solve(model, coeffs, x_T, noise, method=method, blocks=blocks, tol_abs=1e-10, tol_rel=1e-10)
    assert isinstance(res, SRDSResult) and res.method in (method, method + "(pipelined)") and res.blocks == blocks
    assert res.converged and 1 <= res.iterations <= blocks
    assert rms(res.sample, ref.sample) <= 1e-8
    assert res.sample.shape == x_T.shape and res.trajectory.shape == (T + 1, *x_T.shape)
    # the accounting is the closed form of the schedule it ran, and never more sequential calls than T
    assert res.critical_path == critical_path_model(T, blocks, res.iterations, pipelined=res.method != "srds")
    assert res.critical_path <= T


@pytest.mark.parametrize("sched", ["ddpm", "ddim-sd-v", "flow"])
@pytest.mark.parametrize("method", METHODS)
def test_diffusers_schedulers(method, sched):
    diffusers = pytest.importorskip("diffusers")
    if sched == "ddpm":
        coeffs = paratriton.coefficients_from_scheduler(diffusers.DDPMScheduler(clip_sample=False), 25)
    elif sched == "ddim-sd-v":  # SD-2-like: v-prediction, no final alpha = 1, trailing spacing
        s = diffusers.DDIMScheduler(
            clip_sample=False,
            prediction_type="v_prediction",
            set_alpha_to_one=False,
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            timestep_spacing="trailing",
        )
        coeffs = paratriton.coefficients_from_scheduler(s, 25, eta=0.0)
    else:
        coeffs = paratriton.coefficients_from_scheduler(diffusers.FlowMatchEulerDiscreteScheduler(), 25)
    coeffs, model, x_T, noise, ref = problem(25, 1.0, coeffs=coeffs)
    res = paratriton.solve(model, coeffs, x_T, noise, method=method, blocks=5, tol_abs=1e-10, tol_rel=1e-10)
    assert res.converged and res.iterations <= 5 and rms(res.sample, ref.sample) <= 1e-8


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("eta", [0.0, 1.0], ids=["ddim", "ddpm"])
def test_exact_front_after_each_iteration(method, eta):
    """After p iterations the states from boundary K-p up (blocks K-1 .. K-p and the start of block K-p-1) are
    the sequential ones, and the next boundary is not (so the property is sharp, not vacuous)."""
    T, K = 24, 6
    S = T // K
    coeffs, model, x_T, noise, ref = problem(T, eta)
    seen = []

    def cb(info):
        p = info.iteration
        assert info.frozen_from == (K - p) * S
        exact = rms(info.trajectory[(K - p) * S :], ref.trajectory[(K - p) * S :])
        assert exact <= 1e-12, (p, exact)
        # plain: boundary K-p-1 is still an estimate (exact states agree to the last bit, so any difference
        # counts); pipelined callbacks see the wavefront, where boundaries of later iterations already exist
        if p < K and method == "srds":
            assert rms(info.trajectory[(K - p - 1) * S], ref.trajectory[(K - p - 1) * S]) > 1e-15
        seen.append(p)

    # a tolerance no increment can meet before the end: run all K iterations (the plain schedule: 2, the most
    # whose worst case stays within T sequential calls, so that it runs as plain)
    P = 2 if method == "srds" else K
    res = paratriton.solve(
        model, coeffs, x_T, noise, method=method, blocks=K, tol_abs=1e-300, tol_rel=1e-300, callback=cb, max_iters=P
    )
    assert res.method == method and seen == list(range(1, P + 1)) and res.iterations == P
    if P == K:
        assert res.converged and rms(res.trajectory, ref.trajectory) <= 1e-12  # at p = K all is exact
    assert res.critical_path == critical_path_model(T, K, P, pipelined=method != "srds") <= T


@pytest.mark.parametrize("eta", [0.0, 1.0], ids=["ddim", "ddpm"])
def test_coarse_step_is_one_big_jump(eta):
    """Freezing x0_hat over a block composes the steps into the sampler's single jump from the block's first
    timestep to its last: DDIM's big step (eta 0) and the big DDPM posterior step (eta 1), i.e.
    ``x_l = alpha_l x0_hat + sqrt(sigma_l^2 - std^2) eps_hat`` with ``std^2 = eta^2 sigma_l^2 / sigma_h^2 (1 -
    abar_h / abar_l)``, so ``A = alpha_l / alpha_h`` and ``B = sqrt(sigma_l^2 - std^2) - alpha_l sigma_h / alpha_h``."""
    T, K = 100, 10
    S = T // K
    coeffs = default_schedule(T, eta=eta)
    A, Bc = coarse_coefficients(coeffs, K)
    al, sg = coeffs.signal_scale, coeffs.noise_scale  # levels of each step's input x_{i+1}
    for q in range(K):
        ah, sh = al[(q + 1) * S - 1], sg[(q + 1) * S - 1]
        # the block ends at x_{qS}: the input level of step qS-1, or clean (abar = 1) after the last step
        a_l, s_l = (al[q * S - 1], sg[q * S - 1]) if q > 0 else (torch.tensor(1.0).double(), torch.tensor(0.0).double())
        std2 = eta**2 * s_l**2 / sh**2 * (1 - ah**2 / a_l**2)
        a_ref = a_l / ah
        b_ref = (s_l**2 - std2).clamp_min(0).sqrt() - a_l * sh / ah
        assert abs(A[q] - a_ref) <= 1e-12 * a_ref, (q, A[q], a_ref)
        assert abs(Bc[q] - b_ref) <= 1e-10 * abs(b_ref) + 1e-13, (q, Bc[q], b_ref)


def test_plain_and_pipelined_same_iterates():
    """The two schedules perform the same arithmetic: after the same number of iterations they agree."""
    coeffs, model, x_T, noise, ref = problem(25, 1.0)
    out = [
        paratriton.solve(model, coeffs, x_T, noise, method=m, blocks=5, max_iters=2, tol_abs=1e-300, tol_rel=1e-300)
        for m in METHODS
    ]
    assert all(r.iterations == 2 and not r.converged for r in out)
    assert rms(out[0].sample, out[1].sample) <= 1e-13
    assert rms(out[0].sample, ref.sample) > 1e-8  # two iterations of five are not yet exact here
    assert torch.allclose(out[0].increments, out[1].increments, rtol=1e-9, atol=1e-15)


# --- latency accounting ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("pipelined", [False, True])
def test_schedule_closed_forms(pipelined):
    for T in (4, 12, 16, 30, 36):
        for K in allowed_blocks(T):
            if K == T:  # one-step blocks stop after one iteration (G = F)
                continue
            for P in range(1, K + 1):
                rounds = build_schedule(K, T // K, P, pipelined=pipelined)
                assert len(rounds) == critical_path_model(T, K, P, pipelined=pipelined), (T, K, P)
                # every evaluation is a distinct (block, iteration, fine step) and steps stay inside the block
                rows = [r for rd in rounds for r in rd.rows]
                assert len(rows) == len(set(rows)) and all(0 <= j < T // K for _, _, j in rows)
            if pipelined:
                assert len(build_schedule(K, T // K, K, pipelined=True)) == T  # never slower than sequential


@pytest.mark.parametrize("method", METHODS)
def test_counts_are_honest(method):
    """critical_path is the number of model calls actually made and nfe the rows per trajectory they held; the
    plain schedule batches every unfinished block's fine step into one call."""
    T, K, B = 16, 4, 3
    S = T // K
    coeffs, model, x_T, noise, ref = problem(T, 0.0, batch=B)
    cm = CountingModel(model)
    P = 2 if method == "srds" else K  # plain: the most iterations whose worst case stays within T calls
    res = paratriton.solve(cm, coeffs, x_T, noise, method=method, blocks=K, tol_abs=1e-300, tol_rel=1e-300, max_iters=P)
    assert res.critical_path == len(cm.rows) == len(res.rows_per_call) <= T
    assert res.nfe * B == sum(cm.rows) and [r * B for r in res.rows_per_call] == cm.rows
    if method == "srds":
        assert res.method == "srds"
        # predictor: K single-block calls; iteration 1: S-1 calls with all K blocks, then a sweep of K-1
        assert res.rows_per_call[:K] == [1] * K
        assert res.rows_per_call[K : K + S - 1] == [K] * (S - 1)
        assert res.rows_per_call[K + S - 1 : 2 * K + S - 2] == [1] * (K - 1)
        assert res.nfe == K + sum((S - 1) * (K - p + 1) + (K - p) for p in range(1, P + 1))
    else:
        assert res.critical_path == T and res.max_rows_per_call > 1


def test_one_step_blocks_and_one_block():
    coeffs, model, x_T, noise, ref = problem(16, 1.0)
    for K in (1, 16):
        for m in METHODS:
            res = paratriton.solve(model, coeffs, x_T, noise, method=m, blocks=K, tol_abs=1e-10, tol_rel=1e-10)
            assert res.iterations == 1 and res.converged and res.critical_path == 16
            assert rms(res.sample, ref.sample) <= 1e-12


# --- stopping, options, warm start -------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_stopping_rule_units_and_callback(method):
    coeffs, model, x_T, noise, ref = problem(100, 0.0)
    tol = 1e-4
    samples = []
    res = paratriton.solve(
        model,
        coeffs,
        x_T,
        noise,
        method=method,
        blocks=10,
        tol_abs=tol,
        tol_rel=tol,
        callback=lambda info: samples.append(info.sample.clone()),
    )
    thr = max(tol, tol * coeffs.posterior_std[0].item())
    assert res.converged and res.iterations < 10  # the test stopped it before the exact end
    assert res.increments.shape == (res.iterations,) and res.increments[-1] <= thr
    assert (res.increments[:-1] > thr).all()
    assert len(samples) == res.iterations and torch.equal(samples[-1], res.sample)
    # the stopping statistic is exactly the RMS per element of the sample's last change (max over the batch)
    last = max(rms(samples[-1][i], samples[-2][i]) for i in range(x_T.shape[0]))
    assert math.isclose(last, res.increments[-1].item(), rel_tol=1e-12)
    assert rms(res.sample, ref.sample) <= 10 * tol
    assert res.residuals.shape == (res.iterations, 100)
    boundary = res.residuals[:, ::10]  # boundary steps qS carry the corrections, the rest is NaN
    assert torch.isfinite(boundary[0]).all() and torch.isnan(res.residuals[:, 1]).all()


@pytest.mark.parametrize("method", METHODS)
def test_max_iters(method):
    coeffs, model, x_T, noise, ref = problem(25, 0.0)
    res = paratriton.solve(
        model, coeffs, x_T, noise, method=method, blocks=5, max_iters=1, tol_abs=1e-12, tol_rel=1e-12
    )
    assert res.iterations == 1 and not res.converged
    assert res.critical_path == critical_path_model(25, 5, 1, pipelined=method != "srds")
    assert res.critical_path == (13 if method == "srds" else 9)
    big = paratriton.solve(
        model, coeffs, x_T, noise, method=method, blocks=5, max_iters=50, tol_abs=1e-300, tol_rel=1e-300
    )
    assert big.iterations == 5 and big.converged  # never more than K iterations


@pytest.mark.parametrize("method", METHODS)
def test_warm_start(method):
    coeffs, model, x_T, noise, ref = problem(25, 1.0)
    exact = paratriton.solve(
        model, coeffs, x_T, noise, method=method, blocks=5, init=ref.trajectory, tol_abs=1e-10, tol_rel=1e-10
    )
    assert exact.iterations == 1 and exact.converged and rms(exact.sample, ref.sample) <= 1e-12
    if method == "srds":  # the predictor is one batched call instead of K sequential ones
        assert exact.rows_per_call[0] == 5 and exact.critical_path == 1 + 4 + 4
    junk = torch.randn(25, *x_T.shape, dtype=torch.float64)
    res = paratriton.solve(model, coeffs, x_T, noise, method=method, blocks=5, init=junk, tol_abs=1e-10, tol_rel=1e-10)
    assert res.converged and res.iterations <= 5 and rms(res.sample, ref.sample) <= 1e-8


def test_float32_state():
    coeffs, model, x_T, noise, ref = problem(25, 0.0)
    res = paratriton.solve(
        model,
        coeffs,
        x_T,
        noise,
        method="srds_pipelined",
        blocks=5,
        tol_abs=1e-5,
        tol_rel=1e-5,
        state_dtype=torch.float32,
    )
    assert res.sample.dtype == torch.float32 and rms(res.sample.double(), ref.sample) <= 1e-4


def test_default_blocks():
    assert [default_blocks(n) for n in (16, 25, 50, 100, 1000, 17)] == [4, 5, 5, 10, 25, 1]
    coeffs, model, x_T, noise, ref = problem(16, 0.0)
    assert SRDS().solve(model, coeffs, x_T, noise).blocks == 4


# --- errors ------------------------------------------------------------------------------------------------------
def test_validation():
    coeffs, model, x_T, noise, ref = problem(16, 0.0)
    with pytest.raises(ValueError, match=r"blocks must divide .*T=16.*\[1, 2, 4, 8, 16\].*got 3"):
        paratriton.solve(model, coeffs, x_T, noise, method="srds", blocks=3)
    with pytest.raises(ValueError, match=r"blocks must divide"):
        paratriton.solve(model, coeffs, x_T, noise, method="srds_pipelined", blocks=32)
    with pytest.raises(ValueError, match="blocks must be >= 1"):
        SRDS(blocks=0)
    with pytest.raises(TypeError, match="blocks must be an int"):
        SRDS(blocks=2.5)
    for bad in (0.0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tol_abs"):
            SRDS(tol_abs=bad)
        with pytest.raises(ValueError, match="tol_rel"):
            SRDSPipelined(tol_rel=bad)
    with pytest.raises(ValueError, match="max_iters must be >= 1"):
        SRDS(max_iters=0)
    with pytest.raises(ValueError, match="state_dtype"):
        SRDS(state_dtype=torch.float16)
    with pytest.raises(TypeError, match="method='srds'"):
        paratriton.solve(model, coeffs, x_T, noise, method="srds", window=4)
    with pytest.raises(ValueError, match="noise"):
        stoch = default_schedule(16, eta=1.0)
        paratriton.solve(model, stoch, x_T, None, method="srds")


@pytest.mark.parametrize("method", METHODS)
def test_nonfinite_model_output(method):
    coeffs, model, x_T, noise, ref = problem(16, 0.0)

    def broken(x, step_index):
        out = model(x, step_index)
        return torch.where((step_index == 6).view(-1, 1, 1), torch.full_like(out, float("nan")), out)

    with pytest.raises(paratriton.NonFiniteError, match=r"step 6 \(iteration \d+\)"):
        paratriton.solve(broken, coeffs, x_T, noise, method=method, blocks=4, tol_abs=1e-10, tol_rel=1e-10)


def test_benchmark_hook():
    from paratriton.solvers.srds import srds_benchmark

    (row,) = srds_benchmark((16,), tol=1e-4, batch=1)
    assert row["K"] == 4 and 1 <= row["P"] <= 4 and len(row["err_per_iter"].split()) == row["P"]
    assert row["calls_plain"] == critical_path_model(16, 4, row["P"], pipelined=False)
    assert row["plain_ran_as"] in ("srds", "srds(pipelined)")
    assert row["calls_pipe"] == critical_path_model(16, 4, row["P"], pipelined=True) <= 16
