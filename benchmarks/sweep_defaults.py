"""Which method, base map, order and history should be the default? Iterations and final distance (issue 23).

    # the CPU sweep of RESULTS.md "Fewer iterations (issue 23)" (two processes, one per model family):
    PYTHONUNBUFFERED=1 python benchmarks/sweep_defaults.py --models gmm --batches-1000 1 --threads 1 \\
        --out benchmarks/results/issue23_sweep_cpu_gmm.json
    PYTHONUNBUFFERED=1 python benchmarks/sweep_defaults.py --models digits --steps 25 50 100 --batches 1 --threads 1 \\
        --methods picard "taa order m2" "taa picard m1" "taa picard m3" default \\
        --out benchmarks/results/issue23_sweep_cpu_digits.json
    PYTHONUNBUFFERED=1 python benchmarks/sweep_defaults.py --issue-table --models gmm digits --threads 1 \\
        --methods picard "taa order m2" "taa picard m1" "taa picard m2" default \\
        --out benchmarks/results/issue23_sweep_cpu_issue_table.json
    python benchmarks/sweep_defaults.py --merge benchmarks/results/issue23_sweep_cpu_*.json \\
        --out benchmarks/results/issue23_sweep_cpu.json --markdown
    # on one GPU, the issue's table and more (about 3 minutes on an H200):
    PYTHONUNBUFFERED=1 python benchmarks/sweep_defaults.py --device cuda --quick --out issue23_sweep_h200.json

For each problem (model x sampler x T x batch x window) it runs every method of ``METHODS`` at the default
tolerance (``tol = 1e-3``, the target RMS distance of the sample to the sequential sample) and records iterations,
``converged``, model evaluations and the final RMS distance to the sequential sample (the largest over the batch of
the per-trajectory RMS). Problems:

* ``gmm``: the exact Gaussian mixture of issue 23 (8 components, variance 0.05, means 0.8 N(0, 1); float64
  denoiser) at ``--gmm-shape`` (default 4x16x16 on the CPU; the issue's DiT latent shape 4x32x32 with ``--quick``
  and on CUDA), DDIM (eta 0), DDPM and flow matching (Euler);
* ``digits``: the shipped digits model (``paratriton.models.load_default()``, CFG 2), DDIM and DDPM;
* ``dit``: the DiT crops model (``paratriton.models.load("dit-crops")``, CFG), DDIM and DDPM.

Windows: full (``None``) and sliding, ``W = max(4, 3 T // 10)`` (30 at T = 100, the issue's window).
``--quick`` keeps the problems of the issue's table and the DiT at T = 25/50/100 (batch 1 and 8, full window);
``default`` in the method list is ``taa`` with no options (whatever the registry's defaults are now).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tolerance import final_rms, gmm_problem  # noqa: E402

import paratriton  # noqa: E402

# (label, method, options); "taa order m2" is the TAA of the issue's table (history 2, order T, affine weights)
METHODS = [
    ("picard", "picard", {}),
    ("fp", "fp", {}),
    ("taa order m2", "taa", {"base": "order", "history": 2}),
    ("taa order m3", "taa", {"base": "order", "history": 3}),
    ("taa picard m1", "taa", {"base": "picard", "history": 1}),
    ("taa picard m2", "taa", {"base": "picard", "history": 2}),
    ("taa picard m3", "taa", {"base": "picard", "history": 3}),
    ("taa picard m5", "taa", {"base": "picard", "history": 5}),
    ("taa picard k8 m2", "taa", {"base": "picard", "order": 8, "history": 2}),
    ("taa order k8 m2", "taa", {"base": "order", "order": 8, "history": 2}),
    ("aa picard m2", "aa", {"base": "picard", "history": 2}),
    ("default", "taa", {}),
]
BASELINES = ("picard", "taa order m2")  # the goal: default <= the better of these two
QUICK_METHODS = ["picard", "taa order m2", "taa picard m1", "taa picard m2", "taa picard m3", "default"]


def sliding(T: int) -> int:
    return max(4, 3 * T // 10)


def pipe_problem(pipe, sampler: str, T: int, batch: int, device, seed: int = 0):
    """A shipped model's problem: its own noise schedule (DDIM eta 0 or DDPM), labels ``0, 1, ...``, CFG."""
    from diffusers import DDIMScheduler, DDPMScheduler

    cls = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}[sampler]
    sch = cls.from_config(pipe.scheduler.config)
    coeffs = paratriton.coefficients_from_scheduler(sch, T, **({"eta": 0.0} if sampler == "ddim" else {}))
    model = pipe.denoiser(coeffs, torch.arange(batch) % pipe.num_classes)
    g = torch.Generator().manual_seed(seed)
    x_T, noise = pipe.problem(batch, T, g, device=device, dtype=torch.float32)
    return model, coeffs, x_T, noise if coeffs.is_stochastic else None


ISSUE_TABLE = [
    dict(model="gmm", sampler="ddim", T=100, batch=1, window=None, shape=(4, 32, 32)),
    dict(model="gmm", sampler="ddpm", T=100, batch=1, window=None, shape=(4, 32, 32)),
    dict(model="gmm", sampler="ddim", T=100, batch=1, window=30, shape=(4, 32, 32)),
    dict(model="digits", sampler="ddim", T=50, batch=4, window=None),
    dict(model="digits", sampler="ddim", T=100, batch=4, window=None),
    dict(model="digits", sampler="ddim", T=100, batch=1, window=None),
]


def problems(args):
    """Every problem of the sweep, in order."""
    if args.issue_table:
        return [p for p in ISSUE_TABLE if p["model"] in args.models]
    out = []
    if args.quick:  # the issue's table (at the DiT latent shape on the GMM) and the DiT model
        shape = (4, 32, 32)
        out += [
            (dict(model="digits", sampler="ddim", T=T, batch=b, window=None), None)
            for T, b in ((50, 4), (100, 4), (100, 1), (25, 1), (50, 1), (25, 8))
        ]
        out += [
            (dict(model="gmm", sampler=s, T=100, batch=1, window=w, shape=shape), None)
            for s, w in (("ddim", None), ("ddpm", None), ("ddim", 30), ("flow", None))
        ]
        out += [(dict(model="gmm", sampler="ddim", T=T, batch=8, window=None, shape=shape), None) for T in (25, 1000)]
        out += [
            (dict(model="dit", sampler=s, T=T, batch=b, window=None), None)
            for s in ("ddim", "ddpm")
            for T in (25, 50, 100)
            for b in (1, 8)
        ]
        return [p for p, _ in out if p["model"] in args.models]
    for model in args.models:
        samplers = [s for s in args.samplers if model == "gmm" or s != "flow"]
        for sampler in samplers:
            for T in args.steps:
                if T > 100 and model != "gmm" and args.device == "cpu":
                    continue
                batches = args.batches_1000 if T >= 1000 and args.batches_1000 else args.batches
                for b in batches:
                    for w in [None if k == "full" else sliding(T) for k in args.windows]:
                        if w is not None and w >= T:
                            continue
                        p = dict(model=model, sampler=sampler, T=T, batch=b, window=w)
                        if model == "gmm":
                            p["shape"] = tuple(args.gmm_shape)
                        out.append(p)
    return out


def build(p: dict, device, pipes: dict):
    if p["model"] == "gmm":
        return gmm_problem(p["sampler"], p["T"], p["batch"], device, shape=tuple(p["shape"]))
    name = {"digits": "digits", "dit": "dit-crops"}[p["model"]]
    if name not in pipes:
        pipes[name] = paratriton.models.load(name, device=device)
    return pipe_problem(pipes[name], p["sampler"], p["T"], p["batch"], device)


def run(problem, p: dict, methods) -> list[dict]:
    model, coeffs, x_T, noise = problem
    t0 = time.perf_counter()
    ref = paratriton.solve(model, coeffs, x_T, noise, method="sequential").sample
    seq_s = time.perf_counter() - t0
    rows = [dict(method="sequential", iterations=p["T"], converged=True, final_rms=0.0, nfe=p["T"], seconds=seq_s)]
    for label, method, opts in methods:
        t0 = time.perf_counter()
        res = paratriton.solve(model, coeffs, x_T, noise, method=method, window=p["window"], **opts)
        rows.append(
            dict(
                method=label,
                iterations=res.iterations,
                converged=bool(res.converged),
                final_rms=final_rms(res.sample, ref),
                nfe=int(res.nfe),
                seconds=time.perf_counter() - t0,
            )
        )
    return rows


def name_of(p: dict) -> str:
    shape = "x".join(map(str, p["shape"])) + " " if p.get("shape") else ""
    w = "full" if p["window"] is None else f"W={p['window']}"
    return f"{p['model']} {shape}{p['sampler']}-{p['T']} B={p['batch']} {w}"


def default_label(q: dict, by: dict) -> str:
    """The row of today's default options: ``taa picard m{default_history(B)}`` where the sweep ran it (the CPU
    sweep ran before the batch rule was set: its ``default`` rows are history 2), else ``default``."""
    from paratriton.solvers.rules import default_history

    label = f"taa picard m{default_history(q['batch'])}"
    return label if label in by else "default"


def check(q: dict) -> dict:
    """The issue's goal on one problem: default iterations <= min over BASELINES, final distance against theirs."""
    by = {r["method"]: r for r in q["rows"]}
    d = by.get(default_label(q, by))
    if d is None or not all(b in by for b in BASELINES):
        return {}
    best = min(BASELINES, key=lambda b: (by[b]["iterations"], by[b]["final_rms"]))
    return dict(
        default=default_label(q, by),
        best_baseline=best,
        iterations_ok=d["iterations"] <= by[best]["iterations"],
        rms_ratio=d["final_rms"] / max(by[best]["final_rms"], 1e-300),
        within_tol=d["final_rms"] <= 1e-3 and d["converged"],
    )


def markdown(data: dict, methods: list[str] | None = None) -> str:
    probs = data["problems"]
    if methods is None:
        methods = [m[0] for m in METHODS if any(r["method"] == m[0] for q in probs for r in q["rows"])]
    lines = [
        "| problem | " + " | ".join(methods) + " | **default** | default <= best of picard / taa order m2 |",
        "|---|" + "---|" * len(methods) + "---|---|",
    ]
    cell = lambda r: "-" if r is None else f"{r['iterations']}{'' if r['converged'] else '*'} ({r['final_rms']:.0e})"  # noqa: E731
    for q in probs:
        by = {r["method"]: r for r in q["rows"]}
        c = check(q)
        verdict = "-" if not c else ("yes" if c["iterations_ok"] else "**no**") + f", rms x{c['rms_ratio']:.1f}"
        dflt = by.get(default_label(q, by))
        lines.append(
            f"| {q['name']} | " + " | ".join(cell(by.get(m)) for m in methods) + f" | **{cell(dflt)}** | {verdict} |"
        )
    return "\n".join(lines)


def summary(data: dict) -> str:
    checks = [(q["name"], check(q)) for q in data["problems"]]
    checks = [(n, c) for n, c in checks if c]
    bad = [n for n, c in checks if not c["iterations_ok"]]
    far = [n for n, c in checks if not c["within_tol"]]
    tot: dict = {}
    for q in data["problems"]:
        by = {r["method"]: r for r in q["rows"]}
        for r in q["rows"]:
            tot.setdefault(r["method"], []).append(r["iterations"])
        if default_label(q, by) in by:
            tot.setdefault("default (by batch)", []).append(by[default_label(q, by)]["iterations"])
    mean = ", ".join(f"{m} {sum(v) / len(v):.2f} ({len(v)})" for m, v in tot.items() if m != "sequential")
    return (
        f"{len(checks)} problems; the default takes more iterations than the better baseline on {len(bad)}"
        + (f" ({'; '.join(bad)})" if bad else "")
        + f"; its final distance is above 1e-3 or it did not converge on {len(far)}"
        + (f" ({'; '.join(far)})" if far else "")
        + f".\nMean iterations (problems): {mean}"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["gmm", "digits", "dit"], choices=["gmm", "digits", "dit"])
    ap.add_argument("--samplers", nargs="+", default=["ddim", "ddpm", "flow"])
    ap.add_argument("--steps", nargs="+", type=int, default=[25, 50, 100, 1000])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument(
        "--batches-1000", nargs="+", type=int, default=None, help="batches at T = 1000 (default: --batches)"
    )
    ap.add_argument("--windows", nargs="+", default=["full", "sliding"], choices=["full", "sliding"])
    ap.add_argument("--gmm-shape", nargs=3, type=int, default=None, help="default 4 16 16 (CPU), 4 32 32 (CUDA)")
    ap.add_argument("--methods", nargs="+", default=None, help="labels of METHODS (default: all; --quick: a subset)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--quick", action="store_true", help="the issue's table and the DiT model (for one GPU)")
    ap.add_argument("--issue-table", action="store_true", help="only the problems of the issue's table")
    ap.add_argument("--out", default=None)
    ap.add_argument("--merge", nargs="+", default=None, help="merge these JSON files (no run)")
    ap.add_argument("--markdown", action="store_true", help="print the markdown table of --out / --merge")
    ap.add_argument("--columns", nargs="+", default=None, help="method labels shown in the table (default: all)")
    args = ap.parse_args(argv)
    if args.merge:
        files = sorted({f for pat in args.merge for f in glob.glob(pat)} - {args.out})
        parts = [json.load(open(f)) for f in files]
        data = {"merged": files, **{k: parts[0][k] for k in ("device", "torch")}, "problems": []}
        for d in parts:
            data["problems"] += d["problems"]
        if args.out:
            with open(args.out, "w") as f:
                json.dump(data, f, indent=1)
        if args.markdown:
            print(markdown(data, args.columns) + "\n\n" + summary(data))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gmm_shape is None:
        args.gmm_shape = [4, 32, 32] if args.device != "cpu" else [4, 16, 16]
    labels = args.methods or (QUICK_METHODS if args.quick else [m[0] for m in METHODS])
    methods = [m for m in METHODS if m[0] in labels]
    data = {"device": args.device, "torch": torch.__version__, "argv": sys.argv[1:], "problems": []}
    pipes: dict = {}
    t_all = time.perf_counter()
    for p in problems(args):
        t0 = time.perf_counter()
        rows = run(build(p, args.device, pipes), p, methods)
        q = dict(name=name_of(p), **p, rows=rows)
        q["check"] = check(q)
        data["problems"].append(q)
        by = " ".join(f"{r['method']}={r['iterations']}({r['final_rms']:.0e})" for r in rows[1:])
        print(f"{q['name']}: {by} [{time.perf_counter() - t0:.1f}s]", flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(data, f, indent=1)
    data["seconds"] = time.perf_counter() - t_all
    if args.out:
        with open(args.out, "w") as f:
            json.dump(data, f, indent=1)
    print(summary(data))
    if args.markdown:
        print(markdown(data, args.columns))


if __name__ == "__main__":
    main()
