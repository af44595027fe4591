"""The pipelines people run beyond text-to-image, each against the stock pipeline with the same generator.

img2img (SD, SDXL: ``strength`` is a shorter trajectory from the noised input, solved in parallel), inpainting with
a 9-channel UNet (SD, SDXL), SDXL base with ``denoising_end`` handing its latents to the refiner's
``denoising_start``, and ``StableDiffusion3Pipeline`` (flow matching with CFG). Tiny random-weight components built
from configs (CPU, offline), as in ``test_pipelines.py``.
"""

from __future__ import annotations

import pytest
import torch

import paratriton

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers", reason="diffusers' text pipelines need transformers")
from pipeline_parts import (  # noqa: E402 - the shared parts (pytest puts tests/ on sys.path)
    STEPS,
    _ddim,
    _ddpm,
    _gen,
    _images,
    _quiet,
    assert_same,
    checked_call,
    compare_calls,
    recorded_rows,
    run_pair,
)
from test_pipelines import make_sd, make_sdxl, sd_inputs, sdxl_inputs, text_inputs  # noqa: E402

from paratriton.testing.tiny_pipelines import FLUX_VAE_SCALE, assemble, tiny_denoiser, tiny_vae  # noqa: E402

SCHEDS = {"ddim": _ddim, "ddpm": _ddpm}


def _image(batch: int = 1, seed: int = 7) -> torch.Tensor:
    return torch.rand(batch, 3, 16, 16, generator=_gen(seed))  # in [0, 1], as a user's


def _mask(batch: int = 1) -> torch.Tensor:
    m = torch.zeros(batch, 1, 16, 16)
    m[..., 4:12, 2:10] = 1.0  # repaint a square
    return m


def _loop_steps(par) -> int:
    return par.paratriton.last_result.trajectory.shape[0] - 1


def _inpaint_unet(sdxl: bool):
    # 9 input channels: the latents, the mask and the masked image's latents
    return tiny_denoiser("sdxl" if sdxl else "sd", in_channels=9)


def _sd_family(cls_name: str, scheduler, unet=None):
    import diffusers as d

    base = make_sd(scheduler)
    comps = base.components
    if unet is not None:
        comps["unet"] = unet
    return _quiet(getattr(d, cls_name)(**comps, requires_safety_checker=False))


def _sdxl_family(cls_name: str, scheduler, unet=None):
    import diffusers as d

    comps = make_sdxl(scheduler).components
    if unet is not None:
        comps["unet"] = unet
    return _quiet(getattr(d, cls_name)(**comps, requires_aesthetics_score=False))


# ---------------------------------------------------------------------------------------------------------------
# img2img: strength = a shorter trajectory from the noised input
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sched", list(SCHEDS))
@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_img2img_matches_stock(family, sched):
    if family == "sd":
        pipe = _sd_family("StableDiffusionImg2ImgPipeline", SCHEDS[sched]())
        inputs = sd_inputs(1, True, output_type="latent", image=_image(), strength=0.6)
    else:
        pipe = _sdxl_family("StableDiffusionXLImg2ImgPipeline", SCHEDS[sched]())
        inputs = sdxl_inputs(1, True, output_type="latent", image=_image(), strength=0.6)
    ref, out, par = run_pair(pipe, inputs)
    assert par.paratriton.last_result.converged
    assert _loop_steps(par) == int(STEPS * 0.6)  # only the steps after the strength's timestep
    assert_same(ref, out)


# ---------------------------------------------------------------------------------------------------------------
# inpainting (9-channel UNets: the mask and masked-image latents are conditioning channels)
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strength", [1.0, 0.75])
@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_inpainting_matches_stock(family, strength):
    extra = {"image": _image(), "mask_image": _mask(), "strength": strength, "output_type": "latent"}
    if family == "sd":
        pipe = _sd_family("StableDiffusionInpaintPipeline", _ddpm(), unet=_inpaint_unet(False))
        inputs = sd_inputs(1, True, **extra)
    else:
        pipe = _sdxl_family("StableDiffusionXLInpaintPipeline", _ddpm(), unet=_inpaint_unet(True))
        inputs = sdxl_inputs(1, True, **extra)
    ref, out, par = run_pair(pipe, inputs)
    assert _loop_steps(par) == int(STEPS * strength)
    assert_same(ref, out)


def test_inpainting_with_a_4_channel_unet_is_refused():
    pipe = _sd_family("StableDiffusionInpaintPipeline", _ddim())
    par = paratriton.parallelize(pipe)
    with pytest.raises(ValueError, match="4-channel UNet blends"):
        par(**sd_inputs(1, False, image=_image(), mask_image=_mask()))


# ---------------------------------------------------------------------------------------------------------------
# SDXL base (denoising_end) + refiner (denoising_start)
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sched", list(SCHEDS))
def test_sdxl_denoising_end_then_refiner_matches_stock(sched):
    base = make_sdxl(SCHEDS[sched]())
    refiner = _sdxl_family("StableDiffusionXLImg2ImgPipeline", SCHEDS[sched]())
    fast_base, fast_refiner = (paratriton.parallelize(p, tol_abs=1e-7, tol_rel=1e-7) for p in (base, refiner))
    outs = {}
    for name, (b, r) in {"stock": (base, refiner), "par": (fast_base, fast_refiner)}.items():
        g = _gen()  # one generator through both halves; 1e-7 may be past the tiny UNet's floor: announced, asserted
        latents = checked_call(b, sdxl_inputs(1, True, denoising_end=0.7, output_type="latent"), generator=g).images
        image = checked_call(
            r, sdxl_inputs(1, True, image=latents, denoising_start=0.7, output_type="latent"), generator=g
        )
        outs[name] = (latents, _images(image))
    assert _loop_steps(fast_base) + _loop_steps(fast_refiner) == STEPS  # the two halves of one trajectory
    assert 0 < _loop_steps(fast_base) < STEPS
    assert_same(outs["stock"][0], outs["par"][0])
    assert_same(outs["stock"][1], outs["par"][1])


# ---------------------------------------------------------------------------------------------------------------
# Stable Diffusion 3: flow matching with CFG
# ---------------------------------------------------------------------------------------------------------------
def make_sd3(scheduler):
    from diffusers import StableDiffusion3Pipeline

    transformer = tiny_denoiser("sd3")
    vae = tiny_vae(**FLUX_VAE_SCALE, use_quant_conv=False, use_post_quant_conv=False)
    return assemble(StableDiffusion3Pipeline, transformer=transformer, scheduler=scheduler, vae=vae)


def sd3_inputs(batch: int, cfg: bool, **kw):
    return text_inputs(104, batch, cfg, {"prompt_embeds": (6, 32), "pooled_prompt_embeds": (64,)}, scale=4.0, **kw)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("sched", [{}, {"shift": 3.0}, {"stochastic_sampling": True}], ids=["euler", "shift", "sde"])
@pytest.mark.parametrize("cfg", [False, True], ids=["nocfg", "cfg"])
def test_sd3_matches_stock(cfg, sched, batch):
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe = make_sd3(FlowMatchEulerDiscreteScheduler(**sched))
    ref, out, par = run_pair(pipe, sd3_inputs(batch, cfg, output_type="latent"))
    assert par.paratriton.last_result.converged
    assert_same(ref, out)


def test_sd3_skip_layer_guidance_is_refused():
    from diffusers import FlowMatchEulerDiscreteScheduler

    par = paratriton.parallelize(make_sd3(FlowMatchEulerDiscreteScheduler()))
    with pytest.raises(ValueError, match="skip_guidance_layers"):
        par(**sd3_inputs(1, True), skip_guidance_layers=[0])


# ---------------------------------------------------------------------------------------------------------------
# Flux true CFG: two network calls per step in the stock loop, one [neg; cond] batch per iteration in the solve
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sched", [{}, {"stochastic_sampling": True}], ids=["euler", "sde"])
@pytest.mark.parametrize("guidance_embeds", [False, True], ids=["plain", "guidance_embed"])
def test_flux_true_cfg_matches_stock(guidance_embeds, sched):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from test_pipelines import flux_inputs, make_flux

    pipe = make_flux(FlowMatchEulerDiscreteScheduler(**sched), guidance_embeds)
    g = torch.Generator().manual_seed(5)
    neg = {
        "negative_prompt_embeds": torch.randn(2, 7, 32, generator=g),
        "negative_pooled_prompt_embeds": torch.randn(2, 32, generator=g),
    }
    inputs = flux_inputs(2, guidance_embeds, true_cfg_scale=3.0, output_type="latent", **neg)
    with recorded_rows(pipe.transformer) as rows:
        ref, out, par = run_pair(pipe, inputs)
    assert_same(ref, out)
    assert rows[: 2 * STEPS] == [2] * (2 * STEPS)  # stock: a conditional and a negative call per step
    assert max(rows[2 * STEPS :]) == 2 * 2 * STEPS  # parallel: both branches of every step in one call
    plain = _images(pipe(**{**inputs, "true_cfg_scale": 1.0}, generator=_gen()))
    assert (plain - ref).abs().max() > 1e-2  # true CFG changes the image: the comparison is not vacuous


# ---------------------------------------------------------------------------------------------------------------
# ControlNet (SD, SDXL): the ControlNet call is part of every model call, its per-step scale included
# ---------------------------------------------------------------------------------------------------------------
def _controlnet_from(unet):
    from diffusers import ControlNetModel

    torch.manual_seed(1)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8)).eval()
    # ControlNets start with zero output convolutions (no effect at all): randomise them so the test can fail
    zero_init = [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]
    with torch.no_grad():
        for module in zero_init:
            for p in module.parameters():
                p.normal_(0.0, 0.3)
    return net


def _controlnet_pipe(family: str, scheduler):
    from diffusers import StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline

    if family == "sd":
        comps = make_sd(scheduler).components
        comps["controlnet"] = _controlnet_from(comps["unet"])
        return _quiet(StableDiffusionControlNetPipeline(**comps, requires_safety_checker=False))
    comps = make_sdxl(scheduler).components
    comps["controlnet"] = _controlnet_from(comps["unet"])
    return _quiet(StableDiffusionXLControlNetPipeline(**comps))


@pytest.mark.parametrize("schedule", ["full", "windowed"])
@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_controlnet_matches_stock(family, schedule):
    pipe = _controlnet_pipe(family, _ddpm())
    extra = {"image": _image(), "output_type": "latent", "controlnet_conditioning_scale": 0.7}
    if schedule == "windowed":  # the ControlNet acts on the middle half of the steps only (controlnet_keep)
        extra.update(control_guidance_start=0.25, control_guidance_end=0.75)
    inputs = (sd_inputs if family == "sd" else sdxl_inputs)(1, True, **extra)
    ref, out, par = run_pair(pipe, inputs)
    assert_same(ref, out)
    off = _images(pipe(**{**inputs, "controlnet_conditioning_scale": 0.0}, generator=_gen()))
    assert (off - ref).abs().max() > 1e-2  # the ControlNet matters: the comparison is not vacuous


def test_controlnet_guess_mode_is_refused():
    par = paratriton.parallelize(_controlnet_pipe("sd", _ddim()))
    with pytest.raises(ValueError, match="guess_mode"):
        par(**sd_inputs(1, True, image=_image()), guess_mode=True)


# ---------------------------------------------------------------------------------------------------------------
# cuda_graph=True on the new paths (on the CPU the same static program runs without graphs): the conditioning they
# add (inpainting channels, the ControlNet's inputs and per-step scale, true CFG's merged branches) is copied into
# the cached solver's tensors, so a second call with other inputs replays correctly
# ---------------------------------------------------------------------------------------------------------------
def _graphed_case(name: str):
    if name == "controlnet":
        pipe = _controlnet_pipe("sd", _ddpm())

        def inputs(seed):
            return sd_inputs(1, True, image=_image(seed=seed), output_type="latent", control_guidance_end=0.5)

    elif name == "inpaint":
        pipe = _sd_family("StableDiffusionInpaintPipeline", _ddpm(), unet=_inpaint_unet(False))

        def inputs(seed):
            return sd_inputs(1, True, image=_image(seed=seed), mask_image=_mask(), strength=0.75, output_type="latent")

    else:
        from diffusers import FlowMatchEulerDiscreteScheduler
        from test_pipelines import flux_inputs, make_flux

        pipe = make_flux(FlowMatchEulerDiscreteScheduler(), False)

        def inputs(seed):
            g = torch.Generator().manual_seed(seed)
            neg = {
                "negative_prompt_embeds": torch.randn(1, 7, 32, generator=g),
                "negative_pooled_prompt_embeds": torch.randn(1, 32, generator=g),
            }
            return flux_inputs(1, False, true_cfg_scale=2.5, output_type="latent", **neg)

    return pipe, inputs


@pytest.mark.parametrize("name", ["controlnet", "inpaint", "flux_true_cfg"])
def test_cuda_graph_new_paths_match_stock_and_replay(name):
    pipe, inputs = _graphed_case(name)
    par = paratriton.parallelize(pipe, "picard", window=4, cuda_graph=True, tol_abs=1e-7, tol_rel=1e-7)
    for seed in (1, 2):  # the second call replays the cached solver with new conditioning
        # 1e-7 may be past the tiny networks' floor: then announced, and asserted
        ref, out = compare_calls(pipe, par, inputs(seed), seed)
        assert_same(ref, out)
        if seed == 1:
            entry = par.paratriton.graphed
    assert par.paratriton.graphed is entry and par.paratriton.last_result.method == "picard(graphed)"
