"""The Chi-style policy (paratriton/models/policy.py): the reference's sampling loop, normalization, the executed
action window, saving and loading, and (when shipped) the trained weights on recorded observations."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from policy_refs import ChiLowdimPolicy

from paratriton.models import MODELS, POLICY_WEIGHTS_DIR, LimitsNormalizer, load, load_policy, read_config, save_policy
from paratriton.models.policy import build_policy

OBS, ACT, TO, TA, H = 6, 3, 2, 8, 16
OBS_DATA = os.path.join(os.path.dirname(__file__), "data", "policy_obs.npz")
SHIPPED = os.path.exists(os.path.join(POLICY_WEIGHTS_DIR, "model.safetensors"))


def tiny_policy(seed: int = 0):
    torch.manual_seed(seed)
    cfg = {
        "policy": dict(horizon=H, obs_dim=OBS, action_dim=ACT, n_obs_steps=TO, n_action_steps=TA),
        "unet": dict(diffusion_step_embed_dim=16, down_dims=[16, 32, 64], kernel_size=5, n_groups=8),
    }
    policy = build_policy(cfg)
    rng = np.random.default_rng(seed)
    policy.normalizer["obs"] = LimitsNormalizer.fit(rng.uniform(-3, 5, size=(50, OBS)))
    policy.normalizer["action"] = LimitsNormalizer.fit(rng.uniform(-0.5, 2.0, size=(50, ACT)))
    return policy.eval()


def reference_conditional_sample(policy, condition_data, condition_mask, global_cond, generator):
    """The reference's DiffusionUnetLowdimPolicy.conditional_sample, statement for statement (inpainting mask
    included): ``policy_refs.ChiLowdimPolicy``'s copy, run with this policy's network and scheduler."""
    ref = ChiLowdimPolicy(policy.model, policy.noise_scheduler, H, OBS, ACT, TA, TO, policy.num_inference_steps)
    return ref.conditional_sample(condition_data, condition_mask, global_cond=global_cond, generator=generator)


def test_scheduler_is_the_references():
    sched = tiny_policy().noise_scheduler
    assert type(sched).__name__ == "DDPMScheduler"
    c = sched.config
    assert (c.num_train_timesteps, c.beta_schedule, c.prediction_type, c.clip_sample) == (
        100,
        "squaredcos_cap_v2",
        "epsilon",
        True,
    )
    assert tiny_policy().num_inference_steps == 100


def test_conditional_sample_is_the_reference_loop():
    policy = tiny_policy()
    obs = torch.randn(3, TO, OBS)
    cond = policy.global_cond(obs)
    ours = policy.conditional_sample(cond, generator=torch.Generator().manual_seed(7))
    data = torch.zeros(3, H, ACT)
    with torch.no_grad():
        ref = reference_conditional_sample(policy, data, torch.zeros_like(data, dtype=torch.bool), cond,
                                           torch.Generator().manual_seed(7))  # fmt: skip
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    assert ours.abs().max() <= 1.0 + 1e-6  # clip_sample keeps the last step's x0 in [-1, 1]


def test_predict_action_window_and_units():
    policy = tiny_policy()
    obs = np.random.default_rng(1).normal(size=(4, TO, OBS)).astype(np.float32)
    act = policy.predict_action(obs, generator=torch.Generator().manual_seed(3))
    assert act.shape == (4, TA, ACT) and act.dtype == torch.float32
    full = policy.conditional_sample(
        policy.global_cond(torch.from_numpy(obs)), generator=torch.Generator().manual_seed(3)
    )
    raw = policy.normalizer["action"].unnormalize(full)
    torch.testing.assert_close(act, raw[:, TO - 1 : TO - 1 + TA], rtol=0, atol=0)
    # actions live in the data's range: [-1, 1] maps back to [-0.5, 2.0] (up to the fitted sample's extremes)
    assert act.min() >= -0.5 - 1e-4 and act.max() <= 2.0 + 1e-4
    # same generator seed, same actions; numpy and torch inputs agree
    again = policy.predict_action(torch.from_numpy(obs), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(act, again, rtol=0, atol=0)


def test_predict_action_checks():
    policy = tiny_policy()
    with pytest.raises(ValueError, match="obs must be"):
        policy.predict_action(np.zeros((2, TO + 1, OBS)))
    with pytest.raises(ValueError, match="obs must be"):
        policy.predict_action(np.zeros((2, TO, OBS - 1)))
    with pytest.raises(ValueError, match="method='newton' is not supported"):
        policy.predict_action(np.zeros((1, TO, OBS)), method="newton")
    with pytest.raises(TypeError, match="method='sequential' takes no options"):
        policy.predict_action(np.zeros((1, TO, OBS)), tol=1e-3)


@pytest.mark.parametrize("method", ["taa", "picard"])
def test_parallel_predict_action_equals_the_reference_loop(method):
    policy = tiny_policy()
    obs = np.random.default_rng(2).normal(size=(3, TO, OBS)).astype(np.float32)
    ref = policy.predict_action(obs, generator=torch.Generator().manual_seed(4))
    out = policy.predict_action(obs, generator=torch.Generator().manual_seed(4), method=method, tol=1e-5)
    assert policy.last_result.converged and policy.last_result.iterations < policy.num_inference_steps
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)
    warm = policy.predict_action(obs, generator=torch.Generator().manual_seed(4), method=method, warm_start=True)
    torch.testing.assert_close(warm, ref, rtol=0, atol=5e-3)


def test_normalizer_limits_mode():
    rng = np.random.default_rng(0)
    data = rng.uniform(-2, 7, size=(200, 4))
    data[:, 2] = 0.25  # a constant dimension
    norm = LimitsNormalizer.fit(data)
    x = torch.as_tensor(data, dtype=torch.float32)
    n = norm.normalize(x)
    torch.testing.assert_close(n.min(0).values[[0, 1, 3]], torch.full((3,), -1.0), rtol=0, atol=1e-6)
    torch.testing.assert_close(n.max(0).values[[0, 1, 3]], torch.full((3,), 1.0), rtol=0, atol=1e-6)
    assert torch.all(n[:, 2] == 0) and norm.scale[2] == 1  # shifted to 0, not scaled
    torch.testing.assert_close(norm.unnormalize(n), x, rtol=1e-6, atol=1e-6)


def test_compute_loss_trains():
    policy = tiny_policy().train()
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(32, TO, OBS)
    action = torch.linspace(-0.5, 2.0, H)[None, :, None].expand(32, H, ACT).contiguous()
    opt = torch.optim.AdamW(policy.model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = policy.compute_loss(obs, action, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_save_load_round_trip(tmp_path):
    policy = tiny_policy()
    cfg = save_policy(policy, str(tmp_path), extra={"task": {"name": "test"}})
    assert cfg["files"]["model.safetensors"]["bytes"] == os.path.getsize(tmp_path / "model.safetensors")
    loaded = load_policy(device="cpu", weights_dir=str(tmp_path))
    assert read_config(str(tmp_path))["task"] == {"name": "test"}
    assert loaded.dtype == torch.float32 and loaded.horizon == H and loaded.n_action_steps == TA
    # the network ships in float16: the loaded one equals the original rounded to float16
    for (k, a), b in zip(policy.model.state_dict().items(), loaded.model.state_dict().values()):
        torch.testing.assert_close(b, a.half().float(), rtol=0, atol=0, msg=k)
    torch.testing.assert_close(loaded.normalizer["obs"].scale, policy.normalizer["obs"].scale, rtol=0, atol=0)
    obs = torch.randn(2, TO, OBS)
    a = loaded.predict_action(obs, generator=torch.Generator().manual_seed(0))
    b = policy.predict_action(obs, generator=torch.Generator().manual_seed(0))
    assert (a - b).abs().max() < 0.05  # only the float16 rounding of the weights differs


def test_load_checks(tmp_path):
    with pytest.raises(FileNotFoundError, match="policy_train.py"):
        load_policy(device="cpu", weights_dir=str(tmp_path))
    save_policy(tiny_policy(), str(tmp_path))
    path = tmp_path / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        load_policy(device="cpu", weights_dir=str(tmp_path))


def test_registered():
    assert "policy" in MODELS


@pytest.mark.skipif(not SHIPPED, reason="the trained policy's weights are not shipped in this checkout")
def test_shipped_policy_on_recorded_observations():
    policy = load("policy", device="cpu")
    cfg = read_config(POLICY_WEIGHTS_DIR)
    assert os.path.getsize(os.path.join(POLICY_WEIGHTS_DIR, "model.safetensors")) <= 8 * 2**20
    assert (policy.horizon, policy.n_obs_steps, policy.n_action_steps) == (16, 2, 8)
    assert policy.num_inference_steps == 100 and policy.noise_scheduler.config.clip_sample
    assert cfg["files"]["model.safetensors"]["sha256"]
    rec = np.load(OBS_DATA)
    obs, expert = rec["obs"], rec["expert_action"]  # [K, 2, 39], [K, 4]: expert episodes of evaluation seeds
    g = lambda: torch.Generator().manual_seed(0)
    act = policy.predict_action(obs, generator=g())
    assert act.shape == (len(obs), 8, policy.action_dim)
    assert act.abs().max() <= 1.0 + 1e-3  # Meta-World actions are in [-1, 1] and the normalizer maps back there
    torch.testing.assert_close(policy.predict_action(obs, generator=g()), act, rtol=0, atol=0)
    # the policy imitates: its first executed hand displacement points the expert's way on unseen episodes
    cos = torch.nn.functional.cosine_similarity(act[:, 0, :3], torch.from_numpy(expert[:, :3]), dim=-1)
    assert cos.mean() > 0.5, cos
