"""The one way an op's Triton kernels become its CUDA implementation."""

from __future__ import annotations

import importlib


def register_triton(package: str, kernels: dict) -> bool:
    """Register ``{op: kernel name in <package>.fused}`` as the ops' CUDA kernels; return whether they were. Without
    Triton (the import of the ``fused`` module fails) nothing is registered, and the CUDA path is the op's plain-torch
    reference."""
    try:
        fused = importlib.import_module(f"{package}.fused")
    except ImportError:
        return False
    for op, name in kernels.items():
        op.register_kernel("cuda")(getattr(fused, name))
    return True
