"""The multistep drift: the Triton kernel of ``multistep_drift/fused.py`` against its plain-torch oracle and a
row-by-row float64 loop, on the compiled kernel on CUDA (the interpreter on a CPU-only machine), plus ``opcheck``.

Awkward shapes: odd D and T, window 1 and the whole schedule, a sliding ``lo``, the anchor inside the window (frozen
rows whose outputs are NaN must never reach the ring or the drift), 1 to 13 taps, taps past the last step,
non-contiguous and fp16 tap outputs."""

import pytest
import torch
from _kernel_env import DEVICE, DEVICES

import paratriton.ops  # noqa: F401  (registers torch.ops.paratriton.*)
from paratriton.ops.multistep_drift import naive
from paratriton.ops.multistep_drift.fused import multistep_drift_triton


def make(T, H, B, D, K, lo, anchor, *, model=torch.float64, strided=False, device=None):
    device = DEVICE if device is None else device
    g = torch.Generator().manual_seed(T * 131 + H * 7 + K)
    rn = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    M = rn(B, H, D).transpose(0, 1) if strided else rn(H, B, D)
    rows = lo + torch.arange(H)
    M[rows >= anchor] = float("nan")  # frozen rows: their (padded) outputs are never used
    ring = rn(T, B, D)
    w = rn(T, K)
    w[torch.arange(T)[:, None] + torch.arange(K)[None, :] >= T] = 0.0  # taps past the last step
    t = lambda v, dt=torch.float64: v.to(device, dt)  # noqa: E731
    return t(M, model), t(ring), t(w), torch.tensor(lo, device=device), torch.tensor(anchor, device=device)


def loop_reference(M, ring, w, lo, anchor):
    """Row by row in float64: the ring after the update and the drift."""
    ring = ring.double().cpu().clone()
    M, w = M.double().cpu(), w.double().cpu()
    lo, anchor, H = int(lo), int(anchor), M.shape[0]
    for h in range(H):
        if lo + h < anchor:
            ring[lo + h] = M[h]
    g = torch.zeros(M.shape, dtype=torch.float64)
    for h in range(H):
        for j in range(w.shape[1]):
            if w[lo + h, j] != 0:
                g[h] += w[lo + h, j] * ring[lo + h + j]
    return g, ring


CASES = [  # T, H, B, D, K, lo, anchor
    (7, 7, 1, 1, 1, 0, 7),
    (9, 1, 2, 5, 2, 4, 5),
    (13, 5, 3, 17, 3, 6, 11),  # sliding, the anchor inside the window: 2 frozen rows
    (25, 25, 2, 33, 4, 0, 20),  # full, padded above the anchor
    (20, 8, 1, 1031, 5, 12, 20),  # D above one tile
    (30, 12, 2, 9, 13, 3, 15),  # PNDM's Runge-Kutta warm-up: 13 taps
]


@pytest.mark.parametrize("T,H,B,D,K,lo,anchor", CASES)
@pytest.mark.parametrize("strided", [False, True])
def test_kernel_matches_the_loop_and_the_oracle(T, H, B, D, K, lo, anchor, strided):
    M, ring, w, lo_t, an_t = make(T, H, B, D, K, lo, anchor, strided=strided)
    g_loop, ring_loop = loop_reference(M, ring, w, lo_t, an_t)
    ring_k, ring_n = ring.clone(), ring.clone()
    g_k = multistep_drift_triton(M, ring_k, w, lo_t, an_t)
    g_n = naive.multistep_drift(M, ring_n, w, lo_t, an_t)
    for got, gring in ((g_k, ring_k), (g_n, ring_n)):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.cpu(), g_loop, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gring.cpu(), ring_loop, rtol=0, atol=0)


@pytest.mark.parametrize("state", [torch.float32, torch.float64])
def test_fp16_tap_outputs_into_a_lower_precision_state(state):
    T, H, B, D, K, lo, anchor = 11, 6, 2, 19, 3, 3, 8
    M, ring, w, lo_t, an_t = make(T, H, B, D, K, lo, anchor, model=torch.float16)
    ring = ring.to(state)
    g_loop, ring_loop = loop_reference(M, ring, w, lo_t, an_t)
    ring_k = ring.clone()
    g_k = multistep_drift_triton(M, ring_k, w.to(state), lo_t, an_t)
    assert g_k.dtype == state
    tol = 1e-12 if state == torch.float64 else 2e-5
    torch.testing.assert_close(g_k.cpu().double(), g_loop, rtol=tol, atol=tol)
    torch.testing.assert_close(ring_k.cpu().double(), ring_loop, rtol=tol, atol=tol)


@pytest.mark.parametrize("device", DEVICES)
def test_registered_op_passes_opcheck(device):
    M, ring, w, lo_t, an_t = make(13, 5, 2, 7, 3, 6, 10, device=torch.device(device))
    torch.library.opcheck(torch.ops.paratriton.multistep_drift, (M, ring, w, lo_t, an_t))
    g_loop, _ = loop_reference(M, ring, w, lo_t, an_t)
    got = paratriton.ops.multistep_drift(M, ring.clone(), w, lo_t, an_t)
    torch.testing.assert_close(got.cpu(), g_loop, rtol=1e-12, atol=1e-12)
