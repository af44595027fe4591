"""Iterations from the Gaussian guess of stochastic and sigma-space samplers (``paratriton.schedulers.guess``, the
engine's cold start) against copies of ``x_T`` at every state (the cold start before it).

Iteration counts do not depend on the device (up to rounding), so this runs on the CPU:

    python benchmarks/cold_start.py --out benchmarks/results/cold_start_cpu.json

Problems: the shipped policy (DDPM-100, ``clip_sample=True``) on the 8 first recorded observations; Diffusion
Policy's 63.6M low-dim UNet with random weights (seeds 0-3); the exact Gaussian mixture of issue 23's table at DDPM-100
and DDIM eta=1, and under Euler ancestral and Euler at 50 steps (traced, sigma space); the digits and DiT crops
models at DDPM-100, batch 1. Methods: TAA and Picard at the default tolerance. Per row: mean iterations from copies
and from the guess, and the largest RMS distance to the sequential sample.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import sys
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import paratriton  # noqa: E402
from paratriton.models.policy import load_policy  # noqa: E402
from paratriton.policies.unet1d import ConditionalUnet1D  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).square().mean().sqrt())


def policy_problems(n: int):
    """The shipped policy on recorded observations: ``(name, model, scheduler, x_T, kwargs, generator seed)``."""
    pol = load_policy(device="cpu")
    obs = np.load(os.path.join(HERE, "..", "tests", "data", "policy_obs.npz"))["obs"]
    for seed in range(n):
        cond = pol.global_cond(obs[seed : seed + 1])
        x_T = torch.randn((1, pol.horizon, pol.action_dim), generator=torch.Generator().manual_seed(seed))
        yield pol.model, pol.noise_scheduler, x_T, {"global_cond": cond}, 1000 + seed


def lowdim_problems(n: int):
    """Diffusion Policy's low-dim UNet (63.6M, random weights), horizon 16, the reference DDPM-100 scheduler."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(
        num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True, prediction_type="epsilon"
    )
    for seed in range(n):
        torch.manual_seed(seed)
        net = ConditionalUnet1D(input_dim=2, global_cond_dim=40, down_dims=[256, 512, 1024]).eval()
        g = torch.Generator().manual_seed(seed)
        x_T = torch.randn(1, 16, 2, generator=g)
        cond = torch.randn(1, 40, generator=g)
        yield net, sched, x_T, {"global_cond": cond}, 2000 + seed


def _denoise(model, sched, x_T, kwargs, gseed, method, **options):
    g = torch.Generator().manual_seed(gseed)  # the loop's generator, drawn anew each time
    return paratriton.denoise(
        model, sched, x_T, 100, generator=g, model_kwargs=kwargs, method=method, return_result=True, **options
    )


def denoise_calls(problems):
    """``(call, x_T, T)`` per policy problem: ``call(method=..., **options)`` runs ``paratriton.denoise``."""
    for model, sched, x_T, kwargs, gseed in problems:
        yield functools.partial(_denoise, model, sched, x_T, kwargs, gseed), x_T, 100


def solve_calls(problems):
    """``(call, x_T, T)`` per ``(model, coefficients, x_T, noise)`` problem, through ``paratriton.solve``."""
    for model, coeffs, x_T, noise in problems:
        yield functools.partial(paratriton.solve, model, coeffs, x_T, noise), x_T, coeffs.num_steps


def run(calls, methods) -> dict:
    """Each method from copies of ``x_T`` and from the guess (the default cold start), against the sequential
    sample."""
    out = {m: {"copies": [], "guess": [], "rms": []} for m in methods}
    for call, x_T, T in calls:
        ref = call(method="sequential").sample
        for m in methods:
            a, b = call(method=m, init=x_T.expand(T, *x_T.shape)), call(method=m)
            out[m]["copies"].append(a.iterations)
            out[m]["guess"].append(b.iterations)
            out[m]["rms"].append(max(_rms(a.sample, ref), _rms(b.sample, ref)))
    return out


def gmm_problems(eta: float | None, n: int):
    """Issue 23's exact mixture (4x32x32, 8 components) at 100 steps: DDPM (eta None) or DDIM with ``eta``."""
    from diffusers import DDIMScheduler, DDPMScheduler

    from paratriton.testing import GaussianMixture

    kw = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=False)
    if eta is None:
        coeffs = paratriton.coefficients_from_scheduler(DDPMScheduler(**kw), 100)
    else:
        coeffs = paratriton.coefficients_from_scheduler(DDIMScheduler(timestep_spacing="trailing", **kw), 100, eta=eta)
    shape = (4, 32, 32)
    model = GaussianMixture.random(shape, num_components=8, std=math.sqrt(0.05), seed=0, scale=0.8).denoiser(coeffs)
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    noise = torch.randn(100, n, *shape, generator=g, dtype=torch.float64)
    for b in range(n):
        yield model, coeffs, x_T[b : b + 1], noise[:, b : b + 1]


def gmm_euler_problems(n: int, ancestral: bool):
    """The same mixture under Euler or Euler ancestral (traced, sigma space, 50 steps; ``x_T`` at ``sigma_max``)."""
    import diffusers

    from paratriton.testing import GaussianMixture

    cls = diffusers.EulerAncestralDiscreteScheduler if ancestral else diffusers.EulerDiscreteScheduler
    sched = cls(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    coeffs = paratriton.coefficients_from_scheduler(sched, 50)
    shape = (4, 32, 32)
    model = GaussianMixture.random(shape, num_components=8, std=math.sqrt(0.05), seed=0, scale=0.8).denoiser(coeffs)
    g = torch.Generator().manual_seed(1)
    sigma_max = float(coeffs.noise_scale[-1] / coeffs.input_scale[-1])
    x_T = sigma_max * torch.randn(n, *shape, generator=g, dtype=torch.float64)
    noise = torch.randn(50, n, *shape, generator=g, dtype=torch.float64) if ancestral else None
    for b in range(n):
        yield model, coeffs, x_T[b : b + 1], None if noise is None else noise[:, b : b + 1]


def shipped_problems(name: str, n: int, sampler: str = "ddpm"):
    """A shipped image model (``digits``, ``dit-crops``), batch 1, labels 0 .. n-1: DDPM-100, or Euler-50
    (deterministic, sigma space: ``x_T`` scaled to ``sigma_max``)."""
    import diffusers

    pipe = paratriton.models.load(name, device="cpu")
    cls, T = (diffusers.DDPMScheduler, 100) if sampler == "ddpm" else (diffusers.EulerDiscreteScheduler, 50)
    coeffs = paratriton.coefficients_from_scheduler(cls.from_config(pipe.scheduler.config), T)
    scale = float(coeffs.noise_scale[-1] / coeffs.input_scale[-1]) if sampler == "euler" else 1.0
    for b in range(n):
        model = pipe.denoiser(coeffs, torch.tensor([b % pipe.num_classes]))
        x_T, noise = pipe.problem(1, T, torch.Generator().manual_seed(b), device="cpu", dtype=torch.float32)
        yield model, coeffs, scale * x_T, noise if coeffs.is_stochastic else None


def summary(rows: dict) -> dict:
    return {
        m: {
            "copies": statistics.mean(v["copies"]),
            "guess": statistics.mean(v["guess"]),
            "saving": 1 - statistics.mean(v["guess"]) / statistics.mean(v["copies"]),
            "max_rms_to_sequential": max(v["rms"]),
            "per_problem": {"copies": v["copies"], "guess": v["guess"]},
        }
        for m, v in rows.items()
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cases = ["policy", "lowdim", "gmm_ddpm", "gmm_eta1", "gmm_euler_a", "gmm_euler", "digits", "digits_euler", "dit"]
    ap.add_argument("--cases", nargs="+", default=cases, choices=cases)
    ap.add_argument("--methods", nargs="+", default=["taa", "picard"], choices=["taa", "picard", "fp", "aa"])
    ap.add_argument("--n", type=int, default=0, help="problems per case (0: each case's default)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default=None, help="JSON path")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    n = args.n
    make = {
        "policy": lambda: run(denoise_calls(policy_problems(n or 8)), args.methods),
        "lowdim": lambda: run(denoise_calls(lowdim_problems(n or 4)), args.methods),
        "gmm_ddpm": lambda: run(solve_calls(gmm_problems(None, n or 8)), args.methods),
        "gmm_eta1": lambda: run(solve_calls(gmm_problems(1.0, n or 8)), args.methods),
        "gmm_euler_a": lambda: run(solve_calls(gmm_euler_problems(n or 8, ancestral=True)), args.methods),
        "gmm_euler": lambda: run(solve_calls(gmm_euler_problems(n or 8, ancestral=False)), args.methods),
        "digits": lambda: run(solve_calls(shipped_problems("digits", n or 4)), args.methods),
        "digits_euler": lambda: run(solve_calls(shipped_problems("digits", n or 4, "euler")), args.methods),
        "dit": lambda: run(solve_calls(shipped_problems("dit-crops", n or 4)), args.methods),
    }
    report = {"device": "cpu", "torch": torch.__version__, "cases": {}}
    for case in args.cases:
        report["cases"][case] = s = summary(make[case]())
        for m, v in s.items():
            print(
                f"{case:9s} {m:7s} copies {v['copies']:6.2f}  guess {v['guess']:6.2f}  saving {100 * v['saving']:5.1f}%"
                f"  max rms {v['max_rms_to_sequential']:.1e}",
                flush=True,
            )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
