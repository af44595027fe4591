"""A parallel pipeline called again with another prompt and seed (same shapes) reuses what its first call built:
the cached ``GraphedSolvers``, the captured (on the CPU: static) solver, the engine's buffers (no ``_setup``), and
with ``window="auto"`` the timed choice and the very solver the timing captured.

The observables are the real objects: the engine's state dict and trajectory buffer are created by ``_setup`` only,
so their identity across calls says no set-up ran; the image is compared with the stock pipeline's each time.
"""

from __future__ import annotations

import pytest
import torch

import paratriton

diffusers = pytest.importorskip("diffusers")
from pipeline_parts import TOL, _ddpm, assert_same, compare_calls  # noqa: E402 - the shared parts
from test_pipelines import make_sd, sd_inputs  # noqa: E402


def _engine_buffers(solver) -> tuple[int, int]:
    """The state the solver's set-up allocates: the engine's state dict and trajectory buffer (``Engine._setup``),
    or ``GraphedSequential``'s trajectory buffer (its constructor) when ``window="auto"`` chose sequential."""
    if hasattr(solver, "_s"):
        return id(solver._s), solver._s.x.data_ptr()
    return id(solver.x), solver.x.data_ptr()


@pytest.mark.parametrize("window", [4, "auto"])
def test_second_call_with_another_prompt_and_seed_reuses_the_engine(window):
    pipe = make_sd(_ddpm())
    par = paratriton.parallelize(pipe, "taa", window=window, cuda_graph=True, **TOL)
    first = sd_inputs(1, True, output_type="latent")
    ref, out = compare_calls(pipe, par, first, 0)
    assert_same(ref, out)
    state = par.paratriton
    entry = state.graphed
    ((key, solver),) = entry.solvers.items()  # only the solver that solves (auto: the chosen one, kept from timing)
    buffers = _engine_buffers(solver)
    choices = dict(state.window_choices)
    if window == "auto":
        (choice,) = choices.values()
        assert key[0] == choice.method and dict(key[1]).get("window") == choice.window

    second = sd_inputs(1, True, output_type="latent")
    g = torch.Generator().manual_seed(11)
    second["prompt_embeds"] = torch.randn(second["prompt_embeds"].shape, generator=g)
    second["negative_prompt_embeds"] = torch.randn(second["negative_prompt_embeds"].shape, generator=g)
    ref2, out2 = compare_calls(pipe, par, second, 7)
    assert_same(ref2, out2)
    assert (out2 - out).abs().max() > 1e-2  # another image: the new prompt and seed were used, not a stale replay
    assert state.graphed is entry and list(entry.solvers) == [key] and entry.solvers[key] is solver
    assert _engine_buffers(solver) == buffers  # no _setup: the same state and buffers
    assert state.window_choices == choices and all(state.window_choices[k] is v for k, v in choices.items())
