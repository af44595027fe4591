"""What differs between the supported diffusers pipelines, in one table.

Everything a pipeline does before and after its denoising loop (prompt encoding, latent preparation, timesteps,
decoding, output conversion) is run by the stock pipeline itself. The table only records what the parallel
solver must know about the *loop body*: which module is the denoiser, how classifier-free guidance is laid out
and combined, whether the model predicts a learned variance, which generator and ``eta`` the stock loop hands to
``scheduler.step`` (that decides where DDPM-style step noise comes from), and how the model's timestep is formed.
Read from diffusers 0.42.1; the parity tests in ``tests/test_pipelines*.py`` fail if a later release changes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["SPECS", "SUPPORTED_PIPELINES", "PipelineSpec", "find_spec"]

# (do_cfg, guidance_scale, guidance_rescale), read while the stock __call__ runs
GuidanceFn = Callable[[Any, dict], tuple[bool, float, float]]


@dataclass(frozen=True)
class PipelineSpec:
    """How one pipeline's denoising loop calls its model and its scheduler.

    denoiser:        attribute holding the network (``"unet"`` or ``"transformer"``)
    guidance:        ``(pipe, call_args) -> (do_cfg, scale, rescale)``; ``call_args`` are the bound ``__call__``
                     arguments with defaults applied
    cond_first:      CFG rows are ``[cond; uncond]`` (DiT) instead of ``[uncond; cond]``
    learned_sigma:   the model may output ``2 * C`` channels (mean and variance); the loop keeps the first ``C``
    step_rows_cfg:   ``scheduler.step`` runs on the CFG-doubled latents (DiT), so step noise has ``2B`` rows
    step_generator:  the loop passes the call's ``generator`` to ``scheduler.step`` (else it draws from the
                     global RNG)
    step_eta:        the loop passes the call's ``eta`` to ``scheduler.step`` (DDIM only)
    flow_timestep:   the model takes ``t / 1000`` in the latents' dtype (Flux)
    check:           ``(pipe, call_args) -> None``; raises for call options the parallel loop cannot honour
    loop_end:        ``(pipe, call_args, scheduler_timesteps) -> k1``: the loop stops before index ``k1`` (SDXL's
                     ``denoising_end``); None: it runs to the end. Where it starts is read from the run (the
                     scheduler's begin index, else the first model call's timestep), so img2img's ``strength`` needs
                     no entry
    latent_channels: ``pipe -> C``: the model input carries conditioning channels after the ``C`` latent ones
                     (inpainting UNets: mask and masked-image latents); None: all channels are latents
    true_cfg:        ``(pipe, call_args) -> scale or None``: the loop calls the network twice per step, conditional
                     then negative, and combines ``neg + scale * (cond - neg)`` (Flux's ``true_cfg_scale``); the
                     solve batches both calls as ``[neg; cond]`` rows
    controlnet:      attribute holding a ControlNet called before the denoiser every step; the solve runs it inside
                     every model call on the same rows and hands its residuals to the denoiser
    step_on_model_input: the loop hands ``scheduler.step`` the *scaled* model input (``scale_model_input``'s
                     result) as the sample (DiT): schedulers whose ``scale_model_input`` is not the identity (Euler,
                     Euler ancestral, Heun, LMS) then run another recurrence than the traced one and are refused
    """

    denoiser: str
    guidance: GuidanceFn
    cond_first: bool = False
    learned_sigma: bool = False
    step_rows_cfg: bool = False
    step_generator: bool = True
    step_eta: bool = True
    flow_timestep: bool = False
    check: Callable[[Any, dict], None] | None = None
    loop_end: Callable[[Any, dict, Any], int] | None = None
    latent_channels: Callable[[Any], int] | None = None
    true_cfg: Callable[[Any, dict], float | None] | None = None
    controlnet: str | None = None
    step_on_model_input: bool = False


def _no_guidance(pipe, args: dict) -> tuple[bool, float, float]:
    return False, 1.0, 0.0


def _guidance_from_properties(pipe, args: dict) -> tuple[bool, float, float]:
    # SD/SDXL/SD3 set _guidance_scale (and SD/SDXL _guidance_rescale) before the loop; do_classifier_free_guidance
    # also accounts for guidance-embedding UNets (time_cond_proj_dim), which never batch [uncond; cond]. SD img2img,
    # SD inpainting and SD3 have no guidance rescale.
    rescale = float(getattr(pipe, "guidance_rescale", 0.0) or 0.0)
    return bool(pipe.do_classifier_free_guidance), float(pipe.guidance_scale), rescale


def _guidance_from_scale_arg(pipe, args: dict) -> tuple[bool, float, float]:
    # DiT and PixArt-alpha: a local `do_classifier_free_guidance = guidance_scale > 1`
    scale = float(args["guidance_scale"])
    return scale > 1.0, scale, 0.0


def _sdxl_loop_end(pipe, args: dict, timesteps) -> int:
    """SDXL's ``denoising_end`` (base and img2img/inpainting, diffusers' own rule): the loop keeps the timesteps
    ``>= round(N - denoising_end * N)`` and stops before the rest (the refiner takes them with
    ``denoising_start``)."""
    end = getattr(pipe, "denoising_end", None)
    if isinstance(end, float) and 0 < end < 1:
        n = pipe.scheduler.config.num_train_timesteps
        cutoff = int(round(n - end * n))
        return int((timesteps >= cutoff).sum())
    return len(timesteps)


def _vae_latent_channels(pipe) -> int:
    return int(pipe.vae.config.latent_channels)


def _check_inpaint(pipe, args: dict) -> None:
    if pipe.unet.config.in_channels == _vae_latent_channels(pipe):
        raise ValueError(
            f"{type(pipe).__name__} with a {pipe.unet.config.in_channels}-channel UNet blends the known region back "
            "into the latents after every step, which is not one affine sampler step: not supported by the parallel "
            "loop. Use an inpainting UNet (9 input channels: latents, mask, masked image latents)"
        )


def _check_sd3(pipe, args: dict) -> None:
    if args.get("skip_guidance_layers") is not None:
        raise ValueError(
            "skip_guidance_layers (skip-layer guidance) is not supported by the parallel StableDiffusion3Pipeline: it "
            "makes a third, step-dependent model call; leave it None"
        )


def _check_pixart(pipe, args: dict) -> None:
    if args.get("num_inference_steps") == 1 and args.get("timesteps") is None and args.get("sigmas") is None:
        # the stock loop returns pred_original_sample instead of prev_sample for a single step
        raise ValueError("num_inference_steps must be >= 2 for the parallel PixArtAlphaPipeline, got 1")


def _flux_true_cfg(pipe, args: dict) -> float | None:
    # diffusers 0.42.1: do_true_cfg = true_cfg_scale > 1 and has_neg_prompt
    has_neg = args.get("negative_prompt") is not None or (
        args.get("negative_prompt_embeds") is not None and args.get("negative_pooled_prompt_embeds") is not None
    )
    scale = float(args.get("true_cfg_scale", 1.0))
    return scale if scale > 1.0 and has_neg else None


_SD = PipelineSpec("unet", _guidance_from_properties)
_SDXL = PipelineSpec("unet", _guidance_from_properties, loop_end=_sdxl_loop_end)


def _check_controlnet(pipe, args: dict) -> None:
    net = pipe.controlnet
    if type(net).__name__ != "ControlNetModel":
        raise ValueError(
            f"{type(net).__name__} is not supported by the parallel {type(pipe).__name__}: one ControlNetModel only "
            "(MultiControlNetModel and union ControlNets are not)"
        )
    if args.get("guess_mode") or net.config.global_pool_conditions:
        raise ValueError(
            f"guess_mode (or a ControlNet with global_pool_conditions) is not supported by the parallel "
            f"{type(pipe).__name__}: the ControlNet then sees only the conditional rows"
        )


SPECS: dict[str, PipelineSpec] = {
    "StableDiffusionPipeline": _SD,
    # img2img: the loop starts at the strength's timestep, which the parallel call reads from the run
    "StableDiffusionImg2ImgPipeline": _SD,
    "StableDiffusionInpaintPipeline": PipelineSpec(
        "unet", _guidance_from_properties, latent_channels=_vae_latent_channels, check=_check_inpaint
    ),
    "StableDiffusionXLPipeline": _SDXL,
    "StableDiffusionXLImg2ImgPipeline": _SDXL,  # also the refiner (denoising_start)
    "StableDiffusionXLInpaintPipeline": PipelineSpec(
        "unet",
        _guidance_from_properties,
        loop_end=_sdxl_loop_end,
        latent_channels=_vae_latent_channels,
        check=_check_inpaint,
    ),
    "StableDiffusionControlNetPipeline": PipelineSpec(
        "unet", _guidance_from_properties, controlnet="controlnet", check=_check_controlnet
    ),
    "StableDiffusionXLControlNetPipeline": PipelineSpec(
        "unet", _guidance_from_properties, loop_end=_sdxl_loop_end, controlnet="controlnet", check=_check_controlnet
    ),
    "StableDiffusion3Pipeline": PipelineSpec(
        "transformer", _guidance_from_properties, step_generator=False, step_eta=False, check=_check_sd3
    ),
    "PixArtAlphaPipeline": PipelineSpec(
        "transformer", _guidance_from_scale_arg, learned_sigma=True, check=_check_pixart
    ),
    "DiTPipeline": PipelineSpec(
        "transformer",
        _guidance_from_scale_arg,
        cond_first=True,
        learned_sigma=True,
        step_rows_cfg=True,
        step_generator=False,
        step_eta=False,
        step_on_model_input=True,
    ),
    "FluxPipeline": PipelineSpec(
        "transformer", _no_guidance, step_generator=False, step_eta=False, flow_timestep=True, true_cfg=_flux_true_cfg
    ),
    "DDPMPipeline": PipelineSpec("unet", _no_guidance, step_eta=False),
    "DDIMPipeline": PipelineSpec("unet", _no_guidance),
}
SUPPORTED_PIPELINES = tuple(SPECS)


def find_spec(pipeline_class: type) -> tuple[type, PipelineSpec]:
    """Return ``(stock diffusers class, spec)`` for a supported pipeline class (or a subclass of one)."""
    for klass in pipeline_class.__mro__:
        if klass.__name__ in SPECS and klass.__module__.startswith("diffusers."):
            return klass, SPECS[klass.__name__]
    raise ValueError(
        f"pipeline {pipeline_class.__name__} is not supported by paratriton.parallelize; "
        f"supported: {SUPPORTED_PIPELINES}"
    )
