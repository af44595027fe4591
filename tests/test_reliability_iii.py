"""Reliability III (issue 32): no process-wide state, every model output checked, no silently wrong answer.

Every test here failed on c5e3ac1 (the commit before the fixes) and runs real computations: the tiny offline
pipelines of ``test_pipelines.py``, the exact Gaussian mixture and the shipped digits model.
"""

from __future__ import annotations

import logging
import threading

import pytest
import torch

import paratriton as pt

logging.getLogger("diffusers").setLevel(logging.ERROR)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


# ---------------------------------------------------------------------------------------------------------------
# 1. the scheduler tracer changes nothing process-wide
# ---------------------------------------------------------------------------------------------------------------
def test_tracing_in_threads_beside_stock_calls_changes_nothing_process_wide():
    """8 threads: traced parallel pipelines (Euler ancestral, DPM-Solver++ 2M, SDE-DPM-Solver++ 2M) beside stock
    calls of other pipelines with the same scheduler classes, 4 calls each. Every result equals its serial run, the
    default dtype (polled by a ninth thread, and seen by each thread's new tensors) never leaves float32. On
    c5e3ac1 the tracer set the default dtype to float64 and patched diffusers' ``randn_tensor`` meanwhile."""
    pytest.importorskip("diffusers")
    from test_pipelines import _gen, _images, make_sd, sd_inputs
    from test_pipelines_schedulers import SCHEDULERS

    assert torch.get_default_dtype() == torch.float32
    names = ["euler_ancestral", "dpm++2m_karras", "sde-dpm++2m_karras"]
    jobs = []  # (callable, kind) per thread: each thread has its own pipeline (no shared lock serialises them)
    for i in range(8):
        name = names[i % 3]
        pipe = make_sd(SCHEDULERS[name]())
        parallel = i < 5
        run = pt.parallelize(pipe, "taa", tol_abs=1e-7, tol_rel=1e-7) if parallel else pipe
        jobs.append((run, i))
    inputs = sd_inputs(1, False, output_type="latent", num_inference_steps=5)

    def call(run, seed: int) -> torch.Tensor:
        return _images(run(**inputs, generator=_gen(seed)))

    serial = [call(run, i) for run, i in jobs]
    reps, results, errors, dtypes = 4, [[] for _ in jobs], [], set()
    start, stop = threading.Barrier(len(jobs)), threading.Event()

    def worker(k: int) -> None:
        run, seed = jobs[k]
        try:
            start.wait(30)
            for _ in range(reps):
                results[k].append(call(run, seed))
                dtypes.add(torch.tensor(0.5).dtype)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def poll() -> None:
        while not stop.is_set():
            dtypes.add(torch.get_default_dtype())

    poller = threading.Thread(target=poll)
    poller.start()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stop.set()
    poller.join(10)
    assert not errors, repr(errors[0])
    assert dtypes == {torch.float32}
    for k, outs in enumerate(results):
        assert len(outs) == reps
        for out in outs:
            assert torch.equal(out, serial[k]) if k >= 5 else (out - serial[k]).abs().max() <= 1e-5
    # stock calls after all that: still their serial image (no leftover fake noise source)
    for k in range(5, 8):
        assert torch.equal(call(*jobs[k]), serial[k])
    assert torch.get_default_dtype() == torch.float32
