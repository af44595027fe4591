"""A low-dimensional diffusion policy in the style of Chi et al.'s ``DiffusionUnetLowdimPolicy`` (global
observation conditioning), and the loader of the shipped one.

The policy denoises an action chunk ``[B, horizon, action_dim]`` in normalized units with a ``ConditionalUnet1D``
conditioned on the last ``n_obs_steps`` normalized observations (flattened: ``global_cond [B, n_obs_steps *
obs_dim]``), with diffusers' ``DDPMScheduler`` (100 steps, ``squaredcos_cap_v2``, epsilon prediction,
``clip_sample=True``). ``conditional_sample`` is the reference's loop, statement for statement; ``predict_action``
unnormalizes the chunk and returns the ``n_action_steps`` actions from ``n_obs_steps - 1`` on (the reference's
``oa_step_convention``: the action at index ``n_obs_steps - 1`` is the one taken at the current observation).

    from paratriton.models import load
    policy = load("policy")                          # trained weights shipped in weights_policy/
    actions = policy.predict_action(obs)             # obs [B, 2, 39] -> actions [B, 8, 4]

Normalization is the reference's ``LinearNormalizer`` in ``"limits"`` mode: per dimension, an affine map of the
training data's ``[min, max]`` to ``[-1, 1]``; a dimension with a range below ``1e-4`` is shifted to 0 and not
scaled.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..policies.unet1d import ConditionalUnet1D
from .default import _sha256, read_config, verify_weights

__all__ = [
    "POLICY_WEIGHTS_DIR",
    "POLICY_SCHEDULER_CONFIG",
    "POLICY_UNET_CONFIG",
    "LimitsNormalizer",
    "DiffusionUnetLowdimPolicy",
    "build_policy",
    "policy_scheduler",
    "load_policy",
    "save_policy",
]

POLICY_WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights_policy")

#: The reference's scheduler for its DDPM policies.
POLICY_SCHEDULER_CONFIG: dict[str, Any] = dict(
    num_train_timesteps=100,
    beta_schedule="squaredcos_cap_v2",
    prediction_type="epsilon",
    clip_sample=True,
)

#: The shipped policy's network (reduced widths: 3.7M parameters, 7.1 MiB in float16; the reference's low-dim
#: configs use ``down_dims=[256, 512, 1024]`` and a 256-wide step embedding).
POLICY_UNET_CONFIG: dict[str, Any] = dict(
    diffusion_step_embed_dim=128,
    down_dims=[56, 112, 224],
    kernel_size=5,
    n_groups=8,
    cond_predict_scale=True,
)

_RANGE_EPS = 1e-4


class LimitsNormalizer(nn.Module):
    """Per-dimension affine map ``x -> x * scale + offset`` taking the fitted ``[min, max]`` to ``[-1, 1]``
    (the reference's ``LinearNormalizer`` fitted with ``mode="limits"``). ``scale``/``offset`` are float32 buffers of
    shape ``[D]``; inputs are ``[..., D]`` in any float dtype and keep it."""

    def __init__(self, scale: torch.Tensor, offset: torch.Tensor) -> None:
        super().__init__()
        if scale.shape != offset.shape or scale.ndim != 1:
            raise ValueError(f"scale and offset must both be [D], got {tuple(scale.shape)}, {tuple(offset.shape)}")
        self.register_buffer("scale", scale.detach().to(torch.float32).clone())
        self.register_buffer("offset", offset.detach().to(torch.float32).clone())

    @classmethod
    def fit(cls, data: np.ndarray | torch.Tensor) -> "LimitsNormalizer":
        """Fit to ``data [..., D]`` (all leading dimensions are samples)."""
        x = torch.as_tensor(np.asarray(data) if not torch.is_tensor(data) else data, dtype=torch.float64)
        x = x.reshape(-1, x.shape[-1])
        lo, hi = x.min(dim=0).values, x.max(dim=0).values
        rng = hi - lo
        ignore = rng < _RANGE_EPS
        rng = torch.where(ignore, torch.full_like(rng, 2.0), rng)
        scale = 2.0 / rng
        offset = torch.where(ignore, -lo, -1.0 - scale * lo)
        return cls(scale.float(), offset.float())

    @property
    def dim(self) -> int:
        return self.scale.shape[0]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.scale.to(x.dtype) + self.offset.to(x.dtype)).to(x.dtype)

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.offset.to(x.dtype)) / self.scale.to(x.dtype)).to(x.dtype)


def policy_scheduler(config: Mapping[str, Any] | None = None):
    """A fresh diffusers ``DDPMScheduler`` (default: ``POLICY_SCHEDULER_CONFIG``)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**dict(POLICY_SCHEDULER_CONFIG if config is None else config))


class DiffusionUnetLowdimPolicy(nn.Module):
    """Chi et al.'s low-dim diffusion policy with global observation conditioning.

    Attributes (the reference's names): ``model`` (``ConditionalUnet1D``), ``noise_scheduler``
    (``DDPMScheduler``), ``num_inference_steps``, ``horizon``, ``n_obs_steps``, ``n_action_steps``, ``obs_dim``,
    ``action_dim``, ``normalizer`` (an ``nn.ModuleDict`` with ``"obs"`` and ``"action"`` ``LimitsNormalizer``s).
    """

    def __init__(
        self,
        model: ConditionalUnet1D,
        noise_scheduler: Any,
        horizon: int,
        obs_dim: int,
        action_dim: int,
        n_action_steps: int = 8,
        n_obs_steps: int = 2,
        num_inference_steps: int | None = None,
        obs_normalizer: LimitsNormalizer | None = None,
        action_normalizer: LimitsNormalizer | None = None,
    ) -> None:
        super().__init__()
        if model.input_dim != action_dim:
            raise ValueError(f"model.input_dim={model.input_dim} != action_dim={action_dim}")
        if model.global_cond_dim != n_obs_steps * obs_dim:
            raise ValueError(
                f"model.global_cond_dim={model.global_cond_dim} != n_obs_steps * obs_dim = {n_obs_steps * obs_dim}"
            )
        if horizon % model.horizon_multiple:
            raise ValueError(f"horizon={horizon} must be divisible by {model.horizon_multiple} for this network")
        if n_obs_steps - 1 + n_action_steps > horizon:
            raise ValueError(
                f"n_obs_steps - 1 + n_action_steps = {n_obs_steps - 1 + n_action_steps} exceeds horizon={horizon}"
            )
        self.model = model
        self.noise_scheduler = noise_scheduler
        self.horizon = int(horizon)
        self.obs_dim = int(obs_dim)
        self.action_dim = int(action_dim)
        self.n_action_steps = int(n_action_steps)
        self.n_obs_steps = int(n_obs_steps)
        if num_inference_steps is None:
            num_inference_steps = noise_scheduler.config.num_train_timesteps
        self.num_inference_steps = int(num_inference_steps)
        ident = lambda d: LimitsNormalizer(torch.ones(d), torch.zeros(d))  # noqa: E731
        self.normalizer = nn.ModuleDict(
            {
                "obs": obs_normalizer if obs_normalizer is not None else ident(obs_dim),
                "action": action_normalizer if action_normalizer is not None else ident(action_dim),
            }
        )
        if self.normalizer["obs"].dim != obs_dim or self.normalizer["action"].dim != action_dim:
            raise ValueError("the normalizers' widths must be obs_dim and action_dim")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ---------------------------------------------------------------- inference

    def global_cond(self, obs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``obs [B, n_obs_steps, obs_dim]`` (numpy or torch, raw units) -> the network's condition
        ``[B, n_obs_steps * obs_dim]`` (normalized, on the policy's device and dtype)."""
        obs_t = torch.as_tensor(obs)
        if obs_t.ndim != 3 or obs_t.shape[1] != self.n_obs_steps or obs_t.shape[2] != self.obs_dim:
            raise ValueError(
                f"obs must be [B, n_obs_steps={self.n_obs_steps}, obs_dim={self.obs_dim}], got {tuple(obs_t.shape)}"
            )
        obs_t = obs_t.to(device=self.device, dtype=torch.float32)
        nobs = self.normalizer["obs"].normalize(obs_t)
        return nobs.reshape(nobs.shape[0], -1).to(self.dtype)

    @torch.no_grad()
    def conditional_sample(
        self, global_cond: torch.Tensor, generator: torch.Generator | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """The reference's sampling loop: ``global_cond [B, G]`` -> normalized trajectory ``[B, horizon, A]``
        (policy dtype). ``kwargs`` go to ``scheduler.step``. With global conditioning the reference's inpainting
        mask is all False, so its two mask assignments are no-ops and are left out."""
        model = self.model
        scheduler = self.noise_scheduler
        shape = (global_cond.shape[0], self.horizon, self.action_dim)
        trajectory = torch.randn(shape, generator=generator, device=global_cond.device, dtype=global_cond.dtype)
        scheduler.set_timesteps(self.num_inference_steps)
        for t in scheduler.timesteps:
            model_output = model(trajectory, t, global_cond=global_cond)
            trajectory = scheduler.step(model_output, t, trajectory, generator=generator, **kwargs).prev_sample
        return trajectory

    @torch.no_grad()
    def parallel_sample(
        self, global_cond: torch.Tensor, generator: torch.Generator | None, method: str, **options: Any
    ) -> torch.Tensor:
        """``conditional_sample``'s loop solved in parallel (``paratriton.denoise``): the same trajectory draw, the
        same step noise, the same answer up to ``tol``. One warm-start state per (method, options)."""
        from ..policies.adapters import PolicyState, solve_chunk

        warm = options.pop("warm_start", False)
        key = (method, warm, tuple(sorted(options.items())))
        states = self.__dict__.setdefault("_parallel_states", {})
        if key not in states:
            states[key] = PolicyState(method, dict(options), warm, self.n_action_steps)
        shape = (global_cond.shape[0], self.horizon, self.action_dim)
        x_T = torch.randn(shape, generator=generator, device=global_cond.device, dtype=global_cond.dtype)
        out = solve_chunk(self, states[key], self.model, x_T, generator, {"global_cond": global_cond})
        self.__dict__["last_result"] = states[key].last_result
        return out

    def action_window(self, action_pred: torch.Tensor) -> torch.Tensor:
        """The executed actions of a chunk: ``[B, horizon, A] -> [B, n_action_steps, A]`` from ``n_obs_steps - 1``."""
        start = self.n_obs_steps - 1
        return action_pred[:, start : start + self.n_action_steps]

    @torch.no_grad()
    def predict_action(
        self,
        obs: np.ndarray | torch.Tensor,
        generator: torch.Generator | None = None,
        method: str = "sequential",
        **options: Any,
    ) -> torch.Tensor:
        """``obs [B, n_obs_steps, obs_dim]`` (raw units, numpy or torch) -> the executed actions
        ``[B, n_action_steps, action_dim]`` (raw units, float32 torch tensor on the policy's device).

        ``method="sequential"`` runs ``conditional_sample`` (the reference's loop). Other methods (``"taa"``,
        ``"picard"``, ...) solve the same loop in parallel through ``paratriton.denoise`` (same generator, same
        actions up to ``tol``); ``options``: ``tol``, ``cuda_graph``, ``warm_start`` (True or ``"sample"``: start
        from the previous call's chunk shifted by ``n_action_steps``), ... ``last_result`` holds the last solve."""
        global_cond = self.global_cond(obs)
        if method == "sequential":
            if options:
                raise TypeError(f"method='sequential' takes no options, got {sorted(options)}")
            naction = self.conditional_sample(global_cond, generator=generator)
        else:
            naction = self.parallel_sample(global_cond, generator, method, **options)
        action_pred = self.normalizer["action"].unnormalize(naction.to(torch.float32))
        return self.action_window(action_pred)

    # ----------------------------------------------------------------- training

    def compute_loss(
        self, obs: torch.Tensor, action: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The reference's training loss: ``obs [B, >= n_obs_steps, obs_dim]`` and ``action [B, horizon, A]`` in
        raw units; noise and timesteps drawn uniformly (``[0, num_train_timesteps)``), MSE of the epsilon
        prediction over the whole chunk. Returns a 0-d float32 tensor."""
        nobs = self.normalizer["obs"].normalize(obs.to(torch.float32))
        naction = self.normalizer["action"].normalize(action.to(torch.float32))
        global_cond = nobs[:, : self.n_obs_steps].reshape(nobs.shape[0], -1)
        noise = torch.randn(naction.shape, device=naction.device, generator=generator)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (naction.shape[0],), device=naction.device, generator=generator)
        noisy = self.noise_scheduler.add_noise(naction, noise, timesteps)
        pred = self.model(noisy, timesteps, global_cond=global_cond)
        if self.noise_scheduler.config.prediction_type != "epsilon":
            raise ValueError("only prediction_type='epsilon' is trained here")
        return torch.nn.functional.mse_loss(pred.float(), noise)


# ------------------------------------------------------------------- building, saving and loading


def build_policy(config: Mapping[str, Any]) -> DiffusionUnetLowdimPolicy:
    """A fresh (untrained, identity-normalized) policy from a config of the shipped layout: ``config["policy"]``
    (``horizon``, ``obs_dim``, ``action_dim``, ``n_obs_steps``, ``n_action_steps``, ``num_inference_steps``),
    ``config["unet"]`` (``ConditionalUnet1D`` keywords less ``input_dim``/``global_cond_dim``) and
    ``config["scheduler"]`` (``DDPMScheduler`` keywords)."""
    p = dict(config["policy"])
    unet = ConditionalUnet1D(
        input_dim=p["action_dim"], global_cond_dim=p["n_obs_steps"] * p["obs_dim"], **dict(config["unet"])
    )
    return DiffusionUnetLowdimPolicy(
        unet,
        policy_scheduler(config.get("scheduler")),
        horizon=p["horizon"],
        obs_dim=p["obs_dim"],
        action_dim=p["action_dim"],
        n_action_steps=p["n_action_steps"],
        n_obs_steps=p["n_obs_steps"],
        num_inference_steps=p.get("num_inference_steps"),
    )


def save_policy(
    policy: DiffusionUnetLowdimPolicy, out_dir: str, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``model.safetensors`` (network in float16, normalizers in float32) and ``config.json`` (with the
    file's sha256 and size) to ``out_dir``; ``extra`` entries (task, training record, ...) go into the config.
    Returns the config."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    tensors = {
        f"model.{k}": v.detach().to("cpu", torch.float16).contiguous() for k, v in policy.model.state_dict().items()
    }
    for name in ("obs", "action"):
        norm = policy.normalizer[name]
        tensors[f"normalizer.{name}.scale"] = norm.scale.detach().cpu().contiguous()
        tensors[f"normalizer.{name}.offset"] = norm.offset.detach().cpu().contiguous()
    path = os.path.join(out_dir, "model.safetensors")
    save_file(tensors, path)
    unet = policy.model
    config: dict[str, Any] = {
        "policy": {
            "horizon": policy.horizon,
            "obs_dim": policy.obs_dim,
            "action_dim": policy.action_dim,
            "n_obs_steps": policy.n_obs_steps,
            "n_action_steps": policy.n_action_steps,
            "num_inference_steps": policy.num_inference_steps,
        },
        "unet": _unet_config(unet),
        "scheduler": {k: policy.noise_scheduler.config[k] for k in POLICY_SCHEDULER_CONFIG},
        "parameters": sum(p.numel() for p in unet.parameters()),
    }
    config.update(dict(extra or {}))
    config["files"] = {"model.safetensors": {"sha256": _sha256(path), "bytes": os.path.getsize(path)}}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
        f.write("\n")
    return config


def _unet_config(unet: ConditionalUnet1D) -> dict[str, Any]:
    """The constructor keywords of ``unet`` (less ``input_dim``/``global_cond_dim``), read back from its modules."""
    block = unet.down_modules[0][0]
    conv = block.blocks[0].block[0]
    return dict(
        diffusion_step_embed_dim=unet.diffusion_step_encoder[0].dim,
        down_dims=list(unet.down_dims),
        kernel_size=conv.kernel_size[0],
        n_groups=block.blocks[0].block[1].num_groups,
        cond_predict_scale=block.cond_predict_scale,
    )


def load_policy(
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    weights_dir: str = POLICY_WEIGHTS_DIR,
) -> DiffusionUnetLowdimPolicy:
    """The shipped (or a saved) policy, offline: ``weights_dir`` holds ``config.json`` and ``model.safetensors``
    (checked against the config's sha256). ``device`` defaults to CUDA if available, else the CPU; ``dtype`` to
    float32 (the network ships in float16 and is upcast; the normalizers stay float32). Eval mode, no grads."""
    from safetensors.torch import load_file

    path = os.path.join(weights_dir, "model.safetensors")
    if not os.path.exists(path) or not os.path.exists(os.path.join(weights_dir, "config.json")):
        raise FileNotFoundError(
            f"{weights_dir} has no trained policy (config.json + model.safetensors): train one with "
            "benchmarks/policy_train.py, or install the package with its weights"
        )
    cfg = read_config(weights_dir)
    verify_weights(path, cfg)
    try:
        policy = build_policy(cfg)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{os.path.join(weights_dir, 'config.json')}: bad or missing policy entries ({e})") from None
    try:
        sd = load_file(path)
    except Exception as e:  # safetensors raises its own error types for a bad header or a short file
        raise ValueError(f"{path} is truncated or corrupt (safetensors could not read it: {e})") from None
    try:
        policy.model.load_state_dict({k[len("model.") :]: v.float() for k, v in sd.items() if k.startswith("model.")})
        for name in ("obs", "action"):
            policy.normalizer[name] = LimitsNormalizer(sd[f"normalizer.{name}.scale"], sd[f"normalizer.{name}.offset"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise ValueError(f"{path} does not match the policy its config.json describes: {e}") from None
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    policy.model.to(device=device, dtype=torch.float32 if dtype is None else dtype)
    policy.normalizer.to(device=device)
    return policy.eval().requires_grad_(False)
