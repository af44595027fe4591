"""Faithful copies of the two reference diffusion policies' sampling code (a few dozen lines each), so the
adapters are tested against the loops users run, without installing either package.

* ``ChiLowdimPolicy``: real-stanford/diffusion_policy ``DiffusionUnetLowdimPolicy`` (``conditional_sample`` and
  ``predict_action`` with ``obs_as_global_cond=True``, ``oa_step_convention=True``, identity normalizer).
* ``LeRobotDiffusionModel`` / ``LeRobotDiffusionPolicy``: LeRobot's ``DiffusionModel.conditional_sample`` and
  ``generate_actions`` (global conditioning from the flattened observation history).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch


class ChiLowdimPolicy(torch.nn.Module):
    def __init__(self, model, noise_scheduler, horizon, obs_dim, action_dim, n_action_steps, n_obs_steps, steps):
        super().__init__()
        self.model = model
        self.noise_scheduler = noise_scheduler
        self.horizon, self.obs_dim, self.action_dim = horizon, obs_dim, action_dim
        self.n_action_steps, self.n_obs_steps = n_action_steps, n_obs_steps
        self.num_inference_steps = steps
        self.kwargs = {}

    def conditional_sample(
        self, condition_data, condition_mask, local_cond=None, global_cond=None, generator=None, **kwargs
    ):
        model = self.model
        scheduler = self.noise_scheduler
        trajectory = torch.randn(
            size=condition_data.shape, dtype=condition_data.dtype, device=condition_data.device, generator=generator
        )
        scheduler.set_timesteps(self.num_inference_steps)
        for t in scheduler.timesteps:
            trajectory[condition_mask] = condition_data[condition_mask]
            model_output = model(trajectory, t, local_cond=local_cond, global_cond=global_cond)
            trajectory = scheduler.step(model_output, t, trajectory, generator=generator, **kwargs).prev_sample
        trajectory[condition_mask] = condition_data[condition_mask]
        return trajectory

    @torch.no_grad()
    def predict_action(self, obs_dict):
        nobs = obs_dict["obs"]
        B = nobs.shape[0]
        To, T, Da = self.n_obs_steps, self.horizon, self.action_dim
        global_cond = nobs[:, :To].reshape(nobs.shape[0], -1)
        cond_data = torch.zeros(size=(B, T, Da), device=nobs.device, dtype=nobs.dtype)
        cond_mask = torch.zeros_like(cond_data, dtype=torch.bool)
        nsample = self.conditional_sample(cond_data, cond_mask, local_cond=None, global_cond=global_cond, **self.kwargs)
        action_pred = nsample[..., :Da]
        start = To - 1
        return {"action": action_pred[:, start : start + self.n_action_steps], "action_pred": action_pred}


class LeRobotDiffusionModel(torch.nn.Module):
    def __init__(self, unet, noise_scheduler, horizon, action_dim, n_action_steps, n_obs_steps, steps):
        super().__init__()
        self.config = SimpleNamespace(
            horizon=horizon,
            action_feature=SimpleNamespace(shape=(action_dim,)),
            n_action_steps=n_action_steps,
            n_obs_steps=n_obs_steps,
        )
        self.unet = unet
        self.noise_scheduler = noise_scheduler
        self.num_inference_steps = steps

    def conditional_sample(self, batch_size, global_cond=None, generator=None, noise=None):
        p = next(self.parameters())
        device, dtype = p.device, p.dtype
        sample = (
            noise
            if noise is not None
            else torch.randn(
                size=(batch_size, self.config.horizon, self.config.action_feature.shape[0]),
                dtype=dtype,
                device=device,
                generator=generator,
            )
        )
        self.noise_scheduler.set_timesteps(self.num_inference_steps)
        for t in self.noise_scheduler.timesteps:
            model_output = self.unet(
                sample, torch.full(sample.shape[:1], t, dtype=torch.long, device=sample.device), global_cond=global_cond
            )
            sample = self.noise_scheduler.step(model_output, t, sample, generator=generator).prev_sample
        return sample

    def generate_actions(self, batch, generator=None):
        obs = batch["observation.state"]
        global_cond = obs[:, : self.config.n_obs_steps].flatten(1)
        actions = self.conditional_sample(obs.shape[0], global_cond=global_cond, generator=generator)
        start = self.config.n_obs_steps - 1
        return actions[:, start : start + self.config.n_action_steps]


class LeRobotDiffusionPolicy(torch.nn.Module):
    def __init__(self, diffusion: LeRobotDiffusionModel):
        super().__init__()
        self.diffusion = diffusion

    @torch.no_grad()
    def predict_action_chunk(self, batch, generator=None):
        return self.diffusion.generate_actions(batch, generator=generator)


class TinyUnet1D(torch.nn.Module):
    """A small network of ConditionalUnet1D's interface ``(sample [B, H, A], timestep, local_cond, global_cond)``:
    Conv1d over the horizon with FiLM from [timestep embedding; global_cond], a bounded output like a trained eps."""

    def __init__(self, action_dim: int, cond_dim: int, width: int = 16, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.c1 = torch.nn.Conv1d(action_dim, width, 5, padding=2)
        self.c2 = torch.nn.Conv1d(width, action_dim, 5, padding=2)
        self.film = torch.nn.Linear(cond_dim + 8, 2 * width)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3

    def forward(self, sample, timestep, local_cond=None, global_cond=None):
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.expand(sample.shape[0]) if t.ndim == 0 else t
        emb = torch.stack([torch.sin(t.to(sample.dtype) * (k + 1) / 23) for k in range(8)], 1)
        scale, shift = self.film(torch.cat([global_cond, emb], 1)).chunk(2, 1)
        h = self.c1(sample.transpose(1, 2)) * (1 + scale[:, :, None]) + shift[:, :, None]
        return 1.5 * torch.tanh(self.c2(torch.nn.functional.mish(h))).transpose(1, 2)
