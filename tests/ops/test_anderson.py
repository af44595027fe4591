"""Gram pass, masked least squares and update kernels against the float64 references, including the fused
ring form used by the TAA solver and ill-conditioned histories."""

import pytest
import torch
from _kernel_env import DEVICE

from paratriton.ops import taa
from paratriton.ops.anderson_gram.fused import anderson_gram_triton
from paratriton.ops.anderson_gram.naive import anderson_gram
from paratriton.ops.anderson_update.fused import anderson_update_triton, ring_update_triton
from paratriton.ops.anderson_update.naive import anderson_update
from paratriton.ops.masked_lstsq.fused import masked_lstsq_triton
from paratriton.ops.masked_lstsq.naive import masked_lstsq
from paratriton.ops.step_residual.fused import residual_pass


def rnd(*shape, seed=0, dtype=torch.float64, device=DEVICE):
    """Seeded normals drawn on the CPU (same values on every machine), then moved to ``device``."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device, dtype)


def ints(values):
    return torch.tensor(values, device=DEVICE)


@pytest.mark.parametrize(
    "m,n,B,D,dtype",
    [
        (1, 1, 1, 5, torch.float64),
        (2, 4, 2, 70, torch.float64),
        (5, 3, 1, 33, torch.float32),
        (3, 5, 2, 40, torch.float16),
    ],
)
def test_gram_matches_reference(m, n, B, D, dtype, rel):
    dR, R = rnd(m, n, B, D, seed=1, dtype=dtype), rnd(n, B, D, seed=2, dtype=dtype)
    G, h = anderson_gram(dR.double(), R.double())  # float64 oracle of the same values
    G2, h2 = anderson_gram_triton(dR, R)
    acc = torch.promote_types(dtype, torch.float32)  # fp16 columns accumulate in fp32, never in fp16
    assert G2.dtype == acc and h2.dtype == acc and anderson_gram(dR, R)[0].dtype == acc
    assert G2.device == dR.device
    tol = 1e-13 if dtype == torch.float64 else 1e-5
    assert rel(G2, G) < tol and rel(h2, h) < tol
    assert torch.equal(G2, G2.transpose(-1, -2))


def test_gram_non_contiguous_columns(rel):
    dR = rnd(3, 2, 4, 2 * 21, seed=4)[..., ::2].transpose(1, 2)  # [m, B, n, D] viewed as [m, n, B, D]
    R = rnd(4, 2, 21, seed=5)
    assert not dR.is_contiguous()
    G, h = anderson_gram(dR, R)
    G2, h2 = anderson_gram_triton(dR, R)
    assert rel(G2, G) < 1e-13 and rel(h2, h) < 1e-13


@pytest.mark.parametrize("m", [1, 2, 3, 5])
def test_lstsq_matches_reference_with_masks(m, rel):
    n, B = 6, 2
    A = rnd(n, B, m, 3 * m, seed=m)
    G = A @ A.transpose(-1, -2)
    h = rnd(n, B, m, seed=10 + m)
    num_cols = ints([0, m, 1, m, max(m - 1, 0), m])[:n]
    ref = masked_lstsq(G, h, num_cols)
    got = masked_lstsq_triton(G, h, num_cols)
    assert rel(got, ref) < 1e-10
    cols = torch.arange(m, device=DEVICE)
    assert (got[(cols[None, :] >= num_cols[:, None])[:, None].expand_as(got)] == 0).all()  # masked: exactly 0
    assert (got[0] == 0).all()  # too little history: plain fixed-point step
    assert got[1].abs().sum() > 0


def test_lstsq_float32_system(rel):
    A = rnd(4, 3, 2, 6, seed=7, dtype=torch.float32)
    G, h = A @ A.transpose(-1, -2), rnd(4, 3, 2, seed=8, dtype=torch.float32)
    nc = torch.full((4,), 2, device=DEVICE)
    got = masked_lstsq_triton(G, h, nc)
    assert got.dtype == torch.float32
    assert rel(got, masked_lstsq(G.double(), h.double(), nc)) < 1e-4


def test_ill_conditioned_histories_give_finite_regularised_steps(rel):
    """Identical columns (a singular Gram) and fp16 residual differences of ~1e-4: the relative ridge keeps the
    step finite and bounded, and the kernels agree with the reference."""
    n, B, D, m = 4, 1, 64, 3
    base = (1e-4 * rnd(n, B, D, seed=20)).half()
    dR16 = torch.stack([base, base, (base.float() + 1e-4 * rnd(n, B, D, seed=21).float()).half()])  # fp16 columns
    R16 = (1e-4 * rnd(n, B, D, seed=22)).half()
    G, h = anderson_gram_triton(dR16, R16)
    assert G.dtype == torch.float32  # accumulated in fp32: squares of 1e-4 fp16 values would underflow in fp16
    assert (G.diagonal(dim1=-2, dim2=-1) > 0).all()
    Gr, hr = anderson_gram(dR16.double(), R16.double())  # float64 oracle of the same fp16 values
    assert rel(G, Gr) < 1e-5
    nc = torch.full((n,), m, device=DEVICE)
    gamma = masked_lstsq_triton(G, h, nc)
    assert torch.isfinite(gamma).all()
    assert gamma.abs().max() < 1e3
    assert rel(gamma, masked_lstsq(Gr.double(), hr.double(), nc)) < 1e-3
    # exactly identical columns in float64 too: the two tied gammas come out equal (symmetric regularisation)
    dR = torch.stack([rnd(n, B, D, seed=23)] * 2)
    G2, h2 = anderson_gram_triton(dR, rnd(n, B, D, seed=24))
    g2 = masked_lstsq_triton(G2, h2, torch.full((n,), 2, device=DEVICE))
    assert torch.isfinite(g2).all()
    torch.testing.assert_close(g2[..., 0], g2[..., 1], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("m,n,B,D", [(1, 1, 1, 9), (2, 5, 2, 300), (5, 3, 1, 17)])
def test_update_matches_reference(m, n, B, D, rel):
    x, R = rnd(n, B, D, seed=30), rnd(n, B, D, seed=31)
    dX, dR = rnd(m, n, B, D, seed=32), rnd(m, n, B, D, seed=33)
    gamma = rnd(n, B, m, seed=34)
    gamma[0] = 0
    assert rel(anderson_update_triton(x, R, dX, dR, gamma), anderson_update(x, R, dX, dR, gamma)) < 1e-14
    # the update with all-zero gamma is the fixed-point step x + R
    torch.testing.assert_close(anderson_update_triton(x, R, dX, dR, torch.zeros_like(gamma)), x + R)


@pytest.mark.parametrize("M,slot", [(2, 0), (3, 2), (6, 4)])
def test_ring_update_in_place(M, slot, rel):
    n, B, D = 4, 2, 37
    hist_Y = rnd(M, n, B, D, seed=40)
    gamma = rnd(n, B, M - 1, seed=41)
    gamma[1] = 0  # a fixed-point row: reads Y_0 only
    big = rnd(n, B, 2 * D, seed=42)
    x = big[..., ::2]  # non-contiguous destination, updated in place
    ref = x.clone()
    taa.taa_update(ref, hist_Y, gamma, slot)
    ring_update_triton(x, hist_Y, gamma, slot)
    assert rel(x, ref) < 1e-14
    torch.testing.assert_close(x[1], hist_Y[slot, 1], rtol=0, atol=0)
    assert torch.equal(big[..., 1::2], rnd(n, B, 2 * D, seed=42)[..., 1::2])  # nothing else written
    assert not x.is_contiguous()


@pytest.mark.parametrize(
    "M,slot,order,noise,model",
    [
        (3, 1, 5, True, torch.float16),
        (2, 0, 2, False, torch.float32),
        (6, 5, 5, True, torch.float16),
        (1, 0, 5, True, torch.float16),
    ],
)
def test_fused_residual_gram_and_history_push(M, slot, order, noise, model, rel):
    n, B, D = 5, 2, 45
    x = rnd(n + 1, B, D, seed=50)
    mo = rnd(n, B, D, seed=51, dtype=model)
    xi = rnd(n, B, D, seed=52) if noise else None
    a = (1 + 0.1 * torch.rand(n, dtype=torch.float64)).to(DEVICE)
    b, c = -torch.rand(n, dtype=torch.float64).to(DEVICE), torch.rand(n, dtype=torch.float64).to(DEVICE)
    thr = torch.full((n,), 0.5, dtype=torch.float64, device=DEVICE)
    hR, hY = rnd(M, n, B, D, seed=53), rnd(M, n, B, D, seed=54)
    hR1, hY1, hR2, hY2 = hR.clone(), hY.clone(), hR.clone(), hY.clone()
    rms, top, G, h = taa.taa_residual(x, mo, xi, a, b, c, thr, hR1, hY1, slot, order)
    out = residual_pass(x, mo, xi, a, b, c, thr, order=order, hist_R=hR2, hist_Y=hY2, slot=slot)
    assert rel(out["rms"], rms) < 1e-14 and out["top"].item() == top.item()
    assert rel(hR2, hR1) < 1e-14 and rel(hY2, hY1) < 1e-14
    assert not torch.equal(hR2[slot], hR[slot])  # the push happened
    others = [s for s in range(M) if s != slot]
    assert torch.equal(hR2[others], hR[others]) and torch.equal(hY2[others], hY[others])
    assert out["G"].shape == G.shape == (n, B, M - 1, M - 1)
    if M > 1:
        assert rel(out["G"], G) < 1e-13 and rel(out["h"], h) < 1e-13
