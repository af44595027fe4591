"""Diffusion-policy latency on one GPU: exact parallel sampling against the best sequential loops, side by side.

    python benchmarks/policy.py --out benchmarks/results/policy_<device>.json [--configs NAME ...] [--compile]

Per configuration (a ``ConditionalUnet1D`` of a published shape with random weights, or the shipped trained
policy), batch 1, in one process on one device:

* ``graphed_loop_ms``: the stock DDPM/DDIM loop (``clip_sample=True``) written here in plain torch and captured
  whole as one CUDA graph (T model calls and updates, pre-drawn noise): the strongest sequential baseline;
* ``graphed_sequential_ms``: paratriton's ``GraphedSequential`` (one captured step replayed T times);
* ``compiled_ms`` (``--compile``): the stock diffusers loop with ``torch.compile(model, mode="reduce-overhead")``,
  LeRobot's own speed option;
* ``parallel_ms``: ``paratriton.denoise(..., method="taa", cuda_graph=True)`` per chunk (host work included:
  coefficients, noise draws, graph replays), its ``iterations``, and ``rms_to_sequential``;
* ``call_1_ms`` / ``call_window_ms``: one graphed model call at batch 1 and at the window's ``T`` rows, and
  ``non_model_ms_per_iter = parallel_ms / iterations - call_window_ms``;
* ``--variants``: more TAA option sets timed beside the default in the same process (``variants`` in the JSON; the
  row's own figures are the first variant's), e.g. ``--variants '{}' '{"history": 4}' '{"history": 4, "tol": 0.01}'``.

``sequential_ms`` is the fastest of the sequential baselines and ``speedup = sequential_ms / parallel_ms``. Random
weights: the iteration counts are those of a random network (reported); the trained policy's rows give the
iteration counts of a real one (``--trained``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import paratriton  # noqa: E402
from paratriton.policies.unet1d import ConditionalUnet1D  # noqa: E402

# name: (down_dims, action dim, global cond width, horizon, dtype, sampler, steps)
SHAPES = {
    "image": ((512, 1024, 2048), 10, 1042),  # 277M: Diffusion Policy's image UNet
    "lowdim": ((256, 512, 1024), 2, 40),  # 63.6M: its low-dim UNet
}
CONFIGS = {
    "image_h16_fp32_ddpm100": ("image", 16, torch.float32, "ddpm", 100),
    "image_h16_bf16_ddpm100": ("image", 16, torch.bfloat16, "ddpm", 100),
    "image_h64_fp32_ddpm100": ("image", 64, torch.float32, "ddpm", 100),
    "lowdim_h16_fp32_ddpm100": ("lowdim", 16, torch.float32, "ddpm", 100),
    "lowdim_h16_fp32_ddim16": ("lowdim", 16, torch.float32, "ddim", 16),
    "image_h16_fp32_ddim16": ("image", 16, torch.float32, "ddim", 16),
}


def make_scheduler(kind: str):
    from diffusers import DDIMScheduler, DDPMScheduler

    cfg = dict(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True, prediction_type="epsilon")
    return DDPMScheduler(**cfg) if kind == "ddpm" else DDIMScheduler(set_alpha_to_one=True, steps_offset=0, **cfg)


def timed(fn, reps: int, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in ms (synchronised; host work included)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def graphed_call_ms(model, x, t, cond, reps: int = 50) -> float:
    """One model call of ``x``'s rows, captured as a CUDA graph, replay time in ms (device events)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.no_grad():
        for _ in range(2):
            model(x, t, global_cond=cond)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g), torch.no_grad():
        model(x, t, global_cond=cond)
    return timed(g.replay, reps)


class GraphedStockLoop:
    """The stock clipped DDPM/DDIM loop (diffusers 0.42.1's arithmetic) as one CUDA graph of all T steps."""

    def __init__(self, model, sched, x_T, cond, noise):
        s = copy.deepcopy(sched)
        T = noise.shape[0]
        s.set_timesteps(T)
        ac = s.alphas_cumprod.to(torch.float64)
        self.model, self.cond = model, cond
        self.x = x_T.clone()
        self.noise = noise.clone()  # [T, B, H, A] in loop order
        self.ts = [int(t) for t in s.timesteps]
        ratio = s.config.num_train_timesteps // T
        self.coef = []
        for k, t in enumerate(self.ts):
            prev = t - ratio
            ab_t = float(ac[t])
            if type(s).__name__ == "DDPMScheduler":
                ab_prev = float(ac[prev]) if prev >= 0 else 1.0
                beta = 1 - ab_t / ab_prev
                c0 = ab_prev**0.5 * beta / (1 - ab_t)
                cs = (1 - beta) ** 0.5 * (1 - ab_prev) / (1 - ab_t)
                std = (max((1 - ab_prev) / (1 - ab_t) * beta, 1e-20)) ** 0.5 if t > 0 else 0.0
                self.coef.append(("ddpm", ab_t, c0, cs, std))
            else:
                ab_prev = float(ac[prev]) if prev >= 0 else float(s.final_alpha_cumprod)
                self.coef.append(("ddim", ab_t, ab_prev**0.5, (1 - ab_prev) ** 0.5, 0.0))
        self.t_dev = [torch.tensor(t, device=x_T.device) for t in self.ts]
        self.x_T = x_T.clone()
        self.graph = None

    def _loop(self):
        x = self.x
        x.copy_(self.x_T)
        for k, (kind, ab_t, u, v, std) in enumerate(self.coef):
            eps = self.model(x, self.t_dev[k], global_cond=self.cond)
            x0 = ((x - (1 - ab_t) ** 0.5 * eps) / ab_t**0.5).clamp(-1, 1)
            new = u * x0 + v * x if kind == "ddpm" else u * x0 + v * eps
            if std:
                new = new + std * self.noise[k]
            x.copy_(new)
        return x

    def capture(self):
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s), torch.no_grad():
            self._loop()
        torch.cuda.current_stream().wait_stream(s)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self._loop()

    def run(self):
        self.graph.replay()
        return self.x


def stock_loop(model, sched, x_T, T, cond, generator):
    s = copy.deepcopy(sched)
    s.set_timesteps(T)
    x = x_T
    with torch.no_grad():
        for t in s.timesteps:
            x = s.step(model(x, t, global_cond=cond), t, x, generator=generator).prev_sample
    return x


def bench(name, model, sched, T, horizon, A, G, dtype, args, iters_override=None) -> dict:
    dev = torch.device("cuda")
    B = 1
    g = torch.Generator(dev).manual_seed(0)
    cond = torch.randn(B, G, device=dev, dtype=dtype, generator=g)
    x_T = torch.randn(B, horizon, A, device=dev, dtype=dtype, generator=g)
    row = {"config": name, "device": torch.cuda.get_device_name(), "dtype": str(dtype), "steps": T, "batch": B}
    # PyTorch's defaults, as users run them (cuDNN convolutions may use TF32; matmuls do not)
    row["cudnn_tf32"], row["matmul_tf32"] = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    row["params_M"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 1)
    t1 = torch.tensor([10], device=dev)
    row["call_1_ms"] = graphed_call_ms(model, x_T, t1, cond)
    xw, tw = x_T.repeat(T, 1, 1), torch.arange(T, device=dev)
    row["call_window_ms"] = graphed_call_ms(model, xw, tw, cond.repeat(T, 1))

    # sequential baselines, with the noise the stock loop draws from generator seed 1
    def gen():
        return torch.Generator(dev).manual_seed(1)

    seq = paratriton.denoise(
        model, sched, x_T, T, generator=gen(), model_kwargs={"global_cond": cond}, method="sequential",
        return_result=True,
    )  # fmt: skip
    stock = stock_loop(model, sched, x_T, T, cond, gen())
    row["sequential_vs_stock_rms"] = (seq.sample.float() - stock.float()).square().mean().sqrt().item()
    noise = torch.zeros(T, *x_T.shape, device=dev, dtype=dtype)
    if type(sched).__name__ == "DDPMScheduler":  # the stock loop's draws, in loop order (t > 0)
        gg = gen()
        for k in range(T - 1):
            noise[k] = torch.randn(x_T.shape, generator=gg, device=dev, dtype=dtype)
    loop = GraphedStockLoop(model, sched, x_T, cond, noise)
    loop.capture()
    row["graphed_loop_vs_stock_rms"] = (loop.run().float() - stock.float()).square().mean().sqrt().item()
    row["graphed_loop_ms"] = timed(loop.run, args.reps)
    del loop

    def run_seq():
        return paratriton.denoise(
            model, sched, x_T, T, generator=gen(), model_kwargs={"global_cond": cond}, method="sequential",
            cuda_graph=True,
        )  # fmt: skip

    row["graphed_sequential_ms"] = timed(run_seq, args.reps)
    if args.compile:
        compiled = torch.compile(model, mode="reduce-overhead")
        t0 = time.perf_counter()
        stock_loop(compiled, sched, x_T, T, cond, gen())
        row["compile_s"] = time.perf_counter() - t0
        row["compiled_ms"] = timed(lambda: stock_loop(compiled, sched, x_T, T, cond, gen()), max(3, args.reps // 2))
        del compiled
    seq_ms = min(v for k, v in row.items() if k in ("graphed_loop_ms", "graphed_sequential_ms", "compiled_ms"))
    row["sequential_ms"] = seq_ms

    row["variants"] = []
    for k, extra in enumerate(args.variants):
        opts = {"method": "taa", "cuda_graph": True, "model_kwargs": {"global_cond": cond}, "return_result": True}
        opts.update(extra)
        if iters_override:
            opts["max_iters"] = iters_override
        t0 = time.perf_counter()
        res = paratriton.denoise(model, sched, x_T, T, generator=gen(), **opts)
        torch.cuda.synchronize()
        v = {"options": extra, "parallel_first_call_ms": (time.perf_counter() - t0) * 1e3}
        v["parallel_ms"] = timed(lambda: paratriton.denoise(model, sched, x_T, T, generator=gen(), **opts), args.reps)
        v["iterations"] = res.iterations
        v["converged"] = res.converged
        v["precision_limited"] = res.precision_limited
        v["probe_calls"] = res.probe_calls
        v["rms_to_sequential"] = (res.sample.float() - seq.sample.float()).square().mean().sqrt().item()
        v["speedup"] = seq_ms / v["parallel_ms"]
        v["non_model_ms_per_iter"] = v["parallel_ms"] / max(res.iterations, 1) - row["call_window_ms"]
        v["ceiling_speedup"] = seq_ms / (res.iterations * row["call_window_ms"])
        row["variants"].append(v)
        if k == 0:  # the first variant's figures are the row's (the JSON fields the issue names)
            row.update({key: val for key, val in v.items() if key != "options"})
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS), help=f"of {list(CONFIGS)}")
    ap.add_argument("--trained", action="store_true", help="also the shipped trained policy (DDPM-100 and DDIM-16)")
    ap.add_argument("--compile", action="store_true", help="also torch.compile(mode='reduce-overhead') of the loop")
    ap.add_argument("--compile-configs", nargs="*", default=["image_h16_fp32_ddpm100"])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--variants",
        nargs="*",
        type=json.loads,
        default=[{}],
        help="TAA options per variant, one JSON object each (default: one variant, {})",
    )
    args = ap.parse_args()
    rows = []
    for name in args.configs:
        shape, horizon, dtype, kind, T = CONFIGS[name]
        dims, A, G = SHAPES[shape]
        torch.manual_seed(0)
        model = ConditionalUnet1D(A, G, diffusion_step_embed_dim=128, down_dims=dims).to("cuda", dtype).eval()
        a = copy.copy(args)
        a.compile = args.compile and name in args.compile_configs
        row = bench(name, model, make_scheduler(kind), T, horizon, A, G, dtype, a)
        rows.append(row)
        print(json.dumps(row), flush=True)
        del model
        torch.cuda.empty_cache()
    if args.trained:
        from paratriton.models.policy import load_policy

        pol = load_policy(device="cuda")
        for kind, T in (("ddpm", 100), ("ddim", 16)):
            sched = pol.noise_scheduler if kind == "ddpm" else make_scheduler("ddim")
            G = pol.model.global_cond_dim
            row = bench(f"trained_{kind}{T}", pol.model, sched, T, pol.horizon, pol.action_dim, G, torch.float32, args)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{'config':28s} {'params':>7s} {'seq ms':>8s} {'par ms':>8s} {'iters':>5s} {'speedup':>7s} "
          f"{'ceiling':>7s} {'non-model/it':>12s} {'rms':>8s}")  # fmt: skip
    for r in rows:
        print(
            f"{r['config']:28s} {r['params_M']:7.1f} {r['sequential_ms']:8.1f} {r['parallel_ms']:8.1f} "
            f"{r['iterations']:5d} {r['speedup']:7.2f} {r['ceiling_speedup']:7.2f} {r['non_model_ms_per_iter']:12.3f} "
            f"{r['rms_to_sequential']:8.1e}"
        )
        for v in r["variants"][1:]:
            print(f"  {json.dumps(v['options']):26s} {'':>16s} {v['parallel_ms']:8.1f} {v['iterations']:5d} "
                  f"{v['speedup']:7.2f} {v['ceiling_speedup']:7.2f}")  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
