"""Does the tolerance mean what it says? Final distance to the sequential sample and iterations (issue 17).

    PYTHONUNBUFFERED=1 python benchmarks/tolerance.py --out benchmarks/results/issue17_tolerance_cpu.json \
        [--models gmm default] [--steps 25 50 100 1000] [--device cuda]

For each problem (model x sampler x T) and method (fp, picard, aa, taa, taa on a sliding window, srds), two
tolerance settings side by side:

* ``new``: the default, ``tol = 1e-3``: a target RMS distance of the sample to the sequential sample;
* ``old``: the previous default, the per-step thresholds ``tol_abs = 1e-3 * min(1, 100/T)``, ``tol_rel = 1e-3``.

Reported: iterations, ``converged``, the final RMS distance to the sequential sample (the largest over the batch of
the per-trajectory RMS; images in [-1, 1], so 2e-3 RMS is 60 dB), its PSNR, and the solver's own a-posteriori
``error_estimate``. The Gaussian mixture's denoiser is exact (float64); the default model runs in float32 on the
device given (its sequential reference is the same model, same device, sequential method).
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

OLD = "old"
NEW = "new"


def final_rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    """The largest over the batch of the per-trajectory RMS distance."""
    d = (x.double() - ref.double()).flatten(1)
    return float(d.square().mean(1).sqrt().max())


def psnr(rms: float) -> float:
    return float("inf") if rms == 0 else 20 * math.log10(2.0 / rms)


def scheduler(sampler: str, prediction_type: str = "epsilon"):
    from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler

    if sampler == "flow":
        return FlowMatchEulerDiscreteScheduler(shift=1.0)
    cfg = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=False)
    if sampler == "ddim":
        return DDIMScheduler(**cfg, timestep_spacing="trailing", prediction_type=prediction_type)
    return DDPMScheduler(**cfg, timestep_spacing="trailing", prediction_type=prediction_type)


def gmm_problem(sampler: str, T: int, batch: int, device, seed: int = 0, shape=(4, 16, 16)):
    """The exact Gaussian mixture of issue 23 (8 components, variance 0.05, means 0.8 N(0, 1)) at ``shape``."""
    coeffs = paratriton.coefficients_from_scheduler(
        scheduler(sampler), T, **({"eta": 0.0} if sampler == "ddim" else {})
    )
    gm = GaussianMixture.random(shape, num_components=8, std=math.sqrt(0.05), seed=seed, scale=0.8).to(device)
    g = torch.Generator().manual_seed(seed + 1)
    x_T = torch.randn(batch, *shape, generator=g, dtype=torch.float64).to(device)
    noise = torch.randn(T, batch, *shape, generator=g, dtype=torch.float64).to(device) if coeffs.is_stochastic else None
    return gm.denoiser(coeffs), coeffs, x_T, noise


def default_problem(pipe, sampler: str, T: int, batch: int, device, seed: int = 0):
    from paratriton.models import default_scheduler

    sch = default_scheduler(sampler)
    coeffs = paratriton.coefficients_from_scheduler(sch, T, **({"eta": 0.0} if sampler == "ddim" else {}))
    labels = torch.arange(batch) % 10
    model = pipe.denoiser(coeffs, labels)
    g = torch.Generator().manual_seed(seed)
    x_T, noise = pipe.problem(batch, T, g, device=device, dtype=torch.float32)
    return model, coeffs, x_T, noise if coeffs.is_stochastic else None


METHODS = [
    ("fp", "fp", {}),
    ("picard", "picard", {}),
    ("aa", "aa", {}),
    ("taa", "taa", {}),
    ("taa w=T/4", "taa", {"window": "quarter"}),
    ("srds", "srds", {}),
]


def tolerance_options(setting: str, T: int) -> dict:
    if setting == NEW:
        return {}
    return {"tol_abs": 1e-3 * min(1.0, 100.0 / T), "tol_rel": 1e-3}


def run(problem, methods, settings) -> list[dict]:
    model, coeffs, x_T, noise = problem
    T = coeffs.num_steps
    ref = paratriton.solve(model, coeffs, x_T, noise, method="sequential").sample
    rows = []
    for label, method, opts in methods:
        opts = dict(opts)
        if opts.get("window") == "quarter":
            if T < 8:
                continue
            opts["window"] = max(2, T // 4)
        for setting in settings:
            t0 = time.perf_counter()
            res = paratriton.solve(model, coeffs, x_T, noise, method=method, **opts, **tolerance_options(setting, T))
            dist = final_rms(res.sample, ref)
            rows.append(
                dict(
                    method=label,
                    setting=setting,
                    iterations=res.iterations,
                    critical_path=getattr(res, "critical_path", res.iterations),
                    converged=res.converged,
                    final_rms=dist,
                    psnr=psnr(dist),
                    error_estimate=getattr(res, "error_bound", None) or getattr(res, "error_estimate", None),
                    seconds=time.perf_counter() - t0,
                )
            )
    return rows


def markdown(data: dict) -> str:
    """One row per problem, one column per method: ``iterations / final RMS`` at the new default (and the old)."""
    methods = list(dict.fromkeys(r["method"] for p in data["problems"] for r in p["rows"]))
    settings = list(dict.fromkeys(r["setting"] for p in data["problems"] for r in p["rows"]))
    head = "| model | sampler | T | tolerance | " + " | ".join(methods) + " |"
    lines = [head, "|" + "---|" * (4 + len(methods))]
    for p in data["problems"]:
        for st in settings:
            cells = []
            for m in methods:
                r = next((r for r in p["rows"] if r["method"] == m and r["setting"] == st), None)
                cells.append(
                    "-" if r is None else f"{r['iterations']} / {r['final_rms']:.1e}" + ("" if r["converged"] else "*")
                )
            name = "tol=1e-3" if st == NEW else "old per-step"
            lines.append(f"| {p['model']} | {p['sampler']} | {p['T']} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["gmm", "default"], choices=["gmm", "default"])
    ap.add_argument("--samplers", nargs="+", default=["ddim", "ddpm", "flow"])
    ap.add_argument("--steps", nargs="+", type=int, default=[25, 50, 100, 1000])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--settings", nargs="+", default=[NEW, OLD])
    ap.add_argument("--methods", nargs="+", default=[m[0] for m in METHODS])
    ap.add_argument("--out", default=None)
    ap.add_argument("--markdown", default=None, help="print the table of an earlier --out JSON and exit")
    args = ap.parse_args(argv)
    if args.markdown:
        with open(args.markdown) as f:
            print(markdown(json.load(f)))
        return
    methods = [m for m in METHODS if m[0] in args.methods]
    out = {"device": args.device, "torch": torch.__version__, "batch": args.batch, "problems": []}
    pipe = None
    for model_name in args.models:
        if model_name == "default":
            pipe = paratriton.models.load_default(device=args.device)
        for sampler in args.samplers:
            if model_name == "default" and sampler == "flow":
                continue  # the digits model is an epsilon model of the VP schedule
            for T in args.steps:
                if model_name == "gmm":
                    problem = gmm_problem(sampler, T, args.batch, args.device)
                else:
                    problem = default_problem(pipe, sampler, T, args.batch, args.device)
                rows = run(problem, methods, args.settings)
                out["problems"].append(dict(model=model_name, sampler=sampler, T=T, rows=rows))
                for r in rows:
                    est = "-" if r["error_estimate"] is None else f"{r['error_estimate']:.1e}"
                    print(
                        f"{model_name:7s} {sampler:4s} T={T:4d} {r['method']:10s} {r['setting']:3s} "
                        f"it={r['iterations']:4d} conv={r['converged']!s:5s} rms={r['final_rms']:.2e} "
                        f"({r['psnr']:.1f} dB) est={est} {r['seconds']:.1f}s"
                    )
                if args.out:  # after every problem: a run cut short keeps what it measured
                    with open(args.out, "w") as f:
                        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
