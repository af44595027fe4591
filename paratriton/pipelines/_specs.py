"""What differs between the supported diffusers pipelines, in one table.

Everything a pipeline does before and after its denoising loop (prompt encoding, latent preparation, timesteps,
decoding, output conversion) is run by the stock pipeline itself. The table only records what the parallel
solver must know about the *loop body*, as a ``PipelineSpec`` of four parts (``_spec_parts.py``): ``Calls`` (which
networks, on which inputs), ``Guidance`` (how the CFG branches are laid out and combined, per step where the loop
varies it), ``Step`` (what the loop hands ``scheduler.step``, the timestep form) and ``Loop`` (where it ends, what
it refuses). The flow-matching transformer families with separate CFG calls are in ``_specs_flow.py``.
Read from diffusers 0.42.1; the parity tests in ``tests/test_pipelines*.py`` fail if a later release changes it.
"""

from __future__ import annotations

import math

from ._spec_parts import Calls, Guidance, Loop, PipelineSpec, Step
from ._specs_flow import FLOW_SPECS

__all__ = ["SPECS", "SUPPORTED_PIPELINES", "Calls", "Guidance", "Loop", "PipelineSpec", "Step", "find_spec"]


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


def _flux_true_cfg(pipe, args: dict) -> tuple[bool, float, float]:
    # diffusers 0.42.1: do_true_cfg = true_cfg_scale > 1 and has_neg_prompt (the guidance embedding is not CFG)
    has_neg = args.get("negative_prompt") is not None or (
        args.get("negative_prompt_embeds") is not None and args.get("negative_pooled_prompt_embeds") is not None
    )
    scale = float(args.get("true_cfg_scale", 1.0))
    return scale > 1.0 and has_neg, scale, 0.0


def _cogvideox_dynamic_cfg(pipe, args: dict, loop_ts) -> list[float]:
    """CogVideoX's ``use_dynamic_cfg``: ``1 + s (1 - cos(pi ((N - t) / N) ** 5)) / 2`` at timestep ``t`` (the
    stock loop's own formula, ``N`` its step count); the constant scale otherwise."""
    scale = float(args["guidance_scale"])
    if not args.get("use_dynamic_cfg"):
        return [scale] * len(loop_ts)
    n = len(pipe.scheduler.timesteps)
    return [1 + scale * ((1 - math.cos(math.pi * ((n - float(t)) / n) ** 5.0)) / 2) for t in loop_ts]


_CFG = Guidance(_guidance_from_properties)
_SD = PipelineSpec(Calls("unet"), _CFG)
_SDXL = PipelineSpec(Calls("unet"), _CFG, loop=Loop(end=_sdxl_loop_end))


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


_NO_STEP_ARGS = Step(generator=False, eta=False)  # the loop hands scheduler.step neither generator nor eta

SPECS: dict[str, PipelineSpec] = {
    "StableDiffusionPipeline": _SD,
    # img2img: the loop starts at the strength's timestep, which the parallel call reads from the run
    "StableDiffusionImg2ImgPipeline": _SD,
    "StableDiffusionInpaintPipeline": PipelineSpec(
        Calls("unet", latent_channels=_vae_latent_channels), _CFG, loop=Loop(check=_check_inpaint)
    ),
    "StableDiffusionXLPipeline": _SDXL,
    "StableDiffusionXLImg2ImgPipeline": _SDXL,  # also the refiner (denoising_start)
    "StableDiffusionXLInpaintPipeline": PipelineSpec(
        Calls("unet", latent_channels=_vae_latent_channels), _CFG, loop=Loop(_sdxl_loop_end, _check_inpaint)
    ),
    "StableDiffusionControlNetPipeline": PipelineSpec(
        Calls("unet", controlnet="controlnet"), _CFG, loop=Loop(check=_check_controlnet)
    ),
    "StableDiffusionXLControlNetPipeline": PipelineSpec(
        Calls("unet", controlnet="controlnet"), _CFG, loop=Loop(_sdxl_loop_end, _check_controlnet)
    ),
    "StableDiffusion3Pipeline": PipelineSpec(Calls("transformer"), _CFG, _NO_STEP_ARGS, Loop(check=_check_sd3)),
    "PixArtAlphaPipeline": PipelineSpec(
        Calls("transformer", learned_sigma=True), Guidance(_guidance_from_scale_arg), loop=Loop(check=_check_pixart)
    ),
    "DiTPipeline": PipelineSpec(
        Calls("transformer", learned_sigma=True),
        Guidance(_guidance_from_scale_arg, layout="cond_first"),
        Step(generator=False, eta=False, on_model_input=True, rows_cfg=True),
    ),
    "FluxPipeline": PipelineSpec(
        Calls("transformer"),
        Guidance(_flux_true_cfg, layout="two_calls"),  # true CFG; the guidance embedding is a model input
        Step(generator=False, eta=False, timestep="t/1000"),
    ),
    "FluxKontextPipeline": PipelineSpec(
        Calls("transformer", latent_tokens=True),
        Guidance(_flux_true_cfg, layout="two_calls"),
        Step(generator=False, eta=False, timestep="t/1000"),
    ),
    "Flux2Pipeline": PipelineSpec(Calls("transformer", latent_tokens=True), step=Step(False, False, timestep="t/1000")),
    "SanaPipeline": PipelineSpec(Calls("transformer", learned_sigma=True), _CFG, Step(timestep="t*timestep_scale")),
    "HiDreamImagePipeline": PipelineSpec(  # noise_pred = -noise_pred; Llama-3 states [layers, batch, tokens, dim]
        Calls("transformer", timestep_arg="timesteps", row_dims=(("encoder_hidden_states_llama3", 1),)),
        _CFG,
        Step(generator=False, eta=False, negate=True),
    ),
    "LTXPipeline": PipelineSpec(Calls("transformer"), _CFG, _NO_STEP_ARGS),  # with its guidance_rescale
    "CogVideoXPipeline": PipelineSpec(
        Calls("transformer"), Guidance(_guidance_from_scale_arg, scale_at=_cogvideox_dynamic_cfg)
    ),
    # the low-res image (noised by low_res_scheduler before the loop) after the latent channels; noise_level rides
    # along as per-row class labels
    "StableDiffusionUpscalePipeline": PipelineSpec(
        Calls("unet", latent_channels=_vae_latent_channels), Guidance(_guidance_from_scale_arg)
    ),
    "AudioLDM2Pipeline": PipelineSpec(Calls("unet"), Guidance(_guidance_from_scale_arg)),
    "StableAudioPipeline": PipelineSpec(Calls("transformer"), Guidance(_guidance_from_scale_arg)),
    "DDPMPipeline": PipelineSpec(Calls("unet"), step=Step(eta=False)),
    "DDIMPipeline": PipelineSpec(Calls("unet")),
    **FLOW_SPECS,
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
