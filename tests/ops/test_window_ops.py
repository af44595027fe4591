"""The engine's window ops: the Triton kernels of ``window_{residual,fixed_point,taa}/fused.py`` against their
plain-torch oracles (``naive.py``), called directly (the compiled kernels on CUDA, the interpreter on a CPU-only
machine), plus ``torch.library.opcheck`` of the registered ops on every device.

Awkward shapes on purpose: odd D, one-step and full windows, a sliding ``lo``, padded rows above the anchor, ``top``
at ``lo`` and in the middle, rings of 2 .. 9 slots, banded orders smaller than the tile, non-contiguous inputs, and
NaNs in frozen/padded rows (model output and older ring slots), which must never reach a result."""

import pytest
import torch
from _kernel_env import DEVICE, DEVICES

import paratriton.ops  # noqa: F401  (registers torch.ops.paratriton.*)
from paratriton.ops.window_fixed_point import naive as fp_naive
from paratriton.ops.window_fixed_point.fused import window_fixed_point_triton
from paratriton.ops.window_residual import naive as res_naive
from paratriton.ops.window_residual.fused import window_residual_triton
from paratriton.ops.window_taa import naive as taa_naive
from paratriton.ops.window_taa.fused import (
    window_taa_push_triton,
    window_taa_update_triton,
)

ops = torch.ops.paratriton
NAN = float("nan")


def make(T, H, B, D, *, state=torch.float64, model=None, noise=True, strided=False, M=3, seed=0, device=None):
    """Window inputs on ``device`` (drawn on the CPU in float64, so the values are the same everywhere). Strided:
    model_out a transposed-back view, x and the noise every other column of a wider buffer."""
    device = DEVICE if device is None else device
    model = state if model is None else model
    g = torch.Generator().manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    if strided:
        x = rn(T + 1, B, 2 * D).to(device, state)[..., ::2]
        mo = rn(B, H, D).to(device, model).transpose(0, 1)
        xi = rn(T, B, 2 * D).to(device, state)[..., ::2] if noise else None
        assert not x.is_contiguous() and not mo.is_contiguous()
    else:
        x, mo = rn(T + 1, B, D).to(device, state), rn(H, B, D).to(device, model)
        xi = rn(T, B, D).to(device, state) if noise else None
    a = (1 + 0.1 * torch.rand(T, generator=g, dtype=torch.float64)).to(device, state)
    b = (-torch.rand(T, generator=g, dtype=torch.float64)).to(device, state)
    c = torch.rand(T, generator=g, dtype=torch.float64).to(device, state)
    hR, hY = rn(M, T, B, D).to(device, state), rn(M, T, B, D).to(device, state)
    return x, mo, xi, a, b, c, hR, hY


def i64(v, device=None):
    return torch.tensor(v, dtype=torch.int64, device=DEVICE if device is None else device)


def close(got, ref, tol):
    torch.testing.assert_close(got.cpu(), ref.cpu(), rtol=tol, atol=tol, equal_nan=True)


def tol_of(state, model):
    return 1e-12 if state == torch.float64 else 2e-5


# ---------------------------------------------------------------------------------------------------- residual


@pytest.mark.parametrize(
    "T,H,B,D,lo,anchor,noise,strided,nan_row",
    [
        (10, 4, 2, 7, 3, 6, True, False, 3),  # padded row above the anchor holds a NaN: masked, not bad
        (10, 10, 1, 33, 0, 10, False, False, None),  # H = T, full window
        (8, 1, 3, 1, 5, 9, True, False, None),  # one-step window, D = 1
        (12, 5, 2, 1000, 2, 4, True, True, 4),  # non-contiguous, padded rows
        (9, 4, 2, 5, 3, 6, True, False, 1),  # NaN in an active row: unconverged and bad
        (9, 4, 1, 5, 4, 3, False, False, None),  # lo >= anchor: no active row, top = lo
    ],
)
@pytest.mark.parametrize(
    "state,model", [(torch.float64, torch.float64), (torch.float32, torch.float16), (torch.float32, torch.bfloat16)]
)
def test_window_residual(T, H, B, D, lo, anchor, noise, strided, nan_row, state, model):
    x, mo, xi, a, b, c, _, _ = make(T, H, B, D, state=state, model=model, noise=noise, strided=strided)
    if nan_row is not None:
        mo[nan_row, 0, 0] = NAN
    g = torch.Generator().manual_seed(7)
    # thresholds around the RMS so that some steps pass and some don't
    thr = (torch.rand(T, generator=g, dtype=torch.float64) * 2.5).to(DEVICE, state)
    args = (x, mo, xi, a, b, c, thr, i64(lo), i64(anchor))
    rms, top, bad = window_residual_triton(*args)
    rms0, top0, bad0 = res_naive.window_residual(*args)
    assert rms.shape == rms0.shape and rms.dtype == rms0.dtype and top.dtype == torch.int64
    close(rms, rms0, tol_of(state, model))
    assert top.shape == () and bad.shape == () and bad.dtype == torch.bool
    assert int(top) == int(top0) and bool(bad) == bool(bad0)
    if nan_row is not None and lo + nan_row >= anchor:
        assert not bool(bad)  # a NaN in a padded row never leaks


def test_window_residual_top_in_the_middle():
    T, H, B, D, lo = 12, 6, 2, 9, 3
    x, mo, xi, a, b, c, _, _ = make(T, H, B, D)
    rms0, _, _ = res_naive.window_residual(
        x, mo, xi, a, b, c, torch.zeros(T, dtype=x.dtype, device=DEVICE), i64(lo), i64(T)
    )
    thr = torch.full((T,), 1e9, dtype=x.dtype, device=DEVICE)
    thr[lo + 2] = 0.5 * rms0[2, 1]  # only step lo + 2 fails, and only for trajectory 1
    rms, top, bad = window_residual_triton(x, mo, xi, a, b, c, thr, i64(lo), i64(T))
    assert int(top) == lo + 2 and not bool(bad)
    close(rms, rms0, 1e-12)


# ----------------------------------------------------------------------------------------- fixed point / push

WALK_CASES = [
    # T, H, B, D, lo, top - lo, order, unit, noise, M, slot, strided
    (10, 4, 2, 7, 3, 2, 1, False, True, 2, 1, False),  # order 1, padded rows above top
    (10, 10, 1, 33, 0, 9, 10, False, False, 3, 0, False),  # H = T, order = H (whole window), nothing frozen
    (8, 1, 3, 1, 5, 0, 3, True, True, 4, 2, False),  # one step, D = 1
    (12, 7, 2, 300, 2, 4, 3, False, True, 6, 5, True),  # banded, top in the middle, M = 6, non-contiguous
    (12, 7, 2, 300, 2, 2, 2, True, False, 9, 3, False),  # banded unit weights, M = 9 (8 secant columns)
    (12, 7, 2, 30, 2, 6, 50, False, True, 5, 0, False),  # order >= H, M = 5
    (11, 9, 1, 1000, 1, 0, 3, False, True, 2, 0, False),  # top at lo
    (16, 13, 2, 17, 2, 10, 2, False, True, 3, 2, True),  # sliding lo, odd H
]
CONFIGS = [None, (4, 32, 4, 1), (1, 16, 1, 1)]  # defaults, order < BLOCK_P (k inside a tile), one-row tiles


def frozen_nans(mo, hR, lo, top, H, slot, M):
    """NaNs where only ``where``-masking keeps them out: model rows above top, older ring slots of frozen rows."""
    if top - lo + 1 < H:
        mo[top - lo + 1, 0, 0] = NAN
        mo[H - 1, -1, -1] = NAN
        hR[(slot - 1) % M, top + 1, 0, 0] = NAN


@pytest.mark.parametrize("T,H,B,D,lo,dtop,order,unit,noise,M,slot,strided", WALK_CASES)
@pytest.mark.parametrize("config", CONFIGS)
def test_window_fixed_point(T, H, B, D, lo, dtop, order, unit, noise, M, slot, strided, config):
    x, mo, xi, a, b, c, hR, _ = make(T, H, B, D, noise=noise, strided=strided, M=M)
    top = lo + dtop
    frozen_nans(mo, hR, lo, top, H, slot, M)
    x0 = x.clone()
    window_fixed_point_triton(x, mo, xi, a, b, c, i64(lo), i64(top), order, unit, config=config)
    fp_naive.window_fixed_point(x0, mo, xi, a, b, c, i64(lo), i64(top), order, unit)
    close(x, x0, 1e-12)
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("T,H,B,D,lo,dtop,order,unit,noise,M,slot,strided", WALK_CASES)
@pytest.mark.parametrize("config", CONFIGS)
def test_window_taa_push(T, H, B, D, lo, dtop, order, unit, noise, M, slot, strided, config):
    x, mo, xi, a, b, c, hR, hY = make(T, H, B, D, noise=noise, strided=strided, M=M)
    top = lo + dtop
    frozen_nans(mo, hR, lo, top, H, slot, M)
    hR0, hY0 = hR.clone(), hY.clone()
    G, h = window_taa_push_triton(x, mo, xi, a, b, c, i64(lo), i64(top), hR, hY, i64(slot), order, unit, config=config)
    G0, h0 = taa_naive.window_taa_push(x, mo, xi, a, b, c, i64(lo), i64(top), hR0, hY0, i64(slot), order, unit)
    assert G.shape == G0.shape and h.shape == h0.shape and G.dtype == G0.dtype
    close(hR, hR0, 1e-12)  # the whole ring: slot `slot` rows lo .. lo+H-1 written, nothing else touched
    close(hY, hY0, 1e-12)
    scale = G0.abs().max().item() + 1
    torch.testing.assert_close(G.cpu(), G0.cpu(), rtol=1e-11, atol=1e-12 * scale)
    torch.testing.assert_close(h.cpu(), h0.cpu(), rtol=1e-11, atol=1e-12 * scale)
    assert torch.isfinite(G).all() and torch.isfinite(h).all()


@pytest.mark.parametrize("model", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("order", [1, 3, 100])
def test_float32_state_half_model(model, order):
    T, H, B, D, lo, top, M, slot = 14, 9, 2, 257, 3, 9, 4, 1
    x, mo, xi, a, b, c, hR, hY = make(T, H, B, D, state=torch.float32, model=model, M=M, seed=3)
    hR0, hY0 = hR.clone(), hY.clone()
    G, h = window_taa_push_triton(x, mo, xi, a, b, c, i64(lo), i64(top), hR, hY, i64(slot), order)
    G0, h0 = taa_naive.window_taa_push(x, mo, xi, a, b, c, i64(lo), i64(top), hR0, hY0, i64(slot), order)
    close(hR, hR0, 2e-5)
    close(hY, hY0, 2e-5)
    for got, ref in ((G, G0), (h, h0)):
        assert (got - ref).norm() <= 1e-5 * ref.norm()
    x1, x0 = x.clone(), x.clone()
    window_fixed_point_triton(x1, mo, xi, a, b, c, i64(lo), i64(top), order)
    fp_naive.window_fixed_point(x0, mo, xi, a, b, c, i64(lo), i64(top), order)
    close(x1, x0, 2e-5)


# ------------------------------------------------------------------------------------------------------ update


@pytest.mark.parametrize(
    "T,H,B,D,lo,dtop,M,slot,strided",
    [
        (10, 4, 2, 7, 3, 2, 2, 1, False),
        (10, 10, 1, 33, 0, 9, 3, 0, False),
        (8, 1, 3, 1, 5, 0, 4, 3, False),
        (12, 7, 2, 300, 2, 4, 9, 5, True),
        (11, 9, 1, 1000, 1, 0, 5, 4, False),
    ],
)
def test_window_taa_update(T, H, B, D, lo, dtop, M, slot, strided):
    x, _, _, _, _, _, _, hY = make(T, H, B, D, strided=strided, M=M)
    g = torch.Generator().manual_seed(5)
    gamma = torch.randn(H, B, M - 1, generator=g, dtype=torch.float64).to(DEVICE)
    gamma[0] = 0  # the plain fixed-point step: reads Y_0 only
    if strided:
        gamma = gamma.transpose(0, 1).contiguous().transpose(0, 1)
    x0 = x.clone()
    window_taa_update_triton(x, hY, gamma, i64(slot), i64(lo), i64(lo + dtop))
    taa_naive.window_taa_update(x0, hY, gamma, i64(slot), i64(lo), i64(lo + dtop))
    close(x, x0, 1e-12)


# ------------------------------------------------------------------------------------- the whole TAA iteration


def test_iteration_chain_matches_reference():
    """residual -> push -> masked_lstsq -> update, three iterations, Triton vs the references (ring rotating)."""
    T, H, B, D, M = 12, 8, 2, 65, 3
    x, mo, xi, a, b, c, hR, hY = make(T, H, B, D, M=M, seed=11)
    hR.zero_()
    hY.zero_()
    thr = torch.full((T,), 0.05, dtype=x.dtype, device=DEVICE)
    state = [t.clone() for t in (x, hR, hY)], [t.clone() for t in (x, hR, hY)]
    lo, anchor = i64(2), i64(2 + H)
    from paratriton.ops.masked_lstsq.naive import masked_lstsq

    for it in range(3):
        slot = i64(it % M)
        outs = []
        for (xs, hRs, hYs), fused in zip(state, (True, False)):
            res = window_residual_triton if fused else res_naive.window_residual
            push = window_taa_push_triton if fused else taa_naive.window_taa_push
            upd = window_taa_update_triton if fused else taa_naive.window_taa_update
            rms, top, _bad = res(xs, mo, xi, a, b, c, thr, lo, anchor)
            G, h = push(xs, mo, xi, a, b, c, lo, top, hRs, hYs, slot, H)
            cols = torch.full((H,), min(it, M - 1), dtype=torch.int64, device=DEVICE)
            upd(xs, hYs, masked_lstsq(G, h, cols, 1e-3), slot, lo, top)
            outs.append((rms, top))
        close(outs[0][0], outs[1][0], 1e-10)
        assert int(outs[0][1]) == int(outs[1][1])
    close(state[0][0], state[1][0], 1e-10)


# ---------------------------------------------------------------------------------------------------- opcheck


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_window_ops(device):
    T, H, B, D, M = 7, 4, 2, 6, 3
    x, mo, xi, a, b, c, hR, hY = make(T, H, B, D, model=torch.float16, M=M, device=device)
    thr = torch.full((T,), 0.3, dtype=torch.float64, device=device)
    lo, top, anchor, slot = i64(2, device), i64(4, device), i64(5, device), i64(1, device)
    gamma = torch.randn(H, B, M - 1, dtype=torch.float64, device=device)
    cases = [
        (ops.window_residual, (x, mo, xi, a, b, c, thr, lo, anchor)),
        (ops.window_residual, (x, mo, None, a, b, c, thr, lo, anchor)),
        (ops.window_fixed_point, (x, mo, xi, a, b, c, lo, top, 2, False)),
        (ops.window_fixed_point, (x, mo, None, a, b, c, lo, top, 9, True)),
        (ops.window_taa_push, (x, mo, xi, a, b, c, lo, top, hR, hY, slot, 2, False)),
        (ops.window_taa_push, (x, mo, None, a, b, c, lo, top, hR, hY, slot, 9, True)),
        (ops.window_taa_update, (x, hY, gamma, slot, lo, top)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize(
    "H,B,lo,anchor,top", [(1, 1, 0, 1, 0), (7, 3, 2, 9, 5), (300, 2, 0, 280, 200), (5, 1, 4, 6, 4)]
)
@pytest.mark.parametrize("safeguard", [True, False])
@pytest.mark.parametrize("triangular", [True, False])
@pytest.mark.parametrize("ring", [2, 4])
def test_plan_matches_reference(H, B, lo, anchor, top, safeguard, triangular, ring):
    from paratriton.ops.window_taa.fused import window_taa_plan_triton

    T = lo + H + 3
    g = torch.Generator().manual_seed(H * 7 + lo)
    rms = torch.rand(H, B, generator=g, dtype=torch.float64)
    rms[0, 0] = NAN if H > 3 else rms[0, 0]  # a NaN residual never passes the safeguard's comparison
    count = torch.randint(0, 4, (T,), generator=g)
    prev_rms = torch.rand(T, generator=g, dtype=torch.float64)
    prev_accel = torch.rand(T, generator=g) < 0.5
    scal = [torch.tensor(v, device=DEVICE) for v in (lo, anchor, top)]
    state = [t.to(DEVICE) for t in (rms, count, prev_rms, prev_accel)]
    ref_state = [t.clone() for t in state]
    got = window_taa_plan_triton(*state, *scal, ring, safeguard, triangular)
    ref = taa_naive.window_taa_plan(*ref_state, *scal, ring, safeguard, triangular)
    assert torch.equal(got[0].cpu(), ref[0].cpu()) and int(got[1]) == int(ref[1])
    for a, b in zip(state[1:], ref_state[1:]):
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=0, atol=0, equal_nan=True)
