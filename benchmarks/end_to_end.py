"""End-to-end wall time on one GPU: CUDA-graphed sequential vs CUDA-graphed ParaTAA, side by side in one process.

    python benchmarks/end_to_end.py --out results.json

Part A: the shipped default model (class-conditional digits UNet, fp16, CFG), DDIM-100 and DDPM-100: eager
sequential, graphed sequential, graphed static TAA (iterations, NFE, wall time, PSNR vs graphed sequential).
Part B: DiT-XL/2- and SD-1.5-shaped random-weight models (fp16): graphed model time per batch, the per-iteration
time of graphed TAA by window bucket, and the wall time predicted at the iteration schedule measured in part A.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

import paratriton as pt
from paratriton._cuda_graph import capture, median_ms
from paratriton.planner import plan
from paratriton.solvers import graphed_solver
from paratriton.solvers.graphed_sequential import GraphedSequential


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, reps: int) -> tuple[float, object]:
    out = None
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def psnr(a: torch.Tensor, b: torch.Tensor, peak_to_peak: float = 2.0) -> float:
    mse = (a.double() - b.double()).square().mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(peak_to_peak**2 / mse)


def digits_denoiser(pipe, coeffs, labels: torch.Tensor, scale: float):
    """A capturable CFG denoiser for the default model: every index stays on the device."""
    dev = labels.device
    ts = coeffs.timesteps.to(dev, torch.long)
    B = labels.numel()
    null = torch.full((1,), pipe.null_class, dtype=torch.long, device=dev)

    def branches(x2, s2):
        n = x2.shape[0] // 2
        y = torch.cat([null.expand(n), labels.repeat(n // B)])
        return pipe.eps(x2, ts[s2], y).float()

    return pt.ClassifierFreeGuidance(branches, scale)


def part_a(args, report):
    from paratriton.models import default_scheduler, load_default

    dev = torch.device(args.device)
    try:
        pipe = load_default(device=dev, dtype=torch.float16 if dev.type == "cuda" else torch.float32)
    except FileNotFoundError:  # no shipped weights (a checkout before training): time random weights, say so
        from diffusers import DDIMScheduler

        from paratriton.models import SCHEDULER_CONFIG, DigitsPipeline, build_unet

        pipe = DigitsPipeline(build_unet().to(dev).eval().requires_grad_(False), DDIMScheduler(**SCHEDULER_CONFIG))
        report["default_model_random_weights"] = True
    report["default_model"] = {"params_M": sum(p.numel() for p in pipe.unet.parameters()) / 1e6}
    schedules = {}
    for kind in ("ddim", "ddpm"):
        for B in args.batches:
            T = args.steps
            coeffs = pt.coefficients_from_scheduler(default_scheduler(kind), T)
            g = torch.Generator().manual_seed(0)
            x_T = torch.randn(B, *pipe.sample_shape, generator=g, dtype=torch.float64).to(dev)
            noise = torch.randn(T, B, *pipe.sample_shape, generator=g, dtype=torch.float64).to(dev)
            labels = torch.arange(B, device=dev) % 10
            model = digits_denoiser(pipe, coeffs, labels, pipe.default_guidance_scale)
            row = {"sampler": kind, "T": T, "batch": B}
            t_eager, eager = timed(
                lambda: pt.solve(
                    model,
                    coeffs,
                    x_T.float(),
                    noise.float(),
                    method="sequential",
                    state_dtype=torch.float32,
                    check_finite=False,
                ),
                2,
            )
            seq = GraphedSequential(model, coeffs, x_T, noise)
            t_seq, ref = timed(seq.run, 5)
            ref_sample = ref.sample.clone()
            taa = graphed_solver(history=args.history, tol_abs=args.tol, tol_rel=args.tol)
            t_first, res = timed(lambda: taa.solve(model, coeffs, x_T, noise), 1)  # includes the captures
            t_taa, res = timed(lambda: taa.solve(model, coeffs, x_T, noise), 5)
            row.update(
                eager_sequential_ms=1e3 * t_eager,
                graphed_sequential_ms=1e3 * t_seq,
                graphed_taa_ms=1e3 * t_taa,
                graphed_taa_first_call_ms=1e3 * t_first,
                taa_iterations=res.iterations,
                taa_nfe=res.nfe,
                taa_converged=res.converged,
                psnr_taa_vs_seq=psnr(res.sample, ref_sample),
                psnr_eager_vs_graphed_seq=psnr(eager.sample, ref_sample),
                speedup_vs_graphed_seq=t_seq / t_taa,
                speedup_vs_eager_seq=t_eager / t_taa,
            )
            # iterations to reach 30/40 dB, from a callback run (eager, same iterates)
            hits = {}

            def cb(info, hits=hits):
                p = psnr(info.sample, ref_sample)
                for thr in (30, 40):
                    if p >= thr and thr not in hits:
                        hits[thr] = info.iteration

            graphed_solver(
                history=args.history, tol_abs=args.tol, tol_rel=args.tol, cuda_graph=False, callback=cb
            ).solve(model, coeffs, x_T, noise)
            row["iters_to_30dB"], row["iters_to_40dB"] = hits.get(30), hits.get(40)
            # the planner: calibrated on another seed, predicted from the model's graphed batch-time curve
            g1 = torch.Generator().manual_seed(1)
            cal_x = torch.randn(B, *pipe.sample_shape, generator=g1, dtype=torch.float64).to(dev)
            cal_noise = torch.randn(T, B, *pipe.sample_shape, generator=g1, dtype=torch.float64).to(dev)
            pl = plan(model, coeffs, cal_x, cal_noise, history=args.history, tol_abs=args.tol, tol_rel=args.tol)
            row.update(
                planner_method=pl.method,
                planner_parallel_ms=pl.parallel_ms,
                planner_sequential_ms=pl.sequential_ms,
                planner_error_parallel=pl.parallel_ms / (1e3 * t_taa) - 1,
                planner_error_sequential=pl.sequential_ms / (1e3 * t_seq) - 1,
            )
            schedules[(kind, B)] = taa_schedule(res, T, taa.buckets)
            row["bucket_schedule"] = schedules[(kind, B)]
            report.setdefault("part_a", []).append(row)
            print(json.dumps(row), flush=True)
    return schedules


def taa_schedule(res, T, buckets):
    """The bucket size used by each iteration (recomputed from the window tops the solver visited)."""
    sizes = sorted({max(1, math.ceil(T / 2**j)) for j in range(buckets)})
    tops, F = [], T
    for r in res.residuals:  # row it has NaN at and above the anchor of that iteration
        tops.append(F)
        finite = (~r.isnan()).nonzero()
        F = int(finite.max()) + 1 if len(finite) else 0
    return [next(h for h in sizes if h >= f) for f in tops]


def graph_time(fn, reps=20) -> float:
    """Median ms of a CUDA-graph replay of ``fn``."""
    graph, _ = capture(fn)
    return median_ms(graph.replay, reps)


def part_b(args, report, schedules):
    from diffusers import DiTTransformer2DModel, UNet2DConditionModel

    dev = torch.device("cuda")
    T = args.steps
    models = {
        "DiT-XL/2": (
            lambda: DiTTransformer2DModel(
                num_attention_heads=16,
                attention_head_dim=72,
                in_channels=4,
                out_channels=8,
                num_layers=28,
                sample_size=32,
                patch_size=2,
                num_embeds_ada_norm=1000,
            ),
            (4, 32, 32),
        ),
        "SD-1.5 UNet": (lambda: UNet2DConditionModel(sample_size=64, cross_attention_dim=768), (4, 64, 64)),
    }
    for name, (make, shape) in models.items():
        torch.manual_seed(0)
        net = make().to(dev, torch.float16).eval()
        text = torch.randn(1, 77, 768, device=dev, dtype=torch.float16)

        def call(x, t, net=net, name=name):
            if name.startswith("DiT"):
                y = torch.zeros(x.shape[0], dtype=torch.long, device=dev)
                return net(x, timestep=t, class_labels=y).sample[:, :4]
            return net(x, t, encoder_hidden_states=text.expand(x.shape[0], -1, -1)).sample

        curve = {}
        sizes = sorted({max(1, math.ceil(T / 2**j)) for j in range(4)})
        with torch.no_grad():
            for b in sorted({2, *[2 * h for h in sizes]}):
                x = torch.randn(b, *shape, device=dev, dtype=torch.float16)
                t = torch.full((b,), 500, device=dev, dtype=torch.long)
                curve[b] = graph_time(lambda: call(x, t))
                print(name, "batch", b, f"{curve[b]:.2f} ms", flush=True)
            # the solver's own per-iteration work at the largest bucket (float64 state, static TAA ops)
            solver_ms = {}
            for H in sizes:
                xs = torch.randn(H + 1, 1, math.prod(shape), device=dev, dtype=torch.float64)
                solver_ms[H] = solver_only_time(xs, H, args.history)
        entry = {
            "batch_ms_graphed": curve,
            "solver_ms_per_iteration": solver_ms,
            "sequential_graphed_ms_predicted": T * curve[2],
        }
        for (kind, B), sched in schedules.items():
            if B != 1:
                continue
            par = sum(curve[2 * h] + solver_ms[h] for h in sched)
            entry[f"{kind}_taa_ms_predicted"] = par
            entry[f"{kind}_speedup_predicted"] = T * curve[2] / par
        report.setdefault("part_b", {})[name] = entry
        print(name, json.dumps(entry), flush=True)
        del net
        torch.cuda.empty_cache()


def solver_only_time(xs, H, history) -> float:
    """Time of one static-TAA iteration's solver work alone (model output given), graphed."""
    from paratriton.ops import anderson_gram, order_k_residual

    dev = xs.device
    T, D, M = H, xs.shape[-1], history + 1
    out = torch.randn(T, 1, D, device=dev, dtype=torch.float16)
    hist = torch.randn(M, T, 1, D, device=dev, dtype=torch.float64)
    a = torch.rand(T, device=dev, dtype=torch.float64) + 1
    counts = torch.full((T,), M, device=dev)

    def work():
        r = a[:, None, None] * xs[1:] + 0.1 * out.double() - xs[:-1]
        rms = r.square().mean(-1).sqrt()
        R = order_k_residual(r, a, T)
        hist[0].copy_(R)
        dR = hist[:-1] - hist[1:]
        G, h = anderson_gram(dR, R)
        gamma = torch.ops.paratriton.masked_lstsq(G, h, counts - 1, 1e-3)
        # dR + dR stands in for dX + dR: the same bytes and flops (this times the work, not the iterates)
        xs[:-1] += R - torch.einsum("jnbd,nbj->nbd", dR + dR, gamma.double())
        return rms

    return graph_time(work)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--history", type=int, default=2)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--out", default="end_to_end.json")
    p.add_argument("--skip-b", action="store_true")
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    report = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "args": vars(args),
    }
    schedules = part_a(args, report)
    if not args.skip_b:
        part_b(args, report, schedules)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1, default=str)


if __name__ == "__main__":
    main()
