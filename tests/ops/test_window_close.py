"""``window_close``: the Triton kernel of ``window_close/fused.py`` against the plain-torch oracle (``naive.py``),
called directly (the compiled kernel on CUDA, the interpreter on a CPU-only machine), and ``opcheck`` of the
registered op on every device.

Awkward shapes on purpose: a one-step window, the full window, a sliding ``lo``, a batch wider than the kernel's
batch tile, T above its step tile, a converged anchor (0: the iteration is not counted), the reopen check finding
nothing, a step in the middle, an unmeasured (infinite) step and a NaN residual (never "over"), the top row above
its threshold before it is zeroed, and no target at all."""

import pytest
import torch
from _kernel_env import DEVICE, DEVICES

import paratriton.ops  # noqa: F401  (registers torch.ops.paratriton.*)
from paratriton.ops.window_close import naive
from paratriton.ops.window_close.fused import window_close_triton

ops = torch.ops.paratriton
MUTATED = ("rms_all", "log_F", "log_res", "n_it", "anchor")


def make(T, H, B, lo, anchor, top, *, fits=False, over=(), seed=0, n=3, device=None):
    """Inputs on ``device``: residuals below their thresholds except at the steps ``over``."""
    device = DEVICE if device is None else device
    g = torch.Generator().manual_seed(seed)
    thr = 0.5 + torch.rand(T, generator=g, dtype=torch.float64)
    rms_all = torch.rand(T, B, generator=g, dtype=torch.float64) * 0.4
    for i in over:
        rms_all[i, B - 1] = 2.0
    cap = n + 4
    i64 = lambda v: torch.tensor(v, device=device)  # noqa: E731
    return dict(worst=torch.rand(H, generator=g, dtype=torch.float64).to(device), rms_all=rms_all.to(device),
                threshold=thr.to(device), log_F=torch.full((cap,), -7, device=device),
                log_res=torch.full((cap, T), float("nan"), dtype=torch.float64, device=device), n_it=i64(n),
                anchor=i64(anchor), top=i64(top), fits=torch.tensor(fits, device=device), lo=i64(lo))  # fmt: skip


def run(fn, args, reopen):
    args = {k: v.clone() if k in MUTATED else v for k, v in args.items()}
    fn(**args, reopen=reopen)
    return args


def check(args, reopen):
    got, ref = run(window_close_triton, args, reopen), run(naive.window_close, args, reopen)
    for k in MUTATED:
        torch.testing.assert_close(got[k].cpu(), ref[k].cpu(), rtol=0, atol=0, equal_nan=True, msg=k)
    return ref


CASES = [
    # T, H, B, lo, anchor, top, over
    (10, 4, 2, 3, 7, 5, ()),  # sliding window, nothing over
    (12, 12, 3, 0, 12, 0, (4, 9)),  # full window at step 0: steps 4 and 9 over
    (9, 1, 1, 5, 6, 5, ()),  # one step
    (1100, 700, 1, 0, 700, 0, (1050,)),  # T and H above the step tile
    (20, 6, 200, 0, 6, 0, (2,)),  # the batch above the batch tile
    (10, 4, 2, 0, 0, 0, ()),  # converged: the iteration is not counted
]


@pytest.mark.parametrize("T,H,B,lo,anchor,top,over", CASES)
@pytest.mark.parametrize("reopen", [True, False])
@pytest.mark.parametrize("fits", [True, False])
def test_window_close_matches_the_reference(T, H, B, lo, anchor, top, over, reopen, fits):
    args = make(T, H, B, lo, anchor, top, fits=fits, over=over)
    ref = check(args, reopen)
    # the reference's own properties, so that the comparison is not between two wrong answers
    assert int(ref["log_F"][3]) == anchor and int(ref["n_it"]) == 3 + (anchor > 0)
    assert bool((ref["rms_all"][top] == 0).all())
    torch.testing.assert_close(ref["log_res"][3, lo : lo + H].cpu(), args["worst"].cpu())
    opened = max(over, default=-1) + 1
    want = opened if (reopen and top == 0 and not fits) else top
    assert int(ref["anchor"]) == want


def test_window_close_reopen_skips_nan_and_sees_unmeasured_steps():
    args = make(10, 10, 2, 0, 10, 0)
    args["rms_all"][7, 0] = float("nan")  # never "over" (amax is NaN), even beside a residual that is
    args["rms_all"][7, 1] = 2.0
    args["rms_all"][4, 1] = float("inf")  # never measured: over
    assert int(check(args, True)["anchor"]) == 5


def test_window_close_zeroes_the_top_row_before_the_check():
    """(On CUDA: the scan must not depend on reading back the program's own store.)"""
    args = make(10, 4, 2, 0, 4, 0, over=(0,))  # step 0 over its threshold, but it took the exact step
    assert int(check(args, True)["anchor"]) == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reopen", [True, False])
def test_opcheck_window_close(device, reopen):
    args = make(9, 4, 2, 0, 6, 0, over=(5,), device=device)
    torch.library.opcheck(ops.window_close, (), {**args, "reopen": reopen})
