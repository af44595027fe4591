"""The parts of a ``PipelineSpec``: what the parallel solve must know about one pipeline's denoising loop body.

A spec is four frozen parts, each read by one stage of the pipeline call:

* ``Calls`` (which networks the loop calls, on which input channels): ``_call.py``, ``_problem.py``;
* ``Guidance`` (how the CFG branches are laid out and combined, per step where the loop varies it): ``_capture.py``
  reads the layout and the guidance, ``_denoiser.py`` makes the guided denoiser from it;
* ``Step`` (what the loop hands ``scheduler.step`` and the network's timestep form): ``_problem.py``, ``_denoiser.py``;
* ``Loop`` (where the loop ends, which call options it refuses): ``_problem.py``, ``_wrap.py``.

Per-step callables take ``(pipe, call_args, loop_ts)`` (the private pipeline copy, the bound ``__call__`` arguments
with defaults applied, the timesteps of the loop's steps in loop order) and return one value per loop step; they are
read once, when the first network call has arrived (the stock call has then set its properties).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

# arguments every row shares although their leading dimension can equal the batch (Flux's 2-D position ids; the
# [tokens, dim] rotary tables of Stable Audio and CogVideoX): every family's, beside its own ``Calls.shared_args``
SHARED_ARGS = frozenset({"txt_ids", "img_ids", "rotary_embedding", "image_rotary_emb"})

__all__ = ["Calls", "Guidance", "GuidanceFn", "Loop", "PipelineSpec", "Step", "no_guidance"]

# (do_cfg, guidance_scale, guidance_rescale), read when the stock loop's first network call arrives
GuidanceFn = Callable[[Any, dict], tuple[bool, float, float]]
# (pipe, call_args, loop_ts) -> one value per loop step
PerStep = Callable[[Any, dict, torch.Tensor], Sequence[Any]]
# (cond, uncond, scale [rows, 1, ...]) -> guided output; a nonlinear combine (norm renormalisation) is allowed as
# long as it acts on each row alone
Combine = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def no_guidance(pipe: Any, args: dict) -> tuple[bool, float, float]:
    """A loop without classifier-free guidance (one branch)."""
    return False, 1.0, 0.0


@dataclass(frozen=True)
class Calls:
    """Which networks one loop step calls.

    denoiser:        attribute holding the network (``"unet"`` or ``"transformer"``)
    controlnet:      attribute holding a ControlNet called before the denoiser every step; the solve runs it inside
                     every model call on the same rows and hands its residuals to the denoiser
    latent_channels: ``pipe -> C``: the model input carries conditioning channels after the ``C`` latent ones
                     (inpainting UNets: mask and masked-image latents); None: all channels are latents
    learned_sigma:   the model may output ``2 * C`` channels (mean and variance); the loop keeps the first ``C``
    latent_tokens:   the model input carries conditioning tokens after the latents' on dim 1 (image latents:
                     Qwen-Image-Edit) and the loop keeps the output's first tokens; how many is read from the latents
                     ``prepare_latents`` returned (first element)
    timestep_arg:    the network's timestep argument (Z-Image: ``"t"``)
    list_axis:       the network takes and returns lists of per-sample tensors, each the batched input's sample with
                     a new axis here (Z-Image: 2, ``latents.unsqueeze(2).unbind(0)``); per-sample lists among its other
                     arguments (text features of per-prompt lengths) are rows too. None: batched tensors
    row_dims:        ``(name, dim)``: conditioning arguments whose batch (row) dimension is not the first
                     (HiDream's stacked Llama-3 states ``[layers, batch, tokens, dim]``: 1)
    shared_args:     arguments every row shares although their leading dimension may equal the batch (position
                     ids, rotary tables), beside the names diffusers' families use for them (``SHARED_ARGS``)
    experts:         attributes of further networks the loop may call in the denoiser's place (Wan 2.2's
                     ``transformer_2``); absent or None on a pipeline: not used
    denoiser_at:     per step: the attribute (``denoiser`` or one of ``experts``) whose network the step calls; the
                     batched call groups the rows by the network they need. None: ``denoiser`` every step
    """

    denoiser: str
    controlnet: str | None = None
    latent_channels: Callable[[Any], int] | None = None
    learned_sigma: bool = False
    latent_tokens: bool = False
    timestep_arg: str = "timestep"
    list_axis: int | None = None
    row_dims: tuple[tuple[str, int], ...] = ()
    shared_args: tuple[str, ...] = ()
    experts: tuple[str, ...] = ()
    denoiser_at: PerStep | None = None

    @property
    def shared(self) -> frozenset[str]:
        """The arguments passed whole to every call: ``SHARED_ARGS`` and ``shared_args``."""
        return SHARED_ARGS | frozenset(self.shared_args)


@dataclass(frozen=True)
class Guidance:
    """How classifier-free guidance is laid out and combined.

    read:     ``(pipe, call_args) -> (do_cfg, scale, rescale)``
    layout:   ``"batched"``: one call on ``[uncond; cond]`` rows (SD, SDXL, SD3, PixArt); ``"cond_first"``: one call
              on ``[cond; uncond]`` rows (DiT); ``"two_calls"``: two calls per step, conditional then unconditional
              (Flux's true CFG, Wan), which the solve batches as ``[uncond; cond]`` rows
    scale_at: per-step guidance scale (replaces ``read``'s scale step by step); None: ``read``'s scale every step
    combine:  ``(cond, uncond, scale) -> guided``; None: ``uncond + scale * (cond - uncond)``, then ``read``'s
              guidance rescale
    cfg_at:   per step: whether the step runs CFG (Lumina 2's ``cfg_trunc_ratio``, Z-Image's ``cfg_truncation``); a
              step without it calls the conditional branch only, and the batched call holds only its rows
    combine_for: ``(pipe, call_args) -> combine or None``: the combine chosen per call (Lumina 2's
              ``cfg_normalization``); where set, it replaces ``combine``
    pad:      ``"two_calls"``: ``(text, mask)`` argument pairs the two calls may give at different lengths (a prompt
              and a negative prompt padded each to its own longest): the shorter is zero-padded and masked, which is
              exact where the network masks padded tokens out of its attention
    """

    read: GuidanceFn = no_guidance
    layout: Literal["batched", "cond_first", "two_calls"] = "batched"
    scale_at: PerStep | None = None
    combine: Combine | None = None
    pad: tuple[tuple[str, str], ...] = ()
    cfg_at: PerStep | None = None
    combine_for: Callable[[Any, dict], Combine | None] | None = None

    @property
    def cond_first(self) -> bool:
        return self.layout == "cond_first"


@dataclass(frozen=True)
class Step:
    """What the loop hands ``scheduler.step``, and the network's timestep form.

    generator:      the loop passes the call's ``generator`` to ``scheduler.step`` (else it draws from the global
                    RNG)
    eta:            the loop passes the call's ``eta`` to ``scheduler.step`` (DDIM only)
    on_model_input: the loop hands ``scheduler.step`` the *scaled* model input (``scale_model_input``'s result) as
                    the sample (DiT): schedulers whose ``scale_model_input`` is not the identity (Euler, Euler
                    ancestral, Heun, LMS) then run another recurrence than the traced one and are refused
    rows_cfg:       ``scheduler.step`` runs on the CFG-doubled latents (DiT), so step noise has ``2B`` rows
    timestep:       the network's timestep: ``"t"`` the scheduler's timestep, ``"t/1000"`` ``t / 1000`` in the
                    latents' dtype (Flux), ``"1-t/N"`` ``1 - t / num_train_timesteps`` (Lumina 2: 0 is noise),
                    ``"(1000-t)/1000"`` (Z-Image), ``"t*timestep_scale"`` ``t`` times the network's
                    ``config.timestep_scale`` (SANA)
    negate:         the loop hands ``scheduler.step`` the negated prediction (Lumina 2, Z-Image)
    """

    generator: bool = True
    eta: bool = True
    on_model_input: bool = False
    rows_cfg: bool = False
    timestep: Literal["t", "t/1000", "1-t/N", "(1000-t)/1000", "t*timestep_scale"] = "t"
    negate: bool = False


@dataclass(frozen=True)
class Loop:
    """Where the loop ends and which call options it refuses.

    end:   ``(pipe, call_args, scheduler_timesteps) -> k1``: the loop stops before index ``k1`` (SDXL's
           ``denoising_end``); None: it runs to the end. Where it starts is read from the run (the scheduler's begin
           index, else the first model call's timestep), so img2img's ``strength`` needs no entry
    check: ``(pipe, call_args) -> None``; raises for call options the parallel loop cannot honour (before any work)
    """

    end: Callable[[Any, dict, Any], int] | None = None
    check: Callable[[Any, dict], None] | None = None


@dataclass(frozen=True)
class PipelineSpec:
    """How one pipeline's denoising loop calls its networks and its scheduler: four parts (see the module)."""

    calls: Calls
    guidance: Guidance = field(default_factory=Guidance)
    step: Step = field(default_factory=Step)
    loop: Loop = field(default_factory=Loop)
