"""``window_track``: the Triton kernel of ``window_track/fused.py`` against the plain-torch oracle (``naive.py``),
called directly (the compiled kernel on CUDA, the interpreter on a CPU-only machine), and ``opcheck`` of the
registered op on every device.

Awkward shapes on purpose: a one-step window, the full window, a sliding ``lo``, an anchor inside the window (frozen
rows keep their records), a batch wider than the kernel's batch tile, T above its step tile, steps never measured
(infinite residuals: the sample test cannot pass), NaN residuals (``amax`` and ``minimum`` propagate them), the
sample test passing and failing, and no target at all."""

import pytest
import torch
from _kernel_env import DEVICE, DEVICES

import paratriton.ops  # noqa: F401  (registers torch.ops.paratriton.*)
from paratriton.ops.window_track import naive
from paratriton.ops.window_track.fused import window_track_triton

ops = torch.ops.paratriton


def make(T, H, B, lo, anchor, *, state=torch.float64, seed=0, unmeasured=0, device=None):
    """Inputs on ``device`` (drawn on the CPU in float64). ``best`` is near the new residuals so that some steps
    halve and some stall; ``unmeasured`` steps at the top keep an infinite residual."""
    device = DEVICE if device is None else device
    g = torch.Generator().manual_seed(seed)
    rms = torch.rand(H, B, generator=g, dtype=torch.float64) * 1e-3
    rms_all = torch.rand(T, B, generator=g, dtype=torch.float64) * 1e-3
    if unmeasured:
        rms_all[T - unmeasured :] = float("inf")
    best = rms_all.amax(1) * (0.5 + 2 * torch.rand(T, generator=g, dtype=torch.float64))
    stall = torch.randint(0, 4, (T,), generator=g)
    geff = 1 + torch.rand(T, generator=g, dtype=torch.float64)
    floor = torch.where(torch.rand(T, generator=g) < 0.3, 1e-5, 0.0).double()
    to = lambda t: t.to(device, state if t.is_floating_point() else t.dtype)  # noqa: E731
    i64 = lambda v: torch.tensor(v, device=device)  # noqa: E731
    return dict(rms=to(rms), rms_all=to(rms_all), best=to(best), stall=to(stall), geff=to(geff), floor=to(floor),
                top=i64(lo + H // 2), lo=i64(lo), anchor=i64(anchor))  # fmt: skip


def run(fn, args, tol):
    args = {k: v.clone() if k in ("rms_all", "best", "stall") else v for k, v in args.items()}
    top, fits, worst = fn(**args, tol=tol)
    return args, top, fits, worst


def check(args, tol, state):
    got, ref = run(window_track_triton, args, tol), run(naive.window_track, args, tol)
    eps = 1e-12 if state == torch.float64 else 1e-6
    for k in ("rms_all", "best"):
        torch.testing.assert_close(got[0][k].cpu(), ref[0][k].cpu(), rtol=eps, atol=0, equal_nan=True, msg=k)
    assert torch.equal(got[0]["stall"].cpu(), ref[0]["stall"].cpu())
    torch.testing.assert_close(got[3].cpu(), ref[3].cpu(), rtol=eps, atol=0, equal_nan=True)
    assert got[1].shape == () and got[1].dtype == torch.int64 and got[2].dtype == torch.bool
    assert int(got[1]) == int(ref[1]) and bool(got[2]) == bool(ref[2])
    return ref


CASES = [
    # T, H, B, lo, anchor
    (10, 4, 2, 3, 10),  # sliding window
    (10, 4, 3, 3, 5),  # anchor inside the window: rows 5, 6 frozen
    (9, 1, 1, 5, 9),  # one step
    (12, 12, 2, 0, 12),  # full window
    (1100, 700, 1, 0, 1100),  # T and H above the step tile
    (20, 6, 200, 0, 15),  # the batch above the batch tile
]


@pytest.mark.parametrize("T,H,B,lo,anchor", CASES)
@pytest.mark.parametrize("state", [torch.float64, torch.float32])
@pytest.mark.parametrize("tol", [None, 1.0, 1e-9])
def test_window_track_matches_the_reference(T, H, B, lo, anchor, state, tol):
    args = make(T, H, B, lo, anchor, state=state)
    ref = check(args, tol, state)
    # the reference's own properties, so that the comparison is not between two wrong answers
    idx = torch.arange(lo, lo + H)
    live = idx < anchor
    changed = (ref[0]["stall"] != args["stall"]).cpu()
    assert not changed[:lo].any() and not changed[lo + H :].any() and not changed[idx[~live]].any()
    if tol == 1.0 and lo == 0:
        assert bool(ref[2]) and int(ref[1]) == 0  # the sample test passes: the window stops at step 0
    if tol in (None, 1e-9):
        assert not bool(ref[2]) and int(ref[1]) == int(args["top"])


def test_window_track_unmeasured_steps_never_fit():
    args = make(10, 4, 2, 0, 10, unmeasured=3)
    ref = check(args, 1e9, torch.float64)
    assert not bool(ref[2])


def test_window_track_nan_residuals_propagate_and_never_fit():
    args = make(10, 5, 3, 0, 10)
    args["rms"][2, 1] = float("nan")
    args["rms"][4, 0] = float("nan")
    ref = check(args, 1e9, torch.float64)
    assert torch.isnan(ref[3][2]) and torch.isnan(ref[0]["best"][2]) and not bool(ref[2])


def test_window_track_refuses_a_non_contiguous_buffer_it_updates():
    args = make(6, 2, 1, 1, 6)
    args["best"] = torch.ones(12, dtype=torch.float64, device=DEVICE)[::2]
    with pytest.raises(ValueError, match="best must be contiguous"):
        window_track_triton(**args, tol=None)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tol", [None, 1e-3])
def test_opcheck_window_track(device, tol):
    args = make(9, 4, 2, 3, 8, state=torch.float32, device=device)
    torch.library.opcheck(ops.window_track, (), {**args, "tol": tol})


@pytest.mark.parametrize("margin,fits", [(0.999, False), (1.001, True)])
def test_window_track_sample_test_at_its_boundary(margin, fits):
    """The bound is the geff-weighted sum less the floors' share: a target just below it fails, just above passes."""
    args = make(30, 30, 2, 0, 30, seed=5)
    ref = run(naive.window_track, args, None)[0]
    bound = float(((args["geff"][:, None] * ref["rms_all"]).sum(0) - (args["geff"] * args["floor"]).sum()).max())
    got = check(args, margin * bound, torch.float64)
    assert bool(got[2]) == fits and (int(got[1]) == 0) == fits
