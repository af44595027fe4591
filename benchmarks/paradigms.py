"""paratriton vs diffusers' ParaDiGMS (``StableDiffusionParadigmsPipeline``) on the same UNet and scheduler.

    python benchmarks/paradigms.py --out paradigms.json [--tiny]

One process, one GPU, one set of components: an SD-1.5-shaped UNet (random weights, fp16), DDIM-50 with CFG 7.5,
batch 1, prompt embeddings given (no text encoder), latents returned (no VAE decode). Cases, each timed as the
median of ``--reps`` calls after a first (capturing / warming) call:

* the stock ``StableDiffusionPipeline`` (eager sequential), and ``parallelize(pipe, "sequential",
  cuda_graph=True)`` (CUDA-graphed: the strongest baseline);
* ParaDiGMS: ``StableDiffusionParadigmsPipeline`` with ``DDIMParallelScheduler`` (its Picard sliding window,
  eager), window ``parallel`` and ``tolerance`` 0.1 (its default) and tighter;
* paratriton: ``parallelize(pipe, method, window=W, cuda_graph=True)`` (and one eager case) at its default
  tolerance.

The stock pipeline keeps its latents in fp16 and steps the scheduler in fp16; paratriton's solvers keep float64
state, so paratriton's graphed sequential sample differs from the stock one by fp16 rounding (about 3e-3 here).
Every case reports both distances: from the stock sample and from paratriton's graphed sequential sample (the
same UNet's exact sequential solution up to float64 rounding). ParaDiGMS' tolerance and ours differ in kind
(its: per-step change below ``tolerance`` times the step's DDPM posterior std; ours: the order-1 residual below
``max(1e-3, 1e-3 * posterior std)``), so every case reports its distance from the stock sequential sample and
the comparison is made at equal or better accuracy.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time

import torch

import paratriton
from paratriton.testing.tiny_pipelines import SD_DDIM

logging.getLogger("diffusers").setLevel(logging.ERROR)


def components(dev, dtype, tiny: bool, latent: int):
    from diffusers import DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    if tiny:
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=latent,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=768,
            attention_head_dim=4,
        )
    else:  # SD-1.5's UNet config (860M parameters)
        unet = UNet2DConditionModel(sample_size=latent, cross_attention_dim=768)
    unet = unet.to(dev, dtype).eval().requires_grad_(False)
    sched = DDIMScheduler(**SD_DDIM)
    return dict(
        vae=None,
        text_encoder=None,
        tokenizer=None,
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def plan_row(plan, measured_ms: float, seq_ms: float, plan_s: float, **extra) -> dict:
    """One JSON row of ``benchmarks/plan_*.py``: what ``plan`` picked, its prediction against the measured time, and
    the speedup over the graphed sequential sampler timed beside it."""
    return dict(
        **extra,
        method=plan.method,
        window=plan.window,
        reason=plan.reason,
        predicted_ms=plan.predicted_ms,
        measured_ms=measured_ms,
        prediction_error=plan.predicted_ms / measured_ms - 1,
        graphed_sequential_ms=seq_ms,
        speedup_vs_graphed_sequential=seq_ms / measured_ms,
        planning_s=plan_s,
        candidates=plan.wall_ms,
    )


def median_ms(pipe, steps: int, call: dict, reps: int, sync) -> float:
    """Median wall time (ms) of ``reps`` calls of ``pipe`` after one warm-up call (which captures any graphs)."""
    pipe(num_inference_steps=steps, **call)
    times = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        pipe(num_inference_steps=steps, **call)
        sync()
        times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def setup(args, rows_key: str):
    """Device, model dtype, a synchronise function and the report header shared by the SD-1.5 benchmarks."""
    dev = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    report = {
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "sampler": f"DDIM-{args.steps}, CFG 7.5, batch 1, fp16 UNet (random weights)",
        rows_key: [],
    }
    return dev, dtype, sync, report


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="paradigms.json")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--latents", type=int, nargs="+", default=[64, 32], help="latent sizes (64 = 512 px)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="a tiny UNet on the CPU, for a smoke test")
    args = p.parse_args()
    from diffusers import DDIMParallelScheduler, StableDiffusionPipeline
    from diffusers.pipelines.deprecated.stable_diffusion_variants.pipeline_stable_diffusion_paradigms import (
        StableDiffusionParadigmsPipeline,
    )

    dev, dtype, sync, report = setup(args, "cases")
    for latent in args.latents:
        comps = components(dev, dtype, args.tiny, latent)
        stock = StableDiffusionPipeline(**comps)
        paradigms = StableDiffusionParadigmsPipeline(
            **{**comps, "scheduler": DDIMParallelScheduler.from_config(comps["scheduler"].config)}
        )
        for pipe in (stock, paradigms):
            pipe.set_progress_bar_config(disable=True)
        g = torch.Generator().manual_seed(1)
        embeds = torch.randn(1, 77, 768, generator=g).to(dev, dtype)
        negative = torch.randn(1, 77, 768, generator=g).to(dev, dtype)
        latents = torch.randn(1, 4, latent, latent, generator=g).to(dev, dtype)
        inputs = dict(
            prompt_embeds=embeds,
            negative_prompt_embeds=negative,
            latents=latents,
            num_inference_steps=args.steps,
            guidance_scale=7.5,
            output_type="latent",
            height=8 * latent,
            width=8 * latent,
        )
        calls = []
        comps["unet"].register_forward_pre_hook(lambda m, a, kw: calls.append(1), with_kwargs=True)

        def timed(pipe, **kw):
            pipe(**inputs, **kw)  # warm-up: captures graphs, allocator, cuDNN autotuning
            times, out = [], None
            for _ in range(args.reps):
                calls.clear()
                sync()
                t0 = time.perf_counter()
                out = pipe(**inputs, **kw).images
                sync()
                times.append(1e3 * (time.perf_counter() - t0))
            return statistics.median(times), out.double(), len(calls)

        ref_ms, ref, _ = timed(stock)
        cases = [("stock pipeline, eager sequential", stock, {}, None)]
        graphed_seq = paratriton.parallelize(stock, "sequential", cuda_graph=True)
        cases.append(("paratriton sequential, CUDA graph", graphed_seq, {}, None))
        for P, tol in ((8, 0.1), (16, 0.1), (8, 0.01), (16, 0.01), (8, 0.001)):
            cases.append((f"ParaDiGMS parallel={P} tolerance={tol}", paradigms, dict(parallel=P, tolerance=tol), None))
        for method, W, graphed, tol in (
            ("picard", 8, True, None),
            ("picard", 16, True, None),
            ("taa", 4, True, None),
            ("taa", 8, True, None),
            ("taa", 16, True, None),
            ("taa", 8, True, 1e-2),
            ("picard", 8, False, None),
        ):
            tols = {} if tol is None else dict(tol_abs=tol, tol_rel=tol)
            par = paratriton.parallelize(stock, method, window=W, cuda_graph=graphed, **tols)
            name = (
                f"paratriton {method} window={W}{'' if tol is None else f' tol={tol:g}'}"
                f"{', CUDA graphs' if graphed else ', eager'}"
            )
            cases.append((name, par, {}, par))
        seq_ms = seq_out = None
        for name, pipe, kw, par in cases:
            ms, out, n_calls = timed(pipe, **kw) if name != cases[0][0] else (ref_ms, ref, args.steps)
            if name.startswith("paratriton sequential"):
                seq_ms, seq_out = ms, out
            iters = par.paratriton.last_result.iterations if par is not None else n_calls
            row = dict(
                latent=latent,
                case=name,
                wall_ms=ms,
                iterations=iters,
                rel_err_vs_sequential=((out - ref).norm() / ref.norm()).item(),
            )
            if seq_out is not None:  # the same fp16 UNet solved sequentially with float64 state
                row["rel_err_vs_graphed_sequential"] = ((out - seq_out).norm() / seq_out.norm()).item()
            report["cases"].append(row)
            print(json.dumps(row), flush=True)
        for row in report["cases"]:
            if row["latent"] == latent:
                row["speedup_vs_graphed_sequential"] = seq_ms / row["wall_ms"]
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
        del stock, paradigms, graphed_seq, cases, comps
        if dev.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
