"""Train paratriton's second shipped model: a class-conditional DiT of 32x32 RGB crops of scikit-image's photographs.

    PYTHONUNBUFFERED=1 python python/train_dit.py --out paratriton/models/weights_dit
    python python/train_dit.py --export-photos photos.npz      # the photographs as one .npz, for --photos elsewhere

Data: the photographs ``paratriton.models.dit_crops.PHOTOGRAPHS`` from scikit-image's wheel (no download; or the
``--photos`` .npz written by ``--export-photos``), class = photograph. Each is cut to RGB in [-1, 1] (gray repeated
to three channels; retina's black border cut off; shrunk to a shorter side of at most 512 px), and split by
columns: the right 20% is held out, the rest trains. Crops: a square window of side 32 * s, s log-uniform in
[1/1.2, 1.2] (scale jitter), anywhere in the part, resampled bilinearly to 32x32; nearly flat crops (pixel std
below 0.02 on the [-1, 1] scale: sky, paper, the moon's blank disc) are rejected, since no classifier can tell whose
they are. A bank of ``--bank-per-class`` training crops per class and ``--held-out-per-class`` held-out crops are
drawn once (fixed seed); horizontal flips are drawn at every step.

Model: ``paratriton.models.dit_crops.DIT_CONFIG`` (diffusers ``DiTTransformer2DModel``, patch 2, 12M parameters),
epsilon prediction, DDPM training on the digits model's linear beta schedule (1000 steps), label dropout 0.1 to the
null class ``num_classes`` (the same for every block: the blocks' own per-block label dropout is switched off),
AdamW (fused on CUDA), warm-up then cosine decay, EMA of the weights, bf16 autocast on CUDA, fixed seed, a wall-time
cap (``--max-seconds``).

Quality check: a small CNN (``CropClassifier``) trained on the training crops, its accuracy on the held-out crops
reported, labels ``--quality-per-class`` DDIM-``--quality-steps`` samples of every class at each guidance scale;
the check passes when at least 80% of the samples at the first (shipped) guidance scale get their own class. Exits
with status 1 if it fails. Writes model.safetensors (EMA weights, fp16), classifier.safetensors and config.json
(model, scheduler, data, training and quality records, checksums) into ``--out``, and a sample grid PNG (per class
one row: four held-out real crops, then generated samples).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_HERE, ".."))
sys.path.insert(0, _HERE)

from train_default_model import EMA  # noqa: E402

from paratriton.models import dit_crops as dc  # noqa: E402
from paratriton.models.default import _sha256  # noqa: E402  (the checksum the loader verifies)

MAX_SIDE = 512  # photographs larger than this (shorter side) are shrunk to it
HELD_OUT_FRACTION = 0.2  # the right part of every photograph held out
CENTRE = {"retina": (230, 1180)}  # rows/columns kept: retina's fundus without its black border
SCALE_JITTER = 1.2
MIN_STD = 0.02  # crops flatter than this (pixel std on the [-1, 1] scale) are rejected
PASS_ACCURACY = 0.8


# -- data ------------------------------------------------------------------------------------------------------------
def read_photographs(path: str | None, names) -> list[np.ndarray]:
    """``uint8 [H, W, 3]`` arrays: from the ``--photos`` .npz (keys = names) or from scikit-image."""
    if path is None:
        return dc.load_photographs(names)
    with np.load(path) as z:
        missing = [n for n in names if n not in z.files]
        if missing:
            raise ValueError(f"{path} lacks the photographs {missing}")
        return [z[n] for n in names]


def prepare(photos: list[np.ndarray], names) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each photograph as float ``[3, H, W]`` in [-1, 1], split by columns into (training part, held-out part)."""
    parts = []
    for name, a in zip(names, photos):
        x = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float() / 255.0
        if name in CENTRE:
            lo, hi = CENTRE[name]
            x = x[:, lo:hi, lo:hi]
        H, W = x.shape[1:]
        if min(H, W) > MAX_SIDE:
            f = MAX_SIDE / min(H, W)
            x = F.interpolate(x[None], size=(round(H * f), round(W * f)), mode="bilinear", antialias=True)[0]
        x = x * 2 - 1
        cut = int(round(x.shape[2] * (1 - HELD_OUT_FRACTION)))
        parts.append((x[:, :, :cut].contiguous(), x[:, :, cut:].contiguous()))
    return parts


def sample_crops(img: torch.Tensor, n: int, g: torch.Generator, size: int = dc.IMAGE_SIZE) -> torch.Tensor:
    """``n`` random crops ``[n, 3, size, size]`` of ``img [3, H, W]``: square windows of side ``size * s`` (s
    log-uniform in [1/SCALE_JITTER, SCALE_JITTER]) anywhere in ``img``, bilinearly resampled; crops with pixel std
    below ``MIN_STD`` are rejected and redrawn. ``g`` is a CPU generator (the same crops on every device)."""
    H, W = img.shape[1:]
    out, have = [], 0
    for _ in range(100):
        m = 2 * (n - have) + 16
        s = size * torch.exp((torch.rand(m, generator=g, dtype=torch.float64) * 2 - 1) * math.log(SCALE_JITTER))
        s = torch.minimum(s, torch.tensor(float(min(H, W))))
        x0 = torch.rand(m, generator=g, dtype=torch.float64) * (W - s)
        y0 = torch.rand(m, generator=g, dtype=torch.float64) * (H - s)
        theta = torch.zeros(m, 2, 3, dtype=torch.float64)
        theta[:, 0, 0], theta[:, 0, 2] = s / W, (2 * x0 + s) / W - 1
        theta[:, 1, 1], theta[:, 1, 2] = s / H, (2 * y0 + s) / H - 1
        grid = F.affine_grid(theta.float().to(img.device), [m, 3, size, size], align_corners=False)
        crops = F.grid_sample(img[None].expand(m, -1, -1, -1), grid, mode="bilinear", align_corners=False)
        keep = crops.flatten(1).std(1) >= MIN_STD
        out.append(crops[keep][: n - have])
        have += out[-1].shape[0]
        if have >= n:
            return torch.cat(out)
    raise ValueError(f"could not draw {n} crops with pixel std >= {MIN_STD} from a {tuple(img.shape)} image")


def build_bank(parts, per_class: int, held_per_class: int, seed: int, device, chunk: int = 4096):
    """Training crops ``[K, per_class, 3, 32, 32]`` (float16) and held-out crops ``[K * held_per_class, 3, 32, 32]``
    (float32) with their labels, all on ``device``."""
    g = torch.Generator().manual_seed(seed + 7)
    bank, held, held_y = [], [], []
    for k, (tr, te) in enumerate(parts):
        tr, te = tr.to(device), te.to(device)
        rows = [sample_crops(tr, min(chunk, per_class - i), g).half() for i in range(0, per_class, chunk)]
        bank.append(torch.cat(rows))
        held.append(sample_crops(te, held_per_class, g))
        held_y.append(torch.full((held_per_class,), k, dtype=torch.long, device=device))
    return torch.stack(bank), torch.cat(held), torch.cat(held_y)


def draw_batch(bank: torch.Tensor, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` crops from the bank (class uniform, crop uniform, random horizontal flip): ``[n, 3, 32, 32]``, ``[n]``."""
    K, N = bank.shape[:2]
    y = torch.randint(0, K, (n,), device=device)
    x = bank[y, torch.randint(0, N, (n,), device=device)].float()
    flip = torch.rand(n, device=device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x), y


# -- the classifier of the quality check ------------------------------------------------------------------------------
@torch.no_grad()
def accuracy(clf: dc.CropClassifier, x: torch.Tensor, y: torch.Tensor) -> tuple[float, list[float]]:
    pred = torch.cat([clf.predict(c) for c in x.split(2048)]).to(y.device)
    per = [(pred[y == c] == c).float().mean().item() for c in range(int(y.max()) + 1)]
    return (pred == y).float().mean().item(), per


def train_classifier(bank, held_x, held_y, steps: int, batch: int, device, seed: int, max_seconds: float = 60.0):
    """Train a ``CropClassifier`` on the bank (flips, a little pixel noise) for ``steps`` steps (or ``max_seconds``);
    returns it (eval mode) with its accuracy on the held-out crops, overall and per class."""
    torch.manual_seed(seed + 1)
    clf = dc.CropClassifier(bank.shape[0]).to(device)
    opt = torch.optim.AdamW(clf.parameters(), lr=2e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=max(steps, 1))
    amp = device.type == "cuda"
    t0 = time.time()
    for _ in range(steps):
        if time.time() - t0 > max_seconds:
            break
        x, y = draw_batch(bank, batch, device)
        x = x + 0.03 * torch.randn_like(x)  # generated samples are not pixel-perfect
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(clf(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    clf.eval()
    acc, per = accuracy(clf, held_x, held_y)
    return clf, acc, per


# -- the DiT ----------------------------------------------------------------------------------------------------------
def no_block_label_dropout(dit: torch.nn.Module) -> None:
    """diffusers gives every DiT block its own label embedding, each dropping labels on its own in training mode;
    switch that off (the table keeps its null row) so that the training loop drops a label for all blocks at once."""
    from diffusers.models.embeddings import LabelEmbedding

    for m in dit.modules():
        if isinstance(m, LabelEmbedding):
            m.dropout_prob = 0.0


@torch.no_grad()
def quality_check(pipe, clf, names, per_class: int, steps: int, scales, seed: int, device):
    """``per_class`` DDIM-``steps`` samples of every class at each guidance scale, labelled by ``clf``; returns the
    figures by scale and the samples ``[K * per_class, 3, 32, 32]`` (class-major) of the first scale."""
    out, first = {}, None
    labels = torch.arange(len(names)).repeat_interleave(per_class)
    for scale in scales:
        g = torch.Generator().manual_seed(seed)
        imgs = torch.cat(
            [
                pipe(c, num_inference_steps=steps, guidance_scale=scale, generator=g, output_type="pt").images
                for c in labels.split(1024)
            ]
        )
        acc, per = accuracy(clf, imgs.to(device), labels.to(device))
        out[str(scale)] = {"accuracy": round(acc, 4), "min_per_class": round(min(per), 4), "per_class": per}
        out[str(scale)]["per_class"] = [round(p, 3) for p in per]
        print(
            f"quality: guidance {scale}: accuracy {acc:.4f}, worst class {min(per):.3f} "
            f"({names[per.index(min(per))]}), "
            f"per class {[round(p, 2) for p in per]}",
            flush=True,
        )
        if first is None:
            first = imgs
    return out, first


def grid_png(rows: list[torch.Tensor], path: str, scale: int = 2) -> None:
    """One row of tiles per entry of ``rows`` (``[n, 3, 32, 32]`` in [-1, 1]), upscaled ``scale`` times."""
    from PIL import Image

    ncol = max(r.shape[0] for r in rows)
    h = w = dc.IMAGE_SIZE
    canvas = Image.new("RGB", (ncol * (w + 2) + 2, len(rows) * (h + 2) + 2), (255, 255, 255))
    for i, r in enumerate(rows):
        for j, im in enumerate(dc.to_pil_rgb(r)):
            canvas.paste(im, (2 + j * (w + 2), 2 + i * (h + 2)))
    canvas.resize((canvas.width * scale, canvas.height * scale), Image.NEAREST).save(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=dc.WEIGHTS_DIR)
    p.add_argument("--photos", default=None, help=".npz of the photographs (default: read them from scikit-image)")
    p.add_argument("--export-photos", default=None, help="write the photographs to this .npz and exit")
    p.add_argument("--classes", default=None, help="comma-separated subset of the photographs (smoke tests)")
    p.add_argument("--dit-config", default=None, help="JSON overriding entries of DIT_CONFIG (smoke tests)")
    p.add_argument("--bank-per-class", type=int, default=24576)
    p.add_argument("--held-out-per-class", type=int, default=512)
    p.add_argument("--steps", type=int, default=100000)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--ema", type=float, default=0.9995)
    p.add_argument("--label-dropout", type=float, default=0.1)
    p.add_argument("--max-seconds", type=float, default=390.0, help="wall-time cap of the DiT training loop")
    p.add_argument("--log-every", type=int, default=500)
    p.add_argument("--classifier-steps", type=int, default=2500)
    p.add_argument("--classifier-batch", type=int, default=512)
    p.add_argument("--quality-per-class", type=int, default=64)
    p.add_argument("--quality-steps", type=int, default=50)
    p.add_argument(
        "--guidance",
        type=float,
        nargs="+",
        default=[2.0, 1.0, 4.0],
        help="guidance scales to check; the first is shipped as the default",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", default=None, help="where to write a sample grid PNG (default: <out>/samples.png)")
    args = p.parse_args(argv)

    names = tuple(args.classes.split(",")) if args.classes else dc.PHOTOGRAPHS
    if args.export_photos:
        photos = dc.load_photographs(names)
        np.savez_compressed(args.export_photos, **dict(zip(names, photos)))
        print(f"wrote {len(names)} photographs to {args.export_photos}")
        return 0

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = device.type == "cuda"
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    t_start = time.time()
    K = len(names)
    parts = prepare(read_photographs(args.photos, names), names)
    bank, held_x, held_y = build_bank(parts, args.bank_per_class, args.held_out_per_class, args.seed, device)
    print(
        f"data: {K} photographs, bank {tuple(bank.shape)}, held out {tuple(held_x.shape)} on {device} "
        f"({time.time() - t_start:.1f}s)",
        flush=True,
    )

    tc = time.time()
    clf, clf_acc, clf_per = train_classifier(
        bank, held_x, held_y, args.classifier_steps, args.classifier_batch, device, args.seed
    )
    print(
        f"classifier: held-out accuracy on real crops {clf_acc:.4f}, per class {[round(a, 2) for a in clf_per]} "
        f"({time.time() - tc:.1f}s)",
        flush=True,
    )

    dit_cfg = dict(dc.DIT_CONFIG, num_embeds_ada_norm=K, **(json.loads(args.dit_config) if args.dit_config else {}))
    torch.manual_seed(args.seed)
    dit = dc.build_dit(dit_cfg).to(device).train()
    no_block_label_dropout(dit)
    nparams = sum(q.numel() for q in dit.parameters())
    from diffusers import DDPMScheduler

    ab = DDPMScheduler(**dc.SCHEDULER_CONFIG).alphas_cumprod.to(device)
    opt = torch.optim.AdamW(dit.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99), fused=amp)

    def lr_at(step: int, progress: float) -> float:  # warm-up, then cosine decay to 10% over the progress
        return args.lr * min(1.0, (step + 1) / args.warmup) * (0.5 * (1 + math.cos(math.pi * progress)) * 0.9 + 0.1)

    ema = EMA(dit, args.ema)
    print(f"dit: {nparams / 1e6:.2f}M parameters; up to {args.steps} steps of batch {args.batch}", flush=True)
    t0 = time.time()
    losses, curve, step = [], [], 0
    for step in range(args.steps):
        progress = max(step / args.steps, (time.time() - t0) / args.max_seconds)
        if progress >= 1.0:
            print(f"stopping at step {step}: wall-time cap {args.max_seconds}s", flush=True)
            step -= 1
            break
        for gp in opt.param_groups:
            gp["lr"] = lr_at(step, progress)
        x0, lab = draw_batch(bank, args.batch, device)
        lab[torch.rand(args.batch, device=device) < args.label_dropout] = K  # the null class
        t = torch.randint(0, ab.numel(), (args.batch,), device=device)
        eps = torch.randn_like(x0)
        a = ab[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            pred = dit(xt, timestep=t, class_labels=lab).sample
        loss = F.mse_loss(pred.float(), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0)
        opt.step()
        ema.update(dit, step)
        losses.append(loss.detach())
        if (step + 1) % args.log_every == 0 or step == args.steps - 1:
            mean = torch.stack(losses).mean().item()
            losses = []
            curve.append([step + 1, round(mean, 5)])
            print(f"step {step + 1}: loss {mean:.4f}, {time.time() - t0:.1f}s", flush=True)
    train_seconds = time.time() - t0
    steps_done = step + 1

    os.makedirs(args.out, exist_ok=True)
    from safetensors.torch import save_file

    files = {"model.safetensors": ema.shadow, "classifier.safetensors": clf.state_dict()}
    for fname, sd in files.items():
        sd = {k: (v.detach().half() if v.is_floating_point() else v.detach()).contiguous().cpu() for k, v in sd.items()}
        save_file(sd, os.path.join(args.out, fname))
    cfg = {
        "dit": dit_cfg,
        "scheduler": dict(dc.SCHEDULER_CONFIG),
        "classes": list(names),
        "num_classes": K,
        "null_class": K,
        "image_size": dc.IMAGE_SIZE,
        "channels": 3,
        "default_guidance_scale": args.guidance[0],
        "data": {
            "source": "scikit-image's skimage.data photographs (shipped in its wheel), class = photograph",
            "preprocessing": f"RGB in [-1, 1] (gray repeated), {CENTRE} rows/columns kept, shorter side shrunk "
            f"to <= {MAX_SIDE} px, right {HELD_OUT_FRACTION:.0%} of the columns held out",
            "crops": f"32x32 from square windows of side 32*s, s log-uniform in [1/{SCALE_JITTER}, {SCALE_JITTER}], "
            f"bilinear; pixel std < {MIN_STD} rejected; random horizontal flips in training",
            "bank_per_class": args.bank_per_class,
            "held_out_per_class": args.held_out_per_class,
        },
        "training": {
            "objective": "DDPM, epsilon prediction, MSE, uniform t in [0, 1000)",
            "steps": steps_done,
            "batch": args.batch,
            "lr": args.lr,
            "warmup": args.warmup,
            "ema": args.ema,
            "label_dropout": args.label_dropout,
            "seed": args.seed,
            "seconds": round(train_seconds, 1),
            "parameters": nparams,
            "device": torch.cuda.get_device_name() if amp else "cpu",
            "torch": torch.__version__,
            "loss_curve": curve,
        },
        "classifier": {
            "held_out_accuracy_real": round(clf_acc, 4),
            "held_out_per_class": [round(a, 3) for a in clf_per],
            "steps": args.classifier_steps,
        },
    }

    def write_config() -> None:
        cfg["files"] = {
            f: {"bytes": os.path.getsize(os.path.join(args.out, f)), "sha256": _sha256(os.path.join(args.out, f))}
            for f in files
        }
        with open(os.path.join(args.out, "config.json"), "w") as fh:
            json.dump(cfg, fh, indent=1)

    write_config()
    print(f"saved to {args.out} ({time.time() - t_start:.1f}s)", flush=True)

    pipe = dc.load_dit_crops(device=device, weights_dir=args.out)
    clf_loaded = dc.load_crop_classifier(device, weights_dir=args.out)
    tq = time.time()
    quality, imgs = quality_check(
        pipe, clf_loaded, names, args.quality_per_class, args.quality_steps, args.guidance, args.seed, device
    )
    ok = quality[str(args.guidance[0])]["accuracy"] >= PASS_ACCURACY
    cfg["quality"] = {
        "sampler": f"DDIM-{args.quality_steps} (eta 0), diffusers scheduler loop",
        "judge": "CropClassifier trained on the training crops (classifier.safetensors)",
        "samples_per_class": args.quality_per_class,
        "criterion": f"accuracy at guidance {args.guidance[0]} >= {PASS_ACCURACY}",
        "by_guidance_scale": quality,
        "pass": ok,
        "seconds": round(time.time() - tq, 1),
    }
    write_config()
    per = args.quality_per_class
    rows = []
    for k in range(K):
        real = held_x[held_y == k][:4].cpu()
        rows.append(torch.cat([real, imgs[k * per : k * per + min(per, 8)].cpu()]))
    grid_png(rows, args.grid or os.path.join(args.out, "samples.png"))
    print(json.dumps(quality))
    print(
        f"quality check (guidance {args.guidance[0]}, accuracy >= {PASS_ACCURACY}): {'PASS' if ok else 'FAIL'}; "
        f"total {time.time() - t_start:.1f}s",
        flush=True,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
