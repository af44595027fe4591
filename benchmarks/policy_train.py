"""Train the shipped diffusion policy on demonstrations from ``benchmarks/policy_data.py``.

    python benchmarks/policy_train.py --data .data/policy_push-v3.npz --device cuda --minutes 5 \
        --out paratriton/models/weights_policy [--max-episodes 200] [--batch 256] [--lr 3e-4] [--steps N]

The recipe is the reference's low-dim UNet policy (Chi et al., ``train_diffusion_unet_lowdim_workspace``):
horizon 16, ``n_obs_steps`` 2, ``n_action_steps`` 8, observations as a global condition, windows sampled with
the reference's padding (``n_obs_steps - 1`` before and ``n_action_steps - 1`` after each episode, edge values
repeated), limits normalizers fitted on the data, epsilon-prediction MSE on DDPM-100 noise
(``squaredcos_cap_v2``), AdamW (betas 0.95/0.999, weight decay 1e-6), a cosine learning rate with 500 warm-up
steps, and an EMA of the weights (the reference's ``EMAModel``: decay ``1 - (1 + step) ** -0.75``, at most
0.9999) which is what is saved. The network is the reduced-width ``POLICY_UNET_CONFIG`` (3.7M parameters, 7.1 MiB
in float16). Two deliberate differences: the learning rate defaults to 3e-4 (the reference's 1e-4 is tuned for
thousands of epochs; here training lasts minutes), and the length is a time budget: after 50 timed steps the
number of steps is fixed to fill ``--minutes`` (``--steps`` fixes it instead), so the cosine schedule ends at 0.

Writes ``model.safetensors`` (float16 network, float32 normalizers) and ``config.json`` (policy, network,
scheduler, task and training records, sha256) to ``--out`` in the loader's format
(``paratriton.models.load_policy(weights_dir=...)``). The whole dataset lives on the device; batches are gathered
there (no data loader). A CPU smoke run: ``--device cpu --minutes 0.5``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from paratriton.models.policy import (  # noqa: E402
    POLICY_SCHEDULER_CONFIG,
    POLICY_UNET_CONFIG,
    LimitsNormalizer,
    build_policy,
    save_policy,
)

HORIZON, N_OBS_STEPS, N_ACTION_STEPS = 16, 2, 8


def load_demonstrations(path: str, max_episodes: int | None = None) -> dict:
    """The npz of ``policy_data.py``, cut to its first ``max_episodes`` episodes."""
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    meta = json.loads(str(data["meta"])) if "meta" in data else {}
    ends = data["episode_ends"].astype(np.int64)
    if max_episodes is not None:
        if not 1 <= max_episodes <= len(ends):
            raise ValueError(f"--max-episodes must be in [1, {len(ends)}], got {max_episodes}")
        ends = ends[:max_episodes]
    n = int(ends[-1])
    return {
        "obs": data["obs"][:n].astype(np.float32),
        "action": data["action"][:n].astype(np.float32),
        "episode_ends": ends,
        "meta": meta,
    }


def sequence_windows(episode_ends: np.ndarray, horizon: int, pad_before: int, pad_after: int) -> np.ndarray:
    """The reference's ``SequenceSampler`` windows as indices ``[W, horizon]`` (int64) into the concatenated data:
    every start from ``-pad_before`` to ``length - horizon + pad_after`` of each episode, indices outside the
    episode clamped to its first or last step (edge padding)."""
    out = []
    start = 0
    for end in episode_ends:
        length = int(end) - start
        first, last = -pad_before, length - horizon + pad_after
        if last >= first:
            rel = np.arange(first, last + 1)[:, None] + np.arange(horizon)[None, :]
            out.append(start + np.clip(rel, 0, length - 1))
        start = int(end)
    return np.concatenate(out).astype(np.int64)


def ema_decay(step: int, power: float = 0.75, inv_gamma: float = 1.0, max_value: float = 0.9999) -> float:
    """The reference EMAModel's decay after ``step`` optimizer steps."""
    value = 1 - (1 + step / inv_gamma) ** -power
    return float(min(max(value, 0.0), max_value)) if step > 0 else 0.0


def lr_factor(step: int, total: int, warmup: int) -> float:
    """diffusers' ``cosine`` schedule with linear warm-up (the reference's ``get_scheduler("cosine", ...)``)."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="npz from benchmarks/policy_data.py")
    ap.add_argument("--out", required=True, help="output folder (the loader's format)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--minutes", type=float, default=5.0, help="training time budget")
    ap.add_argument("--steps", type=int, default=None, help="fix the number of steps instead of the time budget")
    ap.add_argument("--max-episodes", type=int, default=None, help="train on the first N episodes only")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=500)
    args = ap.parse_args(argv)

    t_start = time.time()
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    data = load_demonstrations(args.data, args.max_episodes)
    obs_dim, action_dim = data["obs"].shape[1], data["action"].shape[1]
    windows = sequence_windows(data["episode_ends"], HORIZON, N_OBS_STEPS - 1, N_ACTION_STEPS - 1)
    config = {
        "policy": dict(
            horizon=HORIZON,
            obs_dim=obs_dim,
            action_dim=action_dim,
            n_obs_steps=N_OBS_STEPS,
            n_action_steps=N_ACTION_STEPS,
            num_inference_steps=POLICY_SCHEDULER_CONFIG["num_train_timesteps"],
        ),
        "unet": dict(POLICY_UNET_CONFIG),
        "scheduler": dict(POLICY_SCHEDULER_CONFIG),
    }
    policy = build_policy(config)
    policy.normalizer["obs"] = LimitsNormalizer.fit(data["obs"])
    policy.normalizer["action"] = LimitsNormalizer.fit(data["action"])
    policy.to(device).train()
    ema = copy.deepcopy(policy.model).requires_grad_(False).eval()
    n_params = sum(p.numel() for p in policy.model.parameters())

    obs_all = torch.from_numpy(data["obs"]).to(device)
    act_all = torch.from_numpy(data["action"]).to(device)
    win = torch.from_numpy(windows).to(device)
    print(
        f"data: {len(data['episode_ends'])} episodes, {len(obs_all)} steps, {len(win)} windows; "
        f"network {n_params / 1e6:.2f}M parameters; device {device}",
        flush=True,
    )

    opt = torch.optim.AdamW(policy.model.parameters(), lr=args.lr, betas=(0.95, 0.999), eps=1e-8, weight_decay=1e-6)
    params = [p for p in policy.model.parameters()]
    ema_params = [p for p in ema.parameters()]

    def train_step(step: int, total: int) -> torch.Tensor:
        for group in opt.param_groups:
            group["lr"] = args.lr * lr_factor(step, total, args.warmup)
        idx = win[torch.randint(0, len(win), (args.batch,), device=device)]  # [B, horizon]
        loss = policy.compute_loss(obs_all[idx[:, :N_OBS_STEPS]], act_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            d = ema_decay(step)
            torch._foreach_mul_(ema_params, d)
            torch._foreach_add_(ema_params, params, alpha=1 - d)
        return loss.detach()

    budget = args.minutes * 60.0
    total = args.steps
    warm, probe = (10, 50) if device.type == "cuda" else (2, 20)
    step = 0
    losses: list[float] = []
    pending: list[torch.Tensor] = []
    curve: list[tuple[int, float]] = []
    t_train = time.time()
    t_probe = 0.0

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    while True:
        if total is None and step == warm:
            sync()
            t_probe = time.time()
        if total is None and step > warm:
            elapsed = time.time() - t_probe
            if step - warm >= probe or elapsed >= 0.1 * budget:
                sync()
                per_step = (time.time() - t_probe) / (step - warm)
                total = max(step + 1, step + int((budget - (time.time() - t_train)) / per_step))
                print(f"{per_step * 1e3:.1f} ms/step: {total} steps in {args.minutes:g} min", flush=True)
        if total is not None and step >= total:
            break
        if args.steps is None and time.time() - t_train > 1.15 * budget:
            print(f"stopping at step {step}: past 1.15x the time budget", flush=True)
            break
        pending.append(train_step(step, total if total is not None else 10**9))
        step += 1
        if len(pending) >= 50 or (total is not None and step >= total):
            losses.extend(torch.stack(pending).float().cpu().tolist())
            pending.clear()
        if step % args.log_every == 0 and losses:
            mean = float(np.mean(losses[-args.log_every :]))
            curve.append((step, round(mean, 5)))
            print(f"step {step}/{total or '?'}  loss {mean:.4f}  lr {opt.param_groups[0]['lr']:.2e}  "
                  f"{time.time() - t_train:.0f}s", flush=True)  # fmt: skip
    if pending:
        losses.extend(torch.stack(pending).float().cpu().tolist())
    seconds = time.time() - t_train

    policy.model.load_state_dict(ema.state_dict())
    policy.eval()
    tail = losses[-min(len(losses), 500) :]
    record = {
        "task": {k: data["meta"].get(k) for k in ("task", "noise", "expert_success_rate", "metaworld", "mujoco")},
        "training": {
            "data": os.path.basename(args.data),
            "episodes": int(len(data["episode_ends"])),
            "samples": int(len(obs_all)),
            "windows": int(len(win)),
            "steps": step,
            "batch": args.batch,
            "lr": args.lr,
            "warmup": args.warmup,
            "optimizer": "AdamW(betas=(0.95, 0.999), eps=1e-8, weight_decay=1e-6), cosine schedule",
            "ema": "1 - (1 + step) ** -0.75, max 0.9999 (saved)",
            "final_loss": float(np.mean(tail)) if tail else None,
            "loss_curve": curve,
            "seed": args.seed,
            "seconds": round(seconds, 1),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
        },
    }
    saved = save_policy(policy, args.out, extra=record)
    os.chmod(os.path.join(args.out, "model.safetensors"), 0o644)
    size = saved["files"]["model.safetensors"]["bytes"]
    print(json.dumps({"out": os.path.abspath(args.out), "bytes": size, "parameters": saved["parameters"],
                      "steps": step, "final_loss": record["training"]["final_loss"],
                      "seconds": round(time.time() - t_start, 1)}), flush=True)  # fmt: skip
    return saved


if __name__ == "__main__":
    main()
