"""Closed-loop evaluation of a trained diffusion policy on its Meta-World task, one or more sampling methods side by
side.

    python benchmarks/policy_eval.py --weights paratriton/models/weights_policy --episodes 50 \
        --methods sequential taa --device cuda --out benchmarks/results/policy_eval_<device>.json

All episodes run in lockstep: at each control step the observation histories of every episode (``[E,
n_obs_steps, 39]``, the first observation repeated before the start, as the reference's ``MultiStepWrapper``)
go into one ``policy.predict_action(obs, generator=g, method=m, **options)`` call (batch = number of episodes),
and each episode executes the returned ``n_action_steps`` actions open-loop, stopping at its first success or
after ``--max-steps`` environment steps. Finished episodes stay in the batch (their actions are discarded), so
every call has the same batch and the same draws from the generator.

Seeding: episode ``i`` resets with seed ``--seed-base + i`` (disjoint from the training seeds 0..N-1), and each
method gets a fresh ``torch.Generator(device).manual_seed(--seed)``: exact samplers see the same noise and give the
same actions as ``sequential`` up to their tolerance.

Reported per method: the success rate with a 95% Wilson interval, per-episode success and steps to success, the
time of each ``predict_action`` call; for methods other than ``sequential`` (which is run first whenever another
method is asked for), the per-episode agreement of the outcome with ``sequential`` and the RMS distance of the
first chunk's actions (the first call: identical observations for every method). If the policy exposes
``last_result`` with an ``iterations`` field after a call, those are recorded too. A method the policy does not
implement yet (``NotImplementedError``) is reported as unavailable. CPU smoke test:
``--device cpu --episodes 2 --max-steps 40``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import paratriton  # noqa: E402
from paratriton.models.default import read_config  # noqa: E402
from paratriton.models.policy import POLICY_WEIGHTS_DIR, load_policy  # noqa: E402
from paratriton.policies.metaworld_task import DEFAULT_TASK, MetaWorldTask  # noqa: E402

EVAL_SEED_BASE = 100_000


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


def run_method(
    policy: Any,
    envs: list[MetaWorldTask],
    seeds: list[int],
    method: str,
    seed: int,
    max_steps: int,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Run every episode of ``envs`` in lockstep with ``method``; see the module's docstring."""
    device = policy.device
    To, Ta = policy.n_obs_steps, policy.n_action_steps
    E = len(envs)
    g = torch.Generator(device=device).manual_seed(seed)
    history = []
    for env, s in zip(envs, seeds):
        o = env.reset(s)
        history.append([o] * To)
    done = np.zeros(E, dtype=bool)
    success = np.zeros(E, dtype=bool)
    steps_to_success = np.full(E, -1, dtype=np.int64)
    env_steps = np.zeros(E, dtype=np.int64)
    call_ms: list[float] = []
    iterations: list[Any] = []
    first_chunk = None
    t0 = time.time()
    while not done.all():
        obs = np.stack([np.stack(h[-To:]) for h in history]).astype(np.float32)  # [E, To, obs_dim]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        tc = time.perf_counter()
        try:
            action = policy.predict_action(obs, generator=g, method=method, **options)
        except NotImplementedError as e:
            return {"method": method, "available": False, "error": f"NotImplementedError: {e}"}
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        call_ms.append((time.perf_counter() - tc) * 1e3)
        result = getattr(policy, "last_result", None)
        if result is not None and hasattr(result, "iterations"):
            it = result.iterations
            iterations.append(it.tolist() if torch.is_tensor(it) else it)
        action = torch.as_tensor(action).detach().float().cpu().numpy()  # [E, Ta, A]
        if first_chunk is None:
            first_chunk = action.copy()
        for i, env in enumerate(envs):
            if done[i]:
                continue
            for k in range(Ta):
                o, ok = env.step(action[i, k])
                env_steps[i] += 1
                history[i].append(o)
                if ok:
                    success[i] = True
                    steps_to_success[i] = env_steps[i]
                if ok or env_steps[i] >= max_steps:
                    done[i] = True
                    break
            history[i] = history[i][-To:]
    n_ok = int(success.sum())
    lo, hi = wilson_interval(n_ok, E)
    out: dict[str, Any] = {
        "method": method,
        "available": True,
        "options": options,
        "success_rate": n_ok / E,
        "wilson95": [lo, hi],
        "successes": n_ok,
        "episodes": E,
        "success": success.tolist(),
        "steps_to_success": steps_to_success.tolist(),
        "calls": len(call_ms),
        "predict_ms": {
            "median": float(np.median(call_ms)),
            "mean": float(np.mean(call_ms)),
            "first": call_ms[0],
        },
        "seconds": round(time.time() - t0, 2),
        "_first_chunk": first_chunk,
    }
    if iterations:
        out["iterations"] = iterations
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=POLICY_WEIGHTS_DIR, help="folder with config.json + model.safetensors")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument(
        "--methods",
        nargs="+",
        default=["sequential"],
        choices=list(paratriton.METHODS),
        help="sampling methods (paratriton.METHODS); sequential, the reference, always runs first",
    )
    ap.add_argument("--options", default="{}", help="JSON keywords for predict_action of the non-sequential methods")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--seed", type=int, default=0, help="the sampling generator's seed (the same for every method)")
    ap.add_argument("--seed-base", type=int, default=EVAL_SEED_BASE, help="episode i resets with seed-base + i")
    ap.add_argument("--max-steps", type=int, default=300, help="environment steps per episode (<= 500)")
    ap.add_argument("--task", default=None, help="default: the task recorded in the weights' config")
    ap.add_argument("--out", default=None, help="JSON path")
    args = ap.parse_args(argv)

    options = json.loads(args.options)
    device = torch.device(args.device)
    policy = load_policy(device=device, dtype=getattr(torch, args.dtype), weights_dir=args.weights)
    cfg = read_config(args.weights)
    task = args.task or (cfg.get("task") or {}).get("task") or DEFAULT_TASK
    methods = list(dict.fromkeys(args.methods))
    if any(m != "sequential" for m in methods) and "sequential" not in methods:
        methods.insert(0, "sequential")  # the reference the others are compared with
    methods.sort(key=lambda m: m != "sequential")

    envs = [MetaWorldTask(task, max_episode_steps=args.max_steps) for _ in range(args.episodes)]
    seeds = [args.seed_base + i for i in range(args.episodes)]
    results: dict[str, dict[str, Any]] = {}
    for m in methods:
        r = run_method(policy, envs, seeds, m, args.seed, args.max_steps, {} if m == "sequential" else options)
        results[m] = r
        if r["available"]:
            print(f"{m}: success {r['success_rate']:.3f} [{r['wilson95'][0]:.3f}, {r['wilson95'][1]:.3f}] "
                  f"({r['successes']}/{r['episodes']}), {r['calls']} calls, median {r['predict_ms']['median']:.1f} ms"
                  f" per call, {r['seconds']:.0f} s", flush=True)  # fmt: skip
        else:
            print(f"{m}: unavailable ({r['error']})", flush=True)
    seq = results.get("sequential")
    for m, r in results.items():
        if m == "sequential" or not r["available"] or seq is None or not seq["available"]:
            continue
        agree = [a == b for a, b in zip(r["success"], seq["success"])]
        diff = r["_first_chunk"] - seq["_first_chunk"]  # [E, Ta, A]
        per_ep = np.sqrt((diff**2).reshape(len(diff), -1).mean(axis=1))
        r["vs_sequential"] = {
            "agreement": float(np.mean(agree)),
            "per_episode_agreement": agree,
            "first_chunk_rms": float(np.sqrt((diff**2).mean())),
            "first_chunk_rms_per_episode": per_ep.tolist(),
            "first_chunk_max_abs": float(np.abs(diff).max()),
        }
        print(f"{m} vs sequential: outcome agreement {np.mean(agree):.3f}, first-chunk RMS "
              f"{r['vs_sequential']['first_chunk_rms']:.2e} (max {r['vs_sequential']['first_chunk_max_abs']:.2e})",
              flush=True)  # fmt: skip
    for r in results.values():
        r.pop("_first_chunk", None)
    for env in envs:
        env.close()

    report = {
        "config": {
            "weights": os.path.abspath(args.weights),
            "sha256": (cfg.get("files") or {}).get("model.safetensors", {}).get("sha256"),
            "task": task,
            "episodes": args.episodes,
            "seeds": [seeds[0], seeds[-1]] if seeds else [],
            "generator_seed": args.seed,
            "max_steps": args.max_steps,
            "dtype": args.dtype,
            "policy": cfg.get("policy"),
            "training": {k: (cfg.get("training") or {}).get(k) for k in ("episodes", "steps", "seconds", "device")},
        },
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "methods": results,
    }
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    return report


if __name__ == "__main__":
    main()
