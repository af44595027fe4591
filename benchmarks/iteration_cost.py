"""Where a graphed iteration's time goes on CUDA (issue 23's 7x goal): digits model, DDIM-100, batch 1, CFG.

    PYTHONPATH=. python benchmarks/iteration_cost.py [--out FILE]

For fp16 and fp32 (TF32 off), TAA and Picard at the default tolerance: graphed wall per iteration, against the
graphed model call alone on the full window's rows (``2 T`` with CFG), so the solver's overhead per iteration is
the difference. Then one eager TAA solve under the profiler: the top CUDA kernels by total time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from end_to_end import shipped_problem, timed

import paratriton as pt
from paratriton._cuda_graph import capture, median_ms
from paratriton.solvers import graphed_solver
from paratriton.solvers.graphed_sequential import GraphedSequential


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    rows = []
    T = 100
    for dtype in (torch.float16, torch.float32):
        pipe = pt.models.load("digits", device=dev, dtype=dtype)
        model, coeffs, x_T, _ = shipped_problem(pipe, "ddim", T, 1, dev, 0)
        seq = GraphedSequential(model, coeffs, x_T, None)  # captures once; run() replays
        seq_ms = 1e3 * timed(seq.run, 5)[0]
        xs = torch.randn(T, *x_T.shape[1:], device=dev, dtype=torch.float32)
        steps = torch.arange(T, device=dev)
        graph, _ = capture(lambda: model(xs, steps))
        model_ms = median_ms(graph.replay, 20)
        for method in ("taa", "picard"):
            for probes in (True, False):
                solver = graphed_solver(method, **({} if probes else {"tol_abs": 1e-9, "max_iters": 9}))
                solver.solve(model, coeffs, x_T)
                wall, res = timed(lambda: solver.solve(model, coeffs, x_T), 5)
                row = dict(
                    dtype=str(dtype),
                    method=method,
                    default_tol=probes,
                    iterations=res.iterations,
                    probe_calls=res.probe_calls,
                    ms=1e3 * wall,
                    ms_per_iteration=1e3 * wall / res.iterations,
                    model_call_ms_full_window=model_ms,
                    graphed_sequential_ms=seq_ms,
                    speedup=seq_ms / (1e3 * wall),
                )
                rows.append(row)
                print(json.dumps(row), flush=True)
        if dtype == torch.float16:
            from torch.profiler import ProfilerActivity, profile

            pt.solve(model, coeffs, x_T, method="taa")
            with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
                r = pt.solve(model, coeffs, x_T, method="taa")
                torch.cuda.synchronize()
            print("eager taa iterations", r.iterations)
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
