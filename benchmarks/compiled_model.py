"""A ``torch.compile``d network inside paratriton's CUDA-graphed samplers: does it work, and what does it buy?

    PYTHONPATH=. python benchmarks/compiled_model.py --out compiled.json            # CUDA (about 6 min on an H100)
    PYTHONPATH=. python benchmarks/compiled_model.py --out /tmp/c.json --tiny       # CPU smoke test, no CUDA graphs

Models (batch 1, DDIM, eta 0, classifier-free guidance, float64 solver state):
  default  the shipped default model (fp16 on CUDA), CFG at ``pipe.default_guidance_scale``; solvers graphed
           sequential, ``graphed_solver()`` (full window TAA, default tolerance) and ``graphed_solver("picard",
           window=8)``.
  dit      DiT-XL/2 with random weights (fp16, as benchmarks/scaling.py; ``--tiny``: 1 layer), CFG 4; solvers
           graphed sequential and ``graphed_solver("picard", window=8, max_iters=27, tol_abs=1e-30,
           tol_rel=1e-30)`` (exactly 27 iterations: random weights do not converge like a trained model).
Variants of the network, everything else identical: eager, then ``torch.compile(net, mode=m, dynamic=False)`` for
m in "default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune" (cheapest compiles first). The
compiled module is the one the sampler calls: the default model's UNet (``pipe.eps`` calls ``pipe.unet``; a fresh
``DigitsPipeline`` holds the compiled UNet) and the DiT transformer. ``torch._dynamo.reset()`` runs between
variants. "max-autotune" runs on the DiT only by default (its autotuning of the default model's convolutions at
six batch shapes would not fit the time budget); ``--modes`` and ``--models`` choose other sets.

Per (model, variant, solver) one JSON row: the first call's wall time (compiling the shapes that solver is first
to use, capturing its graphs and one solve), the median wall time of 5 more calls (synchronised), iterations,
the relative L2 difference of the sample from the eager variant's sample of the same solver, from the eager
graphed sequential sample, and between the first and last call (a stale graph would show here), dynamo's graph
and graph-break counts, and inductor's cudagraph skips (with their messages). A failing row records
``error: "<type>: <message>"`` (and the exception it interrupted, if any) and the next row runs; a lost CUDA
context stops the run. Rows are written to ``--out`` after each one, so a time-out keeps what was done; compiled
variants that would start after ``--budget-s`` are recorded as skipped.

Batch shapes (``dynamic=False`` compiles each once): at T = 100 the default model sees 2 (graphed sequential),
200/100/50/26 (full window TAA buckets, CFG doubles the window) and 16 (Picard W=8); the DiT sees 2 and 16. No
two solvers share a shape, so each first-call time holds the compiles of that solver's shapes only. On-disk
inductor caches (FX graphs, autotuning) persist across variants of one run: a later mode may reuse kernels a
former one compiled, so its first-call time is a warm-cache time.

CUDA graphs inside CUDA graphs: ``graphed_solver`` captures each window size's iteration (model call included) into
its own CUDA graph, and ``GraphedSequential`` captures the whole loop into one; both warm up once on a side
stream first (where the compile of a new shape happens) and then call the compiled model inside our capture.
With mode="reduce-overhead" and "max-autotune" torch.compile records CUDA graphs of its own (cudagraph trees),
which cannot run inside another capture: paratriton sees inductor's graph manager run in the warm-up, does not
capture, warns, and iterates uncaptured around the model's graphs. Run each compile mode in its own process
(``--modes``) when trying other torch versions: a capture that fails midway can leave the CUDA generator
unusable for the rest of the process.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import time
from typing import Any, Callable

import torch

import paratriton as pt
from paratriton.solvers import graphed_solver
from paratriton.solvers.graphed_sequential import GraphedSequential

ALL_MODES = ["default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune"]
DEFAULT_MODES = {"default": ALL_MODES[:3], "dit": ALL_MODES}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def wall(fn: Callable[[], object]) -> tuple[float, object]:
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return 1e3 * (time.perf_counter() - t0), out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def err(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e)[:300]}"


def cuda_ok() -> bool:
    if not torch.cuda.is_available():
        return True
    try:
        torch.cuda.synchronize()
        return torch.ones(1, device="cuda").add_(1).item() == 2.0
    except Exception:  # noqa: BLE001 - a sticky CUDA error, the context is gone
        return False


class SkipLog(logging.Handler):
    """Collects inductor's "skipping cudagraphs due to ..." messages."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()[:300]
        if msg not in self.messages:
            self.messages.append(msg)


class Problem:
    """One model: its network module, how a denoiser is built around a (possibly compiled) copy of it, the
    coefficients, x_T and the parallel solvers to time."""

    def __init__(
        self,
        name: str,
        net: torch.nn.Module,
        denoiser: Callable[[torch.nn.Module], object],
        coeffs,
        x_T: torch.Tensor,
        solvers: dict[str, Callable[[], Any]],
    ) -> None:
        self.name, self.net, self.denoiser, self.coeffs, self.x_T, self.solvers = (
            name,
            net,
            denoiser,
            coeffs,
            x_T,
            solvers,
        )


def default_problem(dev: torch.device, T: int) -> Problem:
    from end_to_end import digits_denoiser  # benchmarks/ is on sys.path when this file runs as a script

    from paratriton.models import DigitsPipeline, default_scheduler, load_default

    pipe = load_default(device=dev, dtype=torch.float16 if dev.type == "cuda" else torch.float32)
    coeffs = pt.coefficients_from_scheduler(default_scheduler("ddim"), T)
    labels = torch.tensor([3], device=dev)
    scale = pipe.default_guidance_scale

    def denoiser(net):
        p = pipe
        if net is not pipe.unet:  # a fresh pipeline around the compiled UNet, the eager one left as it is
            p = DigitsPipeline(net, pipe.scheduler)
            p._default_guidance_scale = scale
            p.set_progress_bar_config(disable=True)
        return digits_denoiser(p, coeffs, labels, scale)

    x_T = torch.randn(1, *pipe.sample_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    solvers = {"taa_full": lambda: graphed_solver(), "picard_w8": lambda: graphed_solver("picard", window=8)}
    return Problem("default", pipe.unet, denoiser, coeffs, x_T.to(dev), solvers)


def dit_problem(dev: torch.device, T: int, tiny: bool) -> Problem:
    from diffusers import DDIMScheduler, DiTTransformer2DModel

    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(dev):  # initialised on the device: DiT-XL/2's 675M parameters init slowly on the CPU
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
    net = net.to(dev, dtype).eval().requires_grad_(False)
    coeffs = pt.coefficients_from_scheduler(DDIMScheduler(clip_sample=False), T)
    ts = coeffs.timesteps.to(dev, torch.long)

    def denoiser(module):
        def call(x, s, cond):
            y = torch.where(cond, 207, 1000)  # class 207, or the null class on unconditional rows
            return module(x.to(dtype), timestep=ts[s], class_labels=y).sample[:, :4].float()

        return pt.ClassifierFreeGuidance(call, 4.0, pass_branch=True)

    x_T = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    solvers = {"picard_w8_27it": lambda: graphed_solver("picard", window=8, max_iters=27, tol_abs=1e-30, tol_rel=1e-30)}
    return Problem("dit", net, denoiser, coeffs, x_T.to(dev), solvers)


def run_variant(prob: Problem, mode: str | None, refs: dict, reps: int, emit, skip_log: SkipLog) -> bool:
    """All solvers of one variant (``mode`` None: eager). Returns False when the CUDA context is lost."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    variant = "eager" if mode is None else f"compile:{mode}"
    net = prob.net if mode is None else torch.compile(prob.net, mode=mode, dynamic=False)
    model = prob.denoiser(net)
    names = ["graphed_sequential", *prob.solvers]
    alive = True
    for name in names:
        row = {"model": prob.name, "variant": variant, "solver": name, "T": prob.coeffs.num_steps}
        skip_log.messages.clear()
        holder: dict = {}
        try:
            if name == "graphed_sequential":

                def first(holder=holder):  # construction captures the graph (the warm-up compiles)
                    holder["s"] = GraphedSequential(model, prob.coeffs, prob.x_T)
                    return holder["s"].run()

                call = lambda holder=holder: holder["s"].run()  # noqa: E731
            else:
                holder["s"] = prob.solvers[name]()
                call = first = lambda holder=holder: holder["s"].solve(model, prob.coeffs, prob.x_T)  # noqa: E731
            t_first, res = wall(first)
            first_sample = res.sample.double().clone()
            times = []
            for _ in range(reps):
                t, res = wall(call)
                times.append(t)
            sample = res.sample.double().clone()
            row.update(
                first_call_ms=t_first,
                median_ms=statistics.median(times),
                iterations=res.iterations,
                nfe=res.nfe,
                converged=res.converged,
                rel_diff_first_vs_last_call=rel(sample, first_sample),
            )
            if mode is None:
                refs[name] = sample
            if name in refs:
                row["rel_diff_vs_eager"] = rel(sample, refs[name])
            if "graphed_sequential" in refs:
                row["rel_diff_vs_eager_graphed_sequential"] = rel(sample, refs["graphed_sequential"])
            if mode is None:
                refs[("ms", name)] = row["median_ms"]
            if ("ms", name) in refs:
                row["speedup_vs_eager_same_solver"] = refs[("ms", name)] / row["median_ms"]
            if ("ms", "graphed_sequential") in refs:
                row["speedup_vs_eager_graphed_sequential"] = refs[("ms", "graphed_sequential")] / row["median_ms"]
        except Exception as e:  # noqa: BLE001 - one failing mode must not lose the others
            row["error"] = err(e)
            inner = e.__context__ or e.__cause__
            if inner is not None:
                row["error_context"] = err(inner)
            if not cuda_ok():
                row["cuda_context_lost"] = True
                alive = False
        row.update(
            dynamo_graphs=counters["stats"]["unique_graphs"],
            graph_breaks=sum(counters["graph_break"].values()),
            cudagraph_skips=counters["inductor"]["cudagraph_skips"],
        )
        if skip_log.messages:
            row["cudagraph_skip_messages"] = list(skip_log.messages)
        holder.clear()
        emit(row)
        if not alive:
            break
    model = net = None  # free the network before the next variant
    gc.collect()
    if torch.cuda.is_available() and alive:
        torch.cuda.empty_cache()
    return alive


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="compiled.json")
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: 1-layer DiT, T=4, eager and 'default'")
    p.add_argument("--models", nargs="+", choices=["default", "dit"], default=["default", "dit"])
    p.add_argument(
        "--modes",
        nargs="+",
        choices=ALL_MODES,
        default=None,
        help="compile modes for every model (default: all four on the DiT, all but max-autotune on "
        "the default model; --tiny: 'default')",
    )
    p.add_argument("--steps", type=int, default=None, help="T (default 100, --tiny 4)")
    p.add_argument("--reps", type=int, default=None, help="timed calls after the first (default 5, --tiny 2)")
    p.add_argument(
        "--budget-s", type=float, default=330.0, help="compiled variants that would start later than this are skipped"
    )
    args = p.parse_args()
    cuda = torch.cuda.is_available() and not args.tiny
    dev = torch.device("cuda" if cuda else "cpu")
    if not cuda and not args.tiny:
        raise SystemExit("no CUDA device: run with --tiny for the CPU smoke test")
    T = args.steps or (4 if args.tiny else 100)
    reps = args.reps or (2 if args.tiny else 5)
    report = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_graphs": cuda,
        "args": vars(args),
        "T": T,
        "reps": reps,
        "rows": [],
    }
    try:
        import triton

        report["triton"] = triton.__version__
    except ImportError:
        pass

    def emit(row):
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)

    skip_log = SkipLog()
    from torch._inductor import cudagraph_utils

    cudagraph_utils.cudagraphs_log.addHandler(skip_log)
    start = time.perf_counter()
    with torch.no_grad():
        for name in args.models:
            prob = default_problem(dev, T) if name == "default" else dit_problem(dev, T, args.tiny)
            modes = args.modes or (["default"] if args.tiny else DEFAULT_MODES[name])
            refs: dict = {}
            alive = run_variant(prob, None, refs, reps, emit, skip_log)
            for mode in modes:
                if not alive:
                    break
                elapsed = time.perf_counter() - start
                if elapsed > args.budget_s:
                    emit(
                        {
                            "model": name,
                            "variant": f"compile:{mode}",
                            "error": f"skipped: {elapsed:.0f} s spent, over --budget-s {args.budget_s:.0f}",
                        }
                    )
                    continue
                alive = run_variant(prob, mode, refs, reps, emit, skip_log)
            del prob, refs
            gc.collect()
            if not alive:
                report["aborted"] = "CUDA context lost; later variants not run"
                break
    report["total_s"] = time.perf_counter() - start
    print(json.dumps({"total_s": report["total_s"], "rows": len(report["rows"])}), flush=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
