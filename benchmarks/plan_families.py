"""``paratriton.plan(pipe, steps)`` on every pipeline family ``paratriton.parallelize`` supports, at a real shape.

    PYTHONPATH=. python benchmarks/plan_families.py --out plan_families.json [--families audioldm2 wan ...]
    PYTHONPATH=. python benchmarks/plan_families.py --params        # parameter counts and bf16 weight memory only
    PYTHONPATH=. python benchmarks/plan_families.py --tiny --steps 4 --reps 1   # CPU smoke run

Per family (``benchmarks/families.py``): build the stock diffusers pipeline from its denoiser's published config
with RANDOM weights (bf16 on CUDA; no text encoders: random prompt embeddings of the encoders' shapes are passed;
no VAE: ``output_type="latent"``), plan it (methods taa and picard, graphed on CUDA, the plan cache off: the
weights are random), then time the chosen sampler (``plan.parallelize(pipe)``) and the graphed sequential sampler
side by side (median of ``--reps`` calls after a warm-up; ``benchmarks/paradigms.median_ms``). Steps and scheduler
are each model's shipped defaults (``--steps`` overrides). One JSON row per family (family, shape, steps,
scheduler, params, choice, predicted_ms, measured_ms, sequential_ms, speedup, reason, and ``plan_row``'s fields) is
written to ``--out`` after every row; a failing family (out of memory, say) becomes a row with ``error`` and the
run goes on; ``--max-seconds`` starts no new family after that long. A table goes to stdout at the end.

Published denoiser configs (as diffusers ships them): SD-1.5 and SDXL-base UNets, SD3-medium, FLUX.1-dev (Kontext-dev
has the same transformer), FLUX.2-dev, Wan2.1-T2V-1.3B and -14B, Qwen-Image, SANA 1600M 1024px, LTX-Video 0.9,
CogVideoX-2b, Lumina-Image-2.0, Chroma1-HD, HiDream-I1-Full (its ``llama_layers`` list as recalled: 32 layers, the
last repeated), Z-Image, and AudioLDM2's UNet (cvssp/audioldm2, recalled: 4 levels 128-640, 8 latent channels,
GPT-2 then T5 cross-attention). Text lengths are typical, not published. Video is short: Wan 480x832 at 17 frames,
LTX 480x704 at 25, CogVideoX 480x720 at 13. FLUX.2 runs text to image (reference images need the VAE).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from families import FAMILIES  # benchmarks/ is on sys.path when run as a script
from paradigms import median_ms, plan_row

import paratriton

DENOISERS = ("unet", "transformer", "transformer_2")


def denoiser_params(pipe) -> int:
    """Parameters of the pipeline's denoiser(s), the part the sampler calls every step."""
    return sum(p.numel() for name in DENOISERS if (m := getattr(pipe, name, None)) is not None for p in m.parameters())


def param_rows(names: list[str]) -> list[dict]:
    """Each real-shape denoiser's parameter count and bf16 weight memory, built on the meta device (no memory)."""
    rows = []
    for name in names:
        case = FAMILIES[name](torch.device("meta"), torch.bfloat16, False)
        n = denoiser_params(case.pipe)
        rows.append(dict(family=name, config=case.config, shape=case.shape, params=n, weights_gib=2 * n / 2**30))
    return rows


def run_family(name: str, args, dev, dtype, sync) -> dict:
    """Plan one family, then time the plan's sampler and the graphed sequential sampler beside it."""
    case = FAMILIES[name](dev, dtype, args.tiny)
    steps = args.steps or case.steps
    head = dict(
        family=name,
        shape=case.shape,
        steps=steps,
        scheduler=case.scheduler,
        config=case.config,
        params=denoiser_params(case.pipe),
    )
    t0 = time.perf_counter()
    plan = paratriton.plan(case.pipe, steps, methods=tuple(args.methods), plan_cache=False, **case.call)
    plan_s = time.perf_counter() - t0
    chosen = plan.parallelize(case.pipe)
    chosen.set_progress_bar_config(disable=True)
    measured_ms = median_ms(chosen, steps, case.call, args.reps, sync)
    if plan.method == "sequential":
        seq_ms = measured_ms  # the chosen sampler is the graphed sequential one
    else:
        seq = paratriton.parallelize(case.pipe, "sequential", cuda_graph=plan.cuda_graph)
        seq.set_progress_bar_config(disable=True)
        seq_ms = median_ms(seq, steps, case.call, args.reps, sync)
    row = plan_row(plan, measured_ms, seq_ms, plan_s, **head)
    row["choice"] = "sequential" if plan.window is None else f"{plan.method} W={plan.window}"
    row["sequential_ms"] = row.pop("graphed_sequential_ms")
    row["speedup"] = row.pop("speedup_vs_graphed_sequential")
    row["plan_sequential_ms"] = plan.sequential_ms  # the planner's own sequential timing (calibration noise)
    return row


def count(n: int) -> str:
    """A parameter count as ``11.90B`` or ``1.03M``."""
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def table(rows: list[dict]) -> str:
    """A short fixed-width table of the rows."""
    lines = [
        f"{'family':<10} {'shape':<14} {'steps':>5} {'params':>7} {'choice':<12} {'pred ms':>9} "
        f"{'meas ms':>9} {'seq ms':>9} {'speedup':>7}"
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['family']:<10} error: {r['error'][:90]}")
            continue
        lines.append(
            f"{r['family']:<10} {r['shape']:<14} {r['steps']:>5} {count(r['params']):>7} "
            f"{r['choice']:<12} {r['predicted_ms']:>9.1f} {r['measured_ms']:>9.1f} "
            f"{r['sequential_ms']:>9.1f} {r['speedup']:>6.2f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="plan_families.json")
    p.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    p.add_argument("--steps", type=int, default=None, help="override every family's shipped step count")
    p.add_argument("--methods", nargs="+", default=["taa", "picard"])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--max-seconds", type=float, default=float("inf"), help="start no new family after this long")
    p.add_argument("--device", default=None)
    p.add_argument("--tiny", action="store_true", help="tiny configs on the CPU, for a smoke test")
    p.add_argument("--params", action="store_true", help="only count the real-shape denoisers' parameters")
    args = p.parse_args(argv)
    if args.params:
        rows = param_rows(args.families)
        for r in rows:
            print(f"{r['family']:<10} {r['config']:<34} {count(r['params']):>7}  {r['weights_gib']:6.1f} GiB bf16")
        with open(args.out, "w") as f:
            json.dump({"params": rows}, f, indent=1)
        return {"params": rows}

    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    report = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": str(dtype),
        "weights": "random (published configs, see benchmarks/families.py)" if not args.tiny else "random, tiny",
        "rows": [],
        "skipped": [],
    }
    start = time.perf_counter()
    for name in args.families:
        if time.perf_counter() - start > args.max_seconds:
            report["skipped"].append(dict(family=name, reason="--max-seconds reached"))
            continue
        try:
            row = run_family(name, args, dev, dtype, sync)
        except Exception as e:  # noqa: BLE001 - one family's failure (out of memory, say) must not end the run
            row = dict(family=name, error=f"{type(e).__name__}: {e}")
        row["elapsed_s"] = time.perf_counter() - start
        report["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "candidates"}), flush=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(table(report["rows"]))
    return report


if __name__ == "__main__":
    sys.exit(1 if any("error" in r for r in main().get("rows", [])) else 0)
