"""``paratriton.plan(pipe, steps)`` on SDXL- and SD3-medium-shaped pipelines (random fp16 weights, one GPU).

    PYTHONPATH=. python benchmarks/plan_large.py --out plan_large.json --max-seconds 1500 [--tiny]

Per model (``--models sdxl sd3``) and step count (``--steps 28 50``): plan the stock pipeline (methods taa and
picard, graphed on CUDA), then time the chosen sampler (``plan.parallelize(pipe)``) and the graphed sequential
sampler (median of ``--reps`` calls after a warm-up); report what the plan picked, its predicted vs the measured
time, and the speedup over the graphed sequential sampler. Text encoders are skipped: random prompt embeddings
(and pooled embeddings) are passed. SDXL: ``UNet2DConditionModel`` with SDXL-base's config (1024 px, latents 128),
DDIM, CFG 5; SD3-medium: ``SD3Transformer2DModel`` with its config (24 layers, 24 heads of 64, joint attention
4096, caption projection 1536, patch 2, 16 channels, latents 128), flow-match Euler, CFG 7. The JSON is rewritten
after every row; ``--max-seconds`` stops before a new row once the run has taken that long. ``--tiny``: tiny
configs on the CPU (smoke run).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from paradigms import median_ms, plan_row  # benchmarks/ is on sys.path when this file runs as a script

import paratriton
from paratriton.testing.tiny_pipelines import SD_DDIM


def pooled_call(dev, dtype, tokens: int, text: int, pooled: int, latent: int, guidance_scale: float) -> dict:
    """The call's keyword arguments: random (negative) prompt and pooled embeddings, instead of text encoders."""
    g = torch.Generator().manual_seed(1)
    emb = lambda *shape: torch.randn(1, *shape, generator=g).to(dev, dtype)  # noqa: E731
    return dict(
        prompt_embeds=emb(tokens, text),
        negative_prompt_embeds=emb(tokens, text),
        pooled_prompt_embeds=emb(pooled),
        negative_pooled_prompt_embeds=emb(pooled),
        guidance_scale=guidance_scale,
        height=8 * latent,
        width=8 * latent,
        output_type="latent",
    )


def sdxl(dev, dtype, tiny: bool):
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    if tiny:
        cfg = dict(
            sample_size=8,
            block_out_channels=(8, 16),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 1),
            attention_head_dim=(2, 4),
            cross_attention_dim=32,
            projection_class_embeddings_input_dim=8 * 6 + 16,
            addition_time_embed_dim=8,
            norm_num_groups=4,
        )
        text, pooled, latent = 32, 16, 8
    else:  # stabilityai/stable-diffusion-xl-base-1.0's unet/config.json (2.6B parameters)
        cfg = dict(
            sample_size=128,
            block_out_channels=(320, 640, 1280),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            cross_attention_dim=2048,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
        text, pooled, latent = 2048, 1280, 128
    cfg.setdefault("addition_embed_type", "text_time")
    unet = UNet2DConditionModel(**cfg).to(dev, dtype).eval().requires_grad_(False)
    sched = DDIMScheduler(**SD_DDIM, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(
        vae=None, text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None, unet=unet, scheduler=sched
    )
    return pipe, pooled_call(dev, dtype, 77, text, pooled, latent, guidance_scale=5.0)


def sd3(dev, dtype, tiny: bool):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(0)
    if tiny:
        cfg = dict(
            sample_size=8,
            patch_size=2,
            in_channels=16,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=32,
            caption_projection_dim=16,
            pooled_projection_dim=16,
            out_channels=16,
            pos_embed_max_size=16,
        )
        text, pooled, latent = 32, 16, 8
    else:  # stabilityai/stable-diffusion-3-medium-diffusers' transformer/config.json (2B parameters)
        cfg = dict(
            sample_size=128,
            patch_size=2,
            in_channels=16,
            num_layers=24,
            attention_head_dim=64,
            num_attention_heads=24,
            joint_attention_dim=4096,
            caption_projection_dim=1536,
            pooled_projection_dim=2048,
            out_channels=16,
            pos_embed_max_size=192,
        )
        text, pooled, latent = 4096, 2048, 128
    transformer = SD3Transformer2DModel(**cfg).to(dev, dtype).eval().requires_grad_(False)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.vae_scale_factor = 8  # no VAE: the pipeline reads the factor from it
    return pipe, pooled_call(dev, dtype, 154, text, pooled, latent, guidance_scale=7.0)


MODELS = {"sdxl": sdxl, "sd3": sd3}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="plan_large.json")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--steps", type=int, nargs="+", default=[28, 50])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--max-seconds", type=float, default=1500.0, help="start no new row after this long")
    p.add_argument("--device", default=None)
    p.add_argument("--tiny", action="store_true", help="tiny configs on the CPU, for a smoke test")
    args = p.parse_args()
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    report = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": str(dtype),
        "rows": [],
        "skipped": [],
    }

    def write() -> None:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)

    def timed(pipe, steps, call) -> float:
        return median_ms(pipe, steps, call, args.reps, sync)

    for name in args.models:
        stock, call = MODELS[name](dev, dtype, args.tiny)
        stock.set_progress_bar_config(disable=True)
        for steps in args.steps:
            if time.perf_counter() - start > args.max_seconds:
                report["skipped"].append(dict(model=name, steps=steps, reason="--max-seconds reached"))
                write()
                continue
            t0 = time.perf_counter()
            plan = paratriton.plan(stock, steps, methods=("taa", "picard"), **call)
            plan_s = time.perf_counter() - t0
            chosen = plan.parallelize(stock)
            chosen.set_progress_bar_config(disable=True)
            measured_ms = timed(chosen, steps, call)
            seq = paratriton.parallelize(stock, "sequential", cuda_graph=plan.cuda_graph)
            seq.set_progress_bar_config(disable=True)
            seq_ms = measured_ms if plan.method == "sequential" else timed(seq, steps, call)
            row = plan_row(plan, measured_ms, seq_ms, plan_s, model=name, steps=steps, latent=call["height"] // 8)
            row["elapsed_s"] = time.perf_counter() - start
            report["rows"].append(row)
            print(json.dumps(row), flush=True)
            write()
            chosen = seq = None
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        stock = None
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    write()


if __name__ == "__main__":
    main()
