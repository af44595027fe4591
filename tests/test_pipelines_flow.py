"""The flow-matching transformer families with separate CFG calls, each against the stock pipeline with the same
generator: Wan 2.1 and 2.2 (per-step expert and guidance scale), Wan image-to-video, Qwen-Image and its edit
pipeline (two calls renormalised by norms; text of two lengths; image tokens on the sequence), Chroma, Lumina 2
(CFG truncated by step, renormalised, negated output) and Z-Image (lists of per-sample tensors, CFG truncated by
step, a norm clamp). Tiny random-weight
components built from configs (CPU, offline; prompt embeddings passed directly), as in ``test_pipelines.py``; each
family with its default scheduler and one other.
"""

from __future__ import annotations

import pytest
import torch

import paratriton

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers", reason="diffusers' text pipelines need transformers")
from pipeline_parts import (  # noqa: E402 - the shared parts (pytest puts tests/ on sys.path)
    STEPS,
    _gen,
    assert_same,
    latent_call,
    recorded_rows,
    run_pair,
)

from paratriton.testing.tiny_pipelines import (  # noqa: E402
    FLOW_DPM,
    FLUX_VAE_SCALE,
    QWEN_IMAGE_FLOW,
    assemble,
    flux_vae,
    qwen_vae,
    tiny_denoiser,
    tiny_vae,
)


def _frames(out) -> torch.Tensor:
    return out.frames if torch.is_tensor(out.frames) else torch.as_tensor(out.frames)


def _unipc_flow():
    from diffusers import UniPCMultistepScheduler

    # Wan's shipped scheduler config (flow_shift 3.0 for 480p)
    return UniPCMultistepScheduler(**FLOW_DPM, flow_shift=3.0)


def _euler_flow():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=3.0)


SCHEDS = {"unipc": _unipc_flow, "euler": _euler_flow}


# ---------------------------------------------------------------------------------------------------------------
# Wan 2.1 / 2.2 (text to video) and Wan image to video
# ---------------------------------------------------------------------------------------------------------------
def make_wan(scheduler, experts: bool = False, i2v: bool = False, image_dim: int | None = None):
    """Wan 2.1 (one transformer) or 2.2 (``experts``: transformer_2 below boundary_ratio 0.7)."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    in_channels = 4 + 4 + 4 if i2v else 4  # i2v: latents, the first frame's mask and its latents on channels
    kw = (
        {"transformer_2": tiny_denoiser("wan", 1, in_channels=in_channels, image_dim=image_dim), "boundary_ratio": 0.7}
        if experts
        else {}
    )
    cls = WanImageToVideoPipeline if i2v else WanPipeline
    transformer = tiny_denoiser("wan", in_channels=in_channels, image_dim=image_dim)
    return assemble(cls, vae=tiny_vae("wan"), scheduler=scheduler, transformer=transformer, **kw)


def wan_inputs(batch: int, cfg: bool, **kw) -> dict:
    g = _gen(11)
    return {
        "prompt_embeds": torch.randn(batch, 5, 16, generator=g),
        "negative_prompt_embeds": torch.randn(batch, 5, 16, generator=g),
        "num_frames": 5,
        **latent_call(STEPS, 16, 4.0 if cfg else 1.0),
        **kw,
    }


def _wan_pair(pipe, inputs: dict):
    ref, out, par = run_pair(pipe, inputs)
    return ref, out, par


@pytest.mark.parametrize("sched", list(SCHEDS))
@pytest.mark.parametrize(("cfg", "batch"), [(True, 1), (False, 2)], ids=["cfg", "nocfg"])
def test_wan21_matches_stock(sched, cfg, batch):
    pipe = make_wan(SCHEDS[sched]())
    with recorded_rows(pipe.transformer) as rows:
        ref, out, _ = run_pair(pipe, wan_inputs(batch, cfg))
    assert_same(ref, out)
    calls = 2 * STEPS if cfg else STEPS  # stock: a conditional and an unconditional call per step
    assert rows[:calls] == [batch] * calls
    assert max(rows[calls:]) > 2 * batch  # parallel: several steps (and both branches) in one call


@pytest.mark.parametrize("sched", list(SCHEDS))
def test_wan22_routes_steps_to_their_expert_with_their_guidance_scale(sched):
    pipe = make_wan(SCHEDS[sched](), experts=True)
    boundary = 0.7 * pipe.scheduler.config.num_train_timesteps
    seen: dict[str, list] = {"transformer": [], "transformer_2": []}
    hooks = [
        getattr(pipe, name).register_forward_pre_hook(
            lambda m, a, kw, name=name: seen[name].append(kw["timestep"].reshape(-1)), with_kwargs=True
        )
        for name in seen
    ]
    inputs = wan_inputs(2, True, guidance_scale_2=2.0)
    try:
        ref, out, _ = run_pair(pipe, inputs)
    finally:
        for h in hooks:
            h.remove()
    assert_same(ref, out)
    high, low = (torch.cat(seen[n]) for n in ("transformer", "transformer_2"))
    assert high.numel() and low.numel()  # both experts ran, each on its own steps only (stock and parallel)
    assert bool((high >= boundary).all()) and bool((low < boundary).all())
    # guidance_scale_2 and transformer_2 change the video: the comparison is not vacuous
    same_scale = _frames(pipe(**{**inputs, "guidance_scale_2": 4.0}, generator=_gen(0)))
    assert (same_scale - ref).abs().max() > 1e-3


def _clip_image_encoder():
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(2)
    config = CLIPVisionConfig(
        hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, image_size=16, patch_size=8
    )
    processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    return CLIPVisionModel(config).eval(), processor


# Wan 2.1 i2v encodes the image with CLIP (image_dim); Wan 2.2 i2v has no image encoder and two experts
@pytest.mark.parametrize(("sched", "wan22"), [("unipc", False), ("euler", True)], ids=["wan21-unipc", "wan22-euler"])
def test_wan_image_to_video_matches_stock(sched, wan22):
    from PIL import Image

    pipe = make_wan(SCHEDS[sched](), experts=wan22, i2v=True, image_dim=None if wan22 else 8)
    if not wan22:
        pipe.image_encoder, pipe.image_processor = _clip_image_encoder()
    g = _gen(3)
    image = Image.fromarray((torch.rand(16, 16, 3, generator=g) * 255).to(torch.uint8).numpy())
    ref, out, _ = run_pair(pipe, wan_inputs(1, True, image=image))
    assert_same(ref, out)
    other = Image.fromarray((torch.rand(16, 16, 3, generator=g) * 255).to(torch.uint8).numpy())
    changed = _frames(pipe(**wan_inputs(1, True, image=other), generator=_gen(0)))
    assert (changed - ref).abs().max() > 1e-3  # the image conditions the video: the comparison is not vacuous


def test_wan_refuses_what_it_cannot_reproduce():
    from diffusers import WanPipeline

    pipe = assemble(
        WanPipeline,
        vae=tiny_vae("wan"),
        scheduler=_unipc_flow(),
        transformer=tiny_denoiser("wan"),
        expand_timesteps=True,
    )
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    par = paratriton.parallelize(pipe)
    with pytest.raises(ValueError, match="expand_timesteps .*WanPipeline.*per-token timestep"):
        par(**wan_inputs(1, True))
    handle.remove()
    assert not calls  # refused before any network call


def test_wan_keeps_float32_latents_with_a_bfloat16_transformer():
    # the stock loop keeps float32 latents and casts them to the transformer's dtype for every call: the solve
    # starts from prepare_latents' float32 latents, not from the rounded network input
    pipe = make_wan(_unipc_flow())
    pipe.transformer.to(torch.bfloat16)
    ref, out, par = run_pair(pipe, wan_inputs(1, True), method="sequential")
    assert ref.dtype == out.dtype == torch.float32
    # the stock loop's bfloat16 calls see float32-rounded inputs, the solve's float64-rounded ones: close, not equal
    assert_same(ref, out, atol=5e-2)
    x_T = par.paratriton.last_result.trajectory[-1]
    assert not torch.equal(x_T.to(torch.bfloat16).double(), x_T)  # the float32 latents, not the bfloat16 input


# ---------------------------------------------------------------------------------------------------------------
# Qwen-Image and Qwen-Image-Edit: true CFG renormalised by norms (a nonlinear combine), text of two lengths
# ---------------------------------------------------------------------------------------------------------------
def _qwen_default():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_FLOW)


def _qwen_sde():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_config({**_qwen_default().config, "stochastic_sampling": True})


def make_qwen(scheduler, edit: bool = False):
    from diffusers import QwenImageEditPipeline, QwenImagePipeline

    transformer = tiny_denoiser("qwen")
    vae = qwen_vae(edit)  # after the transformer: its weights come from the global RNG as it stands
    cls = QwenImageEditPipeline if edit else QwenImagePipeline
    kw = {"processor": None} if edit else {}
    return assemble(cls, scheduler=scheduler, vae=vae, transformer=transformer, **kw)


def qwen_inputs(batch: int, neg_len: int = 3, **kw) -> dict:
    g = _gen(13)
    mask = torch.ones(batch, 5, dtype=torch.long)
    mask[0, 4:] = 0  # a padded prompt: the network masks the padding
    return {
        "prompt_embeds": torch.randn(batch, 5, 16, generator=g),
        "prompt_embeds_mask": mask,
        "negative_prompt_embeds": torch.randn(batch, neg_len, 16, generator=g),
        "true_cfg_scale": 4.0,
        **latent_call(STEPS, 32),
        **kw,
    }


@pytest.mark.parametrize("sched", ["default", "sde"])
def test_qwen_image_matches_stock(sched):
    pipe = make_qwen({"default": _qwen_default, "sde": _qwen_sde}[sched]())
    inputs = qwen_inputs(2)  # the negative prompt is shorter than the prompt (each padded to its own longest)
    ref, out, _ = run_pair(pipe, inputs)
    assert_same(ref, out)
    plain = pipe(**{**inputs, "true_cfg_scale": 1.0}, generator=_gen(0)).images
    assert (plain - ref).abs().max() > 1e-2  # true CFG changes the image: the comparison is not vacuous


def test_qwen_image_combine_is_renormalised_by_norms():
    from paratriton.pipelines._specs_flow import renormalised_cfg

    g = _gen(0)
    cond, uncond = torch.randn(2, 3, 8, generator=g), torch.randn(2, 3, 8, generator=g)
    out = renormalised_cfg(cond, uncond, torch.tensor(4.0))
    assert torch.allclose(out.norm(dim=-1), cond.norm(dim=-1), atol=1e-5)  # the conditional norm, token by token
    linear = uncond + 4.0 * (cond - uncond)
    assert torch.allclose(out / out.norm(dim=-1, keepdim=True), linear / linear.norm(dim=-1, keepdim=True), atol=1e-6)


def test_qwen_image_edit_matches_stock():
    from PIL import Image

    pipe = make_qwen(_qwen_default(), edit=True)
    g = _gen(3)
    image = Image.fromarray((torch.rand(16, 16, 3, generator=g) * 255).to(torch.uint8).numpy())
    inputs = qwen_inputs(1, neg_len=5, image=image, height=128, width=128, num_inference_steps=4)
    with recorded_rows(pipe.transformer, dim=1) as rows:
        ref, out, _ = run_pair(pipe, inputs)
    assert_same(ref, out)
    assert set(rows) == {4 + 256}  # every call, stock and parallel: the latents' 4 tokens, then the image's 256


# ---------------------------------------------------------------------------------------------------------------
# Chroma and Lumina 2
# ---------------------------------------------------------------------------------------------------------------
def _flow_euler(**kw):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**kw)


FLOW_SCHEDS = {"euler": _flow_euler, "sde": lambda: _flow_euler(stochastic_sampling=True)}


def make_chroma(scheduler):
    from diffusers import ChromaPipeline

    transformer = tiny_denoiser("chroma")
    return assemble(ChromaPipeline, scheduler=scheduler, vae=flux_vae(**FLUX_VAE_SCALE), transformer=transformer)


def _masked_prompts(length: int, dim: int) -> dict:
    """Two prompts and two negative prompts of ``length`` tokens of width ``dim``, the first of each padded (its
    attention mask off on the last two tokens)."""
    out = {}
    for seed, prefix in ((1, ""), (2, "negative_")):
        mask = torch.ones(2, length, dtype=torch.bool)
        mask[0, length - 2 :] = False
        out[f"{prefix}prompt_embeds"] = torch.randn(2, length, dim, generator=_gen(seed))
        out[f"{prefix}prompt_attention_mask"] = mask
    return out


@pytest.mark.parametrize("sched", list(FLOW_SCHEDS))
def test_chroma_matches_stock(sched):
    pipe = make_chroma(FLOW_SCHEDS[sched]())
    inputs = {**_masked_prompts(7, 32), **latent_call(STEPS, 8, 4.0)}
    ref, out, _ = run_pair(pipe, inputs)
    assert_same(ref, out)


def test_chroma_refuses_ip_adapter_images():
    par = paratriton.parallelize(make_chroma(_flow_euler()))
    with pytest.raises(ValueError, match="IP-Adapter .*ChromaPipeline.*joint_attention_kwargs"):
        par(prompt_embeds=torch.zeros(1, 7, 32), ip_adapter_image_embeds=[torch.zeros(1, 1, 8)], height=8, width=8)


def make_lumina(scheduler):
    from diffusers import Lumina2Pipeline

    transformer = tiny_denoiser("lumina2")
    return assemble(Lumina2Pipeline, transformer=transformer, scheduler=scheduler, vae=tiny_vae(latent_channels=4))


def lumina_inputs(**kw) -> dict:
    return {**_masked_prompts(6, 16), **latent_call(STEPS, 16, 4.0), **kw}


# CFG on the first 5 of 8 steps (renormalised), or on every step without renormalisation
@pytest.mark.parametrize(
    ("sched", "trunc", "norm"), [("euler", 0.6, True), ("sde", 1.0, False)], ids=["euler-trunc-norm", "sde-plain"]
)
def test_lumina2_matches_stock(sched, trunc, norm):
    pipe = make_lumina(FLOW_SCHEDS[sched]())
    inputs = lumina_inputs(cfg_trunc_ratio=trunc, cfg_normalization=norm)
    with recorded_rows(pipe.transformer) as rows:
        ref, out, _ = run_pair(pipe, inputs)
    assert_same(ref, out)
    on = sum(1 for i in range(STEPS) if (i + 1) / STEPS <= trunc)
    stock_calls = STEPS + on
    assert len(rows) > stock_calls and max(rows[stock_calls:]) <= 2 * (STEPS + on)  # uncond rows: CFG steps only
    if trunc < 1:
        full = pipe(**{**inputs, "cfg_trunc_ratio": 1.0}, generator=_gen(0)).images
        assert (full - ref).abs().max() > 1e-3  # the truncation changes the image: the comparison is not vacuous


# ---------------------------------------------------------------------------------------------------------------
# Z-Image: a network on lists of per-sample tensors (text features of per-prompt lengths), [cond; uncond] batched
# ---------------------------------------------------------------------------------------------------------------
def make_zimage(scheduler):
    from diffusers import ZImagePipeline

    transformer = tiny_denoiser("zimage")
    vae = tiny_vae(latent_channels=4)
    return assemble(ZImagePipeline, scheduler=scheduler, vae=vae, transformer=transformer)


def zimage_inputs(**kw) -> dict:
    g = _gen(17)
    return {  # per-prompt lengths: a list of tensors, not a padded batch
        "prompt_embeds": [torch.randn(5, 16, generator=g), torch.randn(3, 16, generator=g)],
        "negative_prompt_embeds": [torch.randn(4, 16, generator=g), torch.randn(2, 16, generator=g)],
        **latent_call(STEPS, 16, 4.0),
        **kw,
    }


@pytest.mark.parametrize(
    ("sched", "trunc", "clamp"), [("euler", 0.5, 1.1), ("sde", 1.0, 0.0)], ids=["euler-trunc-clamp", "sde-plain"]
)
def test_zimage_matches_stock(sched, trunc, clamp):
    pipe = make_zimage({"euler": lambda: _flow_euler(shift=3.0), "sde": FLOW_SCHEDS["sde"]}[sched]())
    inputs = zimage_inputs(cfg_truncation=trunc, cfg_normalization=clamp)
    ref, out, _ = run_pair(pipe, inputs)
    assert_same(ref, out)
    if trunc < 1:  # truncation and the clamp each change the image: the comparison is not vacuous
        for change in ({"cfg_truncation": 1.0}, {"cfg_normalization": 0.0}):
            other = pipe(**{**inputs, **change}, generator=_gen(0)).images
            assert (other - ref).abs().max() > 1e-3, change


def test_zimage_combine_clamps_each_samples_norm():
    from paratriton.pipelines._specs_flow import zimage_cfg

    g = _gen(0)
    cond, uncond = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    scale = torch.tensor(4.0)
    plain = zimage_cfg(cond, uncond, scale)
    assert torch.allclose(plain, cond + 4.0 * (cond - uncond))
    clamped = zimage_cfg(cond, uncond, scale, clamp=1.1)
    norms = clamped.flatten(1).norm(dim=1)
    assert torch.allclose(norms, 1.1 * cond.flatten(1).norm(dim=1), rtol=1e-5)  # each sample at its own limit
    loose = zimage_cfg(cond, uncond, scale, clamp=100.0)
    assert torch.equal(loose, plain)  # under the limit: unchanged


@pytest.mark.parametrize("case", ["wan22", "lumina-trunc", "zimage"])
def test_cuda_graph_is_refused_where_the_rows_of_a_call_vary(case):
    # per-step experts, CFG truncation and list-of-tensors networks: refused before any network call
    pipe, inputs, match = {
        "wan22": lambda: (make_wan(_unipc_flow(), experts=True), wan_inputs(1, True), "transformer_2"),
        "lumina-trunc": lambda: (make_lumina(_flow_euler()), lumina_inputs(cfg_trunc_ratio=0.5), "cfg_trunc_ratio"),
        "zimage": lambda: (make_zimage(_flow_euler()), zimage_inputs(), "lists of tensors"),
    }[case]()
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    par = paratriton.parallelize(pipe, "taa", cuda_graph=True)
    try:
        with pytest.raises(ValueError, match=f"cuda_graph=True is not supported .*{match}"):
            par(**inputs, generator=_gen(0))
    finally:
        handle.remove()
    assert not calls
