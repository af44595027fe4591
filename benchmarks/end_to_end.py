"""End-to-end wall time on one GPU: CUDA-graphed parallel solvers against the CUDA-graphed sequential sampler, side
by side in one process (issues 22 and 23).

    PYTHONUNBUFFERED=1 python benchmarks/end_to_end.py --out benchmarks/results/end_to_end_h200.json

Part A, for each shipped model (``digits``: the 10M-parameter class-conditional digits UNet; ``dit``: the 12M DiT
trained on photograph crops, issue 22), in fp16 with classifier-free guidance at the model's default scale, DDIM-T
(eta 0) and DDPM-T, batch 1 and 8: eager sequential, graphed sequential, and each graphed method of ``--methods``
with its registry defaults at ``tol`` (the target RMS distance to the sequential sample): iterations, NFE, wall
time (median of 5 after a capturing call), RMS and PSNR against the graphed sequential sample, the solver's own
``error_bound``, and iterations to 30/40 dB (an eager callback run, same iterates). With ``--choose-window`` the
window ``planner.choose_window`` picks (graphed, timed on another seed) is run as well.
Part B: DiT-XL/2- and SD-1.5-shaped random-weight models (fp16): graphed model time per batch, the per-iteration
time of graphed TAA by window bucket, and the wall time predicted at each shipped model's measured window schedule
(B = 1), so every figure says whose iteration counts it uses.
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
from paratriton.planner import choose_window
from paratriton.solvers import graphed_solver
from paratriton.solvers.graphed_sequential import GraphedSequential

MODEL_NAMES = {"digits": "digits", "dit": "dit-crops"}


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


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest per-trajectory RMS distance over the batch."""
    return float((a.double() - b.double()).flatten(1).square().mean(1).sqrt().max())


def digits_denoiser(pipe, coeffs, labels: torch.Tensor, scale: float):
    """A capturable CFG denoiser of a shipped model (digits or DiT crops): every index stays on the device."""
    dev = labels.device
    ts = coeffs.timesteps.to(dev, torch.long)
    B = labels.numel()
    null = torch.full((1,), pipe.null_class, dtype=torch.long, device=dev)

    def branches(x2, s2):
        n = x2.shape[0] // 2
        y = torch.cat([null.expand(n), labels.repeat(n // B)])
        return pipe.eps(x2, ts[s2], y).float()

    return pt.ClassifierFreeGuidance(branches, scale)


def shipped_problem(pipe, kind: str, T: int, B: int, dev, seed: int):
    """-> (capturable denoiser, coeffs, x_T, noise) of a shipped model, its own noise schedule."""
    from diffusers import DDIMScheduler, DDPMScheduler

    sch = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}[kind].from_config(pipe.scheduler.config)
    coeffs = pt.coefficients_from_scheduler(sch, T, **({"eta": 0.0} if kind == "ddim" else {}))
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(B, *pipe.sample_shape, generator=g, dtype=torch.float64).to(dev)
    noise = torch.randn(T, B, *pipe.sample_shape, generator=g, dtype=torch.float64).to(dev)
    labels = torch.arange(B, device=dev) % pipe.num_classes
    model = digits_denoiser(pipe, coeffs, labels, pipe.default_guidance_scale)
    return model, coeffs, x_T, noise if kind == "ddpm" else None


def run_method(model, coeffs, x_T, noise, ref, method: str, tol: float, window=None) -> dict:
    solver = graphed_solver(method, tol=tol, window=window)
    t_first, res = timed(lambda: solver.solve(model, coeffs, x_T, noise), 1)  # includes the captures
    t_run, res = timed(lambda: solver.solve(model, coeffs, x_T, noise), 5)
    hits = {}

    def cb(info):
        p = psnr(info.sample, ref)
        for level in (30, 40):
            if p >= level and level not in hits:
                hits[level] = info.iteration

    pt.solve(model, coeffs, x_T, noise, method=method, tol=tol, window=window, state_dtype=torch.float32, callback=cb)
    return dict(
        method=method,
        window=window,
        ms=1e3 * t_run,
        first_call_ms=1e3 * t_first,
        iterations=res.iterations,
        nfe=res.nfe,
        converged=res.converged,
        precision_limited=res.precision_limited,
        error_bound=res.error_bound,
        rms_vs_seq=rms(res.sample, ref),
        psnr_vs_seq=psnr(res.sample, ref),
        iters_to_30dB=hits.get(30),
        iters_to_40dB=hits.get(40),
        schedule=taa_schedule(res, coeffs.num_steps, solver.buckets) if window is None else None,
    )


def part_a(args, report):
    dev = torch.device(args.device)
    schedules = {}
    for name in args.models:
        pipe = pt.models.load(MODEL_NAMES[name], device=dev, dtype=torch.float16 if dev.type == "cuda" else None)
        report.setdefault("models", {})[name] = {"params_M": sum(p.numel() for p in pipe.unet.parameters()) / 1e6}
        for kind in args.samplers:
            for B in args.batches:
                T = args.steps
                model, coeffs, x_T, noise = shipped_problem(pipe, kind, T, B, dev, 0)
                row = {"model": name, "sampler": kind, "T": T, "batch": B}
                t_eager, _ = timed(
                    lambda: pt.solve(
                        model,
                        coeffs,
                        x_T.float(),
                        None if noise is None else noise.float(),
                        method="sequential",
                        check_finite=False,
                    ),
                    2,
                )
                seq = GraphedSequential(model, coeffs, x_T, noise)
                seq.run()  # capture
                t_seq, out = timed(seq.run, 5)
                ref = out.sample.clone()
                row.update(eager_sequential_ms=1e3 * t_eager, graphed_sequential_ms=1e3 * t_seq, methods=[])
                for method in args.methods:
                    r = run_method(model, coeffs, x_T, noise, ref, method, args.tol)
                    r["speedup_vs_graphed_seq"] = t_seq / (r["ms"] / 1e3)
                    row["methods"].append(r)
                    if r["schedule"] is not None and B == 1:
                        schedules[(name, kind, method)] = r["schedule"]
                if args.choose_window and kind in args.choose_window:
                    cal = shipped_problem(pipe, kind, T, B, dev, 1)
                    choice = choose_window(*cal, method="taa", cuda_graph=True, tol=args.tol)
                    row["choose_window"] = {"window": choice.window, "wall_ms": choice.wall_ms}
                    if choice.window is not None and choice.window < T:
                        r = run_method(model, coeffs, x_T, noise, ref, "taa", args.tol, window=choice.window)
                        r["speedup_vs_graphed_seq"] = t_seq / (r["ms"] / 1e3)
                        row["methods"].append(r)
                report.setdefault("part_a", []).append(row)
                print(json.dumps(row), flush=True)
                save(args, report)
        del pipe
        torch.cuda.empty_cache()
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
        for (model_name, kind, method), sched in schedules.items():  # batch-1 schedules of the shipped models
            par = sum(curve[2 * h] + solver_ms[h] for h in sched)
            key = f"{model_name}_{kind}_{method}"
            entry[f"{key}_iterations"] = len(sched)
            entry[f"{key}_ms_predicted"] = par
            entry[f"{key}_speedup_predicted"] = T * curve[2] / par
        report.setdefault("part_b", {})[name] = entry
        save(args, report)
        print(name, json.dumps(entry), flush=True)
        del net
        torch.cuda.empty_cache()


def solver_only_time(xs, H, history) -> float:
    """Time of one static-TAA iteration's solver work alone (model output given), graphed."""
    from paratriton.ops.order_k_residual.naive import order_k_residual
    from paratriton.ops.taa.naive import anderson_gram

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


def save(args, report) -> None:
    """Write the report so far (a run cut short keeps what it measured)."""
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1, default=str)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["digits", "dit"], choices=sorted(MODEL_NAMES))
    p.add_argument("--samplers", nargs="+", default=["ddim", "ddpm"], choices=["ddim", "ddpm"])
    p.add_argument("--methods", nargs="+", default=["taa", "picard"])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--history", type=int, default=2, help="part B: the TAA history whose solver work is timed")
    p.add_argument("--tol", type=float, default=1e-3, help="target RMS distance to the sequential sample")
    p.add_argument("--choose-window", nargs="*", default=["ddim"], help="samplers to run the window the planner picks")
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
    save(args, report)


if __name__ == "__main__":
    main()
