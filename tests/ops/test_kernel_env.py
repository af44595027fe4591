"""The op tests run what they claim to run: the compiled Triton kernels on CUDA tensors when CUDA is present (and
TRITON_INTERPRET is not set by the tests), the interpreter on CPU tensors otherwise, and the interpreter setting is
restored for the rest of the suite."""

import os
import sys

import pytest
import torch
from _kernel_env import CUDA, DEVICE, ENV_BEFORE, INTERPRET, kernel_module_names

from paratriton.ops.masked_lstsq.fused import masked_lstsq_triton  # (imports the kernel modules)
from paratriton.ops.window_residual.fused import window_residual_triton  # noqa: F401


def _kernels():
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    found = {}
    for name in kernel_module_names():
        mod = sys.modules.get(name)
        if mod is None:
            continue
        for k, v in vars(mod).items():
            if (
                isinstance(v, (JITFunction, InterpretedFunction))
                and getattr(getattr(v, "fn", None), "__module__", name) == name
            ):
                found[f"{name}.{k}"] = v
    return found


def test_device_follows_cuda_availability():
    assert DEVICE.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert INTERPRET == (not CUDA)


def test_kernels_are_compiled_on_cuda_and_interpreted_on_cpu():
    from triton.runtime.interpreter import InterpretedFunction

    kernels = _kernels()
    assert {"paratriton.ops._triton_grid", "paratriton.ops.window_residual.fused"} <= set(kernel_module_names())
    assert any(k.startswith("paratriton.ops.window_residual.fused.") for k in kernels), sorted(kernels)
    interpreted = sorted(k for k, v in kernels.items() if isinstance(v, InterpretedFunction))
    if CUDA and ENV_BEFORE in (None, "", "0"):
        assert interpreted == [], "kernels decorated for the interpreter on a CUDA machine"
    elif not CUDA:
        assert interpreted == sorted(kernels), "kernels decorated in compiled mode on a CPU-only machine"


def test_interpreter_flag_only_inside_op_tests():
    """Inside an op test on a CPU-only machine the flag is 1 (the autouse fixture); on CUDA the tests never set it.
    conftest.py restored the suite's value after importing the kernels (checked via ENV_BEFORE in the next test)."""
    if INTERPRET:
        assert os.environ.get("TRITON_INTERPRET") == "1"
    else:
        assert os.environ.get("TRITON_INTERPRET") == ENV_BEFORE


def test_a_kernel_runs_on_the_test_device():
    G = torch.eye(2, dtype=torch.float64, device=DEVICE).repeat(3, 1, 1, 1) * 2
    h = torch.ones(3, 1, 2, dtype=torch.float64, device=DEVICE)
    out = masked_lstsq_triton(G, h, torch.tensor([0, 1, 2], device=DEVICE), 0.0, 0.0)
    assert out.device.type == DEVICE.type
    torch.testing.assert_close(out.cpu(), torch.tensor([[[0.0, 0.0]], [[0.5, 0.0]], [[0.5, 0.5]]], dtype=torch.float64))


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cpu_tensors_are_refused_by_the_compiled_kernels():
    """The compiled kernels take device pointers only: a CPU tensor is an error, not a silent host read."""
    G = torch.eye(2, dtype=torch.float64, device="cuda").repeat(3, 1, 1, 1)
    h = torch.ones(3, 1, 2, dtype=torch.float64, device="cuda")
    with pytest.raises((ValueError, RuntimeError)):
        masked_lstsq_triton(G, h, torch.tensor([0, 1, 2]))  # num_cols on the CPU
        torch.cuda.synchronize()
