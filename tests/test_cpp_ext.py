"""The compiled extension (paratriton._C, paratriton._C_cuda; LibTorch stable ABI): every C++ CPU kernel against the
float64 reference (awkward shapes, non-contiguous inputs, fp16/fp32 model outputs, float32 state), opcheck, proof
that the dispatcher runs the C++ kernel on CPU tensors, and a TAA solve through the ops equal to the reference solver.

CI (CI=true) builds the extension with `pip install -e .`, so there a missing extension is a failure, not a skip;
PARATRITON_REQUIRE_EXT=1 does the same elsewhere (benchmarks/abi_check.sh sets it).
"""

import os

import pytest
import torch

import paratriton as pt
from paratriton import _backends
from paratriton.ops.anderson_gram.naive import anderson_gram
from paratriton.ops.anderson_update.naive import anderson_update
from paratriton.ops.masked_lstsq.naive import masked_lstsq
from paratriton.ops.order_k_residual.naive import order_k_residual
from paratriton.ops.step_residual.naive import step_residual
from paratriton.ops.taa.naive import taa_residual, taa_update

ops = torch.ops.paratriton
REQUIRED = os.environ.get("CI", "").lower() in ("1", "true") or os.environ.get("PARATRITON_REQUIRE_EXT") == "1"


def test_extension_is_built_and_loaded():
    st = _backends.extension_status()
    if not st["loaded"] and not REQUIRED:
        pytest.skip(f"paratriton._C not in use: {st['reason']}")
    assert st["loaded"], st
    assert set(st["cpu"]) == set(_backends.OPS)
    assert all(v["cpu"] == "cpp" for v in pt.backends().values()), pt.backends()
    from paratriton import _C

    # one build for torch >= 2.10, whichever torch >= 2.10 it was compiled with (the stable ABI)
    assert _C.TORCH_TARGET == "2.10" and _C.API_VERSION == _backends.API_VERSION
    assert tuple(map(int, _C.BUILT_WITH_TORCH.split(".")[:2])) >= (2, 10)
    assert _C.__file__.endswith(".abi3.so"), _C.__file__  # one module for every CPython >= 3.11
    assert "stable ABI, torch >= 2.10" in st["abi"]


pytestmark_ext = pytest.mark.skipif(
    not _backends.extension_status()["loaded"] and not REQUIRED, reason="paratriton._C not built"
)


def rnd(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def noncontig(t):
    """Same values, last dim strided by 2 (exercises the copy path) when t has D > 1; on t's device."""
    big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    big[..., ::2] = t
    return big[..., ::2]


def sliced(t, extra=2):
    """Same values as a slice along dim 0 of a larger tensor (strided rows, contiguous D: the solver's layout); on
    t's device."""
    big = torch.zeros(t.shape[0] + extra, *t.shape[1:], dtype=t.dtype, device=t.device)
    big[1 : 1 + t.shape[0]] = t
    return big[1 : 1 + t.shape[0]]


def f64(t):
    return None if t is None else t.to(torch.float64)


def close(got, ref, dtype):
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    torch.testing.assert_close(got.to(torch.float64), ref.to(torch.float64), **tol)


# (n, B, D): window n=1, D=1, D not a multiple of any vector width, D over the 512/1024-element chunks, B > 1
SHAPES = [(1, 1, 1), (1, 3, 5), (4, 2, 7), (7, 3, 37), (5, 2, 1100)]
STATE = [torch.float64, torch.float32]


def window(n, B, D, dtype=torch.float64, model=torch.float64, seed=0, noise=True):
    x = rnd(n + 1, B, D, seed=seed, dtype=dtype)
    mo = rnd(n, B, D, seed=seed + 1, dtype=model)
    xi = rnd(n, B, D, seed=seed + 2, dtype=dtype) if noise else None
    a = 1 + 0.1 * torch.rand(n, dtype=torch.float64)
    b, c = -torch.rand(n, dtype=torch.float64), torch.rand(n, dtype=torch.float64)
    thr = torch.full((n,), 1.0, dtype=torch.float64)
    return x, mo, xi, a, b, c, thr


@pytestmark_ext
@pytest.mark.parametrize("n,B,D", SHAPES)
@pytest.mark.parametrize("dtype", STATE)
@pytest.mark.parametrize("model", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_step_residual(n, B, D, dtype, model):
    for layout in (lambda t: t, sliced, noncontig):
        for noise in (True, False):
            x, mo, xi, a, b, c, thr = window(n, B, D, dtype, model, noise=noise)
            r, rms, top = ops.step_residual(layout(x), layout(mo), None if xi is None else layout(xi), a, b, c, thr)
            r0, rms0, top0 = step_residual(f64(x), f64(mo), f64(xi), a, b, c, thr)
            assert r.dtype == dtype and rms.dtype == dtype and top.dtype == torch.int64 and r.is_contiguous()
            close(r, r0, dtype)
            close(rms, rms0, dtype)
            assert top.item() == top0.item()


def test_step_residual_top_edge_cases():
    if not _backends.extension_status()["loaded"]:
        pytest.skip("paratriton._C not built")
    x, mo, xi, a, b, c, thr = window(6, 2, 9)
    for t in (0.0, 1e9):  # every step unconverged / every step converged
        thr_t = torch.full((6,), t, dtype=torch.float64)
        assert ops.step_residual(x, mo, xi, a, b, c, thr_t)[2].item() == step_residual(x, mo, xi, a, b, c, thr_t)[2]
    mo_nan = mo.clone()
    mo_nan[4, 1, 3] = float("nan")  # NaN RMS compares false, as in the reference
    assert ops.step_residual(x, mo_nan, xi, a, b, c, thr)[2].item() == step_residual(x, mo_nan, xi, a, b, c, thr)[2]


@pytestmark_ext
@pytest.mark.parametrize("n,B,D", SHAPES)
@pytest.mark.parametrize("dtype", STATE)
def test_order_k_residual(n, B, D, dtype):
    r = rnd(n, B, D, seed=3, dtype=dtype)
    a = 1 + 0.1 * torch.rand(n, dtype=torch.float64)
    for order in sorted({1, 2, 3, n, n + 4}):
        for unit in (False, True):
            for layout in (lambda t: t, sliced, noncontig):
                R = ops.order_k_residual(layout(r), a, order, unit)
                assert R.dtype == dtype
                close(R, order_k_residual(f64(r), a, order, unit), dtype)


@pytestmark_ext
@pytest.mark.parametrize("n,B,D", SHAPES)
@pytest.mark.parametrize("m", [1, 2, 4])
@pytest.mark.parametrize("dtype", STATE)
def test_anderson_gram(n, B, D, m, dtype):
    dR, R = rnd(m, n, B, D, seed=4, dtype=dtype), rnd(n, B, D, seed=5, dtype=dtype)
    G0, h0 = anderson_gram(f64(dR), f64(R))
    for layout in (lambda t: t, noncontig):
        G, h = ops.anderson_gram(layout(dR), layout(R))
        assert G.dtype == dtype and G.shape == (n, B, m, m) and h.shape == (n, B, m)
        close(G, G0, dtype)
        close(h, h0, dtype)
    G, h = ops.anderson_gram(dR.transpose(0, 1).contiguous().transpose(0, 1), sliced(R))  # strided history dim
    close(G, G0, dtype)


@pytestmark_ext
@pytest.mark.parametrize("n,B", [(1, 1), (4, 3), (9, 2)])
@pytest.mark.parametrize("m", [1, 2, 3, 5])
@pytest.mark.parametrize("dtype", STATE)
def test_masked_lstsq(n, B, m, dtype):
    A = rnd(n, B, m, 7, seed=6)
    G = (A @ A.transpose(-1, -2)).to(dtype)  # Gram-like (PSD), as the solver produces
    h = rnd(n, B, m, seed=7, dtype=dtype)
    num_cols = torch.randint(0, m + 1, (n,))
    num_cols[0] = m
    for nc in (num_cols, num_cols.to(torch.int32), torch.full((n,), m + 2)):  # num_cols > m: all columns
        for ridge in (1e-3, 0.5):
            got = ops.masked_lstsq(G, h, nc, ridge, 1e-30)
            ref = masked_lstsq(f64(G), f64(h), nc.long(), ridge, 1e-30)
            assert got.dtype == dtype
            tol = dict(rtol=1e-9, atol=1e-11) if dtype == torch.float64 else dict(rtol=2e-3, atol=2e-4)
            torch.testing.assert_close(got.double(), ref, **tol)
    got = ops.masked_lstsq(G.transpose(-1, -2), h, num_cols, 1e-3, 1e-30)  # non-contiguous (symmetric: same)
    torch.testing.assert_close(
        got.double(),
        masked_lstsq(f64(G), f64(h), num_cols, 1e-3, 1e-30),
        rtol=1e-3 if dtype == torch.float32 else 1e-9,
        atol=1e-4,
    )


@pytestmark_ext
@pytest.mark.parametrize("n,B,D", SHAPES)
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("dtype", STATE)
def test_anderson_update(n, B, D, m, dtype):
    x, R = rnd(n, B, D, seed=8, dtype=dtype), rnd(n, B, D, seed=9, dtype=dtype)
    dX, dR = rnd(m, n, B, D, seed=10, dtype=dtype), rnd(m, n, B, D, seed=11, dtype=dtype)
    gamma = rnd(n, B, m, seed=12, dtype=dtype)
    ref = anderson_update(f64(x), f64(R), f64(dX), f64(dR), f64(gamma))
    for layout in (lambda t: t, noncontig):
        out = ops.anderson_update(layout(x), sliced(R), layout(dX), dR, gamma)
        assert out.dtype == dtype
        close(out, ref, dtype)


@pytestmark_ext
@pytest.mark.parametrize("n,B,D", SHAPES)
@pytest.mark.parametrize("M", [1, 2, 4])
@pytest.mark.parametrize("dtype", STATE)
def test_taa_ring_ops(n, B, D, M, dtype):
    x, mo, xi, a, b, c, thr = window(n, B, D, dtype, torch.float16)
    T = n + 3  # the solver passes hist[:, lo:lo + n] slices of a [M, T, B, D] ring
    for slot in range(M):
        for order in sorted({1, n}):
            hR, hY = rnd(M, T, B, D, seed=13, dtype=dtype), rnd(M, T, B, D, seed=14, dtype=dtype)
            hR0, hY0 = f64(hR[:, 1 : 1 + n]).clone(), f64(hY[:, 1 : 1 + n]).clone()
            rms, top, G, h = ops.taa_residual(
                x, mo, xi, a, b, c, thr, hR[:, 1 : 1 + n], hY[:, 1 : 1 + n], slot, order, False
            )
            rms0, top0, G0, h0 = taa_residual(f64(x), f64(mo), f64(xi), a, b, c, thr, hR0, hY0, slot, order)
            close(rms, rms0, dtype)
            assert top.item() == top0.item()
            close(hR[:, 1 : 1 + n], hR0, dtype)
            close(hY[:, 1 : 1 + n], hY0, dtype)
            assert G.shape == G0.shape == (n, B, M - 1, M - 1)
            if M > 1:
                close(G, G0, dtype)
                close(h, h0, dtype)
            gamma = rnd(n, B, M - 1, seed=15, dtype=dtype)
            xs = sliced(rnd(n, B, D, seed=16, dtype=dtype))
            ops.taa_update(xs, hY[:, 1 : 1 + n], gamma, slot)
            x0 = torch.empty(n, B, D, dtype=torch.float64)
            taa_update(x0, hY0, f64(gamma), slot)
            close(xs, x0, dtype)
    # a mutated argument whose last dim is strided goes through a copy and is written back
    hR, hY = noncontig(rnd(M, n, B, D, seed=17, dtype=dtype)), noncontig(rnd(M, n, B, D, seed=18, dtype=dtype))
    hR0, hY0 = f64(hR).clone(), f64(hY).clone()
    ops.taa_residual(x, mo, xi, a, b, c, thr, hR, hY, 0, n, True)
    taa_residual(f64(x), f64(mo), f64(xi), a, b, c, thr, hR0, hY0, 0, n, True)
    close(hY, hY0, dtype)


@pytestmark_ext
def test_parallel_split_matches_serial():
    """Same result with 1 and 2 threads (the conftest pins 1; the ops split rows over threads)."""
    x, mo, xi, a, b, c, thr = window(16, 4, 3000, model=torch.float32)
    dR = rnd(3, 16, 4, 3000, seed=20)
    prev = torch.get_num_threads()
    outs = []
    for nt in (1, 2):
        torch.set_num_threads(nt)
        try:
            outs.append(
                (
                    ops.step_residual(x, mo, xi, a, b, c, thr),
                    ops.anderson_gram(dR, x[:-1]),
                    ops.order_k_residual(x[:-1], a, 5, False),
                )
            )
        finally:
            torch.set_num_threads(prev)
    for u, v in zip(outs[0], outs[1]):
        for s, t in zip(u if isinstance(u, tuple) else (u,), v if isinstance(v, tuple) else (v,)):
            torch.testing.assert_close(s, t, rtol=1e-12, atol=1e-12)


@pytestmark_ext
def test_dispatch_runs_the_cpp_kernels():
    _backends.call_counts(reset=True)
    x, mo, xi, a, b, c, thr = window(3, 2, 5)
    r, _, _ = ops.step_residual(x, mo, xi, a, b, c, thr)
    ops.order_k_residual(r, a, 2)
    ops.anderson_gram(rnd(2, 3, 2, 5), r)
    ops.masked_lstsq(torch.eye(2, dtype=torch.float64).repeat(3, 2, 1, 1), rnd(3, 2, 2), torch.tensor([0, 1, 2]))
    ops.anderson_update(r, r, rnd(2, 3, 2, 5), rnd(2, 3, 2, 5), rnd(3, 2, 2))
    hR, hY = rnd(3, 3, 2, 5), rnd(3, 3, 2, 5)
    ops.taa_residual(x, mo, xi, a, b, c, thr, hR, hY, 1, 3)
    ops.taa_update(r, hY, rnd(3, 2, 2), 1)
    assert _backends.call_counts()["cpu"] == {op: 1 for op in _backends.OPS}
    # dropping the extension hands CPU tensors back to the Python reference, and back again
    _backends.use_extension(False)
    try:
        assert all(v["cpu"] == "torch" for v in pt.backends().values())
        ops.order_k_residual(r, a, 2)
        assert _backends.call_counts()["cpu"]["order_k_residual"] == 1
    finally:
        _backends.use_extension(True)
    assert all(v["cpu"] == "cpp" for v in pt.backends().values())
    ops.order_k_residual(r, a, 2)
    assert _backends.call_counts()["cpu"]["order_k_residual"] == 2


@pytestmark_ext
def test_opcheck_every_cpp_op():
    n, B, D, M = 4, 2, 7, 3
    m = M - 1
    x, mo, xi, a, b, c, thr = window(n, B, D, model=torch.float16)
    x32, mo32, xi32, *_ = window(n, B, D, torch.float32, torch.float32)
    hR, hY = rnd(M, n, B, D, seed=30), rnd(M, n, B, D, seed=31)
    G = rnd(n, B, m, 5, seed=32)
    G = G @ G.transpose(-1, -2)
    cases = [
        (ops.step_residual, (x, mo, xi, a, b, c, thr)),
        (ops.step_residual, (x32, mo32, None, a, b, c, thr)),
        (ops.order_k_residual, (rnd(n, B, D), a, 2, False)),
        (ops.order_k_residual, (rnd(n, B, D, dtype=torch.float32), a, 9, True)),
        (ops.anderson_gram, (rnd(m, n, B, D), rnd(n, B, D))),
        (ops.masked_lstsq, (G, rnd(n, B, m), torch.tensor([0, 1, 2, 2]), 1e-3, 1e-30)),
        (ops.anderson_update, (rnd(n, B, D), rnd(n, B, D), rnd(m, n, B, D), rnd(m, n, B, D), rnd(n, B, m))),
        (ops.taa_residual, (x, mo, xi, a, b, c, thr, hR, hY, 1, n, False)),
        (ops.taa_update, (rnd(n, B, D), hY, rnd(n, B, m), 2)),
    ]
    _backends.call_counts(reset=True)
    for op, args in cases:
        torch.library.opcheck(op, args)
    assert all(v > 0 for v in _backends.call_counts()["cpu"].values())  # opcheck exercised the C++ kernels


@pytestmark_ext
def test_compile_through_cpp_kernels():
    """torch.compile (Dynamo + fake kernels + AOT functionalisation) around the C++ kernels, fullgraph."""

    def step(x, mo, xi, a, b, c, thr, hR, hY):
        rms, top, G, h = ops.taa_residual(x, mo, xi, a, b, c, thr, hR, hY, 1, 3, False)
        gamma = ops.masked_lstsq(G, h, torch.full((3,), 2), 1e-3, 1e-30)
        ops.taa_update(x[:-1], hY, gamma, 1)
        return rms, top

    args = (*window(3, 2, 5), rnd(3, 3, 2, 5, seed=40), rnd(3, 3, 2, 5, seed=41))
    eager = [t.clone() if isinstance(t, torch.Tensor) else t for t in args]
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    rc, re = compiled(*args), step(*eager)
    torch.testing.assert_close(rc[0], re[0], rtol=1e-13, atol=0)
    torch.testing.assert_close(args[0], eager[0], rtol=1e-13, atol=1e-14)


@pytestmark_ext
@pytest.mark.parametrize(
    "method,opts", [("taa", {}), ("taa", dict(window=5, history=3, order=2)), ("aa", dict(history=2))]
)
def test_taa_solve_through_cpp_ops_equals_reference(method, opts):
    from paratriton.testing import GaussianMixture
    from paratriton.testing.gaussian_mixture import default_schedule

    T = 12
    cf = default_schedule(T, eta=1.0)
    model = GaussianMixture.random((2, 3, 3), num_components=3, std=0.3, seed=0).denoiser(cf)
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(T, 2, 2, 3, 3, generator=g, dtype=torch.float64)
    _backends.call_counts(reset=True)
    res = {
        be: pt.solve(model, cf, x_T, noise, method=method, tol_abs=1e-9, tol_rel=1e-9, backend=be, **opts)
        for be in ("reference", "auto")
    }  # "auto" = the registered ops, i.e. the C++ kernels on the CPU
    counts = _backends.call_counts()["cpu"]
    assert counts["taa_residual"] > 0 and counts["masked_lstsq"] > 0
    seq = pt.solve(model, cf, x_T, noise, method="sequential")
    assert res["auto"].converged and res["reference"].iterations == res["auto"].iterations
    torch.testing.assert_close(res["auto"].sample, res["reference"].sample, rtol=0, atol=1e-12)
    torch.testing.assert_close(res["auto"].sample, seq.sample, rtol=0, atol=1e-8)


# ------------------------------------------------------------------------------------------------------------------
# CUDA kernels (run on a GPU machine; skipped on the CPU)
# ------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def cuda_ext():
    """The CUDA kernels of paratriton._C_cuda, every one registered (they are opt-in by default), restored
    afterwards. On a CUDA machine the CUDA module must be there (built with the extension)."""
    st = _backends.extension_status()
    if not st["loaded"]:
        pytest.skip("paratriton._C not built")
    if st["cuda_module"] != "ok" and os.environ.get("PARATRITON_REQUIRE_CUDA_EXT") != "1":
        pytest.skip(f"paratriton._C_cuda: {st['cuda_module']} (PARATRITON_REQUIRE_CUDA_EXT=1 makes this a failure)")
    _backends.use_extension(True, cuda_ops="all")
    try:
        assert set(_backends.extension_status()["cuda"]) == set(_backends.CUDA_OPS), (
            f"CUDA kernels not registered: {_backends.extension_status()['abi']}, torch has CUDA {torch.version.cuda}"
        )
        assert all(pt.backends()[op]["cuda"] == "cuda" for op in _backends.CUDA_OPS), pt.backends()
        yield _backends
    finally:
        _backends.use_extension(False)
        _backends.use_extension(True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", STATE)
def test_cuda_kernels_match_reference(cuda_ext, dtype):
    _backends.call_counts(reset=True)
    cu = torch.device("cuda")
    for n, B, D in SHAPES:
        for m in (1, 2, 5, 20):  # 20 > 16: the reference's batched solve
            A = rnd(n, B, m, m + 3, seed=50)
            G, h = (A @ A.transpose(-1, -2)).to(dtype), rnd(n, B, m, seed=51, dtype=dtype)
            nc = torch.randint(0, m + 1, (n,))
            got = ops.masked_lstsq(G.to(cu), h.to(cu), nc.to(cu), 1e-3, 1e-30)
            tol = dict(rtol=1e-8, atol=1e-10) if dtype == torch.float64 else dict(rtol=3e-3, atol=3e-4)
            torch.testing.assert_close(got.cpu().double(), masked_lstsq(f64(G), f64(h), nc, 1e-3, 1e-30), **tol)
        m = 3
        x, R = rnd(n, B, D, seed=52, dtype=dtype), rnd(n, B, D, seed=53, dtype=dtype)
        dX, dR = rnd(m, n, B, D, seed=54, dtype=dtype), rnd(m, n, B, D, seed=55, dtype=dtype)
        gamma = rnd(n, B, m, seed=56, dtype=dtype)
        ref = anderson_update(f64(x), f64(R), f64(dX), f64(dR), f64(gamma))
        for layout in (lambda t: t, noncontig):  # strided rows (sliced R) and a strided last dim (the copy path)
            out = ops.anderson_update(layout(x.to(cu)), sliced(R.to(cu)), layout(dX.to(cu)), dR.to(cu), gamma.to(cu))
            assert out.is_cuda and out.dtype == dtype
            close(out.cpu(), ref, dtype)
        for M in (1, 3):
            hY = rnd(M, n + 2, B, D, seed=57, dtype=dtype)
            g = rnd(n, B, M - 1, seed=58, dtype=dtype)
            hY_cu = hY.to(cu)  # the ring on the device first, then the solver's slice of it (strided steps)
            for slot in range(M):
                x0 = torch.empty(n, B, D, dtype=torch.float64)
                taa_update(x0, f64(hY[:, 1 : 1 + n]), f64(g), slot)
                xs = torch.zeros(n + 1, B, D, dtype=dtype, device=cu)
                ops.taa_update(xs[:n], hY_cu[:, 1 : 1 + n], g.to(cu), slot)
                close(xs[:n].cpu(), x0, dtype)
                assert (xs[n] == 0).all()  # nothing written past the slice
                xn = noncontig(torch.zeros(n, B, D, dtype=dtype, device=cu))  # strided destination: copy and back
                ops.taa_update(xn, noncontig(hY_cu[:, 1 : 1 + n].contiguous()), g.to(cu), slot)
                close(xn.cpu(), x0, dtype)
    counts = _backends.call_counts()["cuda"]
    assert all(counts[op] > 0 for op in _backends.CUDA_OPS), counts


@pytest.mark.gpu
def test_cuda_kernels_capture_in_a_graph(cuda_ext):
    n, B, D, M = 8, 2, 1000, 3
    cu = torch.device("cuda")
    A = rnd(n, B, M - 1, 6, seed=60).to(cu)
    G, h = A @ A.transpose(-1, -2), rnd(n, B, M - 1, seed=61).to(cu)
    nc = torch.full((n,), M - 1, device=cu)
    hY, x = rnd(M, n, B, D, seed=62).to(cu), torch.zeros(n, B, D, dtype=torch.float64, device=cu)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm up off the default stream, as graph capture requires
        gamma = ops.masked_lstsq(G, h, nc, 1e-3, 1e-30)
        ops.taa_update(x, hY, gamma, 1)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        gamma = ops.masked_lstsq(G, h, nc, 1e-3, 1e-30)
        ops.taa_update(x, hY, gamma, 1)
    hY.mul_(2.0)
    graph.replay()
    torch.cuda.synchronize()
    ref = torch.empty(n, B, D, dtype=torch.float64)
    taa_update(ref, hY.cpu(), masked_lstsq(G.cpu(), h.cpu(), nc.cpu()), 1)
    torch.testing.assert_close(x.cpu(), ref, rtol=1e-9, atol=1e-10)


@pytestmark_ext
def test_invalid_arguments_raise():
    """Argument errors inside the C++ kernels surface as RuntimeError (kept last: on one GPU machine, built with
    another g++ than torch, an exception thrown inside the extension crashed the process; see docs/build.md)."""
    r, a = rnd(3, 2, 5), torch.ones(3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="order must be >= 1"):
        ops.order_k_residual(r, a, 0)
    with pytest.raises(RuntimeError, match="must have shape"):
        ops.anderson_update(r, r, rnd(2, 3, 2, 5), rnd(2, 3, 2, 4), rnd(3, 2, 2))
    with pytest.raises(RuntimeError, match="float32 or float64"):
        ops.masked_lstsq(torch.eye(2, dtype=torch.float16).repeat(3, 2, 1, 1), rnd(3, 2, 2), torch.tensor([0, 1, 2]))


@pytestmark_ext
@pytest.mark.parametrize(
    "what,says",
    [
        ("api", "stale build"),
        ("old torch", "needs torch >= 2.10, this is torch"),
        ("not built", "paratriton._C not built"),
        ("import error", "paratriton._C import failed: undefined symbol"),
    ],
)
def test_unusable_extension_falls_back_with_one_visible_line(what, says, monkeypatch, caplog):
    """A stale build, a torch older than the stable-ABI target, a missing or unimportable module: one WARNING line
    (printed to stderr when logging is not configured), the Python kernels, and no warning per call."""
    _backends.use_extension(False)
    try:
        if what == "api":
            monkeypatch.setattr(_backends, "API_VERSION", _backends.API_VERSION + 1)
        elif what == "old torch":
            monkeypatch.setattr(_backends, "_torch_version", lambda: (2, 9))
        elif what == "not built":
            monkeypatch.setattr(_backends, "_import", lambda name: "not built")
        else:
            monkeypatch.setattr(_backends, "_import", lambda name: "import failed: undefined symbol: aoti_torch_x")
        with caplog.at_level("INFO", logger="paratriton"):
            _backends._load()
            assert not _backends.extension_status()["loaded"]
            assert says in _backends.extension_status()["reason"]
            assert all(v["cpu"] == "torch" for v in pt.backends().values())
            r, a = rnd(3, 2, 5), torch.ones(3, dtype=torch.float64)
            for _ in range(3):  # the reference runs, silently
                torch.testing.assert_close(ops.order_k_residual(r, a, 2), order_k_residual(r, a, 2))
        records = [r for r in caplog.records if r.name == "paratriton"]
        assert len(records) == 1 and records[0].levelname == "WARNING", records
        assert says in records[0].getMessage() and "\n" not in records[0].getMessage()
    finally:
        monkeypatch.undo()
        _backends.use_extension(True)
    assert _backends.extension_status()["loaded"]


@pytestmark_ext
@pytest.mark.parametrize("spec", ["all", "none"])
def test_missing_cuda_module_is_one_line_only_when_asked_for(spec, monkeypatch, caplog):
    """On a CUDA torch without paratriton._C_cuda the CPU kernels still load; a line is printed only when CUDA
    kernels were asked for (they are opt-in), and the reason is in extension_status()["cuda_module"]."""
    real_import = _backends._import
    _backends.use_extension(False)
    try:
        monkeypatch.setattr(torch.version, "cuda", "12.8")
        monkeypatch.setattr(_backends, "_import", lambda name: "not built" if name == "_C_cuda" else real_import(name))
        with caplog.at_level("INFO", logger="paratriton"):
            _backends._load(spec)
        st = _backends.extension_status()
        assert st["loaded"] and st["cuda"] == () and "paratriton._C_cuda not built" in st["cuda_module"]
        assert all(v["cpu"] == "cpp" and v["cuda"] == "triton" for v in pt.backends().values())
        lines = [r.getMessage() for r in caplog.records if r.name == "paratriton"]
        assert lines == (
            ["paratriton: CUDA kernels paratriton._C_cuda not built; the Triton kernels run on CUDA tensors"]
            if spec == "all"
            else []
        )
    finally:
        monkeypatch.undo()
        _backends.use_extension(False)
        _backends.use_extension(True)


def test_disabled_extension_is_quiet_and_visible_in_status(monkeypatch, caplog):
    """PARATRITON_DISABLE_EXT=1 is the user's choice: INFO only, and the reason stays in extension_status()."""
    _backends.use_extension(False)
    try:
        monkeypatch.setenv("PARATRITON_DISABLE_EXT", "1")
        with caplog.at_level("INFO", logger="paratriton"):
            _backends._load()
        assert not _backends.extension_status()["loaded"]
        assert "PARATRITON_DISABLE_EXT" in _backends.extension_status()["reason"]
        assert [r.levelname for r in caplog.records if r.name == "paratriton"] == ["INFO"]
    finally:
        monkeypatch.undo()
        _backends.use_extension(True)


def test_use_extension_rejects_bad_arguments():
    with pytest.raises(TypeError, match="enabled must be a bool"):
        _backends.use_extension("yes")
    with pytest.raises(ValueError, match="unknown op"):
        _backends.use_extension(True, cuda_ops="step_residual,nope")
    assert _backends.extension_status()["loaded"] or not REQUIRED  # nothing was dropped


@pytest.mark.gpu
def test_cuda_kernels_refuse_bad_inputs(cuda_ext):
    """Inputs that used to reach a CUDA kernel and crash or read garbage raise RuntimeError: a CPU tensor among CUDA
    ones (the dispatcher picks the CUDA kernel when any argument is on CUDA), an integer gamma, an empty ring, an
    expanded in-place destination. Kept last, after test_invalid_arguments_raise (see its docstring)."""
    cu = torch.device("cuda")
    n, B, D, m = 3, 2, 5, 2
    G = torch.eye(m, dtype=torch.float64, device=cu).repeat(n, B, 1, 1)
    h = rnd(n, B, m).to(cu)
    nc = torch.full((n,), m, device=cu)
    with pytest.raises(RuntimeError, match="num_cols must be a CUDA tensor"):
        ops.masked_lstsq(G, h, nc.cpu(), 1e-3, 1e-30)
    with pytest.raises(RuntimeError, match="h must be a CUDA tensor"):
        ops.masked_lstsq(G, h.cpu(), nc, 1e-3, 1e-30)
    with pytest.raises(RuntimeError, match="G must be a CUDA tensor"):
        ops.masked_lstsq(G.cpu(), h, nc, 1e-3, 1e-30)
    x, R = rnd(n, B, D).to(cu), rnd(n, B, D).to(cu)
    dX, dR, gamma = rnd(m, n, B, D).to(cu), rnd(m, n, B, D).to(cu), rnd(n, B, m).to(cu)
    with pytest.raises(RuntimeError, match="R must be a CUDA tensor"):
        ops.anderson_update(x, R.cpu(), dX, dR, gamma)
    with pytest.raises(RuntimeError, match="gamma must be a CUDA tensor"):
        ops.anderson_update(x, R, dX, dR, gamma.cpu())
    with pytest.raises(RuntimeError, match="gamma must be a floating tensor"):
        ops.anderson_update(x, R, dX, dR, gamma.long())
    hY = rnd(m + 1, n, B, D).to(cu)
    with pytest.raises(RuntimeError, match="hist_Y must be a CUDA tensor"):
        ops.taa_update(x, hY.cpu(), gamma, 1)
    with pytest.raises(RuntimeError, match="gamma must be a CUDA tensor"):
        ops.taa_update(x, hY, gamma.cpu(), 1)
    with pytest.raises(RuntimeError, match="at least one ring slot"):
        ops.taa_update(x, hY[:0], gamma[..., :0], 0)
    with pytest.raises(RuntimeError, match="internal overlap"):
        ops.taa_update(x[:, :1].expand(n, B, D), hY, gamma, 1)
    if torch.cuda.device_count() > 1:
        with pytest.raises(RuntimeError, match="same GPU"):
            ops.taa_update(x, hY.to("cuda:1"), gamma, 1)
    # the context survived: valid calls still run and agree with the reference
    out = ops.anderson_update(x, R, dX, dR, gamma)
    close(out.cpu(), anderson_update(x.cpu(), R.cpu(), dX.cpu(), dR.cpu(), gamma.cpu()), torch.float64)
