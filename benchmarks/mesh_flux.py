"""A Flux pipeline (random weights) sampled on a time x sequence mesh, against the stock sequential sample.

    torchrun --nproc_per_node=4 benchmarks/mesh_flux.py --time 2 --sequence 2            # CUDA: Flux-shaped
    torchrun --nproc_per_node=2 benchmarks/mesh_flux.py --time 1 --sequence 2 --tiny     # CPU (gloo): a tiny one
    torchrun --nproc_per_node=4 benchmarks/mesh_flux.py --choose                        # time every layout, keep one

Ranks form ``time`` groups of ``sequence`` ranks (``paratriton.mesh``): every window call's rows are split over the
time groups, each row's tokens over the ranks of its group (diffusers' Ulysses attention). Every rank also runs the
stock pipeline (same seed, no parallelism) and rank 0 prints both wall times and the largest difference as JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.distributed as dist

import paratriton as pt
from paratriton.distributed import init_process_group
from paratriton.mesh import choose_layout, enable_sequence_parallel, init_mesh

FLUX = {"num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128, "num_attention_heads": 24}
TINY = {"num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16, "num_attention_heads": 2}


def make_pipe(tiny: bool, device: torch.device, dtype: torch.dtype):
    """A FluxPipeline with random weights (prompt embeddings passed in: no text encoders)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    size = TINY if tiny else FLUX
    width = 32 if tiny else 4096
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 if tiny else 64,
        joint_attention_dim=width,
        pooled_projection_dim=32 if tiny else 768,
        axes_dims_rope=[4, 4, 8] if tiny else [16, 56, 56],
        **size,
    )
    channels = 1 if tiny else 16
    vae = AutoencoderKL(
        block_out_channels=(4,) * (1 if tiny else 4),
        down_block_types=("DownEncoderBlock2D",) * (1 if tiny else 4),
        up_block_types=("UpDecoderBlock2D",) * (1 if tiny else 4),
        latent_channels=channels,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        transformer=transformer.eval(),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype), width


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--time", type=int, default=1, help="time groups (rows of every window call split over them)")
    p.add_argument("--sequence", type=int, default=2, help="ranks per time group (tokens split over them)")
    p.add_argument("--tiny", action="store_true", help="a tiny transformer (CPU)")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default 1024, tiny: 8)")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--text-tokens", type=int, default=512)
    p.add_argument("--choose", action="store_true", help="time one solve on every layout; keep the fastest")
    args = p.parse_args()
    rank, world, device = init_process_group()
    dtype = torch.float32 if args.tiny else torch.bfloat16
    size = args.size or (8 if args.tiny else 1024)
    text = 8 if args.tiny else args.text_tokens
    stock_pipe, width = make_pipe(args.tiny, device, dtype)
    mesh_pipe, _ = make_pipe(args.tiny, device, dtype)
    g = torch.Generator().manual_seed(1)
    call = {
        "prompt_embeds": torch.randn(1, text, width, generator=g).to(device, dtype),
        "pooled_prompt_embeds": torch.randn(1, 32 if args.tiny else 768, generator=g).to(device, dtype),
        "height": size,
        "width": size,
        "num_inference_steps": args.steps,
        "guidance_scale": 3.5,
        "output_type": "latent",
    }
    report = {"world": world, "size": size, "steps": args.steps}
    if args.choose:  # one whole solve per layout (reps=1 after a warm-up): iterations and calls, as they will run

        def solve_on(lay, model):
            with torch.no_grad():
                pt.parallelize(mesh_pipe, "taa", window=args.window, mesh=lay)(**call, generator=torch.Generator())

        layout, measured = choose_layout(mesh_pipe.transformer, solve_on, reps=1)
        report["measured_ms"] = {f"{t}x{s}": round(ms, 2) for (t, s), ms in measured.items()}
    else:
        layout = init_mesh(args.time, args.sequence)
        enable_sequence_parallel(mesh_pipe.transformer, layout)
    report.update(time=layout.time, sequence=layout.sequence)
    par = pt.parallelize(mesh_pipe, "taa", window=args.window, mesh=layout)
    with torch.no_grad():
        for name, pipe in (("stock", stock_pipe), ("mesh", par)):
            dist.barrier()
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            torch.manual_seed(0)
            out = pipe(**call, generator=torch.Generator().manual_seed(0)).images
            if device.type == "cuda":
                torch.cuda.synchronize()
            report[f"{name}_s"] = time.perf_counter() - t0
            report[f"{name}_sample"] = out.float().cpu()
    result = par.paratriton.last_result
    diff = (report.pop("stock_sample") - report.pop("mesh_sample")).abs().max().item()
    report.update(iterations=result.iterations, converged=result.converged, max_abs_diff=diff)
    if rank == 0:
        print(json.dumps(report, indent=1), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
