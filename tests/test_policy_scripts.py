"""The policy's benchmark scripts: the training windows (the reference's padded sampler), the schedules, the Wilson
interval, and one lockstep evaluation comparing two methods (skipped without the ``[sim]`` extra)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import policy_eval  # noqa: E402
import policy_train  # noqa: E402


def test_sequence_windows_pad_like_the_reference():
    ends = np.array([5, 12])  # episodes [0, 5) and [5, 12)
    w = policy_train.sequence_windows(ends, horizon=4, pad_before=1, pad_after=2)
    # episode 0 (length 5): starts -1..3; episode 1 (length 7): starts -1..5
    assert w.shape == (5 + 7, 4)
    assert w[0].tolist() == [0, 0, 1, 2]  # the first step repeated before the start
    assert w[4].tolist() == [3, 4, 4, 4]  # the last step repeated after the end
    assert w[5].tolist() == [5, 5, 6, 7] and w[-1].tolist() == [10, 11, 11, 11]
    # a window never mixes episodes
    for row in w:
        assert (row < 5).all() or (row >= 5).all()


def test_schedules():
    assert policy_train.ema_decay(0) == 0.0
    assert policy_train.ema_decay(10**9) == 0.9999
    assert abs(policy_train.ema_decay(1000) - (1 - 1001**-0.75)) < 1e-12
    assert policy_train.lr_factor(0, 1000, 100) == 0.0 and policy_train.lr_factor(100, 1000, 100) == 1.0
    assert abs(policy_train.lr_factor(550, 1000, 100) - 0.5) < 1e-12 and policy_train.lr_factor(1000, 1000, 100) == 0.0


def test_wilson_interval():
    lo, hi = policy_eval.wilson_interval(25, 50)
    assert abs(lo - 0.3664) < 1e-3 and abs(hi - 0.6336) < 1e-3  # textbook values
    lo, hi = policy_eval.wilson_interval(50, 50)
    assert hi == 1.0 and abs(lo - 0.9287) < 1e-3
    assert policy_eval.wilson_interval(0, 2) == (0.0, pytest.approx(0.6576, abs=1e-4))


def test_train_smoke_then_eval_two_methods(tmp_path, monkeypatch, capsys):
    """A few training steps on a tiny dataset, then the lockstep evaluation with 'sequential' and a stand-in exact
    method (the sequential sampler under the name picard): same outcomes, zero first-chunk distance; an unknown
    method is refused before any episode."""
    pytest.importorskip("metaworld")
    from paratriton.models.policy import DiffusionUnetLowdimPolicy
    from paratriton.policies.metaworld_task import collect_demonstrations

    demos = collect_demonstrations("push-v3", seeds=range(2))
    data = tmp_path / "demos.npz"
    np.savez(data, obs=demos["obs"], action=demos["action"], episode_ends=demos["episode_ends"],
             meta=np.asarray(json.dumps({"task": "push-v3"})))  # fmt: skip
    monkeypatch.setitem(policy_train.POLICY_UNET_CONFIG, "down_dims", [16, 32, 64])
    monkeypatch.setitem(policy_train.POLICY_UNET_CONFIG, "diffusion_step_embed_dim", 16)
    out = tmp_path / "weights"
    saved = policy_train.main(["--data", str(data), "--out", str(out), "--device", "cpu", "--steps", "3",
                               "--batch", "8"])  # fmt: skip
    assert saved["training"]["steps"] == 3 and saved["task"]["task"] == "push-v3"

    stock = DiffusionUnetLowdimPolicy.predict_action

    def predict_action(self, obs, generator=None, method="sequential", **options):
        self.num_inference_steps = 10  # keep the CPU run short
        return stock(self, obs, generator=generator, method="sequential" if method == "picard" else method)

    monkeypatch.setattr(DiffusionUnetLowdimPolicy, "predict_action", predict_action)
    args = ["--weights", str(out), "--episodes", "2", "--device", "cpu", "--max-steps", "8"]
    with pytest.raises(SystemExit):  # an unknown method is refused by name before any episode runs
        policy_eval.main(args + ["--methods", "missing"])
    assert "--methods: invalid choice: 'missing'" in capsys.readouterr().err
    report = policy_eval.main(args + ["--methods", "picard", "--out", str(tmp_path / "eval.json")])
    m = report["methods"]
    assert list(m) == ["sequential", "picard"]  # sequential added first as the reference
    assert m["sequential"]["calls"] == 1 and m["sequential"]["episodes"] == 2
    assert m["picard"]["vs_sequential"]["agreement"] == 1.0  # the stand-in is the sequential sampler itself
    assert m["picard"]["vs_sequential"]["first_chunk_rms"] == 0.0
    assert json.loads((tmp_path / "eval.json").read_text())["config"]["task"] == "push-v3"
    assert torch.is_grad_enabled()
