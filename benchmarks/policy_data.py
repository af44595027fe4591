"""Demonstrations of the policy's task: Meta-World's scripted expert on seeded episodes, written to an npz.

    python benchmarks/policy_data.py --out .data/policy_push-v3.npz [--task push-v3] [--episodes 200] \
        [--noise 0.1] [--obs-out tests/data/policy_obs.npz]

The npz holds the reference's replay-buffer layout: ``obs [N, 39]`` and ``action [N, 4]`` (float32, the episodes
concatenated; ``action[t]`` is the expert's action at ``obs[t]``, clipped to [-1, 1]), ``episode_ends [E]`` (int64,
cumulative), ``seeds [E]`` (the training episodes' seeds: 0..episodes-1) and ``meta`` (a JSON string: task, noise,
counts, expert success rate, versions). Episodes stop at the first success; failed expert episodes are dropped.
With ``--noise`` > 0 the executed actions carry Gaussian noise of that standard deviation while the recorded labels
stay the clean expert actions (DART-style: the data cover the states the policy's own errors reach).

``--obs-out`` also writes a few observation windows ``obs [K, 2, 39]`` from expert episodes of evaluation seeds
(disjoint from the training seeds) with the expert's action at each ``expert_action [K, 4]``, a few KB, for the CPU
tests of the shipped policy.

Needs the ``[sim]`` extra (metaworld, mujoco, gymnasium). The simulator runs on the CPU: 200 episodes take ~10 s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from paratriton.policies.metaworld_task import (  # noqa: E402
    DEFAULT_TASK,
    TASK_EXPERTS,
    MetaWorldTask,
    collect_demonstrations,
    expert_policy,
    expert_rollout,
)

#: Evaluation episodes use seeds from here on (training episodes use 0..episodes-1).
EVAL_SEED_BASE = 100_000


def recorded_windows(task: str, n_obs_steps: int = 2, seeds: range = range(EVAL_SEED_BASE, EVAL_SEED_BASE + 4),
                     times: tuple[int, ...] = (0, 15, 30, 45)) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Observation windows ``[K, n_obs_steps, 39]`` float32 (K = ``len(seeds) * len(times)``) from expert episodes,
    the window ending at step ``t`` (the first observation repeated before the episode's start, as the evaluation's
    history), and the expert's action at each window's last observation ``[K, 4]`` float32."""
    env = MetaWorldTask(task)
    expert = expert_policy(task)
    windows, actions = [], []
    for s in seeds:
        ep = expert_rollout(task, s, env=env, expert=expert)
        for t in times:
            idx = np.clip(np.arange(t - n_obs_steps + 1, t + 1), 0, ep["steps"] - 1)
            windows.append(ep["obs"][idx])
            actions.append(ep["action"][idx[-1]])
    env.close()
    return np.asarray(windows, dtype=np.float32), np.asarray(actions, dtype=np.float32)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="npz path (keep it out of git: e.g. .data/, which is ignored)")
    ap.add_argument("--task", default=DEFAULT_TASK, choices=sorted(TASK_EXPERTS))
    ap.add_argument("--episodes", type=int, default=200, help="expert episodes (seeds 0..episodes-1)")
    ap.add_argument("--noise", type=float, default=0.1, help="std of the executed actions' noise (labels stay clean)")
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--obs-out", default=None, help="also write recorded observation windows here (tests/data/...)")
    args = ap.parse_args(argv)

    from importlib.metadata import version

    t0 = time.time()
    demos = collect_demonstrations(args.task, range(args.episodes), max_steps=args.max_steps, action_noise=args.noise)
    seconds = time.time() - t0
    lengths = np.diff(np.concatenate([[0], demos["episode_ends"]]))
    meta = {
        "task": args.task,
        "episodes_attempted": demos["attempted"],
        "episodes_kept": int(len(demos["episode_ends"])),
        "expert_success_rate": demos["succeeded"] / max(1, demos["attempted"]),
        "samples": int(len(demos["obs"])),
        "episode_length": {"min": int(lengths.min()), "median": float(np.median(lengths)), "max": int(lengths.max())},
        "noise": args.noise,
        "max_steps": args.max_steps,
        "seeds": f"0..{args.episodes - 1}",
        "eval_seed_base": EVAL_SEED_BASE,
        "metaworld": version("metaworld"),
        "mujoco": version("mujoco"),
        "seconds": round(seconds, 1),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(
        args.out,
        obs=demos["obs"],
        action=demos["action"],
        episode_ends=demos["episode_ends"],
        seeds=demos["seeds"],
        meta=np.asarray(json.dumps(meta)),
    )
    meta["path"] = os.path.abspath(args.out)
    meta["bytes"] = os.path.getsize(args.out)
    if args.obs_out:
        windows, expert_actions = recorded_windows(args.task)
        np.savez_compressed(args.obs_out, obs=windows, expert_action=expert_actions, task=np.asarray(args.task))
        meta["obs_out"] = {"path": args.obs_out, "windows": int(len(windows)), "bytes": os.path.getsize(args.obs_out)}
    print(json.dumps(meta, indent=1))
    return meta


if __name__ == "__main__":
    main()
