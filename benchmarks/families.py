"""The pipeline families of ``benchmarks/plan_families.py``: each a stock diffusers pipeline built from a config with
random weights, and the call to plan and time (prompt embeddings of the encoder's shape passed in, no text encoder,
no VAE where the call never decodes: ``output_type="latent"``, the VAE's scale factor is the pipeline's default).

Real shapes (``tiny=False``) are the published denoiser configs as diffusers ships them (most are the model class's
defaults, named per family below); the text lengths are typical, not published. ``tiny=True`` shrinks every width
and depth for a CPU smoke run: the tests' tiny denoiser configs (``paratriton.testing.tiny_pipelines``), with the
channels and sizes named per family below. Not a script: ``plan_families.py`` imports it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from paradigms import components  # benchmarks/ is on sys.path when a script here runs
from plan_large import sd3, sdxl

from paratriton.testing.tiny_pipelines import (
    COGVIDEOX_DDIM,
    FLOW_DPM,
    QWEN_IMAGE_FLOW,
    SD_BETAS,
    assemble,
    audioldm2_text_models,
    denoiser_class,
    denoiser_config,
)

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


def _net(family: str, tiny: bool, dev, dtype, real: dict | None = None, **small) -> torch.nn.Module:
    """``family``'s denoiser with its tiny config (the tests', ``paratriton.testing.tiny_pipelines``, ``small`` on
    it) or its real one (``real`` on the class defaults), built on ``dev`` in ``dtype`` (a 32B float32 copy on the
    host would not fit), random weights seeded."""
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(dev):
            net = denoiser_class(family)(**(denoiser_config(family, **small) if tiny else real or {}))
    finally:
        torch.set_default_dtype(default)
    return net.to(dev, dtype).eval().requires_grad_(False)


def _on(dev):
    """Build the SD-family networks of ``paradigms``/``plan_large`` on the meta device when counting parameters."""
    return torch.device("meta") if dev.type == "meta" else contextlib.nullcontext()


def _randn(dev, dtype) -> Callable[..., torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return lambda *shape: torch.randn(*shape, generator=g, device="cpu").to(dev, dtype)


def _tok(tiny: bool, n: int) -> int:
    """``n`` text tokens at the real shape, 8 in a tiny run (the tiny rotary tables are short)."""
    return 8 if tiny else n


def _px(tiny: bool, real: int, small: int = 64) -> dict:
    size = small if tiny else real
    return {"height": size, "width": size, "output_type": "latent"}


def _video(tiny: bool, real: tuple[int, int, int], small: tuple[int, int, int]) -> dict:
    """``height``, ``width`` and ``num_frames`` of a video call, ``small`` in a tiny run, latents returned."""
    h, w, frames = small if tiny else real
    return {"height": h, "width": w, "num_frames": frames, "output_type": "latent"}


def _shape(call: dict) -> str:
    """The sample's shape for the table: ``HxWxFf`` for a video, ``Ns`` for audio, ``Hpx`` for a square image."""
    if "num_frames" in call:
        return f"{call['height']}x{call['width']}x{call['num_frames']}f"
    if "audio_length_in_s" in call:
        return f"{call['audio_length_in_s']}s"
    return f"{call['height']}px"


def _cfg_text(emb, tokens: int, width: int, mask=None, mask_key: str = "prompt_attention_mask", dev=None) -> dict:
    """A prompt's and a negative prompt's random embeddings ``[1, tokens, width]`` (drawn in that order); where
    ``mask`` (a dtype) is given, an all-ones attention mask for each under ``mask_key`` and its ``negative_`` twin."""
    out = {"prompt_embeds": emb(1, tokens, width), "negative_prompt_embeds": emb(1, tokens, width)}
    if mask is not None:
        ones = torch.ones(1, tokens, dtype=mask, device=dev)
        out.update({mask_key: ones, f"negative_{mask_key}": ones})
    return out


def sd15(dev, dtype, tiny: bool) -> Case:
    from diffusers import StableDiffusionPipeline

    latent = 8 if tiny else 64
    call = dict(**_cfg_text(_randn(dev, dtype), 77, 768), guidance_scale=7.5, **_px(False, 8 * latent))
    with _on(dev):
        pipe = StableDiffusionPipeline(**components(dev, dtype, tiny, latent))
    return Case(pipe, call, 50, "ddim", _shape(call), "SD-1.5 unet")


def _large(build, label: str, steps: int, sched: str, config: str):
    def make(dev, dtype, tiny: bool) -> Case:
        with _on(dev):
            pipe, call = build(dev, dtype, tiny)
        return Case(pipe, call, steps, sched, _shape(call), config)

    make.__doc__ = label
    return make


def flux(dev, dtype, tiny: bool, kontext: bool = False) -> Case:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxPipeline

    text = 32 if tiny else 4096
    emb = _randn(dev, dtype)
    # FLUX.1-dev (and Kontext-dev): 12B; tiny: 64 latent channels (16 packed 2 x 2), as the real one
    net = _net("flux", tiny, dev, dtype, dict(guidance_embeds=True), in_channels=64, guidance_embeds=True)
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
    pipe = assemble(cls, transformer=net, scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SHIFT))
    config = "FLUX.1 Kontext-dev transformer" if kontext else "FLUX.1-dev transformer"
    return Case(pipe, call, 28, "flow_euler (dynamic shift)", _shape(call), config)


def flux2(dev, dtype, tiny: bool) -> Case:
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Pipeline

    net = _net("flux2", tiny, dev, dtype, in_channels=16)  # class defaults: FLUX.2-dev's, 32B
    emb = _randn(dev, dtype)
    call = dict(prompt_embeds=emb(1, _tok(tiny, 512), 16 if tiny else 15360), guidance_scale=4.0, **_px(tiny, 1024))
    pipe = assemble(Flux2Pipeline, transformer=net, scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SHIFT))
    # text to image: reference images would need the VAE's encoder
    return Case(pipe, call, 50, "flow_euler (dynamic shift)", _shape(call), "FLUX.2-dev transformer")


def chroma(dev, dtype, tiny: bool) -> Case:
    from diffusers import ChromaPipeline, FlowMatchEulerDiscreteScheduler

    net = _net("chroma", tiny, dev, dtype, in_channels=64)  # class defaults: Chroma1-HD's, 8.9B
    text = _cfg_text(_randn(dev, dtype), _tok(tiny, 512), 32 if tiny else 4096, torch.bool, dev=dev)
    call = dict(**text, guidance_scale=5.0, **_px(tiny, 1024))
    pipe = assemble(ChromaPipeline, transformer=net, scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SHIFT))
    return Case(pipe, call, 35, "flow_euler (dynamic shift)", _shape(call), "Chroma1-HD transformer")


def wan(dev, dtype, tiny: bool, big: bool = False) -> Case:
    from diffusers import UniPCMultistepScheduler, WanPipeline

    # Wan2.1-T2V-14B: the class defaults; Wan2.1-T2V-1.3B: 30 layers of 12 heads, FFN 8960
    real = {} if big else dict(num_attention_heads=12, num_layers=30, ffn_dim=8960)
    net = _net("wan", tiny, dev, dtype, real, in_channels=16, out_channels=16)
    text = _cfg_text(_randn(dev, dtype), _tok(tiny, 512), 16 if tiny else 4096)
    call = dict(**text, guidance_scale=5.0, **_video(tiny, (480, 832, 17), (32, 64, 5)))
    sched = UniPCMultistepScheduler(**FLOW_DPM, flow_shift=3.0)  # Wan's shipped config at 480p
    pipe = assemble(WanPipeline, transformer=net, scheduler=sched)
    config = f"Wan2.1-T2V-{'14B' if big else '1.3B'} transformer"
    return Case(pipe, call, 50, "unipc_flow (shift 3)", _shape(call), config)


def qwen(dev, dtype, tiny: bool) -> Case:
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    net = _net("qwen", tiny, dev, dtype, in_channels=64, out_channels=16)  # class defaults: Qwen-Image's, 20B
    emb = _randn(dev, dtype)
    text = _cfg_text(emb, _tok(tiny, 128), 16 if tiny else 3584, torch.long, "prompt_embeds_mask", dev)
    call = dict(**text, true_cfg_scale=4.0, **_px(tiny, 1024))
    sched = FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_FLOW)
    pipe = assemble(QwenImagePipeline, transformer=net, scheduler=sched)
    return Case(pipe, call, 50, "flow_euler (exponential shift)", _shape(call), "Qwen-Image transformer")


def sana(dev, dtype, tiny: bool) -> Case:
    from diffusers import DPMSolverMultistepScheduler, SanaPipeline

    # class defaults: SANA 1600M 1024px's; tiny: its 32 latent channels, timestep scale 1
    small = dict(in_channels=32, out_channels=32, sample_size=2, timestep_scale=1.0)
    net = _net("sana", tiny, dev, dtype, **small)
    text = _cfg_text(_randn(dev, dtype), _tok(tiny, 300), 8 if tiny else 2304, torch.long, dev=dev)
    call = dict(
        **text,
        negative_prompt=None,
        guidance_scale=4.5,
        use_resolution_binning=False,
        complex_human_instruction=None,
        **_px(tiny, 1024),
    )
    pipe = assemble(SanaPipeline, transformer=net, scheduler=DPMSolverMultistepScheduler(**FLOW_DPM, flow_shift=3.0))
    return Case(pipe, call, 20, "dpm++2m_flow (shift 3)", _shape(call), "SANA 1600M 1024px transformer")


def ltx(dev, dtype, tiny: bool) -> Case:
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXPipeline

    net = _net("ltx", tiny, dev, dtype)  # class defaults: LTX-Video 0.9's, 2B
    text = _cfg_text(_randn(dev, dtype), _tok(tiny, 128), 16 if tiny else 4096, torch.long, dev=dev)
    call = dict(**text, guidance_scale=3.0, **_video(tiny, (480, 704, 25), (64, 64, 9)))
    sched = FlowMatchEulerDiscreteScheduler(  # LTX-Video's shipped config
        use_dynamic_shifting=True,
        base_shift=0.95,
        max_shift=2.05,
        base_image_seq_len=1024,
        max_image_seq_len=4096,
        shift_terminal=0.1,
    )
    pipe = assemble(LTXPipeline, transformer=net, scheduler=sched)
    return Case(pipe, call, 50, "flow_euler (dynamic shift)", _shape(call), "LTX-Video 0.9 transformer")


def cogvideox(dev, dtype, tiny: bool) -> Case:
    from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline

    small = dict(sample_width=8, sample_height=8, max_text_seq_length=16)
    net = _net("cogvideox", tiny, dev, dtype, **small)  # class defaults: CogVideoX-2b's
    tokens, text = (16, 16) if tiny else (226, 4096)
    call = dict(
        **_cfg_text(_randn(dev, dtype), tokens, text), guidance_scale=6.0, **_video(tiny, (480, 720, 13), (64, 64, 9))
    )
    pipe = assemble(CogVideoXPipeline, transformer=net, scheduler=CogVideoXDDIMScheduler(**COGVIDEOX_DDIM))
    return Case(pipe, call, 50, "cogvideox_ddim", _shape(call), "CogVideoX-2b transformer")


def lumina2(dev, dtype, tiny: bool) -> Case:
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline

    # Lumina-Image-2.0; tiny: 16 latent channels, a longer caption axis
    net = _net("lumina2", tiny, dev, dtype, dict(cap_feat_dim=2304), in_channels=16, axes_lens=(32, 16, 16))
    text = _cfg_text(_randn(dev, dtype), _tok(tiny, 256), 16 if tiny else 2304, torch.bool, dev=dev)
    call = dict(**text, guidance_scale=4.0, **_px(tiny, 1024))
    pipe = assemble(Lumina2Pipeline, transformer=net, scheduler=FlowMatchEulerDiscreteScheduler(shift=6.0))
    return Case(pipe, call, 30, "flow_euler (shift 6)", _shape(call), "Lumina-Image-2.0 transformer")


def hidream(dev, dtype, tiny: bool) -> Case:
    from diffusers import HiDreamImagePipeline, UniPCMultistepScheduler

    real = dict(
        patch_size=2,
        in_channels=16,
        caption_channels=[4096, 4096],
        axes_dims_rope=(64, 32, 32),
        llama_layers=list(range(32)) + [31] * 16,
    )  # HiDream-I1-Full: 17B
    net = _net("hidream", tiny, dev, dtype, real, in_channels=16, out_channels=None)
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
    sched = UniPCMultistepScheduler(**FLOW_DPM, flow_shift=3.0)
    pipe = assemble(HiDreamImagePipeline, transformer=net, scheduler=sched)
    if tiny:
        pipe.default_sample_size = 8  # the loop rescales height x width to this area
    return Case(pipe, call, 50, "unipc_flow (shift 3)", _shape(call), "HiDream-I1-Full transformer")


def zimage(dev, dtype, tiny: bool) -> Case:
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    net = _net("zimage", tiny, dev, dtype, in_channels=16)  # class defaults: Z-Image's, 6B
    emb = _randn(dev, dtype)
    text = 16 if tiny else 2560
    call = dict(
        prompt_embeds=[emb(_tok(tiny, 128), text)],
        negative_prompt_embeds=[emb(_tok(tiny, 128), text)],
        guidance_scale=4.0,
        **_px(tiny, 1024),
    )
    pipe = assemble(ZImagePipeline, transformer=net, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    return Case(pipe, call, 50, "flow_euler (shift 3)", _shape(call), "Z-Image transformer")


def audioldm2(dev, dtype, tiny: bool) -> Case:
    import diffusers
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

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
    unet = _net("audioldm2", tiny, dev, dtype, real, sample_size=None, in_channels=8, out_channels=8)
    t5, gpt2 = audioldm2_text_models()  # only their dtypes (and the vocoder's config) are read
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
    pipe = assemble(
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
    return Case(pipe, call, 200, "ddim", _shape(call), "AudioLDM2 unet")


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
