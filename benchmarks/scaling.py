"""Scaling over GPUs: CUDA-graphed sliding-window samplers on DiT-XL/2- and SD-1.5-shaped models, 1 .. N GPUs.

    torchrun --nproc_per_node=N benchmarks/scaling.py --out scaling.json [--models dit sd] [--steps 50 100]

One launch measures every GPU count ``g = 1, 2, 4, ... <= N``: the first ``g`` ranks form a process group whose
``ShardedDenoiser`` splits each iteration's model call (window x CFG halves) into balanced chunks and gathers
the outputs with one NCCL all-gather captured in the iteration's CUDA graph; the other ranks wait. Baseline: the
whole sequential loop as one CUDA graph on one GPU (rank 0), timed in the same process.

Iteration counts are measured, not assumed: rank 0 first solves the shipped default model (trained, CFG) with
every (method, window) to the default tolerance and each large model then runs exactly that many iterations.
Random weights do not converge like a trained model, but an iteration costs the same whatever the weights (one
graph replay of W window steps, one host sync). Reported per case: wall time, time per iteration, speed-up over
graphed sequential, the all-gather's share of a sharded model call, and the difference of the sample from the
1-GPU sample (the same output on every GPU count, up to fp16 batch-size effects).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.distributed as dist

import paratriton as pt
from paratriton._cuda_graph import capture, median_ms
from paratriton.distributed import ShardedDenoiser, balanced_chunks, init_process_group
from paratriton.solvers import graphed_solver
from paratriton.solvers.graphed_sequential import GraphedSequential

CASES = [("picard", 8), ("picard", 13), ("picard", 25), ("picard", 50), ("taa", 8), ("taa", 25)]


def default_model_iterations(T: int, dev) -> dict[tuple[str, int], int]:
    """Iterations the shipped default model needs per (method, window) on DDIM-T, CFG, batch 1, default tol."""
    from end_to_end import digits_denoiser  # benchmarks/ is on sys.path when this file runs as a script

    from paratriton.models import default_scheduler, load_default

    pipe = load_default(device=dev, dtype=torch.float16 if dev.type == "cuda" else torch.float32)
    coeffs = pt.coefficients_from_scheduler(default_scheduler("ddim"), T)
    model = digits_denoiser(pipe, coeffs, torch.tensor([3], device=dev), pipe.default_guidance_scale)
    x_T = torch.randn(1, *pipe.sample_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = {}
    for method, W in sorted({(m, min(W, T)) for m, W in CASES}):
        res = graphed_solver(method, window=min(W, T)).solve(model, coeffs, x_T.to(dev))
        out[(method, min(W, T))] = res.iterations
    return out


def make_branches(name: str, dev, tiny: bool):
    """The model as ``two_branch(x, step_index, cond)`` (fp16, random weights) and its latent shape."""
    from diffusers import DiTTransformer2DModel, UNet2DConditionModel

    torch.manual_seed(0)  # identical replicas on every rank
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    if name == "dit":
        net = DiTTransformer2DModel(
            num_attention_heads=2 if tiny else 16,
            attention_head_dim=8 if tiny else 72,
            in_channels=4,
            out_channels=8,
            num_layers=1 if tiny else 28,
            sample_size=32,
            patch_size=2,
            num_embeds_ada_norm=1000,
        )
        shape = (4, 32, 32)
    else:
        kw = (
            dict(
                block_out_channels=(32, 64),
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                layers_per_block=1,
                attention_head_dim=4,
            )
            if tiny
            else {}
        )
        net = UNet2DConditionModel(sample_size=16 if tiny else 64, cross_attention_dim=768, **kw)
        shape = (4, 16, 16) if tiny else (4, 64, 64)
    net = net.to(dev, dtype).eval().requires_grad_(False)
    text = torch.randn(2, 77, 768, generator=torch.Generator().manual_seed(1)).to(dev, dtype)  # [uncond; cond]

    def two_branch(ts):
        def call(x, s, cond):
            with torch.no_grad():
                if name == "dit":
                    y = torch.where(cond, 207, 1000)  # class 207, or the null class on unconditional rows
                    return net(x.to(dtype), timestep=ts[s], class_labels=y).sample[:, :4].float()
                emb = text.index_select(0, cond.long())
                return net(x.to(dtype), ts[s], encoder_hidden_states=emb).sample.float()

        return call

    return two_branch, shape


def wall_ms(fn, sync, reps: int) -> float:
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", choices=["dit", "sd"], default=["dit", "sd"])
    p.add_argument("--steps", nargs="+", type=int, default=[50, 100])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default="scaling.json")
    p.add_argument("--tiny", action="store_true", help="1-layer models, for a smoke test on the CPU")
    args = p.parse_args()
    rank, world, dev = init_process_group()
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    counts = sorted({g for g in (1, 2, 4, 8, 16) if g <= world} | {world})
    groups = {g: dist.new_group(list(range(g))) for g in counts}  # every rank takes part in every new_group
    report = {
        "world": world,
        "gpu_counts": counts,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "sampler": "DDIM, CFG 4, batch 1, fp16 model, float64 solver state",
        "results": [],
    }
    iters = {}
    for T in args.steps:
        box = [default_model_iterations(T, dev) if rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        iters[T] = box[0]
    report["default_model_iterations"] = {f"T={T} {m} W={W}": n for T in iters for (m, W), n in iters[T].items()}

    for name in args.models:
        two_branch, shape = make_branches(name, dev, args.tiny)
        for T in args.steps:
            from diffusers import DDIMScheduler

            coeffs = pt.coefficients_from_scheduler(DDIMScheduler(clip_sample=False), T)
            ts = coeffs.timesteps.to(dev, torch.long)
            call = two_branch(ts)
            x_T = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dev)
            single = pt.ClassifierFreeGuidance(call, 4.0, pass_branch=True)
            base = {"model": name, "T": T}
            if rank == 0:
                seq = GraphedSequential(single, coeffs, x_T)
                seq.run()
                base["graphed_sequential_ms"] = wall_ms(seq.run, sync, args.reps)
                seq_sample = seq.run().sample.double().clone()
            samples_1gpu = {}
            for g in counts:
                member = rank < g
                for method, W in sorted({(m, min(W, T)) for m, W in CASES}):
                    n_it = iters[T][(method, W)]
                    row = dict(base, gpus=g, method=method, window=W, iterations=n_it)
                    if member:
                        model = (
                            single
                            if g == 1
                            else pt.ClassifierFreeGuidance(
                                ShardedDenoiser(call, group=groups[g]), 4.0, pass_branch=True
                            )
                        )
                        solver = graphed_solver(method, window=W, max_iters=n_it, tol_abs=1e-30, tol_rel=1e-30)
                        solver.solve(model, coeffs, x_T)  # captures the graph
                        dist.barrier(group=groups[g])
                        ms = wall_ms(lambda: solver.solve(model, coeffs, x_T), sync, args.reps)
                        sample = solver.solve(model, coeffs, x_T).sample.double()
                        row.update(wall_ms=ms, ms_per_iteration=ms / n_it)
                        if g > 1:
                            row["comm_share"] = comm_share(call, groups[g], g, rank, 2 * W, shape, T, dev)
                        if rank == 0:
                            row["speedup_vs_graphed_sequential_1gpu"] = base["graphed_sequential_ms"] / ms
                            row["rel_diff_vs_graphed_sequential"] = rel(sample, seq_sample)
                            if g == 1:
                                samples_1gpu[(method, W)] = sample.clone()
                            else:
                                row["rel_diff_vs_1gpu"] = rel(sample, samples_1gpu[(method, W)])
                            report["results"].append(row)
                            print(json.dumps(row), flush=True)
                        del solver
                    if cuda:
                        torch.cuda.empty_cache()
                dist.barrier()  # ranks outside the group wait here
        if rank == 0:  # partial results survive a time-out
            with open(args.out, "w") as f:
                json.dump(report, f, indent=1)
    dist.destroy_process_group()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def comm_share(call, group, g: int, rank: int, rows: int, shape, T: int, dev) -> float | None:
    """Share of the all-gather in one sharded model call of ``rows`` rows (graphed; None off CUDA)."""
    if dev.type != "cuda":
        return None
    x = torch.randn(rows, *shape, device=dev, generator=torch.Generator(device=dev).manual_seed(rows))
    s = torch.arange(rows, device=dev) % T
    cond = torch.arange(rows, device=dev) >= rows // 2
    sharded = ShardedDenoiser(call, group=group)
    start, stop = balanced_chunks(rows, g)[rank]
    full_graph, _ = capture(lambda: sharded(x, s, cond=cond))
    chunk_graph, _ = capture(lambda: call(x[start:stop], s[start:stop], cond[start:stop]))
    total, compute = median_ms(full_graph.replay), median_ms(chunk_graph.replay)
    return max(0.0, 1 - compute / total)


if __name__ == "__main__":
    main()
