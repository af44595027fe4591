"""The guided denoiser the spec's ``Guidance`` part asks for: the one place that reads its per-step values (scale,
CFG on or off) and its combine."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import torch

from ..model import ClassifierFreeGuidance, rescale_noise_cfg
from ._spec_parts import Guidance


@dataclasses.dataclass(frozen=True)
class GuidancePlan:
    """The call's guidance, read from the spec's ``Guidance`` part: ``(do_cfg, scale, rescale)``, the row order,
    and where the loop varies them by step, the scale and CFG flag of every solver step (solver order)."""

    do_cfg: bool
    scale: float
    rescale: float
    cond_first: bool = False
    scale_by_step: tuple[float, ...] | None = None
    combine: Callable | None = None
    cfg_by_step: tuple[bool, ...] | None = None

    def key(self) -> tuple:
        """What a cached graph or plan depends on (the simple case keeps its historical form)."""
        base = (self.do_cfg, self.scale, self.rescale)
        if self.scale_by_step is None and self.combine is None and self.cfg_by_step is None:
            return base
        return (*base, self.scale_by_step, _combine_key(self.combine), self.cfg_by_step)


def _combine_key(combine: Callable | None) -> Any:
    """A combine by name, with its bound arguments where it is a ``functools.partial`` (Z-Image's norm clamp)."""
    if combine is None:
        return None
    if isinstance(combine, functools.partial):
        return (combine.func.__qualname__, combine.args, tuple(sorted(combine.keywords.items())))
    return combine.__qualname__


def _per_step(at: Callable, pipe: Any, call_args: dict, loop_ts: torch.Tensor, what: str) -> tuple:
    by_loop = list(at(pipe, call_args, loop_ts))
    if len(by_loop) != len(loop_ts):
        raise RuntimeError(f"{what} gave {len(by_loop)} values for {len(loop_ts)} loop steps")
    return tuple(reversed(by_loop))  # solver step i is loop step T - 1 - i


def plan_guidance(part: Guidance, pipe: Any, call_args: dict, read: tuple, loop_ts: torch.Tensor) -> GuidancePlan:
    """The ``GuidancePlan`` of one call: ``read`` is ``part.read``'s value, ``loop_ts`` the loop's timesteps."""
    do_cfg, scale, rescale = read
    if not do_cfg:
        return GuidancePlan(False, float(scale), float(rescale), part.cond_first)
    by_step = cfg = None
    if part.scale_at is not None:
        by_step = tuple(float(s) for s in _per_step(part.scale_at, pipe, call_args, loop_ts, "scale_at"))
    if part.cfg_at is not None:
        cfg = tuple(bool(c) for c in _per_step(part.cfg_at, pipe, call_args, loop_ts, "cfg_at"))
        cfg = None if all(cfg) else cfg
    combine = part.combine if part.combine_for is None else part.combine_for(pipe, call_args)
    return GuidancePlan(True, float(scale), float(rescale), part.cond_first, by_step, combine, cfg)


class _StepGuidance:
    """CFG whose scale or on/off varies by step, or whose combine is not the linear one, on ``[uncond; cond]`` (or
    ``[cond; uncond]``) rows: one batched call (the unconditional rows only for the steps that run CFG), then the
    combine row by row with each row's step's scale."""

    def __init__(self, branches: Callable, plan: GuidancePlan) -> None:
        self.branch_model, self.plan = branches, plan
        self.compute_dtype = getattr(branches, "compute_dtype", None)
        device = getattr(branches, "ts_by_step", torch.empty(0)).device
        by_step = plan.scale_by_step if plan.scale_by_step is not None else (plan.scale,)
        self.scales = torch.tensor(by_step, dtype=torch.float64, device=device)  # made once
        self.cfg = None if plan.cfg_by_step is None else torch.tensor(plan.cfg_by_step, device=device)

    def __call__(self, x: torch.Tensor, step_index: torch.Tensor) -> torch.Tensor:
        plan = self.plan
        if self.cfg is None:
            out = self.branch_model(torch.cat([x, x]), torch.cat([step_index, step_index]))
            first, second = out.chunk(2)
            cond, uncond = (first, second) if plan.cond_first else (second, first)
            on = None
        else:
            cond, uncond, on = self._truncated(x, step_index)
        rows = step_index if plan.scale_by_step is not None else torch.zeros_like(step_index)
        scale = self.scales[rows.to(self.scales.device)].to(cond.device, cond.dtype).view(-1, *([1] * (cond.ndim - 1)))
        if plan.combine is not None:
            guided = plan.combine(cond, uncond, scale)
        else:
            guided = uncond + scale * (cond - uncond)
            guided = rescale_noise_cfg(guided, cond, plan.rescale) if plan.rescale > 0 else guided
        if on is None:
            return guided
        return torch.where(on.view(-1, *([1] * (cond.ndim - 1))), guided, cond)  # steps without CFG: cond alone

    def _truncated(self, x: torch.Tensor, step_index: torch.Tensor) -> tuple:
        """The conditional branch on every row, the unconditional one only on the rows of steps with CFG (each row
        names its conditioning row, so the two groups need not be the same size)."""
        B = self.branch_model.B
        on = self.cfg[step_index.to(self.cfg.device)].to(x.device)
        idx = on.nonzero().flatten()
        sample = torch.arange(x.shape[0], device=x.device) % B  # solver rows are (window position, sample)
        cond_branch, uncond_branch = (0, 1) if self.plan.cond_first else (1, 0)
        rows = torch.cat([uncond_branch * B + sample[idx], cond_branch * B + sample])
        out = self.branch_model(torch.cat([x[idx], x]), torch.cat([step_index[idx], step_index]), rows=rows)
        part, cond = out[: idx.numel()], out[idx.numel() :]
        uncond = cond.clone()
        uncond[idx] = part
        return cond, uncond, on


def guided(branches: Callable, plan: GuidancePlan) -> Callable:
    """The solver's denoiser: ``branches`` (the network on stacked branch rows) combined as ``plan`` says."""
    if not plan.do_cfg:
        return branches
    if plan.scale_by_step is None and plan.combine is None and plan.cfg_by_step is None:
        return ClassifierFreeGuidance(branches, plan.scale, plan.rescale, cond_first=plan.cond_first)
    return _StepGuidance(branches, plan)
