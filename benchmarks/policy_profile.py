"""Where a parallel policy chunk's time goes outside the model: cProfile of ``denoise(..., cuda_graph=True)`` calls
on the shipped policy (batch 1, DDPM-100), after a warm-up, and the CUDA time of the same calls.

    python benchmarks/policy_profile.py [--calls 20]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import paratriton  # noqa: E402
from paratriton.models.policy import load_policy  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args()
    pol = load_policy(device="cuda")
    cond = torch.randn(1, pol.model.global_cond_dim, device="cuda")
    x_T = torch.randn(1, pol.horizon, pol.action_dim, device="cuda")

    def call():
        return paratriton.denoise(
            pol.model, pol.noise_scheduler, x_T, 100, generator=torch.Generator("cuda").manual_seed(1),
            model_kwargs={"global_cond": cond}, method="taa", cuda_graph=True, return_result=True,
        )  # fmt: skip

    for _ in range(3):
        res = call()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.calls):
        res = call()
    torch.cuda.synchronize()
    per = (time.perf_counter() - t0) / args.calls * 1e3
    print(f"per call {per:.2f} ms, iterations {res.iterations}, probe calls {res.probe_calls}")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.calls):
        call()
    torch.cuda.synchronize()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
