"""``python -m paratriton sample``: parallel vs sequential sampling, with a table of iterations, NFE, time, error."""

from __future__ import annotations

import argparse
import sys
import time

import torch


def _table(rows: list[dict]) -> str:
    cols = list(rows[0])
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    line = lambda r: "  ".join(str(r[c]).rjust(width[c]) for c in cols)  # noqa: E731
    return "\n".join([line({c: c for c in cols}), "  ".join("-" * width[c] for c in cols), *map(line, rows)])


def sample_gaussian_mixture(args: argparse.Namespace) -> list[dict]:
    from . import solve
    from .testing import GaussianMixture
    from .testing.gaussian_mixture import default_schedule

    coeffs = default_schedule(args.steps, eta=args.eta)
    gm = GaussianMixture.random((4, 8, 8), num_components=6, seed=args.seed)
    model = gm.denoiser(coeffs)
    g = torch.Generator().manual_seed(args.seed)
    x_T = torch.randn(args.batch, *gm.sample_shape, generator=g, dtype=torch.float64)
    noise = torch.randn(args.steps, *x_T.shape, generator=g, dtype=torch.float64)
    rows, ref = [], None
    for method in ["sequential", *args.methods]:
        opts = {} if method == "sequential" else dict(tol_abs=args.tol, tol_rel=args.tol)
        t0 = time.perf_counter()
        res = solve(model, coeffs, x_T, noise, method=method, **opts)
        wall = time.perf_counter() - t0
        ref = res.sample if ref is None else ref
        err = (res.sample - ref).square().mean().sqrt().item()
        rows.append({"method": method, "iterations": res.iterations, "NFE/sample": res.nfe,
                     "wall [s]": f"{wall:.3f}", "RMS error vs sequential": f"{err:.2e}"})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m paratriton", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample", help="sample with the sequential sampler and parallel solvers, print a table")
    s.add_argument("--model", choices=["gmm"], default="gmm", help="gmm: the analytic Gaussian mixture")
    s.add_argument("--steps", type=int, default=100)
    s.add_argument("--eta", type=float, default=0.0, help="0: DDIM, 1: DDPM posterior noise")
    s.add_argument("--batch", type=int, default=4)
    s.add_argument("--tol", type=float, default=1e-3)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--methods", nargs="+", default=["fp", "picard", "aa", "taa"])
    args = p.parse_args(argv)
    rows = sample_gaussian_mixture(args)
    print(f"{args.model}: {args.steps} steps, eta={args.eta}, batch {args.batch}, tol {args.tol}")
    print(_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
