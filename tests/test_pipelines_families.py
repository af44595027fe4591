"""The 2026 pipeline families (issue 34), each against the stock diffusers pipeline with the same generator.

AudioLDM2 (DDIM, batched-CFG UNet with a second cross-attention input), FLUX.1 Kontext and FLUX.2 (image latents
concatenated along the sequence, output sliced), SANA (DPM-Solver in flow mode, ``timestep_scale``, learned sigma),
Stable Audio (v-prediction DiT; its own Cosine DPM-Solver SDE is refused by name), LTX-Video (batched CFG with
guidance rescale), CogVideoX (its DDIM, dynamic CFG; the DPM variant refused by name), the SD x4 upscaler
(low-res image on the channels, ``noise_level`` as class labels) and HiDream-I1 (output negated): each with the
family's default scheduler and one other, on tiny random-weight components built from configs (CPU, offline, prompt
embeddings passed in, ``output_type="latent"`` where the decoder adds nothing to check).
"""

from __future__ import annotations

import pytest
import torch

import paratriton

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers", reason="diffusers' text pipelines need transformers")
import diffusers as d  # noqa: E402
import PIL.Image  # noqa: E402
from pipeline_parts import (  # noqa: E402 - the shared parts (pytest puts tests/ on sys.path)
    TOL,
    _gen,
    assert_same,
    checked_call,
    compare_calls,
    latent_call,
    run_pair,
)

from paratriton.testing.tiny_pipelines import (  # noqa: E402
    COGVIDEOX_DDIM,
    FLOW_DPM,
    FLUX_VAE_SCALE,
    SD_BETAS,
    assemble,
    audioldm2_text_models,
    flux_vae,
    seeded,
    tiny_denoiser,
    tiny_vae,
)

# Stable Audio's Oobleck VAE builds with torch's deprecated weight_norm: not ours, named here
pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")

STEPS = 6


# ---------------------------------------------------------------------------------------------------------------
# tiny pipelines (diffusers' own fast-test configs, made smaller)
# ---------------------------------------------------------------------------------------------------------------
def make_audioldm2(scheduler):
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    unet = tiny_denoiser("audioldm2")
    vae = tiny_vae(in_channels=1, out_channels=1)
    t5, gpt2 = audioldm2_text_models()  # after the VAE: their weights come from the global RNG as it stands
    vocoder = SpeechT5HifiGan(
        SpeechT5HifiGanConfig(
            model_in_dim=8,
            sampling_rate=16000,
            upsample_initial_channel=8,
            upsample_rates=[2, 2],
            upsample_kernel_sizes=[4, 4],
            resblock_kernel_sizes=[3],
            resblock_dilation_sizes=[[1, 3]],
            normalize_before=False,
        )
    ).eval()
    return assemble(
        d.AudioLDM2Pipeline,
        vae=vae,
        text_encoder_2=t5,
        language_model=gpt2,
        unet=unet,
        scheduler=scheduler,
        vocoder=vocoder,
    )


def audioldm2_inputs(batch: int = 1, **kw):
    g = _gen(11)
    return {
        "prompt_embeds": torch.randn(batch, 5, 16, generator=g),
        "negative_prompt_embeds": torch.randn(batch, 5, 16, generator=g),
        "generated_prompt_embeds": torch.randn(batch, 4, 8, generator=g),
        "negative_generated_prompt_embeds": torch.randn(batch, 4, 8, generator=g),
        "audio_length_in_s": 0.016,  # a [4, 32, 4] mel latent
        **latent_call(STEPS, None, 3.5),  # latents: the tiny vocoder's waveform is ~1e-6, too small to compare
        **kw,
    }


def make_kontext(scheduler):
    transformer = tiny_denoiser("flux")
    return assemble(d.FluxKontextPipeline, scheduler=scheduler, vae=flux_vae(**FLUX_VAE_SCALE), transformer=transformer)


def kontext_inputs(batch: int = 1, **kw):
    g = _gen(12)
    return {
        "image": PIL.Image.new("RGB", (12, 12), (40, 90, 140)),
        "prompt_embeds": torch.randn(batch, 7, 32, generator=g),
        "pooled_prompt_embeds": torch.randn(batch, 32, generator=g),
        "max_area": 16 * 16,
        "_auto_resize": False,
        **latent_call(STEPS, 16, 2.5),
        **kw,
    }


def make_flux2(scheduler):
    vae = flux_vae("AutoencoderKLFlux2", blocks=3)  # 4x down: the 64 px image is 64 tokens, 32 px latents 16
    return assemble(d.Flux2Pipeline, scheduler=scheduler, vae=vae, transformer=tiny_denoiser("flux2"))


def flux2_inputs(batch: int = 1, **kw):
    return {
        "image": PIL.Image.new("RGB", (64, 64), (90, 30, 200)),  # Flux.2 wants >= 64 px
        "prompt_embeds": torch.randn(batch, 6, 16, generator=_gen(13)),
        **latent_call(STEPS, 32, 4.0),
        **kw,
    }


def make_sana(scheduler):
    return assemble(d.SanaPipeline, vae=tiny_vae("sana"), transformer=tiny_denoiser("sana"), scheduler=scheduler)


def sana_inputs(batch: int = 1, **kw):
    g = _gen(14)
    return {
        "prompt_embeds": torch.randn(batch, 6, 8, generator=g),
        "prompt_attention_mask": torch.tensor([[1, 1, 1, 1, 0, 0]] * batch),
        "negative_prompt": None,
        "negative_prompt_embeds": torch.randn(batch, 6, 8, generator=g),
        "negative_prompt_attention_mask": torch.ones(batch, 6, dtype=torch.long),
        "use_resolution_binning": False,
        "complex_human_instruction": None,
        **latent_call(STEPS, 32, 4.5),
        **kw,
    }


def make_stable_audio(scheduler):
    transformer = tiny_denoiser("stable_audio")
    vae = tiny_vae("stable_audio")
    projection = seeded(d.StableAudioProjectionModel, text_encoder_dim=8, conditioning_dim=4, min_value=0, max_value=32)
    return assemble(
        d.StableAudioPipeline,
        vae=vae,
        projection_model=projection,
        transformer=transformer,
        scheduler=scheduler,
    )


def stable_audio_inputs(batch: int = 1, **kw):
    g = _gen(15)
    return {
        "prompt_embeds": torch.randn(batch, 5, 8, generator=g),
        "negative_prompt_embeds": torch.randn(batch, 5, 8, generator=g),
        **latent_call(STEPS, None, 7.0),
        **kw,
    }


def make_ltx(scheduler):
    return assemble(d.LTXPipeline, scheduler=scheduler, vae=tiny_vae("ltx"), transformer=tiny_denoiser("ltx"))


def ltx_inputs(batch: int = 1, **kw):
    g = _gen(16)
    return {
        "prompt_embeds": torch.randn(batch, 5, 16, generator=g),
        "prompt_attention_mask": torch.ones(batch, 5, dtype=torch.long),
        "negative_prompt_embeds": torch.randn(batch, 5, 16, generator=g),
        "negative_prompt_attention_mask": torch.ones(batch, 5, dtype=torch.long),
        "num_frames": 9,  # 3 latent frames of 8 x 8
        "guidance_rescale": 0.5,
        **latent_call(STEPS, 32, 3.0),
        **kw,
    }


def make_cogvideox(scheduler, rotary: bool = False):
    # rotary: CogVideoX-5b's and 1.5's, [tokens, dim] tables, not per row
    rope = {"attention_head_dim": 16, "use_rotary_positional_embeddings": True} if rotary else {}
    transformer = tiny_denoiser("cogvideox", **rope)
    return assemble(d.CogVideoXPipeline, vae=tiny_vae("cogvideox"), transformer=transformer, scheduler=scheduler)


def cogvideox_inputs(batch: int = 1, **kw):
    g = _gen(17)
    return {
        "prompt_embeds": torch.randn(batch, 8, 16, generator=g),
        "negative_prompt_embeds": torch.randn(batch, 8, 16, generator=g),
        "num_frames": 8,  # 2 latent frames of 2 x 2
        "use_dynamic_cfg": True,
        **latent_call(STEPS, 16, 6.0),
        **kw,
    }


def make_upscaler(scheduler):
    # 4 latent channels, then the 3 of the low-res image; noise_level as class labels
    unet = tiny_denoiser("sd", sample_size=8, in_channels=7, num_class_embeds=100)
    return assemble(
        d.StableDiffusionUpscalePipeline,
        vae=tiny_vae(scaling_factor=0.08333),  # the x4 upscaler's
        unet=unet,
        low_res_scheduler=d.DDPMScheduler(),
        scheduler=scheduler,
        max_noise_level=99,
    )


def upscaler_inputs(batch: int = 1, **kw):
    g = _gen(18)
    return {
        "image": torch.rand(batch, 3, 8, 8, generator=g),  # in [0, 1], as a user's
        "prompt_embeds": torch.randn(batch, 5, 8, generator=g),
        "negative_prompt_embeds": torch.randn(batch, 5, 8, generator=g),
        "noise_level": 20,
        **latent_call(STEPS, None, 9.0),
        **kw,
    }


def make_hidream(scheduler):
    pipe = assemble(
        d.HiDreamImagePipeline,
        scheduler=scheduler,
        vae=tiny_vae(scaling_factor=0.3611, shift_factor=0.1159),
        transformer=tiny_denoiser("hidream"),
    )
    pipe.default_sample_size = 8  # the loop rescales height x width to this area: 16 x 16 pixels, 8 x 8 latents
    return pipe


def hidream_inputs(batch: int = 1, **kw):
    g = _gen(19)
    return {
        "prompt_embeds_t5": torch.randn(batch, 4, 16, generator=g),
        "negative_prompt_embeds_t5": torch.randn(batch, 4, 16, generator=g),
        "prompt_embeds_llama3": torch.randn(2, batch, 3, 8, generator=g),  # [llama layers, batch, tokens, dim]
        "negative_prompt_embeds_llama3": torch.randn(2, batch, 3, 8, generator=g),
        "pooled_prompt_embeds": torch.randn(batch, 16, generator=g),
        "negative_pooled_prompt_embeds": torch.randn(batch, 16, generator=g),
        **latent_call(STEPS, 16, 5.0),
        **kw,
    }


FAMILIES = {
    "audioldm2": (make_audioldm2, audioldm2_inputs),
    "kontext": (make_kontext, kontext_inputs),
    "flux2": (make_flux2, flux2_inputs),
    "sana": (make_sana, sana_inputs),
    "stable_audio": (make_stable_audio, stable_audio_inputs),
    "ltx": (make_ltx, ltx_inputs),
    "cogvideox": (make_cogvideox, cogvideox_inputs),
    "upscaler": (make_upscaler, upscaler_inputs),
    "hidream": (make_hidream, hidream_inputs),
}

# (family, scheduler): the family's default first, then another
CASES = {
    ("audioldm2", "ddim"): lambda: d.DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False),
    ("audioldm2", "dpm++2m"): lambda: d.DPMSolverMultistepScheduler(**SD_BETAS),
    ("kontext", "flow_euler"): lambda: d.FlowMatchEulerDiscreteScheduler(),
    ("kontext", "flow_euler_stochastic"): lambda: d.FlowMatchEulerDiscreteScheduler(stochastic_sampling=True),
    ("flux2", "flow_euler"): lambda: d.FlowMatchEulerDiscreteScheduler(),
    ("flux2", "unipc_flow"): lambda: d.UniPCMultistepScheduler(**FLOW_DPM),
    ("sana", "dpm_flow"): lambda: d.DPMSolverMultistepScheduler(**FLOW_DPM, flow_shift=3.0),
    ("sana", "flow_euler"): lambda: d.FlowMatchEulerDiscreteScheduler(shift=3.0),
    ("stable_audio", "dpm++2m_v"): lambda: d.DPMSolverMultistepScheduler(prediction_type="v_prediction"),
    ("stable_audio", "euler_v"): lambda: d.EulerDiscreteScheduler(prediction_type="v_prediction"),
    ("ltx", "flow_euler"): lambda: d.FlowMatchEulerDiscreteScheduler(),
    ("ltx", "unipc_flow"): lambda: d.UniPCMultistepScheduler(**FLOW_DPM),
    ("cogvideox", "cogvideox_ddim"): lambda: d.CogVideoXDDIMScheduler(**COGVIDEOX_DDIM),
    ("cogvideox", "dpm++2m_v"): lambda: d.DPMSolverMultistepScheduler(
        prediction_type="v_prediction", timestep_spacing="trailing"
    ),
    ("upscaler", "ddpm_v"): lambda: d.DDPMScheduler(**SD_BETAS, prediction_type="v_prediction"),
    ("upscaler", "ddim_v"): lambda: d.DDIMScheduler(**SD_BETAS, prediction_type="v_prediction", clip_sample=False),
    ("hidream", "flow_euler"): lambda: d.FlowMatchEulerDiscreteScheduler(shift=3.0),
    ("hidream", "unipc_flow"): lambda: d.UniPCMultistepScheduler(**FLOW_DPM, flow_shift=3.0),
}


@pytest.mark.parametrize("family,sched", list(CASES), ids=[f"{f}-{s}" for f, s in CASES])
def test_family_matches_stock(family, sched):
    make, inputs = FAMILIES[family]
    pipe = make(CASES[family, sched]())
    ref, out, par = run_pair(pipe, inputs())
    assert par.paratriton.last_result.converged
    assert_same(ref, out)
    assert ref.abs().max() > 0.1  # a real sample, not zeros: the comparison is not vacuous


@pytest.mark.parametrize("family", ["hidream", "flux2", "upscaler"])
def test_two_prompts_and_a_sliding_window_match_stock(family):
    # the per-row conditioning (HiDream's Llama-3 states on dim 1, Flux.2's image tokens, the upscaler's low-res
    # images and noise levels) repeated for windows of every length as the window slides
    make, inputs = FAMILIES[family]
    case = next(k for k in CASES if k[0] == family)
    ref, out, par = run_pair(make(CASES[case]()), inputs(2), per_sample_generators=2, window=3)
    windows = par.paratriton.last_result.window_history
    assert len({lo for lo, _ in windows}) > 1  # it slid
    assert_same(ref, out)
    assert (out[0] - out[1]).abs().max() > 1e-2


def test_kontext_graphed_call_with_another_image_reuses_the_graphs():
    # cuda_graph=True (static on the CPU): the second call copies its image tokens into the cached conditioning
    pipe = make_kontext(d.FlowMatchEulerDiscreteScheduler())
    par = paratriton.parallelize(pipe, "taa", cuda_graph=True, window=3, **TOL)
    outs, entries = [], []
    for seed, color in ((0, (40, 90, 140)), (5, (200, 10, 60))):
        ref, out = compare_calls(pipe, par, kontext_inputs(image=PIL.Image.new("RGB", (12, 12), color)), seed)
        assert_same(ref, out)
        outs.append(out)
        entries.append(par.paratriton.graphed)
    assert entries[0] is not None and entries[1] is entries[0]  # the same cached graphs
    assert (outs[0] - outs[1]).abs().max() > 1e-2


def test_flux2_text_to_image_matches_stock():
    # no reference image: no image tokens, the latents are the whole input
    ref, out, par = run_pair(make_flux2(d.FlowMatchEulerDiscreteScheduler()), flux2_inputs(image=None))
    assert par.paratriton.last_result.converged
    assert_same(ref, out)


def test_cogvideox_with_rotary_embeddings_matches_stock():
    pipe = make_cogvideox(CASES["cogvideox", "cogvideox_ddim"](), rotary=True)
    ref, out, par = run_pair(pipe, cogvideox_inputs())
    assert par.paratriton.last_result.converged
    assert_same(ref, out)


def test_kontext_true_cfg_batch_matches_stock():
    # two calls per step (conditional, then negative), each on [latents, image tokens]; two prompts
    g = _gen(20)
    negative = {"negative_prompt_embeds": torch.randn(2, 7, 32, generator=g)}
    negative["negative_pooled_prompt_embeds"] = torch.randn(2, 32, generator=g)
    pipe = make_kontext(d.FlowMatchEulerDiscreteScheduler())
    ref, out, par = run_pair(pipe, kontext_inputs(2, true_cfg_scale=3.0, **negative))
    assert par.paratriton.last_result.converged
    assert_same(ref, out)
    assert (out[0] - out[1]).abs().max() > 1e-2  # two prompts, two samples


def test_cogvideox_dynamic_cfg_changes_the_sample():
    # the per-step scale is what makes the parity above hold: without it the sample differs
    pipe = make_cogvideox(CASES["cogvideox", "cogvideox_ddim"]())
    ref, out, _ = run_pair(pipe, cogvideox_inputs(use_dynamic_cfg=False))
    assert_same(ref, out)
    dynamic = run_pair(pipe, cogvideox_inputs())[1]
    assert (dynamic - out).abs().max() > 1e-2


@pytest.mark.parametrize(
    "family,scheduler,reason",
    [
        ("stable_audio", "CosineDPMSolverMultistepScheduler", "torchsde BrownianTree"),
        ("cogvideox", "CogVideoXDPMScheduler", "old_pred_original_sample"),
    ],
)
def test_default_schedulers_without_an_exact_parallel_loop_are_refused_by_name(family, scheduler, reason):
    # Stable Audio Open's own scheduler and CogVideoX-5b's
    try:
        sched = getattr(d, scheduler)()
    except ImportError:  # without torchsde diffusers exports a placeholder of that name, which cannot be built
        sched = object.__new__(getattr(d, scheduler))
    make, _ = FAMILIES[family]
    pipe = make(sched)
    with pytest.raises(ValueError, match=f"{scheduler} is not supported by parallel samplers: .*{reason}"):
        paratriton.parallelize(pipe)


def test_audioldm2_legacy_callback_sees_the_stock_latents():
    # AudioLDM2 (like Stable Audio and the upscaler) has only the legacy callback(step, t, latents): the replayed loop
    # calls it after every step with that step's solved latents
    pipe = make_audioldm2(CASES["audioldm2", "ddim"]())
    par = paratriton.parallelize(pipe, **TOL)
    seen: dict[str, list] = {"stock": [], "parallel": []}
    for name, p in (("stock", pipe), ("parallel", par)):

        def callback(step, t, latents, into=seen[name]):
            into.append((step, int(t), latents.clone()))

        checked_call(p, audioldm2_inputs(callback=callback))
    assert [s[:2] for s in seen["parallel"]] == [s[:2] for s in seen["stock"]] and len(seen["stock"]) == STEPS
    for (_, _, ref), (_, _, out) in zip(seen["stock"], seen["parallel"]):
        assert_same(ref, out)


def test_per_step_networks_take_conditioning_rows_along_its_row_dimension():
    """``Calls.denoiser_at`` (per-step networks) with ``Calls.row_dims`` (conditioning whose rows are not on dim 0,
    as HiDream's Llama-3 states ``[layers, rows, tokens, dim]``): each network gets its rows of that conditioning
    along its row dimension, a shared rotary table whole (even one as long as the call has rows), and the routed
    call equals one network called on every row."""
    from paratriton.pipelines._denoiser import _PipelineDenoiser

    def net(scale):
        def forward(hidden_states, timestep, llama, pooled, image_rotary_emb):
            assert llama.shape[1] == hidden_states.shape[0] and pooled.shape[0] == hidden_states.shape[0]
            assert image_rotary_emb.shape == (18, 2)  # a shared [tokens, dim] table, whole in every call
            per_row = llama.mean((0, 2, 3)) + pooled.mean(1) + timestep
            return (scale * hidden_states + per_row.view(-1, 1, 1),)

        return forward

    g, B, T = 2, 3, 4
    gen = torch.Generator().manual_seed(0)
    cond = {
        "llama": torch.randn(5, g * B, 7, 2, generator=gen, dtype=torch.float64),
        "pooled": torch.randn(g * B, 6, generator=gen, dtype=torch.float64),
        "image_rotary_emb": torch.randn(18, 2, generator=gen, dtype=torch.float64),  # 18 tokens = the call's rows
    }
    ts = torch.arange(T, dtype=torch.float64) * 10
    den = _PipelineDenoiser(net(1.0), "hidden_states", cond, ts, g, B, g * B, torch.float64, "t", None)
    den.row_dims = {"llama": 1}
    W = 3
    x = torch.randn(g * W * B, 4, 2, generator=gen, dtype=torch.float64)
    steps = torch.tensor([0, 1, 3] * (g * B)).view(g, B, W).transpose(1, 2).reshape(-1)  # (branch, position, sample)
    ref = den(x, steps)
    den.experts, den.expert_by_step = [net(1.0), net(1.0)], torch.tensor([0, 1, 0, 1])
    assert torch.equal(den(x, steps), ref)
    den.experts = [net(1.0), net(2.0)]  # the second network on steps 1 and 3 only
    out, odd = den(x, steps), (steps % 2 == 1)
    assert torch.equal(out[~odd], ref[~odd]) and not torch.equal(out[odd], ref[odd])


def test_calls_shared_args_pass_a_table_whole_where_its_length_is_the_batch():
    """``Calls.shared_args``: a family's own shared table (a new name, as long as the stock call's batch) reaches
    every window call whole; without the row it would be taken as per-row conditioning and repeated."""
    from paratriton.pipelines._denoiser import _PipelineDenoiser
    from paratriton.pipelines._spec_parts import Calls

    seen = []

    def forward(hidden_states, timestep, pos_table):
        seen.append(tuple(pos_table.shape))
        return (hidden_states + pos_table.sum(),)

    g, B, W = 2, 2, 3
    table = torch.arange(g * B * 5, dtype=torch.float64).view(g * B, 5)  # [g * B, 5]: its length is the batch
    x = torch.zeros(g * W * B, 4, dtype=torch.float64)
    steps = torch.zeros(g * W * B, dtype=torch.long)
    den = _PipelineDenoiser(forward, "hidden_states", {"pos_table": table}, torch.zeros(1), g, B, g * B,
                            torch.float64, "t", None)  # fmt: skip
    den(x, steps)
    den.shared = Calls("transformer", shared_args=("pos_table",)).shared
    den(x, steps)
    assert seen == [(g * W * B, 5), (g * B, 5)]
