"""``window_gains``: the Triton kernels of ``window_gains/fused.py`` against the plain-torch oracle (``naive.py``),
called directly (the compiled kernels on CUDA, the interpreter on a CPU-only machine), and ``opcheck`` of the
registered op on every device.

Awkward shapes on purpose: odd D, a one-step window, the full window, a sliding ``lo``, an anchor inside the window
(frozen rows keep their gains), a batch where only some trajectories measure, steps never seen, gains above the
cap, T above the update kernel's tile (the running product carried across tiles), D split over several programs,
low-precision model terms, non-contiguous inputs and a NaN in a frozen row's model term."""

import pytest
import torch
from _kernel_env import DEVICE, DEVICES

import paratriton.ops  # noqa: F401  (registers torch.ops.paratriton.*)
from paratriton.ops.window_gains import naive
from paratriton.ops.window_gains.fused import window_gains_triton

ops = torch.ops.paratriton
MARGIN, GAIN_MAX = 16.0, 4.0


def make(T, H, B, D, lo, anchor, *, state=torch.float64, model=None, strided=False, seed=0, device=None):
    """Inputs of one gains update on ``device`` (drawn on the CPU in float64: the same values everywhere). The model
    terms move by various amounts against the previous ones so that every branch of the test is taken."""
    device = DEVICE if device is None else device
    model = state if model is None else model
    g = torch.Generator().manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    xin_prev, out_prev = rn(T, B, D), rn(T, B, D)
    idx = torch.arange(lo, lo + H)
    # per (step, trajectory) how far the input and the term move: 0 (no measurement), tiny, or O(1)
    move = torch.tensor([0.0, 1e-9, 0.3, 1.0])[torch.randint(0, 4, (H, B, 1), generator=g)]
    xin = xin_prev[idx] + move * rn(H, B, D)
    out = out_prev[idx] + (3 if T <= 100 else 0.5) * move * rn(H, B, D)  # long products stay finite
    a = 1 + 0.1 * torch.rand(T, generator=g, dtype=torch.float64)
    b = -2 * torch.rand(T, generator=g, dtype=torch.float64)
    floor = torch.where(torch.rand(T, generator=g) < 0.3, 1e-3, 0.0).double()
    gs = 1 + torch.rand(T, generator=g, dtype=torch.float64)
    gain = 0.5 + torch.rand(T, generator=g, dtype=torch.float64)
    geff = torch.rand(T, generator=g, dtype=torch.float64)
    seen = torch.rand(T, generator=g) < 0.8
    to = lambda t, dt=state: t.to(device, dt)  # noqa: E731
    xin, out = to(xin), to(out, model)
    if strided:  # made on the device (a copy to CUDA would make them contiguous)
        xin = torch.cat([xin, xin], -1)[..., ::2]
        out = out.transpose(0, 1).contiguous().transpose(0, 1)
    return dict(
        xin=xin, model_out=out, xin_prev=to(xin_prev), out_prev=to(out_prev), a=to(a), b=to(b),
        floor=to(floor), g=to(gs), gain=to(gain), geff=to(geff), seen=seen.to(device),
        gain_min=torch.tensor(1e-5, dtype=state, device=device),
        lo=torch.tensor(lo, device=device), anchor=torch.tensor(anchor, device=device),
    )  # fmt: skip


def run(fn, args, update_geff):
    args = {k: v.clone() if k in ("xin_prev", "out_prev", "gain", "geff", "seen") else v for k, v in args.items()}
    fn(**args, floor_margin=MARGIN, gain_max=GAIN_MAX, update_geff=update_geff)
    return args


CASES = [
    # T, H, B, D, lo, anchor
    (10, 4, 2, 7, 3, 10),  # sliding window, odd D
    (10, 4, 3, 7, 3, 5),  # anchor inside the window: rows 5, 6 frozen
    (9, 1, 1, 1, 5, 9),  # one step, D = 1
    (12, 12, 2, 33, 0, 12),  # full window
    (300, 300, 1, 5, 0, 300),  # T above the update kernel's tile
    (20, 6, 2, 3000, 7, 20),  # D split over several programs
]


@pytest.mark.parametrize("T,H,B,D,lo,anchor", CASES)
@pytest.mark.parametrize(
    "state,model", [(torch.float64, torch.float64), (torch.float32, torch.float16), (torch.float32, torch.bfloat16)]
)
@pytest.mark.parametrize("update_geff", [True, False])
def test_window_gains_matches_the_reference(T, H, B, D, lo, anchor, state, model, update_geff):
    args = make(T, H, B, D, lo, anchor, state=state, model=model)
    got, ref = run(window_gains_triton, args, update_geff), run(naive.window_gains, args, update_geff)
    tol = 1e-12 if state == torch.float64 else 2e-5
    for k in ("gain", "geff", "xin_prev", "out_prev"):
        torch.testing.assert_close(got[k].cpu(), ref[k].cpu(), rtol=tol, atol=tol, msg=k)
    assert torch.equal(got["seen"].cpu(), ref["seen"].cpu())
    # the reference's properties, so that the comparison is not between two wrong answers
    idx = torch.arange(lo, lo + H)
    assert bool(ref["seen"][idx.to(DEVICE)].all())
    assert torch.equal(ref["xin_prev"][lo : lo + H].cpu(), args["xin"].cpu())
    assert float(ref["gain"].max()) <= max(GAIN_MAX, float(args["gain"].max()))
    if not update_geff:
        assert torch.equal(got["geff"].cpu(), args["geff"].cpu())


def test_window_gains_measures_and_keeps():
    """Which steps get a new gain: moved, seen, below the anchor and above the floors; the others keep theirs."""
    T, H, B, D, lo, anchor = 10, 6, 2, 9, 2, 6
    args = make(T, H, B, D, lo, anchor, seed=3)
    ref = run(naive.window_gains, args, True)
    got = run(window_gains_triton, args, True)
    changed = (ref["gain"] != args["gain"]).cpu()
    assert changed.any() and not changed.all()
    assert not changed[:lo].any() and not changed[lo + H :].any() and not changed[anchor:].any()
    torch.testing.assert_close(got["gain"].cpu(), ref["gain"].cpu(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("strided", [True])
def test_window_gains_non_contiguous_inputs_and_nan_in_a_frozen_row(strided):
    T, H, B, D, lo, anchor = 11, 5, 2, 17, 4, 7
    args = make(T, H, B, D, lo, anchor, strided=strided)
    assert not args["xin"].is_contiguous() and not args["model_out"].is_contiguous()
    args["model_out"][anchor - lo, 1, 3] = float("nan")  # a frozen row: its gain is not measured
    got, ref = run(window_gains_triton, args, True), run(naive.window_gains, args, True)
    assert torch.isfinite(got["gain"]).all() and torch.isfinite(got["geff"]).all()
    torch.testing.assert_close(got["gain"].cpu(), ref["gain"].cpu(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got["geff"].cpu(), ref["geff"].cpu(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got["out_prev"].cpu(), ref["out_prev"].cpu(), equal_nan=True)


def test_window_gains_refuses_a_non_contiguous_buffer_it_updates():
    args = make(6, 2, 1, 4, 1, 6)
    args["gain"] = torch.ones(12, dtype=torch.float64, device=DEVICE)[::2]
    with pytest.raises(ValueError, match="gain must be contiguous"):
        window_gains_triton(**args, floor_margin=MARGIN, gain_max=GAIN_MAX, update_geff=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("update_geff", [True, False])
def test_opcheck_window_gains(device, update_geff):
    args = make(9, 4, 2, 6, 3, 8, state=torch.float32, model=torch.float16, device=device)
    torch.library.opcheck(ops.window_gains, (), {**args, "floor_margin": MARGIN, "gain_max": GAIN_MAX,
                                                  "update_geff": update_geff})  # fmt: skip
