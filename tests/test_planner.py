"""The planner predicts from the batch-time curve and chooses the sequential sampler when parallel cannot win."""

import torch

from paratriton.planner import bucket_sizes, plan
from paratriton.testing import GaussianMixture
from paratriton.testing.gaussian_mixture import default_schedule


def _problem(T=40):
    cf = default_schedule(T)
    model = GaussianMixture.random((2, 3, 3), 3, seed=0).denoiser(cf)
    x_T = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    return cf, model, x_T


def test_bucket_sizes():
    assert bucket_sizes(100, 4) == [13, 25, 50, 100]
    assert bucket_sizes(3, 4) == [1, 2, 3]


def test_plan_uses_the_calibration_schedule_and_curve():
    cf, model, x_T = _problem()
    p = plan(model, cf, x_T, schedule=None, solver_ms=0.25)
    assert 1 <= len(p.schedule) <= 40 and all(h in bucket_sizes(40, 4) for h in p.schedule)
    expected_par = sum(p.batch_ms[h] + 0.25 for h in p.schedule)
    assert abs(p.parallel_ms - expected_par) < 1e-9
    assert abs(p.sequential_ms - 40 * p.batch_ms[1]) < 1e-9
    assert p.method in ("taa", "sequential") and p.reason


def test_plan_picks_sequential_when_batches_cost_linearly():
    cf, model, x_T = _problem()

    def linear_cost(x, s):  # each row costs the same: a parallel window can never win
        import time

        time.sleep(2e-4 * x.shape[0])
        return model(x, s)

    p = plan(linear_cost, cf, x_T, schedule=[40] * 10)
    assert p.parallel_ms >= sum(p.batch_ms[40] for _ in range(10))  # measured overhead is never negative
    assert p.method == "sequential" and "sequential" in p.reason and p.predicted_ms == p.sequential_ms


def test_plan_picks_parallel_when_batches_are_free():
    cf, model, x_T = _problem()

    def flat_cost(x, s):
        import time

        time.sleep(2e-3)
        return model(x, s)

    p = plan(flat_cost, cf, x_T, schedule=[40, 40, 20, 10], solver_ms=0.1)
    assert p.method == "taa" and p.predicted_ms < p.sequential_ms / 5
