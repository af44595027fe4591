"""Can a policy chunk's step noise (99 ``randn`` draws in the loop's order) come from one CUDA-graph replay, equal
to the eager draws bit for bit?  Prints equality and the time of each way (issue 37: the draws cost ~1.5 ms a chunk).

    python benchmarks/graphed_draws.py [--steps 99] [--shape 1 16 10]
"""

from __future__ import annotations

import argparse
import time

import torch


def eager(gen, n, shape, out):
    for i in range(n):
        out[i] = torch.randn(shape, generator=gen, device="cuda")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=99)
    ap.add_argument("--shape", type=int, nargs="+", default=[1, 16, 10])
    a = ap.parse_args()
    shape, n = tuple(a.shape), a.steps
    for kind in ("user", "default"):
        gen = torch.Generator("cuda").manual_seed(0) if kind == "user" else torch.cuda.default_generators[0]
        buf = torch.empty(n, *shape, device="cuda")
        g = torch.cuda.CUDAGraph()
        if kind == "user":
            g.register_generator_state(gen)
        with torch.cuda.graph(g):
            for i in range(n):
                buf[i].normal_(generator=gen)
        for seed in (0, 1, 1):
            gen.manual_seed(seed)
            ref = eager(gen, n, shape, torch.empty_like(buf))
            after_eager = torch.randn(4, generator=gen, device="cuda")
            gen.manual_seed(seed)
            g.replay()
            after_graph = torch.randn(4, generator=gen, device="cuda")
            print(
                kind,
                "seed",
                seed,
                "equal draws:",
                bool(torch.equal(ref, buf)),
                "equal state after:",
                bool(torch.equal(after_eager, after_graph)),
                flush=True,
            )
        # consecutive chunks without reseeding
        gen.manual_seed(5)
        r1 = eager(gen, n, shape, torch.empty_like(buf)).clone()
        r2 = eager(gen, n, shape, torch.empty_like(buf)).clone()
        gen.manual_seed(5)
        g.replay()
        g1 = buf.clone()
        g.replay()
        g2 = buf.clone()
        print(kind, "two chunks equal:", bool(torch.equal(r1, g1) and torch.equal(r2, g2)), flush=True)
        for name, fn in (("eager", lambda: eager(gen, n, shape, buf)), ("graph", g.replay)):
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(50):
                fn()
            torch.cuda.synchronize()
            print(kind, name, f"{(time.perf_counter() - t0) / 50 * 1e3:.3f} ms per chunk of {n} draws", flush=True)


if __name__ == "__main__":
    main()
