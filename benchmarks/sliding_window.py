"""Measured: CUDA-graphed sliding-window solvers on a DiT-XL/2-sized model, 1 or more GPUs, vs graphed sequential.

    torchrun --nproc_per_node=N benchmarks/sliding_window.py --out sliding.json

DiT-XL/2 (random weights, fp16), DDIM-100 with classifier-free guidance (scale 4), batch 1. Each case runs
``graphed_solver(method, window=W)`` for exactly the number of iterations the default model needed with that method
and window (``benchmarks/results/issue9_window_sweep_default_model.json``): random weights do not converge like a
trained model, but an iteration's cost does not depend on the weights (always W windows rows, one graph replay,
one host sync), so the wall time is the cost of sampling at the measured iteration counts. With several ranks the
model call inside the graph is sharded (``ShardedDenoiser``, one NCCL all-gather per iteration, captured too).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.distributed as dist

import paratriton as pt
from paratriton.distributed import ShardedDenoiser, init_process_group
from paratriton.solvers import graphed_solver
from paratriton.solvers.graphed_sequential import GraphedSequential

# (method, window, iterations on the default model, DDIM-100, batch 1, default tolerance)
CASES = [("picard", 8, 27), ("picard", 13, 19), ("picard", 25, 14), ("taa", 4, 45), ("taa", 8, 30), ("taa", 13, 23)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="sliding.json")
    p.add_argument("--tiny", action="store_true", help="a 1-layer DiT, for a smoke test on the CPU")
    args = p.parse_args()
    rank, world, dev = init_process_group()
    from diffusers import DDIMScheduler, DiTTransformer2DModel

    torch.manual_seed(0)
    net = DiTTransformer2DModel(
        num_attention_heads=2 if args.tiny else 16,
        attention_head_dim=8 if args.tiny else 72,
        in_channels=4,
        out_channels=8,
        num_layers=1 if args.tiny else 28,
        sample_size=32,
        patch_size=2,
        num_embeds_ada_norm=1000,
    )
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    net = net.to(dev, dtype).eval().requires_grad_(False)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    T = 100
    coeffs = pt.coefficients_from_scheduler(DDIMScheduler(clip_sample=False), T)
    ts = coeffs.timesteps.to(dev, torch.long)

    def two_branch(x2, s2, cond):
        y = torch.where(cond, 207, 1000)  # class 207, or the null class 1000 on the unconditional rows
        with torch.no_grad():
            return net(x2.to(dtype), timestep=ts[s2], class_labels=y).sample[:, :4].float()

    single = pt.ClassifierFreeGuidance(two_branch, 4.0, pass_branch=True)
    model = pt.ClassifierFreeGuidance(ShardedDenoiser(two_branch), 4.0, pass_branch=True) if world > 1 else single
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(1, 4, 32, 32, generator=g, dtype=torch.float64).to(dev)
    report = {
        "world": world,
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
        "model": "DiT-XL/2 random weights fp16",
        "sampler": "DDIM-100, CFG 4, batch 1",
    }
    if rank == 0:
        seq = GraphedSequential(single, coeffs, x_T)
        seq.run()
        sync()
        t0 = time.perf_counter()
        for _ in range(3):
            seq.run()
        sync()
        report["graphed_sequential_ms"] = 1e3 * (time.perf_counter() - t0) / 3
    rows = []
    for method, W, iters in CASES:
        kw = dict(method=method, window=W, max_iters=iters, tol_abs=1e-12, tol_rel=1e-12)  # exactly `iters` iters
        if method == "taa":
            kw["history"] = 2
        solver = graphed_solver(**kw)
        solver.solve(model, coeffs, x_T)  # captures
        sync()
        dist.barrier()
        t0 = time.perf_counter()
        res = solver.solve(model, coeffs, x_T)
        sync()
        ms = 1e3 * (time.perf_counter() - t0)
        rows.append(
            dict(
                method=method,
                window=W,
                iterations=res.iterations,
                wall_ms=ms,
                ms_per_iteration=ms / res.iterations,
                finite=bool(torch.isfinite(res.sample).all()),
            )
        )
    report["cases"] = rows
    if rank == 0:
        for r in rows:
            r["speedup_vs_graphed_sequential_1gpu"] = report["graphed_sequential_ms"] / r["wall_ms"]
        print(json.dumps(report, indent=1), flush=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
