"""The network is called through ``nn.Module.__call__``: accelerate's hooks, diffusers' hook registry and
``module.compile()`` see (and shape) every batched call of a parallel pipeline, as they do in the stock loop.

Each hook here changes the network's output, so a parallel call that bypassed it would return another image than
the stock pipeline with the same hook: parity with stock is the check that the hook ran on every call, and the hook's
own record says which calls it saw (one per iteration plus the solver's roughness probes, the whole window's rows).
"""

from __future__ import annotations

import pytest
import torch

import paratriton

diffusers = pytest.importorskip("diffusers")
from pipeline_parts import (  # noqa: E402 - the shared parts (pytest puts tests/ on sys.path)
    STEPS,
    _ddpm,
    _gen,
    _images,
    assert_same,
    check_floor_warning,
    floor_warnings,
    run_pair,
)
from test_pipelines import make_sd, sd_inputs  # noqa: E402


def _rows(args: tuple, kwargs: dict) -> int:
    return (args[0] if args else kwargs["sample"]).shape[0]


def _check_calls(rows: list[int], par) -> None:
    """The stock loop's STEPS CFG-batched calls, then one call per parallel iteration and probe, the first of them
    on the whole window (2 guidance branches x STEPS steps)."""
    stock_rows, par_rows = rows[:STEPS], rows[STEPS:]
    assert stock_rows == [2] * STEPS
    res = par.paratriton.last_result
    assert len(par_rows) == res.iterations + res.probe_calls
    assert par_rows[0] == 2 * STEPS and max(par_rows) == 2 * STEPS


def _check_hooked_parity(hook, attach, detach) -> None:
    """The tiny SD with ``hook`` on its UNet (``attach(unet, hook)``, then ``detach(unet)``) gives the stock image,
    which the hook changes, and the hook saw every call (``_check_calls``)."""
    pipe = make_sd(_ddpm())
    inputs = sd_inputs(1, True, output_type="latent")
    plain = _images(pipe(**inputs, generator=_gen()))
    attach(pipe.unet, hook)
    try:
        ref, out, par = run_pair(pipe, inputs)
    finally:
        detach(pipe.unet)
    assert (plain - ref).abs().max() > 1e-2  # the hook changes the image
    assert_same(ref, out)
    _check_calls(hook.rows, par)


def test_accelerate_model_hook_sees_every_batched_call():
    pytest.importorskip("accelerate")
    from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module
    from accelerate.utils import send_to_device

    class CountAndShift(ModelHook):
        """Moves the inputs to the execution device (as accelerate's device hooks do), records the rows of every
        call and shifts the output (so skipping the hook would change the image)."""

        def __init__(self) -> None:
            super().__init__()
            self.rows: list[int] = []

        def pre_forward(self, module, *args, **kwargs):
            self.rows.append(_rows(args, kwargs))
            return send_to_device(args, torch.device("cpu")), send_to_device(kwargs, torch.device("cpu"))

        def post_forward(self, module, output):
            return (output[0] * 0.8 + 0.1,)

    _check_hooked_parity(CountAndShift(), add_hook_to_module, remove_hook_from_module)


def test_enable_model_cpu_offload_matches_stock_and_stays_armed(monkeypatch):
    pytest.importorskip("accelerate")
    from accelerate.hooks import CpuOffload

    pipe = make_sd(_ddpm())
    pipe.enable_model_cpu_offload(device="cpu")  # accelerate's CpuOffload hook on every model, as on a GPU
    assert isinstance(pipe.unet._hf_hook, CpuOffload)
    moves: list[str] = []  # CpuOffload.pre_forward moves its model to the execution device before every call
    real = CpuOffload.pre_forward

    def pre_forward(self, module, *args, **kwargs):
        if module is pipe.unet:
            moves.append(str(self.execution_device))
        return real(self, module, *args, **kwargs)

    monkeypatch.setattr(CpuOffload, "pre_forward", pre_forward)  # the real hook runs; this only records it
    ref, out, par = run_pair(pipe, sd_inputs(1, True, output_type="latent"))
    assert_same(ref, out)
    res = par.paratriton.last_result
    assert len(moves) == STEPS + res.iterations + res.probe_calls  # the stock loop's calls, then the solve's
    # the call re-armed the offload hooks on the real components (never on its private copy's proxy)
    assert isinstance(pipe.unet._hf_hook, CpuOffload) and par.unet is pipe.unet


def test_diffusers_hook_registry_hook_sees_every_batched_call():
    from diffusers.hooks import HookRegistry, ModelHook

    class CountAndShift(ModelHook):
        def __init__(self) -> None:
            super().__init__()
            self.rows: list[int] = []

        def pre_forward(self, module, *args, **kwargs):
            self.rows.append(_rows(args, kwargs))
            return args, kwargs

        def post_forward(self, module, output):
            return (output[0] * 0.8 + 0.1,)

    def attach(unet, hook):
        HookRegistry.check_if_exists_or_initialize(unet).register_hook(hook, "count_and_shift")

    def detach(unet):
        HookRegistry.check_if_exists_or_initialize(unet).remove_hook("count_and_shift")

    _check_hooked_parity(CountAndShift(), attach, detach)


def test_compiled_unet_is_what_gets_called():
    pipe = make_sd(_ddpm())
    inputs = sd_inputs(1, True, output_type="latent")
    ref = _images(pipe(**inputs, generator=_gen()))
    compiles: list[int] = []  # the latent rows each program was compiled for
    runs: list[int] = []  # the latent rows of every run of a compiled program

    def rows(args) -> int:  # the latents' rows (the graph's other inputs are weights and conditioning)
        return next((a.shape[0] for a in args if torch.is_tensor(a) and tuple(a.shape[1:]) == (4, 8, 8)), 0)

    def counting_eager(gm: torch.fx.GraphModule, example_inputs):  # backend="eager" that counts its runs
        compiles.append(rows(example_inputs))

        def run(*args):
            runs.append(rows(args))
            return gm.forward(*args)

        return run

    pipe.unet.compile(backend=counting_eager, dynamic=False)  # nn.Module.compile: unet(...) runs the compiled call
    # the static schedule with a sliding window of 3: every iteration is 3 steps x 2 guidance branches = 6 rows, and
    # so is the roughness probe (3 evaluations of 1 step x 2 branches), so one compiled program serves every call
    par = paratriton.parallelize(pipe, "picard", window=3, cuda_graph=True, tol_abs=1e-7, tol_rel=1e-7)
    try:
        with floor_warnings() as caught:  # 1e-7 may be past the tiny UNet's floor: then announced, and asserted
            out = _images(par(**inputs, generator=_gen()))
    finally:
        del pipe.unet._compiled_call_impl  # back to the eager module
    check_floor_warning(caught, par.paratriton.last_result)
    assert_same(ref, out)
    res = par.paratriton.last_result
    assert res.method == "picard(graphed)"
    # every model call of the solve ran the compiled program (a graph break would only add runs)
    assert len(compiles) >= 1 and 6 in compiles
    assert runs.count(6) >= res.iterations + res.probe_calls
    assert set(runs) == {6}
