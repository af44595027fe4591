"""The pipeline families of ``benchmarks/plan_families.py``: each a stock diffusers pipeline built from a config with
random weights, and the call to plan and time (prompt embeddings of the encoder's shape passed in, no text encoder,
no VAE where the call never decodes: ``output_type="latent"``, the VAE's scale factor is the pipeline's default).

Real shapes (``tiny=False``) are the published denoiser configs as diffusers ships them (most are the model class's
defaults, named per family below); the text lengths are typical, not published. ``tiny=True`` shrinks every width
and depth (the tests' tiny configs) for a CPU smoke run. Not a script: ``plan_families.py`` imports it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from paradigms import components  # benchmarks/ is on sys.path when a script here runs
from plan_large import sd3, sdxl

SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
FLOW_DPM = {"prediction_type": "flow_prediction", "use_flow_sigmas": True}
FLUX_SHIFT = {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "shift": 3.0}


@dataclass
class Case:
    """One family's pipeline and call: ``steps`` and ``scheduler`` as the model ships (or its pipeline defaults),
    ``shape`` the sample (px, frames or seconds), ``config`` which published config the denoiser has."""

    pipe: Any
    call: dict
    steps: int
    scheduler: str
    shape: str
    config: str


def _net(cls, tiny: bool, real: dict, small: dict, dev, dtype) -> torch.nn.Module:
    """``cls`` with the tiny or the real config, built on ``dev`` in ``dtype`` (a 32B float32 copy on the host would
    not fit), random weights seeded."""
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(dev):
            net = cls(**(small if tiny else real))
    finally:
        torch.set_default_dtype(default)
    return net.to(dev, dtype).eval().requires_grad_(False)


def _on(dev):
    """Build the SD-family networks of ``paradigms``/``plan_large`` on the meta device when counting parameters."""
    return torch.device("meta") if dev.type == "meta" else contextlib.nullcontext()


def _randn(dev, dtype) -> Callable[..., torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return lambda *shape: torch.randn(*shape, generator=g, device="cpu").to(dev, dtype)


def _pipe(cls, **components):
    """``cls(**components)``, every other required component None (encoders, tokenizers, VAE)."""
    import inspect

    params = inspect.signature(cls.__init__).parameters.values()
    required = [p.name for p in params if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD]
    pipe = cls(**{name: None for name in required[1:] if name not in components}, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tok(tiny: bool, n: int) -> int:
    """``n`` text tokens at the real shape, 8 in a tiny run (the tiny rotary tables are short)."""
    return 8 if tiny else n


def _px(tiny: bool, real: int, small: int = 64) -> dict:
    size = small if tiny else real
    return {"height": size, "width": size, "output_type": "latent"}


def sd15(dev, dtype, tiny: bool) -> Case:
    from diffusers import StableDiffusionPipeline

    latent = 8 if tiny else 64
    emb = _randn(dev, dtype)
    call = dict(prompt_embeds=emb(1, 77, 768), negative_prompt_embeds=emb(1, 77, 768), guidance_scale=7.5)
    call.update(_px(False, 8 * latent))
    with _on(dev):
        pipe = StableDiffusionPipeline(**components(dev, dtype, tiny, latent))
    return Case(pipe, call, 50, "ddim", f"{8 * latent}px", "SD-1.5 unet")


def _large(build, label: str, steps: int, sched: str, config: str):
    def make(dev, dtype, tiny: bool) -> Case:
        with _on(dev):
            pipe, call = build(dev, dtype, tiny)
        return Case(pipe, call, steps, sched, f"{call['height']}px", config)

    make.__doc__ = label
    return make


def _flux_transformer(dev, dtype, tiny: bool, cls_name: str = "FluxTransformer2DModel", **real):
    import diffusers

    small = dict(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        axes_dims_rope=[4, 4, 8],
    )
    cls = getattr(diffusers, cls_name)
    if cls_name == "FluxTransformer2DModel":
        small.update(pooled_projection_dim=32, guidance_embeds=True)
    else:  # Chroma: an approximator instead of pooled projections and guidance
        small.update(approximator_num_channels=8, approximator_hidden_dim=16, approximator_layers=1)
    return _net(cls, tiny, real, small, dev, dtype)


def flux(dev, dtype, tiny: bool, kontext: bool = False) -> Case:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxPipeline

    text = 32 if tiny else 4096
    emb = _randn(dev, dtype)
    net = _flux_transformer(dev, dtype, tiny, guidance_embeds=True)  # FLUX.1-dev (and Kontext-dev): 12B
    call = dict(
        prompt_embeds=emb(1, _tok(tiny, 512), text), pooled_prompt_embeds=emb(1, 32 if tiny else 768), **_px(tiny, 1024)
    )
    cls = FluxKontextPipeline if kontext else FluxPipeline
    if kontext:  # the reference image as VAE latents (16 channels): the pipeline skips its encoder
        side = call["height"] // 8
        # max_area: the pipeline otherwise rescales height x width to 1024 x 1024
        call.update(image=emb(1, 16, side, side), guidance_scale=2.5, max_area=call["height"] * call["width"])
    else:
        call["guidance_scale"] = 3.5
    pipe = _pipe(cls, transformer=net, scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SHIFT))
    return Case(
        pipe,
        call,
        28,
        "flow_euler (dynamic shift)",
        f"{call['height']}px",
        "FLUX.1 Kontext-dev transformer" if kontext else "FLUX.1-dev transformer",
    )


def flux2(dev, dtype, tiny: bool) -> Case:
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Pipeline, Flux2Transformer2DModel

    small = dict(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=16,
        timestep_guidance_channels=256,
        axes_dims_rope=[4, 4, 4, 4],
    )
    net = _net(Flux2Transformer2DModel, tiny, {}, small, dev, dtype)  # class defaults: FLUX.2-dev's, 32B
    emb = _randn(dev, dtype)
    call = dict(prompt_embeds=emb(1, _tok(tiny, 512), 16 if tiny else 15360), guidance_scale=4.0, **_px(tiny, 1024))
    pipe = _pipe(Flux2Pipeline, transformer=net, scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SHIFT))
    # text to image: reference images would need the VAE's encoder
    return Case(pipe, call, 50, "flow_euler (dynamic shift)", f"{call['height']}px", "FLUX.2-dev transformer")


def chroma(dev, dtype, tiny: bool) -> Case:
    from diffusers import ChromaPipeline, FlowMatchEulerDiscreteScheduler

    net = _flux_transformer(dev, dtype, tiny, "ChromaTransformer2DModel")  # class defaults: Chroma1-HD's, 8.9B
    emb = _randn(dev, dtype)
    text, mask = 32 if tiny else 4096, torch.ones(1, _tok(tiny, 512), dtype=torch.bool, device=dev)
    call = dict(
        prompt_embeds=emb(1, _tok(tiny, 512), text),
        negative_prompt_embeds=emb(1, _tok(tiny, 512), text),
        prompt_attention_mask=mask,
        negative_prompt_attention_mask=mask,
        guidance_scale=5.0,
        **_px(tiny, 1024),
    )
    pipe = _pipe(ChromaPipeline, transformer=net, scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SHIFT))
    return Case(pipe, call, 35, "flow_euler (dynamic shift)", f"{call['height']}px", "Chroma1-HD transformer")


def wan(dev, dtype, tiny: bool, big: bool = False) -> Case:
    from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    # Wan2.1-T2V-14B: the class defaults; Wan2.1-T2V-1.3B: 30 layers of 12 heads, FFN 8960
    real = {} if big else dict(num_attention_heads=12, num_layers=30, ffn_dim=8960)
    small = dict(
        num_attention_heads=2,
        attention_head_dim=8,
        text_dim=16,
        freq_dim=32,
        ffn_dim=16,
        num_layers=1,
        rope_max_seq_len=32,
    )
    net = _net(WanTransformer3DModel, tiny, real, small, dev, dtype)
    emb = _randn(dev, dtype)
    text = 16 if tiny else 4096
    h, w, frames = (32, 64, 5) if tiny else (480, 832, 17)
    call = dict(
        prompt_embeds=emb(1, _tok(tiny, 512), text),
        negative_prompt_embeds=emb(1, _tok(tiny, 512), text),
        guidance_scale=5.0,
        height=h,
        width=w,
        num_frames=frames,
        output_type="latent",
    )
    sched = UniPCMultistepScheduler(**FLOW_DPM, flow_shift=3.0)  # Wan's shipped config at 480p
    pipe = _pipe(WanPipeline, transformer=net, scheduler=sched)
    return Case(
        pipe,
        call,
        50,
        "unipc_flow (shift 3)",
        f"{h}x{w}x{frames}f",
        f"Wan2.1-T2V-{'14B' if big else '1.3B'} transformer",
    )


def qwen(dev, dtype, tiny: bool) -> Case:
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline, QwenImageTransformer2DModel

    small = dict(
        num_layers=1, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=(8, 4, 4)
    )
    net = _net(QwenImageTransformer2DModel, tiny, {}, small, dev, dtype)  # class defaults: Qwen-Image's, 20B
    emb = _randn(dev, dtype)
    text, mask = 16 if tiny else 3584, torch.ones(1, _tok(tiny, 128), dtype=torch.long, device=dev)
    call = dict(
        prompt_embeds=emb(1, _tok(tiny, 128), text),
        prompt_embeds_mask=mask,
        negative_prompt_embeds=emb(1, _tok(tiny, 128), text),
        negative_prompt_embeds_mask=mask,
        true_cfg_scale=4.0,
        **_px(tiny, 1024),
    )
    sched = FlowMatchEulerDiscreteScheduler(  # Qwen-Image's shipped config
        base_shift=0.5,
        max_shift=0.9,
        use_dynamic_shifting=True,
        base_image_seq_len=256,
        max_image_seq_len=8192,
        shift_terminal=0.02,
        time_shift_type="exponential",
    )
    pipe = _pipe(QwenImagePipeline, transformer=net, scheduler=sched)
    return Case(pipe, call, 50, "flow_euler (exponential shift)", f"{call['height']}px", "Qwen-Image transformer")


def sana(dev, dtype, tiny: bool) -> Case:
    from diffusers import DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel

    small = dict(
        num_layers=1,
        num_attention_heads=2,
        attention_head_dim=4,
        num_cross_attention_heads=2,
        cross_attention_head_dim=4,
        cross_attention_dim=8,
        caption_channels=8,
        sample_size=2,
    )
    net = _net(SanaTransformer2DModel, tiny, {}, small, dev, dtype)  # class defaults: SANA 1600M 1024px's
    emb = _randn(dev, dtype)
    text, mask = 8 if tiny else 2304, torch.ones(1, _tok(tiny, 300), dtype=torch.long, device=dev)
    call = dict(
        prompt_embeds=emb(1, _tok(tiny, 300), text),
        prompt_attention_mask=mask,
        negative_prompt=None,
        negative_prompt_embeds=emb(1, _tok(tiny, 300), text),
        negative_prompt_attention_mask=mask,
        guidance_scale=4.5,
        use_resolution_binning=False,
        complex_human_instruction=None,
        **_px(tiny, 1024),
    )
    pipe = _pipe(SanaPipeline, transformer=net, scheduler=DPMSolverMultistepScheduler(**FLOW_DPM, flow_shift=3.0))
    return Case(pipe, call, 20, "dpm++2m_flow (shift 3)", f"{call['height']}px", "SANA 1600M 1024px transformer")


def ltx(dev, dtype, tiny: bool) -> Case:
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel

    small = dict(
        in_channels=8,
        out_channels=8,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,
        num_layers=1,
        caption_channels=16,
    )
    net = _net(LTXVideoTransformer3DModel, tiny, {}, small, dev, dtype)  # class defaults: LTX-Video 0.9's, 2B
    emb = _randn(dev, dtype)
    text, mask = 16 if tiny else 4096, torch.ones(1, _tok(tiny, 128), dtype=torch.long, device=dev)
    h, w, frames = (64, 64, 9) if tiny else (480, 704, 25)
    call = dict(
        prompt_embeds=emb(1, _tok(tiny, 128), text),
        prompt_attention_mask=mask,
        negative_prompt_embeds=emb(1, _tok(tiny, 128), text),
        negative_prompt_attention_mask=mask,
        guidance_scale=3.0,
        height=h,
        width=w,
        num_frames=frames,
        output_type="latent",
    )
    sched = FlowMatchEulerDiscreteScheduler(  # LTX-Video's shipped config
        use_dynamic_shifting=True,
        base_shift=0.95,
        max_shift=2.05,
        base_image_seq_len=1024,
        max_image_seq_len=4096,
        shift_terminal=0.1,
    )
    pipe = _pipe(LTXPipeline, transformer=net, scheduler=sched)
    return Case(pipe, call, 50, "flow_euler (dynamic shift)", f"{h}x{w}x{frames}f", "LTX-Video 0.9 transformer")


def cogvideox(dev, dtype, tiny: bool) -> Case:
    from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    small = dict(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        time_embed_dim=2,
        text_embed_dim=16,
        num_layers=1,
        sample_width=8,
        sample_height=8,
        sample_frames=9,
        max_text_seq_length=16,
    )
    net = _net(CogVideoXTransformer3DModel, tiny, {}, small, dev, dtype)  # class defaults: CogVideoX-2b's
    emb = _randn(dev, dtype)
    tokens, text = (16, 16) if tiny else (226, 4096)
    h, w, frames = (64, 64, 9) if tiny else (480, 720, 13)
    call = dict(
        prompt_embeds=emb(1, tokens, text),
        negative_prompt_embeds=emb(1, tokens, text),
        guidance_scale=6.0,
        height=h,
        width=w,
        num_frames=frames,
        output_type="latent",
    )
    sched = CogVideoXDDIMScheduler(  # CogVideoX-2b's shipped config
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        snr_shift_scale=3.0,
        timestep_spacing="trailing",
        clip_sample=False,
    )
    pipe = _pipe(CogVideoXPipeline, transformer=net, scheduler=sched)
    return Case(pipe, call, 50, "cogvideox_ddim", f"{h}x{w}x{frames}f", "CogVideoX-2b transformer")


def lumina2(dev, dtype, tiny: bool) -> Case:
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel

    small = dict(
        sample_size=4,
        hidden_size=24,
        num_layers=1,
        num_refiner_layers=1,
        num_attention_heads=2,
        num_kv_heads=1,
        multiple_of=16,
        axes_dim_rope=(4, 4, 4),
        axes_lens=(32, 16, 16),
        cap_feat_dim=16,
    )
    net = _net(Lumina2Transformer2DModel, tiny, dict(cap_feat_dim=2304), small, dev, dtype)  # Lumina-Image-2.0
    emb = _randn(dev, dtype)
    text, mask = 16 if tiny else 2304, torch.ones(1, _tok(tiny, 256), dtype=torch.bool, device=dev)
    call = dict(
        prompt_embeds=emb(1, _tok(tiny, 256), text),
        prompt_attention_mask=mask,
        negative_prompt_embeds=emb(1, _tok(tiny, 256), text),
        negative_prompt_attention_mask=mask,
        guidance_scale=4.0,
        **_px(tiny, 1024),
    )
    pipe = _pipe(Lumina2Pipeline, transformer=net, scheduler=FlowMatchEulerDiscreteScheduler(shift=6.0))
    return Case(pipe, call, 30, "flow_euler (shift 6)", f"{call['height']}px", "Lumina-Image-2.0 transformer")


def hidream(dev, dtype, tiny: bool) -> Case:
    from diffusers import HiDreamImagePipeline, HiDreamImageTransformer2DModel, UniPCMultistepScheduler

    real = dict(
        patch_size=2,
        in_channels=16,
        caption_channels=[4096, 4096],
        axes_dims_rope=(64, 32, 32),
        llama_layers=list(range(32)) + [31] * 16,
    )  # HiDream-I1-Full: 17B
    small = dict(
        patch_size=2,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        caption_channels=[16, 8],
        text_emb_dim=16,
        num_routed_experts=2,
        num_activated_experts=1,
        axes_dims_rope=(4, 2, 2),
        max_resolution=(16, 16),
        llama_layers=(0, 1),
    )
    net = _net(HiDreamImageTransformer2DModel, tiny, real, small, dev, dtype)
    emb = _randn(dev, dtype)
    t5, llama, layers, pooled = (16, 8, 2, 16) if tiny else (4096, 4096, 32, 2048)
    call = dict(
        prompt_embeds_t5=emb(1, _tok(tiny, 128), t5),
        negative_prompt_embeds_t5=emb(1, _tok(tiny, 128), t5),
        prompt_embeds_llama3=emb(layers, 1, _tok(tiny, 128), llama),
        negative_prompt_embeds_llama3=emb(layers, 1, _tok(tiny, 128), llama),
        pooled_prompt_embeds=emb(1, pooled),
        negative_pooled_prompt_embeds=emb(1, pooled),
        guidance_scale=5.0,
        **_px(tiny, 1024),
    )
    pipe = _pipe(HiDreamImagePipeline, transformer=net, scheduler=UniPCMultistepScheduler(**FLOW_DPM, flow_shift=3.0))
    if tiny:
        pipe.default_sample_size = 8  # the loop rescales height x width to this area
    return Case(pipe, call, 50, "unipc_flow (shift 3)", f"{call['height']}px", "HiDream-I1-Full transformer")


def zimage(dev, dtype, tiny: bool) -> Case:
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    small = dict(
        dim=32,
        n_layers=1,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=16,
        axes_dims=[8, 4, 4],
        axes_lens=[64, 32, 32],
    )
    net = _net(ZImageTransformer2DModel, tiny, {}, small, dev, dtype)  # class defaults: Z-Image's, 6B
    emb = _randn(dev, dtype)
    text = 16 if tiny else 2560
    call = dict(
        prompt_embeds=[emb(_tok(tiny, 128), text)],
        negative_prompt_embeds=[emb(_tok(tiny, 128), text)],
        guidance_scale=4.0,
        **_px(tiny, 1024),
    )
    pipe = _pipe(ZImagePipeline, transformer=net, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    return Case(pipe, call, 50, "flow_euler (shift 3)", f"{call['height']}px", "Z-Image transformer")


def audioldm2(dev, dtype, tiny: bool) -> Case:
    import diffusers
    from transformers import GPT2Config, GPT2Model, SpeechT5HifiGan, SpeechT5HifiGanConfig, T5Config, T5EncoderModel

    # cvssp/audioldm2's UNet: 4 levels (128, 256, 384, 640), 8 latent channels; per transformer block a self-attention,
    # then cross-attention on GPT-2's states (768), then on T5's (1024): the UNet routes entries 0-1 and 2 so
    real = dict(
        block_out_channels=(128, 256, 384, 640),
        in_channels=8,
        out_channels=8,
        layers_per_block=2,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
        up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",),
        cross_attention_dim=[[None, 768, 1024]] * 4,
        attention_head_dim=8,
    )
    small = dict(
        block_out_channels=(4, 8),
        layers_per_block=1,
        in_channels=8,
        out_channels=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=([None, 8, 16], [None, 8, 16]),
        norm_num_groups=2,
    )
    unet = _net(diffusers.AudioLDM2UNet2DConditionModel, tiny, real, small, dev, dtype)
    # only their dtypes (and the vocoder's config) are read when the embeddings are passed in
    t5 = T5EncoderModel(T5Config(vocab_size=32, d_model=16, d_ff=16, d_kv=8, num_heads=2, num_layers=1))
    gpt2 = GPT2Model(
        GPT2Config(n_embd=8, n_head=2, n_layer=1, vocab_size=32, n_positions=16, bos_token_id=0, eos_token_id=0)
    )
    vocoder = SpeechT5HifiGan(  # AudioLDM2's: 64 mel bins, 160x upsampling, 16 kHz; narrow channels
        SpeechT5HifiGanConfig(
            model_in_dim=64,
            sampling_rate=16000,
            upsample_initial_channel=32,
            upsample_rates=[5, 4, 2, 2, 2],
            upsample_kernel_sizes=[10, 8, 4, 4, 4],
            resblock_kernel_sizes=[3],
            resblock_dilation_sizes=[[1]],
            normalize_before=False,
        )
    )
    sched = diffusers.DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False)
    pipe = _pipe(
        diffusers.AudioLDM2Pipeline,
        unet=unet,
        scheduler=sched,
        text_encoder_2=t5.to(dev, dtype),
        language_model=gpt2.to(dev, dtype),
        vocoder=vocoder.to(dev, dtype),
    )
    pipe.vae_scale_factor = 4  # AudioLDM2's VAE: 3 levels (the pipeline's default without a VAE is 8)
    emb = _randn(dev, dtype)
    t5_dim, gpt_dim, seconds = (16, 8, 0.64) if tiny else (1024, 768, 10.24)
    call = dict(
        prompt_embeds=emb(1, 32, t5_dim),
        negative_prompt_embeds=emb(1, 32, t5_dim),
        generated_prompt_embeds=emb(1, 8, gpt_dim),
        negative_generated_prompt_embeds=emb(1, 8, gpt_dim),
        guidance_scale=3.5,
        audio_length_in_s=seconds,
        output_type="latent",
    )
    return Case(pipe, call, 200, "ddim", f"{seconds}s", "AudioLDM2 unet")


FAMILIES: dict[str, Callable[..., Case]] = {
    "sd15": sd15,
    "sdxl": _large(sdxl, "SDXL", 50, "ddim", "SDXL-base unet"),
    "sd3": _large(sd3, "SD3-medium", 28, "flow_euler (shift 3)", "SD3-medium transformer"),
    "flux": flux,
    "kontext": lambda dev, dtype, tiny: flux(dev, dtype, tiny, kontext=True),
    "flux2": flux2,
    "wan": wan,
    "wan14b": lambda dev, dtype, tiny: wan(dev, dtype, tiny, big=True),
    "qwen": qwen,
    "sana": sana,
    "ltx": ltx,
    "cogvideox": cogvideox,
    "lumina2": lumina2,
    "chroma": chroma,
    "hidream": hidream,
    "zimage": zimage,
    "audioldm2": audioldm2,
}
