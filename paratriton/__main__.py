"""``python -m paratriton sample``: the shipped digits model (or the analytic Gaussian mixture) sampled with the
sequential sampler and with parallel solvers; saves an image grid and a convergence plot (PNG) and prints a table
of iterations, NFE, wall time and PSNR vs the sequential sample."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch
from PIL import Image, ImageDraw, ImageFont

# ---------------------------------------------------------------------------------------------------------------
# the job
# ---------------------------------------------------------------------------------------------------------------


def _table(rows: list[dict]) -> str:
    cols = list(rows[0])
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    line = lambda r: "  ".join(str(r[c]).rjust(width[c]) for c in cols)  # noqa: E731
    return "\n".join([line({c: c for c in cols}), "  ".join("-" * width[c] for c in cols), *map(line, rows)])


def psnr(x: torch.Tensor, ref: torch.Tensor, peak_to_peak: float = 2.0) -> float:
    """PSNR in dB of ``x`` vs ``ref`` (images in [-1, 1]: clamped, peak-to-peak 2)."""
    mse = (x.double().clamp(-1, 1) - ref.double().clamp(-1, 1)).square().mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(peak_to_peak**2 / mse)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _method_options(method: str, args: argparse.Namespace) -> tuple[str, dict]:
    """'taa', 'taa:h=3', 'fp', 'fp:k=1', 'picard', 'aa' -> (solver method, options)."""
    name, _, rest = method.partition(":")
    opts: dict = {"tol_abs": args.tol, "tol_rel": args.tol}
    if args.window:
        opts["window"] = args.window
    if name in ("taa", "aa"):
        opts["history"] = args.history
    for kv in filter(None, rest.split(",")):
        k, _, v = kv.partition("=")
        opts[{"h": "history", "k": "order", "w": "window", "it": "max_iters"}.get(k, k)] = int(v)
    if name in ("fp", "picard", "aa") and args.max_iters_baselines and "max_iters" not in opts:
        opts["max_iters"] = args.max_iters_baselines
    return name, opts


def build_problem(args: argparse.Namespace, device: torch.device):
    """-> (model, coeffs, x_T, noise, description, is_image)"""
    import paratriton

    g = torch.Generator().manual_seed(args.seed)
    eta = 1.0 if args.sampler == "ddpm" else args.eta
    if args.model == "gmm":
        from .testing import GaussianMixture
        from .testing.gaussian_mixture import default_schedule

        coeffs = default_schedule(args.steps, eta=eta)
        gm = GaussianMixture.random((4, 8, 8), num_components=6, seed=args.seed).to(device)
        model = gm.denoiser(coeffs)
        x_T = torch.randn(args.batch, *gm.sample_shape, generator=g, dtype=torch.float64).to(device)
        noise = torch.randn(args.steps, *x_T.shape, generator=g, dtype=torch.float64).to(device)
        return model, coeffs, x_T, noise, f"Gaussian mixture {tuple(gm.sample_shape)}", False
    from .models import default_scheduler, load_default

    pipe = load_default(device=device, dtype=torch.float32)
    kind = "ddpm" if args.sampler == "ddpm" else "ddim"
    sch = default_scheduler(kind)
    coeffs = paratriton.coefficients_from_scheduler(sch, args.steps, **({"eta": eta} if kind == "ddim" else {}))
    labels = args.labels if args.labels else [(3 + 7 * b) % pipe.num_classes for b in range(args.batch)]
    if len(labels) != args.batch:
        labels = [labels[b % len(labels)] for b in range(args.batch)]
    guidance = pipe.default_guidance_scale if args.guidance is None else args.guidance
    model = pipe.denoiser(coeffs, labels, guidance)
    x_T, noise = pipe.problem(args.batch, args.steps, g, device=device)
    desc = (f"default digits model (UNet2DModel, {sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.1f}M params), "
            f"classes {labels}, guidance {guidance:g}")
    return model, coeffs, x_T, noise, desc, True


def sample(args: argparse.Namespace) -> tuple[list[dict], dict]:
    """Run every method; return the table rows and what the figures need."""
    import paratriton

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    model, coeffs, x_T, noise, desc, is_image = build_problem(args, device)
    if args.warmup:  # one call outside the timings (first-call allocations, kernel selection)
        model(x_T, torch.zeros(x_T.shape[0], dtype=torch.long, device=device))
    rows, samples, residual_curves, psnr_curves = [], {}, {}, {}
    _sync(device)
    t0 = time.perf_counter()
    ref_res = paratriton.solve(model, coeffs, x_T, noise, method="sequential")
    _sync(device)
    wall = time.perf_counter() - t0
    ref = ref_res.sample
    samples["sequential"] = ref
    rows.append({"method": "sequential", "iterations": coeffs.num_steps, "NFE/sample": ref_res.nfe,
                 "wall [s]": f"{wall:.2f}", "PSNR vs seq [dB]": "inf", "iters to 40 dB": coeffs.num_steps,
                 "converged": "yes"})
    for method in args.methods:
        name, opts = _method_options(method, args)
        curve: list[float] = []
        opts["callback"] = lambda info, curve=curve: curve.append(psnr(info.trajectory[0], ref))
        _sync(device)
        t0 = time.perf_counter()
        res = paratriton.solve(model, coeffs, x_T, noise, method=name, **opts)
        _sync(device)
        wall = time.perf_counter() - t0
        label = method if method != name or name not in ("taa", "aa") else f"{name} (h={args.history})"
        samples[label] = res.sample
        res_curve = [float(torch.nan_to_num(r, nan=-1.0).max()) for r in res.residuals]
        residual_curves[label] = [(k + 1, v) for k, v in enumerate(res_curve)]
        psnr_curves[label] = [(k + 1, min(v, 150.0)) for k, v in enumerate(curve)]
        final = psnr(res.sample, ref)
        it40 = next((k + 1 for k, v in enumerate(curve) if v >= 40.0), None)
        rows.append({"method": label, "iterations": res.iterations, "NFE/sample": res.nfe, "wall [s]": f"{wall:.2f}",
                     "PSNR vs seq [dB]": "inf" if math.isinf(final) else f"{final:.1f}",
                     "iters to 40 dB": "-" if it40 is None else it40,
                     "converged": "yes" if res.converged else f"no (max {opts.get('max_iters')} iters)"})
    figs = {"samples": samples, "residual": residual_curves, "psnr": psnr_curves, "desc": desc,
            "is_image": is_image, "device": device}
    return rows, figs


def write_figures(figs: dict, out_dir: str, title: str, tol: float) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    conv = os.path.join(out_dir, "convergence.png")
    convergence_figure(figs["residual"], figs["psnr"], conv, title, tol)
    paths.append(conv)
    if figs["is_image"]:
        rows = {k: ((v.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0].cpu().numpy()
                for k, v in figs["samples"].items()}
        grid = os.path.join(out_dir, "samples.png")
        image_grid(rows, grid)
        paths.append(grid)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m paratriton", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample", help="sample with the sequential sampler and parallel solvers; table and PNGs",
                       description=__doc__)
    s.add_argument("--model", choices=["default", "gmm"], default="default",
                   help="default: the shipped digits model; gmm: the analytic Gaussian mixture")
    s.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim", help="ddpm = DDPM ancestral (eta 1)")
    s.add_argument("--steps", type=int, default=50, help="T, the number of sampler steps")
    s.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic DDIM)")
    s.add_argument("--batch", type=int, default=4, help="number of samples")
    s.add_argument("--labels", type=int, nargs="+", default=None, help="class labels (default model; default 3 0 7 4)")
    s.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: shipped)")
    s.add_argument("--tol", type=float, default=1e-3, help="tol_abs = tol_rel of the parallel solvers")
    s.add_argument("--window", type=int, default=None, help="window (default: all T steps)")
    s.add_argument("--history", type=int, default=2, help="Anderson history of taa/aa")
    s.add_argument("--methods", nargs="+", default=["taa", "fp", "picard"],
                   help="parallel methods; options after a colon, e.g. taa:h=3 fp:k=1 picard:it=20")
    s.add_argument("--max-iters-baselines", type=int, default=None,
                   help="cap the iterations of fp/picard/aa (default: run them to convergence)")
    s.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    s.add_argument("--out", default="outputs", help="folder for samples.png and convergence.png")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-warmup", dest="warmup", action="store_false")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rows, figs = sample(args)
    title = f"{args.model}, {args.sampler.upper()}-{args.steps}"
    paths = write_figures(figs, args.out, title, args.tol)
    print(f"{figs['desc']}")
    print(f"{args.sampler.upper()} {args.steps} steps (eta {1.0 if args.sampler == 'ddpm' else args.eta:g}), "
          f"batch {args.batch}, tol {args.tol:g}, window {args.window or args.steps}, device {figs['device']}")
    print(_table(rows))
    print(f"wrote {', '.join(paths)} ({time.perf_counter() - t0:.1f}s in all)")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# drawing with PIL (matplotlib is not a dependency)
# ---------------------------------------------------------------------------------------------------------------
COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
          (227, 119, 194), (127, 127, 127)]


def _font():
    try:
        return ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.ceil(lo / step) * step
    return [start + k * step for k in range(int((hi - start) / step + 1e-9) + 1)]


def line_panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], series: dict[str, list[tuple[float, float]]],
               title: str, xlabel: str, ylabel: str, logy: bool = False, hline: float | None = None) -> None:
    """Draw ``series`` (name -> [(x, y)]) into ``box = (x0, y0, x1, y1)`` of an image."""
    font = _font()
    x0, y0, x1, y1 = box
    L, R, Tm, Bm = 62, 10, 24, 36
    px0, py0, px1, py1 = x0 + L, y0 + Tm, x1 - R, y1 - Bm
    f = (lambda v: math.log10(v)) if logy else (lambda v: v)  # noqa: E731
    pts = [(x, f(y)) for s in series.values() for x, y in s if y is not None and math.isfinite(y) and (y > 0 or not logy)]
    if hline is not None:
        pts.append((pts[0][0] if pts else 0, f(hline)))
    if not pts:
        pts = [(0, 0), (1, 1)]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    xlo, xhi = min(xs + [0]), max(xs + [1])
    ylo, yhi = min(ys), max(ys)
    if logy:
        ylo, yhi = math.floor(ylo), math.ceil(yhi)
    if yhi - ylo < 1e-9:
        ylo, yhi = ylo - 1, yhi + 1
    pad = 0 if logy else 0.05 * (yhi - ylo)
    ylo, yhi = ylo - pad, yhi + pad
    sx = lambda v: px0 + (v - xlo) / (xhi - xlo) * (px1 - px0)  # noqa: E731
    sy = lambda v: py1 - (v - ylo) / (yhi - ylo) * (py1 - py0)  # noqa: E731
    draw.rectangle([px0, py0, px1, py1], outline=(0, 0, 0))
    draw.text((px0, y0 + 4), title, fill=(0, 0, 0), font=font)
    draw.text(((px0 + px1) // 2 - 3 * len(xlabel), py1 + 20), xlabel, fill=(0, 0, 0), font=font)
    draw.text((x0 + 2, y0 + 4), ylabel, fill=(0, 0, 0), font=font)
    for t in _nice_ticks(xlo, xhi, 6):
        draw.line([sx(t), py1, sx(t), py1 + 4], fill=(0, 0, 0))
        draw.text((sx(t) - 6, py1 + 6), f"{t:g}", fill=(0, 0, 0), font=font)
    yt = list(range(int(ylo), int(yhi) + 1)) if logy else _nice_ticks(ylo, yhi, 5)
    for t in yt:
        if ylo - 1e-9 <= t <= yhi + 1e-9:
            draw.line([px0 - 4, sy(t), px1, sy(t)], fill=(225, 225, 225))
            draw.line([px0 - 4, sy(t), px0, sy(t)], fill=(0, 0, 0))
            draw.text((x0 + 4, sy(t) - 7), f"1e{int(t)}" if logy else f"{t:g}", fill=(0, 0, 0), font=font)
    if hline is not None:
        yy = sy(f(hline))
        for xx in range(int(px0), int(px1), 8):
            draw.line([xx, yy, xx + 4, yy], fill=(120, 120, 120))
    for k, (name, s) in enumerate(series.items()):
        col = COLORS[k % len(COLORS)]
        p = [(sx(x), sy(min(max(f(y), ylo), yhi))) for x, y in s
             if y is not None and math.isfinite(f(y) if (y > 0 or not logy) else float("nan"))]
        if len(p) > 1:
            draw.line(p, fill=col, width=2)
        for q in p:
            draw.ellipse([q[0] - 2, q[1] - 2, q[0] + 2, q[1] + 2], fill=col)
        draw.line([px1 - 110, py0 + 10 + 14 * k, px1 - 92, py0 + 10 + 14 * k], fill=col, width=2)
        draw.text((px1 - 88, py0 + 3 + 14 * k), name, fill=(0, 0, 0), font=font)


def convergence_figure(residual: dict, psnr: dict, path: str, title: str, tol: float | None = None) -> None:
    img = Image.new("RGB", (1000, 380), (255, 255, 255))
    d = ImageDraw.Draw(img)
    line_panel(d, (0, 0, 500, 380), residual, f"max step residual (RMS) - {title}", "iteration", "residual",
               logy=True, hline=tol)
    line_panel(d, (500, 0, 1000, 380), psnr, "PSNR of x_0 vs the sequential sample", "iteration", "dB")
    img.save(path)


def image_grid(rows: dict[str, "object"], path: str, scale: int = 3) -> None:
    """rows: name -> uint8 array-like ``[B, H, W]``; one labelled row per name."""
    font = _font()
    names = list(rows)
    B, H, W = rows[names[0]].shape
    lw = 110
    img = Image.new("L", (lw + B * (W * scale + 4) + 4, len(names) * (H * scale + 4) + 4), 255)
    d = ImageDraw.Draw(img)
    for r, name in enumerate(names):
        y = 4 + r * (H * scale + 4)
        d.text((4, y + H * scale // 2 - 7), name, fill=0, font=font)
        for b in range(B):
            tile = Image.fromarray(rows[name][b]).resize((W * scale, H * scale), Image.NEAREST)
            img.paste(tile, (lw + 4 + b * (W * scale + 4), y))
    img.save(path)


if __name__ == "__main__":
    sys.exit(main())
