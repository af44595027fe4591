"""Where a graphed parallel solve's time goes outside the model call (CUDA).

    PYTHONPATH=. python benchmarks/overhead.py --out overhead_<device>.json [--cases digits dit policy] [--reps 7]

Per case, side by side in one process: the graphed sequential sampler, and the graphed TAA solve (default tolerance,
full window) after a warm-up solve, median of ``--reps``. Its time is split into
* ``model_ms``: the graphed model call alone at each iteration's rows (the solve's windows, replayed one by one),
  summed over the iterations; floor-probe calls are counted in ``probe_calls``, not timed;
* ``gpu_ms``: every kernel's device time in one solve (``torch.profiler``; kernels inside graph replays included),
  of which ``gpu_model_ms`` is the kernels whose names the model call alone launches, the rest the solver's;
* ``host_ms = wall - gpu_ms``: time the GPU waits for the host (host reads, Python, launches, setup and result
  assembly per solve).
``non_model_ms_per_iter = (wall - model_ms) / iterations``. For the policy case the solve is one
``paratriton.denoise(..., cuda_graph=True)`` chunk (what a control loop calls), and ``engine_ms`` is the same
problem's ``GraphedSolvers`` solve alone (the denoise wrapper's own cost is the difference).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from engine import wall_ms  # noqa: E402 - the sibling benchmark's timer (this folder is on sys.path)

import paratriton as pt  # noqa: E402
from paratriton._cuda_graph import capture, median_ms  # noqa: E402
from paratriton.solvers import graphed_solver  # noqa: E402
from paratriton.solvers.graphed_sequential import GraphedSequential  # noqa: E402


def kernel_times(fn) -> dict[str, float]:
    """Device time (ms) per kernel name of one ``fn()``."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    out: dict[str, float] = {}
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)
        if t:
            out[e.key] = out.get(e.key, 0.0) + t / 1e3
    return out


def split(name: str, solve, call_at, rows_per_step: int, seq_ms: float, reps: int, extra: dict) -> dict:
    """Time ``solve()`` (returns a SolveResult) and split it; ``call_at(rows)`` -> a capturable model call."""
    solve()
    solve()
    wall = wall_ms(solve, reps)
    res = solve()
    calls: dict[int, float] = {}
    model_names: set[str] = set()
    for lo, hi in res.windows:
        rows = (hi - lo) * rows_per_step
        if rows not in calls:
            graph, _ = capture(call_at(rows))
            calls[rows] = median_ms(graph.replay, 20)
            model_names |= set(kernel_times(graph.replay))
    model = sum(calls[(hi - lo) * rows_per_step] for lo, hi in res.windows)
    kt = kernel_times(solve)
    gpu = sum(kt.values())
    gpu_model = sum(v for k, v in kt.items() if k in model_names)
    it = max(res.iterations, 1)
    row = dict(
        model=name,
        window=max(hi - lo for lo, hi in res.windows) if res.windows else 0,
        iterations=res.iterations,
        probe_calls=res.probe_calls,
        converged=res.converged,
        precision_limited=res.precision_limited,
        wall_ms=wall,
        sequential_ms=seq_ms,
        speedup=seq_ms / wall,
        model_ms=model,
        model_ms_per_iter=model / it,
        non_model_ms_per_iter=(wall - model) / it,
        gpu_ms=gpu,
        gpu_model_ms=gpu_model,
        gpu_solver_ms=gpu - gpu_model,
        host_ms=wall - gpu,
        ceiling_speedup=seq_ms / model if model else None,
        top_solver_kernels=sorted(((v, k) for k, v in kt.items() if k not in model_names), reverse=True)[:6],
        **extra,
    )
    print(
        f"{name:34s} it {res.iterations:3d} wall {wall:7.2f} model {model:7.2f} gpu {gpu:7.2f} (model kernels "
        f"{gpu_model:7.2f}) host {wall - gpu:6.2f} non-model/iter {row['non_model_ms_per_iter']:.3f} "
        f"seq {seq_ms:7.2f} x{row['speedup']:.2f}",
        flush=True,
    )
    return row


def shipped_cases(which: str, dtypes, batches, reps: int) -> list[dict]:
    from end_to_end import shipped_problem

    rows = []
    dev = torch.device("cuda")
    for dtype in dtypes:
        pipe = pt.models.load({"digits": "digits", "dit": "dit-crops"}[which], device=dev, dtype=dtype)
        for kind in ("ddim", "ddpm") if which == "dit" else ("ddim",):
            for B in batches:
                model, coeffs, x_T, noise = shipped_problem(pipe, kind, 100, B, dev, 0)
                seq = GraphedSequential(model, coeffs, x_T, noise)
                seq_ms = wall_ms(seq.run, reps)
                solver = graphed_solver("taa")

                def call_at(rows, model=model, B=B, x_T=x_T):
                    xs = torch.randn(rows, *x_T.shape[1:], device=dev)
                    steps = torch.arange(rows // B, device=dev).repeat_interleave(B)
                    return lambda: model(xs, steps)

                name = f"{which} {kind}-100 b{B} {str(dtype)[6:]}"
                extra = dict(batch=B, dtype=str(dtype), steps=100, sampler=kind)
                solve = solver.solve
                rows.append(split(name, lambda: solve(model, coeffs, x_T, noise), call_at, B, seq_ms, reps, extra))
                del seq
    return rows


def policy_case(reps: int) -> list[dict]:
    from paratriton.denoise import _GRAPHED, LoopDenoiser, _operator
    from paratriton.models.policy import load_policy

    dev = torch.device("cuda")
    pol = load_policy(device=dev)
    cond = torch.randn(1, pol.model.global_cond_dim, device=dev)
    x_T = torch.randn(1, pol.horizon, pol.action_dim, device=dev)
    sched = pol.noise_scheduler
    kw = {"global_cond": cond}

    def chunk(method="taa", **options):
        return pt.denoise(
            pol.model, sched, x_T, 100, generator=torch.Generator(dev).manual_seed(1), model_kwargs=kw,
            method=method, cuda_graph=True, return_result=True, **options,
        )  # fmt: skip

    chunk("sequential")
    seq_ms = wall_ms(lambda: chunk("sequential"), reps)
    chunk()
    entry = _GRAPHED[pol.model]
    res0 = chunk()
    coeffs = _operator(sched, 100, None, False)[0]
    noise = torch.zeros(100, *x_T.shape, dtype=torch.float64, device=dev)
    engine_ms = wall_ms(lambda: entry.solve("taa", {}, x_T, noise, None), reps)

    def call_at(rows):
        den = LoopDenoiser(pol.model, coeffs.timesteps.to(dev, torch.long), kw, 1, x_T.dtype)
        xs = torch.randn(rows, *x_T.shape[1:], device=dev)
        steps = torch.arange(rows, device=dev)
        return lambda: den(xs, steps)

    rows = []
    for k in (1, 2, 4):  # iterations per graph replay between host reads
        extra = dict(batch=1, dtype="float32", steps=100, sampler="ddpm", iters_per_sync=k)
        if k == 1:
            extra.update(engine_ms=engine_ms, iters=res0.iterations)
        name = f"policy (trained, push-v3) ddpm-100 b1 k{k}"
        rows.append(split(name, lambda k=k: chunk(iters_per_sync=k), call_at, 1, seq_ms, reps, extra))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--cases", nargs="+", default=["policy", "digits", "dit"], choices=["policy", "digits", "dit"])
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    rows = []
    for case in args.cases:
        if case == "policy":
            rows += policy_case(args.reps)
        elif case == "digits":
            rows += shipped_cases("digits", (torch.float16, torch.float32), (1, 8), args.reps)
        else:
            rows += shipped_cases("dit", (torch.float16,), (1,), args.reps)
        if args.out:
            with open(args.out, "w") as f:
                meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows)
                json.dump(meta, f, indent=1, default=str)


if __name__ == "__main__":
    main()
