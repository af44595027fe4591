"""Iterations, distance and the precision floor of the shipped models on CUDA, with TF32 on and off, fp16 and fp32
(issue 17): where the solver stops, how far from the graphed sequential sample, what it reports.

    PYTHONPATH=. python benchmarks/precision_floor.py

Each line: ``iterations``, the final RMS distance to the graphed sequential sample, ``error_bound``,
``precision_limited``/``precision_floor`` and probe calls; then per iteration ``frozen_from:error/tol``.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from end_to_end import rms, shipped_problem

import paratriton as pt
from paratriton.solvers.graphed_sequential import GraphedSequential

dev = torch.device("cuda")
for tf32, dtype in [(True, torch.float16), (False, torch.float16), (True, torch.float32), (False, torch.float32)]:
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    for name in ["digits", "dit-crops"]:
        pipe = pt.models.load(name, device=dev, dtype=dtype)
        model, coeffs, x_T, noise = shipped_problem(pipe, "ddim", 100, 1, dev, 0)
        ref = GraphedSequential(model, coeffs, x_T, noise).run().sample.clone()
        for method in ["taa", "picard"]:
            log = []

            def cb(info, log=log):
                log.append(f"{info.frozen_from}:{rms(info.sample, ref) / 1e-3:.2f}")

            res = pt.solve(model, coeffs, x_T, noise, method=method, state_dtype=torch.float32, callback=cb)
            print(
                f"tf32={tf32} {dtype} {name} {method}: it {res.iterations} rms {rms(res.sample, ref):.1e} "
                f"bound {res.error_bound} prec {res.precision_limited} floor {res.precision_floor} "
                f"probes {res.probe_calls}",
                flush=True,
            )
            print("   F:err/tol", " ".join(log), flush=True)
