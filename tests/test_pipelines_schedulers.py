"""parallelize with the traced schedulers of issue 18 on tiny offline pipelines (CPU, no weights, no tokenizer).

The same generator gives the stock image: Euler (SDXL's default), Euler ancestral, DPM-Solver++ 2M (Karras) and its
SDE variant, UniPC, Heun, PNDM (SD-1.5's default, with and without the Runge-Kutta warm-up), LMS and DEIS through the
SD and SDXL pipelines, the identity-input ones through PixArt and DiT, the flow-sigma ones through Flux. Stochastic
schedulers draw their step noise up front in the stock order (``noise_draw_steps``); Heun and PNDM's warm-up solve
one step per network call (``T = len(scheduler.timesteps)``); ``scale_model_input`` is part of the model call. A loop
that starts late (SD/SDXL img2img and SD inpainting with ``strength < 1``, the SDXL refiner's ``denoising_start``)
is traced from its begin index, so the multistep warm-up restarts where the stock loop restarts it.
"""

from __future__ import annotations

import pytest
import torch

import paratriton

pytest.importorskip("diffusers")
import diffusers  # noqa: E402
from test_pipelines import (  # noqa: E402 - after importorskip
    TEXT_CASES,
    _gen,
    _images,
    check_floor_warning,
    floor_warnings,
    flux_inputs,
    make_dit,
    make_flux,
    make_sd,
    make_sdxl,
    run_pair,
    sd_inputs,
    sdxl_inputs,
)
from test_pipelines_more import _image, _inpaint_unet, _mask, _sd_family, _sdxl_family  # noqa: E402

STEPS = 5
SD_CONFIG = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)

SCHEDULERS = {
    # SDXL's shipped scheduler config
    "euler": lambda: diffusers.EulerDiscreteScheduler(
        **SD_CONFIG, timestep_spacing="leading", interpolation_type="linear"
    ),
    "euler_karras": lambda: diffusers.EulerDiscreteScheduler(**SD_CONFIG, use_karras_sigmas=True),
    "euler_ancestral": lambda: diffusers.EulerAncestralDiscreteScheduler(**SD_CONFIG),
    "dpm++2m_karras": lambda: diffusers.DPMSolverMultistepScheduler(
        **SD_CONFIG, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True
    ),
    "sde-dpm++2m_karras": lambda: diffusers.DPMSolverMultistepScheduler(
        **SD_CONFIG, algorithm_type="sde-dpmsolver++", solver_order=2, use_karras_sigmas=True
    ),
    "unipc": lambda: diffusers.UniPCMultistepScheduler(**SD_CONFIG),
    "heun": lambda: diffusers.HeunDiscreteScheduler(**SD_CONFIG),
    "pndm_prk": lambda: diffusers.PNDMScheduler(**SD_CONFIG),
    "pndm_skip_prk": lambda: diffusers.PNDMScheduler(**SD_CONFIG, skip_prk_steps=True),  # SD-1.5's shipped config
    "lms": lambda: diffusers.LMSDiscreteScheduler(**SD_CONFIG),
    "deis": lambda: diffusers.DEISMultistepScheduler(**SD_CONFIG),
    # CogVideoX-2b's (SNR-shifted, zero terminal SNR, v-prediction)
    "cogvideox_ddim": lambda: diffusers.CogVideoXDDIMScheduler(
        **SD_CONFIG,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        snr_shift_scale=3.0,
        timestep_spacing="trailing",
        clip_sample=False,
    ),
}
# the schedulers whose scale_model_input is the identity (DiT steps the scaled model input)
IDENTITY_INPUT = ("dpm++2m_karras", "sde-dpm++2m_karras", "unipc", "pndm_prk", "pndm_skip_prk", "deis")


def assert_parity(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Max abs error within 1e-4 or 1e-6 of the latents' scale (the tiny random nets give latents up to ~100)."""
    assert ref.shape == out.shape
    err = (ref.double() - out.double()).abs().max().item()
    bound = max(1e-4, 1e-6 * ref.abs().max().item())
    assert err <= bound, f"max abs error {err:.3e} > {bound:.3e}"
    return err


def _check_result(par, pipe_scheduler) -> None:
    res = par.paratriton.last_result
    sched = pipe_scheduler
    sched.set_timesteps(STEPS)
    assert res.converged
    assert res.trajectory.shape[0] - 1 == len(sched.timesteps)  # one solver step per network call (Heun, PNDM)
    assert res.iterations <= len(sched.timesteps)


@pytest.mark.parametrize("sched", list(SCHEDULERS))
@pytest.mark.parametrize("name", ["sd", "sdxl"])
def test_sd_and_sdxl_match_stock_with_every_scheduler(name, sched):
    make, inputs = TEXT_CASES[name]
    pipe = make(SCHEDULERS[sched]())
    ref, out, par = run_pair(pipe, inputs(1, True, output_type="latent", num_inference_steps=STEPS))
    _check_result(par, SCHEDULERS[sched]())
    assert_parity(ref, out)


@pytest.mark.parametrize("sched", ["euler_ancestral", "sde-dpm++2m_karras"])
def test_stochastic_schedulers_batch_with_per_sample_generators(sched):
    make, inputs = TEXT_CASES["sd"]
    pipe = make(SCHEDULERS[sched]())
    ref, out, par = run_pair(
        pipe, inputs(2, True, output_type="latent", num_inference_steps=STEPS), per_sample_generators=2
    )
    assert par.paratriton.last_result.converged
    assert_parity(ref, out)
    # another generator gives another image: the step noise really comes from the call's generator
    with floor_warnings() as caught:
        other = _images(par(**inputs(2, True, output_type="latent", num_inference_steps=STEPS), generator=_gen(5, 2)))
    check_floor_warning(caught, par.paratriton.last_result)
    assert (other - out).abs().max() > 1e-2


@pytest.mark.parametrize("sched", ["dpm++2m_karras", "euler_ancestral", "heun"])
def test_pixart_matches_stock(sched):
    make, inputs = TEXT_CASES["pixart"]
    ref, out, par = run_pair(
        make(SCHEDULERS[sched]()), inputs(1, True, output_type="latent", num_inference_steps=STEPS)
    )
    assert par.paratriton.last_result.converged
    assert_parity(ref, out)


@pytest.mark.parametrize("sched", ["dpm++2m_karras", "sde-dpm++2m_karras", "pndm_prk"])
def test_dit_matches_stock(sched):
    _, inputs = TEXT_CASES["dit"]
    ref, out, par = run_pair(make_dit(SCHEDULERS[sched]()), inputs(2, True, num_inference_steps=STEPS))
    assert par.paratriton.last_result.converged
    assert_parity(ref, out)


@pytest.mark.parametrize("sched", ["euler", "heun", "lms"])
def test_dit_refuses_input_scaling_schedulers(sched):
    _, inputs = TEXT_CASES["dit"]
    par = paratriton.parallelize(make_dit(SCHEDULERS[sched]()))
    with pytest.raises(ValueError, match="DiTPipeline hands scheduler.step the scaled model input.*supported here"):
        par(**inputs(1, True, num_inference_steps=STEPS))


@pytest.mark.parametrize(
    "make",
    [
        lambda: diffusers.UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, use_dynamic_shifting=True
        ),
        lambda: diffusers.DPMSolverMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, use_dynamic_shifting=True
        ),
    ],
    ids=["unipc", "dpm++2m"],
)
def test_flux_with_flow_sigma_multistep_schedulers_matches_stock(make):
    ref, out, par = run_pair(make_flux(make(), True), flux_inputs(1, True, output_type="latent"))
    assert par.paratriton.last_result.converged
    assert_parity(ref, out)


def test_sdxl_denoising_end_with_a_multistep_scheduler_matches_stock():
    make, inputs = TEXT_CASES["sdxl"]
    pipe = make(SCHEDULERS["dpm++2m_karras"]())
    ref, out, par = run_pair(pipe, inputs(1, False, output_type="latent", num_inference_steps=6, denoising_end=0.6))
    assert par.paratriton.last_result.trajectory.shape[0] - 1 < 6
    assert_parity(ref, out)


# ---------------------------------------------------------------------------------------------------------------
# a loop that starts late (img2img/inpainting strength, the refiner's denoising_start): the scheduler's history
# (warm-up orders, stored outputs) starts at the loop's first step, as the stock loop steps from the begin index
# ---------------------------------------------------------------------------------------------------------------
LATE_STEPS = 10
LATE_START = {
    "dpm++2m": lambda: diffusers.DPMSolverMultistepScheduler(**SD_CONFIG, algorithm_type="dpmsolver++", solver_order=2),
    "dpm++2m_karras": SCHEDULERS["dpm++2m_karras"],
    "unipc": SCHEDULERS["unipc"],
    "pndm_skip_prk": SCHEDULERS["pndm_skip_prk"],
    "euler": SCHEDULERS["euler"],  # one tap: the control
}


def _late_case(case: str, scheduler, **kw):
    """(pipeline, inputs) of an img2img or inpainting call with ``strength < 1`` on the tiny offline pipelines."""
    extra = {"image": _image(), "output_type": "latent", "num_inference_steps": LATE_STEPS, **kw}
    if case == "sd_img2img":
        return _sd_family("StableDiffusionImg2ImgPipeline", scheduler), sd_inputs(1, True, **extra)
    if case == "sd_inpaint":
        pipe = _sd_family("StableDiffusionInpaintPipeline", scheduler, unet=_inpaint_unet(False))
        return pipe, sd_inputs(1, True, mask_image=_mask(), **extra)
    return _sdxl_family("StableDiffusionXLImg2ImgPipeline", scheduler), sdxl_inputs(1, True, **extra)


def _check_late(pipe, par, ref, out) -> None:
    steps = par.paratriton.last_result.trajectory.shape[0] - 1
    assert par.paratriton.last_result.converged
    assert steps == pipe.num_timesteps < len(pipe.scheduler.timesteps)  # the stock loop's steps, and only those
    assert_parity(ref, out)


@pytest.mark.parametrize("sched", list(LATE_START))
@pytest.mark.parametrize("case", ["sd_img2img", "sd_inpaint", "sdxl_img2img"])
def test_strength_below_one_matches_stock(case, sched):
    pipe, inputs = _late_case(case, LATE_START[sched](), strength=0.6)
    ref, out, par = run_pair(pipe, inputs)
    _check_late(pipe, par, ref, out)


@pytest.mark.parametrize("sched,strength", [("pndm_skip_prk", 0.8), ("pndm_skip_prk", 0.9), ("heun", 0.8)])
def test_late_start_on_a_repeated_timestep_matches_stock(sched, strength):
    # PNDM repeats its second timestep and sets no begin index (the loop's length tells which copy starts it);
    # Heun's begin index 2 * t_start is a second-stage timestep's first-order step
    pipe, inputs = _late_case("sd_img2img", SCHEDULERS[sched](), strength=strength)
    ref, out, par = run_pair(pipe, inputs)
    _check_late(pipe, par, ref, out)


@pytest.mark.parametrize("sched", list(LATE_START))
def test_sdxl_refiner_denoising_start_matches_stock(sched):
    # the base's latents (stock, denoising_end) handed to the refiner, which starts at denoising_start
    base = make_sdxl(LATE_START[sched]())
    latents = base(
        **sdxl_inputs(1, True, denoising_end=0.7, output_type="latent", num_inference_steps=LATE_STEPS),
        generator=_gen(),
    ).images
    refiner = _sdxl_family("StableDiffusionXLImg2ImgPipeline", LATE_START[sched]())
    inputs = sdxl_inputs(
        1, True, image=latents, denoising_start=0.7, output_type="latent", num_inference_steps=LATE_STEPS
    )
    ref, out, par = run_pair(refiner, inputs)
    _check_late(refiner, par, ref, out)
    assert base.num_timesteps + refiner.num_timesteps == len(refiner.scheduler.timesteps)  # one trajectory's halves


@pytest.mark.parametrize(
    "make,when,match",
    [
        (
            lambda: diffusers.KDPM2DiscreteScheduler(),
            "wrap",
            "KDPM2DiscreteScheduler is not supported.*supported: .*"
            "DDIMScheduler.*EulerDiscreteScheduler.*DPMSolverMultistepScheduler.*PNDMScheduler",
        ),
        (lambda: diffusers.DPMSolverSinglestepScheduler(), "wrap", "DPMSolverSinglestepScheduler is not supported"),
        (lambda: diffusers.DPMSolverMultistepScheduler(**SD_CONFIG, thresholding=True), "call", "thresholding=True"),
        (
            lambda: diffusers.UniPCMultistepScheduler(**SD_CONFIG, solver_p=diffusers.DDIMScheduler()),
            "call",
            "solver_p",
        ),
    ],
    ids=["kdpm2", "dpm_singlestep", "thresholding", "unipc_solver_p"],
)
def test_unsupported_scheduler_or_option_names_it(make, when, match):
    _, inputs = TEXT_CASES["sd"]
    pipe = make_sd(make())
    if when == "wrap":
        with pytest.raises(ValueError, match=match):
            paratriton.parallelize(pipe)
        return
    with pytest.raises(ValueError, match=match):
        paratriton.parallelize(pipe)(**inputs(1, False, num_inference_steps=STEPS, output_type="latent"))


@pytest.mark.parametrize("method", ["srds", "srds_pipelined"])
def test_srds_with_a_multistep_scheduler(method):
    """SRDS carries the multistep history across its blocks: the stock DPM-Solver++ 2M image (6 steps in 3 blocks)."""
    make, inputs = TEXT_CASES["sd"]
    pipe = make(SCHEDULERS["dpm++2m_karras"]())
    ref, out, par = run_pair(pipe, inputs(1, True, output_type="latent", num_inference_steps=6), method, blocks=3)
    res = par.paratriton.last_result
    assert res.converged and res.blocks == 3 and res.critical_path <= 6
    assert_parity(ref, out)


@pytest.mark.parametrize(
    "method,options",
    [("taa", {"cuda_graph": True}), ("sequential", {"cuda_graph": True}), ("picard", {"window": 3}), ("aa", {})],
    ids=["taa_graphed", "sequential_graphed", "picard_window3", "aa"],
)
def test_methods_windows_and_graphs_with_a_multistep_scheduler(method, options):
    make, inputs = TEXT_CASES["sd"]
    pipe = make(SCHEDULERS["heun"]())  # two taps, T = 2 N - 1
    ref, out, par = run_pair(pipe, inputs(1, True, output_type="latent", num_inference_steps=STEPS), method, **options)
    assert_parity(ref, out)
