"""The quarantined Anderson kernels (``paratriton.ops.legacy``): Gram pass and update against the float64
references, the ring update and the fused residual/Gram/history push of the TAA ring ops, and an ill-conditioned
fp16 history through the Gram kernel."""

import pytest
import torch
from _kernel_env import DEVICE

import paratriton.ops.legacy as legacy
from paratriton.ops.legacy.anderson_gram.fused import anderson_gram_triton
from paratriton.ops.legacy.anderson_update.fused import anderson_update_triton, ring_update_triton
from paratriton.ops.legacy.residual_pass import residual_pass
from paratriton.ops.masked_lstsq.fused import masked_lstsq_triton
from paratriton.ops.masked_lstsq.naive import masked_lstsq
from paratriton.ops.taa import naive as taa

anderson_gram, anderson_update = legacy.anderson_gram.naive.anderson_gram, legacy.anderson_update.naive.anderson_update


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


def test_gram_kernel_on_ill_conditioned_fp16_histories(rel):
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


def test_legacy_ops_are_registered_with_their_oracles():
    """Importing ``paratriton.ops.legacy`` registers the two quarantined ops (opcheck on the test device)."""
    n, B, D, m = 4, 2, 6, 2
    cases = [
        (legacy.anderson_gram, (rnd(m, n, B, D, seed=70), rnd(n, B, D, seed=71))),
        (
            legacy.anderson_update,
            tuple(
                rnd(*s, seed=72 + i)
                for i, s in enumerate([(n, B, D), (n, B, D), (m, n, B, D), (m, n, B, D), (n, B, m)])
            ),
        ),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)
        torch.testing.assert_close(
            op(*args), getattr(op.naive, op._qualname.split("::")[1])(*args), rtol=1e-12, atol=1e-12
        )
