"""pytest-benchmark suite of the ops the engine runs on CUDA (``solvers/rules.py`` ``KERNELS``: the window ops,
``masked_lstsq``, ``multistep_drift``), called as ``paratriton.ops.<op>``. Needs CUDA; skipped otherwise.

    python3 -m pytest benchmarks/test_bench_ops.py --benchmark-enable [--benchmark-json out.json]

Each benchmark synchronises inside the timed function (pytest-benchmark times with the host clock) and records
the op's minimum traffic and the resulting GB/s in ``extra_info``. The window is the worst case: every step live
(``top = lo + W - 1``), float64 state, fp16 model output, order W. Graphed per-op timings and a whole TAA iteration
come from ``bench_window_ops.py``; this suite is the per-op regression check.
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

from paratriton import ops  # noqa: E402

SHAPES = [(32, 65536), (100, 65536), (100, 262144)]
HISTORY = [2, 5]


def _data(W: int, D: int, m: int, B: int = 1):
    """A window of W live steps at the top of a T = W + 1 step trajectory (lo = 1, top = W, anchor = W + 1)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    rn = lambda *s, dt=torch.float64: torch.randn(*s, generator=g, device="cuda", dtype=dt)  # noqa: E731
    T, M = W + 1, m + 1
    return dict(
        x=rn(T + 1, B, D),
        mo=rn(W, B, D, dt=torch.float16),
        xi=rn(T, B, D),
        a=1 + 0.05 * torch.rand(T, device="cuda", dtype=torch.float64),
        b=-0.1 * torch.rand(T, device="cuda", dtype=torch.float64),
        c=0.1 * torch.rand(T, device="cuda", dtype=torch.float64),
        thr=torch.full((T,), 1e-3, device="cuda", dtype=torch.float64),
        hR=rn(M, T, B, D),
        hY=rn(M, T, B, D),
        lo=torch.tensor(1, device="cuda"),
        top=torch.tensor(W, device="cuda"),
        anchor=torch.tensor(W + 1, device="cuda"),
        slot=torch.zeros((), dtype=torch.long, device="cuda"),
    )


def _inputs_bytes(W: int, D: int) -> int:
    """One read of the window's states (W + 1 rows), fp16 model outputs and noise (W rows each)."""
    return (W + 1) * D * 8 + W * D * 2 + W * D * 8


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
def test_window_residual(benchmark, W, D):
    d = _data(W, D, 1)
    args = (d["x"], d["mo"], d["xi"], d["a"], d["b"], d["c"], d["thr"], d["lo"], d["anchor"])
    _run(benchmark, lambda: ops.window_residual(*args), _inputs_bytes(W, D))


@pytest.mark.parametrize("W,D", SHAPES)
def test_window_fixed_point(benchmark, W, D):
    d = _data(W, D, 1)
    args = (d["x"], d["mo"], d["xi"], d["a"], d["b"], d["c"], d["lo"], d["top"], W, False)
    _run(benchmark, lambda: ops.window_fixed_point(*args), _inputs_bytes(W, D) + W * D * 8)


@pytest.mark.parametrize("impl", ["fused", "naive"])
@pytest.mark.parametrize("W,D", [(100, 64), *SHAPES])
def test_window_gains(benchmark, W, D, impl):
    """The fused gains (two launches) against the reference's few dozen small ops; (100, 64) is a policy chunk,
    where the launches, not the traffic, set the time."""
    d = _data(W, D, 1)
    T = W + 1
    xin, prev = d["x"][2:], d["x"][1:].clone()  # the window's inputs and every step's previous one
    fn = ops.window_gains if impl == "fused" else ops.window_gains.naive.window_gains
    z = lambda dt=torch.float64: torch.zeros(T, device="cuda", dtype=dt)  # noqa: E731
    args = (xin, d["mo"], prev[:T], d["xi"].clone(), d["a"], d["b"], z(), d["a"], z() + 1, z(), z(torch.bool).eq(0),
            torch.tensor(1e-5, device="cuda", dtype=torch.float64), d["lo"], d["anchor"], 16.0, 4.0, True)  # fmt: skip
    # reads the window's inputs, terms and previous values, writes the previous values
    _run(benchmark, lambda: fn(*args), W * D * (8 + 2 + 8 + 8) + 2 * W * D * 8)


@pytest.mark.parametrize("impl", ["fused", "naive"])
@pytest.mark.parametrize("W,B", [(100, 1), (100, 16), (1000, 4)])
def test_window_track(benchmark, W, B, impl):
    """The per-step tracking and the sample test (one launch) against the reference's two dozen small ops: the
    launches set the time at every engine shape."""
    T = W
    rn = lambda *s: torch.rand(*s, device="cuda", dtype=torch.float64)  # noqa: E731
    i64 = lambda v: torch.tensor(v, device="cuda")  # noqa: E731
    args = (rn(W, B), rn(T, B), rn(T), torch.zeros(T, dtype=torch.long, device="cuda"), rn(T) + 1, rn(T) * 0,
            i64(W // 2), i64(0), i64(T), 1e-3)  # fmt: skip
    fn = ops.window_track if impl == "fused" else ops.window_track.naive.window_track
    _run(benchmark, lambda: fn(*args), (2 * W * B + T * B + 4 * T) * 8)


@pytest.mark.parametrize("impl", ["fused", "naive"])
@pytest.mark.parametrize("W,B", [(100, 1), (100, 16), (1000, 4)])
def test_window_close(benchmark, W, B, impl):
    """The end of an iteration (log, reopen check, new anchor: one launch) against the reference's sixteen ops."""
    T = W
    i64 = lambda v: torch.tensor(v, device="cuda")  # noqa: E731
    args = (torch.rand(W, device="cuda", dtype=torch.float64), torch.rand(T, B, device="cuda", dtype=torch.float64),
            torch.ones(T, device="cuda", dtype=torch.float64), torch.zeros(4, dtype=torch.long, device="cuda"),
            torch.zeros(4, T, device="cuda", dtype=torch.float64), i64(0), i64(T), i64(0),
            torch.tensor(False, device="cuda"), i64(0), True)  # fmt: skip
    fn = ops.window_close if impl == "fused" else ops.window_close.naive.window_close
    _run(benchmark, lambda: (fn(*args), args[5].zero_(), args[6].fill_(T)), (W + T * B + T) * 8)


@pytest.mark.parametrize("impl", ["fused", "naive"])
@pytest.mark.parametrize("T", [16, 100, 1000])
def test_thresholds(benchmark, T, impl):
    """An iteration's thresholds (one elementwise launch) against the reference's seven ops."""
    r = lambda: torch.rand(T, device="cuda", dtype=torch.float64)  # noqa: E731
    args = (r(), r() + 1, r() + 1, r() * 1e-4, torch.randint(0, 4, (T,), device="cuda"), 2, 4.0)
    fn = ops.thresholds if impl == "fused" else ops.thresholds.naive.thresholds
    _run(benchmark, lambda: fn(*args), T * 8 * 5 + T * 8)


@pytest.mark.parametrize("m", HISTORY)
@pytest.mark.parametrize("W,D", SHAPES)
def test_window_taa_push(benchmark, W, D, m):
    d = _data(W, D, m)
    args = (d["x"], d["mo"], d["xi"], d["a"], d["b"], d["c"], d["lo"], d["top"], d["hR"], d["hY"], d["slot"], W)
    # the inputs, the m older slots of R, and the new R and Y written
    _run(benchmark, lambda: ops.window_taa.push(*args, False), _inputs_bytes(W, D) + (m + 2) * W * D * 8)


@pytest.mark.parametrize("m", HISTORY)
def test_masked_lstsq(benchmark, m):
    W, B = 100, 4
    A = torch.randn(W, B, m, 2 * m, device="cuda", dtype=torch.float64)
    G, h = A @ A.transpose(-1, -2), torch.randn(W, B, m, device="cuda", dtype=torch.float64)
    nc = torch.full((W,), m, device="cuda")
    _run(benchmark, lambda: ops.masked_lstsq(G, h, nc, 1e-3, 1e-30), (G.numel() + 2 * h.numel()) * 8)


@pytest.mark.parametrize("m", HISTORY)
@pytest.mark.parametrize("W,D", SHAPES)
def test_window_taa_update(benchmark, W, D, m):
    d = _data(W, D, m)
    gamma = 0.1 * torch.randn(W, 1, m, device="cuda", dtype=torch.float64)  # nonzero: every older slot is read
    args = (d["x"], d["hY"], gamma, d["slot"], d["lo"], d["top"])
    _run(benchmark, lambda: ops.window_taa.update(*args), (m + 2) * W * D * 8)


@pytest.mark.parametrize("W,D", SHAPES)
@pytest.mark.parametrize("taps", [2, 3])
@pytest.mark.parametrize("impl", ["fused", "naive"])
def test_multistep_drift(benchmark, W, D, taps, impl):
    """The k-tap drift and ring update of a multistep window (fp16 tap outputs, float32 state): one pass."""
    g = torch.Generator(device="cuda").manual_seed(0)
    M = torch.randn(W, 1, D, generator=g, device="cuda", dtype=torch.float16)
    ring = torch.zeros(W, 1, D, device="cuda", dtype=torch.float32)
    w = torch.randn(W, taps, generator=g, device="cuda", dtype=torch.float32)
    lo = torch.zeros((), dtype=torch.long, device="cuda")
    anchor = torch.full((), W, dtype=torch.long, device="cuda")
    fn = ops.multistep_drift if impl == "fused" else ops.multistep_drift.naive.multistep_drift
    # read M, write the ring, write g (the stencil's other taps hit the tiles just read)
    _run(benchmark, lambda: fn(M, ring, w, lo, anchor), W * D * (2 + 4 + 4))
