"""Train paratriton's default model: a class-conditional diffusion model of handwritten digits, and its classifier.

    PYTHONUNBUFFERED=1 python python/train_default_model.py --out paratriton/models/weights

Data: scikit-learn's 8x8 digits (1797 images, shipped with scikit-learn, no download), values 0..16 scaled to
[-1, 1] and upsampled bilinearly to 32x32. Model: ``paratriton.models.UNET_CONFIG`` (diffusers UNet2DModel on 4x4
patches, 10.1M parameters), epsilon prediction, linear beta schedule (1000 steps), label dropout 0.1 to the null
class 10 (classifier-free guidance), AdamW, EMA of the weights, bf16 autocast on CUDA, fixed seed.

Also trains a small CNN classifier on the real digits (80/20 split, random shifts) and runs the quality check:
generated samples of class c must be classified as c at least 90% of the time (per class). Exits with status 1 if
the check fails. Writes model.safetensors (EMA weights, fp16), classifier.safetensors, config.json (model,
scheduler, default guidance scale, training and quality figures) into --out, and a sample grid PNG.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from paratriton.models import default as dm  # noqa: E402


def load_data(device):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0  # [N, 1, 8, 8] in [0, 1]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False) * 2 - 1
    y = torch.tensor(d.target, dtype=torch.long)
    return x.to(device), y.to(device)


def shift(x: torch.Tensor, max_shift: int, g: torch.Generator | None = None) -> torch.Tensor:
    """Random integer translation by up to ``max_shift`` pixels (background -1 fills in)."""
    n = x.shape[0]
    p = max_shift
    xp = F.pad(x, (p, p, p, p), value=-1.0)
    dx = torch.randint(0, 2 * p + 1, (n,), device=x.device, generator=g)
    dy = torch.randint(0, 2 * p + 1, (n,), device=x.device, generator=g)
    H = x.shape[-1]
    ar = torch.arange(H, device=x.device)
    rows = dy[:, None] + ar[None]  # [n, H]
    cols = dx[:, None] + ar[None]
    return xp[:, 0][torch.arange(n, device=x.device)[:, None, None], rows[:, :, None], cols[:, None, :]][:, None]


def train_classifier(x, y, steps: int, device, seed: int):
    g = torch.Generator().manual_seed(seed + 1)
    perm = torch.randperm(x.shape[0], generator=g).to(device)
    n_test = x.shape[0] // 5
    te, tr = perm[:n_test], perm[n_test:]
    torch.manual_seed(seed + 1)
    clf = dm.DigitClassifier().to(device)
    opt = torch.optim.AdamW(clf.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    for s in range(steps):
        idx = tr[torch.randint(0, tr.numel(), (256,), device=device)]
        xb = shift(x[idx], 2)
        xb = xb + 0.05 * torch.randn_like(xb)
        loss = F.cross_entropy(clf(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    clf.eval()
    with torch.no_grad():
        acc = (clf(x[te]).argmax(1) == y[te]).float().mean().item()
    return clf, acc


class EMA:
    def __init__(self, model, decay):
        self.decay = decay
        self.names = [k for k, _ in model.named_parameters()]
        self.params = [p.detach().clone().float() for p in model.parameters()]

    @torch.no_grad()
    def update(self, model, step):
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.params, [p.detach() for p in model.parameters()], 1 - d)

    @property
    def shadow(self):
        return dict(zip(self.names, self.params))


def quality_check(pipe, clf, per_class: int, steps: int, scales, seed: int, device):
    """Sample ``per_class`` images of every class with DDIM-``steps`` at each guidance scale; classify them."""
    out = {}
    labels = torch.arange(dm.NUM_CLASSES).repeat_interleave(per_class)
    for scale in scales:
        g = torch.Generator().manual_seed(seed)
        imgs = []
        for chunk in labels.split(500):
            imgs.append(
                pipe(chunk, num_inference_steps=steps, guidance_scale=scale, generator=g, output_type="pt").images
            )
        imgs = torch.cat(imgs)
        pred = clf.predict(imgs.to(device)).cpu()
        per = [(pred[labels == c] == c).float().mean().item() for c in range(dm.NUM_CLASSES)]
        out[str(scale)] = {
            "accuracy": (pred == labels).float().mean().item(),
            "min_per_class": min(per),
            "per_class": [round(p, 4) for p in per],
        }
        print(
            f"quality: guidance {scale}: accuracy {out[str(scale)]['accuracy']:.4f}, "
            f"worst class {min(per):.4f} ({per.index(min(per))}), per class {[round(p, 3) for p in per]}",
            flush=True,
        )
        if scale == scales[0]:
            first = imgs
    return out, first


def grid_png(images: torch.Tensor, nrow: int, path: str, scale: int = 2) -> None:
    from PIL import Image

    imgs = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    n, _, h, w = imgs.shape
    ncol = math.ceil(n / nrow)
    canvas = Image.new("L", (nrow * (w + 2) + 2, ncol * (h + 2) + 2), 255)
    for k in range(n):
        canvas.paste(Image.fromarray(imgs[k, 0].numpy()), (2 + (k % nrow) * (w + 2), 2 + (k // nrow) * (h + 2)))
    canvas.resize((canvas.width * scale, canvas.height * scale), Image.NEAREST).save(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=dm.WEIGHTS_DIR)
    p.add_argument("--steps", type=int, default=16000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--label-dropout", type=float, default=0.1)
    p.add_argument("--max-seconds", type=float, default=270.0, help="wall-time cap of the training loop")
    p.add_argument("--classifier-steps", type=int, default=1500)
    p.add_argument("--quality-per-class", type=int, default=100)
    p.add_argument("--quality-steps", type=int, default=50)
    p.add_argument(
        "--guidance",
        type=float,
        nargs="+",
        default=[2.0, 1.0, 3.0],
        help="guidance scales to check; the first is shipped as the default",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", default=None, help="where to write a sample grid PNG (default: <out>/samples.png)")
    args = p.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    t_start = time.time()
    x, y = load_data(device)
    print(f"data: {tuple(x.shape)} on {device}", flush=True)

    clf, clf_acc = train_classifier(x, y, args.classifier_steps, device, args.seed)
    print(f"classifier: held-out accuracy on real digits {clf_acc:.4f} ({time.time() - t_start:.1f}s)", flush=True)

    unet = dm.build_unet().to(device)
    nparams = sum(p.numel() for p in unet.parameters())
    sched = dm.default_scheduler("ddpm")
    ab = sched.alphas_cumprod.to(device)
    opt = torch.optim.AdamW(
        unet.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99), fused=device.type == "cuda"
    )
    warm = 500
    # cosine decay over the progress max(step / steps, elapsed / max_seconds): anneals properly even when the
    # wall-time cap ends training early (the step count is then reported in config.json)
    lr_at = lambda s, prog: args.lr * min(1.0, (s + 1) / warm) * (0.5 * (1 + math.cos(math.pi * prog)) * 0.9 + 0.1)  # noqa: E731
    ema = EMA(unet, args.ema)
    amp = device.type == "cuda"
    print(f"unet: {nparams / 1e6:.2f}M parameters; training {args.steps} steps of batch {args.batch}", flush=True)
    t0 = time.time()
    losses, step = [], 0
    for step in range(args.steps):
        progress = max(step / args.steps, (time.time() - t0) / args.max_seconds)
        if progress >= 1.0:
            print(f"stopping at step {step}: progress {progress:.3f} (wall-time cap {args.max_seconds}s)", flush=True)
            step -= 1
            break
        for gp in opt.param_groups:
            gp["lr"] = lr_at(step, progress)
        idx = torch.randint(0, x.shape[0], (args.batch,), device=device)
        x0, lab = x[idx], y[idx].clone()
        lab[torch.rand(args.batch, device=device) < args.label_dropout] = dm.NUM_CLASSES
        t = torch.randint(0, sched.config.num_train_timesteps, (args.batch,), device=device)
        eps = torch.randn_like(x0)
        a = ab[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            pred = unet(F.pixel_unshuffle(xt, dm.PATCH), t, class_labels=lab).sample
        loss = F.mse_loss(F.pixel_shuffle(pred.float(), dm.PATCH), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.update(unet, step)
        losses.append(loss.detach())
        if (step + 1) % 1000 == 0 or step == args.steps - 1:
            l = torch.stack(losses).mean().item()
            losses = []
            print(f"step {step + 1}: loss {l:.4f}, {time.time() - t0:.1f}s", flush=True)
    train_seconds = time.time() - t0
    steps_done = step + 1

    os.makedirs(args.out, exist_ok=True)
    from safetensors.torch import save_file

    save_file({k: v.half().contiguous() for k, v in ema.shadow.items()}, os.path.join(args.out, "model.safetensors"))
    save_file(
        {k: v.detach().half().contiguous().cpu() for k, v in clf.state_dict().items()},
        os.path.join(args.out, "classifier.safetensors"),
    )
    cfg = {
        "unet": dict(dm.UNET_CONFIG),
        "scheduler": dict(dm.SCHEDULER_CONFIG),
        "num_classes": dm.NUM_CLASSES,
        "null_class": dm.NUM_CLASSES,
        "patch": dm.PATCH,
        "image_size": 32,
        "channels": 1,
        "default_guidance_scale": args.guidance[0],
        "data": "sklearn.datasets.load_digits, 8x8 /16 -> bilinear 32x32 -> [-1, 1]",
        "training": {
            "steps": steps_done,
            "batch": args.batch,
            "lr": args.lr,
            "ema": args.ema,
            "label_dropout": args.label_dropout,
            "seed": args.seed,
            "seconds": round(train_seconds, 1),
            "parameters": nparams,
            "device": torch.cuda.get_device_name() if amp else "cpu",
            "torch": torch.__version__,
        },
        "classifier": {"held_out_accuracy_real": round(clf_acc, 4)},
    }
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)

    pipe = dm.load_default(device=device, weights_dir=args.out)
    clf_loaded = dm.load_classifier(device, weights_dir=args.out)
    tq = time.time()
    quality, imgs = quality_check(
        pipe, clf_loaded, args.quality_per_class, args.quality_steps, args.guidance, args.seed, device
    )
    cfg["quality"] = {
        "sampler": f"DDIM-{args.quality_steps} (eta 0), diffusers scheduler loop",
        "samples_per_class": args.quality_per_class,
        "by_guidance_scale": quality,
        "seconds": round(time.time() - tq, 1),
    }
    default_ok = quality[str(args.guidance[0])]["min_per_class"] >= 0.9
    cfg["quality"]["pass"] = default_ok
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    per = args.quality_per_class
    sel = torch.cat([imgs[c * per : c * per + min(per, 10)] for c in range(dm.NUM_CLASSES)])
    grid_png(sel, min(per, 10), args.grid or os.path.join(args.out, "samples.png"))
    print(json.dumps(cfg["quality"]["by_guidance_scale"]))
    print(
        f"quality check (guidance {args.guidance[0]}, every class >= 90%): {'PASS' if default_ok else 'FAIL'}; "
        f"total {time.time() - t_start:.1f}s",
        flush=True,
    )
    return 0 if default_ok else 1


if __name__ == "__main__":
    sys.exit(main())
