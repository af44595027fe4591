"""Plans remembered on disk (``paratriton._plan_cache``): ``plan()`` of a denoiser and of a pipeline and
``window="auto"`` reuse a stored choice in a new process (or a fresh parallel pipeline) without timing anything,
a changed key (steps, tolerance, weights, shapes) is a miss that is timed, and the cache can be turned off.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import paratriton
from paratriton import _plan_cache, planner
from paratriton.testing import GaussianMixture
from paratriton.testing.gaussian_mixture import default_schedule


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """The plan cache on, in a directory of this test's own."""
    monkeypatch.setenv("PARATRITON_PLAN_CACHE", "1")
    monkeypatch.setenv("PARATRITON_CACHE_DIR", str(tmp_path))
    return tmp_path


def _problem(T: int = 10, seed: int = 0):
    cf = default_schedule(T, eta=1.0)
    model = GaussianMixture.random((2, 4, 4), num_components=3, std=0.3, seed=0).denoiser(cf)
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(2, 2, 4, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(T, 2, 2, 4, 4, generator=g, dtype=torch.float64)
    return model, cf, x_T, noise


def _files(root) -> list:
    return sorted((root / "plans").glob("*.json")) if (root / "plans").exists() else []


class _Timed(Exception):
    """Raised by a patched timing function: the plan was timed, not remembered."""


def _no_timing(*args, **kwargs):
    raise _Timed


PLAN_FIELDS = ("method", "history", "buckets", "predicted_ms", "sequential_ms", "parallel_ms", "schedule", "batch_ms")


def test_denoiser_plan_is_reused_by_a_new_process(cache):
    model, cf, x_T, noise = _problem()
    first = paratriton.plan(model, cf, x_T, noise, cache_key="gmm-0")
    assert first.remembered is None and len(_files(cache)) == 1
    stored = json.loads(_files(cache)[0].read_text())
    assert stored["key"]["model"] == "gmm-0" and stored["key"]["torch"] == torch.__version__
    assert stored["key"]["paratriton"] == paratriton.__version__ and stored["key"]["device"].startswith("cpu ")
    code = textwrap.dedent(
        f"""
        import json, torch, paratriton
        from paratriton import planner
        torch.set_num_threads({torch.get_num_threads()})  # part of a CPU's key: the timing depends on it
        from test_plan_cache import _problem, _no_timing, PLAN_FIELDS
        planner._plan_denoiser = _no_timing  # a timing would raise: the plan must come from the disk
        p = paratriton.plan(*_problem(), cache_key="gmm-0")
        print(json.dumps({{"remembered": p.remembered, **{{k: getattr(p, k) for k in PLAN_FIELDS}}}}))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), *sys.path])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    second = json.loads(r.stdout.strip().splitlines()[-1])
    assert second["remembered"] == str(_files(cache)[0])
    for k in PLAN_FIELDS:
        want = getattr(first, k)
        want = {str(n): v for n, v in want.items()} if isinstance(want, dict) else want  # through JSON
        assert second[k] == want, k


def test_denoiser_plan_changed_key_misses(cache, monkeypatch):
    model, cf, x_T, noise = _problem()
    paratriton.plan(model, cf, x_T, noise, cache_key="gmm-0")
    monkeypatch.setattr(planner, "_plan_denoiser", _no_timing)
    assert paratriton.plan(model, cf, x_T, noise, cache_key="gmm-0").remembered is not None  # same key: a hit
    for changed in (
        dict(cache_key="gmm-1"),  # another model
        dict(cache_key="gmm-0", tol_rel=1e-4),  # another tolerance
        dict(cache_key="gmm-0", history=1),
    ):
        with pytest.raises(_Timed):
            paratriton.plan(model, cf, x_T, noise, **changed)
    m2, cf2, x2, n2 = _problem(T=12)  # another scheduler length and noise shape
    with pytest.raises(_Timed):
        paratriton.plan(m2, cf2, x2, n2, cache_key="gmm-0")
    with pytest.raises(_Timed):  # another batch
        paratriton.plan(model, cf, x_T[:1], noise[:, :1], cache_key="gmm-0")


def test_cache_off_by_option_and_by_environment(cache, monkeypatch):
    model, cf, x_T, noise = _problem()
    assert paratriton.plan(model, cf, x_T, noise, cache_key="gmm-0", plan_cache=False).remembered is None
    assert _files(cache) == []
    paratriton.plan(model, cf, x_T, noise, cache_key="gmm-0")
    assert len(_files(cache)) == 1
    monkeypatch.setattr(planner, "_plan_denoiser", _no_timing)
    with pytest.raises(_Timed):  # stored, but not read
        paratriton.plan(model, cf, x_T, noise, cache_key="gmm-0", plan_cache=False)
    monkeypatch.setenv("PARATRITON_PLAN_CACHE", "0")
    with pytest.raises(_Timed):
        paratriton.plan(model, cf, x_T, noise, cache_key="gmm-0")
    with pytest.raises(TypeError, match="plan_cache must be a bool"):
        paratriton.plan(model, cf, x_T, noise, cache_key="gmm-0", plan_cache="no")
    with pytest.raises(TypeError, match="cache_key must be a str"):
        paratriton.plan(model, cf, x_T, noise, cache_key=3)


def test_unnamed_function_is_not_remembered(cache):
    model, cf, x_T, noise = _problem()  # a plain function: no fingerprint, no cache_key
    assert paratriton.plan(model, cf, x_T, noise).remembered is None
    assert _files(cache) == []


def test_corrupt_or_unwritable_cache_is_timed_with_one_line(cache, monkeypatch, caplog):
    model, cf, x_T, noise = _problem()
    paratriton.plan(model, cf, x_T, noise, cache_key="gmm-0")
    (path,) = _files(cache)
    path.write_text("{not json")
    with caplog.at_level("INFO", logger="paratriton"):
        again = paratriton.plan(model, cf, x_T, noise, cache_key="gmm-0")
    assert again.remembered is None  # timed again, and the file rewritten
    assert json.loads(path.read_text())["value"]["method"] == again.method
    blocked = cache / "file"
    blocked.write_text("")
    monkeypatch.setenv("PARATRITON_CACHE_DIR", str(blocked))  # a file where the directory should be
    monkeypatch.setattr(_plan_cache, "_warned", set())
    caplog.clear()
    with caplog.at_level("INFO", logger="paratriton"):
        for _ in range(2):
            assert paratriton.plan(model, cf, x_T, noise, cache_key="gmm-0").remembered is None
    failed = [r for r in caplog.records if "plan cache write failed" in r.getMessage()]
    assert len(failed) == 1


def test_module_fingerprint_follows_weights_not_identity():
    a = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    b = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    b.load_state_dict(a.state_dict())
    assert _plan_cache.fingerprint(a) == _plan_cache.fingerprint(b)  # same weights, another object
    with torch.no_grad():
        b[0].weight[0, 0] += 1.0
    assert _plan_cache.fingerprint(a) != _plan_cache.fingerprint(b)
    assert _plan_cache.fingerprint(lambda x, s: x) is None


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PARATRITON_CACHE_DIR", str(tmp_path / "c"))
    assert _plan_cache.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("PARATRITON_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert _plan_cache.cache_dir() == tmp_path / "x" / "paratriton"


# ---------------------------------------------------------------------------------------------------------------
# window="auto" and plan() of a pipeline
# ---------------------------------------------------------------------------------------------------------------
diffusers = pytest.importorskip("diffusers")


def _sd():
    from test_pipelines import _ddpm, make_sd

    logging.getLogger("diffusers").setLevel(logging.ERROR)
    return make_sd(_ddpm()), {"tol_abs": 1e-5, "tol_rel": 1e-5}  # above the tiny UNet's precision floor


def test_window_auto_choice_is_reused_by_a_fresh_pipeline(cache, monkeypatch):
    from test_pipelines import _gen, _images, assert_same, sd_inputs

    from paratriton.pipelines import _solve

    pipe, tol = _sd()
    inputs = sd_inputs(1, True, output_type="latent")
    par = paratriton.parallelize(pipe, "taa", window="auto", **tol)
    out = _images(par(**inputs, generator=_gen(0)))
    ((_, choice),) = par.paratriton.window_choices.items()
    assert choice.remembered is None and len(_files(cache)) == 1
    monkeypatch.setattr(_solve, "choose_window", _no_timing)  # from here on, a timing would raise
    fresh = paratriton.parallelize(pipe, "taa", window="auto", **tol)  # a new state: nothing in memory
    again = _images(fresh(**inputs, generator=_gen(0)))
    ((_, reused),) = fresh.paratriton.window_choices.items()
    assert reused.remembered == str(_files(cache)[0])
    assert (reused.window, reused.method, reused.wall_ms) == (choice.window, choice.method, choice.wall_ms)
    assert_same(out, again, atol=0)  # the same choice: the same computation
    assert_same(_images(pipe(**inputs, generator=_gen(0))), again)  # and the stock image to the tolerance
    for changed in (
        dict(inputs, num_inference_steps=inputs["num_inference_steps"] - 2),  # other steps
        dict(inputs, height=24, width=24),  # another latent shape
        dict(inputs, prompt_embeds=torch.randn(1, 7, 8), negative_prompt_embeds=torch.randn(1, 7, 8)),  # conditioning
    ):
        with pytest.raises(_Timed):
            paratriton.parallelize(pipe, "taa", window="auto", **tol)(**changed, generator=_gen(0))
    off = paratriton.parallelize(pipe, "taa", window="auto", **tol)
    off.paratriton.plan_cache = False
    with pytest.raises(_Timed):
        off(**inputs, generator=_gen(0))
    with torch.no_grad():  # other weights: another fingerprint
        next(pipe.unet.parameters()).add_(1e-3)
    with pytest.raises(_Timed):
        paratriton.parallelize(pipe, "taa", window="auto", **tol)(**inputs, generator=_gen(0))


def test_pipeline_plan_is_reused_without_running_the_pipeline(cache, monkeypatch):
    from test_pipelines import sd_inputs

    from paratriton.pipelines import _plan

    pipe, tol = _sd()
    call = {k: v for k, v in sd_inputs(1, True, output_type="latent").items() if k != "num_inference_steps"}
    first = paratriton.plan(pipe, 6, methods=("taa",), options=tol, **call)
    assert first.remembered is None
    monkeypatch.setattr(_plan, "_plan_pipeline", _no_timing)
    second = paratriton.plan(pipe, 6, methods=("taa",), options=tol, **call)
    assert second.remembered is not None
    assert (second.method, second.window, second.wall_ms, second.reason) == (
        first.method,
        first.window,
        first.wall_ms,
        first.reason,
    )
    with pytest.raises(_Timed):
        paratriton.plan(pipe, 7, methods=("taa",), options=tol, **call)
