"""``graphed_solver(iters_per_sync=k)``: what the host round trip per iteration costs, on the default model.

    PYTHONPATH=. python benchmarks/iters_per_sync.py --out sync.json          # CUDA
    PYTHONPATH=. python benchmarks/iters_per_sync.py --out /tmp/s.json --tiny # CPU smoke test (no graphs)

Default model, batch 1, CFG at its default scale, DDIM-100 and DDPM-100. Side by side in one process: the graphed
sequential sampler, then full-window TAA and Picard W=8 with k = 1, 2, 4, 8 iterations per graph replay (k = 1 is
one host read of the window top per iteration). Every k gives the same iterates (tested), so only the time may
differ: fewer host round trips against up to k - 1 masked iterations at the end and at bucket changes. Each time is
the median of ``--reps`` solves after a capturing one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from end_to_end import digits_denoiser  # benchmarks/ is on sys.path when this file runs as a script

import paratriton as pt
from paratriton.models import default_scheduler, load_default
from paratriton.solvers import graphed_solver
from paratriton.solvers.graphed_sequential import GraphedSequential


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="sync.json")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--tiny", action="store_true", help="CPU, T=10, for a smoke test")
    args = p.parse_args()
    cuda = torch.cuda.is_available() and not args.tiny
    dev = torch.device("cuda" if cuda else "cpu")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    T = 10 if args.tiny else 100
    pipe = load_default(device=dev, dtype=torch.float16 if cuda else torch.float32)
    labels = torch.tensor([3], device=dev)
    report = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__, "T": T, "rows": []}

    def timed(run) -> tuple[float, object]:
        run()  # captures
        times, res = [], None
        for _ in range(args.reps):
            sync()
            t0 = time.perf_counter()
            res = run()
            sync()
            times.append(1e3 * (time.perf_counter() - t0))
        return statistics.median(times), res

    with torch.no_grad():
        for kind in ("ddim", "ddpm"):
            coeffs = pt.coefficients_from_scheduler(default_scheduler(kind), T)
            model = digits_denoiser(pipe, coeffs, labels, pipe.default_guidance_scale)
            g = torch.Generator().manual_seed(0)
            x_T = torch.randn(1, *pipe.sample_shape, generator=g, dtype=torch.float64).to(dev)
            noise = (
                torch.randn(T, 1, *pipe.sample_shape, generator=g, dtype=torch.float64).to(dev)
                if coeffs.is_stochastic
                else None
            )
            seq_ms, seq = timed(GraphedSequential(model, coeffs, x_T, noise, cuda_graph=cuda).run)
            for name, kw in (("taa", {}), ("picard W=8", dict(method="picard", window=8))):
                base = None
                for k in args.ks:
                    solver = graphed_solver(**kw, iters_per_sync=k, cuda_graph=cuda)
                    ms, res = timed(lambda: solver.solve(model, coeffs, x_T, noise))
                    if base is None:
                        base = res.sample.clone()
                    row = dict(
                        sampler=f"{kind.upper()}-{T}",
                        method=name,
                        iters_per_sync=k,
                        ms=ms,
                        iterations=res.iterations,
                        graphed_sequential_ms=seq_ms,
                        speedup=seq_ms / ms,
                        rel_diff_vs_k1=((res.sample - base).norm() / base.norm()).item(),
                        rel_diff_vs_sequential=(
                            (res.sample - seq.sample.double()).norm() / seq.sample.double().norm()
                        ).item(),
                    )
                    report["rows"].append(row)
                    print(json.dumps(row), flush=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
