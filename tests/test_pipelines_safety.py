"""paratriton.parallelize never returns a silently different image, and never leaves anything of the user's modified.

Each test runs the real tiny pipelines of ``test_pipelines.py`` (CPU, offline) and compares against the stock
pipeline with the same generator, or checks that the parallel call refuses by name what it cannot reproduce.
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

import paratriton

diffusers = pytest.importorskip("diffusers")
from test_pipelines import (  # noqa: E402 - the shared tiny pipelines (pytest puts tests/ on sys.path)
    STEPS,
    TOL,
    UNCOND,
    _ddim,
    _ddpm,
    _ddpm_pipe,
    _gen,
    _images,
    _quiet,
    assert_same,
    check_floor_warning,
    floor_warnings,
    make_flux,
    make_sd,
    run_pair,
    sd_inputs,
)

from paratriton.testing.tiny_pipelines import tiny_denoiser  # noqa: E402

logging.getLogger("diffusers").setLevel(logging.ERROR)


# ---------------------------------------------------------------------------------------------------------------
# subclasses
# ---------------------------------------------------------------------------------------------------------------
def test_subclass_keeps_its_overrides():
    # a user subclass that rescales the initial latents: the parallel pipeline runs the subclass's helpers
    from diffusers import StableDiffusionPipeline

    class HalfLatents(StableDiffusionPipeline):
        def prepare_latents(self, *args, **kwargs):
            return super().prepare_latents(*args, **kwargs) * 0.5

    base = make_sd(_ddim())
    sub = _quiet(HalfLatents(**base.components, requires_safety_checker=False))
    inputs = sd_inputs(1, True, output_type="latent")
    ref, out, par = run_pair(sub, inputs)
    assert type(par).__name__ == "ParallelHalfLatents" and isinstance(par, HalfLatents)
    assert_same(ref, out)
    plain = _images(base(**inputs, generator=_gen()))
    assert (plain - ref).abs().max() > 1e-2  # the override matters: the comparison is not vacuous


def test_subclass_overriding_call_is_refused_by_name():
    from diffusers import DDPMPipeline

    class MyLoop(DDPMPipeline):
        def __call__(self, *args, **kwargs):
            return super().__call__(*args, **kwargs)

    with pytest.raises(ValueError, match="MyLoop overrides DDPMPipeline.__call__"):
        paratriton.parallelize(MyLoop(unet=tiny_denoiser("unet2d"), scheduler=_ddpm()))


# ---------------------------------------------------------------------------------------------------------------
# the network is called as a module: hooks see every batched call
# ---------------------------------------------------------------------------------------------------------------
def test_forward_hook_sees_every_batched_call_and_changes_the_image_as_in_stock():
    pipe = make_sd(_ddpm())
    rows: list[int] = []

    def hook(module, args, kwargs, output):
        rows.append(args[0].shape[0] if args else kwargs["sample"].shape[0])
        return (output[0] * 0.8 + 0.1,)  # changes the model output: ignoring the hook would change the image

    inputs = sd_inputs(1, True, output_type="latent")
    plain = _images(pipe(**inputs, generator=_gen()))
    handle = pipe.unet.register_forward_hook(hook, with_kwargs=True)
    try:
        ref, out, par = run_pair(pipe, inputs)
    finally:
        handle.remove()
    assert_same(ref, out)
    assert (plain - ref).abs().max() > 1e-2
    stock_rows, par_rows = rows[:STEPS], rows[STEPS:]
    assert stock_rows == [2] * STEPS  # CFG-batched, one call per step
    res = par.paratriton.last_result  # one call per iteration, plus the solver's roughness probes (tolerance.py)
    assert len(par_rows) == res.iterations + res.probe_calls and max(par_rows) == 2 * STEPS  # whole window


# ---------------------------------------------------------------------------------------------------------------
# callbacks: edits are refused, interrupt stops as in stock
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["returned", "in_place"])
def test_callback_editing_latents_raises(how):
    par = paratriton.parallelize(make_sd(_ddim()), **TOL)

    def cb(p, i, t, kwargs):
        if i == 2:
            if how == "returned":
                return {"latents": kwargs["latents"] * 2}
            kwargs["latents"].mul_(2)
        return kwargs

    with pytest.raises(ValueError, match="changed 'latents' at step 2"):
        par(**sd_inputs(1, False, output_type="latent"), generator=_gen(), callback_on_step_end=cb)


@pytest.mark.parametrize("cuda_graph", [False, True], ids=["eager", "graphed"])
def test_interrupt_from_callback_returns_the_step_latents_as_stock(cuda_graph):
    pipe = make_sd(_ddpm())

    def stop_at_3(p, i, t, kwargs):
        if i == 3:
            p._interrupt = True
        return kwargs

    inputs = sd_inputs(1, True, output_type="latent", callback_on_step_end=stop_at_3)
    ref, out, par = run_pair(pipe, inputs, cuda_graph=cuda_graph, **({"window": 4} if cuda_graph else {}))
    assert_same(ref, out)
    full = _images(pipe(**sd_inputs(1, True, output_type="latent"), generator=_gen()))
    assert (full - ref).abs().max() > 1e-2  # stopped early: not the full trajectory's sample
    assert not getattr(par, "_interrupt", False) and not getattr(pipe, "_interrupt", False)  # the call's own flag
    # the next call runs to the end again
    with floor_warnings() as caught:
        again = _images(par(**sd_inputs(1, True, output_type="latent"), generator=_gen()))
    check_floor_warning(caught, par.paratriton.last_result)
    assert_same(full, again)


# ---------------------------------------------------------------------------------------------------------------
# nothing of the user's is modified, even when a call raises
# ---------------------------------------------------------------------------------------------------------------
def test_exception_mid_call_leaves_everything_as_it_was():
    pipe = _ddpm_pipe()
    ref = _images(pipe(**UNCOND, generator=_gen()))
    par = paratriton.parallelize(pipe, **TOL)
    snap = {
        "pipe": dict(pipe.__dict__),
        "par": dict(par.__dict__),
        "unet": dict(pipe.unet.__dict__),
        "scheduler": dict(pipe.scheduler.__dict__),
    }
    calls = []

    def failing(module, args, output):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom in the third batched call")

    handle = pipe.unet.register_forward_hook(failing)
    with pytest.raises(RuntimeError, match="boom"):
        par(**UNCOND, generator=_gen())
    handle.remove()
    for name, obj in (("pipe", pipe), ("par", par), ("unet", pipe.unet), ("scheduler", pipe.scheduler)):
        now = obj.__dict__
        assert now.keys() == snap[name].keys(), f"{name} gained or lost attributes"
        changed = [k for k, v in snap[name].items() if now[k] is not v and k != "_modules"]
        assert changed == [], f"{name}: {changed} rebound"
    assert torch.equal(_images(pipe(**UNCOND, generator=_gen())), ref)
    assert_same(ref, _images(par(**UNCOND, generator=_gen())))


def test_parallel_call_does_not_touch_the_shared_scheduler():
    pipe = make_sd(_ddim())
    pipe(**sd_inputs(1, False, num_inference_steps=5), generator=_gen())
    timesteps = pipe.scheduler.timesteps
    par = paratriton.parallelize(pipe, **TOL)
    par(**sd_inputs(1, False), generator=_gen())  # 8 steps on the call's own scheduler copy
    assert pipe.scheduler.timesteps is timesteps and pipe.scheduler.num_inference_steps == 5
    assert "step" not in pipe.scheduler.__dict__ and "forward" not in pipe.unet.__dict__


# ---------------------------------------------------------------------------------------------------------------
# the graph cache is keyed on what the graph reads
# ---------------------------------------------------------------------------------------------------------------
def test_graph_cache_recaptures_when_the_model_changes():
    from diffusers.models.attention_processor import AttnProcessor

    pipe = make_sd(_ddim())
    par = paratriton.parallelize(pipe, "picard", window=4, cuda_graph=True, **TOL)
    inputs = sd_inputs(1, True, output_type="latent")

    def check(expect_new: bool):
        before = par.paratriton.graphed
        ref = _images(pipe(**inputs, generator=_gen()))
        out = _images(par(**inputs, generator=_gen()))
        assert_same(ref, out)
        assert (par.paratriton.graphed is not before) == expect_new
        return out

    first = check(True)
    check(False)  # same model, same problem: replays
    with torch.no_grad():  # an in-place weight edit (what fuse_lora does): new parameter versions
        pipe.unet.conv_out.weight.mul_(1.5)
    edited = check(True)
    assert (edited - first).abs().max() > 1e-3
    pipe.unet.set_attn_processor(AttnProcessor())  # a processor swap
    check(True)
    pipe.unet.fuse_qkv_projections()  # fused projections: new modules and processors
    check(True)
    pipe.unet.to(torch.float64).to(torch.float32)  # .to(): new storages
    check(True)
    check(False)


# ---------------------------------------------------------------------------------------------------------------
# clear errors and behaviour up front
# ---------------------------------------------------------------------------------------------------------------
def test_cache_hooks_are_refused_by_name():
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache
    from test_pipelines import flux_inputs

    pipe = make_flux(FlowMatchEulerDiscreteScheduler())
    apply_first_block_cache(pipe.transformer, FirstBlockCacheConfig(threshold=0.2))
    par = paratriton.parallelize(pipe)
    with pytest.raises(ValueError, match="stateful diffusers hooks .*fbc_"):
        par(**flux_inputs(1, False))


def test_ddpm_custom_timesteps_match_stock():
    pipe = make_sd(_ddpm())
    timesteps = [951, 801, 600, 420, 260, 130, 40, 3]
    ref, out, par = run_pair(
        pipe, sd_inputs(1, True, output_type="latent", num_inference_steps=None, timesteps=timesteps)
    )
    assert_same(ref, out)
    assert par.paratriton.last_result.trajectory.shape[0] == len(timesteps) + 1


def test_untested_diffusers_version_warns_once(monkeypatch):
    from paratriton.pipelines import _guards

    monkeypatch.setattr(_guards, "_version_warned", False)
    with pytest.warns(UserWarning, match=r"tested with diffusers 0\.42\.x, but diffusers 0\.35\.2 is installed"):
        assert not _guards.check_diffusers_version("0.35.2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not _guards.check_diffusers_version("0.43.0")  # once per process
        assert _guards.check_diffusers_version("0.42.1")
        paratriton.parallelize(_ddpm_pipe())  # the installed 0.42.1: no warning


def test_save_pretrained_writes_a_class_diffusers_loads(tmp_path):
    from diffusers import DDPMPipeline, DiffusionPipeline

    pipe = _ddpm_pipe()
    par = paratriton.parallelize(pipe, **TOL)
    par.save_pretrained(tmp_path)
    for loader in (DiffusionPipeline, DDPMPipeline):
        loaded = _quiet(loader.from_pretrained(tmp_path))
        assert type(loaded) is DDPMPipeline
        assert torch.equal(_images(loaded(**UNCOND, generator=_gen())), _images(pipe(**UNCOND, generator=_gen())))
