"""The masked least-squares kernel (``paratriton.ops.masked_lstsq``, Triton on CUDA) against the float64 reference:
masks, float32 systems, and the singular Grams of ill-conditioned histories."""

import pytest
import torch
from _kernel_env import DEVICE

from paratriton.ops.masked_lstsq.fused import masked_lstsq_triton
from paratriton.ops.masked_lstsq.naive import masked_lstsq
from paratriton.ops.taa.naive import anderson_gram


def rnd(*shape, seed=0, dtype=torch.float64, device=DEVICE):
    """Seeded normals drawn on the CPU (same values on every machine), then moved to ``device``."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device, dtype)


def ints(values):
    return torch.tensor(values, device=DEVICE)


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


def test_singular_grams_give_finite_regularised_steps(rel):
    """Identical columns (a singular Gram), from fp16 residual differences of ~1e-4 and in float64: the relative
    ridge keeps the step finite and bounded, the kernel agrees with the reference, tied columns get equal gammas."""
    n, B, D, m = 4, 1, 64, 3
    base = (1e-4 * rnd(n, B, D, seed=20)).half()
    dR16 = torch.stack([base, base, (base.float() + 1e-4 * rnd(n, B, D, seed=21).float()).half()])
    G, h = anderson_gram(dR16, (1e-4 * rnd(n, B, D, seed=22)).half())
    assert G.dtype == torch.float32  # the reference accumulates fp16 columns in fp32, as the engine's kernels do
    nc = torch.full((n,), m, device=DEVICE)
    gamma = masked_lstsq_triton(G, h, nc)
    assert torch.isfinite(gamma).all() and gamma.abs().max() < 1e3
    assert rel(gamma, masked_lstsq(G.double(), h.double(), nc)) < 1e-3
    dR = torch.stack([rnd(n, B, D, seed=23)] * 2)
    G2, h2 = anderson_gram(dR, rnd(n, B, D, seed=24))
    g2 = masked_lstsq_triton(G2, h2, torch.full((n,), 2, device=DEVICE))
    assert torch.isfinite(g2).all()
    torch.testing.assert_close(g2[..., 0], g2[..., 1], rtol=1e-8, atol=1e-12)
