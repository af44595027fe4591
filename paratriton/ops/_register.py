"""The one way an op's Triton kernels become its CUDA implementation."""

from __future__ import annotations

import importlib


def register_triton(package: str, kernels: dict) -> None:
    """Register ``{op: kernel name in <package>.fused}`` as the ops' CUDA kernels. Without Triton (the import of the
    ``fused`` module fails) nothing is registered, and the CUDA path is the op's plain-torch reference."""
    try:
        fused = importlib.import_module(f"{package}.fused")
    except ImportError:
        return
    for op, name in kernels.items():
        op.register_kernel("cuda")(getattr(fused, name))
