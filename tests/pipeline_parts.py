"""Shared parts of the pipeline tests: tiny random-weight components built from configs (diffusers' own fast-test
configs, made smaller; CPU, offline), the stock schedulers they run with, and the stock-versus-parallel comparison.

Not a test module (pytest puts tests/ on sys.path; the ``test_pipelines*.py`` files import from here).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from collections.abc import Iterator
from unittest import mock

import numpy as np
import pytest
import torch

import paratriton

pytest.importorskip("diffusers")
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler  # noqa: E402 - after importorskip

logging.getLogger("diffusers").setLevel(logging.ERROR)  # the tiny configs trigger deprecation notes

TOL = {"tol_abs": 1e-6, "tol_rel": 1e-6}  # above what the tiny random networks here resolve on a CPU (~5e-7)
ATOL = 1e-4
STEPS = 8
FLUX_VAE_SCALE = {"shift_factor": 0.0609, "scaling_factor": 1.5035}  # FLUX.1's (and SD3's) latent shift and scale


def needs_transformers() -> None:
    """Skip where transformers is missing: diffusers exports its text-conditioned pipelines only with it."""
    pytest.importorskip("transformers", reason="diffusers' text pipelines need transformers")


# ---------------------------------------------------------------------------------------------------------------
# schedulers, generators
# ---------------------------------------------------------------------------------------------------------------
def _ddim(**kw) -> DDIMScheduler:
    # steps_offset=1 as SD checkpoints ship (0 triggers a deprecation warning in the SD pipelines)
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        **kw,
    )


def _ddpm(**kw) -> DDPMScheduler:
    # with steps_offset=1 the last timestep is 1 > 0, so DDPM adds noise in every step, the last one included
    kw = {"clip_sample": False, **kw}
    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, **kw)


SCHEDULERS = {"ddim": _ddim, "ddpm": _ddpm}


def _gen(seed: int = 0, batch: int | None = None):
    """One seeded generator, or ``batch`` of them (seeds ``seed``, ``seed + 1``, ...)."""
    if batch is None:
        return torch.Generator().manual_seed(seed)
    return [torch.Generator().manual_seed(seed + i) for i in range(batch)]


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def assemble(cls, **components):
    """``cls(**components)`` with every other component it requires None (prompt embeddings are passed in: no text
    encoder, tokenizer or image processor), its progress bar off."""
    params = inspect.signature(cls.__init__).parameters.values()
    required = [p.name for p in params if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD]
    return _quiet(cls(**{name: None for name in required[1:] if name not in components}, **components))


def latent_call(steps: int, size: int | None = None, guidance: float | None = None, **kw) -> dict:
    """A call's common arguments: ``steps`` steps, a ``size`` x ``size`` sample, guidance scale ``guidance`` (each
    left to the pipeline where None), latents returned (the tiny decoders add nothing to check); ``kw`` added."""
    out = {"num_inference_steps": steps, "output_type": "latent"}
    if size is not None:
        out.update(height=size, width=size)
    if guidance is not None:
        out["guidance_scale"] = guidance
    return {**out, **kw}


def seeded(cls, seed: int = 0, **config) -> torch.nn.Module:
    """``cls(**config)`` in eval mode, its random weights drawn after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return cls(**config).eval()


# ---------------------------------------------------------------------------------------------------------------
# tiny components
# ---------------------------------------------------------------------------------------------------------------
def _tiny_vae(latent_channels: int = 4, **kw) -> AutoencoderKL:
    args = {
        "block_out_channels": [4, 8],
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 2,
        "up_block_types": ["UpDecoderBlock2D"] * 2,
        "latent_channels": latent_channels,
        "norm_num_groups": 2,
    }
    return seeded(AutoencoderKL, **{**args, **kw})


def flux_vae(cls=AutoencoderKL, blocks: int = 1, **kw) -> torch.nn.Module:
    """Flux's 1-channel VAE without quant convolutions, ``blocks`` levels; ``kw`` adds (shift and scale)."""
    args = {
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
    return seeded(cls, **{**args, **kw})


def sd_unet(**kw) -> torch.nn.Module:
    """SD's UNet (cross-attention width 8); ``kw`` overrides (channels, sample size, class embeddings)."""
    from diffusers import UNet2DConditionModel

    args = {
        "block_out_channels": (4, 8),
        "layers_per_block": 1,
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 8,
        "norm_num_groups": 2,
    }
    return seeded(UNet2DConditionModel, **{**args, **kw})


def sdxl_unet(**kw) -> torch.nn.Module:
    """SDXL's UNet (text_time embeddings, pooled width 32, cross-attention width 64); ``kw`` overrides."""
    from diffusers import UNet2DConditionModel

    args = {
        "block_out_channels": (2, 4),
        "layers_per_block": 2,
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "attention_head_dim": (2, 4),
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 8,
        "transformer_layers_per_block": (1, 2),
        "projection_class_embeddings_input_dim": 80,
        "cross_attention_dim": 64,
        "norm_num_groups": 1,
    }
    return seeded(UNet2DConditionModel, **{**args, **kw})


def flux_transformer(**kw) -> torch.nn.Module:
    """FLUX.1's transformer (text width 32, pooled width 32); ``kw`` overrides (``guidance_embeds``)."""
    from diffusers import FluxTransformer2DModel

    args = {
        "patch_size": 1,
        "in_channels": 4,
        "num_layers": 1,
        "num_single_layers": 1,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": 32,
        "pooled_projection_dim": 32,
        "axes_dims_rope": [4, 4, 8],
    }
    return seeded(FluxTransformer2DModel, **{**args, **kw})


def qwen_transformer() -> torch.nn.Module:
    """Qwen-Image's transformer (16 latent channels packed 2 x 2, text width 16)."""
    from diffusers import QwenImageTransformer2DModel

    return seeded(
        QwenImageTransformer2DModel,
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=16,
        guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
    )


def wan_transformer(seed: int = 0, **kw) -> torch.nn.Module:
    """Wan's transformer (one layer, two heads); ``kw`` overrides (channels, head and text widths)."""
    from diffusers import WanTransformer3DModel

    args = {
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
    }
    return seeded(WanTransformer3DModel, seed, **{**args, **kw})


def make_unet2d() -> torch.nn.Module:
    from diffusers import UNet2DModel

    return seeded(
        UNet2DModel,
        block_out_channels=(4, 8),
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=8,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )


@contextlib.contextmanager
def recorded_rows(network: torch.nn.Module, dim: int = 0) -> Iterator[list[int]]:
    """Record ``hidden_states.shape[dim]`` of every call of ``network`` while the block runs."""
    rows: list[int] = []
    handle = network.register_forward_pre_hook(
        lambda m, a, kw: rows.append(kw["hidden_states"].shape[dim]), with_kwargs=True
    )
    try:
        yield rows
    finally:
        handle.remove()


# ---------------------------------------------------------------------------------------------------------------
# stock against parallel
# ---------------------------------------------------------------------------------------------------------------
def _images(out) -> torch.Tensor:
    images = out.images if hasattr(out, "images") else out[0]
    return images if torch.is_tensor(images) else torch.from_numpy(np.asarray(images))


def floor_warnings():
    """Record the warnings of a call, with paratriton's once-per-process memory of precision-floor warnings empty
    for its length (so a precision-limited solve warns whatever ran before)."""
    from paratriton.solvers import tolerance

    class _Ctx:
        def __enter__(self):
            self.patch = mock.patch.object(tolerance, "_warned", set())
            self.rec = warnings.catch_warnings(record=True)
            self.patch.__enter__()
            caught = self.rec.__enter__()
            warnings.filterwarnings("always", module="paratriton")  # ours every time; the others as configured
            return caught

        def __exit__(self, *exc):
            self.rec.__exit__(*exc)
            return self.patch.__exit__(*exc)

    return _Ctx()


def check_floor_warning(caught: list, result) -> None:
    """TOL is tighter than a tiny float32 network resolves on some machines and shapes: the solver then stops at
    the network's floor and says so (RuntimeWarning). Assert that a precision-limited result was announced, and that
    the stock call (``result`` None) never warns (recorded under ``floor_warnings``; window="auto"'s timing solves
    may warn too); pass every other warning on unchanged."""
    floor = [w for w in caught if issubclass(w.category, RuntimeWarning) and "is below what" in str(w.message)]
    if result is None:
        assert not floor, [str(w.message) for w in floor]
    elif result.precision_limited:
        assert floor and result.precision_floor > 0
    for w in caught:  # passed the filters already: shown as they are (pytest's summary)
        if w not in floor:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def checked_call(p, inputs: dict, seed: int = 0, per_sample_generators: int | None = None, generator=None):
    """``p(**inputs)`` with the seeded generator(s) (or ``generator``) and the global RNG seeded too, its
    precision-floor warnings checked: a parallel pipeline's against its result, a stock pipeline's must not exist;
    returns the raw output."""
    torch.manual_seed(seed)  # DiT and Flux draw their step noise from the global RNG
    generator = _gen(seed, per_sample_generators) if generator is None else generator
    with floor_warnings() as caught:
        out = p(**inputs, generator=generator)
    check_floor_warning(caught, p.paratriton.last_result if hasattr(p, "paratriton") else None)
    return out


def compare_calls(pipe, par, inputs: dict, seed: int = 0, per_sample_generators: int | None = None):
    """The stock pipeline's and the parallel pipeline's images for the same inputs and seed: (stock, parallel)."""
    ref, out = (_images(checked_call(p, inputs, seed, per_sample_generators)) for p in (pipe, par))
    return ref, out


def run_pair(
    pipe, inputs: dict, method: str = "taa", seed: int = 0, per_sample_generators: int | None = None, **options
):
    """Run the stock pipeline and its parallel version with the same seed; return (stock, parallel, par pipe)."""
    par = paratriton.parallelize(pipe, method, **({} if method == "sequential" else TOL), **options)
    return (*compare_calls(pipe, par, inputs, seed, per_sample_generators), par)


def assert_same(ref: torch.Tensor, out: torch.Tensor, atol: float = ATOL) -> None:
    assert ref.shape == out.shape
    err = (ref.double() - out.double()).abs().max().item()
    assert err <= atol, f"max abs error {err:.3e} > {atol}"
