"""The policy's task: a Meta-World v3 environment with seeded resets and its scripted expert.

Meta-World (with ``mujoco`` and ``gymnasium``) is the optional ``[sim]`` extra; this module imports it only when an
environment or an expert is made, so it imports without it.

The default task is ``push-v3`` (goal observable): the gripper must move above a puck, descend onto it and push it
to a goal marker; puck and goal positions are drawn per episode. Its scripted expert succeeds on every seed tried
(45-70 steps), and the policy must carry out a multi-stage plan from the observation alone. Observations are the
standard 39-d vector (hand position, gripper opening, object pose, the previous frame's 18 values, goal position),
actions 4-d in ``[-1, 1]`` (hand displacement xyz, gripper effort).

Seeding: ``reset(seed)`` re-seeds the environment's generator and draws the task's random vector (object and goal
positions) from it, so a seed fixes the episode whatever ran before; MuJoCo's state is reset in full.

    env = MetaWorldTask("push-v3")
    obs = env.reset(seed=3)                       # [39] float64
    obs, success = env.step(action)               # action [4] in [-1, 1]
    demo = expert_rollout("push-v3", seed=3)      # {"obs": [T, 39], "action": [T, 4], "success": True, ...}
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_TASK",
    "OBS_DIM",
    "ACTION_DIM",
    "TASK_EXPERTS",
    "MetaWorldTask",
    "expert_policy",
    "expert_rollout",
    "collect_demonstrations",
    "require_metaworld",
]

DEFAULT_TASK = "push-v3"
OBS_DIM = 39
ACTION_DIM = 4
#: Meta-World's limit on an episode's length (``max_path_length``).
MAX_PATH_LENGTH = 500

#: Tasks this module offers, with the class name of their scripted expert in ``metaworld.policies``.
TASK_EXPERTS: dict[str, str] = {
    "push-v3": "SawyerPushV3Policy",
    "pick-place-v3": "SawyerPickPlaceV3Policy",
    "door-open-v3": "SawyerDoorOpenV3Policy",
    "drawer-close-v3": "SawyerDrawerCloseV3Policy",
    "button-press-topdown-v3": "SawyerButtonPressTopdownV3Policy",
    "push-back-v3": "SawyerPushBackV3Policy",
}


def require_metaworld():
    """Import and return ``metaworld``, or raise an ImportError naming the ``[sim]`` extra."""
    try:
        import metaworld  # noqa: F401
        import metaworld.policies  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "the policy's task needs Meta-World: pip install 'paratriton[sim]' (metaworld, mujoco, gymnasium)"
        ) from e
    return metaworld


def _check_task(task: str) -> None:
    if task not in TASK_EXPERTS:
        raise ValueError(f"task must be one of {sorted(TASK_EXPERTS)}, got {task!r}")


def expert_policy(task: str = DEFAULT_TASK):
    """Meta-World's scripted expert of ``task``: ``expert.get_action(obs [39]) -> [4]`` (not clipped)."""
    _check_task(task)
    mw = require_metaworld()
    return getattr(mw.policies, TASK_EXPERTS[task])()


class MetaWorldTask:
    """One Meta-World environment of ``task`` (goal observable) with seeded resets.

    ``reset(seed) -> obs [39]``; ``step(action [4]) -> (obs [39], success)``; observations are float64 numpy
    arrays, actions are clipped to ``[-1, 1]``. ``max_episode_steps`` (at most 500, Meta-World's own limit) is only
    recorded here; the caller decides when to stop."""

    def __init__(self, task: str = DEFAULT_TASK, max_episode_steps: int = 300) -> None:
        _check_task(task)
        if not 1 <= max_episode_steps <= MAX_PATH_LENGTH:
            raise ValueError(f"max_episode_steps must be in [1, {MAX_PATH_LENGTH}], got {max_episode_steps}")
        require_metaworld()
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

        self.task = task
        self.max_episode_steps = int(max_episode_steps)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{task}-goal-observable"]()
        # draw the task's random vector (object and goal positions) from the env's own seeded generator at each
        # reset, instead of the global numpy generator or a vector frozen at construction
        self.env._freeze_rand_vec = False
        self.env.seeded_rand_vec = True
        self.steps = 0
        self.seed: int | None = None

    def reset(self, seed: int) -> np.ndarray:
        """Start the episode of ``seed``: ``-> obs [39]`` float64."""
        self.env.seed(int(seed))
        obs, _ = self.env.reset()
        self.steps = 0
        self.seed = int(seed)
        return np.asarray(obs, dtype=np.float64)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, bool]:
        """Apply ``action [4]`` (clipped to [-1, 1]): ``-> (obs [39] float64, success)``."""
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(ACTION_DIM), -1.0, 1.0)
        obs, _, _, _, info = self.env.step(a)
        self.steps += 1
        return np.asarray(obs, dtype=np.float64), bool(info["success"])

    @property
    def task_vector(self) -> np.ndarray:
        """The episode's random vector (object and goal positions), for checks and records."""
        return np.asarray(self.env._last_rand_vec, dtype=np.float64).copy()

    def close(self) -> None:
        self.env.close()


def expert_rollout(
    task: str = DEFAULT_TASK,
    seed: int = 0,
    max_steps: int = 300,
    action_noise: float = 0.0,
    env: MetaWorldTask | None = None,
    expert: Any = None,
) -> dict[str, Any]:
    """One episode of the scripted expert, stopped at the first success (that step included) or ``max_steps``.

    ``action_noise`` > 0 executes the expert's action plus Gaussian noise of that standard deviation (seeded by
    ``seed``) while recording the clean expert action (DART-style demonstrations: the data visit the states the
    policy's own errors lead to). Returns ``{"obs": [T, 39] float32, "action": [T, 4] float32 (in [-1, 1]),
    "success": bool, "steps": T, "seed": seed}``; ``action[t]`` is the expert's action at ``obs[t]``."""
    env = env if env is not None else MetaWorldTask(task, max_episode_steps=max_steps)
    expert = expert if expert is not None else expert_policy(task)
    rng = np.random.default_rng([int(seed), 7919])
    obs = env.reset(seed)
    obs_list, act_list = [], []
    success = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the experts warn when their gains exceed the action range
        for _ in range(max_steps):
            a = np.clip(expert.get_action(obs), -1.0, 1.0)
            obs_list.append(obs)
            act_list.append(a)
            executed = a + action_noise * rng.standard_normal(ACTION_DIM) if action_noise > 0 else a
            obs, success = env.step(executed)
            if success:
                break
    return {
        "obs": np.asarray(obs_list, dtype=np.float32),
        "action": np.asarray(act_list, dtype=np.float32),
        "success": bool(success),
        "steps": len(obs_list),
        "seed": int(seed),
    }


def collect_demonstrations(
    task: str = DEFAULT_TASK,
    seeds: range | list[int] = range(100),
    max_steps: int = 300,
    action_noise: float = 0.0,
    successful_only: bool = True,
) -> dict[str, Any]:
    """Expert episodes of ``seeds`` in the reference's replay-buffer layout: ``obs [N, 39]`` and ``action [N, 4]``
    (float32, episodes concatenated), ``episode_ends [E]`` (int64, cumulative ends), ``seeds [E]`` (the kept
    episodes' seeds); plus ``attempted`` and ``succeeded`` counts and ``steps [attempted]``. Failed episodes are
    dropped when ``successful_only``."""
    env = MetaWorldTask(task, max_episode_steps=max_steps)
    expert = expert_policy(task)
    obs, act, ends, kept, steps = [], [], [], [], []
    n_ok = 0
    total = 0
    for s in seeds:
        ep = expert_rollout(task, s, max_steps=max_steps, action_noise=action_noise, env=env, expert=expert)
        steps.append(ep["steps"])
        n_ok += ep["success"]
        if successful_only and not ep["success"]:
            continue
        obs.append(ep["obs"])
        act.append(ep["action"])
        total += ep["steps"]
        ends.append(total)
        kept.append(s)
    env.close()
    return {
        "obs": np.concatenate(obs) if obs else np.zeros((0, OBS_DIM), np.float32),
        "action": np.concatenate(act) if act else np.zeros((0, ACTION_DIM), np.float32),
        "episode_ends": np.asarray(ends, dtype=np.int64),
        "seeds": np.asarray(kept, dtype=np.int64),
        "steps": np.asarray(steps, dtype=np.int64),
        "attempted": len(steps),
        "succeeded": int(n_ok),
    }
