"""The update rules of the parallel methods, each written once against the engine's window.

Every rule works on the order-k equations of the window (Tang et al., section 3): with the order-1 residuals
``r_s = f_s(x_{s+1}) - x_s`` masked to the live steps ``lo <= s <= top`` (steps above the highest unconverged step
``top`` are frozen and never move again), the order-k residual is ``R_p = sum_{q=p}^{p+k-1} w_{p..q-1} r_q`` with
affine weights ``w = a`` (``fp``, ``aa``, ``taa``) or unit weights (``picard``, ParaDiGMS).

* ``FixedPointRule``: ``x <- x + R`` (``fp``: order k; ``picard``: unit weights over the whole window).
* ``AndersonRule``: ``x <- x + R - (dX + dR) gamma`` with ``gamma`` from the masked least squares over the ``m``
  newest secant pairs. Triangular (``taa``): step ``p`` minimises ``sum_{s>=p} ||R_s - dR_s g||^2``, the steps it
  depends on; global (``aa``): every accelerated step uses the problem of the lowest one. Never at or above
  ``top`` (``x_top`` takes the exact sequential step from its frozen neighbour, so at most ``T`` iterations); with
  the safeguard, a step whose residual grew after an accelerated update takes the plain step next.

A rule owns its per-solve buffers (``allocate``/``reset``) and one ``update`` per iteration; everything stays on
the device with static shapes, so the engine can capture it.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch

from .. import ops
from ..ops.masked_lstsq import naive as _lstsq_naive
from ..ops.window_fixed_point import naive as _fp_naive
from ..ops.window_residual import naive as _res_naive
from ..ops.window_taa import naive as _taa_naive

# the kernels an iteration runs: the registered ops (Triton on CUDA, C++ or the references on the CPU), or the
# plain-torch references themselves (``backend="reference"``: the oracle, capturable too)
KERNELS = {
    "auto": SimpleNamespace(
        residual=ops.window_residual,
        fixed_point=ops.window_fixed_point,
        taa_push=ops.window_taa.push,
        taa_plan=ops.window_taa.plan,
        taa_update=ops.window_taa.update,
        lstsq=torch.ops.paratriton.masked_lstsq,
    ),
    "reference": SimpleNamespace(
        residual=_res_naive.window_residual,
        fixed_point=_fp_naive.window_fixed_point,
        taa_push=_taa_naive.window_taa_push,
        taa_plan=_taa_naive.window_taa_plan,
        taa_update=_taa_naive.window_taa_update,
        lstsq=_lstsq_naive.masked_lstsq,
    ),
}


@dataclass
class WindowView:
    """What one iteration hands a rule (device tensors; ``H`` static)."""

    x: torch.Tensor  # [T+1, B, D] trajectory (state dtype), updated in place
    out: torch.Tensor  # [H, B, D] model outputs of steps lo .. lo+H-1
    noise: torch.Tensor | None  # [T, B, D]
    a: torch.Tensor  # [T] step coefficients (state dtype)
    b: torch.Tensor
    c: torch.Tensor
    lo: torch.Tensor  # 0-d int64: the lowest step of the window
    anchor: torch.Tensor  # 0-d int64: steps >= anchor were frozen before this iteration
    top: torch.Tensor  # 0-d int64: the highest unconverged step (steps above it freeze now)
    rms: torch.Tensor  # [H, B] order-1 residual RMS (0 at frozen steps)
    kernels: SimpleNamespace  # one of KERNELS


@dataclass(frozen=True)
class FixedPointRule:
    """``x_s <- x_s + R_s``; ``order=None`` sums the whole window."""

    order: int | None = None
    unit_weights: bool = False
    history = 0

    def allocate(self, T: int, B: int, D: int, dtype: torch.dtype, device: torch.device) -> dict:
        return {}

    def reset(self, buf: dict) -> None:
        pass

    def update(self, v: WindowView, buf: dict) -> None:
        H = v.out.shape[0]
        v.kernels.fixed_point(
            v.x, v.out, v.noise, v.a, v.b, v.c, v.lo, v.top, H if self.order is None else self.order, self.unit_weights
        )


@dataclass(frozen=True)
class AndersonRule:
    """Anderson acceleration of the order-k fixed point with ``history`` secant pairs (see the module docstring)."""

    order: int | None = None
    unit_weights: bool = False
    history: int = 2
    ridge: float = 1e-3
    safeguard: bool = True
    triangular: bool = True

    def allocate(self, T: int, B: int, D: int, dtype: torch.dtype, device: torch.device) -> dict:
        M = self.history + 1
        # ring over iterations, indexed by step: slot it % M holds (R, Y = x + R) of every live step of iteration
        # it; a step stays in the window from its entry until it freezes, so its newest count_s slots are its own
        return dict(
            hist_R=torch.empty(M, T, B, D, dtype=dtype, device=device),
            hist_Y=torch.empty(M, T, B, D, dtype=dtype, device=device),
            count=torch.empty(T, dtype=torch.long, device=device),
            slot=torch.empty((), dtype=torch.long, device=device),
            prev_rms=torch.empty(T, dtype=dtype, device=device),
            prev_accel=torch.empty(T, dtype=torch.bool, device=device),
        )

    def reset(self, buf: dict) -> None:
        for t in buf.values():
            t.zero_()

    def update(self, v: WindowView, buf: dict) -> None:
        H, M = v.out.shape[0], self.history + 1
        G, h = v.kernels.taa_push(
            v.x,
            v.out,
            v.noise,
            v.a,
            v.b,
            v.c,
            v.lo,
            v.top,
            buf["hist_R"],
            buf["hist_Y"],
            buf["slot"],
            H if self.order is None else self.order,
            self.unit_weights,
        )
        num_cols, first = v.kernels.taa_plan(
            v.rms,
            buf["count"],
            buf["prev_rms"],
            buf["prev_accel"],
            v.lo,
            v.anchor,
            v.top,
            M,
            self.safeguard,
            self.triangular,
        )
        if not self.triangular:  # one problem, the lowest accelerated step's, whose mask covers all of them
            G, h = G[first].expand_as(G), h[first].expand_as(h)
        gamma = v.kernels.lstsq(G, h, num_cols, self.ridge)
        v.kernels.taa_update(v.x, buf["hist_Y"], gamma, buf["slot"], v.lo, v.top)
        buf["slot"].copy_((buf["slot"] + 1) % M)
