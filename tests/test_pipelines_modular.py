"""``parallelize_modular``: modular diffusers pipelines (SDXL, Flux, Qwen-Image, Wan 2.2) give the stock latents.

Each pipeline is a model's core denoise blocks (inputs, timesteps, latents, the denoise loop) built offline from
tiny configs, with prompt embeddings passed directly. Parity: the stock modular call against the parallel one with
the same generator, max abs error <= 1e-4 at solver tolerance 1e-6. Refusals: a loop the parallel solve cannot
reproduce raises a ValueError naming the reason.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

pytest.importorskip("diffusers")

from pipeline_parts import ATOL, TOL, _gen, assert_same  # noqa: E402 - the shared parts (pytest puts tests/ on sys.path)

import paratriton  # noqa: E402
from paratriton.testing.tiny_pipelines import FLOW_DPM, SD_BETAS, tiny_denoiser  # noqa: E402

# (pipeline_parts quiets diffusers' logger: "guiders are experimental", "not created using ComponentSpec")
# SDXL's Euler latents start at sigma ~15: its tiny UNet's rounding floor (~1e-5) is above 1e-6
SDXL_TOL, SDXL_ATOL = {"tol_abs": 5e-5, "tol_rel": 1e-6}, 5e-4
TOLERANCES = {"sdxl": (SDXL_TOL, SDXL_ATOL)}  # (solver tolerance, parity tolerance) by family; (TOL, ATOL) otherwise


def _pipe(blocks, **components):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # diffusers' own notes on tiny, spec-less components
        pipe = blocks.init_pipeline()
        pipe.update_components(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _embeds(seed: int, *shapes):
    g = _gen(seed)
    return [torch.randn(*s, generator=g) for s in shapes]


def make_sdxl(scheduler=None):
    from diffusers import EulerDiscreteScheduler
    from diffusers.modular_pipelines.stable_diffusion_xl.modular_blocks_stable_diffusion_xl import (
        StableDiffusionXLCoreDenoiseStep,
    )

    unet = tiny_denoiser("sdxl", layers_per_block=1, transformer_layers_per_block=1)
    # SDXL's own: traced, its scale_model_input is not the identity
    scheduler = scheduler or EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="leading", steps_offset=1)
    pe, pp, ne, np_ = _embeds(101, (1, 5, 64), (1, 32), (1, 5, 64), (1, 32))
    inputs = dict(
        prompt_embeds=pe,
        pooled_prompt_embeds=pp,
        negative_prompt_embeds=ne,
        negative_pooled_prompt_embeds=np_,
        height=32,
        width=32,
        num_inference_steps=6,
    )
    return _pipe(StableDiffusionXLCoreDenoiseStep(), unet=unet, scheduler=scheduler), inputs


def make_flux(blocks=None):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.modular_pipelines.flux.modular_blocks_flux import FluxCoreDenoiseStep

    transformer = tiny_denoiser("flux", guidance_embeds=True)
    pe, pp = _embeds(103, (1, 7, 32), (1, 32))
    inputs = dict(prompt_embeds=pe, pooled_prompt_embeds=pp, height=32, width=32, num_inference_steps=6)
    blocks = blocks or FluxCoreDenoiseStep()
    return _pipe(blocks, transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler()), inputs


def make_qwen(guider=None):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.guiders import ClassifierFreeGuidance
    from diffusers.modular_pipelines.qwenimage.modular_blocks_qwenimage import QwenImageCoreDenoiseStep

    transformer = tiny_denoiser("qwen")
    pe, ne = _embeds(105, (1, 7, 16), (1, 5, 16))  # prompts of different lengths: two batched calls per iteration
    inputs = dict(
        prompt_embeds=pe,
        prompt_embeds_mask=torch.ones(1, 7, dtype=torch.long),
        negative_prompt_embeds=ne,
        negative_prompt_embeds_mask=torch.ones(1, 5, dtype=torch.long),
        height=32,
        width=32,
        num_inference_steps=6,
    )
    guider = guider or ClassifierFreeGuidance(guidance_scale=4.0)
    components = dict(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), guider=guider)
    return _pipe(QwenImageCoreDenoiseStep(), **components), inputs


def make_wan22():
    from diffusers import UniPCMultistepScheduler
    from diffusers.guiders import ClassifierFreeGuidance
    from diffusers.modular_pipelines.wan.modular_blocks_wan22 import Wan22CoreDenoiseStep

    def tiny(seed: int):
        widths = {"attention_head_dim": 12, "in_channels": 16, "out_channels": 16, "text_dim": 32, "ffn_dim": 32}
        return tiny_denoiser("wan", seed, freq_dim=256, **widths)

    pe, ne = _embeds(107, (1, 7, 32), (1, 7, 32))
    inputs = dict(prompt_embeds=pe, negative_prompt_embeds=ne, height=32, width=32, num_frames=5, num_inference_steps=8)
    # Wan's default: UniPC in flow mode; two experts switched at the boundary timestep, each with its guidance scale
    sched = UniPCMultistepScheduler(**FLOW_DPM, flow_shift=3.0)
    components = dict(
        transformer=tiny(0),
        transformer_2=tiny(1),
        scheduler=sched,
        guider=ClassifierFreeGuidance(guidance_scale=4.0),
        guider_2=ClassifierFreeGuidance(guidance_scale=3.0),
    )
    return _pipe(Wan22CoreDenoiseStep(), **components), inputs


def _latents(pipe, inputs, seed: int = 0, **kw):
    return pipe(**inputs, **kw, generator=_gen(seed), output="latents")


def _modular_pair(pipe, inputs: dict, name: str = "sdxl", method: str = "taa"):
    """The stock latents and the parallel pipeline, after asserting that its latents are the stock ones (the
    family's tolerances)."""
    tol, atol = TOLERANCES.get(name, (TOL, ATOL))
    ref = _latents(pipe, inputs)
    fast = paratriton.parallelize_modular(pipe, method=method, **tol)
    assert_same(ref, _latents(fast, inputs), atol)
    return ref, fast


def make_qwen_cfg_first_half():
    from diffusers.guiders import ClassifierFreeGuidance

    # a per-step switch (Lumina's and Z-Image's CFG truncation): two calls per step, then one
    return make_qwen(ClassifierFreeGuidance(guidance_scale=4.0, start=0.0, stop=0.5))


FAMILIES = {
    "sdxl": make_sdxl,
    "flux": make_flux,
    "qwenimage": make_qwen,
    "qwenimage_cfg_first_half": make_qwen_cfg_first_half,
    "wan22": make_wan22,
}


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_modular_pipeline_matches_stock(name, batch):
    pipe, inputs = FAMILIES[name]()
    inputs["num_videos_per_prompt" if name == "wan22" else "num_images_per_prompt"] = batch
    ref, fast = _modular_pair(pipe, inputs, name)
    res = fast.paratriton.last_result
    assert ref.shape[0] == batch and res.converged and res.trajectory.shape[0] == inputs["num_inference_steps"] + 1
    assert torch.equal(ref, _latents(pipe, inputs))  # the stock pipeline gives its own answer again afterwards


def test_sdxl_another_method_and_another_scheduler():
    from diffusers import DPMSolverMultistepScheduler

    pipe, inputs = make_sdxl()
    _modular_pair(pipe, inputs, method="picard")
    pipe.update_components(scheduler=DPMSolverMultistepScheduler.from_config(pipe.scheduler.config))
    _modular_pair(pipe, inputs)


@pytest.mark.parametrize("name", ["sdxl", "flux"])
def test_img2img_loops_that_start_late_match_stock(name):
    pipe, inputs = FAMILIES[name]()
    channels = 4 if name == "sdxl" else 1  # the tiny Flux packs 1-channel latents
    image = torch.randn(1, channels, 4, 4, generator=_gen(5))
    inputs.update(image_latents=image, strength=0.6, num_inference_steps=8)  # the loop starts at a begin index
    _, fast = _modular_pair(pipe, inputs, name)
    assert 1 < fast.paratriton.last_result.trajectory.shape[0] - 1 < 8  # the solve covers the loop's steps only


def test_sdxl_controlnet_feeding_the_unet_matches_stock():
    from diffusers import ControlNetModel

    pipe, inputs = make_sdxl()
    torch.manual_seed(1)
    controlnet = ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=(4, 8, 8, 8)).eval()
    pipe.update_components(controlnet=controlnet)
    inputs["control_image"] = torch.rand(1, 3, 32, 32, generator=_gen(3))
    ref = _latents(pipe, inputs)
    calls: list[str] = []
    hooks = [
        m.register_forward_pre_hook(lambda m, a, n=n: calls.append(n))
        for n, m in (("cn", controlnet), ("unet", pipe.unet))
    ]
    try:
        out = _latents(paratriton.parallelize_modular(pipe, method="taa", **SDXL_TOL), inputs)
    finally:
        for h in hooks:
            h.remove()
    assert_same(ref, out, SDXL_ATOL)
    # the UNet's batch waits for the ControlNet's (a pass later): no UNet call on placeholder residuals
    assert calls[::2] == ["cn"] * (len(calls) // 2) and calls[1::2] == ["unet"] * (len(calls) // 2)


def test_a_window_of_steps_is_one_batched_call_per_signature():
    pipe, inputs = make_qwen()
    seen: list[tuple] = []

    def record(module, args, kwargs):
        seen.append((kwargs["hidden_states"].shape[0], kwargs["encoder_hidden_states"].shape[:2]))

    hook = pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        _latents(paratriton.parallelize_modular(pipe, method="taa", window=6, **TOL), inputs)
    finally:
        hook.remove()
    # the first call of each branch runs alone (its output shapes the placeholders); the first batch of 6 rows holds
    # the 5 other steps of the window and that call again (checked against it); then one call per branch per window
    assert seen[:3] == [(1, (1, 7)), (1, (1, 5)), (6, (6, 7))]
    for cond, uncond in zip(seen[2::2], seen[3::2]):
        assert cond[0] == uncond[0] and cond[1] == (cond[0], 7) and uncond[1] == (cond[0], 5)
    assert max(rows for rows, _ in seen) == 6 and len(seen) < sum(rows for rows, _ in seen) / 2


def test_user_pipeline_is_left_unchanged():
    pipe, inputs = make_qwen()
    blocks, sched, guider = pipe._blocks, copy.deepcopy(vars(pipe.scheduler)), copy.deepcopy(vars(pipe.guider))
    denoise = type(blocks.sub_blocks["denoise"])
    fast = paratriton.parallelize_modular(pipe, method="taa", **TOL)
    _latents(fast, inputs)
    assert pipe._blocks is blocks and type(blocks.sub_blocks["denoise"]) is denoise
    assert type(fast._blocks.sub_blocks["denoise"]).__name__ == f"Parallel{denoise.__name__}"
    # the scheduler's timesteps are set and the guider's step state is written on private copies only
    assert _same_state(vars(pipe.scheduler), sched) and _same_state(vars(pipe.guider), guider)
    assert _same_state(vars(fast.scheduler), sched)
    assert fast.transformer is pipe.transformer  # the networks are shared, not copied


def _same_state(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(torch.equal(v, b[k]) if torch.is_tensor(v) else repr(v) == repr(b[k]) for k, v in a.items())


# ---- refusals ----------------------------------------------------------------------------------------------------
def test_step_noise_is_drawn_from_the_loops_generator():
    from diffusers import EulerAncestralDiscreteScheduler

    pipe, inputs = make_sdxl()  # SDXL's after_denoiser hands scheduler.step the call's generator
    pipe.update_components(scheduler=EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config))
    ref = _latents(pipe, inputs)
    gen = _gen(0)
    fast = paratriton.parallelize_modular(pipe, method="taa", **SDXL_TOL)
    out = fast(**inputs, generator=gen, output="latents")
    assert_same(ref, out, SDXL_ATOL)
    stock_gen = _gen(0)
    pipe(**inputs, generator=stock_gen, output="latents")
    assert torch.equal(gen.get_state(), stock_gen.get_state())  # the caller's generator ends where the stock's does


def test_step_noise_without_a_generator_is_refused():
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe, inputs = make_flux()  # Flux's after_denoiser hands step no generator: it draws from the global RNG
    pipe.update_components(scheduler=FlowMatchEulerDiscreteScheduler(stochastic_sampling=True))
    with pytest.raises(ValueError, match="hands it no generator"):
        _latents(paratriton.parallelize_modular(pipe), inputs)


def test_a_guider_with_state_between_steps_is_refused():
    from diffusers.guiders import AdaptiveProjectedGuidance

    pipe, inputs = make_qwen(AdaptiveProjectedGuidance(guidance_scale=4.0, adaptive_projected_guidance_momentum=-0.5))
    with pytest.raises(ValueError, match="keeps state from one step to the next"):
        _latents(paratriton.parallelize_modular(pipe), inputs)


def test_a_guider_that_changes_the_network_per_branch_is_refused():
    from diffusers.guiders import PerturbedAttentionGuidance

    pipe, inputs = make_qwen(PerturbedAttentionGuidance(guidance_scale=4.0, perturbed_guidance_layers=[0]))
    with pytest.raises(ValueError, match="changes the network per guidance branch"):
        _latents(paratriton.parallelize_modular(pipe), inputs)


def test_a_step_cache_on_the_network_is_refused():
    from diffusers import FirstBlockCacheConfig

    pipe, inputs = make_flux()
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.2))
    with pytest.raises(ValueError, match="the loop's transformer has stateful diffusers hooks"):
        _latents(paratriton.parallelize_modular(pipe), inputs)


def test_a_loop_that_edits_latents_after_the_step_is_refused():
    from diffusers.modular_pipelines.flux.denoise import FluxDenoiseStep, FluxLoopAfterDenoiser
    from diffusers.modular_pipelines.flux.modular_blocks_flux import FluxCoreDenoiseStep

    class DampedAfterDenoiser(FluxLoopAfterDenoiser):  # a latent edit between steps: not the scheduler's sampler
        def __call__(self, components, block_state, i, t):
            components, block_state = super().__call__(components, block_state, i, t)
            block_state.latents = block_state.latents * 0.9
            return components, block_state

    class DampedDenoiseStep(FluxDenoiseStep):
        block_classes = [FluxDenoiseStep.block_classes[0], DampedAfterDenoiser]

    blocks = FluxCoreDenoiseStep()
    blocks.sub_blocks["denoise"] = DampedDenoiseStep()
    pipe, inputs = make_flux(blocks)
    with pytest.raises(ValueError, match="not the scheduler step the solve reproduced"):
        _latents(paratriton.parallelize_modular(pipe, **TOL), inputs)


def test_a_sub_block_that_carries_state_between_steps_is_refused():
    from diffusers.modular_pipelines.flux.denoise import FluxDenoiseStep, FluxLoopDenoiser
    from diffusers.modular_pipelines.flux.modular_blocks_flux import FluxCoreDenoiseStep

    class GrowingGuidanceDenoiser(FluxLoopDenoiser):  # each step's guidance depends on how many steps ran before
        def __call__(self, components, block_state, i, t):
            block_state.guidance = block_state.guidance * 1.5
            return super().__call__(components, block_state, i, t)

    class GrowingDenoiseStep(FluxDenoiseStep):
        block_classes = [GrowingGuidanceDenoiser, FluxDenoiseStep.block_classes[1]]

    blocks = FluxCoreDenoiseStep()
    blocks.sub_blocks["denoise"] = GrowingDenoiseStep()
    pipe, inputs = make_flux(blocks)
    with pytest.raises(ValueError, match="carries state from one step to the next"):
        _latents(paratriton.parallelize_modular(pipe, **TOL), inputs)


def test_a_loop_without_an_after_denoiser_cuda_graphs_and_a_non_modular_pipeline_are_refused():
    from diffusers.modular_pipelines.flux.denoise import FluxDenoiseStep
    from diffusers.modular_pipelines.flux.modular_blocks_flux import FluxCoreDenoiseStep

    class Renamed(FluxDenoiseStep):
        block_names = ["denoiser", "step"]

    blocks = FluxCoreDenoiseStep()
    blocks.sub_blocks["denoise"] = Renamed()
    pipe, _ = make_flux(blocks)
    with pytest.raises(ValueError, match="do not end with 'after_denoiser'"):
        paratriton.parallelize_modular(pipe)
    with pytest.raises(ValueError, match="cuda_graph=True does not apply"):
        paratriton.parallelize_modular(make_flux()[0], cuda_graph=True)
    with pytest.raises(TypeError, match="takes a diffusers ModularPipeline"):
        paratriton.parallelize_modular(torch.nn.Linear(1, 1))
