"""Kernel tests: the compiled Triton kernels on CUDA tensors when CUDA is present, the Triton interpreter on CPU
tensors otherwise (see ``_kernel_env.py``: on a CPU-only machine TRITON_INTERPRET is set while triton and the kernel
modules are imported and around each op test, never on a CUDA machine, and never left set for the rest of the
suite)."""

import importlib.util
import os
import sys

import pytest

HAVE_TRITON = importlib.util.find_spec("triton") is not None  # found, not imported: on a CPU the interpreter first
if not HAVE_TRITON:
    collect_ignore = [  # the kernel tests
        "test_legacy_anderson.py",
        "test_legacy_residual_pass.py",
        "test_masked_lstsq.py",
        "test_kernel_env.py",
    ]

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `from _kernel_env import DEVICE` in any import mode

import torch  # noqa: E402

import _kernel_env  # noqa: E402

if HAVE_TRITON:
    _kernel_env.setup()

DEVICE = _kernel_env.DEVICE


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """``||got - ref|| / ||ref||`` in float64 (0 when both are zero); ``got`` may live on another device."""
    got, ref = got.double().cpu(), ref.double().cpu()
    den = ref.norm().item()
    num = (got - ref).norm().item()
    return num if den == 0 else num / den


@pytest.fixture
def rel():
    return rel_err


@pytest.fixture(autouse=True)
def _triton_interpreter(monkeypatch):
    """CPU only: ``TRITON_INTERPRET=1`` for the duration of each op test (Triton reads it at run time too), restored
    afterwards. Never set when CUDA is present."""
    if not _kernel_env.INTERPRET:
        yield
        return
    if _kernel_env.SETUP_ERROR is not None:
        pytest.fail(_kernel_env.SETUP_ERROR)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield


@pytest.fixture
def device():
    """The device the op tests create their inputs on: cuda when present (compiled kernels), else cpu."""
    return DEVICE
