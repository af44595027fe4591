"""``thresholds``: the Triton kernel of ``thresholds/fused.py`` against the plain-torch oracle (``naive.py``), called
directly (the compiled kernel on CUDA, the interpreter on a CPU-only machine), and ``opcheck`` of the registered op
on every device. Awkward shapes: one step, T above the kernel's block, steps where each branch wins (the scaled
target, the floor, the stalled floor), non-contiguous inputs."""

import pytest
import torch
from _kernel_env import DEVICE, DEVICES

import paratriton.ops  # noqa: F401  (registers torch.ops.paratriton.*)
from paratriton.ops.thresholds import naive
from paratriton.ops.thresholds.fused import thresholds_triton

ops = torch.ops.paratriton


def make(T, *, state=torch.float64, strided=False, seed=0, device=None):
    device = DEVICE if device is None else device
    g = torch.Generator().manual_seed(seed)
    r = lambda: torch.rand(T, generator=g, dtype=torch.float64)  # noqa: E731
    thr0, gs, geff = 1e-3 * r(), 1 + r(), 1 + 3 * r()
    floor = torch.where(r() < 0.5, 1e-4 * r(), 0.0)  # some floors above the scaled target, some zero
    stall = torch.randint(0, 4, (T,), generator=g)
    out = [t.to(device, state) for t in (thr0, gs, geff, floor)] + [stall.to(device)]
    if strided:
        out = [torch.stack([t, t], -1)[:, 0] for t in out]
        assert T == 1 or not out[0].is_contiguous()  # (one element is contiguous whatever its stride)
    return out


@pytest.mark.parametrize("T", [1, 7, 1000, 3000])
@pytest.mark.parametrize("state", [torch.float64, torch.float32])
@pytest.mark.parametrize("strided", [False, True])
def test_thresholds_match_the_reference(T, state, strided):
    args = make(T, state=state, strided=strided)
    got, ref = thresholds_triton(*args, 2, 4.0), naive.thresholds(*args, 2, 4.0)
    assert got.shape == ref.shape == (T,) and got.dtype == ref.dtype == state
    torch.testing.assert_close(got.cpu(), ref.cpu(), rtol=1e-12 if state == torch.float64 else 1e-6, atol=0)


def test_thresholds_take_every_branch():
    thr0, gs, geff, floor, stall = make(1000)
    ref = naive.thresholds(thr0, gs, geff, floor, stall, 2, 4.0)
    scaled = thr0 * gs / geff
    assert (ref == scaled).any() and (ref == floor).any() and (ref == 4.0 * floor).any()
    torch.testing.assert_close(thresholds_triton(thr0, gs, geff, floor, stall, 2, 4.0).cpu(), ref.cpu())


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_thresholds(device):
    torch.library.opcheck(ops.thresholds, (*make(9, state=torch.float32, device=device), 2, 4.0))
