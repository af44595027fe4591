"""The pipeline's network as a paratriton denoiser: the model call the solve makes, on every row of a window, and
the guided denoiser the spec's ``Guidance`` part asks for (the one place that reads its per-step values)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from ..model import ClassifierFreeGuidance, rescale_noise_cfg
from ._capture import _NOT_PER_ROW, _first_tensor, _like
from ._spec_parts import Guidance
from ._trees import copy_tree

# the conditioning key under which inpainting's extra input channels (mask, masked image latents) travel
_EXTRA_CHANNELS = "__paratriton_extra_channels__"
# ControlNet: the controlnet call's conditioning and the per-step scale travel with the UNet's conditioning
_CONTROL = "__paratriton_control__"
# the conditioning key under which image tokens concatenated after the latents' (Calls.latent_tokens) travel
_EXTRA_TOKENS = "__paratriton_extra_tokens__"


def _repeat_rows(value: Any, g: int, B: int, W: int) -> Any:
    """Repeat per-row conditioning ``[g * B, ...]`` to the solver's rows ``[g, W, B, ...]`` (step-major).

    The stock loop batches ``g`` guidance branches of ``B`` samples; the solver evaluates ``W`` steps of each, with
    rows ordered ``(branch, window position, sample)``. Tensors whose leading dimension is not ``g * B`` (scalars,
    broadcast tensors) pass through unchanged; dicts, lists and tuples are searched.
    """
    if torch.is_tensor(value):
        if value.ndim >= 1 and value.shape[0] == g * B:
            rest = tuple(value.shape[1:])
            return value.reshape(g, 1, B, *rest).expand(g, W, B, *rest).reshape(g * W * B, *rest)
        return value
    if isinstance(value, dict):
        return {k: _repeat_rows(v, g, B, W) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_repeat_rows(v, g, B, W) for v in value)
    return value


def _take_rows(value: Any, rows: torch.Tensor, n: int) -> Any:
    """The ``rows`` of every per-row tensor (leading dimension ``n``) in ``value``; others pass through."""
    if torch.is_tensor(value):
        return value[rows] if value.ndim >= 1 and value.shape[0] == n else value
    if isinstance(value, dict):
        return {k: _take_rows(v, rows, n) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_take_rows(v, rows, n) for v in value)
    return value


class _PipelineDenoiser:
    """The pipeline's network as a paratriton denoiser of the stacked guidance branches.

    ``x [g * W * B, *S]`` (solver dtype) and ``step_index [g * W * B]`` -> ``[g * W * B, *S]`` (model dtype), rows
    ordered ``(branch, window position, sample)``; the stock call's conditioning ``kwargs`` is repeated along the
    window. ``model`` is called as a module (``nn.Module.__call__``: hooks and ``compile`` apply). Only tensors are
    read per call, so the call can be captured in a CUDA graph: later pipeline calls copy their conditioning into
    ``kwargs`` in place (``load``) and replay.
    """

    def __init__(
        self,
        model: Callable,
        latent_name: str,
        kwargs: dict,
        ts_by_step: torch.Tensor,
        g: int,
        B: int,
        N0: int,
        x_dtype: torch.dtype,
        timestep_form: str,
        learned_sigma_channels: int | None,
    ) -> None:
        self.forward, self.latent_name, self.kwargs, self.ts_by_step = model, latent_name, kwargs, ts_by_step
        self.g, self.B, self.N0, self.x_dtype = g, B, N0, x_dtype
        self.timestep_form, self.learned_sigma_channels = timestep_form, learned_sigma_channels
        self.dummy: Any = None  # what later stock calls get back: zeros shaped like a stock call's output
        self.controlnet: Callable | None = None  # ControlNet: the real controlnet module and its latent argument
        self.control_latent = "sample"
        # per-step networks (Calls.denoiser_at): the networks and each solver step's index into them; None: `model`
        self.experts: list[Callable] | None = None
        self.expert_by_step: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, step_index: torch.Tensor) -> torch.Tensor:
        g, B = self.g, self.B
        W = x.shape[0] // (g * B)
        t = self.ts_by_step[step_index]
        if self.timestep_form == "t/1000":  # Flux: t.expand(B).to(latents.dtype) / 1000, exactly as the stock loop
            t = t.to(self.x_dtype) / 1000
        kw = {k: (v if k in _NOT_PER_ROW else _repeat_rows(v, g, B, W)) for k, v in self.kwargs.items()}
        if _CONTROL in kw:  # the per-step scale is indexed by step, not repeated per row
            kw[_CONTROL] = {**kw[_CONTROL], "scale_by_step": self.kwargs[_CONTROL]["scale_by_step"]}
        sample = x.to(self.x_dtype)
        extra = kw.pop(_EXTRA_CHANNELS, None)
        if extra is not None:  # inpainting: [latents, mask, masked image latents] along channels, as the loop does
            sample = torch.cat([sample, extra], dim=1)
        tokens = kw.pop(_EXTRA_TOKENS, None)
        n_latent = sample.shape[1]
        if tokens is not None:  # [latents, image latents] along tokens, as the loop does; it keeps the first ones
            sample = torch.cat([sample, tokens], dim=1)
        control = kw.pop(_CONTROL, None)
        if control is not None:  # ControlNet: its call is part of the model call, on the same rows
            kw.update(self._control(sample, t, step_index, control))
        if self.experts is None:
            raw = self.forward(**{self.latent_name: sample, "timestep": t}, **kw)
            out = _first_tensor(raw)
        else:
            raw, out = self._routed(sample, t, step_index, kw)
        if self.dummy is None:
            self.dummy = _like(raw, out.new_zeros((self.N0, *out.shape[1:])))
        if tokens is not None:
            out = out[:, :n_latent]
        if self.learned_sigma_channels is not None:
            out = out[:, : self.learned_sigma_channels]
        return out

    def _routed(self, sample: torch.Tensor, t: torch.Tensor, step_index: torch.Tensor, kw: dict) -> tuple:
        """Each network on the rows whose step needs it (rows keep their order within a group), scattered back."""
        which = self.expert_by_step[step_index]
        n, raw, out = sample.shape[0], None, None
        for e, net in enumerate(self.experts):
            rows = (which == e).nonzero().flatten()
            if rows.numel() == 0:
                continue
            inputs = {self.latent_name: sample[rows], "timestep": _take_rows(t, rows, n)}
            part = net(**inputs, **_take_rows(kw, rows, n))
            part_out = _first_tensor(part)
            if out is None:
                raw, out = part, part_out.new_empty((n, *part_out.shape[1:]))
            out[rows] = part_out
        return raw, out

    def _control(self, sample: torch.Tensor, t: torch.Tensor, step_index: torch.Tensor, control: dict) -> dict:
        """The ControlNet residuals for these rows, scaled per row by the step's ``conditioning_scale`` (the stock
        loop's ``controlnet_conditioning_scale * controlnet_keep[i]``; the net itself runs at scale 1)."""
        ckw = dict(control["kwargs"])
        down, mid = self.controlnet(
            **{self.control_latent: sample, "timestep": t}, **ckw, conditioning_scale=1.0, return_dict=False
        )
        scale = control["scale_by_step"][step_index]
        view = (-1,) + (1,) * (mid.ndim - 1)
        return {
            "down_block_additional_residuals": [d * scale.to(d.dtype).view(view) for d in down],
            "mid_block_additional_residual": mid * scale.to(mid.dtype).view(view),
        }

    def load(self, kwargs: dict) -> None:
        """Copy another call's conditioning (same structure and shapes) into this one's tensors."""
        copy_tree(self.kwargs, kwargs)


@dataclasses.dataclass(frozen=True)
class GuidancePlan:
    """The call's guidance, read from the spec's ``Guidance`` part: ``(do_cfg, scale, rescale)``, the row order,
    and where the loop varies it by step, the scale of every solver step (``scale_by_step [T]``, solver order)."""

    do_cfg: bool
    scale: float
    rescale: float
    cond_first: bool = False
    scale_by_step: tuple[float, ...] | None = None
    combine: Callable | None = None

    def key(self) -> tuple:
        """What a cached graph or plan depends on (the simple case keeps its historical form)."""
        base = (self.do_cfg, self.scale, self.rescale)
        if self.scale_by_step is None and self.combine is None:
            return base
        return (*base, self.scale_by_step, None if self.combine is None else self.combine.__qualname__)


def plan_guidance(part: Guidance, pipe: Any, call_args: dict, read: tuple, loop_ts: torch.Tensor) -> GuidancePlan:
    """The ``GuidancePlan`` of one call: ``read`` is ``part.read``'s value, ``loop_ts`` the loop's timesteps."""
    do_cfg, scale, rescale = read
    by_step = None
    if do_cfg and part.scale_at is not None:
        by_loop = [float(s) for s in part.scale_at(pipe, call_args, loop_ts)]
        if len(by_loop) != len(loop_ts):
            raise RuntimeError(f"scale_at gave {len(by_loop)} scales for {len(loop_ts)} loop steps")
        by_step = tuple(reversed(by_loop))  # solver step i is loop step T - 1 - i
    return GuidancePlan(do_cfg, float(scale), float(rescale), part.cond_first, by_step, part.combine)


class _StepGuidance:
    """CFG whose scale varies by step or whose combine is not the linear one, on ``[uncond; cond]`` (or
    ``[cond; uncond]``) rows: one batched call, then the combine row by row with each row's step's scale."""

    def __init__(self, branches: Callable, plan: GuidancePlan) -> None:
        self.branch_model, self.plan = branches, plan
        self.compute_dtype = getattr(branches, "compute_dtype", None)
        device = getattr(branches, "ts_by_step", torch.empty(0)).device
        by_step = plan.scale_by_step if plan.scale_by_step is not None else (plan.scale,)
        self.scales = torch.tensor(by_step, dtype=torch.float64, device=device)  # made once: graph-capturable

    def __call__(self, x: torch.Tensor, step_index: torch.Tensor) -> torch.Tensor:
        plan = self.plan
        out = self.branch_model(torch.cat([x, x]), torch.cat([step_index, step_index]))
        first, second = out.chunk(2)
        cond, uncond = (first, second) if plan.cond_first else (second, first)
        rows = step_index if plan.scale_by_step is not None else torch.zeros_like(step_index)
        scale = self.scales[rows.to(self.scales.device)].to(out.device, out.dtype).view(-1, *([1] * (out.ndim - 1)))
        if plan.combine is not None:
            return plan.combine(cond, uncond, scale)
        guided = uncond + scale * (cond - uncond)
        return rescale_noise_cfg(guided, cond, plan.rescale) if plan.rescale > 0 else guided


def guided(branches: Callable, plan: GuidancePlan) -> Callable:
    """The solver's denoiser: ``branches`` (the network on stacked branch rows) combined as ``plan`` says."""
    if not plan.do_cfg:
        return branches
    if plan.scale_by_step is None and plan.combine is None:
        return ClassifierFreeGuidance(branches, plan.scale, plan.rescale, cond_first=plan.cond_first)
    return _StepGuidance(branches, plan)
