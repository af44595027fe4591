"""The pipeline's network as a paratriton denoiser: the model call the solve makes, on every row of a window (the
one place that reads the spec's per-step networks and the network's timestep form)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._capture import _first_tensor, _like
from ._spec_parts import SHARED_ARGS
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
    if isinstance(value, _RowList):  # rows (branch, sample) -> (branch, window position, sample)
        return [value[b * B + s] for b in range(g) for _ in range(W) for s in range(B)]
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


class _RowList(list):
    """A list argument with one tensor per row of the stock call (Z-Image's per-prompt text features)."""


def from_list_api(x_in: list, named: dict, axis: int) -> tuple[torch.Tensor, dict]:
    """A list-API network's first call as a batched one: the latents stacked (``axis`` dropped), per-row lists
    marked as rows."""
    n = len(x_in)

    def rows(v: Any) -> Any:
        is_rows = isinstance(v, list) and len(v) == n and all(torch.is_tensor(e) for e in v)
        return _RowList(v) if is_rows else v

    return torch.stack(list(x_in)).squeeze(axis), {k: rows(v) for k, v in named.items()}


def _at_dim(fn: Callable, value: torch.Tensor, dim: int, n: int, *args: Any) -> torch.Tensor:
    """``fn`` (``_repeat_rows``, ``_take_rows``) on a tensor whose ``n`` rows are along ``dim``, not the first."""
    if value.shape[dim] != n:
        raise RuntimeError(f"conditioning with its rows on dim {dim} has {value.shape[dim]} of them, not {n}")
    return fn(value.movedim(dim, 0), *args).movedim(0, dim)


def _take_rows(value: Any, rows: torch.Tensor, n: int) -> Any:
    """The ``rows`` of every per-row tensor (leading dimension ``n``) in ``value``; others pass through."""
    if isinstance(value, _RowList):
        return [value[i] for i in rows.tolist()]
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
        self.num_train_timesteps = 1000  # the scheduler's, for the "1-t/N" timestep form
        self.negate = False  # Step.negate: the loop steps with the negated prediction
        self.timestep_arg, self.list_axis = "timestep", None  # Calls.timestep_arg, Calls.list_axis
        self.timestep_scale = 1.0  # the network's config.timestep_scale, for the "t*timestep_scale" form (SANA)
        self.row_dims: dict[str, int] = {}  # Calls.row_dims: conditioning whose rows are not on dim 0
        self.shared: frozenset[str] = SHARED_ARGS  # and Calls.shared_args: passed whole to every call

    def __call__(self, x: torch.Tensor, step_index: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``rows``: for each row of ``x``, its row of the stock call's ``g * B`` (branch-major) conditioning; None:
        the rows are ``(branch, window position, sample)``."""
        g, B = self.g, self.B
        W = x.shape[0] // (g * B)
        t = self.ts_by_step[step_index]
        if self.timestep_form == "t/1000":  # Flux: t.expand(B).to(latents.dtype) / 1000, exactly as the stock loop
            t = t.to(self.x_dtype) / 1000
        elif self.timestep_form == "1-t/N":  # Lumina 2: 1 - t / num_train_timesteps (0 is noise)
            t = 1 - t / self.num_train_timesteps
        elif self.timestep_form == "(1000-t)/1000":  # Z-Image
            t = (1000 - t) / 1000
        elif self.timestep_form == "t*timestep_scale":  # SANA: t.expand(2B) * transformer.config.timestep_scale
            t = t * self.timestep_scale
        if rows is None:
            kw = self._per_row(self.kwargs, g * B, _repeat_rows, g, B, W)
        else:
            kw = self._per_row(self.kwargs, g * B, _take_rows, rows, g * B)
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
        if self.list_axis is not None:  # Z-Image: a list of per-sample tensors in, a list out
            raw = self.forward(
                **{self.latent_name: list(sample.unsqueeze(self.list_axis).unbind(0))}, **{self.timestep_arg: t}, **kw
            )
            out = torch.stack(list(raw[0]))
        elif self.experts is None:
            raw = self.forward(**{self.latent_name: sample, self.timestep_arg: t}, **kw)
            out = _first_tensor(raw)
        else:
            raw, out = self._routed(sample, t, step_index, kw)
        if self.dummy is None:
            self.dummy = _like(raw, out.new_zeros((self.N0, *out.shape[1:])))
        if self.list_axis is not None:
            out = out.squeeze(self.list_axis)
        if tokens is not None:
            out = out[:, :n_latent]
        if self.learned_sigma_channels is not None:
            out = out[:, : self.learned_sigma_channels]
        return -out if self.negate else out  # exact, and it commutes with every CFG combine

    def _routed(self, sample: torch.Tensor, t: torch.Tensor, step_index: torch.Tensor, kw: dict) -> tuple:
        """Each network on the rows whose step needs it (rows keep their order within a group), scattered back."""
        which = self.expert_by_step[step_index]
        n, raw, out = sample.shape[0], None, None
        for e, net in enumerate(self.experts):
            rows = (which == e).nonzero().flatten()
            if rows.numel() == 0:
                continue
            inputs = {self.latent_name: sample[rows], self.timestep_arg: _take_rows(t, rows, n)}
            part = net(**inputs, **self._per_row(kw, n, _take_rows, rows, n))
            part_out = _first_tensor(part)
            if out is None:
                raw, out = part, part_out.new_empty((n, *part_out.shape[1:]))
            out[rows] = part_out
        return raw, out

    def _per_row(self, kw: dict, n: int, fn: Callable, *args: Any) -> dict:
        """``fn`` (``_repeat_rows``, ``_take_rows``) on the ``n``-row conditioning ``kw``, along each argument's
        row dimension (``row_dims``: HiDream's Llama-3 states ``[layers, rows, tokens, dim]``); shared tables
        (``shared``) whole, whatever their length."""
        out = {}
        for k, v in kw.items():
            if k in self.shared:
                out[k] = v
            elif k in self.row_dims:
                out[k] = _at_dim(fn, v, self.row_dims[k], n, *args)
            else:
                out[k] = fn(v, *args)
        return out

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


def route_by_step(names: list[str], experts: dict, denoiser: str, device: torch.device) -> tuple | None:
    """``Calls.denoiser_at``'s attribute names (loop order) as the networks and each solver step's index into them;
    None where every step calls ``denoiser``."""
    order = sorted(set(names), key=names.index)
    if order == [denoiser]:
        return None
    by_step = torch.tensor([order.index(n) for n in reversed(names)], device=device)  # solver step i: loop T-1-i
    return [experts[n] for n in order], by_step
