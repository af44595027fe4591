"""The policy's Meta-World task (paratriton/policies/metaworld_task.py): seeded resets fix the episode, the scripted
expert solves it, and the module imports without the simulator. Skipped where the ``[sim]`` extra is not installed
(except the import check)."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest


def test_imports_without_metaworld(monkeypatch):
    monkeypatch.setitem(sys.modules, "metaworld", None)  # makes "import metaworld" raise ImportError
    import paratriton.policies.metaworld_task as mt

    mt = importlib.reload(mt)
    with pytest.raises(ImportError, match=r"paratriton\[sim\]"):
        mt.MetaWorldTask("push-v3")
    with pytest.raises(ValueError, match="task must be one of"):
        mt.expert_policy("no-such-task-v3")


@pytest.fixture(scope="module")
def mt():
    pytest.importorskip("metaworld")
    import paratriton.policies.metaworld_task as mt

    return importlib.reload(mt)


def test_seeded_reset_fixes_the_episode(mt):
    env = mt.MetaWorldTask("push-v3")
    expert = mt.expert_policy("push-v3")
    a = mt.expert_rollout("push-v3", seed=5, env=env, expert=expert)
    b = mt.expert_rollout("push-v3", seed=9, env=env, expert=expert)
    c = mt.expert_rollout("push-v3", seed=5, env=env, expert=expert)  # after another episode
    d = mt.expert_rollout("push-v3", seed=5)  # a fresh environment
    assert np.array_equal(a["obs"], c["obs"]) and np.array_equal(a["obs"], d["obs"])
    assert np.array_equal(a["action"], d["action"])
    # another seed: another puck and goal
    assert np.abs(a["obs"][0, 4:7] - b["obs"][0, 4:7]).max() > 1e-3
    assert np.abs(a["obs"][0, 36:39] - b["obs"][0, 36:39]).max() > 1e-3


def test_expert_solves_and_data_layout(mt):
    demos = mt.collect_demonstrations("push-v3", seeds=range(3), action_noise=0.1)
    assert demos["succeeded"] == demos["attempted"] == 3
    n = demos["episode_ends"][-1]
    assert demos["obs"].shape == (n, mt.OBS_DIM) and demos["action"].shape == (n, mt.ACTION_DIM)
    assert demos["obs"].dtype == np.float32 and demos["action"].dtype == np.float32
    assert np.abs(demos["action"]).max() <= 1.0
    assert 30 <= np.diff(np.concatenate([[0], demos["episode_ends"]])).min()  # a multi-step task
    # the labels are the clean expert's actions at the recorded observations
    expert = mt.expert_policy("push-v3")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        relabel = np.stack([np.clip(expert.get_action(o.astype(np.float64)), -1, 1) for o in demos["obs"][:20]])
    np.testing.assert_allclose(relabel, demos["action"][:20], atol=1e-4)
