"""Triangular Anderson Acceleration (ParaTAA) and standard Anderson acceleration on the order-k equations."""

from __future__ import annotations

import torch

from ..ops import anderson_gram, anderson_update, masked_lstsq
from ._common import WindowStep, _check_int, _check_positive
from .fixed_point import FixedPoint


class TriangularAnderson(FixedPoint):
    """ParaTAA (Tang et al., ICML 2024) with the fixes of the design spec, section 8.

    Every step ``i`` below the highest unconverged step ``j*`` that has been in the window for at least two
    iterations takes ``x_i += R_i - (dX_i + dR_i) gamma_i`` with ``gamma_i`` solving the least squares problem
    masked to the steps it depends on, ``min_g sum_{s>=i} ||R_s - dR_s g||^2`` (relative ridge), using its
    ``m_i = min(count_i, history+1) - 1`` *newest* secant pairs. Other steps take the order-k fixed-point step.

    history: the number of secant pairs ``m`` (>= 1; the reference code's ``memory_size`` is ``history + 1``).
    ridge:   relative ridge ``lambda``: the system is ``G + (lambda * trace(G) / m + floor) I``.
    safeguard: a step whose residual grew after an accelerated update takes the plain fixed-point step next.
    """

    method = "taa"
    triangular = True

    def __init__(self, *, history: int = 2, ridge: float = 1e-3, safeguard: bool = True, **kw) -> None:
        super().__init__(**kw)
        self.history = _check_int("history", history, 1)
        self.ridge = _check_positive("ridge", ridge)
        self.safeguard = bool(safeguard)

    def start(self, T: int, B: int, D: int, device: torch.device) -> None:
        M = self.history + 1  # stored iterates
        # ring over iterations: slot it % M holds (x, R) of every step that was in the window at iteration it;
        # a step stays in the window from its entry until it freezes, so its newest count_i slots are its own
        self.hist_x = torch.zeros(M, T, B, D, dtype=self.state_dtype, device=device)
        self.hist_R = torch.zeros_like(self.hist_x)
        self.count = torch.zeros(T, dtype=torch.long, device=device)
        self.prev_rms = torch.zeros(T, dtype=self.state_dtype, device=device)
        self.prev_accel = torch.zeros(T, dtype=torch.bool, device=device)
        if self.backend == "triton":  # the fused ops keep Y = x + R instead of x (see paratriton/ops/taa)
            self.hist_Y, self.hist_x = self.hist_x, None

    def residual(self, x, m_out, xi, a, b, c, threshold, *, lo, iteration):
        if self.backend != "triton":
            return super().residual(x, m_out, xi, a, b, c, threshold, lo=lo, iteration=iteration)
        # one pass: residual, RMS, top, order-k residual, history push and the Gram of the newest differences
        n, slot = x.shape[0] - 1, iteration % (self.history + 1)
        k = n if self.order is None else self.order
        rms, top, self._G, self._h = torch.ops.paratriton.taa_residual(
            x, m_out, xi, a, b, c, threshold, self.hist_R[:, lo:lo + n], self.hist_Y[:, lo:lo + n], slot, k,
            self.unit_weights)
        return self.hist_R[slot, lo:lo + n], rms, top  # "r" is the order-k residual R here

    def _accelerated(self, step: WindowStep, m_i: torch.Tensor) -> torch.Tensor:
        """Which steps of the window take the Anderson step (``[hi - lo]`` bool, on the device).

        Never at or above ``j*``: ``x_{j*}`` must take the exact fixed-point step (worst case T iterations). With the
        safeguard, a step whose residual grew after its last accelerated update takes the plain step this time.
        """
        lo, hi = step.lo, step.hi
        accel = (torch.arange(lo, hi, device=m_i.device) < step.top_unconverged) & (m_i >= 1)
        if self.safeguard and step.rms is not None:
            worst = step.rms.amax(dim=1).to(self.prev_rms.dtype)
            accel &= ~(self.prev_accel[lo:hi] & (worst > self.prev_rms[lo:hi]))
            self.prev_rms[lo:hi] = worst
            self.prev_accel[lo:hi] = accel
        return accel

    def _update_fused(self, step: WindowStep) -> None:
        lo, hi, it = step.lo, step.hi, step.iteration
        M = self.history + 1
        slot = it % M
        self.count[lo:hi] += 1
        m_i = self.count[lo:hi].clamp(max=M) - 1
        accel = self._accelerated(step, m_i)
        if step.top_unconverged <= lo:
            step.x.copy_(self.hist_Y[slot, lo:hi])
            return
        num_cols = torch.where(accel, m_i, torch.zeros_like(m_i))
        G, h = self._G, self._h
        if not self.triangular:
            num_cols, G, h = self._global(accel, num_cols, G, h)
        gamma = torch.ops.paratriton.masked_lstsq(G, h, num_cols, self.ridge)
        torch.ops.paratriton.taa_update(step.x, self.hist_Y[:, lo:hi], gamma, slot)

    def update(self, step: WindowStep) -> None:
        if self.backend == "triton":
            return self._update_fused(step)
        lo, hi, it = step.lo, step.hi, step.iteration
        M = self.history + 1
        R = self.order_k(step)
        slot = it % M
        self.hist_x[slot, lo:hi] = step.x
        self.hist_R[slot, lo:hi] = R
        self.count[lo:hi] += 1
        m_i = self.count[lo:hi].clamp(max=M) - 1  # secant pairs per step
        accel = self._accelerated(step, m_i)
        if step.top_unconverged <= lo:
            step.x += R
            return
        newest = [(it - j) % M for j in range(M)]  # slots from newest to oldest
        dX = torch.stack([self.hist_x[newest[j], lo:hi] - self.hist_x[newest[j + 1], lo:hi] for j in range(M - 1)])
        dR = torch.stack([self.hist_R[newest[j], lo:hi] - self.hist_R[newest[j + 1], lo:hi] for j in range(M - 1)])
        G, h = anderson_gram(dR, R)
        num_cols = torch.where(accel, m_i, torch.zeros_like(m_i))
        if not self.triangular:
            num_cols, G, h = self._global(accel, num_cols, G, h)
        gamma = masked_lstsq(G, h, num_cols, ridge=self.ridge)
        step.x.copy_(anderson_update(step.x, R, dX, dR, gamma))

    @staticmethod
    def _global(accel, num_cols, G, h):
        """Standard AA: every accelerated step uses the single least-squares problem of the lowest one, whose
        mask covers the whole accelerated block and everything above it."""
        first = torch.argmax(accel.to(torch.int8))  # lowest accelerated step (device-side, no sync)
        num_cols = torch.where(accel, num_cols[first], torch.zeros_like(num_cols))
        return num_cols, G[first].expand_as(G), h[first].expand_as(h)


class Anderson(TriangularAnderson):
    """Standard (type-II) Anderson acceleration with one global least squares: the paper's AA baseline."""

    method = "aa"
    triangular = False
