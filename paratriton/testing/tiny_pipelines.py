"""Tiny random-weight diffusers components built from configs (CPU, offline, no weights downloaded).

Each config is diffusers' own fast-test config made smaller: the pipeline tests (``tests/test_pipelines*.py``) build
their pipelines from these, and ``benchmarks/families.py`` takes the denoiser configs as its ``--tiny`` shapes (with
the overrides it names). The scheduler configs the models ship are here too.

Not imported by ``paratriton`` or ``paratriton.testing``; diffusers (and transformers, for AudioLDM2's text models)
is imported only when a component is built, so the configs read without it.
"""

from __future__ import annotations

import copy
import importlib
import inspect
from typing import Any, TypeVar

import torch

_M = TypeVar("_M", bound=torch.nn.Module)

# ---------------------------------------------------------------------------------------------------------------
# scheduler configs, as the models ship them
# ---------------------------------------------------------------------------------------------------------------
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
# SD's DDIM as its checkpoints ship it (steps_offset=1: 0 triggers a deprecation warning in the SD pipelines)
SD_DDIM = {**SD_BETAS, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}
# DPM-Solver and UniPC in flow mode (SANA, Wan, HiDream add their flow_shift)
FLOW_DPM = {"prediction_type": "flow_prediction", "use_flow_sigmas": True}
# Qwen-Image's FlowMatchEulerDiscreteScheduler
QWEN_IMAGE_FLOW = {
    "base_shift": 0.5,
    "max_shift": 0.9,
    "use_dynamic_shifting": True,
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
}
# CogVideoX-2b's CogVideoXDDIMScheduler
COGVIDEOX_DDIM = {
    "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "snr_shift_scale": 3.0,
    "timestep_spacing": "trailing",
    "clip_sample": False,
}
FLUX_VAE_SCALE = {"shift_factor": 0.0609, "scaling_factor": 1.5035}  # FLUX.1's (and SD3's) latent shift and scale

# ---------------------------------------------------------------------------------------------------------------
# tiny denoisers: family -> (diffusers class, config)
# ---------------------------------------------------------------------------------------------------------------
_SD_BLOCKS = {
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
}
# FLUX.1's, Chroma's and FLUX.2's transformers: one double-stream and one single-stream block of two heads
_FLUX_BLOCKS = {
    "patch_size": 1,
    "in_channels": 4,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
}
DENOISERS: dict[str, tuple[str, dict[str, Any]]] = {
    # DDPM/DDIM pipelines' unconditional UNet
    "unet2d": (
        "UNet2DModel",
        {
            "block_out_channels": (4, 8),
            "layers_per_block": 1,
            "norm_num_groups": 4,
            "sample_size": 8,
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
            "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
        },
    ),
    # SD's UNet (cross-attention width 8)
    "sd": (
        "UNet2DConditionModel",
        {
            "block_out_channels": (4, 8),
            "layers_per_block": 1,
            "sample_size": 16,
            "in_channels": 4,
            "out_channels": 4,
            **_SD_BLOCKS,
            "cross_attention_dim": 8,
            "norm_num_groups": 2,
        },
    ),
    # SDXL's UNet (text_time embeddings, pooled width 32, cross-attention width 64)
    "sdxl": (
        "UNet2DConditionModel",
        {
            "block_out_channels": (2, 4),
            "layers_per_block": 2,
            "sample_size": 16,
            "in_channels": 4,
            "out_channels": 4,
            **_SD_BLOCKS,
            "attention_head_dim": (2, 4),
            "use_linear_projection": True,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "transformer_layers_per_block": (1, 2),
            "projection_class_embeddings_input_dim": 80,
            "cross_attention_dim": 64,
            "norm_num_groups": 1,
        },
    ),
    # AudioLDM2's UNet: per block a self-attention, then cross-attention on GPT-2's states, then on T5's
    "audioldm2": (
        "AudioLDM2UNet2DConditionModel",
        {
            "block_out_channels": (4, 8),
            "layers_per_block": 1,
            "sample_size": 8,
            "in_channels": 4,
            "out_channels": 4,
            **_SD_BLOCKS,
            "cross_attention_dim": ([None, 8, 16], [None, 8, 16]),
            "norm_num_groups": 2,
        },
    ),
    "pixart": (
        "PixArtTransformer2DModel",
        {
            "sample_size": 8,
            "num_layers": 2,
            "patch_size": 2,
            "attention_head_dim": 8,
            "num_attention_heads": 3,
            "caption_channels": 32,
            "in_channels": 4,
            "cross_attention_dim": 24,
            "out_channels": 8,
            "attention_bias": True,
            "activation_fn": "gelu-approximate",
            "num_embeds_ada_norm": 1000,
            "norm_type": "ada_norm_single",
            "norm_elementwise_affine": False,
            "norm_eps": 1e-6,
        },
    ),
    "dit": (
        "DiTTransformer2DModel",
        {
            "sample_size": 8,
            "num_layers": 2,
            "patch_size": 4,
            "attention_head_dim": 8,
            "num_attention_heads": 2,
            "in_channels": 4,
            "out_channels": 8,
            "attention_bias": True,
            "activation_fn": "gelu-approximate",
            "num_embeds_ada_norm": 1000,
            "norm_type": "ada_norm_zero",
            "norm_elementwise_affine": False,
        },
    ),
    "sd3": (
        "SD3Transformer2DModel",
        {
            "sample_size": 8,
            "patch_size": 1,
            "in_channels": 4,
            "num_layers": 1,
            "attention_head_dim": 8,
            "num_attention_heads": 4,
            "caption_projection_dim": 32,
            "joint_attention_dim": 32,
            "pooled_projection_dim": 64,
            "out_channels": 4,
        },
    ),
    # FLUX.1 (text width 32, pooled width 32)
    "flux": (
        "FluxTransformer2DModel",
        {
            **_FLUX_BLOCKS,
            "joint_attention_dim": 32,
            "pooled_projection_dim": 32,
            "axes_dims_rope": [4, 4, 8],
        },
    ),
    # Chroma: FLUX.1's blocks with an approximator instead of pooled projections and guidance
    "chroma": (
        "ChromaTransformer2DModel",
        {
            **_FLUX_BLOCKS,
            "joint_attention_dim": 32,
            "axes_dims_rope": (4, 4, 8),
            "approximator_num_channels": 8,
            "approximator_hidden_dim": 16,
            "approximator_layers": 1,
        },
    ),
    "flux2": (
        "Flux2Transformer2DModel",
        {
            **_FLUX_BLOCKS,
            "joint_attention_dim": 16,
            "timestep_guidance_channels": 256,
            "axes_dims_rope": [4, 4, 4, 4],
        },
    ),
    # Qwen-Image (16 latent channels packed 2 x 2, text width 16)
    "qwen": (
        "QwenImageTransformer2DModel",
        {
            "patch_size": 2,
            "in_channels": 16,
            "out_channels": 4,
            "num_layers": 1,
            "attention_head_dim": 16,
            "num_attention_heads": 2,
            "joint_attention_dim": 16,
            "guidance_embeds": False,
            "axes_dims_rope": (8, 4, 4),
        },
    ),
    # Wan (one layer, two heads)
    "wan": (
        "WanTransformer3DModel",
        {
            "patch_size": (1, 2, 2),
            "num_attention_heads": 2,
            "attention_head_dim": 8,
            "in_channels": 4,
            "out_channels": 4,
            "text_dim": 16,
            "freq_dim": 32,
            "ffn_dim": 16,
            "num_layers": 1,
            "cross_attn_norm": True,
            "qk_norm": "rms_norm_across_heads",
            "rope_max_seq_len": 32,
        },
    ),
    "sana": (
        "SanaTransformer2DModel",
        {
            "patch_size": 1,
            "in_channels": 4,
            "out_channels": 8,  # learned sigma: the loop keeps the first 4 channels
            "num_layers": 1,
            "num_attention_heads": 2,
            "attention_head_dim": 4,
            "num_cross_attention_heads": 2,
            "cross_attention_head_dim": 4,
            "cross_attention_dim": 8,
            "caption_channels": 8,
            "sample_size": 8,
            "timestep_scale": 0.5,  # SANA-Sprint style; 1.0 in SANA 1.0 checkpoints
        },
    ),
    "stable_audio": (
        "StableAudioDiTModel",
        {
            "sample_size": 4,
            "in_channels": 3,
            "num_layers": 1,
            "attention_head_dim": 4,
            "num_key_value_attention_heads": 2,
            "out_channels": 3,
            "cross_attention_dim": 4,
            "time_proj_dim": 8,
            "global_states_input_dim": 8,
            "cross_attention_input_dim": 4,
        },
    ),
    "ltx": (
        "LTXVideoTransformer3DModel",
        {
            "in_channels": 8,
            "out_channels": 8,
            "patch_size": 1,
            "patch_size_t": 1,
            "num_attention_heads": 2,
            "attention_head_dim": 8,
            "cross_attention_dim": 16,
            "num_layers": 1,
            "caption_channels": 16,
        },
    ),
    "cogvideox": (
        "CogVideoXTransformer3DModel",
        {
            "num_attention_heads": 2,
            "attention_head_dim": 8,
            "use_rotary_positional_embeddings": False,
            "in_channels": 4,
            "out_channels": 4,
            "time_embed_dim": 2,
            "text_embed_dim": 16,
            "num_layers": 1,
            "sample_width": 2,
            "sample_height": 2,
            "sample_frames": 9,
            "patch_size": 2,
            "temporal_compression_ratio": 4,
            "max_text_seq_length": 8,
        },
    ),
    "lumina2": (
        "Lumina2Transformer2DModel",
        {
            "sample_size": 4,
            "patch_size": 2,
            "in_channels": 4,
            "hidden_size": 24,
            "num_layers": 1,
            "num_refiner_layers": 1,
            "num_attention_heads": 2,
            "num_kv_heads": 1,
            "multiple_of": 16,
            "axes_dim_rope": (4, 4, 4),
            "axes_lens": (16, 16, 16),
            "cap_feat_dim": 16,
        },
    ),
    "hidream": (
        "HiDreamImageTransformer2DModel",
        {
            "patch_size": 2,
            "in_channels": 4,
            "out_channels": 4,
            "num_layers": 1,
            "num_single_layers": 1,
            "attention_head_dim": 8,
            "num_attention_heads": 2,
            "caption_channels": [16, 8],
            "text_emb_dim": 16,
            "num_routed_experts": 2,
            "num_activated_experts": 1,
            "axes_dims_rope": (4, 2, 2),
            "max_resolution": (16, 16),
            "llama_layers": (0, 1),
        },
    ),
    "zimage": (
        "ZImageTransformer2DModel",
        {
            "all_patch_size": (2,),
            "all_f_patch_size": (1,),
            "in_channels": 4,
            "dim": 32,
            "n_layers": 1,
            "n_refiner_layers": 1,
            "n_heads": 2,
            "n_kv_heads": 2,
            "cap_feat_dim": 16,
            "axes_dims": [8, 4, 4],
            "axes_lens": [64, 32, 32],
        },
    ),
}

# ---------------------------------------------------------------------------------------------------------------
# tiny VAEs: name -> (diffusers class, config)
# ---------------------------------------------------------------------------------------------------------------
VAES: dict[str, tuple[str, dict[str, Any]]] = {
    # SD's, 2 levels
    "kl": (
        "AutoencoderKL",
        {
            "block_out_channels": [4, 8],
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D"] * 2,
            "up_block_types": ["UpDecoderBlock2D"] * 2,
            "latent_channels": 4,
            "norm_num_groups": 2,
        },
    ),
    "wan": (
        "AutoencoderKLWan",
        {
            "base_dim": 3,
            "z_dim": 4,
            "dim_mult": [1, 1, 1, 1],
            "num_res_blocks": 1,
            "temperal_downsample": [False, True, True],
            "latents_mean": [0.1, -0.2, 0.05, 0.0],
            "latents_std": [1.5, 0.8, 1.0, 1.2],
        },
    ),
    "sana": (
        "AutoencoderDC",
        {
            "in_channels": 3,
            "latent_channels": 4,
            "attention_head_dim": 2,
            "encoder_block_types": ("ResBlock", "EfficientViTBlock"),
            "decoder_block_types": ("ResBlock", "EfficientViTBlock"),
            "encoder_block_out_channels": (8, 8),
            "decoder_block_out_channels": (8, 8),
            "encoder_qkv_multiscales": ((), (5,)),
            "decoder_qkv_multiscales": ((), (5,)),
            "encoder_layers_per_block": (1, 1),
            "decoder_layers_per_block": [1, 1],
            "downsample_block_type": "conv",
            "upsample_block_type": "interpolate",
            "decoder_norm_types": "rms_norm",
            "decoder_act_fns": "silu",
            "scaling_factor": 0.41407,
        },
    ),
    "stable_audio": (
        "AutoencoderOobleck",
        {
            "encoder_hidden_size": 6,
            "downsampling_ratios": [1, 2],
            "decoder_channels": 3,
            "decoder_input_channels": 3,
            "audio_channels": 2,
            "channel_multiples": [2, 4],
            "sampling_rate": 4,
        },
    ),
    "ltx": (
        "AutoencoderKLLTXVideo",
        {
            "latent_channels": 8,
            "block_out_channels": (8, 8, 8, 8),
            "spatio_temporal_scaling": (True, True, False, False),
            "layers_per_block": (1, 1, 1, 1, 1),
            "decoder_block_out_channels": (8, 8, 8, 8),  # its default decoder is LTX's full-size one
            "decoder_layers_per_block": (1, 1, 1, 1, 1),
            "decoder_spatio_temporal_scaling": (True, True, False, False),
            "patch_size": 1,
            "patch_size_t": 1,
            "encoder_causal": True,
            "decoder_causal": False,
        },
    ),
    "cogvideox": (
        "AutoencoderKLCogVideoX",
        {
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ("CogVideoXDownBlock3D",) * 4,
            "up_block_types": ("CogVideoXUpBlock3D",) * 4,
            "block_out_channels": (8, 8, 8, 8),
            "latent_channels": 4,
            "layers_per_block": 1,
            "norm_num_groups": 2,
            "temporal_compression_ratio": 4,
        },
    ),
}


# ---------------------------------------------------------------------------------------------------------------
# builders
# ---------------------------------------------------------------------------------------------------------------
def diffusers_class(name: str) -> type:
    """The diffusers class called ``name`` (diffusers imported here, on first use)."""
    return getattr(importlib.import_module("diffusers"), name)


def seeded(cls: type[_M], seed: int | None = 0, **config: Any) -> _M:
    """``cls(**config)`` in eval mode, its random weights drawn after ``torch.manual_seed(seed)`` (from the global
    RNG as it stands where ``seed`` is None)."""
    if seed is not None:
        torch.manual_seed(seed)
    return cls(**config).eval()


def denoiser_config(family: str, **overrides: Any) -> dict[str, Any]:
    """A copy of the tiny config of ``family``'s denoiser (``DENOISERS``), ``overrides`` on it."""
    return {**copy.deepcopy(DENOISERS[family][1]), **overrides}


def denoiser_class(family: str) -> type:
    """The diffusers class of ``family``'s denoiser."""
    return diffusers_class(DENOISERS[family][0])


def tiny_denoiser(family: str, seed: int | None = 0, **overrides: Any) -> torch.nn.Module:
    """``family``'s tiny denoiser (``DENOISERS``), ``overrides`` on its config, its weights seeded (``seeded``)."""
    return seeded(denoiser_class(family), seed, **denoiser_config(family, **overrides))


def tiny_vae(name: str = "kl", seed: int | None = 0, **overrides: Any) -> torch.nn.Module:
    """The tiny VAE ``name`` (``VAES``), ``overrides`` on its config, its weights seeded (``seeded``)."""
    cls_name, config = VAES[name]
    return seeded(diffusers_class(cls_name), seed, **{**copy.deepcopy(config), **overrides})


def flux_vae(cls_name: str = "AutoencoderKL", blocks: int = 1, **overrides: Any) -> torch.nn.Module:
    """Flux's 1-channel VAE without quant convolutions, ``blocks`` levels (``cls_name``: FLUX.2's class, say);
    ``overrides`` add (shift and scale), weights seeded."""
    config = {
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (4,) * blocks,
        "down_block_types": ("DownEncoderBlock2D",) * blocks,
        "up_block_types": ("UpDecoderBlock2D",) * blocks,
        "layers_per_block": 1,
        "latent_channels": 1,
        "norm_num_groups": 1,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
    }
    return seeded(diffusers_class(cls_name), **{**config, **overrides})


def qwen_vae(edit: bool = False, seed: int | None = None) -> torch.nn.Module:
    """Qwen-Image's VAE, 3 levels; ``edit``: 5 levels, narrower (the edit pipeline encodes its input image at about
    1024 x 1024: 32x downsampling keeps that cheap). Weights from the global RNG unless ``seed``."""
    levels = 5 if edit else 3
    return seeded(
        diffusers_class("AutoencoderKLQwenImage"),
        seed,
        base_dim=2 if edit else 8,
        z_dim=4,
        dim_mult=[1] * (levels + 1),
        num_res_blocks=0 if edit else 1,
        attn_scales=[],
        temperal_downsample=[False] * levels,
        latents_mean=[0.1, -0.1, 0.0, 0.2],
        latents_std=[1.0, 0.5, 2.0, 1.0],
    )


def audioldm2_text_models() -> tuple[torch.nn.Module, torch.nn.Module]:
    """AudioLDM2's T5 encoder and GPT-2 language model, tiny (widths 16 and 8), weights from the global RNG: the
    pipeline reads only their dtypes when the embeddings are passed in."""
    from transformers import GPT2Config, GPT2Model, T5Config, T5EncoderModel

    t5 = T5EncoderModel(T5Config(vocab_size=32, d_model=16, d_ff=16, d_kv=8, num_heads=2, num_layers=1))
    gpt2 = GPT2Model(
        GPT2Config(n_embd=8, n_head=2, n_layer=1, vocab_size=32, n_positions=16, bos_token_id=0, eos_token_id=0)
    )
    return t5.eval(), gpt2.eval()


def assemble(cls: type, **components: Any) -> Any:
    """``cls(**components)`` with every other component it requires None (prompt embeddings are passed in: no text
    encoder, tokenizer or image processor), its progress bar off."""
    params = inspect.signature(cls.__init__).parameters.values()
    required = [p.name for p in params if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD]
    pipe = cls(**{name: None for name in required[1:] if name not in components}, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe
