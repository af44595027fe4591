"""The compiled extension (paratriton._C, paratriton._C_cuda; LibTorch stable ABI): the one op list (csrc/common.h
against _backends.OPS, the C++ registrations and paratriton.ops, with the same schemas), every C++ CPU kernel against
the float64 reference (awkward shapes, non-contiguous inputs, fp16/fp32 model outputs, float32 state), opcheck, proof
that the dispatcher runs the C++ kernel on CPU tensors, and a TAA solve through the ops equal to the reference solver.

CI (CI=true) builds the extension with `pip install -e .`, so there a missing extension is a failure, not a skip;
PARATRITON_REQUIRE_EXT=1 does the same elsewhere (benchmarks/abi_check.sh sets it).
"""

import importlib.util
import os
import re
from pathlib import Path

import pytest
import torch

import paratriton as pt
from paratriton import _backends
from paratriton.ops.masked_lstsq.naive import masked_lstsq
from paratriton.ops.order_k_residual.naive import order_k_residual
from paratriton.ops.step_residual.naive import step_residual
from paratriton.ops.taa.naive import taa_residual, taa_update

ops = torch.ops.paratriton
REQUIRED = os.environ.get("CI", "").lower() in ("1", "true") or os.environ.get("PARATRITON_REQUIRE_EXT") == "1"
CSRC = Path(__file__).resolve().parents[1] / "csrc"


def _registered(source: str, block: str, call: str) -> list[str]:
    """The op names of the ``m.<call>("name...`` lines inside ``<block> { ... }`` of a csrc file."""
    body = re.search(re.escape(block) + r"[^{]*\{(.*?)\n\}", (CSRC / source).read_text(), re.S)
    assert body, (source, block)
    return re.findall(rf'm\.{call}\("(\w+)', body.group(1))


@pytest.mark.skipif(not CSRC.is_dir(), reason="no csrc/ beside the tests (an installed wheel)")
def test_one_op_list_for_python_and_cpp():
    """csrc/common.h PARATRITON_OPS is the list: _backends.OPS equals it, the CPU module defines a schema for each
    (its kernels are registered from the list itself), the CUDA module registers _backends.CUDA_OPS, and each is a
    registered op of paratriton.ops with its reference at .naive. Runs without a build."""
    header = (CSRC / "common.h").read_text()
    listed = re.search(r"#define PARATRITON_OPS\(X\)((?: X\(\w+\))+)", header)
    assert listed, "csrc/common.h: #define PARATRITON_OPS(X) X(op) ... on one line"
    assert tuple(re.findall(r"X\((\w+)\)", listed.group(1))) == _backends.OPS
    assert int(re.search(r"kApiVersion = (\d+);", header).group(1)) == _backends.API_VERSION
    assert _registered("cpu_ops.cpp", "STABLE_TORCH_LIBRARY(paratriton_C, m)", "def") == list(_backends.OPS)
    assert "PARATRITON_OPS(PT_IMPL_CPU)" in (CSRC / "cpu_ops.cpp").read_text()
    assert _registered("cuda_ops.cu", "STABLE_TORCH_LIBRARY_IMPL(paratriton_cuda, CUDA, m)", "impl") == list(
        _backends.CUDA_OPS
    )
    assert set(_registered("cuda_ops.cu", "STABLE_TORCH_LIBRARY(paratriton_cuda, m)", "def")) == set(_backends.CUDA_OPS)
    for op in _backends.OPS:
        registered = getattr(pt.ops, op)
        assert isinstance(registered, torch._library.custom_ops.CustomOpDef), op
        assert registered._qualname == f"paratriton::{op}" and hasattr(registered.naive, op)


def _signature(schema) -> tuple:
    """A schema without its namespace and alias-set names: argument names, types (SymInt as int), defaults,
    writes; return types."""
    args = tuple(
        (
            a.name,
            str(a.type),
            a.default_value if a.has_default_value() else None,
            bool(a.alias_info and a.alias_info.is_write),
        )
        for a in schema.arguments
    )
    return args, tuple(str(r.type) for r in schema.returns)


@pytest.mark.skipif(not _backends.extension_status()["loaded"], reason="paratriton._C not built")
def test_cpp_module_exports_the_list_and_the_python_schemas():
    from paratriton import _C

    assert _C.OPS == _backends.OPS
    for op in _backends.OPS:
        cpp, py = getattr(torch.ops.paratriton_C, op).default._schema, getattr(ops, op).default._schema
        assert _signature(cpp) == _signature(py), op


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
    hR, hY = rnd(3, 16, 4, 3000, seed=20), rnd(3, 16, 4, 3000, seed=21)
    prev = torch.get_num_threads()
    outs = []
    for nt in (1, 2):
        torch.set_num_threads(nt)
        try:
            outs.append(
                (
                    ops.step_residual(x, mo, xi, a, b, c, thr),
                    ops.taa_residual(x, mo, xi, a, b, c, thr, hR.clone(), hY.clone(), 1, 16, False),  # the Gram pass
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
    ops.masked_lstsq(torch.eye(2, dtype=torch.float64).repeat(3, 2, 1, 1), rnd(3, 2, 2), torch.tensor([0, 1, 2]))
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
        (ops.masked_lstsq, (G, rnd(n, B, m), torch.tensor([0, 1, 2, 2]), 1e-3, 1e-30)),
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
    for n, B, _ in SHAPES:
        for m in (1, 2, 5, 20):  # 20 > 16: the reference's batched solve
            A = rnd(n, B, m, m + 3, seed=50)
            G, h = (A @ A.transpose(-1, -2)).to(dtype), rnd(n, B, m, seed=51, dtype=dtype)
            nc = torch.randint(0, m + 1, (n,))
            got = ops.masked_lstsq(G.to(cu), h.to(cu), nc.to(cu), 1e-3, 1e-30)
            tol = dict(rtol=1e-8, atol=1e-10) if dtype == torch.float64 else dict(rtol=3e-3, atol=3e-4)
            torch.testing.assert_close(got.cpu().double(), masked_lstsq(f64(G), f64(h), nc, 1e-3, 1e-30), **tol)
    counts = _backends.call_counts()["cuda"]
    assert all(counts[op] > 0 for op in _backends.CUDA_OPS), counts


@pytest.mark.gpu
def test_cuda_kernels_capture_in_a_graph(cuda_ext):
    n, B, m = 8, 2, 2
    cu = torch.device("cuda")
    A = rnd(n, B, m, 6, seed=60).to(cu)
    G, h = A @ A.transpose(-1, -2), rnd(n, B, m, seed=61).to(cu)
    nc = torch.full((n,), m, device=cu)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm up off the default stream, as graph capture requires
        ops.masked_lstsq(G, h, nc, 1e-3, 1e-30)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        gamma = ops.masked_lstsq(G, h, nc, 1e-3, 1e-30)
    h.mul_(2.0)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(gamma.cpu(), masked_lstsq(G.cpu(), h.cpu(), nc.cpu()), rtol=1e-9, atol=1e-10)


@pytestmark_ext
def test_invalid_arguments_raise():
    """Argument errors inside the C++ kernels surface as RuntimeError (kept last: on one GPU machine, built with
    another g++ than torch, an exception thrown inside the extension crashed the process; see docs/build.md)."""
    r, a = rnd(3, 2, 5), torch.ones(3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="order must be >= 1"):
        ops.order_k_residual(r, a, 0)
    with pytest.raises(RuntimeError, match="hist_Y must have shape"):
        ops.taa_update(r, rnd(3, 3, 2, 4), rnd(3, 2, 2), 1)
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
        triton = importlib.util.find_spec("triton") is not None  # masked_lstsq's CUDA kernel; the others have none
        assert pt.backends() == {
            op: {"cpu": "cpp", "cuda": "triton" if op == "masked_lstsq" and triton else "torch"} for op in _backends.OPS
        }
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
    ones (the dispatcher picks the CUDA kernel when any argument is on CUDA), an integer num_cols of the wrong kind, a
    tensor of another GPU. Kept last, after test_invalid_arguments_raise (see its docstring)."""
    cu = torch.device("cuda")
    n, B, m = 3, 2, 2
    G = torch.eye(m, dtype=torch.float64, device=cu).repeat(n, B, 1, 1)
    h = rnd(n, B, m).to(cu)
    nc = torch.full((n,), m, device=cu)
    with pytest.raises(RuntimeError, match="num_cols must be a CUDA tensor"):
        ops.masked_lstsq(G, h, nc.cpu(), 1e-3, 1e-30)
    with pytest.raises(RuntimeError, match="h must be a CUDA tensor"):
        ops.masked_lstsq(G, h.cpu(), nc, 1e-3, 1e-30)
    with pytest.raises(RuntimeError, match="G must be a CUDA tensor"):
        ops.masked_lstsq(G.cpu(), h, nc, 1e-3, 1e-30)
    with pytest.raises(RuntimeError, match="num_cols must be an integer tensor"):
        ops.masked_lstsq(G, h, nc.double(), 1e-3, 1e-30)
    with pytest.raises(RuntimeError, match="h must be a floating tensor"):
        ops.masked_lstsq(G, h.long(), nc, 1e-3, 1e-30)
    if torch.cuda.device_count() > 1:
        with pytest.raises(RuntimeError, match="same GPU"):
            ops.masked_lstsq(G, h.to("cuda:1"), nc, 1e-3, 1e-30)
    # the context survived: valid calls still run and agree with the reference
    out = ops.masked_lstsq(G, h, nc, 1e-3, 1e-30)
    torch.testing.assert_close(out.cpu(), masked_lstsq(G.cpu(), h.cpu(), nc.cpu()), rtol=1e-9, atol=1e-12)
