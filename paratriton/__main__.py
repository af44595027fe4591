"""``python -m paratriton sample`` (or just ``python -m paratriton``): a shipped model (the digits UNet, the DiT crops
model) or the analytic Gaussian mixture sampled with the sequential sampler and with parallel solvers; saves an image
grid and a convergence plot (PNG) and prints a table of iterations, NFE, wall time and PSNR vs the sequential sample.

On a CUDA machine it runs there, every solve captured in CUDA graphs, and the table gives each method's speedup over
the graphed sequential sampler. On a CPU, wall-time gains need a GPU (a parallel iteration evaluates the model on the
whole window at once, which a CPU does no faster than step by step): the table shows what the CPU can show honestly,
the iterations against the steps and the distance to the sequential sample, with one method and one run by default
(``--full`` runs the GPU defaults anywhere)."""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch
from PIL import Image, ImageDraw, ImageFont

from .solvers.registry import REGISTRY, Option
from .solvers.tolerance import Tolerance

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


def build_problem(args: argparse.Namespace, device: torch.device):
    """-> (model, coeffs, x_T, noise, description, is_image)"""
    import paratriton

    g = torch.Generator().manual_seed(args.seed)
    eta = 1.0 if args.sampler == "ddpm" else (args.eta or 0.0)
    name = MODEL_ALIASES.get(args.model, args.model)
    if args.model == "gmm":
        from .testing import GaussianMixture
        from .testing.gaussian_mixture import default_schedule

        coeffs = default_schedule(args.steps, eta=eta)
        gm = GaussianMixture.random((4, 8, 8), num_components=6, seed=args.seed).to(device)
        model = gm.denoiser(coeffs)
        x_T = torch.randn(args.batch, *gm.sample_shape, generator=g, dtype=torch.float64).to(device)
        noise = torch.randn(args.steps, *x_T.shape, generator=g, dtype=torch.float64).to(device)
        return model, coeffs, x_T, noise, f"Gaussian mixture {tuple(gm.sample_shape)}", False
    from .models import default_scheduler, load

    pipe = load(name, device=device, dtype=torch.float32)
    kind = "ddpm" if args.sampler == "ddpm" else "ddim"
    sch = default_scheduler(kind, config=dict(pipe.scheduler.config))
    coeffs = paratriton.coefficients_from_scheduler(sch, args.steps, **({"eta": eta} if kind == "ddim" else {}))
    labels = args.labels if args.labels else [(3 + 7 * b) % pipe.num_classes for b in range(args.batch)]
    if len(labels) != args.batch:
        labels = [labels[b % len(labels)] for b in range(args.batch)]
    args.effective_labels = labels
    guidance = pipe.default_guidance_scale if args.guidance is None else args.guidance
    model = pipe.denoiser(coeffs, labels, guidance)
    x_T, noise = pipe.problem(args.batch, args.steps, g, device=device)
    net = "UNet2DModel" if name == "digits" else "DiTTransformer2DModel"
    desc = (
        f"{name} model ({net}, {sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.1f}M params, "
        f"{'x'.join(map(str, pipe.sample_shape))}), classes {labels}, guidance {guidance:g}"
    )
    return model, coeffs, x_T, noise, desc, True


def _progress(enabled: bool, total: int):
    """A tqdm bar over the runs (stderr; none when disabled or tqdm is missing)."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="sampling", unit="run", leave=False, dynamic_ncols=True, disable=None)


def _graphable(method: str) -> bool:
    """Whether ``method`` has a CUDA-graphed form (the registry's ``cuda_graph`` option; SRDS has none)."""
    from .solvers.registry import method_spec

    return any(o.name == "cuda_graph" for o in method_spec(method).options)


def resolve_device(args: argparse.Namespace) -> torch.device:
    """--device, else CUDA when available, else the CPU."""
    return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def apply_device_defaults(args: argparse.Namespace) -> None:
    """Fill --methods / --repeats / warm-up left unset: the full comparison on CUDA (or with --full), a short honest
    one on a CPU (one parallel method, one run: under a minute on 2 cores)."""
    full = args.full or resolve_device(args).type == "cuda"
    if args.methods is None:
        args.methods = list(DEFAULT_METHODS if full else CPU_METHODS)
    if args.repeats is None:
        args.repeats = 3 if full else 1
    if args.warmup is None:
        args.warmup = full


def sample(args: argparse.Namespace) -> tuple[list[dict], dict]:
    """Run every method; return the table rows and what the figures need."""
    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:  # full-precision convolutions and matmuls on CUDA: the PSNR column compares like with like
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        return _sample(args)
    finally:  # restored: nothing process-wide outlives the job
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


def _sample(args: argparse.Namespace) -> tuple[list[dict], dict]:
    import paratriton

    device = resolve_device(args)
    graphed = device.type == "cuda" and args.cuda_graph
    model, coeffs, x_T, noise, desc, is_image = build_problem(args, device)
    runs = method_runs(args)
    T, N = coeffs.num_steps, args.repeats
    bar = _progress(args.progress, (1 + len(runs)) * (N + int(args.warmup)))
    rows, samples, residual_curves, psnr_curves, finals = [], {}, {}, {}, {}

    def run(label: str, method: str, opts: dict, curve: list | None = None):
        """Warm-up (unless --no-warmup) and N timed runs -> (result of the first run, median wall time)."""

        def callback(info):
            if curve is not None and first:
                curve.append(psnr(info.trajectory[0], ref))
            if bar is not None:
                bar.set_postfix_str(
                    f"{label}: iteration {info.iteration}"
                    if method != "sequential"
                    else f"{label}: step {T - info.frozen_from}/{T}",
                    refresh=False,
                )

        need_cb = bar is not None or curve is not None
        times, result, first = [], None, True
        for k in range(N + int(args.warmup)):
            _sync(device)
            t0 = time.perf_counter()
            res = paratriton.solve(
                model,
                coeffs,
                x_T,
                noise,
                method=method,
                **opts,
                **({"cuda_graph": True} if graphed and _graphable(method) else {}),
                **({"callback": callback} if need_cb and (first or bar) else {}),
            )
            _sync(device)
            if k >= int(args.warmup):
                times.append(time.perf_counter() - t0)
            if first:
                result, first = res, False
            if bar is not None:
                bar.update(1)
        return result, statistics.median(times)

    ref = None
    ref_res, seq_wall = run("sequential", "sequential", {})
    wall = seq_wall
    on_gpu = device.type == "cuda"
    ref = ref_res.sample
    samples["sequential"] = ref
    finals["sequential"] = float("inf")
    rows.append(
        {
            "method": "sequential",
            "iterations": T,
            "iters/steps": "1.00",
            "NFE/sample": ref_res.nfe,
            f"wall [s], median of {N}": f"{wall:.2f}",
            **({"speedup": "1.00x"} if on_gpu else {}),
            "PSNR vs seq [dB]": "inf",
            "RMS vs seq": "0",
            "within tol": "yes",
            "iters to 40 dB": T,
            "converged": "yes",
        }
    )
    for label, name, opts in runs:
        curve: list[float] = []
        res, wall = run(label, name, opts, curve)
        samples[label] = res.sample
        res_curve = [float(torch.nan_to_num(r, nan=-1.0).max()) for r in res.residuals]
        residual_curves[label] = [(k + 1, v) for k, v in enumerate(res_curve)]
        psnr_curves[label] = [(k + 1, min(v, 150.0)) for k, v in enumerate(curve)]
        final = psnr(res.sample, ref)
        finals[label] = final
        dist = float((res.sample.double() - ref.double()).flatten(1).square().mean(1).sqrt().max())
        # the first iteration from which the estimate stays at or above 40 dB, final sample included
        it40 = None
        if final >= 40.0:
            below = [k for k, v in enumerate(curve) if v < 40.0]
            it40 = below[-1] + 2 if below else 1
            it40 = min(it40, res.iterations)
        rows.append(
            {
                "method": label if not graphed or _graphable(name) else f"{label} (eager)",
                "iterations": res.iterations,
                "iters/steps": f"{res.iterations / T:.2f}",
                "NFE/sample": res.nfe,
                f"wall [s], median of {N}": f"{wall:.2f}",
                **({"speedup": f"{seq_wall / wall:.2f}x"} if on_gpu else {}),
                "PSNR vs seq [dB]": "inf" if math.isinf(final) else f"{final:.1f}",
                "RMS vs seq": f"{dist:.1e}",
                "within tol": "yes" if dist <= opts["tol"] else "no",
                "iters to 40 dB": "-" if it40 is None else it40,
                "converged": "yes" if res.converged else f"no (max {opts.get('max_iters')} iters)",
            }
        )
    if bar is not None:
        bar.close()
    labels = getattr(args, "effective_labels", None)
    figs = {
        "samples": samples,
        "residual": residual_curves,
        "psnr": psnr_curves,
        "desc": desc,
        "is_image": is_image,
        "device": device,
        "psnr_final": finals,
        "labels": labels,
        "steps": T,
        "graphed": graphed,
    }
    return rows, figs


def write_figures(figs: dict, out_dir: str, title: str, tol: float) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    conv = os.path.join(out_dir, "convergence.png")
    convergence_figure(figs["residual"], figs["psnr"], conv, title, tol, figs.get("steps", 1))
    paths.append(conv)
    if figs["is_image"]:
        rows = {
            k: ((v.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0].cpu().numpy()
            for k, v in figs["samples"].items()
        }
        grid = os.path.join(out_dir, "samples.png")
        image_grid(
            rows,
            grid,
            title=f"{title}: one row per method, PSNR vs the sequential sample",
            columns=[f"class {c}" for c in figs["labels"]] if figs.get("labels") else None,
            row_notes={
                k: (
                    "reference" if math.isinf(v) and k == "sequential" else "inf dB" if math.isinf(v) else f"{v:.1f} dB"
                )
                for k, v in figs.get("psnr_final", {}).items()
            },
        )
        paths.append(grid)
    return paths


CPU_NOTE = (
    "CPU: wall-time gains need a GPU (a parallel iteration evaluates the model on the whole window at once, which a "
    "CPU does no faster than step by step); what the CPU shows: iterations against the {T} steps and the distance to "
    "the sequential sample. --full runs every default method with repeats."
)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    device = resolve_device(args)
    if device.type != "cuda":
        print(CPU_NOTE.format(T=args.steps), flush=True)
    rows, figs = sample(args)
    tol = DEFAULT_TOL if args.tol is None else args.tol
    eta = 1.0 if args.sampler == "ddpm" else (args.eta or 0.0)
    title = f"{MODEL_ALIASES.get(args.model, args.model)} model, {args.sampler.upper()}-{args.steps}"
    paths = write_figures(figs, args.out, title, tol)
    print(f"{figs['desc']}")
    graph = ", CUDA graphs" if figs["graphed"] else (", eager (--no-cuda-graph)" if device.type == "cuda" else "")
    print(
        f"{args.sampler.upper()} {args.steps} steps (eta {eta:g}), batch {args.batch}, tol {tol:g}, "
        f"window {args.window or args.steps}, device {figs['device']}{graph}, wall time: median of {args.repeats} "
        f"run{'s' if args.repeats > 1 else ''}{' after a warm-up run' if args.warmup else ''}"
    )
    print(_table(rows))
    notes = []
    if any("(h=auto)" in r["method"] for r in rows):
        notes.append("h=auto: the solver's Anderson history (2 secant pairs for one trajectory, 1 for a batch)")
    if figs["device"].type == "cuda":
        what = "graphed" if figs["graphed"] else "eager"
        notes.append(f"speedup: wall time of the {what} sequential sampler / the method's, same device")
    for note in notes:
        print(note)
    print(f"wrote {', '.join(paths)} ({time.perf_counter() - t0:.1f}s in all)")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# the command line: every value is checked here, before anything is sampled
# ---------------------------------------------------------------------------------------------------------------
MAX_STEPS = 1000  # the shipped models' and the Gaussian mixture's num_train_timesteps
# classes of the shipped models (paratriton.models.NUM_CLASSES / dit_crops.NUM_CLASSES; not imported here: they load
# diffusers, and a bad command line must fail fast)
NUM_CLASSES = {"digits": 10, "dit-crops": 16}
MODEL_ALIASES = {"default": "digits"}  # the old name of the digits model
DEFAULT_METHODS = ["taa", "fp", "picard"]  # CUDA (or --full)
CPU_METHODS = ["taa"]
DEFAULT_TOL = 1e-3
DEFAULT_HISTORY = None  # the solver's: 2 secant pairs for one trajectory, 1 for a batch (issue 23)
BASELINES = ("fp", "picard", "aa")  # capped by --max-iters-baselines

# the methods, their option keys and ranges: generated from the registry (``paratriton/solvers/registry.py``), where
# an option's ``key`` makes it settable as ``--methods METHOD:KEY=N``
METHOD_KEYS: dict[str, tuple[str, ...]] = {
    name: tuple(o.key for o in spec.options if o.key) for name, spec in REGISTRY.items()
}


def _keyed_options() -> dict[str, Option]:
    """Key -> the registry option it sets (the first method's: every method's option of one key has one range)."""
    keyed: dict[str, Option] = {}
    for spec in REGISTRY.values():
        for o in spec.options:
            if o.key:
                keyed.setdefault(o.key, o)
    return keyed


OPTION_KEYS = _keyed_options()
MAX_HISTORY = int(OPTION_KEYS["h"].hi)  # the solvers' history option: 1..8


class _UsageError(Exception):
    """A bad command-line value: reported by ``parser.error`` (usage + one line, exit status 2)."""


def _out_of_range(opt: Option, value: int, steps: int) -> str | None:
    """Why ``value`` is outside the registry's range of ``opt`` for ``steps`` steps (None: inside), as the end of a
    message that names the flag first."""
    if opt.steps == "divides":
        if value >= 1 and steps % value == 0:
            return None
        divisors = [d for d in range(1, steps + 1) if steps % d == 0]
        return f"must divide --steps {steps}: one of {', '.join(map(str, divisors))}; got {value}"
    lo = int(opt.lo)
    hi = steps if opt.steps == "at_most" else None if opt.hi is None else int(opt.hi)
    if hi is None:
        return None if value >= lo else f"must be >= {lo}, got {value}"
    if lo <= value <= hi:
        return None
    return f"must be in {lo}..{hi}{' (--steps)' if opt.steps == 'at_most' else ''}, got {value}"


def _check_flag(flag: str, value: int | None, key: str, steps: int) -> None:
    """A flag that sets the option of ``key`` for every method: within the registry's range."""
    why = None if value is None else _out_of_range(OPTION_KEYS[key], value, steps)
    if why:
        raise _UsageError(f"{flag} {why}")


def _range_text(opt: Option) -> str:
    """The range of ``opt`` on the command line, in words (``T``: --steps)."""
    if opt.steps == "divides":
        return "a divisor of T"
    hi = "T" if opt.steps == "at_most" else None if opt.hi is None else str(int(opt.hi))
    return f"{int(opt.lo)}..{hi}" if hi is not None else f">= {int(opt.lo)}"


def _parse_int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _UsageError(f"{what} must be an integer, got {text!r}") from None


def parse_method(spec: str, steps: int) -> tuple[str, dict]:
    """'taa', 'taa:h=3,w=10', 'fp:k=1', 'srds:blocks=5' -> (method, {solver option: value}), checked against
    ``steps``."""
    name, colon, rest = spec.partition(":")
    methods = tuple(REGISTRY)
    if name not in methods:
        raise _UsageError(f"--methods: unknown method {name!r}; choose from {', '.join(methods)}")
    if colon and not rest:
        raise _UsageError(f"--methods {spec}: nothing after the colon; write {name} or {name}:KEY=N")
    allowed = {o.key: o for o in REGISTRY[name].options if o.key}
    opts: dict = {}
    seen: set[str] = set()
    for kv in rest.split(",") if rest else []:
        key, eq, value = kv.partition("=")
        if key in seen:
            raise _UsageError(f"--methods {spec}: option {key}= given twice; give each option once")
        seen.add(key)
        if key not in OPTION_KEYS:
            raise _UsageError(
                f"--methods {spec}: unknown option {key!r}; option keys: {', '.join(k + '=' for k in OPTION_KEYS)}"
            )
        if key not in allowed:
            applies = ", ".join(k + "=" for k in allowed) if allowed else "none (it takes no options)"
            raise _UsageError(f"--methods {spec}: option {key}= does not apply to {name}; options of {name}: {applies}")
        if not eq:
            raise _UsageError(f"--methods {spec}: option {key} needs a value, e.g. {key}=2")
        v = _parse_int(value, f"--methods {spec}: {key}=")
        why = _out_of_range(allowed[key], v, steps)
        if why:
            raise _UsageError(f"--methods {spec}: {key}= {why}")
        opts[allowed[key].name] = v
    return name, opts


def method_runs(args: argparse.Namespace) -> list[tuple[str, str, dict]]:
    """The parallel runs of ``args.methods``: [(row label, method, solver options)] (sequential: the reference)."""
    runs = []
    for spec in args.methods:
        name, opts = parse_method(spec, args.steps)
        if name == "sequential":
            continue  # always run first, as the reference
        keys = METHOD_KEYS[name]
        full = {"tol": DEFAULT_TOL if args.tol is None else args.tol}
        if "w" in keys and args.window is not None:
            full["window"] = args.window
        if "h" in keys:
            full["history"] = DEFAULT_HISTORY if args.history is None else args.history
        if name in BASELINES and args.max_iters_baselines is not None:
            full["max_iters"] = args.max_iters_baselines
        full.update(opts)
        h = full.get("history")
        label = f"{name} (h={'auto' if h is None else h})" if spec == name and "h" in keys else spec
        runs.append((label, name, full))
    return runs


def _finite(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return v


def validate(args: argparse.Namespace) -> None:
    """Check every value (ranges, combinations, the device, the output folder); raise ``_UsageError``."""
    if not 1 <= args.steps <= MAX_STEPS:
        raise _UsageError(f"--steps must be in 1..{MAX_STEPS}, got {args.steps}")
    if args.batch < 1:
        raise _UsageError(f"--batch must be >= 1, got {args.batch}")
    for flag, value, key in (("--window", args.window, "w"), ("--max-iters-baselines", args.max_iters_baselines, "it")):
        _check_flag(flag, value, key, args.steps)
    if args.tol is not None:
        try:
            Tolerance(tol=args.tol)
        except (TypeError, ValueError):
            raise _UsageError(f"--tol must be a finite number > 0, got {args.tol:g}") from None
    _check_flag("--history", args.history, "h", args.steps)
    _check_device(args.device)
    apply_device_defaults(args)
    if args.repeats < 1:
        raise _UsageError(f"--repeats must be >= 1, got {args.repeats}")
    if args.seed < 0:
        raise _UsageError(f"--seed must be >= 0, got {args.seed}")
    if args.eta is not None:
        if args.sampler == "ddpm":
            raise _UsageError("--eta applies to --sampler ddim only (DDPM is eta 1); drop --eta or use --sampler ddim")
        if not 0 <= args.eta <= 1:
            raise _UsageError(f"--eta must be in [0, 1], got {args.eta:g}")
    model = MODEL_ALIASES.get(args.model, args.model)
    if model == "gmm":
        for flag, value in (("--labels", args.labels), ("--guidance", args.guidance)):
            if value is not None:
                raise _UsageError(
                    f"{flag} applies to --model digits / dit-crops only (the Gaussian mixture is unconditional)"
                )
    if args.labels is not None:
        k = NUM_CLASSES[model]
        bad = [v for v in args.labels if not 0 <= v < k]
        if bad:
            raise _UsageError(
                f"--labels must be classes in 0..{k - 1} of --model {model}, got {' '.join(map(str, bad))}"
            )
        if len(args.labels) > args.batch:
            raise _UsageError(
                f"--labels: {len(args.labels)} labels for --batch {args.batch}; give at most "
                f"{args.batch} (fewer are repeated)"
            )
    if args.guidance is not None and args.guidance < 0:
        raise _UsageError(f"--guidance must be >= 0 (1: no guidance), got {args.guidance:g}")
    runs = method_runs(args)  # checks every --methods entry
    used = {k for _, name, _ in runs for k in METHOD_KEYS[name]}
    for flag, value, key in (("--window", args.window, "w"), ("--history", args.history, "h")):
        if value is not None and key not in used:
            users = [m for m, keys in METHOD_KEYS.items() if key in keys]
            raise _UsageError(
                f"{flag} applies to none of --methods {' '.join(args.methods)}; it applies to {', '.join(users)}"
            )
    if args.tol is not None and not runs:
        raise _UsageError("--tol applies to the parallel methods only; --methods names none")
    if args.max_iters_baselines is not None and not any(name in BASELINES for _, name, _ in runs):
        raise _UsageError(f"--max-iters-baselines applies to {', '.join(BASELINES)}; --methods names none of them")
    _check_out(args.out)


def _check_device(device: str | None) -> None:
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise _UsageError(f"--device must be cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise _UsageError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA device is visible"
            raise _UsageError(
                f"--device {device}: CUDA is not available ({why}, torch {torch.__version__}); use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise _UsageError(
                f"--device {device}: there are {torch.cuda.device_count()} CUDA devices, "
                f"cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )


def _check_out(out: str) -> None:
    import tempfile

    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".paratriton-write-test-"):
            pass
    except OSError as e:
        raise _UsageError(f"--out {out}: cannot write there ({e.strerror or e})") from None


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help (except the ``None`` ones, whose help says what happens), epilog kept as written."""

    def _get_help_string(self, action):
        if action.default is None or action.nargs == 0 or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _methods_epilog() -> str:
    lines = [
        "methods (--methods, parallel ones compared against the sequential sampler, which always runs first: the "
        "reference of every PSNR and speedup):"
    ]
    for m, spec in REGISTRY.items():
        keys = METHOD_KEYS[m]
        lines.append(f"  {m:<15} {spec.summary}" + (f"; options {', '.join(k + '=' for k in keys)}" if keys else ""))
    lines.append("option keys (after a colon, comma-separated, e.g. taa:h=3,w=10 fp:k=1 srds:blocks=5; T: --steps):")
    for k, opt in OPTION_KEYS.items():
        lines.append(f"  {k + '=':<15} {opt.name}, {_range_text(opt)}: {opt.help}")
    lines.append("per-method keys override --window / --history / --max-iters-baselines")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__.replace("``", "")
    p = argparse.ArgumentParser(prog="python -m paratriton", description=doc, formatter_class=_HelpFormatter)
    sub = p.add_subparsers(dest="cmd", metavar="{sample}", help="the main job (the default command)")
    s = sub.add_parser(
        "sample",
        help="sample with the sequential sampler and parallel solvers; table and PNGs",
        description=doc,
        epilog=_methods_epilog(),
        formatter_class=_HelpFormatter,
    )
    s.add_argument(
        "--model",
        choices=["digits", "dit-crops", "gmm", "default"],
        default="digits",
        help="digits: the shipped digits UNet (10 classes); dit-crops: the shipped DiT of RGB photo crops "
        "(16 classes); gmm: the analytic Gaussian mixture; default: digits",
    )
    s.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim", help="ddpm = DDPM ancestral (eta 1)")
    s.add_argument("--steps", type=int, default=50, help=f"T, the number of sampler steps, 1..{MAX_STEPS}")
    s.add_argument(
        "--eta",
        type=_finite,
        default=None,
        help="DDIM eta in [0, 1] (--sampler ddim only; default 0, deterministic DDIM)",
    )
    s.add_argument("--batch", type=int, default=4, help="number of samples, >= 1")
    s.add_argument(
        "--labels",
        type=int,
        nargs="+",
        default=None,
        help="class labels (digits: 0..9, dit-crops: 0..15), repeated up to --batch (not with --model gmm; "
        "default 3 0 7 4 ... modulo the classes)",
    )
    s.add_argument(
        "--guidance",
        type=_finite,
        default=None,
        help="classifier-free guidance scale >= 0, 1 = none (not with --model gmm; default: the shipped model's, 2)",
    )
    s.add_argument(
        "--tol",
        type=_finite,
        default=None,
        help=f"target RMS distance of the parallel samples to the sequential one, > 0 (default {DEFAULT_TOL:g})",
    )
    s.add_argument("--window", type=int, default=None, help="window of fp/picard/aa/taa, 1..T (default: all T steps)")
    s.add_argument(
        "--history",
        type=int,
        default=None,
        help=f"Anderson history of taa/aa, 1..{MAX_HISTORY} (default: 2 for batch 1, 1 for a batch)",
    )
    s.add_argument(
        "--methods",
        nargs="+",
        default=None,
        metavar="METHOD[:KEY=N,...]",
        help=f"parallel methods and their options, listed below (default: {' '.join(DEFAULT_METHODS)} on CUDA or "
        f"with --full, {' '.join(CPU_METHODS)} on a CPU)",
    )
    s.add_argument(
        "--max-iters-baselines",
        type=int,
        default=None,
        help="cap the iterations of fp/picard/aa, >= 1 (default: run them to convergence)",
    )
    s.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed runs per method; the table shows the median (default: 3 after a warm-up run on CUDA or with "
        "--full, 1 without warm-up on a CPU)",
    )
    s.add_argument(
        "--full",
        action="store_true",
        help="the full comparison on any device: methods taa fp picard, 3 runs after a warm-up (minutes on a CPU)",
    )
    s.add_argument(
        "--no-cuda-graph",
        dest="cuda_graph",
        action="store_false",
        help="on CUDA, run every solve eagerly instead of captured in CUDA graphs",
    )
    s.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    s.add_argument("--out", default="outputs", help="folder for samples.png and convergence.png")
    s.add_argument("--seed", type=int, default=0, help="seed of the initial noise, >= 0")
    s.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        default=None,
        help="skip the warm-up run before the timed ones",
    )
    s.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line: a bad value exits with the usage and one line (status 2)."""
    p = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in ("sample", "-h", "--help"):
        argv = ["sample", *argv]  # `python -m paratriton [flags]` runs the main job
    args = p.parse_args(argv)
    try:
        validate(args)
    except _UsageError as e:
        p._subparsers._group_actions[0].choices[args.cmd].error(str(e))
    return args


# ---------------------------------------------------------------------------------------------------------------
# drawing with PIL (matplotlib is not a dependency)
# ---------------------------------------------------------------------------------------------------------------
COLORS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
]


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


def line_panel(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    series: dict[str, list[tuple[float, float]]],
    title: str,
    xlabel: str,
    ylabel: str,
    logy: bool = False,
    hline: float | None = None,
    hline_label: str | None = None,
    mark_last: bool = False,
) -> None:
    """Draw ``series`` (name -> [(x, y)]) into ``box = (x0, y0, x1, y1)`` of an image."""
    font = _font()
    x0, y0, x1, y1 = box
    L, R, Tm, Bm = 62, 10, 24, 36
    px0, py0, px1, py1 = x0 + L, y0 + Tm, x1 - R, y1 - Bm
    f = (lambda v: math.log10(v)) if logy else (lambda v: v)  # noqa: E731
    pts = [
        (x, f(y)) for s in series.values() for x, y in s if y is not None and math.isfinite(y) and (y > 0 or not logy)
    ]
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
        if hline_label:
            draw.text((px0 + 4, yy + 2), hline_label, fill=(90, 90, 90), font=font)
    legend = []
    for k, (name, s) in enumerate(series.items()):
        col = COLORS[k % len(COLORS)]
        p = [
            (sx(x), sy(min(max(f(y), ylo), yhi)))
            for x, y in s
            if y is not None and math.isfinite(f(y) if (y > 0 or not logy) else float("nan"))
        ]
        if len(p) > 1:
            draw.line(p, fill=col, width=2)
        for q in p:
            draw.ellipse([q[0] - 2, q[1] - 2, q[0] + 2, q[1] + 2], fill=col)
        if mark_last and p:
            q = p[-1]
            draw.ellipse([q[0] - 5, q[1] - 5, q[0] + 5, q[1] + 5], outline=col, width=2)
        if mark_last and s:
            last = s[-1][1]
            name = f"{name}: {last:.1f} dB" if last < 150 else f"{name}: >= 150 dB"
        legend.append((col, name))
    if legend:  # top right, or bottom right (mark_last: rising curves) on a white box
        lw_ = 22 + 7 * max(len(n) for _, n in legend)
        ly0 = py0 + 4 if not mark_last else py1 - 8 - 14 * len(legend)
        draw.rectangle(
            [px1 - lw_ - 8, ly0, px1 - 4, ly0 + 4 + 14 * len(legend)], fill=(255, 255, 255), outline=(200, 200, 200)
        )
        for k, (col, name) in enumerate(legend):
            draw.line([px1 - lw_ - 2, ly0 + 9 + 14 * k, px1 - lw_ + 14, ly0 + 9 + 14 * k], fill=col, width=2)
            draw.text((px1 - lw_ + 18, ly0 + 2 + 14 * k), name, fill=(0, 0, 0), font=font)


def convergence_figure(
    residual: dict, psnr: dict, path: str, title: str, tol: float | None = None, steps: int = 1
) -> None:
    """Left: the largest step residual per iteration (log scale; no threshold line: the solvers stop on per-step
    tolerances relative to each step's scale, which one line cannot show); right: the PSNR of the sample estimate
    against the sequential sample with the tolerance ``tol`` (an RMS distance) as a line. ``steps`` is unused (kept
    for callers)."""
    img = Image.new("RGB", (1000, 400), (255, 255, 255))
    d = ImageDraw.Draw(img)
    line_panel(
        d,
        (0, 0, 500, 400),
        residual,
        f"max step residual (RMS, log scale) - {title}",
        "iteration",
        "residual",
        logy=True,
    )
    line_panel(
        d,
        (500, 0, 1000, 400),
        psnr,
        "PSNR of x_0 vs the sequential sample (final value: circle, legend)",
        "iteration",
        "dB",
        mark_last=True,
        hline=None if tol is None else 20 * math.log10(2.0 / tol),
        hline_label=None if tol is None else f"tolerance tol = {tol:g} RMS ({20 * math.log10(2.0 / tol):.0f} dB)",
    )
    img.save(path)


def image_grid(
    rows: dict[str, "object"],
    path: str,
    scale: int = 3,
    title: str | None = None,
    columns: list[str] | None = None,
    row_notes: dict[str, str] | None = None,
) -> None:
    """rows: name -> uint8 array-like ``[B, H, W]``; one labelled row per name (``row_notes`` under the name),
    ``columns`` above the tiles and ``title`` on top."""
    font = _font()
    names = list(rows)
    B, H, W = rows[names[0]].shape
    lw, tw = 130, W * scale
    top = (18 if title else 0) + (18 if columns else 0) + 4
    width = max(lw + B * (tw + 4) + 4, 8 + 6 * len(title or ""))
    img = Image.new("L", (width, top + len(names) * (H * scale + 4)), 255)
    d = ImageDraw.Draw(img)
    if title:
        d.text((4, 4), title, fill=0, font=font)
    if columns:
        for b, c in enumerate(columns[:B]):
            d.text((lw + 4 + b * (tw + 4) + 2, top - 18), c, fill=0, font=font)
    for r, name in enumerate(names):
        y = top + r * (H * scale + 4)
        d.text((4, y + H * scale // 2 - 14), name, fill=0, font=font)
        if row_notes and name in row_notes:
            d.text((4, y + H * scale // 2 + 2), row_notes[name], fill=90, font=font)
        for b in range(B):
            tile = Image.fromarray(rows[name][b]).resize((tw, H * scale), Image.NEAREST)
            img.paste(tile, (lw + 4 + b * (tw + 4), y))
    img.save(path)


if __name__ == "__main__":
    sys.exit(main())
