"""Roofline benchmark of the first generation of fused TAA kernels (issue 4), now quarantined in
``paratriton.ops.legacy``: no solver path runs them (the engine's window ops are timed by bench_window_ops.py); this
script keeps their measurements reproducible and goes with them. Needs a CUDA device.

    python3 benchmarks/bench_kernels.py [--sections check,sweep,grid,profile] [--json out.json]

Per configuration (window W, sample size D, history m, one trajectory, float64 state, fp16 model output, fp64
noise) it times one solver iteration without the model call:
  fused   : the legacy kernels of taa_residual and taa_update (``LEGACY``, what those ops ran on CUDA) and the
            registered masked_lstsq
  graph   : the same three ops replayed from a CUDA graph (no launch / dispatch overhead)
  eager   : the plain-torch reference iteration (step_residual, order_k_residual, history push,
            stacked differences, anderson_gram, masked_lstsq, anderson_update)
  compiled: torch.compile of that reference
and reports the minimum traffic (one read of window state, model output, noise and the 2m history slabs, one write
of the new state and the two new history slabs) over the fused time as a share of the measured copy bandwidth.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import paratriton.ops  # noqa: E402,F401  (registers torch.ops.paratriton.*)
import paratriton.ops.legacy  # noqa: E402,F401  (registers torch.ops.paratriton.anderson_gram / anderson_update)
from paratriton.ops.legacy import residual_pass as _rp  # noqa: E402
from paratriton.ops.legacy.anderson_update.fused import ring_update_triton  # noqa: E402
from paratriton.ops.legacy.anderson_update.naive import anderson_update  # noqa: E402
from paratriton.ops.masked_lstsq.naive import masked_lstsq  # noqa: E402
from paratriton.ops.order_k_residual.naive import order_k_residual  # noqa: E402
from paratriton.ops.step_residual.naive import step_residual  # noqa: E402
from paratriton.ops.taa.naive import anderson_gram  # noqa: E402


def _legacy_step_residual(x, mo, xi, a, b, c, thr):
    out = _rp.residual_pass(x, mo, xi, a, b, c, thr, write_r=True)
    return out["r"], out["rms"], out["top"]


def _legacy_order_k_residual(r, a, order, unit_weights=False):
    return _rp.residual_pass(
        r, None, None, a, None, None, None, order=order, unit_weights=unit_weights, write_R=True, from_r=True
    )["R"]


def _legacy_taa_residual(x, mo, xi, a, b, c, thr, hist_R, hist_Y, slot, order, unit_weights=False):
    o = _rp.residual_pass(
        x, mo, xi, a, b, c, thr, order=order, unit_weights=unit_weights, hist_R=hist_R, hist_Y=hist_Y, slot=slot
    )
    return o["rms"], o["top"], o["G"], o["h"]


# what torch.ops.paratriton.<op> ran on CUDA tensors before the quarantine (the ops run their references there now)
LEGACY = SimpleNamespace(
    step_residual=_legacy_step_residual,
    order_k_residual=_legacy_order_k_residual,
    taa_residual=_legacy_taa_residual,
    taa_update=ring_update_triton,
    masked_lstsq=torch.ops.paratriton.masked_lstsq,
    anderson_gram=torch.ops.paratriton.anderson_gram,
    anderson_update=torch.ops.paratriton.anderson_update,
)

DIT_XL2_B200_MS = 133.12  # /work/shared/design/device-baselines.md: DiT-XL/2 batch 200, CUDA graph, H200


def bench(fn, graph: bool = False) -> float:
    """Median milliseconds (triton.testing.do_bench / do_bench_cudagraph)."""
    import triton.testing as tt

    if graph:
        return tt.do_bench_cudagraph(fn, rep=100, return_mode="median")
    return tt.do_bench(fn, warmup=25, rep=100, return_mode="median")


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s (bytes read + bytes written)."""
    n = 1 << 28  # 2 GiB of float64 per buffer
    src = torch.randn(n // 8, device="cuda", dtype=torch.float64).repeat(8)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    return 2 * n * 8 / (ms * 1e-3)


class Problem:
    """One window of a TAA iteration: states, model output, noise, coefficients and both history layouts."""

    def __init__(self, W: int, D: int, m: int, B: int = 1, model_dtype=torch.float16, seed: int = 0):
        g = torch.Generator(device="cuda").manual_seed(seed)
        dev, dt = "cuda", torch.float64
        self.W, self.D, self.m, self.B, self.M = W, D, m, B, m + 1
        rn = lambda *s, dtype=dt: torch.randn(*s, generator=g, device=dev, dtype=dtype)  # noqa: E731
        self.x = rn(W + 1, B, D)
        self.mo = rn(W, B, D, dtype=model_dtype)
        self.xi = rn(W, B, D)
        self.a = 1 + 0.05 * torch.rand(W, generator=g, device=dev, dtype=dt)
        self.b = -0.1 * torch.rand(W, generator=g, device=dev, dtype=dt)
        self.c = 0.1 * torch.rand(W, generator=g, device=dev, dtype=dt)
        self.thr = torch.full((W,), 1e-3, device=dev, dtype=dt)
        self.hist_R = rn(self.M, W, B, D)
        self.hist_Y = rn(self.M, W, B, D)
        self.hist_x = rn(self.M, W, B, D)
        self.num_cols = torch.full((W,), m, device=dev, dtype=torch.long)
        self.num_cols[:1] = 0  # j* itself takes the plain step
        self.slot = 1 % self.M

    def min_bytes(self) -> int:
        n, B, D, m = self.W, self.B, self.D, self.m
        e = n * B * D
        reads = (n + 1) * B * D * 8 + e * self.mo.element_size() + e * 8 + 2 * m * e * 8
        writes = e * 8 + 2 * e * 8
        return reads + writes

    # -- the two implementations -----------------------------------------------------------------------------
    def fused(self) -> None:
        ops = LEGACY
        rms, top, G, h = ops.taa_residual(
            self.x,
            self.mo,
            self.xi,
            self.a,
            self.b,
            self.c,
            self.thr,
            self.hist_R,
            self.hist_Y,
            self.slot,
            self.W,
            False,
        )
        gamma = ops.masked_lstsq(G, h, self.num_cols, 1e-3)
        ops.taa_update(self.x[:-1], self.hist_Y, gamma, self.slot)

    def fused_direct(self) -> None:
        """The same kernels launched without the torch.library dispatch (measures its host overhead)."""
        from paratriton.ops.masked_lstsq.fused import masked_lstsq_triton

        o = _rp.residual_pass(
            self.x,
            self.mo,
            self.xi,
            self.a,
            self.b,
            self.c,
            self.thr,
            order=self.W,
            hist_R=self.hist_R,
            hist_Y=self.hist_Y,
            slot=self.slot,
        )
        gamma = masked_lstsq_triton(o["G"], o["h"], self.num_cols, 1e-3)
        ring_update_triton(self.x[:-1], self.hist_Y, gamma, self.slot)

    def reference(self) -> None:
        reference_iteration(
            self.x,
            self.mo,
            self.xi,
            self.a,
            self.b,
            self.c,
            self.thr,
            self.hist_x,
            self.hist_R,
            self.num_cols,
            self.slot,
        )


def reference_iteration(x, mo, xi, a, b, c, thr, hist_x, hist_R, num_cols, slot: int) -> None:
    """The per-iteration solver work of the former reference TAA iteration (minus bookkeeping)."""
    M, n = hist_x.shape[0], x.shape[0] - 1
    r, rms, top = step_residual(x, mo, xi, a, b, c, thr)
    R = order_k_residual(r, a, n)
    hist_x[slot] = x[:-1]
    hist_R[slot] = R
    newest = [(slot - j) % M for j in range(M)]
    dX = torch.stack([hist_x[newest[j]] - hist_x[newest[j + 1]] for j in range(M - 1)])
    dR = torch.stack([hist_R[newest[j]] - hist_R[newest[j + 1]] for j in range(M - 1)])
    G, h = anderson_gram(dR, R)
    gamma = masked_lstsq(G, h, num_cols)
    x[:-1].copy_(anderson_update(x[:-1], R, dX, dR, gamma))


# -- sections --------------------------------------------------------------------------------------------------
def check(log: list) -> None:
    """The legacy CUDA kernels (``LEGACY``) against the CPU references, on fresh random inputs."""
    from paratriton.ops.taa import naive as taa

    torch.manual_seed(1)
    rows = []

    def rel(u, v):
        u, v = u.double().cpu(), v.double().cpu()
        return ((u - v).norm() / v.norm().clamp_min(1e-300)).item()

    for state_dt, mdt, n, B, D, m, order in [
        (torch.float64, torch.float16, 7, 2, 1000, 2, 7),
        (torch.float64, torch.bfloat16, 33, 1, 4099, 5, 33),
        (torch.float32, torch.float32, 10, 3, 777, 3, 4),
        (torch.float64, torch.float32, 1, 1, 50, 1, 1),
    ]:
        x = torch.randn(n + 1, B, D, dtype=state_dt)
        mo = torch.randn(n, B, D).to(mdt)
        xi = torch.randn(n, B, D, dtype=state_dt)
        a = 1 + 0.1 * torch.rand(n, dtype=torch.float64)
        bb, c = torch.randn(n, dtype=torch.float64), torch.rand(n, dtype=torch.float64)
        thr = torch.rand(n, dtype=torch.float64)
        M = m + 1
        hR, hY = torch.randn(M, n, B, D, dtype=state_dt), torch.randn(M, n, B, D, dtype=state_dt)
        cu = lambda t: t.cuda() if torch.is_tensor(t) else t  # noqa: E731
        args = (x, mo, xi, a, bb, c, thr)
        ref = step_residual(*args)
        got = LEGACY.step_residual(*map(cu, args))
        rows.append(("step_residual r", rel(got[0], ref[0])))
        rows.append(("step_residual rms", rel(got[1], ref[1])))
        rows.append(("step_residual top==", float(got[2].item() == ref[2].item())))
        for unit in (False, True):
            R = order_k_residual(ref[0], a, order, unit)
            Rg = LEGACY.order_k_residual(cu(ref[0]), cu(a), order, unit)
            rows.append((f"order_k k={order} unit={unit}", rel(Rg, R)))
        hR1, hY1 = hR.clone(), hY.clone()
        out_ref = taa.taa_residual(*args, hR1, hY1, 1 % M, order, False)
        hR2, hY2 = cu(hR), cu(hY)
        out = LEGACY.taa_residual(*map(cu, args), hR2, hY2, 1 % M, order, False)
        rows.append(("taa_residual G", rel(out[2], out_ref[2])))
        rows.append(("taa_residual h", rel(out[3], out_ref[3])))
        rows.append(("taa_residual hist_R", rel(hR2, hR1)))
        rows.append(("taa_residual hist_Y", rel(hY2, hY1)))
        nc = torch.randint(0, m + 1, (n,))
        gam = masked_lstsq(out_ref[2], out_ref[3], nc)
        gam_g = LEGACY.masked_lstsq(cu(out_ref[2]), cu(out_ref[3]), cu(nc), 1e-3, 1e-30)
        rows.append(("masked_lstsq", rel(gam_g, gam)))
        xs = x[:-1].clone()
        taa.taa_update(xs, hY1, gam, 1 % M)
        xg = cu(x[:-1].clone())
        LEGACY.taa_update(xg, cu(hY1), cu(gam), 1 % M)
        rows.append(("taa_update", rel(xg, xs)))
        dX, dR = torch.randn(m, n, B, D, dtype=state_dt), torch.randn(m, n, B, D, dtype=state_dt)
        rows.append(
            (
                "anderson_update",
                rel(
                    LEGACY.anderson_update(*map(cu, (x[:-1], ref[0], dX, dR, gam))),
                    anderson_update(x[:-1], ref[0], dX, dR, gam),
                ),
            )
        )
        G1, h1 = anderson_gram(dR, ref[0])
        G2, h2 = LEGACY.anderson_gram(cu(dR), cu(ref[0]))
        rows.append(("anderson_gram G", rel(G2, G1)))
        rows.append(("anderson_gram h", rel(h2, h1)))
        tag = f"{str(state_dt)[6:]}/{str(mdt)[6:]} n={n} B={B} D={D} m={m} k={order}"
        for name, v in rows:
            log.append({"section": "check", "case": tag, "what": name, "rel_err": v})
            print(f"check {tag:45s} {name:28s} {v:.2e}")
        rows.clear()
    # the whole solver on the GPU, both backends
    import paratriton as pt
    from paratriton.testing import GaussianMixture
    from paratriton.testing.gaussian_mixture import default_schedule

    cf = default_schedule(50, eta=1.0)
    gm = GaussianMixture.random((4, 8, 8), num_components=3, std=0.3, seed=0).to("cuda")
    x_T = torch.randn(2, 4, 8, 8, dtype=torch.float64, device="cuda")
    noise = torch.randn(50, 2, 4, 8, 8, dtype=torch.float64, device="cuda")
    model = gm.denoiser(cf)
    seq = pt.solve(model, cf, x_T, noise, method="sequential")
    for opts in [dict(), dict(window=12, history=4), dict(history=1, order=5)]:
        res = {
            be: pt.solve(
                model,
                cf,
                x_T,
                noise,
                method="taa",
                tol_abs=1e-9,
                tol_rel=1e-9,
                backend=be,
                state_dtype=torch.float64,
                **opts,
            )
            for be in ("reference", "auto")
        }
        err = [(res[be].sample - seq.sample).square().mean().sqrt().item() for be in res]
        line = {
            "section": "check",
            "case": f"solve taa {opts}",
            "iters": [res[be].iterations for be in res],
            "rms_err_vs_sequential": err,
        }
        log.append(line)
        print("check", line)


def sweep(log: list) -> None:
    """Residual-pass tile shapes at the largest window; the fastest becomes the default of the later sections."""
    fused = _rp

    configs = [
        (4, 256, 4, 1),
        (4, 256, 4, 2),
        (4, 256, 4, 3),
        (2, 256, 4, 1),
        (2, 256, 4, 2),
        (2, 128, 2, 1),
        (2, 128, 2, 2),
        (2, 128, 2, 3),
        (4, 128, 4, 2),
        (8, 128, 4, 2),
        (4, 128, 2, 2),
        (2, 512, 8, 2),
    ]
    for m, applies_to in ((2, (1, 2, 3)), (5, (4, 5))):
        p = Problem(100, 262144, m)
        best = None
        for cfg in configs:
            try:
                ms = bench(
                    lambda: fused.residual_pass(
                        p.x,
                        p.mo,
                        p.xi,
                        p.a,
                        p.b,
                        p.c,
                        p.thr,
                        order=p.W,
                        hist_R=p.hist_R,
                        hist_Y=p.hist_Y,
                        slot=p.slot,
                        config=cfg,
                    )
                )
            except Exception as e:  # a config that does not compile is skipped
                print("sweep", m, cfg, "failed:", repr(e)[:200])
                continue
            e = p.W * p.D
            byts = (p.W + 1) * p.D * 8 + e * 2 + e * 8 + m * e * 8 + 2 * e * 8
            log.append({"section": "sweep", "m": m, "cfg": cfg, "ms": ms, "GBps": byts / ms / 1e6})
            print(f"sweep m={m} cfg={cfg} {ms:.3f} ms {byts / ms / 1e6:.0f} GB/s", flush=True)
            if best is None or ms < best[0]:
                best = (ms, cfg)
        # the chosen tiling must give what the default tiling (checked against the CPU reference) gives
        outs = []
        for cfg in (best[1], (4, 256, 4, 1)):
            hR, hY = p.hist_R.clone(), p.hist_Y.clone()
            o = fused.residual_pass(
                p.x, p.mo, p.xi, p.a, p.b, p.c, p.thr, order=p.W, hist_R=hR, hist_Y=hY, slot=p.slot, config=cfg
            )
            outs.append((o["G"], o["h"], o["rms"], hR, hY))
        errs = [((u - v).norm() / v.norm()).item() for u, v in zip(*outs)]
        print("sweep recheck (G, h, rms, hist_R, hist_Y) rel err:", ["%.1e" % e for e in errs])
        log.append({"section": "sweep", "m": m, "recheck_rel_err": errs})
        for mm in applies_to:
            fused.TUNED[mm] = best[1]
        print("sweep: m in", applies_to, "->", best[1])
        log.append({"section": "sweep", "chosen": {str(k): v for k, v in fused.TUNED.items()}})
        p = None  # free the window's buffers before the next size
        torch.cuda.empty_cache()


def grid(
    log: list, bw: float, Ws=(8, 32, 100), Ds=(4096, 16384, 65536, 262144), ms=(2, 3, 5), compiled: bool = True
) -> None:
    ref_c = torch.compile(reference_iteration, dynamic=True) if compiled else None
    print(
        f"{'W':>4} {'D':>7} {'m':>2} | {'fused':>8} {'direct':>8} {'graph':>8} {'eager':>8} {'compile':>8} | "
        f"{'%bw(f)':>6} {'%bw(g)':>6} | {'x eager':>7} {'x comp':>7}"
    )
    for W in Ws:
        for D in Ds:
            for m in ms:
                p = Problem(W, D, m)
                t_f = bench(p.fused)
                t_d = bench(p.fused_direct)
                t_g = bench(p.fused, graph=True)
                t_e = bench(p.reference)
                t_c = float("nan")
                if ref_c is not None:
                    args = (p.x, p.mo, p.xi, p.a, p.b, p.c, p.thr, p.hist_x, p.hist_R, p.num_cols, p.slot)
                    try:
                        ref_c(*args)
                        t_c = bench(lambda: ref_c(*args))
                    except Exception as e:
                        print("compile failed:", repr(e)[:300])
                mb = p.min_bytes()
                row = {
                    "section": "grid",
                    "W": W,
                    "D": D,
                    "m": m,
                    "fused_ms": t_f,
                    "direct_ms": t_d,
                    "graph_ms": t_g,
                    "eager_ms": t_e,
                    "compiled_ms": t_c,
                    "min_bytes": mb,
                    "bw_share_fused": mb / (t_f * 1e-3) / bw,
                    "bw_share_graph": mb / (t_g * 1e-3) / bw,
                }
                log.append(row)
                print(
                    f"{W:4d} {D:7d} {m:2d} | {t_f:8.3f} {t_d:8.3f} {t_g:8.3f} {t_e:8.3f} {t_c:8.3f} | "
                    f"{100 * row['bw_share_fused']:6.1f} {100 * row['bw_share_graph']:6.1f} | "
                    f"{t_e / t_f:7.1f} {t_c / t_f:7.2f}",
                    flush=True,
                )
                p = None  # free the window's buffers before the next size
        torch.cuda.empty_cache()


def profile(log: list) -> None:
    """Per-kernel device times of one fused iteration (torch.profiler)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprof

    for W, D, m in [(100, 262144, 2), (100, 262144, 5), (100, 4096, 2)]:
        p = Problem(W, D, m)
        for _ in range(3):
            p.fused()
        torch.cuda.synchronize()
        with tprof(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                p.fused()
            torch.cuda.synchronize()
        evs = {}
        for e in prof.key_averages():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                evs[e.key] = e.device_time_total / 5 / 1e3
        tot = sum(evs.values())
        print(f"profile W={W} D={D} m={m}: device total {tot:.3f} ms per iteration")
        for k, v in sorted(evs.items(), key=lambda kv: -kv[1])[:8]:
            print(f"    {v:8.3f} ms  {k[:90]}")
        log.append({"section": "profile", "W": W, "D": D, "m": m, "kernels_ms": evs})
        p = None  # free the window's buffers before the next size
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sections", default="check,sweep,profile,grid")
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    import triton

    props = torch.cuda.get_device_properties(0)
    info = {
        "device": props.name,
        "sms": props.multi_processor_count,
        "torch": torch.__version__,
        "triton": triton.__version__,
    }
    bw = copy_bandwidth()
    info["copy_GBps"] = bw / 1e9
    print("device", info, flush=True)
    log: list = [dict(section="info", **info)]
    secs = args.sections.split(",")
    t0 = time.time()
    for name in secs:
        try:
            if name == "check":
                check(log)
            elif name == "sweep":
                sweep(log)
            elif name == "grid":
                grid(log, bw, compiled=not args.no_compile)
            elif name == "profile":
                profile(log)
        except Exception:
            traceback.print_exc()
        print(f"[{name} done at {time.time() - t0:.0f} s]", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(log, f, indent=1, default=str)
    dit = [r for r in log if r.get("section") == "grid" and r["W"] == 100 and r["D"] == 4096]
    for r in dit:
        print(
            f"DiT-XL/2 share (W=100, D=4096, m={r['m']}): fused {r['fused_ms']:.3f} ms = "
            f"{100 * r['fused_ms'] / DIT_XL2_B200_MS:.2f}% of {DIT_XL2_B200_MS} ms; graph {r['graph_ms']:.3f} ms = "
            f"{100 * r['graph_ms'] / DIT_XL2_B200_MS:.2f}%"
        )
    _ = math


if __name__ == "__main__":
    main()
