"""Shared parts of the pipeline tests: the stock schedulers the tiny pipelines run with, and the stock-versus-parallel
comparison. The tiny random-weight components themselves (diffusers' own fast-test configs, made smaller; CPU,
offline) are built by ``paratriton.testing.tiny_pipelines``.

Not a test module (pytest puts tests/ on sys.path; the ``test_pipelines*.py`` files import from here).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from unittest import mock

import numpy as np
import pytest
import torch

import paratriton
from paratriton.testing.tiny_pipelines import SD_BETAS, SD_DDIM

pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DDPMScheduler  # noqa: E402 - after importorskip

logging.getLogger("diffusers").setLevel(logging.ERROR)  # the tiny configs trigger deprecation notes

TOL = {"tol_abs": 1e-6, "tol_rel": 1e-6}  # above what the tiny random networks here resolve on a CPU (~5e-7)
ATOL = 1e-4
STEPS = 8


def needs_transformers() -> None:
    """Skip where transformers is missing: diffusers exports its text-conditioned pipelines only with it."""
    pytest.importorskip("transformers", reason="diffusers' text pipelines need transformers")


# ---------------------------------------------------------------------------------------------------------------
# schedulers, generators
# ---------------------------------------------------------------------------------------------------------------
def _ddim(**kw) -> DDIMScheduler:
    return DDIMScheduler(**SD_DDIM, **kw)


def _ddpm(**kw) -> DDPMScheduler:
    # with steps_offset=1 the last timestep is 1 > 0, so DDPM adds noise in every step, the last one included
    kw = {"clip_sample": False, **kw}
    return DDPMScheduler(**SD_BETAS, steps_offset=1, **kw)


SCHEDULERS = {"ddim": _ddim, "ddpm": _ddpm}


def _gen(seed: int = 0, batch: int | None = None):
    """One seeded generator, or ``batch`` of them (seeds ``seed``, ``seed + 1``, ...)."""
    if batch is None:
        return torch.Generator().manual_seed(seed)
    return [torch.Generator().manual_seed(seed + i) for i in range(batch)]


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def latent_call(steps: int, size: int | None = None, guidance: float | None = None, **kw) -> dict:
    """A call's common arguments: ``steps`` steps, a ``size`` x ``size`` sample, guidance scale ``guidance`` (each
    left to the pipeline where None), latents returned (the tiny decoders add nothing to check); ``kw`` added."""
    out = {"num_inference_steps": steps, "output_type": "latent"}
    if size is not None:
        out.update(height=size, width=size)
    if guidance is not None:
        out["guidance_scale"] = guidance
    return {**out, **kw}


# ---------------------------------------------------------------------------------------------------------------
# recording calls
# ---------------------------------------------------------------------------------------------------------------
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
