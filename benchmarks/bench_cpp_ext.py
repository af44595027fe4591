"""Compiled extension vs the plain-torch references (CPU: every op of ``_backends.OPS``) and vs Triton (GPU: the ops
of ``_backends.CUDA_OPS``, the others have no CUDA kernel), per solver op.

    python3 benchmarks/bench_cpp_ext.py --device cpu [--threads 16] [--out results.md]
    python3 benchmarks/bench_cpp_ext.py --device cuda [--out results.md]

Problem: a TAA iteration of a window of n = 50 steps, B trajectories of a 4x64x64 latent (D = 16384), history
m = 2 (ring of M = 3), float64 state, fp16 model output. Each time is the median over repeats of one call.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("PARATRITON_CUDA_OPS", "all")  # register every CUDA kernel; Triton comes back by dropping

import torch  # noqa: E402

import paratriton  # noqa: E402,F401
from paratriton import _backends  # noqa: E402
from paratriton.ops.masked_lstsq.naive import masked_lstsq  # noqa: E402
from paratriton.ops.order_k_residual.naive import order_k_residual  # noqa: E402
from paratriton.ops.step_residual.naive import step_residual  # noqa: E402
from paratriton.ops.taa.naive import taa_residual, taa_update  # noqa: E402

ops = torch.ops.paratriton


def timeit(fn, device, reps):
    for _ in range(3):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e) * 1e3)
        return statistics.median(times)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e6)
    return statistics.median(times)


def problem(n, B, D, m, device):
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*s, dtype=torch.float64):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)

    M = m + 1
    p = dict(
        x=rnd(n + 1, B, D),
        mo=rnd(n, B, D, dtype=torch.float16),
        xi=rnd(n, B, D),
        a=1 + 0.01 * rnd(n),
        b=-rnd(n).abs(),
        c=rnd(n).abs(),
        thr=torch.full((n,), 0.5, device=device, dtype=torch.float64),
        r=rnd(n, B, D),
        hR=rnd(M, n, B, D),
        hY=rnd(M, n, B, D),
        gamma=0.1 * rnd(n, B, m),
        h=rnd(n, B, m),
        num_cols=torch.full((n,), m, device=device),
    )
    A = rnd(n, B, m, 8)
    p["G"] = A @ A.transpose(-1, -2)
    return p


def cases(p, n):
    """(name, reference call, registered-op call) per op."""
    return [
        (
            "step_residual",
            lambda: step_residual(p["x"], p["mo"], p["xi"], p["a"], p["b"], p["c"], p["thr"]),
            lambda: ops.step_residual(p["x"], p["mo"], p["xi"], p["a"], p["b"], p["c"], p["thr"]),
        ),
        (
            "order_k_residual (k=n)",
            lambda: order_k_residual(p["r"], p["a"], n),
            lambda: ops.order_k_residual(p["r"], p["a"], n),
        ),
        (
            "masked_lstsq",
            lambda: masked_lstsq(p["G"], p["h"], p["num_cols"]),
            lambda: ops.masked_lstsq(p["G"], p["h"], p["num_cols"]),
        ),
        (
            "taa_residual (fused)",
            lambda: taa_residual(p["x"], p["mo"], p["xi"], p["a"], p["b"], p["c"], p["thr"], p["hR"], p["hY"], 1, n),
            lambda: ops.taa_residual(
                p["x"], p["mo"], p["xi"], p["a"], p["b"], p["c"], p["thr"], p["hR"], p["hY"], 1, n
            ),
        ),
        (
            "taa_update (ring)",
            lambda: taa_update(p["r"], p["hY"], p["gamma"], 1),
            lambda: ops.taa_update(p["r"], p["hY"], p["gamma"], 1),
        ),
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--B", type=int, default=2)
    ap.add_argument("--D", type=int, default=4 * 64 * 64)
    ap.add_argument("--m", type=int, default=2)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    reps = args.reps or (50 if dev == "cuda" else 10)
    st = _backends.extension_status()
    assert st["loaded"], st
    p = problem(args.n, args.B, args.D, args.m, dev)
    rows = []
    for name, ref, op in cases(p, args.n):
        if dev == "cuda" and name.split(" ")[0] not in _backends.CUDA_OPS:
            continue  # no CUDA kernel: the op runs its reference on CUDA tensors
        t_ref = timeit(ref, dev, reps)
        if dev == "cpu":
            t_ext = timeit(op, dev, reps)
            _backends.use_extension(False)
            _backends.use_extension(True)
            rows.append((name, t_ref, t_ext, None))
        else:
            t_ext = timeit(op, dev, reps)  # compiled CUDA kernel where there is one, else Triton
            base = name.split(" ")[0]
            _backends.use_extension(False)  # every op back on Triton
            t_tri = timeit(op, dev, reps)
            _backends.use_extension(True)
            has_cuda = base in st["cuda"]
            rows.append((name, t_ref, t_ext if has_cuda else None, t_tri))
    hdr = (
        f"device={dev} ({torch.cuda.get_device_name() if dev == 'cuda' else f'{torch.get_num_threads()} threads'})"
        f", torch {torch.__version__}, n={args.n} B={args.B} D={args.D} m={args.m}, float64 state, fp16 model "
        f"output; median of {reps} calls, microseconds"
    )
    lines = [hdr, ""]
    if dev == "cpu":
        lines += ["| op | reference (torch) | C++ (`_C`) | speed-up |", "|---|---:|---:|---:|"]
        for name, tr, te, _ in rows:
            lines.append(f"| {name} | {tr:.0f} | {te:.0f} | {tr / te:.1f}x |")
        tot_r = sum(r[1] for r in rows if r[0].startswith(("taa", "masked")))
        tot_e = sum(r[2] for r in rows if r[0].startswith(("taa", "masked")))
        lines.append(
            f"| **TAA iteration** (taa_residual + masked_lstsq + taa_update) | {tot_r:.0f} | {tot_e:.0f} | "
            f"{tot_r / tot_e:.1f}x |"
        )
    else:
        lines += ["| op | reference (torch) | CUDA (`_C`) | Triton | CUDA vs Triton |", "|---|---:|---:|---:|---:|"]
        for name, tr, tc, tt in rows:
            cu = f"{tc:.1f}" if tc is not None else "-"
            ratio = f"{tt / tc:.2f}x" if tc is not None else "-"
            lines.append(f"| {name} | {tr:.1f} | {cu} | {tt:.1f} | {ratio} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n\n")


if __name__ == "__main__":
    main()
