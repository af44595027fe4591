import pytest
import torch

# tests use tiny tensors: one intra-op thread avoids spin-wait contention on the 2-core CI machine
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _floor_warning_per_test(monkeypatch):
    """The precision-floor warning is said once per process; in tests, once per test, so that a test that reaches a
    floor says so (pyproject's filterwarnings turns an unexpected one into an error; pytest.warns asserts it)."""
    from paratriton.solvers import tolerance

    monkeypatch.setattr(tolerance, "_warned", set())


@pytest.fixture
def floor_warning():
    """For a test that reaches a precision floor on purpose: the floor warning must be said."""
    with pytest.warns(RuntimeWarning, match="is below what") as record:
        yield record


@pytest.fixture(autouse=True, scope="session")
def _no_plan_cache(tmp_path_factory):
    """The plan cache stays off in tests (a plan remembered by one test must not answer another's timing) and never
    touches the user's ~/.cache; tests/test_plan_cache.py turns it on in a directory of its own."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PARATRITON_PLAN_CACHE", "0")
        mp.setenv("PARATRITON_CACHE_DIR", str(tmp_path_factory.mktemp("paratriton-cache")))
        yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
