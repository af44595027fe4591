"""pytest-benchmark suite of the solver ops (issue 4). Needs CUDA; skipped otherwise.

    python3 -m pytest benchmarks/test_bench_ops.py --benchmark-enable [--benchmark-json out.json]

Each benchmark synchronises inside the timed function (pytest-benchmark times with the host clock) and records
the op's minimum traffic and the resulting GB/s in ``extra_info``. The roofline table of issue 4 comes from
``bench_kernels.py``; this suite is the per-op regression check.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("the kernel benchmarks need a CUDA device", allow_module_level=True)
if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    # the interpreter on these shapes takes hours and measures nothing (tests/ops never sets it on a CUDA machine)
    pytest.skip("TRITON_INTERPRET is set: the benchmarks time the compiled kernels only", allow_module_level=True)

import paratriton.ops  # noqa: E402,F401  (registers torch.ops.paratriton.*)

ops = torch.ops.paratriton
SHAPES = [(32, 65536), (100, 65536), (100, 262144)]
HISTORY = [2, 5]


def _data(W: int, D: int, m: int, B: int = 1):
    g = torch.Generator(device="cuda").manual_seed(0)
    rn = lambda *s, dt=torch.float64: torch.randn(*s, generator=g, device="cuda", dtype=dt)  # noqa: E731
    M = m + 1
    d = dict(
        x=rn(W + 1, B, D),
        mo=rn(W, B, D, dt=torch.float16),
        xi=rn(W, B, D),
        a=1 + 0.05 * torch.rand(W, device="cuda", dtype=torch.float64),
        b=-0.1 * torch.rand(W, device="cuda", dtype=torch.float64),
        c=0.1 * torch.rand(W, device="cuda", dtype=torch.float64),
        thr=torch.full((W,), 1e-3, device="cuda", dtype=torch.float64),
        hR=rn(M, W, B, D),
        hY=rn(M, W, B, D),
        num_cols=torch.full((W,), m, device="cuda"),
    )
    return d


def _run(benchmark, fn, nbytes: int) -> None:
    def timed():
        fn()
        torch.cuda.synchronize()

    for _ in range(3):  # compile and warm up outside the timed rounds
        timed()
    benchmark.pedantic(timed, rounds=30, iterations=1, warmup_rounds=2)
    benchmark.extra_info["min_bytes"] = nbytes
    if benchmark.stats is not None:
        benchmark.extra_info["GBps_at_median"] = nbytes / benchmark.stats.stats.median / 1e9


@pytest.mark.parametrize("W,D", SHAPES)
def test_step_residual(benchmark, W, D):
    d = _data(W, D, 1)
    e = W * D
    _run(
        benchmark,
        lambda: ops.step_residual(d["x"], d["mo"], d["xi"], d["a"], d["b"], d["c"], d["thr"]),
        (W + 1) * D * 8 + e * 2 + e * 8 + e * 8,
    )


@pytest.mark.parametrize("W,D", SHAPES)
def test_order_k_residual(benchmark, W, D):
    r = torch.randn(W, 1, D, device="cuda", dtype=torch.float64)
    a = 1 + 0.05 * torch.rand(W, device="cuda", dtype=torch.float64)
    _run(benchmark, lambda: ops.order_k_residual(r, a, W, False), 2 * W * D * 8)


@pytest.mark.parametrize("m", HISTORY)
@pytest.mark.parametrize("W,D", SHAPES)
def test_taa_residual(benchmark, W, D, m):
    d = _data(W, D, m)
    e = W * D
    _run(
        benchmark,
        lambda: ops.taa_residual(
            d["x"], d["mo"], d["xi"], d["a"], d["b"], d["c"], d["thr"], d["hR"], d["hY"], 1, W, False
        ),
        (W + 1) * D * 8 + e * 2 + e * 8 + m * e * 8 + 2 * e * 8,
    )


@pytest.mark.parametrize("m", HISTORY)
@pytest.mark.parametrize("W,D", SHAPES)
def test_anderson_gram(benchmark, W, D, m):
    dR = torch.randn(m, W, 1, D, device="cuda", dtype=torch.float64)
    R = torch.randn(W, 1, D, device="cuda", dtype=torch.float64)
    _run(benchmark, lambda: ops.anderson_gram(dR, R), (m + 1) * W * D * 8)


@pytest.mark.parametrize("m", HISTORY)
def test_masked_lstsq(benchmark, m):
    W, B = 100, 4
    A = torch.randn(W, B, m, 2 * m, device="cuda", dtype=torch.float64)
    G, h = A @ A.transpose(-1, -2), torch.randn(W, B, m, device="cuda", dtype=torch.float64)
    nc = torch.full((W,), m, device="cuda")
    _run(benchmark, lambda: ops.masked_lstsq(G, h, nc, 1e-3, 1e-30), (G.numel() + 2 * h.numel()) * 8)


@pytest.mark.parametrize("m", HISTORY)
@pytest.mark.parametrize("W,D", SHAPES)
def test_taa_update(benchmark, W, D, m):
    d = _data(W, D, m)
    gamma = 0.1 * torch.randn(W, 1, m, device="cuda", dtype=torch.float64)
    _run(benchmark, lambda: ops.taa_update(d["x"][:-1], d["hY"], gamma, 1), (m + 1) * W * D * 8 + W * D * 8)


@pytest.mark.parametrize("m", HISTORY)
@pytest.mark.parametrize("W,D", SHAPES)
def test_anderson_update(benchmark, W, D, m):
    x, R = (torch.randn(W, 1, D, device="cuda", dtype=torch.float64) for _ in range(2))
    dX, dR = (torch.randn(m, W, 1, D, device="cuda", dtype=torch.float64) for _ in range(2))
    gamma = torch.randn(W, 1, m, device="cuda", dtype=torch.float64)
    _run(benchmark, lambda: ops.anderson_update(x, R, dX, dR, gamma), (2 * m + 3) * W * D * 8)


@pytest.mark.parametrize("W,D", SHAPES)
@pytest.mark.parametrize("taps", [2, 3])
@pytest.mark.parametrize("impl", ["fused", "naive"])
def test_multistep_drift(benchmark, W, D, taps, impl):
    """The k-tap drift and ring update of a multistep window (fp16 tap outputs, float32 state): one pass."""
    from paratriton.ops.multistep_drift import naive

    g = torch.Generator(device="cuda").manual_seed(0)
    M = torch.randn(W, 1, D, generator=g, device="cuda", dtype=torch.float16)
    ring = torch.zeros(W, 1, D, device="cuda", dtype=torch.float32)
    w = torch.randn(W, taps, generator=g, device="cuda", dtype=torch.float32)
    lo = torch.zeros((), dtype=torch.long, device="cuda")
    anchor = torch.full((), W, dtype=torch.long, device="cuda")
    fn = ops.multistep_drift if impl == "fused" else naive.multistep_drift
    # read M, write the ring, write g (the stencil's other taps hit the tiles just read)
    _run(benchmark, lambda: fn(M, ring, w, lo, anchor), W * D * (2 + 4 + 4))
