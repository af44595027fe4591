"""LoRA and IP-Adapter on the parallel path: the stock image, and a graph cache that never replays stale adapters.

Tiny LoRAs are built in memory (random ``lora_A``/``lora_B`` for the attention projections, in the format
``load_lora_weights`` reads) and loaded through diffusers' own loaders (PEFT backend), so every test runs the real
loading, ``set_adapters``, ``fuse_lora``, ``disable_lora``, hotswap and unload code. The IP-Adapter is built the
same way from an in-memory state dict (``unet._load_ip_adapter_weights``, what ``load_ip_adapter`` calls) and fed
``ip_adapter_image_embeds``, so no image encoder is needed. On the CPU ``cuda_graph=True`` runs its graphs eagerly:
whether a call recaptured (a new ``fast.paratriton.graphed``) or replayed the cached one is what is checked there.
"""

from __future__ import annotations

import pytest
import torch

import paratriton

diffusers = pytest.importorskip("diffusers")
from test_pipelines import (  # noqa: E402 - the shared tiny pipelines (pytest puts tests/ on sys.path)
    TOL,
    _ddim,
    _gen,
    _images,
    assert_same,
    check_floor_warning,
    floor_warnings,
    flux_inputs,
    make_flux,
    make_sd,
    make_sdxl,
    sd_inputs,
    sdxl_inputs,
)
from test_pipelines_more import make_sd3, sd3_inputs  # noqa: E402

from paratriton.pipelines._guards import model_fingerprint  # noqa: E402

STEPS = 5
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def _needs_peft():
    pytest.importorskip("peft", reason="diffusers' LoRA loaders need the PEFT backend")


def lora_state_dict(model: torch.nn.Module, prefix: str, seed: int, rank: int = 2) -> dict[str, torch.Tensor]:
    """A random LoRA for ``model``'s attention projections, keyed as ``load_lora_weights`` reads it."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, m in model.named_modules():
        if type(m) is torch.nn.Linear and name.endswith(LORA_TARGETS):
            sd[f"{prefix}.{name}.lora_A.weight"] = torch.randn(rank, m.in_features, generator=g) * 0.5
            sd[f"{prefix}.{name}.lora_B.weight"] = torch.randn(m.out_features, rank, generator=g) * 0.5
    assert sd, "no attention projections found"
    return sd


def with_loras(pipe, prefix: str, names=("a", "b")):
    """``pipe`` with one random LoRA per name loaded and all of them active (loading makes only the last one
    active), and a spare one for hotswapping."""
    _needs_peft()
    model = getattr(pipe, prefix)
    sds = [lora_state_dict(model, prefix, seed) for seed in range(len(names) + 1)]  # before any is loaded
    for name, sd in zip(names, sds):
        pipe.load_lora_weights(sd, adapter_name=name)
    pipe.set_adapters(list(names))
    pipe.spare_lora = sds[-1]
    return pipe


def with_text_encoder(pipe):
    """SD's ``encode_prompt`` scales the text encoder's LoRA layers whenever a LoRA scale is passed (also with
    ``prompt_embeds``), so a ``cross_attention_kwargs`` scale needs one: a tiny CLIP text model from a config."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(
        hidden_size=8,
        intermediate_size=16,
        num_attention_heads=2,
        num_hidden_layers=1,
        vocab_size=100,
        max_position_embeddings=16,
        projection_dim=8,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    pipe.text_encoder = CLIPTextModel(config).eval()
    return pipe


def pair(pipe, par, inputs: dict, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The stock and the parallel image with the same generator."""
    outs = []
    for p in (pipe, par):
        torch.manual_seed(seed)
        with floor_warnings() as caught:
            outs.append(_images(p(**inputs, generator=_gen(seed))))
        check_floor_warning(caught, par.paratriton.last_result if p is par else None)
    return outs[0], outs[1]


def _differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.double() - b.double()).abs().max().item() > 1e-3


# ---------------------------------------------------------------------------------------------------------------
# parity: LoRA unfused, weighted, scaled per call, disabled, fused
# ---------------------------------------------------------------------------------------------------------------
def test_sd_with_loras_matches_stock_in_every_adapter_state():
    pipe = with_text_encoder(make_sd(_ddim()))
    inputs = sd_inputs(1, True, output_type="latent", num_inference_steps=STEPS)
    base = _images(pipe(**inputs, generator=_gen()))
    with_loras(pipe, "unet")
    par = paratriton.parallelize(pipe, "taa", **TOL)
    seen = [base]

    def check(**kw):
        ref, out = pair(pipe, par, {**inputs, **kw})
        assert_same(ref, out)
        assert par.paratriton.last_result.converged
        return ref

    both = check()  # two adapters, both active at weight 1
    assert _differs(both, base)  # the LoRAs change the image: the parity below is not the base image's
    pipe.set_adapters(["a", "b"], adapter_weights=[0.5, 0.25])
    weighted = check()
    scaled = check(cross_attention_kwargs={"scale": 0.3})  # UNet's apply_lora_scale, on every batched call
    pipe.set_adapters("b")
    only_b = check()
    pipe.disable_lora()
    disabled = check()
    assert_same(base, disabled, atol=1e-5)  # disabled adapters: the base image
    pipe.enable_lora()
    pipe.fuse_lora(lora_scale=0.7)
    fused = check()
    seen += [both, weighted, scaled, only_b, fused]
    assert all(_differs(x, y) for i, x in enumerate(seen) for y in seen[i + 1 :])


@pytest.mark.parametrize("family", ["sdxl", "flux", "sd3"])
def test_sdxl_flux_and_sd3_with_loras_match_stock(family):
    from diffusers import FlowMatchEulerDiscreteScheduler

    if family == "sdxl":
        pipe, prefix, kw = make_sdxl(_ddim()), "unet", "cross_attention_kwargs"
        inputs = sdxl_inputs(1, True, output_type="latent", num_inference_steps=STEPS)
    elif family == "flux":
        pipe, prefix, kw = make_flux(FlowMatchEulerDiscreteScheduler()), "transformer", "joint_attention_kwargs"
        inputs = flux_inputs(1, True, output_type="latent", num_inference_steps=STEPS)
    else:
        pipe, prefix, kw = make_sd3(FlowMatchEulerDiscreteScheduler()), "transformer", "joint_attention_kwargs"
        inputs = sd3_inputs(1, True, output_type="latent", num_inference_steps=STEPS)
    base = _images(pipe(**inputs, generator=_gen()))
    with_loras(pipe, prefix)
    pipe.set_adapters(["a", "b"], adapter_weights=[0.6, 0.3])
    par = paratriton.parallelize(pipe, "taa", **TOL)
    ref, out = pair(pipe, par, {**inputs, kw: {"scale": 0.5}})
    assert_same(ref, out)
    assert _differs(ref, base)
    pipe.fuse_lora()
    ref, out = pair(pipe, par, inputs)
    assert_same(ref, out)


# ---------------------------------------------------------------------------------------------------------------
# IP-Adapter: added_cond_kwargs' image embeddings reach every row of every batched call
# ---------------------------------------------------------------------------------------------------------------
def ip_adapter_state_dict(unet, image_dim: int = 6, seed: int = 0) -> dict:
    """A random IP-Adapter (image projection and per-cross-attention ``to_k_ip``/``to_v_ip``), keyed as
    ``_load_ip_adapter_weights`` reads it (``key_id`` 1, 3, 5, ... in processor order)."""
    g = torch.Generator().manual_seed(seed)
    cad = unet.config.cross_attention_dim
    image_proj = {
        "proj.weight": torch.randn(4 * cad, image_dim, generator=g) * 0.3,
        "proj.bias": torch.zeros(4 * cad),
        "norm.weight": torch.ones(cad),
        "norm.bias": torch.zeros(cad),
    }
    layers, key = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            hidden = unet.get_submodule(name.removesuffix(".processor")).to_q.out_features
            layers[f"{key}.to_k_ip.weight"] = torch.randn(hidden, cad, generator=g) * 0.5
            layers[f"{key}.to_v_ip.weight"] = torch.randn(hidden, cad, generator=g) * 0.5
            key += 2
    return {"image_proj": image_proj, "ip_adapter": layers}


def test_ip_adapter_embeds_and_scale_match_stock_per_row():
    pipe = make_sd(_ddim())
    inputs = sd_inputs(2, True, output_type="latent", num_inference_steps=STEPS)
    base = _images(pipe(**inputs, generator=_gen()))
    pipe.unet._load_ip_adapter_weights([ip_adapter_state_dict(pipe.unet)], low_cpu_mem_usage=False)
    pipe.set_ip_adapter_scale(0.6)
    # [negative; conditional] image embeddings of one image: the pipeline repeats them per prompt, so the CFG rows
    # carry different embeddings, which the solve must keep on their rows
    embeds = torch.randn(2, 1, 6, generator=torch.Generator().manual_seed(5))
    par = paratriton.parallelize(pipe, "taa", **TOL)
    ref, out = pair(pipe, par, {**inputs, "ip_adapter_image_embeds": [embeds]})
    assert_same(ref, out)
    assert _differs(ref, base)
    swapped = pair(pipe, par, {**inputs, "ip_adapter_image_embeds": [embeds.flip(0)]})
    assert_same(*swapped)
    assert _differs(ref, swapped[0])  # the row order matters, so the parity above checks it
    with pytest.raises(ValueError, match="ip_adapter_image_embeds reach the network with 8 rows for a batch of 4"):
        par(**inputs, ip_adapter_image_embeds=[torch.cat([embeds, embeds])], generator=_gen())  # stock: extra tokens
    f = model_fingerprint(pipe.unet)
    pipe.set_ip_adapter_scale(0.2)  # rewrites the processors' scale in place: a graph must not replay 0.6
    assert model_fingerprint(pipe.unet) != f
    ref, out = pair(pipe, par, {**inputs, "ip_adapter_image_embeds": [embeds]})
    assert_same(ref, out)


# ---------------------------------------------------------------------------------------------------------------
# the graph cache: the fingerprint moves with every adapter change and with nothing else
# ---------------------------------------------------------------------------------------------------------------
def test_model_fingerprint_follows_every_adapter_change():
    pipe = with_loras(make_sd(_ddim()), "unet")
    unet = pipe.unet
    keys = [model_fingerprint(unet)]

    def changed():
        keys.append(model_fingerprint(unet))
        assert keys[-1] != keys[-2]
        assert model_fingerprint(unet) == keys[-1]  # and stable while nothing changes

    assert model_fingerprint(unet) == keys[0]
    pipe.set_adapters(["a", "b"], adapter_weights=[0.5, 1.0])
    changed()
    pipe.set_adapters(["a", "b"], adapter_weights=[0.5, 0.75])  # one scale
    changed()
    pipe.set_adapters("a")
    changed()
    pipe.disable_lora()
    changed()
    pipe.enable_lora()
    changed()
    pipe.fuse_lora(lora_scale=0.5)  # merged in place through .data: no version counter moves
    changed()
    pipe.unfuse_lora()
    changed()
    pipe.load_lora_weights(pipe.spare_lora, adapter_name="a", hotswap=True)  # copied into the same tensors
    changed()
    pipe.delete_adapters("b")
    changed()
    pipe.unload_lora_weights()
    changed()
    assert keys[5] == keys[3]  # enable_lora went back to the state before disable_lora: the same graph is right
    assert len(set(keys)) == len(keys) - 1


def test_graph_cache_recaptures_on_adapter_changes_and_replays_otherwise():
    pipe = with_text_encoder(with_loras(make_sd(_ddim()), "unet"))
    par = paratriton.parallelize(pipe, "picard", window=4, cuda_graph=True, **TOL)
    inputs = sd_inputs(1, True, output_type="latent", num_inference_steps=STEPS)

    def check(expect_new: bool, **kw):
        before = par.paratriton.graphed
        ref, out = pair(pipe, par, {**inputs, **kw})
        assert_same(ref, out)
        assert (par.paratriton.graphed is not before) == expect_new
        return ref

    check(True)
    check(False)  # nothing changed: replays
    pipe.load_lora_weights(pipe.spare_lora, adapter_name="a", hotswap=True)  # same tensors, new values
    check(True)
    pipe.set_adapters(["a", "b"], adapter_weights=[0.9, 0.45])
    check(True)
    check(True, cross_attention_kwargs={"scale": 0.3})  # a per-call scale is part of the conditioning's key
    check(False, cross_attention_kwargs={"scale": 0.3})  # the forward scales the LoRA layers and back: replays
    pipe.fuse_lora()
    check(True)
    check(False)
