"""Diffusion policies sampled in parallel: Chi et al.'s Diffusion Policy and LeRobot's, by duck typing.

    fast = paratriton.policies.parallelize_policy(policy, method="taa", cuda_graph=True, warm_start=True)
    action = fast.predict_action(obs_dict)   # the policy's own predict_action; its sampling loop solved in parallel

Neither package is imported. What is recognised:

* **Chi-style** (``real-stanford/diffusion_policy``'s ``DiffusionUnet*Policy``): ``model``, ``noise_scheduler``,
  ``num_inference_steps`` and ``conditional_sample(condition_data, condition_mask, local_cond=None,
  global_cond=None, generator=None, **kwargs)``, whose loop calls ``model(trajectory, t, local_cond=...,
  global_cond=...)`` and ``noise_scheduler.step(out, t, trajectory, generator=generator, **kwargs)``.
* **LeRobot** ``DiffusionModel``: ``unet``, ``noise_scheduler``, ``num_inference_steps``, ``config.horizon`` and
  ``conditional_sample(batch_size, global_cond=None, generator=None, noise=None)``; and ``DiffusionPolicy``, whose
  ``diffusion`` attribute is such a model.

``parallelize_policy`` returns a shallow copy (the weights and every submodule are shared, the user's policy is
never changed) whose ``conditional_sample`` runs ``paratriton.denoise``: with the same generator (or the same global
RNG state) it returns the stock loop's actions up to ``tol``. ``warm_start=True`` starts each solve from the previous
chunk's solved trajectory shifted by the executed action steps (``n_action_steps``; for a stochastic sampler, whose
trajectory carries the previous chunk's step noise, from its shifted sample): the answer is still this observation's
exact sample; only the iteration count changes (``fast.paratriton.last_result.iterations``). On DDPM policies it saves
nothing measurable: every chunk draws fresh noise, and the cold start already carries it (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch

from ..denoise import denoise, is_stochastic
from ..solvers import SolveResult

__all__ = ["parallelize_policy", "PolicyState", "shift_trajectory", "policy_kind", "solve_chunk"]

_STEP_KWARGS = ("eta", "use_clipped_model_output")  # what a Chi policy may hand scheduler.step, and denoise takes


@dataclasses.dataclass
class PolicyState:
    """A parallel policy's settings and what its last solve did."""

    method: str
    options: dict
    warm_start: bool | str  # True: the trajectory shifted; "sample": the sample shifted, noised to each level
    shift: int  # executed action steps between two calls (the warm start's shift along the horizon)
    last_result: SolveResult | None = None
    previous: torch.Tensor | None = None  # the last solved trajectory [T+1, B, H, A]

    def init_for(self, shape: tuple[int, ...], T: int, stochastic: bool = False) -> dict:
        """``denoise``'s warm-start argument for a solve of ``T`` steps of samples ``shape`` (empty: cold). A
        stochastic sampler's previous trajectory carries the previous chunk's step noise: its warm start is the
        shifted sample (as ``"sample"``), with this chunk's noise (the shifted trajectory took 20% more iterations
        than a cold start on the shipped policy, ``benchmarks/RESULTS.md``)."""
        prev = self.previous
        if not self.warm_start or prev is None or tuple(prev.shape) != (T + 1, *shape):
            return {}
        if self.warm_start == "sample" or stochastic:
            return {"init_sample": shift_trajectory(prev[:1], self.shift)[0]}
        return {"init": shift_trajectory(prev[:T], self.shift)}


def shift_trajectory(traj: torch.Tensor, shift: int) -> torch.Tensor:
    """``[T, B, H, A]`` trajectory of action chunks moved ``shift`` steps earlier along the horizon ``H`` (the
    executed actions dropped), the last action repeated at the end: the next chunk's guess."""
    if shift <= 0:
        return traj.clone()
    H = traj.shape[2]
    s = min(shift, H - 1)
    return torch.cat([traj[:, :, s:], traj[:, :, -1:].expand(-1, -1, s, *traj.shape[3:])], dim=2)


def policy_kind(policy: Any) -> str:
    """``"lerobot_policy"``, ``"lerobot_model"`` or ``"chi"``; a clear error for anything else."""
    if hasattr(policy, "diffusion") and hasattr(getattr(policy, "diffusion"), "unet"):
        return "lerobot_policy"
    if all(hasattr(policy, a) for a in ("unet", "noise_scheduler", "num_inference_steps", "conditional_sample")):
        return "lerobot_model"
    if all(hasattr(policy, a) for a in ("model", "noise_scheduler", "num_inference_steps", "conditional_sample")):
        return "chi"
    raise TypeError(
        f"{type(policy).__name__} is not a diffusion policy paratriton recognises: it needs model (Chi et al.) or "
        "unet (LeRobot), noise_scheduler, num_inference_steps and conditional_sample, or a diffusion attribute "
        "holding such a model (LeRobot's DiffusionPolicy)"
    )


def _shallow_copy(module: Any) -> Any:
    """A copy sharing every parameter, buffer and submodule, whose own attributes (and submodule table) can be
    replaced without touching the original."""
    twin = copy.copy(module)
    if isinstance(module, torch.nn.Module):
        twin.__dict__["_modules"] = dict(module._modules)
    return twin


def solve_chunk(policy, state: PolicyState, net, x_T, generator, model_kwargs, step_kwargs=None) -> torch.Tensor:
    """One chunk of ``policy`` (its ``noise_scheduler``, ``num_inference_steps``) from ``x_T`` through
    ``paratriton.denoise`` with ``state``'s method, options and warm start; records the result on ``state``."""
    T = int(policy.num_inference_steps)
    stochastic = bool(state.warm_start) and is_stochastic(policy.noise_scheduler, T, (step_kwargs or {}).get("eta"))
    res = denoise(
        net,
        policy.noise_scheduler,
        x_T,
        T,
        generator=generator,
        model_kwargs=model_kwargs,
        method=state.method,
        return_result=True,
        **state.init_for(tuple(x_T.shape), T, stochastic),
        **(step_kwargs or {}),
        **state.options,
    )
    state.last_result = res
    state.previous = res.trajectory
    return res.sample


def _chi_sample(policy, state: PolicyState):
    def conditional_sample(
        condition_data: torch.Tensor,
        condition_mask: torch.Tensor,
        local_cond: torch.Tensor | None = None,
        global_cond: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        bad = [k for k in kwargs if k not in _STEP_KWARGS]
        if bad:
            raise TypeError(f"scheduler.step arguments {bad} are not supported by the parallel sampler")
        if bool(condition_mask.any()):
            raise NotImplementedError(
                "condition_mask has True entries (inpainting-style conditioning, re-imposed before every step): the "
                "parallel sampler supports global (obs_as_global_cond=True) and local conditioning only"
            )
        x_T = torch.randn(
            size=condition_data.shape, dtype=condition_data.dtype, device=condition_data.device, generator=generator
        )
        kw = {"local_cond": local_cond, "global_cond": global_cond}
        x = solve_chunk(policy, state, policy.model, x_T, generator, kw, kwargs)
        x[condition_mask] = condition_data[condition_mask]  # as the stock loop's last line (a no-op here)
        return x

    return conditional_sample


def _lerobot_sample(model, state: PolicyState):
    def conditional_sample(
        batch_size: int,
        global_cond: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        p = next(model.parameters())
        shape = (batch_size, model.config.horizon, model.config.action_feature.shape[0])
        x_T = noise if noise is not None else torch.randn(shape, dtype=p.dtype, device=p.device, generator=generator)
        return solve_chunk(model, state, model.unet, x_T, generator, {"global_cond": global_cond})

    return conditional_sample


def parallelize_policy(policy: Any, method: str = "taa", *, warm_start: bool | str = False, **options: Any) -> Any:
    """A shallow copy of ``policy`` (Chi-style policy, LeRobot ``DiffusionModel`` or ``DiffusionPolicy``) whose action
    sampling is ``paratriton.denoise(..., method=method, **options)`` (``tol``, ``cuda_graph``, ``window``, ...).
    ``warm_start``: True starts from the previous chunk's trajectory shifted by ``n_action_steps`` (a stochastic
    sampler, DDPM: from its sample, as ``"sample"``); ``"sample"`` from its sample shifted, each state guessed with
    this chunk's ``x_T`` and step noise. The copy's ``paratriton`` attribute (a ``PolicyState``) holds the last
    solve's result."""
    kind = policy_kind(policy)
    if kind == "lerobot_policy":
        twin = _shallow_copy(policy)
        inner = parallelize_policy(policy.diffusion, method, warm_start=warm_start, **options)
        twin._modules["diffusion"] = inner
        twin.__dict__["paratriton"] = inner.paratriton
        return twin
    cfg = getattr(policy, "config", None)
    shift = int(getattr(policy, "n_action_steps", None) or getattr(cfg, "n_action_steps", 0) or 0)
    if warm_start not in (False, True, "sample"):
        raise ValueError(f"warm_start must be False, True or 'sample', got {warm_start!r}")
    state = PolicyState(method, dict(options), warm_start, shift)
    twin = _shallow_copy(policy)
    sample = _lerobot_sample(twin, state) if kind == "lerobot_model" else _chi_sample(twin, state)
    twin.__dict__["conditional_sample"] = sample
    twin.__dict__["paratriton"] = state
    return twin
