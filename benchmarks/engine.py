"""The engine on one GPU: solver work per iteration inside the graph, first-call cost, eager cost, precision.

    python benchmarks/engine.py --out benchmarks/results/engine_h200.json

1. ``solver_ms_per_iter``: one graphed iteration with a model that costs nothing (it returns a fixed tensor), so
   the replay is the engine's own work: window gather, residual test, the rule's update, bookkeeping. Window
   ``H = 100`` (full window of T = 100), D in {4096, 16384, 65536}, B in {1, 8}, TAA with history m in {2, 3, 5}
   and Picard / fixed point; float32 state (the CUDA default), fp16 model output.
   ``bandwidth_share``: the bytes an iteration must move (counted below) over its time, over the measured copy
   bandwidth (``torch.Tensor.copy_`` of 2 GiB, read + write counted).
2. The shipped default model (fp16, CFG), DDIM-100, batch 1 and 8: graphed TAA's first call (captures and
   compiles), later calls, the eager engine per iteration, and the RMS distance of the float32-state sample from
   the float64-state one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import paratriton as pt
from paratriton._cuda_graph import median_ms
from paratriton.solvers import make_solver


def copy_bandwidth(dev: torch.device) -> float:
    """Bytes/s of a device-to-device copy (read + write counted)."""
    src = torch.empty(2**29, dtype=torch.float32, device=dev)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), reps=20)
    return 2 * src.numel() * 4 / (ms * 1e-3)


def iteration_bytes(method: str, H: int, B: int, D: int, m: int, state: int = 4, model: int = 2) -> int:
    """What one iteration must move at least: gather (read H+1 rows, write H), residual test (x, x_in, out),
    the update's pass (x, x_in, out again, ring R/Y writes, m older R reads; fixed point: x write), the update
    (M ring Y reads, x write)."""
    n = H * B * D
    gather = 2 * n * state
    test = 2 * n * state + n * model
    if method == "taa":
        push = 2 * n * state + n * model + 2 * n * state + m * n * state
        update = (m + 1) * n * state + n * state
        return gather + test + push + update
    return gather + test + 2 * n * state + n * model + n * state


def solver_ms(method: str, T: int, B: int, D: int, history: int, dev: torch.device) -> float:
    """Median ms of one graphed engine iteration whose model returns a fixed fp16 tensor."""
    out = torch.randn(T * B, D, device=dev, dtype=torch.float16)
    coeffs = pt.coefficients_from_scheduler(_ddim(), T)
    x_T = torch.randn(B, D, device=dev)
    opts = dict(tol_abs=1e-30, tol_rel=1e-30, max_iters=2, buckets=1)
    if method == "taa":
        opts["history"] = history
    eng = make_solver(method, cuda_graph=True, **opts)
    eng.solve(lambda x, s: out[: x.shape[0]], coeffs, x_T)  # captures the window H = T
    graph, s = eng._graphs[T, 1], eng._s

    def replay():
        s.F.fill_(T)
        s.n_it.zero_()
        graph.replay()

    base = median_ms(lambda: (s.F.fill_(T), s.n_it.zero_()), reps=50)
    return max(0.0, median_ms(replay, reps=50) - base)


def _ddim():
    from diffusers import DDIMScheduler

    return DDIMScheduler(clip_sample=False)


def part_kernels(report: dict, dev: torch.device, quick: bool) -> None:
    bw = copy_bandwidth(dev)
    report["copy_bandwidth_TBps"] = bw / 1e12
    rows = []
    Ds = (4096,) if quick else (4096, 16384, 65536)
    for D in Ds:
        for B in (1, 8):
            for method, m in (("taa", 2), ("taa", 3), ("taa", 5), ("picard", 0), ("fp", 0)):
                if quick and (B, m) not in ((1, 2), (1, 0)):
                    continue
                ms = solver_ms(method, 100, B, D, max(m, 1), dev)
                nbytes = iteration_bytes(method, 100, B, D, m)
                row = dict(
                    method=method,
                    history=m,
                    D=D,
                    B=B,
                    W=100,
                    solver_ms_per_iter=ms,
                    bytes=nbytes,
                    bandwidth_share=nbytes / (ms * 1e-3) / bw if ms > 0 else None,
                )
                rows.append(row)
                print(json.dumps(row), flush=True)
    report["solver_ms_per_iter"] = rows


def default_model(report: dict, dev: torch.device, steps: int) -> None:
    from end_to_end import digits_denoiser  # the capturable CFG denoiser of the default model (benchmarks/)

    from paratriton.models import default_scheduler, load_default
    from paratriton.solvers.graphed_sequential import GraphedSequential

    pipe = load_default(device=dev, dtype=torch.float16)
    rows = []
    for B in (1, 8):
        coeffs = pt.coefficients_from_scheduler(default_scheduler("ddim"), steps)
        g = torch.Generator().manual_seed(0)
        x_T = torch.randn(B, *pipe.sample_shape, generator=g).to(dev)
        labels = torch.arange(B, device=dev) % 10
        model = digits_denoiser(pipe, coeffs, labels, pipe.default_guidance_scale)
        seq = GraphedSequential(model, coeffs, x_T)
        seq.run()
        t_seq = wall_ms(seq.run) / 1e3
        ref = seq.run().sample.clone()
        taa = make_solver("taa", cuda_graph=True)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        first = taa.solve(model, coeffs, x_T)
        torch.cuda.synchronize()
        t_first = time.perf_counter() - t0
        t_taa = wall_ms(lambda: taa.solve(model, coeffs, x_T)) / 1e3
        res = taa.solve(model, coeffs, x_T)
        eager = make_solver("taa")
        eager.solve(model, coeffs, x_T)
        t_eager = wall_ms(lambda: eager.solve(model, coeffs, x_T), reps=3) / 1e3
        f64 = make_solver("taa", cuda_graph=True, state_dtype=torch.float64).solve(model, coeffs, x_T)
        row = dict(
            B=B,
            T=steps,
            graphed_sequential_ms=1e3 * t_seq,
            graphed_taa_ms=1e3 * t_taa,
            speedup_vs_graphed_sequential=t_seq / t_taa,
            first_call_ms=1e3 * t_first,
            iterations=res.iterations,
            converged=res.converged,
            first_iterations=first.iterations,
            eager_engine_ms=1e3 * t_eager,
            eager_ms_per_iter=1e3 * t_eager / res.iterations,
            rms_vs_graphed_sequential=_rms(res.sample, ref),
            rms_float32_vs_float64_state=_rms(res.sample, f64.sample),
            float64_iterations=f64.iterations,
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
    report["default_model_ddim"] = rows


def _rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).square().mean().sqrt().item()


def wall_ms(fn, reps: int = 7) -> float:
    """Median wall time of ``fn()`` in ms, the device synchronised before and after each call (host work counted,
    unlike ``paratriton._cuda_graph.median_ms``'s device time); benchmarks/overhead.py times with it too."""
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="engine.json")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--quick", action="store_true", help="one configuration per part")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/engine.py needs a CUDA device")
    import triton

    dev = torch.device("cuda")
    report = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "backends": pt.backends(),
    }
    part_kernels(report, dev, args.quick)
    default_model(report, dev, args.steps)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
