"""Spec rows of the flow-matching transformer families with separate CFG calls (Wan, Qwen-Image, Chroma, Lumina 2,
Z-Image), read from diffusers 0.42.1; ``tests/test_pipelines_flow.py`` holds each to the stock pipeline."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch

from ._spec_parts import Calls, Guidance, Loop, PipelineSpec, Step

__all__ = ["FLOW_SPECS"]

_NO_STEP_ARGS = Step(generator=False, eta=False)  # these loops hand scheduler.step neither generator nor eta


def _guidance_property(pipe: Any, args: dict) -> tuple[bool, float, float]:
    # Wan, Chroma, Lumina 2: do_classifier_free_guidance = guidance_scale > 1, set before the loop
    return bool(pipe.do_classifier_free_guidance), float(pipe.guidance_scale), 0.0


def _wan_boundary(pipe: Any) -> float | None:
    ratio = pipe.config.boundary_ratio
    return None if ratio is None else ratio * pipe.scheduler.config.num_train_timesteps


def _wan_denoiser_at(pipe: Any, args: dict, loop_ts: torch.Tensor) -> list[str]:
    # diffusers 0.42.1: t >= boundary_timestep (or no boundary): transformer, else transformer_2
    boundary = _wan_boundary(pipe)
    return ["transformer" if boundary is None or float(t) >= boundary else "transformer_2" for t in loop_ts]


def _wan_scale_at(pipe: Any, args: dict, loop_ts: torch.Tensor) -> list[float]:
    boundary = _wan_boundary(pipe)
    g1, g2 = float(pipe._guidance_scale), pipe._guidance_scale_2
    return [g1 if boundary is None or float(t) >= boundary else float(g2) for t in loop_ts]


def _check_wan(pipe: Any, args: dict) -> None:
    name = type(pipe).__name__
    if getattr(pipe.config, "expand_timesteps", False):
        raise ValueError(
            f"expand_timesteps (Wan 2.2 TI2V) is not supported by the parallel {name}: its per-token timestep keeps "
            "the first frame's tokens at t=0 and blends the conditioning latents back after every step"
        )
    if pipe.transformer is None:
        raise ValueError(f"the parallel {name} needs a transformer (the high-noise expert), got None")
    if pipe.config.boundary_ratio is not None and getattr(pipe, "transformer_2", None) is None:
        raise ValueError(f"{name} with boundary_ratio needs transformer_2 (the low-noise expert), got None")


def _qwen_true_cfg(pipe: Any, args: dict) -> tuple[bool, float, float]:
    # diffusers 0.42.1: do_true_cfg = true_cfg_scale > 1 and has_neg_prompt (guidance_scale is an embedding)
    has_neg = args.get("negative_prompt") is not None or args.get("negative_prompt_embeds") is not None
    scale = float(args.get("true_cfg_scale", 1.0))
    return scale > 1.0 and has_neg, scale, 0.0


def renormalised_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Qwen-Image's combine: linear CFG rescaled to the conditional prediction's norm over the last dimension."""
    comb = uncond + scale * (cond - uncond)
    return comb * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))


def _check_chroma(pipe: Any, args: dict) -> None:
    keys = (
        "ip_adapter_image",
        "ip_adapter_image_embeds",
        "negative_ip_adapter_image",
        "negative_ip_adapter_image_embeds",
    )
    if any(args.get(k) is not None for k in keys):
        raise ValueError(
            f"IP-Adapter images are not supported by the parallel {type(pipe).__name__}: its loop swaps the image "
            "embeddings inside joint_attention_kwargs between the conditional and the negative call, which one "
            "batched call cannot do"
        )


def _lumina_guidance(pipe: Any, args: dict) -> tuple[bool, float, float]:
    # no CFG call at all where the truncation starts at the first step
    do_cfg, scale, rescale = _guidance_property(pipe, args)
    first_on = 1 / len(pipe.scheduler.timesteps) <= float(args.get("cfg_trunc_ratio", 1.0))
    return do_cfg and first_on, scale, rescale


def _lumina_cfg_at(pipe: Any, args: dict, loop_ts: torch.Tensor) -> list[bool]:
    # diffusers 0.42.1: CFG on loop step i unless (i + 1) / num_inference_steps > cfg_trunc_ratio (truncation)
    n, ratio = len(pipe.scheduler.timesteps), float(args.get("cfg_trunc_ratio", 1.0))
    k0 = n - len(loop_ts)
    return [not (k0 + j + 1) / n > ratio for j in range(len(loop_ts))]


def _lumina_combine(pipe: Any, args: dict):
    return renormalised_cfg if args.get("cfg_normalization", True) else None


def _zimage_truncated(pipe: Any, args: dict, t: Any) -> bool:
    # diffusers 0.42.1: guidance 0 from the step whose (1000 - t) / 1000 exceeds cfg_truncation (when <= 1)
    trunc = getattr(pipe, "_cfg_truncation", None)
    return trunc is not None and float(trunc) <= 1 and (1000 - float(t)) / 1000 > float(trunc)


def _zimage_guidance(pipe: Any, args: dict) -> tuple[bool, float, float]:
    # do_classifier_free_guidance = guidance_scale > 0; no CFG call at all where the first step is truncated
    scale = float(pipe.guidance_scale)
    first = pipe.scheduler.timesteps[0]
    return scale > 0 and not _zimage_truncated(pipe, args, first), scale, 0.0


def _zimage_cfg_at(pipe: Any, args: dict, loop_ts: torch.Tensor) -> list[bool]:
    return [not _zimage_truncated(pipe, args, t) for t in loop_ts.float()]


def zimage_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: torch.Tensor, clamp: float = 0.0) -> torch.Tensor:
    """Z-Image's combine: ``cond + scale * (cond - uncond)``; with ``clamp > 0`` each sample's norm is at most
    ``clamp`` times the conditional one's."""
    pred = cond + scale * (cond - uncond)
    if clamp > 0:
        dims = tuple(range(1, cond.ndim))
        limit = torch.linalg.vector_norm(cond, dim=dims, keepdim=True) * clamp
        norm = torch.linalg.vector_norm(pred, dim=dims, keepdim=True)
        pred = torch.where(norm > limit, pred * (limit / norm), pred)
    return pred


def _zimage_combine(pipe: Any, args: dict):
    clamp = float(pipe._cfg_normalization or 0.0)
    return functools.partial(zimage_cfg, clamp=clamp)


def _wan_latent_channels(pipe: Any) -> int:
    return int(pipe.vae.config.z_dim)


# Wan 2.1 and 2.2: a conditional then an unconditional call per step; 2.2 switches to transformer_2 and
# guidance_scale_2 below the boundary timestep
_WAN_CALLS = Calls("transformer", experts=("transformer_2",), denoiser_at=_wan_denoiser_at)
_WAN_GUIDANCE = Guidance(_guidance_property, "two_calls", scale_at=_wan_scale_at)

_QWEN_GUIDANCE = Guidance(
    _qwen_true_cfg,
    "two_calls",
    combine=renormalised_cfg,
    pad=(("encoder_hidden_states", "encoder_hidden_states_mask"),),
)
_T_OVER_1000 = Step(generator=False, eta=False, timestep="t/1000")

FLOW_SPECS: dict[str, PipelineSpec] = {
    "WanPipeline": PipelineSpec(_WAN_CALLS, _WAN_GUIDANCE, _NO_STEP_ARGS, Loop(check=_check_wan)),
    # image to video: the first (and last) frame's mask and latents follow the latents on channels
    "WanImageToVideoPipeline": PipelineSpec(
        dataclasses.replace(_WAN_CALLS, latent_channels=_wan_latent_channels),
        _WAN_GUIDANCE,
        _NO_STEP_ARGS,
        Loop(check=_check_wan),
    ),
    # Qwen-Image: a conditional then a negative call (true_cfg_scale), renormalised to the conditional norm
    "QwenImagePipeline": PipelineSpec(Calls("transformer"), _QWEN_GUIDANCE, _T_OVER_1000),
    # the edit pipeline: the input image's latents follow the latents on the token axis and are sliced off
    "QwenImageEditPipeline": PipelineSpec(Calls("transformer", latent_tokens=True), _QWEN_GUIDANCE, _T_OVER_1000),
    # Chroma: a conditional then a negative call (guidance_scale > 1), each with its own text ids and attention mask
    "ChromaPipeline": PipelineSpec(
        Calls("transformer"), Guidance(_guidance_property, "two_calls"), _T_OVER_1000, Loop(check=_check_chroma)
    ),
    # Lumina 2: 0 is noise (timestep 1 - t / N), CFG only up to cfg_trunc_ratio, optionally renormalised, and
    # scheduler.step gets the negated prediction
    "Lumina2Pipeline": PipelineSpec(
        Calls("transformer"),
        Guidance(
            _lumina_guidance,
            "two_calls",
            cfg_at=_lumina_cfg_at,
            combine_for=_lumina_combine,
        ),
        Step(generator=False, eta=False, timestep="1-t/N", negate=True),
    ),
    # Z-Image: lists of per-sample tensors, [cond; uncond] in one call, CFG truncated by step, a norm clamp, and
    # scheduler.step gets the negated prediction
    "ZImagePipeline": PipelineSpec(
        Calls("transformer", timestep_arg="t", list_axis=2),
        Guidance(_zimage_guidance, "cond_first", cfg_at=_zimage_cfg_at, combine_for=_zimage_combine),
        Step(generator=False, eta=False, timestep="(1000-t)/1000", negate=True),
    ),
}
