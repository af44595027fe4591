"""Fixed-point (Jacobi) iteration on the order-k transformed equations, and ParaDiGMS' Picard iteration."""

from __future__ import annotations

import torch

from ..ops import order_k_residual
from ._common import ParallelSolver, WindowStep, _check_int


class FixedPoint(ParallelSolver):
    """``x_i <- x_i + R^(k)_i``, where ``R^(k)`` is the order-k residual (k = 1: plain Jacobi on ``x_i = f_i(x_{i+1})``,
    k >= window: every step written from the anchor through the exact affine weights).

    order: ``k >= 1``; ``None`` means the whole window.
    backend: ``"torch"`` (plain-torch reference ops) or ``"triton"`` (the registered ``torch.ops.paratriton`` ops:
             Triton kernels on CUDA, the same references on the CPU).
    """

    method = "fp"
    unit_weights = False

    def __init__(self, *, order: int | None = None, backend: str = "torch", **kw) -> None:
        super().__init__(**kw)
        self.order = None if order is None else _check_int("order", order, 1)
        if backend not in ("torch", "triton"):
            raise ValueError(f"backend must be 'torch' or 'triton', got {backend!r}")
        self.backend = backend

    def residual(self, x, m_out, xi, a, b, c, threshold, *, lo, iteration):
        if self.backend == "triton":
            return torch.ops.paratriton.step_residual(x, m_out, xi, a, b, c, threshold)
        return super().residual(x, m_out, xi, a, b, c, threshold, lo=lo, iteration=iteration)

    def order_k(self, step: WindowStep):
        k = step.hi - step.lo if self.order is None else self.order
        if self.backend == "triton":
            return torch.ops.paratriton.order_k_residual(step.r, step.a, k, self.unit_weights)
        return order_k_residual(step.r, step.a, k, self.unit_weights)

    def update(self, step: WindowStep) -> None:
        step.x += self.order_k(step)


class Picard(FixedPoint):
    """ParaDiGMS' Picard iteration: ``x_i <- x_anchor + sum_{s>=i} (f_s(x_{s+1}) - x_{s+1})`` over the window,
    i.e. the full suffix sum of order-1 residuals with unit weights (a baseline; the affine weights are exact)."""

    method = "picard"
    unit_weights = True

    def __init__(self, **kw) -> None:
        if kw.get("order") is not None:
            raise ValueError("order is not an option of Picard (it always sums the whole window); use method='fp'")
        kw.pop("order", None)
        super().__init__(**kw)
