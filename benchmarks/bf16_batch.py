"""Issue 17's bf16 criterion on CUDA, literally: is the parallel bf16 sample as close to the bf16 sequential sample
as two bf16 sequential runs with different batch sizes are to each other?

    PYTHONPATH=. python benchmarks/bf16_batch.py [--out FILE]

The shipped digits model in bf16, DDIM at T = 25/50, labels (1, 4, 7). The batch-size pair: the same three
trajectories run alone (batch 3) and inside a batch of 8 (their rows sliced out). On the CPU the two are bitwise
identical (oneDNN's bf16 kernels do not depend on the batch), so this runs where batch size changes the kernels.
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import paratriton as pt
from paratriton.models import default_scheduler


def worst_rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref.double()).flatten(1).square().mean(1).sqrt().max())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    dev = torch.device(args.device)
    rows = []
    for T in (25, 50):
        coeffs = pt.coefficients_from_scheduler(default_scheduler("ddim"), T, eta=0.0)
        labels = torch.tensor([1, 4, 7, 2, 5, 8, 0, 3], device=dev)
        x8, _ = pt.models.load_default(device="cpu").problem(8, T, torch.Generator().manual_seed(0), device=dev)
        x3 = x8[:3]
        out = {}
        for dtype in (torch.float32, torch.bfloat16):
            pipe = pt.models.load_default(device=dev, dtype=dtype)
            m3, m8 = pipe.denoiser(coeffs, labels[:3]), pipe.denoiser(coeffs, labels)
            out[dtype] = pt.solve(m3, coeffs, x3, method="sequential").sample
            if dtype == torch.bfloat16:
                seq8 = pt.solve(m8, coeffs, x8, method="sequential").sample[:3]
                batch_gap = worst_rms(out[dtype], seq8)
                for method in ("taa", "picard", "fp"):
                    r = pt.solve(m3, coeffs, x3, method=method)
                    row = dict(
                        T=T,
                        method=method,
                        iterations=r.iterations,
                        converged=bool(r.converged),
                        precision_limited=bool(r.precision_limited),
                        to_bf16_sequential=worst_rms(r.sample, out[dtype]),
                        bf16_batch3_vs_batch8=batch_gap,
                    )
                    rows.append(row)
        for row in rows:
            if row["T"] == T:
                row["bf16_vs_fp32_sequential"] = worst_rms(out[torch.bfloat16], out[torch.float32])
                row["meets"] = row["to_bf16_sequential"] <= row["bf16_batch3_vs_batch8"]
                print(json.dumps(row), flush=True)
    if args.out:
        dev_name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
        with open(args.out, "w") as f:
            json.dump({"device": dev_name, "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
