"""First-call latency of ``parallelize(pipe, window="auto")`` and of ``paratriton.plan(pipe, steps)``.

    PYTHONPATH=. python benchmarks/first_call.py --out first_call.json [--device cuda] [--tiny]

On an SD-1.5-shaped ``StableDiffusionPipeline`` (components as ``benchmarks/paradigms.py``: random fp16 SD-1.5
UNet, DDIM, CFG 7.5, batch 1, prompt embeddings given, latents returned), per latent size (32 = 256 px, 64 = 512 px)
and per ``cuda_graph`` setting: the wall time of the first call of a fresh ``parallelize(pipe, "taa",
window="auto")`` (it times the candidate windows and the sequential sampler on a calibration problem, then samples),
of its second call (the cached choice and captured solver: one solve), and of ``paratriton.plan(pipe, steps)``
(methods taa and picard). The JSON is rewritten after every row. ``--tiny``: a tiny UNet on the CPU (smoke run).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time

import torch
from paradigms import components  # benchmarks/ is on sys.path when this file runs as a script

import paratriton


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="first_call.json")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available, cpu with --tiny)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--latents", type=int, nargs="+", default=[32, 64], help="latent sizes (64 = 512 px)")
    p.add_argument("--graph", choices=["on", "off", "both"], default="on", help="cuda_graph of the parallel pipelines")
    p.add_argument("--no-plan", action="store_true", help="skip paratriton.plan")
    p.add_argument("--tiny", action="store_true", help="a tiny UNet on the CPU, for a smoke test")
    p.add_argument("--profile", default=None, help="write a cProfile of the first calls (top 60, cumulative) here")
    args = p.parse_args()
    from diffusers import StableDiffusionPipeline

    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    report = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "sampler": f"DDIM-{args.steps}, CFG 7.5, batch 1, {'tiny' if args.tiny else 'SD-1.5'} UNet, {dtype}",
        "rows": [],
    }

    def write(row: dict) -> None:
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)

    def timed(fn) -> tuple[float, object]:
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        return time.perf_counter() - t0, out

    graphs = {"on": [True], "off": [False], "both": [False, True]}[args.graph]
    for latent in args.latents:
        stock = StableDiffusionPipeline(**components(dev, dtype, args.tiny, latent))
        stock.set_progress_bar_config(disable=True)
        g = torch.Generator().manual_seed(1)
        call = dict(
            prompt_embeds=torch.randn(1, 77, 768, generator=g).to(dev, dtype),
            negative_prompt_embeds=torch.randn(1, 77, 768, generator=g).to(dev, dtype),
            guidance_scale=7.5,
            output_type="latent",
            height=8 * latent,
            width=8 * latent,
        )
        stock(num_inference_steps=2, **call)  # warm the model (lazy initialisation, cuDNN) outside every timing
        for graphed in graphs:
            par = paratriton.parallelize(stock, "taa", window="auto", cuda_graph=graphed)
            par.set_progress_bar_config(disable=True)
            prof = cProfile.Profile() if args.profile else None
            if prof:
                prof.enable()
            first_s, _ = timed(lambda: par(num_inference_steps=args.steps, generator=torch.manual_seed(0), **call))
            if prof:
                prof.disable()
                with open(args.profile, "a") as f:
                    f.write(f"# latent {latent}, cuda_graph={graphed}: first call {first_s:.2f} s\n")
                    pstats.Stats(prof, stream=f).sort_stats("cumulative").print_stats(60)
            (choice,) = par.paratriton.window_choices.values()
            second_s, _ = timed(lambda: par(num_inference_steps=args.steps, generator=torch.manual_seed(1), **call))
            write(
                dict(
                    latent=latent,
                    case="parallelize(window='auto')",
                    cuda_graph=graphed,
                    first_call_s=first_s,
                    second_call_s=second_s,
                    chose=choice.method if choice.window is None else f"{choice.method} W={choice.window}",
                    candidates_ms=choice.wall_ms,
                    stopped=list(choice.stopped),
                    pruned=list(choice.pruned),
                    spent_s=choice.spent_s,
                    reason=choice.reason,
                )
            )
            if not args.no_plan:
                plan_s, plan = timed(lambda: paratriton.plan(stock, args.steps, cuda_graph=graphed, **call))
                write(
                    dict(
                        latent=latent,
                        case="plan(pipe)",
                        cuda_graph=graphed,
                        plan_s=plan_s,
                        method=plan.method,
                        window=plan.window,
                        predicted_ms=plan.predicted_ms,
                        sequential_ms=plan.sequential_ms,
                        candidates_ms=plan.wall_ms,
                        reason=plan.reason,
                    )
                )
            if dev.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
