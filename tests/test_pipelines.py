"""paratriton.parallelize on tiny random-weight diffusers pipelines (CPU, offline, no tokenizer or weights).

The central check: with the same seed, the parallel pipeline returns the stock sequential pipeline's image
(max abs error <= 1e-4 in float32 at solver tolerance 1e-7), for every supported pipeline and scheduler, CFG on and
off, batch 1 and 2. Components are built from configs as diffusers' own ``get_dummy_components`` do
(``pipeline_parts.py``); text pipelines get ``prompt_embeds`` so no tokenizer or text encoder is needed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import paratriton

diffusers = pytest.importorskip("diffusers")
from diffusers import (  # noqa: E402 - after importorskip, so the file skips without diffusers
    DDIMPipeline,
    DDPMPipeline,
    DiTPipeline,
    FlowMatchEulerDiscreteScheduler,
)
from pipeline_parts import (  # noqa: E402 - the shared parts (pytest puts tests/ on sys.path)
    ATOL,
    SCHEDULERS,
    STEPS,
    TOL,
    _ddim,
    _ddpm,
    _gen,
    _images,
    _quiet,
    assert_same,
    check_floor_warning,
    compare_calls,
    floor_warnings,
    needs_transformers,
    run_pair,
)

from paratriton.testing.tiny_pipelines import FLUX_VAE_SCALE, assemble, flux_vae, tiny_denoiser, tiny_vae  # noqa: E402


# ---------------------------------------------------------------------------------------------------------------
# tiny pipelines (diffusers' own test configs, ecosystem-notes A.8)
# ---------------------------------------------------------------------------------------------------------------
def make_sd(scheduler):
    needs_transformers()
    from diffusers import StableDiffusionPipeline

    return assemble(
        StableDiffusionPipeline,
        vae=tiny_vae(),
        unet=tiny_denoiser("sd"),
        scheduler=scheduler,
        requires_safety_checker=False,
    )


def text_inputs(seed: int, batch: int, cfg: bool, embeds: dict[str, tuple], size: int = 16, scale: float = 3.0, **kw):
    """A text pipeline's call: seeded random ``embeds`` (name -> shape after the batch), their ``negative_`` twins
    under CFG, a ``size`` x ``size`` image in STEPS steps, ``kw`` added last."""
    g = torch.Generator().manual_seed(seed)
    out = {name: torch.randn(batch, *shape, generator=g) for name, shape in embeds.items()}
    out.update(height=size, width=size, num_inference_steps=STEPS, guidance_scale=scale if cfg else 1.0)
    if cfg:
        out.update({f"negative_{name}": torch.randn(batch, *shape, generator=g) for name, shape in embeds.items()})
    return {**out, **kw}


def sd_inputs(batch: int, cfg: bool, **kw):
    return text_inputs(100, batch, cfg, {"prompt_embeds": (5, 8)}, **kw)


def make_sdxl(scheduler):
    needs_transformers()
    from diffusers import StableDiffusionXLPipeline

    return assemble(StableDiffusionXLPipeline, vae=tiny_vae(), unet=tiny_denoiser("sdxl"), scheduler=scheduler)


def sdxl_inputs(batch: int, cfg: bool, **kw):
    # SDXL's own guidance rescale, exercised on the CFG path
    rescale = {"guidance_rescale": 0.5} if cfg else {}
    return text_inputs(101, batch, cfg, {"prompt_embeds": (5, 64), "pooled_prompt_embeds": (32,)}, **rescale, **kw)


def make_pixart(scheduler):
    needs_transformers()
    from diffusers import PixArtAlphaPipeline

    return assemble(PixArtAlphaPipeline, vae=tiny_vae(), transformer=tiny_denoiser("pixart"), scheduler=scheduler)


def pixart_inputs(batch: int, cfg: bool, **kw):
    mask = {"prompt_attention_mask": torch.tensor([[1, 1, 1, 1, 0, 0]] * batch), "use_resolution_binning": False}
    if cfg:  # PixArt defaults negative_prompt to "" and rejects it beside negative_prompt_embeds
        mask.update(negative_prompt=None, negative_prompt_attention_mask=torch.ones(batch, 6, dtype=torch.long))
    return text_inputs(102, batch, cfg, {"prompt_embeds": (6, 32)}, **mask, **kw)


def make_dit(scheduler):
    return _quiet(DiTPipeline(transformer=tiny_denoiser("dit"), vae=tiny_vae(), scheduler=scheduler))


def dit_inputs(batch: int, cfg: bool, **kw):
    return {"class_labels": [1, 7][:batch], "num_inference_steps": STEPS, "guidance_scale": 3.0 if cfg else 1.0, **kw}


def make_flux(scheduler, guidance_embeds: bool = True):
    needs_transformers()
    from diffusers import FluxPipeline

    return assemble(
        FluxPipeline,
        scheduler=scheduler,
        vae=flux_vae(**FLUX_VAE_SCALE),
        transformer=tiny_denoiser("flux", guidance_embeds=guidance_embeds),
    )


def flux_inputs(batch: int, cfg: bool, **kw):
    # ``cfg``: the distilled guidance (a guidance embedding), not a negative prompt
    embeds = {"prompt_embeds": (7, 32), "pooled_prompt_embeds": (32,)}
    return text_inputs(103, batch, False, embeds, size=8, **{"guidance_scale": 3.5 if cfg else 1.0, **kw})


# ---------------------------------------------------------------------------------------------------------------
# parity: every pipeline x scheduler x CFG x batch
# ---------------------------------------------------------------------------------------------------------------
TEXT_CASES = {
    "sd": (make_sd, sd_inputs),
    "sdxl": (make_sdxl, sdxl_inputs),
    "pixart": (make_pixart, pixart_inputs),
    "dit": (make_dit, dit_inputs),
}


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("cfg", [False, True], ids=["nocfg", "cfg"])
@pytest.mark.parametrize("sched", ["ddim", "ddpm"])
@pytest.mark.parametrize("name", list(TEXT_CASES))
def test_conditional_pipeline_matches_stock(name, sched, cfg, batch):
    make, inputs = TEXT_CASES[name]
    pipe = make(SCHEDULERS[sched]())
    ref, out, par = run_pair(pipe, inputs(batch, cfg, output_type="latent"))
    assert par.paratriton.last_result.converged
    assert par.paratriton.last_result.iterations <= STEPS
    assert_same(ref, out)


FLOW_SCHEDULERS = {
    "euler": {},
    "dynamic_shift": {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15},  # FLUX.1's own config
    "stochastic": {"stochastic_sampling": True},  # step noise from the global RNG (Flux passes no generator)
}


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("guidance_embeds", [False, True], ids=["plain", "guidance_embed"])
@pytest.mark.parametrize("sched", list(FLOW_SCHEDULERS))
def test_flux_matches_stock(sched, guidance_embeds, batch):
    pipe = make_flux(FlowMatchEulerDiscreteScheduler(**FLOW_SCHEDULERS[sched]), guidance_embeds)
    ref, out, par = run_pair(pipe, flux_inputs(batch, guidance_embeds, output_type="latent"))
    assert par.paratriton.last_result.converged
    assert_same(ref, out)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize(
    "pipeline,kw",
    [(DDPMPipeline, {}), (DDIMPipeline, {"eta": 0.0}), (DDIMPipeline, {"eta": 1.0})],
    ids=["ddpm", "ddim", "ddim_eta1"],
)
def test_unconditional_pipeline_matches_stock(pipeline, kw, batch):
    sched = _ddpm() if pipeline is DDPMPipeline else _ddim()
    pipe = _quiet(pipeline(unet=tiny_denoiser("unet2d"), scheduler=sched))
    ref, out, par = run_pair(pipe, dict(batch_size=batch, num_inference_steps=STEPS, output_type="np", **kw))
    assert par.paratriton.last_result.converged
    assert_same(ref, out)


# ---------------------------------------------------------------------------------------------------------------
# methods, batches, conventions
# ---------------------------------------------------------------------------------------------------------------
def _ddpm_pipe():
    return _quiet(DDPMPipeline(unet=tiny_denoiser("unet2d"), scheduler=_ddpm()))


UNCOND = {"batch_size": 2, "num_inference_steps": STEPS, "output_type": "np"}


@pytest.mark.parametrize("method", list(paratriton.METHODS))
def test_every_solve_method_matches_stock(method):
    # DDPM: stochastic, so this also checks that every method consumes the pre-drawn step noise the same way
    options = {"window": 3} if method in paratriton.solvers.WINDOWED_METHODS else {}
    ref, out, par = run_pair(_ddpm_pipe(), UNCOND, method=method, **options)
    assert par.paratriton.last_result.converged
    assert_same(ref, out)


def test_sequential_method_takes_plain_options():
    par = paratriton.parallelize(_ddpm_pipe(), "sequential", state_dtype=torch.float32)
    assert par.paratriton.method == "sequential"
    with pytest.raises(TypeError, match="window"):
        paratriton.parallelize(_ddpm_pipe(), "sequential", window=2)


def test_prompt_batches_images_per_prompt_and_generator_lists():
    pipe = make_sd(_ddpm())
    inputs = sd_inputs(2, True, num_images_per_prompt=2, output_type="latent")
    # window < T: the per-sample conditioning is repeated for windows of every length as the window slides
    ref, out, par = run_pair(pipe, inputs, per_sample_generators=4, window=3)
    assert ref.shape[0] == 4
    windows = par.paratriton.last_result.window_history
    assert max(hi - lo for lo, hi in windows) == 3 and len({lo for lo, _ in windows}) > 1  # it slid
    assert_same(ref, out)
    # the four images differ (each has its own generator): the comparison is not vacuous
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_output_types_and_return_dict():
    pipe = make_sd(_ddim())
    par = paratriton.parallelize(pipe, **TOL)
    inputs = sd_inputs(1, False)
    lat_ref = pipe(**inputs, output_type="latent", generator=_gen()).images
    img_ref = pipe(**inputs, output_type="pt", generator=_gen()).images
    limited = []
    with floor_warnings() as caught:  # a parallel call announces the tiny UNet's floor where it meets it
        lat = par(**inputs, output_type="latent", generator=_gen()).images
        limited.append(par.paratriton.last_result.precision_limited)
        img = par(**inputs, output_type="pt", generator=_gen()).images
        pil = par(**inputs, output_type="pil", generator=_gen()).images
        arr = par(**inputs, output_type="np", generator=_gen(), return_dict=False)
        limited.append(par.paratriton.last_result.precision_limited)
    floor = [w for w in caught if "is below what" in str(w.message)]
    assert bool(floor) == any(limited) and len(floor) <= 1  # once per process and tolerance
    check_floor_warning([w for w in caught if w not in floor], None)  # the others shown
    assert lat.shape == (1, 4, 8, 8) and lat.dtype == torch.float32
    assert_same(lat_ref, lat)
    assert img.shape == (1, 3, 16, 16)
    assert_same(img_ref, img)
    assert len(pil) == 1 and pil[0].size == (16, 16)
    assert isinstance(arr, tuple) and isinstance(arr[0], np.ndarray) and arr[0].shape == (1, 16, 16, 3)


def test_progress_bar_shows_iteration_window_residual_and_can_be_disabled():
    import io

    pipe = _ddpm_pipe()
    par = paratriton.parallelize(pipe, window=2, **TOL)
    buf = io.StringIO()
    par.set_progress_bar_config(file=buf, mininterval=0, ascii=True)
    par(**UNCOND, generator=_gen())
    text = buf.getvalue()
    assert "paratriton taa" in text and "iter" in text and "window" in text and "max residual" in text
    assert f"{STEPS}/{STEPS}" in text  # counts converged steps, ends complete
    buf2 = io.StringIO()
    par.set_progress_bar_config(file=buf2, disable=True)
    par(**UNCOND, generator=_gen())
    assert buf2.getvalue() == ""
    # the stock pipeline's own bar config is untouched by the parallel call
    assert not getattr(pipe, "_progress_bar_config", {}).get("file")


def test_callback_on_step_end_has_the_stock_meaning():
    # once per loop step, with the step index, its timestep and its latents: what the stock loop passes
    pipe = make_sd(_ddim())
    par = paratriton.parallelize(pipe, **TOL)
    seen: dict[str, list] = {"stock": [], "par": []}

    def recorder(key):
        def cb(p, i, t, kwargs):
            assert p.guidance_scale == 3.0 and p.num_timesteps == STEPS  # the call's own pipeline state
            seen[key].append((i, int(t), kwargs["latents"].clone()))
            return kwargs

        return cb

    inputs = sd_inputs(2, True, output_type="latent")
    ref = pipe(**inputs, generator=_gen(), callback_on_step_end=recorder("stock")).images
    out = par(**inputs, generator=_gen(), callback_on_step_end=recorder("par")).images
    assert [s[:2] for s in seen["par"]] == [s[:2] for s in seen["stock"]]
    assert [s[0] for s in seen["par"]] == list(range(STEPS))
    for (_, _, a), (_, _, b) in zip(seen["stock"], seen["par"]):
        assert_same(a, b)
    assert_same(ref, out)
    assert torch.equal(seen["par"][-1][2], out)  # the last step's latents are the returned sample
    # pipelines without callback_on_step_end in their stock loop get it too (DiT)
    count = []
    dit = paratriton.parallelize(make_dit(_ddim()), **TOL)
    dit(**dit_inputs(1, True), generator=_gen(), callback_on_step_end=lambda *a: count.append(a[1]) or {})
    assert count == list(range(STEPS))
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        par(
            **sd_inputs(1, False),
            callback_on_step_end=recorder("x"),
            callback_on_step_end_tensor_inputs=["prompt_embeds"],
        )
    # step-aware guidance cannot apply to a parallel solve
    from diffusers.callbacks import SDCFGCutoffCallback

    with pytest.raises(ValueError, match=r"\['prompt_embeds'\] are not available"):
        par(**sd_inputs(1, True), callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=0.5))


def test_stock_pipeline_is_left_unchanged():
    pipe = _ddpm_pipe()
    ref = _images(pipe(**UNCOND, generator=_gen()))
    before = dict(pipe.__dict__)
    par = paratriton.parallelize(pipe, **TOL)
    par(**UNCOND, generator=_gen())
    assert "forward" not in pipe.unet.__dict__ and "step" not in pipe.scheduler.__dict__
    assert par.unet is pipe.unet and par.scheduler is pipe.scheduler  # shared, not copied
    assert pipe.__dict__.keys() == before.keys() and all(pipe.__dict__[k] is v for k, v in before.items())
    # the parallel pipeline holds its solver state in one object, and its own attributes are the stock ones + that
    assert [k for k in par.__dict__ if "paratriton" in k] == ["paratriton"]
    assert isinstance(par.paratriton, paratriton.pipelines.ParallelState)
    assert par.paratriton.last_result is par.paratriton_result and par.paratriton_result.converged  # the alias
    assert torch.equal(_images(pipe(**UNCOND, generator=_gen())), ref)


def test_each_parallel_pipeline_owns_its_state():
    pipe = _ddpm_pipe()
    par = paratriton.parallelize(pipe, "taa", window="auto", **TOL)
    par(**UNCOND, generator=_gen())
    (choice,) = par.paratriton.window_choices.values()
    again = paratriton.parallelize(par, "picard", **TOL)  # a parallel pipeline parallelized again: a fresh state
    assert type(again) is type(par) and again.paratriton is not par.paratriton
    assert again.paratriton.method == "picard" and again.paratriton.last_result is None
    assert again.paratriton.window_choices == {}
    assert list(par.paratriton.window_choices.values()) == [choice] and par.paratriton.method == "taa"
    ref = _images(pipe(**UNCOND, generator=_gen()))
    assert_same(ref, _images(again(**UNCOND, generator=_gen())))
    assert again.paratriton.last_result.method.startswith("picard") and par.paratriton.method == "taa"
    par.set_parallel_options("fp", window=4)
    assert (par.paratriton.method, par.paratriton.options) == ("fp", {"window": 4})
    with pytest.raises(TypeError, match="history"):
        par.set_parallel_options("picard", history=2)


def _concurrent_calls(pars: list, reps: int, wait_s: float) -> tuple[list, list, list]:
    """Call every parallel pipeline in ``pars`` from its own thread, ``reps`` times; returns (images per pipeline,
    whether each call met the others inside its solve, what the calls raised).

    Every repetition starts on a barrier, and each call's first ``callback_on_step_end`` (which runs inside the
    solve) waits up to ``wait_s`` on a second barrier: calls that can run at once are certain to overlap mid-solve;
    calls that are serialised time out there and go on.
    """
    import threading

    start = threading.Barrier(len(pars))
    meets = [threading.Barrier(len(pars)) for _ in range(reps)]
    images: list[list] = [[] for _ in pars]
    met: list[list] = [[] for _ in pars]
    errors: list = []

    def worker(i: int) -> None:
        try:
            for rep in range(reps):
                waited = []

                def cb(pipe, it, t, kw, rep=rep, waited=waited):
                    if not waited:
                        waited.append(True)
                        try:
                            meets[rep].wait(wait_s)
                            met[i].append(True)
                        except threading.BrokenBarrierError:
                            met[i].append(False)
                    return {}

                start.wait(30)
                images[i].append(_images(pars[i](**UNCOND, generator=_gen(), callback_on_step_end=cb)))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
            start.abort()
            for b in meets:
                b.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(pars))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return images, met, errors


@pytest.mark.parametrize("share", ["two_parallelize", "second_pipe"])
def test_threads_sharing_components_run_concurrently_and_patch_nothing(share):
    # two parallel pipelines over the same unet and scheduler, called from two threads at once, beside stock calls
    # of the original from a third: nothing shared is patched (per-call proxy and scheduler copy), so the calls
    # overlap mid-solve (each meets the other inside its solve) and every image is the stock one
    import threading

    pipe = _ddpm_pipe()
    ref = _images(pipe(**UNCOND, generator=_gen()))
    unet_dict, sched_dict = dict(pipe.unet.__dict__), dict(pipe.scheduler.__dict__)
    other = pipe if share == "two_parallelize" else _quiet(DDPMPipeline(unet=pipe.unet, scheduler=pipe.scheduler))
    pars = [paratriton.parallelize(pipe, **TOL), paratriton.parallelize(other, "picard", **TOL)]
    stop, stock_outs = threading.Event(), []

    def stock_caller():
        while not stop.is_set():
            stock_outs.append(_images(pipe(**UNCOND, generator=_gen())))

    stock_thread = threading.Thread(target=stock_caller)
    stock_thread.start()
    reps = 2
    try:
        images, met, errors = _concurrent_calls(pars, reps, wait_s=30)
    finally:
        stop.set()
        stock_thread.join(60)
    assert not errors, f"a parallel call raised: {errors[0]!r}"
    assert met == [[True] * reps] * 2  # both inside a solve at once
    assert pipe.unet.__dict__.keys() == unet_dict.keys() and all(
        pipe.unet.__dict__[k] is v for k, v in unet_dict.items()
    )
    assert pipe.scheduler.__dict__.keys() == sched_dict.keys()
    assert stock_outs and all(torch.equal(o, ref) for o in stock_outs)  # stock calls meanwhile: the stock image
    assert torch.equal(_images(pipe(**UNCOND, generator=_gen())), ref)
    for outs in images:
        assert len(outs) == reps
        for out in outs:
            assert_same(ref, out)


def test_threads_on_disjoint_components_run_concurrently():
    # no shared model or scheduler: the calls take different locks and overlap (each meets the other mid-solve)
    pipes = [_ddpm_pipe(), _ddpm_pipe()]
    refs = [_images(p(**UNCOND, generator=_gen())) for p in pipes]
    pars = [paratriton.parallelize(p, **TOL) for p in pipes]
    images, met, errors = _concurrent_calls(pars, reps=2, wait_s=30)
    assert not errors, f"a parallel call raised: {errors[0]!r}"
    assert met == [[True, True]] * 2
    for ref, outs, p in zip(refs, images, pipes):
        for out in outs:
            assert_same(ref, out)
        assert torch.equal(_images(p(**UNCOND, generator=_gen())), ref)


# ---------------------------------------------------------------------------------------------------------------
# the comparisons can fail
# ---------------------------------------------------------------------------------------------------------------
def test_different_seed_or_unconverged_solve_differs():
    pipe = _ddpm_pipe()
    ref, out, _ = run_pair(pipe, UNCOND)
    assert_same(ref, out)
    par = paratriton.parallelize(pipe, **TOL)
    other = _images(par(**UNCOND, generator=_gen(1)))
    assert (other - ref).abs().max() > 1e-2
    early = paratriton.parallelize(pipe, max_iters=1, **TOL)
    rough = _images(early(**UNCOND, generator=_gen()))
    assert not early.paratriton.last_result.converged
    assert (rough - ref).abs().max() > ATOL


def test_wrong_cfg_row_order_is_detected(monkeypatch):
    import dataclasses

    from paratriton.pipelines import _specs

    pipe = make_dit(_ddim())
    ref, out, _ = run_pair(pipe, dit_inputs(1, True, output_type="pt"))
    assert_same(ref, out)
    spec = _specs.SPECS["DiTPipeline"]
    wrong = dataclasses.replace(spec, guidance=dataclasses.replace(spec.guidance, layout="batched"))
    monkeypatch.setitem(_specs.SPECS, "DiTPipeline", wrong)
    ref, out, _ = run_pair(pipe, dit_inputs(1, True, output_type="pt"))
    assert (ref - out).abs().max() > ATOL


# ---------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------
def test_unsupported_pipeline_and_scheduler_name_what_is_supported():
    from diffusers import DiffusionPipeline, KDPM2DiscreteScheduler

    class MyPipeline(DiffusionPipeline):
        def __init__(self, unet):
            super().__init__()
            self.register_modules(unet=unet)

    with pytest.raises(ValueError, match="supported: .*StableDiffusionPipeline.*DDIMPipeline"):
        paratriton.parallelize(MyPipeline(tiny_denoiser("unet2d")))
    pipe = DDPMPipeline(unet=tiny_denoiser("unet2d"), scheduler=KDPM2DiscreteScheduler())
    with pytest.raises(ValueError, match="KDPM2DiscreteScheduler .*supported: .*DDIMScheduler.*EulerDiscreteScheduler"):
        paratriton.parallelize(pipe)
    par = paratriton.parallelize(_ddpm_pipe())
    par.scheduler = KDPM2DiscreteScheduler()  # swapped after parallelize: caught at call time
    with pytest.raises(ValueError, match="KDPM2DiscreteScheduler"):
        par(**UNCOND)


@pytest.mark.parametrize("clip", [{"clip_sample": True, "clip_sample_range": 0.5}, {"thresholding": True}])
def test_ddpm_pipeline_with_clipped_x0_matches_stock(clip):
    # DDPMPipeline's scheduler clips x0 by default (google/ddpm-*): exact through the clipped-x0 output transform
    pipe = _quiet(DDPMPipeline(unet=tiny_denoiser("unet2d"), scheduler=_ddpm(**clip)))
    ref, out, par = run_pair(pipe, UNCOND, window=3)
    assert par.paratriton.last_result.converged
    assert_same(ref, out)


@pytest.mark.parametrize(
    "method,options,exc,match",
    [
        ("newton", {}, ValueError, "method='newton' is not supported; use one of"),
        ("taa", {"window": 0}, ValueError, "window must be an int >= 1"),
        ("taa", {"history": 0}, ValueError, "history must be an int in"),
        ("taa", {"tol_abs": -1.0}, ValueError, "tol_abs must be a finite number > 0"),
        ("taa", {"bogus": 1}, TypeError, "bogus"),
        ("taa", {"callback": print}, TypeError, "callback_on_step_end"),
        ("picard", {"order": 3}, TypeError, r"options \['order'\] do not apply to method='picard'"),
    ],
)
def test_bad_options_raise_naming_the_parameter(method, options, exc, match):
    with pytest.raises(exc, match=match):
        paratriton.parallelize(_ddpm_pipe(), method, **options)


def test_import_paratriton_does_not_import_diffusers():
    import subprocess
    import sys

    code = "import sys, paratriton; assert 'diffusers' not in sys.modules, 'diffusers imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tiny_pipeline_configs_import_without_diffusers():
    # the benchmarks and the tests read the tiny configs; diffusers is imported only when a component is built
    import subprocess
    import sys

    code = (
        "import sys; from paratriton.testing.tiny_pipelines import DENOISERS, denoiser_config; "
        "assert denoiser_config('flux', in_channels=64)['in_channels'] == 64 and 'flux' in DENOISERS; "
        "assert 'diffusers' not in sys.modules, 'diffusers imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_low_precision_model_keeps_its_dtype(monkeypatch):
    # the solver state is float64; the model sees (and returns) its own dtype, and parallelize casts nothing.
    # Recorded inside an instance ``forward``, which nn.Module.__call__ runs for the stock loop and the solve alike.
    unet = tiny_denoiser("unet2d").to(torch.bfloat16)
    pipe = _quiet(DDIMPipeline(unet=unet, scheduler=_ddim()))
    seen = []
    real_forward = unet.forward

    def recording_forward(sample, timestep, *args, **kwargs):
        out = real_forward(sample, timestep, *args, **kwargs)
        seen.append((sample.dtype, sample.shape[0], out[0].dtype))
        return out

    unet.forward = recording_forward
    inputs = {**UNCOND, "output_type": "pt"}  # numpy has no bfloat16
    ref = _images(pipe(**inputs, generator=_gen()))
    stock_calls, seen[:] = list(seen), []
    par = paratriton.parallelize(pipe, **TOL)
    from paratriton.solvers import tolerance

    monkeypatch.setattr(tolerance, "_warned", set())  # whatever warned before in this process
    with pytest.warns(RuntimeWarning, match="below what a bfloat16 model can resolve"):  # TOL is past bfloat16
        out = _images(par(**inputs, generator=_gen()))
    result = par.paratriton.last_result
    assert result.precision_limited and result.precision_floor > 0
    assert stock_calls == [(torch.bfloat16, 2, torch.bfloat16)] * STEPS
    # the solver's own calls: one per iteration (plus the engine's rounding-floor measurement of a low-precision
    # model), a window of steps x 2 samples in rows, all in bfloat16
    assert len(seen) >= result.iterations and 2 * STEPS in [rows for _, rows, _ in seen]
    assert {(dt, out_dt) for dt, _, out_dt in seen} == {(torch.bfloat16, torch.bfloat16)}
    assert unet.forward is recording_forward  # restored after the call
    assert par.unet.dtype == torch.bfloat16 and pipe.unet.dtype == torch.bfloat16
    assert result.sample.dtype == torch.float64
    # the stock loop rounds every step to bfloat16, the solver does not: close, not equal
    assert (ref - out).abs().max() < 5e-2


def _scripted_timings(monkeypatch, cost):
    """Make the planner's timings come from ``cost(method, window) -> ms`` (a fake clock the timed solves advance),
    so a test decides which candidate is fastest; the solves themselves still run."""
    import types

    from paratriton import planner

    clock = [0.0]
    real_solve = planner.solve

    def timed_solve(*args, method, window=None, **kw):
        out = real_solve(*args, method=method, **({} if window is None else {"window": window}), **kw)
        clock[0] += cost(method, window) / 1e3
        return out

    monkeypatch.setattr(planner, "solve", timed_solve)
    monkeypatch.setattr(planner, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))


def test_window_auto_times_the_candidates_once_and_stays_exact():
    pipe = _ddpm_pipe()
    ref, out, par = run_pair(pipe, UNCOND, method="taa", window="auto")
    assert_same(ref, out)
    (choice,) = par.paratriton.window_choices.values()
    assert set(choice.wall_ms) == {"sequential", "W=8", "W=4"}  # T = 8: the full window, T/2, and sequential
    assert choice.reason and min(choice.wall_ms, key=choice.wall_ms.get) == (
        "sequential" if choice.window is None else f"W={choice.window}"
    )
    torch.manual_seed(0)
    par(**UNCOND, generator=_gen(0, None))  # same shapes: the cached choice is reused, nothing re-timed
    assert list(par.paratriton.window_choices.values()) == [choice]
    assert next(iter(par.paratriton.window_choices.values())) is choice
    with pytest.raises(ValueError, match="window='auto' needs a windowed method"):
        paratriton.parallelize(pipe, "srds", window="auto")


@pytest.mark.parametrize("fastest,window", [("W=4", 4), ("W=8", 8), ("sequential", None)])
def test_window_auto_solves_with_the_fastest_candidate(monkeypatch, fastest, window):
    # the timings are scripted, so the choice is known: it must be the one kept and the one the call solves with
    ms = {"sequential": 10.0, "W=8": 12.0, "W=4": 11.0, fastest: 1.0}
    _scripted_timings(monkeypatch, lambda method, w: ms["sequential" if method == "sequential" else f"W={w}"])
    pipe = _ddpm_pipe()
    ref, out, par = run_pair(pipe, UNCOND, method="taa", window="auto")
    assert_same(ref, out)
    (choice,) = par.paratriton.window_choices.values()
    assert choice.wall_ms == pytest.approx(ms) and f"{fastest} was fastest" in choice.reason
    assert (choice.method, choice.window) == ("taa" if window else "sequential", window)
    result = par.paratriton.last_result
    if window is None:
        assert result.method == "sequential" and result.iterations == STEPS
    else:
        assert result.method == "taa" and max(hi - lo for lo, hi in result.window_history) == window


# ---------------------------------------------------------------------------------------------------------------
# cuda_graph=True: the graphed engine / GraphedSequential, cached between calls (on the CPU the same static program runs
# without graphs, so these check the static solvers, the caching and the conditioning copies)
# ---------------------------------------------------------------------------------------------------------------
GRAPHED = [
    ("taa", {}),
    ("picard", {"window": 3, "iters_per_sync": 2}),
    ("fp", {"window": 5, "order": 2}),
    ("sequential", {}),
]


@pytest.mark.parametrize("method,options", GRAPHED, ids=[m for m, _ in GRAPHED])
@pytest.mark.parametrize("sched", ["ddim", "ddpm"])
def test_cuda_graph_pipeline_matches_stock(sched, method, options):
    pipe = make_sd(SCHEDULERS[sched]())
    ref, out, par = run_pair(pipe, sd_inputs(1, True, output_type="latent"), method=method, cuda_graph=True, **options)
    assert par.paratriton.last_result.converged
    assert par.paratriton.last_result.method.endswith(("(static)", "(graphed)"))
    assert_same(ref, out)


@pytest.mark.parametrize("name", list(TEXT_CASES))
def test_cuda_graph_every_conditional_pipeline_matches_stock(name):
    make, inputs = TEXT_CASES[name]
    ref, out, par = run_pair(
        make(_ddpm()), inputs(2, True, output_type="latent"), method="picard", window=5, cuda_graph=True
    )
    assert par.paratriton.last_result.method == "picard(graphed)"
    assert_same(ref, out)


def test_cuda_graph_pipeline_reuses_its_solver_and_copies_new_conditioning():
    pipe = make_sd(_ddpm())
    par = paratriton.parallelize(pipe, "picard", window=4, cuda_graph=True, **TOL)
    first = sd_inputs(1, True, output_type="latent")
    kept = first["prompt_embeds"].clone()
    torch.manual_seed(0)
    par(**first, generator=_gen(0))
    entry = par.paratriton.graphed
    assert first["prompt_embeds"].equal(kept)  # the caller's tensors are never written
    # another prompt and seed, same shapes: the cached solver replays with the new conditioning and noise
    second = sd_inputs(1, True, output_type="latent")
    second["prompt_embeds"] = torch.randn_like(second["prompt_embeds"])
    ref, out = compare_calls(pipe, par, second, seed=7)
    assert par.paratriton.graphed is entry and len(entry.solvers) == 1
    assert_same(ref, out)
    first_out = _images(par(**first, generator=_gen(0)))
    assert (first_out - out).abs().max() > 1e-2  # the first call's image, not a stale replay
    # another batch size: a new problem, the old graphs are dropped
    ref, out, _ = run_pair(pipe, sd_inputs(2, True, output_type="latent"), method="picard", window=4, cuda_graph=True)
    assert_same(ref, out)


def test_cuda_graph_window_auto_times_graphed_candidates():
    pipe = _ddpm_pipe()
    ref, out, par = run_pair(pipe, UNCOND, method="picard", window="auto", cuda_graph=True)
    assert_same(ref, out)
    ((key, choice),) = par.paratriton.window_choices.items()
    assert key[-1] is True and set(choice.wall_ms) == {"sequential", "W=8", "W=4"}


@pytest.mark.parametrize(
    "method,options,exc,match",
    [
        ("taa", {"cuda_graph": "yes"}, TypeError, "cuda_graph must be True or False"),
        ("srds", {"cuda_graph": True}, ValueError, "cuda_graph=True supports method in"),
        ("taa", {"cuda_graph": True, "state_dtype": torch.float16}, ValueError, "state_dtype must be"),
        ("sequential", {"cuda_graph": True, "window": 3}, TypeError, "window"),
        ("picard", {"cuda_graph": True, "window": 0}, ValueError, "window must be an int >= 1"),
    ],
)
def test_cuda_graph_bad_options_raise_naming_the_parameter(method, options, exc, match):
    with pytest.raises(exc, match=match):
        paratriton.parallelize(_ddpm_pipe(), method, **options)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_pipeline_on_cuda_matches_eager_parallel():
    pipe = make_sd(_ddim()).to("cuda")
    inputs = sd_inputs(1, True, output_type="latent")
    inputs = {k: v.cuda() if torch.is_tensor(v) else v for k, v in inputs.items()}
    outs = []
    for graphed in (False, True, True):  # the second graphed call replays
        par = paratriton.parallelize(pipe, "picard", window=4, cuda_graph=graphed, **TOL)
        outs.append(_images(par(**inputs, generator=torch.Generator("cuda").manual_seed(0))))
    assert_same(outs[0].cpu(), outs[1].cpu())
    assert_same(outs[0].cpu(), outs[2].cpu())


# ---------------------------------------------------------------------------------------------------------------
# paratriton.plan(pipe, steps): method and window timed on the pipeline itself
# ---------------------------------------------------------------------------------------------------------------
PLAN_CASES = {  # scripted ms per candidate; the plan must pick the one marked 1.0
    "picard_W8": (
        {"taa W=8": 5.0, "taa W=4": 7.0, "picard W=8": 1.0, "picard W=4": 4.0, "sequential": 6.0},
        ("picard", 8, None),
    ),
    "taa_W4": (
        {"taa W=8": 5.0, "taa W=4": 1.0, "picard W=8": 3.0, "picard W=4": 4.0, "sequential": 6.0},
        ("taa", 4, None),
    ),
    "sequential": (
        {"taa W=8": 5.0, "taa W=4": 7.0, "picard W=8": 3.0, "picard W=4": 4.0, "sequential": 1.0},
        ("sequential", None, None),
    ),
}


@pytest.mark.parametrize("case", list(PLAN_CASES))
def test_plan_pipeline_times_every_method_and_builds_the_fastest(monkeypatch, case):
    ms, (method, window, history) = PLAN_CASES[case]
    _scripted_timings(monkeypatch, lambda m, w: ms["sequential" if m == "sequential" else f"{m} W={w}"])
    pipe = _ddpm_pipe()
    call = {"batch_size": 2, "output_type": "np", "generator": _gen(3)}
    p = paratriton.plan(pipe, STEPS, methods=("taa", "picard"), options=TOL, **call)
    assert p.wall_ms == pytest.approx(ms)
    assert (p.method, p.window, p.history, p.cuda_graph) == (method, window, history, False)
    assert p.predicted_ms == pytest.approx(1.0) and p.sequential_ms == pytest.approx(ms["sequential"])
    if method == "sequential":
        assert "slower than" in p.reason and "picard window 8, 3.0 ms" in p.reason
    else:
        assert f"{method} with window {window}: 1.0 ms against 6.0 ms" in p.reason and "(6.00x)" in p.reason
    par = p.parallelize(pipe)  # the chosen sampler still gives the stock image
    ref, out = compare_calls(pipe, par, UNCOND)
    assert_same(ref, out)
    assert par.paratriton.method == method
    expected = {"cuda_graph": False} if method == "sequential" else {"window": window, "cuda_graph": False, **TOL}
    assert par.paratriton.options == expected


def test_plan_pipeline_graphed_and_forced_sequential(monkeypatch):
    from paratriton.pipelines import _solve as _wrap

    pipe = _ddpm_pipe()
    real = _wrap.choose_window  # planner.choose_window, as the window="auto" path reads it

    def parallel_always_slower(*args, **kw):  # a device where the batch time grows too fast
        choice = real(*args, **kw)
        choice.wall_ms = {k: (1.0 if k == "sequential" else 2.0 + int(k[2:])) for k in choice.wall_ms}
        return choice

    monkeypatch.setattr(_wrap, "choose_window", parallel_always_slower)
    p = paratriton.plan(pipe, STEPS, methods=("picard",), cuda_graph=True, batch_size=1, output_type="np")
    assert p.method == "sequential" and p.window is None and p.predicted_ms == 1.0 and p.cuda_graph
    assert "picard window 4, 6.0 ms" in p.reason and "slower than" in p.reason
    par = p.parallelize(pipe)
    assert par.paratriton.method == "sequential" and par.paratriton.options == {"cuda_graph": True}


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        ({"steps": 0}, ValueError, "steps must be an int >= 1"),
        ({"steps": 8, "devices": 2}, ValueError, "devices must be 1 for a pipeline"),
        ({"steps": 8, "methods": ("srds",)}, ValueError, "methods must be a non-empty tuple"),
        ({"steps": 8, "methods": ("sequential",)}, ValueError, "methods must be a non-empty tuple"),
        ({"steps": 8, "num_inference_steps": 8}, TypeError, "pass the step count as steps"),
    ],
)
def test_plan_pipeline_bad_arguments_name_the_parameter(kw, exc, match):
    with pytest.raises(exc, match=match):
        paratriton.plan(_ddpm_pipe(), **kw)
