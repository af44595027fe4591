"""The quarantined residual pass kernel (``paratriton.ops.legacy.residual_pass``: order-1 residual, RMS, top step,
order-k residual) against the float64 references of the live ops."""

import pytest
import torch
from _kernel_env import DEVICE

from paratriton.ops.legacy.residual_pass import residual_pass
from paratriton.ops.order_k_residual.naive import order_k_residual
from paratriton.ops.step_residual.naive import step_residual


def make(n, B, D, state=torch.float64, model=torch.float16, noise=True, strided=False, seed=0):
    """Inputs on DEVICE (drawn on the CPU, so the values are the same everywhere); strided views are taken on the
    device, after the move (``.to`` would make a non-dense view contiguous)."""
    g = torch.Generator().manual_seed(seed)
    rn = lambda *s, dt=state: torch.randn(*s, generator=g, dtype=torch.float64).to(DEVICE, dt)  # noqa: E731
    if strided:  # every tensor a non-contiguous view: stride 2 along D and a transposed (B, step) layout
        x = rn(B, n + 1, 2 * D).transpose(0, 1)[..., ::2]
        mo = rn(B, n, 2 * D, dt=model).transpose(0, 1)[..., ::2]
        xi = rn(B, n, 2 * D).transpose(0, 1)[..., ::2] if noise else None
    else:
        x, mo, xi = rn(n + 1, B, D), rn(n, B, D, dt=model), rn(n, B, D) if noise else None
    a = 1 + 0.2 * torch.rand(n, generator=g, dtype=torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64)
    c = torch.rand(n, generator=g, dtype=torch.float64) if noise else torch.zeros(n, dtype=torch.float64)
    if strided:
        assert not x.is_contiguous() and not mo.is_contiguous()
    return x, mo, xi, a.to(DEVICE), b.to(DEVICE), c.to(DEVICE)


@pytest.mark.parametrize(
    "n,B,D,model,noise,strided",
    [
        (1, 1, 1, torch.float16, True, False),  # one-step window, one value
        (5, 2, 131, torch.float16, True, False),  # D not a multiple of the block, B > 1
        (4, 3, 70, torch.float32, False, True),  # no noise (DDIM), non-contiguous inputs
        (3, 1, 40, torch.bfloat16, True, False),
    ],
)
def test_residual_rms_top_and_order_k_match_reference(n, B, D, model, noise, strided, rel):
    x, mo, xi, a, b, c = make(n, B, D, model=model, noise=noise, strided=strided)
    r, rms, _ = step_residual(x, mo, xi, a, b, c, torch.zeros(n, dtype=torch.float64, device=DEVICE))
    # thresholds that split the steps: the top unconverged step is known exactly
    thr = rms.amax(1).clone()
    thr[::2] = 0.0
    top_ref = step_residual(x, mo, xi, a, b, c, thr)[2]
    for order in sorted({n, max(1, n - 2), 1}):
        for unit in (False, True):
            out = residual_pass(x, mo, xi, a, b, c, thr, order=order, unit_weights=unit, write_r=True, write_R=True)
            assert rel(out["r"], r) < 1e-14
            assert rel(out["rms"], rms) < 1e-14
            assert out["top"].dtype == torch.int64 and out["top"].ndim == 0
            assert out["top"].item() == top_ref.item()
            assert rel(out["R"], order_k_residual(r, a, order, unit)) < 1e-13, (order, unit)


def test_all_converged_gives_minus_one_and_float32_state(rel):
    x, mo, xi, a, b, c = make(6, 2, 50, state=torch.float32, model=torch.float16)
    thr = torch.full((6,), 1e9, dtype=torch.float64, device=DEVICE)
    # the reference in float64 from the same (float32 / fp16) values: no TF32 or FMA differences in the oracle
    r, rms, top = step_residual(x.double(), mo, xi.double(), a, b, c, thr)
    out = residual_pass(x, mo, xi, a, b, c, thr, order=6, write_r=True, write_R=True)
    assert top.item() == -1 and out["top"].item() == -1
    assert out["r"].dtype == torch.float32 and out["R"].dtype == torch.float32 and out["rms"].dtype == torch.float32
    assert rel(out["r"], r) < 1e-6 and rel(out["rms"], rms) < 1e-6
    assert rel(out["R"], order_k_residual(r, a, 6)) < 2e-6


def test_order_k_from_given_residuals(rel):
    g = torch.Generator().manual_seed(3)
    r = torch.randn(7, 2, 33, generator=g, dtype=torch.float64).to(DEVICE)
    a = (1 + torch.rand(7, generator=g, dtype=torch.float64)).to(DEVICE)
    for order in (1, 3, 7, 20):
        out = residual_pass(r, None, None, a, None, None, None, order=order, write_R=True, from_r=True)
        assert rel(out["R"], order_k_residual(r, a, order)) < 1e-14


def test_kernel_is_not_the_identity(rel):
    """Guard against a vacuous comparison: a wrong coefficient must be caught."""
    x, mo, xi, a, b, c = make(4, 1, 20)
    zero = torch.zeros(4, dtype=torch.float64, device=DEVICE)
    r = step_residual(x, mo, xi, a, b, c, zero)[0]
    out = residual_pass(x, mo, xi, a * 1.001, b, c, zero, write_r=True)
    assert out["r"].device == x.device
    assert rel(out["r"], r) > 1e-5
