"""``paratriton.plan(pipe, steps)`` on an SD-1.5-shaped pipeline: what it picks, and its prediction vs a measurement.

    PYTHONPATH=. python benchmarks/plan_pipeline.py --out plan.json [--tiny]

Per latent size: plan the stock ``StableDiffusionPipeline`` (components as ``benchmarks/paradigms.py``: random fp16
SD-1.5 UNet, DDIM, CFG 7.5, batch 1) over methods taa and picard, then time the chosen sampler
(``plan.parallelize(pipe)``) and the graphed sequential one side by side (median of ``--reps`` calls after a
warm-up), and report the plan's predicted time against the measured one.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from paradigms import components, median_ms, plan_row, setup  # benchmarks/ is on sys.path when run as a script

import paratriton


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="plan.json")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--latents", type=int, nargs="+", default=[64, 32])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="a tiny UNet on the CPU, for a smoke test")
    args = p.parse_args()
    from diffusers import StableDiffusionPipeline

    dev, dtype, sync, report = setup(args, "rows")
    for latent in args.latents:
        stock = StableDiffusionPipeline(**components(dev, dtype, args.tiny, latent))
        stock.set_progress_bar_config(disable=True)
        g = torch.Generator().manual_seed(1)
        call = dict(
            prompt_embeds=torch.randn(1, 77, 768, generator=g).to(dev, dtype),
            negative_prompt_embeds=torch.randn(1, 77, 768, generator=g).to(dev, dtype),
            latents=torch.randn(1, 4, latent, latent, generator=g).to(dev, dtype),
            guidance_scale=7.5,
            output_type="latent",
            height=8 * latent,
            width=8 * latent,
        )
        t0 = time.perf_counter()
        plan = paratriton.plan(stock, args.steps, methods=("taa", "picard"), **call)
        plan_s = time.perf_counter() - t0

        def timed(pipe):
            return median_ms(pipe, args.steps, call, args.reps, sync)

        chosen = plan.parallelize(stock)
        chosen.set_progress_bar_config(disable=True)
        seq = paratriton.parallelize(stock, "sequential", cuda_graph=plan.cuda_graph)
        measured_ms, seq_ms = timed(chosen), timed(seq)
        row = plan_row(plan, measured_ms, seq_ms, plan_s, latent=latent)
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
        del stock, chosen, seq
        if dev.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
