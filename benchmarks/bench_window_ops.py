"""Microbenchmarks of the engine's window ops (the Triton kernels of ``paratriton/ops/window_*/fused.py``).

    python benchmarks/bench_window_ops.py --out benchmarks/results/window_ops_h200.json

For every D in {4096, 16384, 65536}, H in {32, 100}, B in {1, 8} and history m in {2, 3, 5} (ring M = m + 1): each
op, and a whole TAA iteration's solver work (``window_residual`` + ``window_taa_push`` + ``masked_lstsq`` +
``window_taa_update``, through the registered ops), captured in a CUDA graph (``paratriton._cuda_graph.capture``,
``--inner`` repetitions per graph to amortise the replay launch) and timed with CUDA events (``median_ms``).
Reported: ms per call / iteration, the bytes each kernel must move (counted in ``op_bytes``), the achieved
bandwidth and its share of a measured ``torch.Tensor.copy_`` of a large buffer (read + write counted). The window
is the worst case: every step live (``top = lo + H - 1``), ``T = 100`` steps, ``lo = T - H``, float32 state, fp16
model output, order = H (the default whole-window order), no noise unless ``--noise``.

Issue 16's targets: the graphed TAA iteration at D=4096, H=100, B=1, m=2 in <= 0.09 ms; >= 80% of copy bandwidth
for D >= 65536. On a machine without CUDA this script prints that and exits (writing ``{"skipped": ...}`` to
``--out`` when given).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


def copy_bandwidth(dev: torch.device, numel: int = 2**28) -> float:
    """Bytes/s of a device-to-device ``copy_`` of ``numel`` float32 (read + write counted)."""
    from paratriton._cuda_graph import median_ms

    src = torch.empty(numel, dtype=torch.float32, device=dev)
    dst = torch.empty_like(src)
    dst.copy_(src)
    ms = median_ms(lambda: dst.copy_(src), reps=20)
    return 2 * numel * 4 / (ms * 1e-3)


def op_bytes(op: str, H: int, B: int, D: int, m: int, noise: bool, state: int = 4, model: int = 2) -> int:
    """What each op must read and write at least (the rows it touches once; scalars and Gram-sized data ignored).

    residual: x rows lo .. lo+H (H + 1), model_out (H), noise (H); push: the same inputs plus the m older ring
    slots of R (m H), writes R and Y (2 H); update: the m + 1 newest Y slots (read), x (write, H); fixed point: the
    residual's inputs plus the x write (H)."""
    row = B * D
    inputs = ((H + 1) * state + H * model + (H * state if noise else 0)) * row
    if op == "residual":
        return inputs
    if op == "push":
        return inputs + (m + 2) * H * state * row
    if op == "update":
        return (m + 2) * H * state * row
    if op == "fixed_point":
        return inputs + H * state * row
    if op == "lstsq":
        return 0
    if op == "iteration":
        return sum(op_bytes(o, H, B, D, m, noise, state, model) for o in ("residual", "push", "update"))
    raise ValueError(op)


def graphed_ms(fn, inner: int, reps: int) -> float:
    """ms per call of ``fn`` replayed ``inner`` times inside one CUDA graph."""
    from paratriton._cuda_graph import capture, median_ms

    def body():
        for _ in range(inner):
            fn()

    graph, _ = capture(body)
    graph.replay()
    torch.cuda.synchronize()
    return median_ms(graph.replay, reps=reps) / inner


def bench_case(D: int, H: int, B: int, m: int, *, noise: bool, inner: int, reps: int, T: int = 100) -> dict:
    import paratriton.ops  # noqa: F401  (registers torch.ops.paratriton.*)
    from paratriton.ops.window_fixed_point.fused import window_fixed_point_triton
    from paratriton.ops.window_residual.fused import window_residual_triton
    from paratriton.ops.window_taa.fused import (
        window_taa_push_triton,
        window_taa_update_triton,
    )

    ops = torch.ops.paratriton
    dev = torch.device("cuda")
    dt = torch.float32
    M = m + 1
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(T + 1, B, D, device=dev, dtype=dt, generator=g)
    mo = torch.randn(H, B, D, device=dev, dtype=dt, generator=g).half()
    xi = torch.randn(T, B, D, device=dev, dtype=dt, generator=g) if noise else None
    a = 1 + 0.01 * torch.rand(T, device=dev, dtype=dt, generator=g)
    b = -0.1 * torch.rand(T, device=dev, dtype=dt, generator=g)
    c = 0.1 * torch.rand(T, device=dev, dtype=dt, generator=g)
    thr = torch.full((T,), 1e-3, device=dev, dtype=dt)
    hR = torch.randn(M, T, B, D, device=dev, dtype=dt, generator=g)
    hY = torch.randn(M, T, B, D, device=dev, dtype=dt, generator=g)
    lo = torch.tensor(T - H, device=dev)
    anchor = torch.tensor(T, device=dev)
    top = torch.tensor(T - 1, device=dev)
    slot = torch.zeros((), dtype=torch.long, device=dev)
    gamma = 0.1 * torch.randn(H, B, m, device=dev, dtype=dt, generator=g)  # nonzero: every older slot is read
    G0, h0 = window_taa_push_triton(x, mo, xi, a, b, c, lo, top, hR, hY, slot, H)
    cols = torch.full((H,), m, dtype=torch.long, device=dev)
    x0 = x.clone()

    def iteration():
        _rms, t, _bad = ops.window_residual(x, mo, xi, a, b, c, thr, lo, anchor)
        G, h = ops.window_taa_push(x, mo, xi, a, b, c, lo, t, hR, hY, slot, H, False)
        gam = ops.masked_lstsq(G, h, cols, 1e-3)
        ops.window_taa_update(x, hY, gam, slot, lo, t)
        slot.copy_((slot + 1) % M)

    fns = {
        "residual": lambda: window_residual_triton(x, mo, xi, a, b, c, thr, lo, anchor),
        "push": lambda: window_taa_push_triton(x, mo, xi, a, b, c, lo, top, hR, hY, slot, H),
        "update": lambda: window_taa_update_triton(x, hY, gamma, slot, lo, top),
        "fixed_point": lambda: window_fixed_point_triton(x, mo, xi, a, b, c, lo, top, H),
        "lstsq": lambda: ops.masked_lstsq(G0, h0, cols, 1e-3),
        "iteration": iteration,
    }
    out = {}
    for name, fn in fns.items():
        x.copy_(x0)
        ms = graphed_ms(fn, inner, reps)
        nbytes = op_bytes(name, H, B, D, m, noise)
        out[name] = {"ms": ms, "bytes": nbytes, "GBps": nbytes / (ms * 1e-3) / 1e9 if nbytes else None}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="JSON results path")
    ap.add_argument("--D", type=int, nargs="*", default=[4096, 16384, 65536])
    ap.add_argument("--H", type=int, nargs="*", default=[32, 100])
    ap.add_argument("--B", type=int, nargs="*", default=[1, 8])
    ap.add_argument("--m", type=int, nargs="*", default=[2, 3, 5])
    ap.add_argument("--noise", action="store_true", help="stochastic sampler (noise read by every pass)")
    ap.add_argument("--inner", type=int, default=10, help="calls per captured graph")
    ap.add_argument("--reps", type=int, default=20, help="graph replays timed (median)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        msg = (
            "bench_window_ops: no CUDA device; these benchmarks time the compiled Triton kernels inside CUDA "
            "graphs and need a GPU (nothing measured)"
        )
        print(msg)
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"skipped": msg}, f, indent=1)
        return 0
    dev = torch.device("cuda")
    bw = copy_bandwidth(dev)
    print(f"copy_ bandwidth: {bw / 1e9:.0f} GB/s ({torch.cuda.get_device_name(dev)})")
    rows = []
    for D in args.D:
        for H in args.H:
            for B in args.B:
                for m in args.m:
                    res = bench_case(D, H, B, m, noise=args.noise, inner=args.inner, reps=args.reps)
                    for r in res.values():
                        r["bandwidth_share"] = None if r["GBps"] is None else r["GBps"] * 1e9 / bw
                    rows.append({"D": D, "H": H, "B": B, "m": m, "noise": args.noise, **res})
                    it = res["iteration"]
                    share = it["bandwidth_share"]
                    print(
                        f"D={D:6d} H={H:3d} B={B} m={m}: iteration {it['ms']:.4f} ms ({share:.0%} of copy)  "
                        + "  ".join(f"{k} {v['ms']:.4f}" for k, v in res.items() if k != "iteration"),
                        flush=True,
                    )
    result = {
        "device": torch.cuda.get_device_name(dev),
        "copy_GBps": bw / 1e9,
        "state": "float32",
        "model": "float16",
        "rows": rows,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
