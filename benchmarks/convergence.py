"""Convergence of the parallel samplers on the shipped default model and the analytic Gaussian mixture (issue 6).

    PYTHONUNBUFFERED=1 python benchmarks/convergence.py --out benchmarks/convergence.json [--quick]

For each problem (model x sampler x T x window), methods fp (k=1), fp (best k of a sweep), picard, aa, taa with
history 2, 3, 5: iterations to convergence at tol 1e-3, NFE per sample, PSNR of the final sample vs the sequential
sample, and the first iteration whose estimate of x_0 (captured by the solver callback) reaches 30 / 40 dB PSNR vs
the sequential sample. PSNR is over the batch, for images in [-1, 1] (peak-to-peak 2): 10 log10(4 / MSE).

The schedulers of issue 18 (``--suite schedulers``): DPM-Solver++ 2M (Karras) at 20/25/50 steps, UniPC (bh2, order 2)
at 25, Euler at 50, Heun at 25 and PNDM (skip_prk_steps, SD-1.5's default) at 50, beside DDIM (eta 0) at the same
step counts, each built ``X.from_config(<the problem's DDIM config>)`` and traced into its step operator (``T`` =
model evaluations per trajectory: Heun 2N - 1, PNDM N + 1). Methods picard, taa, fp with their defaults (the
default tolerance ``tol=1e-3``: a target RMS distance of the sample to the sequential sample): iterations, NFE,
the final RMS distance to the sequential sample, wall time; on CUDA with ``--speedup`` also the CUDA-graphed
parallel solve against the graphed sequential sampler (each captured once, the second run timed)::

    python benchmarks/convergence.py --suite schedulers --out benchmarks/results/issue18_convergence_cpu.json \
        --batch 2 --device cpu
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import paratriton  # noqa: E402
from paratriton.testing import GaussianMixture  # noqa: E402


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    mse = (x.double().clamp(-1, 1) - ref.double().clamp(-1, 1)).square().mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)


TOLERANCE_FORM = {"form": "target"}  # set from --tolerance
# the shipped models (``paratriton.models.load``): "default" is the digits UNet, "dit" the DiT on photograph crops
SHIPPED = {"default": "digits", "dit": "dit-crops"}


def _guidance_text(g) -> str:
    """A results file's guidance: one scale (older files) or one per model."""
    return f"{g:g}" if isinstance(g, (int, float)) else ", ".join(f"{k} {v:g}" for k, v in g.items())


def make_problem(model_name: str, sampler: str, T: int, batch: int, device, seed: int, guidance: float, pipe=None):
    """-> (denoiser, coeffs, x_T, noise)"""
    if model_name in SHIPPED:
        from diffusers import DDIMScheduler, DDPMScheduler

        sch = (DDIMScheduler if sampler == "ddim" else DDPMScheduler).from_config(pipe.scheduler.config)
        coeffs = paratriton.coefficients_from_scheduler(sch, T, **({"eta": 0.0} if sampler == "ddim" else {}))
        labels = torch.arange(batch) % pipe.num_classes
        model = pipe.denoiser(coeffs, labels, guidance)
        g = torch.Generator().manual_seed(seed)
        x_T, noise = pipe.problem(batch, T, g, device=device)
        return model, coeffs, x_T, noise
    from diffusers import DDIMScheduler, DDPMScheduler

    cfg = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=False)
    sch = DDIMScheduler(**cfg) if sampler == "ddim" else DDPMScheduler(**cfg)
    coeffs = paratriton.coefficients_from_scheduler(sch, T, **({"eta": 0.0} if sampler == "ddim" else {}))
    gm = GaussianMixture.random((1, 32, 32), num_components=8, std=0.3, seed=seed, scale=0.5).to(device)
    model = gm.denoiser(coeffs)
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(batch, 1, 32, 32, generator=g, dtype=torch.float64).to(device)
    noise = torch.randn(T, batch, 1, 32, 32, generator=g, dtype=torch.float64).to(device)
    return model, coeffs, x_T, noise


# (scheduler, num_inference_steps) of the issue-18 suite, in run order
SCHEDULER_SUITE = [
    ("ddim", 20),
    ("dpm++2m", 20),
    ("ddim", 25),
    ("dpm++2m", 25),
    ("unipc", 25),
    ("heun", 25),
    ("ddim", 50),
    ("dpm++2m", 50),
    ("euler", 50),
    ("pndm", 50),
]
SUITE_METHODS = ("picard", "taa", "fp")
_GMM_CONFIG = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=False)


def make_scheduler(kind: str, config: dict):
    """A diffusers scheduler of ``kind`` from a DDIM/DDPM config (``X.from_config``)."""
    import diffusers

    cfg = dict(config)
    if kind == "ddim":
        return diffusers.DDIMScheduler.from_config(cfg)
    if kind == "dpm++2m":
        return diffusers.DPMSolverMultistepScheduler.from_config(
            cfg, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True
        )
    if kind == "unipc":
        return diffusers.UniPCMultistepScheduler.from_config(cfg)
    if kind == "euler":
        return diffusers.EulerDiscreteScheduler.from_config(cfg)
    if kind == "heun":
        return diffusers.HeunDiscreteScheduler.from_config(cfg)
    if kind == "pndm":
        return diffusers.PNDMScheduler.from_config(cfg, skip_prk_steps=True)
    raise ValueError(f"unknown scheduler kind {kind!r}")


def make_scheduler_problem(model_name: str, kind: str, N: int, batch: int, device, seed: int, guidance: float, pipe):
    """-> (denoiser, coeffs, x_T, noise): x_T is the stock loop's start (randn * init_noise_sigma)."""
    import copy

    if model_name in SHIPPED:
        config = dict(pipe.scheduler.config)
    else:
        config = _GMM_CONFIG
    sch = make_scheduler(kind, config)
    coeffs = paratriton.coefficients_from_scheduler(sch, N, **({"eta": 0.0} if kind == "ddim" else {}))
    started = copy.deepcopy(sch)
    started.set_timesteps(N)
    init_sigma = float(started.init_noise_sigma)
    T = coeffs.num_steps
    g = torch.Generator().manual_seed(seed)
    if model_name in SHIPPED:
        labels = torch.arange(batch) % pipe.num_classes
        # on CUDA a capturable denoiser (device-side indexing) so the graphed solvers can run it
        model = _digits_denoiser(pipe, coeffs, labels.to(device), guidance) if device.type == "cuda" else None
        model = model or pipe.denoiser(coeffs, labels, guidance)
        x_T, noise = pipe.problem(batch, T, g, device=device)
    else:
        gm = GaussianMixture.random((1, 32, 32), num_components=8, std=0.3, seed=seed, scale=0.5).to(device)
        model = gm.denoiser(coeffs)
        x_T = torch.randn(batch, 1, 32, 32, generator=g, dtype=torch.float64).to(device)
        noise = torch.randn(T, batch, 1, 32, 32, generator=g, dtype=torch.float64).to(device)
    return model, coeffs, x_T * init_sigma, (noise if coeffs.is_stochastic else None)


def _digits_denoiser(pipe, coeffs, labels: torch.Tensor, scale: float):
    """The default model with classifier-free guidance, every index on the device (CUDA-graph capturable); the
    same function as ``pipe.denoiser`` (timesteps truncated to integers as there)."""
    dev = labels.device
    ts = coeffs.timesteps.to(dev, torch.long)
    B = labels.numel()
    null = torch.full((1,), pipe.null_class, dtype=torch.long, device=dev)

    def branches(x2, s2):
        n = x2.shape[0] // 2
        y = torch.cat([null.expand(n), labels.repeat(n // B)])
        return pipe.eps(x2, ts[s2], y).float()

    return paratriton.ClassifierFreeGuidance(branches, scale)


def _timed(fn, device) -> tuple[object, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def run_scheduler_suite(args, device, pipes, guidance) -> list[dict]:
    """The issue-18 suite (see the module docstring); writes ``args.out`` after every problem."""
    from paratriton.solvers import make_solver
    from paratriton.solvers.graphed_sequential import GraphedSequential

    results, t_start = [], time.time()
    suite = [(k, n) for k, n in SCHEDULER_SUITE if n <= args.max_suite_steps]
    for model_name in args.models:
        for kind, N in suite:
            if time.time() - t_start > args.max_seconds:
                print(f"skip {model_name} {kind} N={N}: past --max-seconds", flush=True)
                continue
            model, coeffs, x_T, noise = make_scheduler_problem(
                model_name, kind, N, args.batch, device, args.seed, guidance[model_name], pipes.get(model_name)
            )
            T = coeffs.num_steps
            seq, seq_wall = _timed(lambda: paratriton.solve(model, coeffs, x_T, noise, method="sequential"), device)
            ref = seq.sample.double()
            base = {
                "model": model_name,
                "scheduler": kind,
                "N": N,
                "T": T,
                "taps": int(coeffs.taps),
                "batch": args.batch,
            }
            graphed_seq = None
            if args.speedup and device.type == "cuda":
                gs = GraphedSequential(model, coeffs, x_T, noise)
                gs.run()  # capture
                _, graphed_seq = _timed(gs.run, device)
            results.append({**base, "method": "sequential", "iterations": T, "nfe": T, "wall_s": round(seq_wall, 4)})
            if graphed_seq is not None:
                results[-1]["graphed_wall_s"] = round(graphed_seq, 5)
            for method in SUITE_METHODS:
                res, wall = _timed(lambda: paratriton.solve(model, coeffs, x_T, noise, method=method), device)
                rms = (res.sample.double() - ref).square().mean().sqrt().item()
                row = {
                    **base,
                    "method": method,
                    "iterations": int(res.iterations),
                    "nfe": int(res.nfe),
                    "converged": bool(res.converged),
                    "rms_vs_sequential": rms,
                    "tol_met": rms <= args.tol,
                    "wall_s": round(wall, 4),
                }
                if graphed_seq is not None:
                    solver = make_solver(method, cuda_graph=True)
                    solver.solve(model, coeffs, x_T, noise)  # capture
                    gres, gwall = _timed(lambda: solver.solve(model, coeffs, x_T, noise), device)
                    row.update(
                        graphed_wall_s=round(gwall, 5),
                        graphed_iterations=int(gres.iterations),
                        speedup_vs_graphed_sequential=round(graphed_seq / gwall, 3),
                    )
                results.append(row)
                extra = (
                    f" graphed={row['graphed_wall_s']:.4f}s x{row['speedup_vs_graphed_sequential']}"
                    if (graphed_seq is not None)
                    else ""
                )
                print(
                    f"{model_name:7s} {kind:8s} N={N:3d} T={T:3d} k={coeffs.taps} {method:7s} "
                    f"it={row['iterations']:3d} nfe={row['nfe']:5d} conv={int(row['converged'])} "
                    f"rms={rms:.2e} wall={wall:.2f}s{extra}",
                    flush=True,
                )
            with open(args.out, "w") as f:
                json.dump(
                    {
                        "suite": "schedulers",
                        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(),
                        "torch": torch.__version__,
                        "batch": args.batch,
                        "tol": args.tol,
                        "guidance": guidance,
                        "note": "solve() defaults (tol=1e-3 target RMS to the sequential sample); T = model "
                        "evaluations per trajectory; rms_vs_sequential over the batch",
                        "results": results,
                    },
                    f,
                    indent=0,
                )
    print(f"done in {time.time() - t_start:.1f}s", flush=True)
    return results


def suite_report(path: str) -> str:
    """Markdown table of a ``--suite schedulers`` results file: iterations / final RMS per method."""
    with open(path) as f:
        data = json.load(f)
    res = data["results"]
    graphed = any("speedup_vs_graphed_sequential" in r for r in res)
    head = "| model | scheduler | N | T | k | " + " | ".join(f"{m} it / RMS" for m in SUITE_METHODS)
    head += " | " + " | ".join(f"{m} speedup" for m in SUITE_METHODS) + " |" if graphed else " |"
    ncol = 5 + len(SUITE_METHODS) * (2 if graphed else 1)
    out = [f"Device: {data['device']}, batch {data['batch']}, tol {data['tol']:g} (defaults)", "", head]
    out.append("|" + "---|" * ncol)
    for key in dict.fromkeys((r["model"], r["scheduler"], r["N"]) for r in res):
        rs = {r["method"]: r for r in res if (r["model"], r["scheduler"], r["N"]) == key}
        any_r = next(iter(rs.values()))
        cells = []
        for m in SUITE_METHODS:
            r = rs.get(m)
            cells.append(
                ""
                if r is None
                else f"{r['iterations']}{'' if r['converged'] else ' (cap)'} / {r['rms_vs_sequential']:.1e}"
            )
        if graphed:
            cells += [f"{rs[m].get('speedup_vs_graphed_sequential', '')}" if m in rs else "" for m in SUITE_METHODS]
        out.append(f"| {key[0]} | {key[1]} | {key[2]} | {any_r['T']} | {any_r['taps']} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def run_method(model, coeffs, x_T, noise, ref, method, opts, tol):
    curve = []

    def cb(info):
        curve.append(psnr(info.trajectory[0], ref))

    if x_T.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    # the target form (tol: RMS distance of the sample to the sequential sample) or issue 6's per-step form
    tols = {"tol": tol} if TOLERANCE_FORM["form"] == "target" else {"tol_abs": tol, "tol_rel": tol}
    res = paratriton.solve(model, coeffs, x_T, noise, method=method, callback=cb, **tols, **opts)
    if x_T.is_cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    first = lambda db: next((k + 1 for k, p in enumerate(curve) if p >= db), None)  # noqa: E731
    return {
        "iterations": res.iterations,
        "nfe": res.nfe,
        "converged": bool(res.converged),
        "psnr": psnr(res.sample, ref),
        "it30": first(30.0),
        "it40": first(40.0),
        "wall_s": round(wall, 3),
        "curve": [round(p, 2) if math.isfinite(p) else 999.0 for p in curve],
    }


def _cell(r: dict) -> str:
    conv = "" if r["converged"] else " (cap)"
    db = "inf" if not math.isfinite(r["psnr"]) or r["psnr"] > 300 else f"{r['psnr']:.0f}"
    it = lambda v: "-" if v is None else str(v)  # noqa: E731
    return f"{r['iterations']}{conv} / {r['nfe']} / {db} / {it(r['it30'])} / {it(r['it40'])}"


def report(path: str) -> str:
    """Markdown tables of a results JSON: per model and sampler, methods x (T, W)."""
    with open(path) as f:
        data = json.load(f)
    res = data["results"]
    out = [
        f"Device: {data['device']}, torch {data['torch']}, float64 solver state, float32 model (TF32 off), "
        + (
            f"tol = {data['tol']:g} (target RMS to the sequential sample)"
            if data.get("tolerance") == "target"
            else f"tol_abs = tol_rel = {data['tol']:g}"
        )
        + f", batch {data['batch']} (1 at T = 1000), default model with "
        f"classifier-free guidance {_guidance_text(data['guidance'])} (labels 0, 1, 2, 3), seed 0. Cell: "
        "**iterations / NFE per sample / final PSNR vs sequential [dB] / first iteration >= 30 dB / >= 40 dB** "
        "('-': never; '(cap)': stopped by the 150-iteration cap at T = 1000, not converged).",
        "",
    ]
    for model in dict.fromkeys(r["model"] for r in res):
        for sampler in dict.fromkeys(r["sampler"] for r in res if r["model"] == model):
            rs = [r for r in res if r["model"] == model and r["sampler"] == sampler]
            probs = sorted(dict.fromkeys((r["T"], r["W"]) for r in rs), key=lambda p: (p[0], -p[1]))
            methods = [
                m
                for m in dict.fromkeys(
                    r["method"].split(" k=")[0] if r["method"].startswith("fp best") else r["method"] for r in rs
                )
                if m != "sequential" and not any(t in m for t in ("ridge", "k=8", "h=3 k=1", "tol="))
            ]
            name = {
                "default": "default digits model",
                "dit": "DiT crops model",
                "gmm": "Gaussian mixture (1x32x32, 8 components)",
            }[model]
            out += [
                f"**{name}, {'DDIM (eta 0)' if sampler == 'ddim' else 'DDPM (eta 1)'}**",
                "",
                "| method | " + " | ".join(f"T={T}, W={W}" for T, W in probs) + " |",
                "|---|" + "---|" * len(probs),
            ]
            for m in methods:
                cells = []
                for T, W in probs:
                    r = next(
                        (
                            r
                            for r in rs
                            if (r["T"], r["W"]) == (T, W)
                            and (r["method"] == m or (m == "fp best" and r["method"].startswith("fp best")))
                        ),
                        None,
                    )
                    if r is None:
                        cells.append("")
                    elif m == "fp best":
                        cells.append(f"k={r['order']}: " + _cell(r))
                    else:
                        cells.append(_cell(r))
                out.append(f"| {m} | " + " | ".join(cells) + " |")
            out.append("")
    var = [r for r in res if r["model"] == "default" and r["T"] == 100 and r["method"].startswith("taa")]
    if var:
        out += [
            "**TAA variants on the default model, T = 100** (history, ridge, order k, tolerance)",
            "",
            "| method | DDIM-100 | DDPM-100 |",
            "|---|---|---|",
        ]
        for m in dict.fromkeys(r["method"] for r in var):
            c = [next((_cell(r) for r in var if r["method"] == m and r["sampler"] == s), "") for s in ("ddim", "ddpm")]
            out.append(f"| {m} | {c[0]} | {c[1]} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "convergence.json"))
    p.add_argument("--models", nargs="+", default=["default", "gmm"])
    p.add_argument("--samplers", nargs="+", default=["ddim", "ddpm"])
    p.add_argument("--steps", type=int, nargs="+", default=[100, 50, 25, 1000], help="run in this order")
    p.add_argument("--max-iters-1000", type=int, default=150, help="iteration cap of each solve at T >= 1000")
    p.add_argument("--batch-1000", type=int, default=1, help="batch at T >= 1000")
    p.add_argument(
        "--no-variants",
        dest="variants",
        action="store_false",
        help="skip the TAA ridge/order variants on the default model at T = 100",
    )
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument(
        "--tolerance",
        choices=["target", "per-step"],
        default="target",
        help="--tol as the sample target (tol=) or issue 6's per-step form (tol_abs = tol_rel)",
    )
    p.add_argument("--guidance", type=float, default=None, help="default model: CFG scale (default: shipped)")
    p.add_argument(
        "--fp-orders",
        type=int,
        nargs="+",
        default=[2, 4, 8, 16, 10**9],
        help="orders k swept for 'fp (best k)' (10**9 = the whole window)",
    )
    p.add_argument("--fp-orders-1000", type=int, nargs="+", default=[8, 10**9], help="the sweep at T >= 1000")
    p.add_argument("--max-seconds", type=float, default=1e9, help="skip remaining problems past this wall time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--report", default=None, metavar="JSON", help="print markdown tables of a results file and exit")
    p.add_argument(
        "--suite",
        choices=["issue6", "schedulers"],
        default="issue6",
        help="issue6: the DDIM/DDPM method sweep; schedulers: the issue-18 samplers (picard, taa, fp at defaults)",
    )
    p.add_argument("--max-suite-steps", type=int, default=10**9, help="schedulers suite: only N <= this")
    p.add_argument(
        "--speedup",
        action="store_true",
        help="schedulers suite on CUDA: also time the CUDA-graphed solves against the graphed sequential sampler",
    )
    args = p.parse_args(argv)
    TOLERANCE_FORM["form"] = args.tolerance
    if args.report:
        with open(args.report) as f:
            suite = json.load(f).get("suite")
        print(suite_report(args.report) if suite == "schedulers" else report(args.report))
        return 0

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.backends.cudnn.allow_tf32 = False  # the model must be a deterministic smooth function of its input
    torch.backends.cuda.matmul.allow_tf32 = False
    pipes = {
        m: paratriton.models.load(SHIPPED[m], device=device, dtype=torch.float32) for m in SHIPPED if m in args.models
    }
    guidance = {
        m: args.guidance if args.guidance is not None else (pipes[m].default_guidance_scale if m in pipes else 1.0)
        for m in args.models
    }
    if args.suite == "schedulers":
        run_scheduler_suite(args, device, pipes, guidance)
        return 0
    results, t_start = [], time.time()
    problems = [
        (T, m, s, W)
        for T in args.steps
        for m in args.models
        for s in args.samplers
        for W in ([T, 32] if T >= 1000 else [T])
    ]
    for T, model_name, sampler, W in problems:
        if time.time() - t_start > args.max_seconds:
            print(f"skip {model_name} {sampler} T={T} W={W}: past --max-seconds", flush=True)
            continue
        batch = args.batch_1000 if T >= 1000 else args.batch
        cap = {"max_iters": args.max_iters_1000} if T >= 1000 else {}
        model, coeffs, x_T, noise = make_problem(
            model_name, sampler, T, batch, device, args.seed, guidance[model_name], pipes.get(model_name)
        )
        t0 = time.perf_counter()
        ref = paratriton.solve(model, coeffs, x_T, noise, method="sequential").sample
        if device.type == "cuda":
            torch.cuda.synchronize()
        seq_wall = time.perf_counter() - t0
        base = {"model": model_name, "sampler": sampler, "T": T, "W": W, "batch": batch}
        results.append(
            {
                **base,
                "method": "sequential",
                "iterations": T,
                "nfe": T,
                "converged": True,
                "psnr": float("inf"),
                "it30": T,
                "it40": T,
                "wall_s": round(seq_wall, 3),
            }
        )
        rows = []
        fp_best = None
        for k in [1, *(args.fp_orders if T < 1000 else args.fp_orders_1000)]:
            kk = min(k, W)
            if k != 1 and kk == W and any(r.get("order") == W for r in rows):
                continue
            r = run_method(model, coeffs, x_T, noise, ref, "fp", {"window": W, "order": kk, **cap}, args.tol)
            r.update(order=kk)
            rows.append(r)
            if k == 1:
                results.append({**base, "method": "fp k=1", **r})
            elif fp_best is None or (r["iterations"], r["it40"] or 10**9) < (
                fp_best["iterations"],
                fp_best["it40"] or 10**9,
            ):
                fp_best = r
        results.append(
            {
                **base,
                "method": f"fp best k={fp_best['order']}",
                **fp_best,
                "sweep": {r["order"]: r["iterations"] for r in rows},
            }
        )
        methods = [
            ("picard", "picard", {}),
            ("aa h=2", "aa", {"history": 2}),
            ("taa h=2", "taa", {"history": 2}),
            ("taa h=3", "taa", {"history": 3}),
            ("taa h=5", "taa", {"history": 5}),
        ]
        if args.variants and model_name == "default" and T == 100:
            methods += [
                ("taa h=3 ridge=1e-1", "taa", {"history": 3, "ridge": 1e-1}),
                ("taa h=3 ridge=1e-5", "taa", {"history": 3, "ridge": 1e-5}),
                ("taa h=3 k=8", "taa", {"history": 3, "order": 8}),
                ("taa h=3 k=1", "taa", {"history": 3, "order": 1}),
                ("taa h=3 tol=1e-4", "taa", {"history": 3, "tol_abs": 1e-4, "tol_rel": 1e-4}),
            ]
        n_before = len(results)
        for name, method, opts in methods:
            o = {"window": W, **cap, **opts}
            tol = o.pop("tol_abs", args.tol)
            o.pop("tol_rel", None)
            r = run_method(model, coeffs, x_T, noise, ref, method, o, tol)
            results.append({**base, "method": name, **r})
        for r in results[n_before - 3 :]:
            print(
                f"{model_name:7s} {sampler} T={T:4d} W={W:4d} {r['method']:14s} it={r['iterations']:4d} "
                f"nfe={r['nfe']:5d} conv={int(r['converged'])} psnr={r['psnr']:6.1f} "
                f"it30={r['it30']} it40={r['it40']} wall={r['wall_s']:.2f}s",
                flush=True,
            )
        with open(args.out, "w") as f:
            json.dump(
                {
                    "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(),
                    "torch": torch.__version__,
                    "batch": args.batch,
                    "tol": args.tol,
                    "tolerance": args.tolerance,
                    "guidance": guidance,
                    "results": results,
                },
                f,
                indent=0,
            )
    print(f"done in {time.time() - t_start:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
