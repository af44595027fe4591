"""Kernel tests run the Triton kernels on the CPU through the interpreter.

The interpreter is chosen when a kernel is decorated (``@triton.jit``), and paratriton imports its kernel modules
lazily, so setting the variable here, before any test module imports them, is enough.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton")


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """``||got - ref|| / ||ref||`` in float64 (0 when both are zero)."""
    got, ref = got.double(), ref.double()
    den = ref.norm().item()
    num = (got - ref).norm().item()
    return num if den == 0 else num / den


@pytest.fixture
def rel():
    return rel_err
