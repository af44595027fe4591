"""The graphed sequential sampler captured as one loop graph or as one step graph replayed ``T`` times.

    PYTHONPATH=. python benchmarks/sequential_graphs.py --out sequential_graphs.json [--steps 50]

Per model (the shipped digits model at batch 1 and 4, CFG; an SD-1.5-shaped UNet with random fp16 weights at
256 and 512 px, CFG 7.5, batch 1), DDIM-``steps``: the seconds ``GraphedSequential`` takes to capture (its
constructor) and the median ms of a run (``--reps`` runs after one), for ``graph="loop"`` (every step in one
graph, the benchmarks' baseline) and ``graph="step"`` (one step read from a device counter, what
``window="auto"`` and ``parallelize(pipe, "sequential", cuda_graph=True)`` use), and the largest difference of
their samples. One process, one GPU, side by side.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from end_to_end import shipped_problem  # benchmarks/ is on sys.path when this file runs as a script
from paradigms import components

import paratriton as pt
from paratriton.solvers.graphed_sequential import GraphedSequential


def sd_problem(latent: int, T: int, dev):
    """A capturable CFG denoiser of an SD-1.5-shaped UNet (random fp16 weights), DDIM-T, batch 1."""
    parts = components(dev, torch.float16, False, latent)
    unet, sched = parts["unet"], parts["scheduler"]
    coeffs = pt.coefficients_from_scheduler(sched, T, eta=0.0)
    ts = coeffs.timesteps.to(dev, torch.long)
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(2, 77, 768, generator=g).to(dev, torch.float16)

    def branches(x2, s2):
        n = x2.shape[0] // 2
        cond = emb.repeat_interleave(n, 0)
        return unet(x2.half(), ts[s2], encoder_hidden_states=cond).sample.float()

    x_T = torch.randn(1, 4, latent, latent, generator=g, dtype=torch.float64).to(dev)
    return pt.ClassifierFreeGuidance(branches, 7.5), coeffs, x_T


def measure(model, coeffs, x_T, noise, reps: int) -> dict:
    row, samples = {}, {}
    for graph in ("loop", "step"):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        seq = GraphedSequential(model, coeffs, x_T, noise, graph=graph)
        torch.cuda.synchronize()
        capture_s = time.perf_counter() - t0
        seq.run()
        times = []
        for _ in range(reps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = seq.run()
            torch.cuda.synchronize()
            times.append(1e3 * (time.perf_counter() - t0))
        samples[graph] = out.sample.clone()
        row[graph] = {"capture_s": capture_s, "run_ms": statistics.median(times), "time_ms": seq.time_ms()}
        del seq
    row["step_over_loop"] = row["step"]["run_ms"] / row["loop"]["run_ms"]
    row["max_abs_diff"] = float((samples["loop"] - samples["step"]).abs().max())
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="sequential_graphs.json")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--latents", type=int, nargs="+", default=[32, 64])
    args = p.parse_args()
    dev = torch.device("cuda")
    report = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "steps": args.steps, "rows": []}

    def write(row):
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)

    pipe = pt.models.load("digits", device=dev, dtype=torch.float16)
    for B in (1, 4):
        model, coeffs, x_T, noise = shipped_problem(pipe, "ddim", args.steps, B, dev, 0)
        write({"model": "digits fp16", "batch": B, **measure(model, coeffs, x_T, noise, args.reps)})
    del pipe
    for latent in args.latents:
        model, coeffs, x_T = sd_problem(latent, args.steps, dev)
        model(x_T, torch.zeros(1, dtype=torch.long, device=dev))  # lazy initialisation
        write(
            {"model": f"SD-1.5 UNet fp16, {8 * latent} px", "batch": 1, **measure(model, coeffs, x_T, None, args.reps)}
        )
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
