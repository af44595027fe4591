"""The torch.library registrations of the CPU building blocks and masked_lstsq: opcheck on every one,
torch.compile(fullgraph=True) of a whole TAA iteration through them, and the solver's backend switch. Each runs on
every device of ``DEVICES``: on the CPU the ops run the C++ kernels of paratriton._C (or the references), on CUDA the
references (masked_lstsq: Triton). The engine's window ops are checked in test_window_ops.py."""

import pytest
import torch
from _kernel_env import DEVICES

import paratriton as pt
import paratriton.ops  # noqa: F401  (registers torch.ops.paratriton.*)
from paratriton.ops.order_k_residual.naive import order_k_residual as order_k_residual_ref
from paratriton.ops.step_residual.naive import step_residual as step_residual_ref
from paratriton.ops.taa import naive as taa
from paratriton.testing import GaussianMixture
from paratriton.testing.gaussian_mixture import default_schedule

ops = torch.ops.paratriton


devices = pytest.mark.parametrize("device", DEVICES)


def rnd(*shape, seed=0, dtype=torch.float64, device="cpu"):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device, dtype)


def window(n=4, B=2, D=6, M=3, model=torch.float16, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed + 100)
    r = lambda *s, sd, dt=torch.float64: rnd(*s, seed=sd, dtype=dt, device=device)  # noqa: E731
    x, mo, xi = r(n + 1, B, D, sd=seed), r(n, B, D, sd=seed + 1, dt=model), r(n, B, D, sd=seed + 2)
    a = (1 + 0.1 * torch.rand(n, generator=g, dtype=torch.float64)).to(device)
    b, c = (
        (-torch.rand(n, generator=g, dtype=torch.float64)).to(device),
        torch.rand(n, generator=g, dtype=torch.float64).to(device),
    )
    thr = torch.full((n,), 0.3, dtype=torch.float64, device=device)
    return x, mo, xi, a, b, c, thr, r(M, n, B, D, sd=seed + 3), r(M, n, B, D, sd=seed + 4)


@devices
def test_opcheck_every_op(device):
    x, mo, xi, a, b, c, thr, hR, hY = window(device=device)
    n, B, D, m = 4, 2, 6, 2

    def r(*shape, **kw):  # this test's inputs live on `device`
        return rnd(*shape, device=device, **kw)

    cases = [
        (ops.step_residual, (x, mo, xi, a, b, c, thr)),
        (ops.step_residual, (x, mo, None, a, b, c, thr)),
        (ops.order_k_residual, (r(n, B, D), a, 2, False)),
        (ops.order_k_residual, (r(n, B, D), a, 9, True)),
        (
            ops.masked_lstsq,
            (
                torch.eye(m, dtype=torch.float64, device=device).repeat(n, B, 1, 1) * 2,
                r(n, B, m),
                torch.tensor([0, 1, 2, 2], device=device),
                1e-3,
                1e-30,
            ),
        ),
        (ops.taa_residual, (x, mo, xi, a, b, c, thr, hR, hY, 1, n, False)),
        (ops.taa_update, (r(n, B, D), hY, r(n, B, m), 2)),
    ]
    for op, args in cases:
        assert all(t.device.type == device for t in args if isinstance(t, torch.Tensor))
        torch.library.opcheck(op, args)


@devices
def test_registered_ops_match_the_references(device):
    """CPU: the C++ kernels of paratriton._C when built (else the references); CUDA: the references. Equal to the
    plain-torch references up to rounding, on the device of the inputs."""
    x, mo, xi, a, b, c, thr, hR, hY = window(device=device)
    r, rms, top = ops.step_residual(x, mo, xi, a, b, c, thr)
    r0, rms0, top0 = step_residual_ref(x, mo, xi, a, b, c, thr)
    assert r.device == rms.device == top.device == x.device
    torch.testing.assert_close(r, r0, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(rms, rms0, rtol=1e-12, atol=1e-14)
    assert torch.equal(top, top0)
    ops.taa_residual(x, mo, xi, a, b, c, thr, hR, hY, 0, 4, False)
    torch.testing.assert_close(hR[0], order_k_residual_ref(r0, a, 4), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(hY[0], x[:-1] + hR[0], rtol=1e-12, atol=1e-13)


def taa_iteration(x, mo, xi, a, b, c, thr, hR, hY, count, slot: int, top_limit: torch.Tensor):
    """One TAA iteration through the sliced ops, without the host read of the top step (kept on the device)."""
    M = hR.shape[0]
    n = x.shape[0] - 1
    rms, top, G, h = ops.taa_residual(x, mo, xi, a, b, c, thr, hR, hY, slot, n, False)
    count += 1
    m_i = count.clamp(max=M) - 1
    accel = (torch.arange(n, device=x.device) < torch.minimum(top, top_limit)) & (m_i >= 1)
    gamma = ops.masked_lstsq(G, h, torch.where(accel, m_i, torch.zeros_like(m_i)), 1e-3, 1e-30)
    ops.taa_update(x[:-1], hY, gamma, slot)
    return rms, top


@devices
def test_compile_fullgraph_whole_iteration(device):
    x, mo, xi, a, b, c, thr, hR, hY = window(n=5, M=3, device=device)
    count = torch.full((5,), 2, dtype=torch.long, device=device)
    args = (x, mo, xi, a, b, c, thr, hR, hY, count)
    eager_args = [t.clone() for t in args]
    torch._dynamo.reset()
    # aot_eager runs Dynamo (fullgraph: no graph break), the fake kernels and functionalisation of the in-place
    # ops, which is what the registrations must support; Inductor's CPU codegen adds ~90 s on CI and nothing here
    compiled = torch.compile(taa_iteration, fullgraph=True, backend="aot_eager")
    limit = torch.tensor(5, device=device)
    for it in range(3):  # three iterations: the ring slot moves and the state feeds back
        re = taa_iteration(*eager_args, it % 3, limit)
        rc = compiled(*args, it % 3, limit)
        torch.testing.assert_close(rc[0], re[0], rtol=1e-12, atol=0)
        assert rc[1].item() == re[1].item()
    for u, v in zip(args, eager_args):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-14)
    assert not torch.equal(x, window(n=5, M=3, device=device)[0])  # the state was updated in place


@pytest.fixture(scope="module", params=DEVICES)
def gm_problem(request):
    T = 12
    dev = torch.device(request.param)
    cf = default_schedule(T, eta=1.0)
    gm = GaussianMixture.random((2, 3, 3), num_components=3, std=0.3, seed=0).to(dev)
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64).to(dev)
    noise = torch.randn(T, 2, 2, 3, 3, generator=g, dtype=torch.float64).to(dev)
    return cf, gm.denoiser(cf), x_T, noise


@pytest.mark.parametrize(
    "method,opts",
    [
        ("taa", {}),
        ("taa", dict(window=5, history=3, order=2)),
        ("aa", dict(history=2)),
        ("fp", dict(order=3)),
        ("picard", {}),
    ],
)
def test_solver_backend_auto_equals_reference(gm_problem, method, opts):
    """backend="auto" (the registered ops: C++/references on the CPU, Triton on CUDA) against the plain-torch
    references, in float64 state on either device."""
    cf, model, x_T, noise = gm_problem
    res = {
        be: pt.solve(
            model,
            cf,
            x_T,
            noise,
            method=method,
            tol_abs=1e-9,
            tol_rel=1e-9,
            backend=be,
            state_dtype=torch.float64,
            **opts,
        )
        for be in ("reference", "auto")
    }
    assert res["reference"].iterations == res["auto"].iterations
    assert res["auto"].converged
    assert res["auto"].sample.device == x_T.device
    torch.testing.assert_close(res["auto"].sample, res["reference"].sample, rtol=0, atol=1e-12)
    torch.testing.assert_close(res["auto"].residuals, res["reference"].residuals, rtol=1e-6, atol=1e-14, equal_nan=True)


def test_backend_is_validated():
    with pytest.raises(ValueError, match="backend"):
        pt.solve(lambda x, s: x, default_schedule(3), torch.zeros(1, 2), method="taa", backend="cuda")


def test_ring_naive_matches_the_explicit_anderson_step():
    """The (R, Y = x + R) ring update equals the explicit Anderson step x + R - (dX + dR) gamma."""
    n, B, D, M, slot = 3, 1, 8, 4, 2
    hx, hR = rnd(M, n, B, D, seed=60), rnd(M, n, B, D, seed=61)
    hY = hx + hR
    gamma = rnd(n, B, M - 1, seed=62)
    s = taa.ring_order(slot, M)
    dX = torch.stack([hx[s[j]] - hx[s[j + 1]] for j in range(M - 1)])
    dR = torch.stack([hR[s[j]] - hR[s[j + 1]] for j in range(M - 1)])
    ref = hx[slot] + hR[slot] - torch.einsum("jnbd,nbj->nbd", dX + dR, gamma)
    x = torch.empty(n, B, D, dtype=torch.float64)
    taa.taa_update(x, hY, gamma, slot)
    torch.testing.assert_close(x, ref, rtol=1e-12, atol=1e-13)
