"""Sliding windows on the default model: iterations and window sizes per iteration (hardware independent), and
the wall time they imply for a DiT-XL/2-sized model on one H200 (from its measured graphed batch-time curve).

    python benchmarks/window_sweep.py --out window_sweep.json      # runs on the CPU in a few minutes

The prediction assumes a CUDA-graphed sliding-window iteration costs one model call on its rows plus the measured
per-iteration overhead of the graphed engine (0.4 ms when this was written, when only full windows were
graphed), so this is the case for building a graphed sliding window, not a measurement of one.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

import paratriton as pt

# graphed DiT-XL/2 call time (ms) by rows on one H200: benchmarks/results/issue9_e2e_h200.json (2, 26, 50, 100,
# 200 rows) and shared/design/device-baselines.md (1, 4, 8, 16, 32, 64, 128 rows), same device kind and torch
DIT_XL2_MS = {
    1: 3.67,
    2: 4.18,
    4: 5.31,
    8: 7.53,
    16: 12.17,
    26: 18.76,
    32: 21.77,
    50: 34.24,
    64: 43.61,
    100: 67.46,
    128: 85.86,
    200: 132.57,
}
OVERHEAD_MS = 0.4  # per iteration outside the model call (host sync, solver ops), measured for graphed_solver


def dit_ms(rows: int) -> float:
    xs = sorted(DIT_XL2_MS)
    return float(np.interp(rows, xs, [DIT_XL2_MS[x] for x in xs]))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--windows", type=int, nargs="+", default=[4, 8, 13, 25, 50, 100])
    p.add_argument("--out", default="window_sweep.json")
    args = p.parse_args()
    torch.set_num_threads(2)
    from paratriton.models import default_scheduler, load_default

    pipe = load_default(device="cpu")
    T, rows_out = args.steps, []
    for kind in ("ddim", "ddpm"):
        coeffs = pt.coefficients_from_scheduler(default_scheduler(kind), T)
        g = torch.Generator().manual_seed(0)
        x_T, noise = pipe.problem(1, T, generator=g)
        model = pipe.denoiser(coeffs, [3])
        ref = pt.solve(model, coeffs, x_T, noise, method="sequential").sample
        seq_ms = T * dit_ms(2)
        for method in ("taa", "picard"):
            for W in args.windows:
                res = pt.solve(model, coeffs, x_T, noise, method=method, window=W)
                sizes = [hi - lo for lo, hi in res.window_history]
                pred = sum(dit_ms(2 * n) + OVERHEAD_MS for n in sizes)
                mse = (res.sample - ref).square().mean().item()
                row = dict(
                    sampler=kind,
                    method=method,
                    window=W,
                    iterations=res.iterations,
                    nfe=res.nfe,
                    psnr=10 * np.log10(4 / mse) if mse > 0 else float("inf"),
                    dit_xl2_parallel_ms_pred=pred,
                    dit_xl2_sequential_graphed_ms=seq_ms,
                    dit_xl2_speedup_pred=seq_ms / pred,
                )
                rows_out.append(row)
                print(json.dumps(row), flush=True)
    with open(args.out, "w") as f:
        json.dump(rows_out, f, indent=1)


if __name__ == "__main__":
    main()
