"""The policy adapters against faithful copies of Chi et al.'s and LeRobot's sampling loops (``policy_refs.py``)."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from policy_refs import ChiLowdimPolicy, LeRobotDiffusionModel, LeRobotDiffusionPolicy, TinyUnet1D

import paratriton
from paratriton.policies.adapters import parallelize_policy, policy_kind, shift_trajectory

HORIZON, OBS, ACT, TO, NA = 16, 6, 3, 2, 8


def _scheduler(kind: str):
    cfg = dict(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True, prediction_type="epsilon")
    s = DDPMScheduler(**cfg) if kind == "ddpm" else DDIMScheduler(set_alpha_to_one=True, **cfg)
    s.alphas_cumprod = s.alphas_cumprod.double()
    return s


def _chi(kind="ddpm", steps=100):
    net = TinyUnet1D(ACT, TO * OBS).double()
    return ChiLowdimPolicy(net, _scheduler(kind), HORIZON, OBS, ACT, NA, TO, steps).double()


def _lerobot(kind="ddpm", steps=100):
    net = TinyUnet1D(ACT, TO * OBS).double()
    return LeRobotDiffusionPolicy(LeRobotDiffusionModel(net, _scheduler(kind), HORIZON, ACT, NA, TO, steps)).double()


def _obs(B=2, seed=0):
    return torch.randn(B, TO, OBS, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


TIGHT = {"tol": 1e-9}


@pytest.mark.parametrize("kind,steps", [("ddpm", 100), ("ddim", 16)])
@pytest.mark.parametrize("method", ["taa", "picard", "srds"])
def test_chi_policy_same_actions_as_its_stock_loop(kind, steps, method):
    policy = _chi(kind, steps)
    obs = {"obs": _obs()}
    torch.manual_seed(5)  # Chi's predict_action passes no generator: the global RNG draws x_T and the step noise
    ref = policy.predict_action(obs)["action"]
    fast = parallelize_policy(policy, method, **TIGHT)
    torch.manual_seed(5)
    out = fast.predict_action(obs)["action"]
    assert fast.paratriton.last_result.converged
    assert out.shape == ref.shape == (2, NA, ACT)
    assert (out - ref).abs().max().item() <= 1e-7
    if method != "srds" and kind == "ddpm":
        assert fast.paratriton.last_result.iterations < steps  # solved in parallel, not step by step


@pytest.mark.parametrize("kind,steps", [("ddpm", 100), ("ddim", 16)])
def test_lerobot_policy_same_actions_as_its_stock_loop_with_a_generator(kind, steps):
    policy = _lerobot(kind, steps)
    batch = {"observation.state": _obs(3, 1)}
    ref = policy.predict_action_chunk(batch, generator=torch.Generator().manual_seed(9))
    fast = parallelize_policy(policy, "taa", **TIGHT)
    out = fast.predict_action_chunk(batch, generator=torch.Generator().manual_seed(9))
    assert (out - ref).abs().max().item() <= 1e-7
    assert fast.paratriton.last_result.converged and policy_kind(fast.diffusion) == "lerobot_model"


def test_default_tolerance_actions_within_2e_3():
    policy = _chi()
    obs = {"obs": _obs(1, 3)}
    torch.manual_seed(1)
    ref = policy.predict_action(obs)["action"]
    fast = parallelize_policy(policy, "taa")
    torch.manual_seed(1)
    out = fast.predict_action(obs)["action"]
    assert (out - ref).square().mean().sqrt().item() <= 2e-3


def test_the_users_policy_is_never_changed():
    policy = _lerobot()
    inner = policy.diffusion
    fast = parallelize_policy(policy, "taa")
    assert policy.diffusion is inner and "conditional_sample" not in inner.__dict__
    assert fast.diffusion is not inner and fast.diffusion.unet is inner.unet  # weights shared
    assert not hasattr(policy, "paratriton") and not hasattr(inner, "paratriton")
    chi = _chi()
    parallelize_policy(chi, "taa")
    assert "conditional_sample" not in chi.__dict__


@pytest.mark.parametrize("mode", [True, "sample"])
def test_warm_start_gives_the_same_actions(mode):
    """Receding horizon: consecutive observations; the warm start changes the iterations, never the answer (how many
    it saves is measured on the trained policy's episodes, benchmarks/policy_eval.py)."""
    policy = _chi()
    cold = parallelize_policy(policy, "taa", **TIGHT)
    warm = parallelize_policy(policy, "taa", warm_start=mode, **TIGHT)
    base = _obs(1, 4)
    iters_cold, iters_warm = [], []
    for k in range(4):
        obs = {"obs": base + 0.05 * k}
        torch.manual_seed(100 + k)
        a = cold.predict_action(obs)["action"]
        torch.manual_seed(100 + k)
        b = warm.predict_action(obs)["action"]
        assert (a - b).abs().max().item() <= 1e-7
        iters_cold.append(cold.paratriton.last_result.iterations)
        iters_warm.append(warm.paratriton.last_result.iterations)
    assert iters_warm[0] == iters_cold[0]  # the first chunk has nothing to start from
    assert warm.paratriton.previous is not None and warm.paratriton.previous.shape[0] == 101


def test_shift_trajectory_drops_the_executed_actions():
    traj = torch.arange(2 * 1 * 6 * 1, dtype=torch.float64).reshape(2, 1, 6, 1)
    out = shift_trajectory(traj, 4)
    assert out[0, 0, :, 0].tolist() == [4.0, 5.0, 5.0, 5.0, 5.0, 5.0]
    assert torch.equal(shift_trajectory(traj, 0), traj)


def test_unsupported_policies_are_named():
    with pytest.raises(TypeError, match="not a diffusion policy paratriton recognises"):
        parallelize_policy(torch.nn.Linear(2, 2))
    policy = _chi()
    fast = parallelize_policy(policy, "taa")
    data = torch.zeros(1, HORIZON, ACT, dtype=torch.float64)
    mask = torch.zeros_like(data, dtype=torch.bool)
    mask[:, 0] = True
    with pytest.raises(NotImplementedError, match="condition_mask has True entries"):
        fast.conditional_sample(data, mask, global_cond=torch.zeros(1, TO * OBS, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"scheduler.step arguments \['variance_noise'\]"):
        fast.conditional_sample(data, mask & False, global_cond=torch.zeros(1, TO * OBS), variance_noise=None)


def test_denoise_is_public():
    assert paratriton.denoise is not None and copy.copy(paratriton.denoise)


def test_a_stochastic_samplers_warm_start_is_its_shifted_sample():
    """DDPM's solved trajectory carries the previous chunk's step noise: ``warm_start=True`` hands ``denoise`` the
    shifted sample (``init_sample``: its Gaussian guess with this chunk's noise); a deterministic sampler's the
    shifted trajectory. ``is_stochastic`` reads it from the step operator."""
    from paratriton.denoise import is_stochastic
    from paratriton.policies.adapters import PolicyState

    assert is_stochastic(DDPMScheduler(clip_sample=True), 100)
    assert not is_stochastic(DDIMScheduler(), 16) and is_stochastic(DDIMScheduler(), 16, eta=0.5)
    state = PolicyState("taa", {}, True, shift=2)
    state.previous = torch.arange(11 * 1 * 6 * 2, dtype=torch.float64).reshape(11, 1, 6, 2)
    stoch = state.init_for((1, 6, 2), 10, stochastic=True)
    det = state.init_for((1, 6, 2), 10, stochastic=False)
    assert set(stoch) == {"init_sample"} and torch.equal(
        stoch["init_sample"], shift_trajectory(state.previous[:1], 2)[0]
    )
    assert set(det) == {"init"} and torch.equal(det["init"], shift_trajectory(state.previous[:10], 2))
    assert state.init_for((1, 6, 2), 9, stochastic=True) == {}  # another schedule length: cold
