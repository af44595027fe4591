"""The update rules of the parallel methods, each written once against the engine's window.

Every rule works on the order-k equations of the window (Tang et al., section 3): with the order-1 residuals
``r_s = f_s(x_{s+1}) - x_s`` masked to the live steps ``lo <= s <= top`` (steps above the highest unconverged step
``top`` are frozen and never move again), the order-k residual is ``R_p = sum_{q=p}^{p+k-1} w_{p..q-1} r_q`` with
affine weights ``w = a`` (``fp``; ``aa``/``taa`` with ``base="order"``) or unit weights (``picard``, ParaDiGMS;
``aa``/``taa`` with ``base="picard"``, the default).

* ``FixedPointRule``: ``x <- x + R`` (``fp``: order k; ``picard``: unit weights over the whole window).
* ``AndersonRule``: ``x <- x + R - (dX + dR) gamma`` with ``gamma`` from the masked least squares over the ``m``
  newest secant pairs of the base map ``Y = x + R``. Triangular (``taa``): step ``p`` minimises
  ``sum_{s>=p} ||R_s - dR_s g||^2``, the steps it depends on; global (``aa``): every accelerated step uses the
  problem of the lowest one. Never at or above ``top`` (``x_top`` takes the exact sequential step from its frozen
  neighbour, so at most ``T`` iterations); with the safeguard, a step whose residual grew after an accelerated
  update takes the plain step next.

Which base map to accelerate (issue 23)
---------------------------------------
A step is ``f_s(y) = a_s y + b_s m_s(y) + c_s xi_s`` with Jacobian ``J_s = a_s I + b_s M_s`` (``M_s`` the model's).
With full order, ``R_p = r_p + w_p R_{p+1}``, so the base map is ``Y_p = f_p(x_{p+1}) + w_p (Y_{p+1} - x_{p+1})``:
one top-down sweep of Newton's method on the triangular system with the Jacobian guessed as ``w_p I``. For errors
``e = x - x*`` (``x*`` the sequential trajectory) it gives, to first order::

    Y_p - x*_p = sum_{q >= p} w_{p..q-1} (J_q - w_q I) e_{q+1},

so the base map's Jacobian is *strictly* upper triangular (``dR_p/dx_p = -I`` for every weight) and its entries
are ``w_{p..q-1} D_q`` with ``D_q = J_q - w_q I``:

* ``base="order"`` (``w = a``): ``D_q = b_q M_q``, the whole model term of the step, weighted by products of
  ``a`` that grow to ``sqrt(abar_p / abar_q)`` across the window on a VP schedule (up to ~150 at T = 1000).
* ``base="picard"`` (``w = 1``): ``D_q = J_q - I``, how far the step is from the identity. A variance-preserving
  sampler on data of about unit scale nearly keeps the state (Gaussian data of variance 1: a DDIM step is
  ``cos(dtheta) I``, so ``J - I = O(dtheta^2)`` while ``b M = O(dtheta)``), and the weights are all one. So on VP
  samplers the Picard map contracts more per iteration, and its Jacobian, small and slowly varying along the
  window, is what a few secant pairs capture. Where ``a = 1`` (flow-matching Euler, sigma-space Euler) the two
  base maps are the same.

What the triangular structure gives, for either base and any band ``k``:

1. Finite termination: the top live step's update is the exact sequential step (``R_top = r_top``, its neighbour
   is frozen); the top step is never accelerated, so the anchor falls by at least one step per iteration with or
   without acceleration, for any ``gamma`` (at most ``T`` iterations; ``W``-windows too).
2. The triangular least squares: ``R_s`` for ``s >= p`` depends on ``x_{>=p}`` only, so the secant model of the
   rows ``s >= p`` involves exactly the unknowns that ``x_p``'s update depends on; rows below ``p`` are
   downstream and do not enter. Its Gram is a suffix sum over the window (one pass, the same kernels for both
   bases: only ``R`` differs). For a band ``k`` below the window the rows ``p .. p+k-1`` would do; that band
   (a difference of two suffix sums) was measured and did not help (DDIM-100: 8 vs 8 iterations, DDIM-1000:
   9-11 vs 9), so it is not offered.
3. The safeguard keeps 1. and reverts a step to the plain base step after its residual grew; it makes the
   accelerated map *measured* no slower than its base on the sweep's problems at one trajectory, but it is no
   theorem: DDPM-25 with a window of 7 on the test mixture takes 19 iterations against Picard's 18
   (``tests/test_acceleration.py``), and batches of 8 with two secant pairs lost 1-3 iterations to Picard.

Defaults, by measurement (``benchmarks/sweep_defaults.py``, RESULTS.md "Fewer iterations (issue 23)"):
``base="picard"``, order the whole window, ``history = default_history(B)``: 2 secant pairs for one trajectory,
1 for a batch. With a batch the window top is the highest unconverged step over all trajectories, so converged
trajectories stay live and a second pair fits their noise (Gaussian mixture, DDIM-100, batch 8: 13 iterations
with 2 pairs, 11 with 1, Picard 11; one trajectory: 8 with either, 6 vs 7 at the DiT latent shape).

A rule owns its per-solve buffers (``allocate``/``reset``) and one ``update`` per iteration; everything stays on
the device with static shapes, so the engine can capture it.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Protocol, runtime_checkable

import torch

from .. import ops
from ..ops.masked_lstsq import naive as _lstsq_naive
from ..ops.multistep_drift import naive as _drift_naive
from ..ops.thresholds import naive as _thr_naive
from ..ops.window_close import naive as _close_naive
from ..ops.window_fixed_point import naive as _fp_naive
from ..ops.window_gains import naive as _gains_naive
from ..ops.window_residual import naive as _res_naive
from ..ops.window_taa import naive as _taa_naive
from ..ops.window_track import naive as _track_naive

# the kernels an iteration runs: the registered ops (Triton on CUDA, C++ or the references on the CPU), or the
# plain-torch references themselves (``backend="reference"``: the oracle, capturable too)
KERNELS = {
    "auto": SimpleNamespace(
        residual=ops.window_residual,
        fixed_point=ops.window_fixed_point,
        taa_push=ops.window_taa.push,
        taa_plan=ops.window_taa.plan,
        taa_update=ops.window_taa.update,
        lstsq=ops.masked_lstsq,
        drift=ops.multistep_drift,
        gains=ops.window_gains,
        track=ops.window_track,
        close=ops.window_close,
        thresholds=ops.thresholds,
    ),
    "reference": SimpleNamespace(
        residual=_res_naive.window_residual,
        fixed_point=_fp_naive.window_fixed_point,
        taa_push=_taa_naive.window_taa_push,
        taa_plan=_taa_naive.window_taa_plan,
        taa_update=_taa_naive.window_taa_update,
        lstsq=_lstsq_naive.masked_lstsq,
        drift=_drift_naive.multistep_drift,
        gains=_gains_naive.window_gains,
        track=_track_naive.window_track,
        close=_close_naive.window_close,
        thresholds=_thr_naive.thresholds,
    ),
}


def default_history(batch: int) -> int:
    """Secant pairs when none are asked for: 2 for one trajectory, 1 for a batch (measured, see the docstring)."""
    return 2 if batch == 1 else 1


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


@runtime_checkable
class Rule(Protocol):
    """A method's update, run by the engine once per iteration (``FixedPointRule``, ``AndersonRule``).

    ``allocate`` makes the rule's buffers once per problem (static shapes: the graphed engine captures them),
    ``reset`` clears them for a new solve, ``update`` moves ``v.x`` in place from one iteration's model outputs.
    ``update`` is captured into a CUDA graph: static shapes, no host reads.
    """

    order: int | None  # k of the order-k sums; None: the whole window
    history: int | None  # Anderson secant pairs (0: none; None: ``default_history(B)``)

    def allocate(self, T: int, B: int, D: int, dtype: torch.dtype, device: torch.device) -> dict: ...

    def reset(self, buf: dict) -> None: ...

    def update(self, v: WindowView, buf: dict) -> None: ...


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
    """Anderson acceleration of the base map (order-k affine weights, or ``unit_weights``: Picard's) with
    ``history`` secant pairs; ``None``: ``default_history(B)`` (see the module docstring)."""

    order: int | None = None
    unit_weights: bool = False
    history: int | None = None
    ridge: float = 1e-3
    safeguard: bool = True
    triangular: bool = True

    def allocate(self, T: int, B: int, D: int, dtype: torch.dtype, device: torch.device) -> dict:
        M = (default_history(B) if self.history is None else self.history) + 1
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
        H, M = v.out.shape[0], buf["hist_R"].shape[0]
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
            # (index_select: a 0-d index tensor in G[first] is read on the host, which a capture cannot do)
            G, h = G.index_select(0, first.view(1)).expand_as(G), h.index_select(0, first.view(1)).expand_as(h)
        gamma = v.kernels.lstsq(G, h, num_cols, self.ridge)
        v.kernels.taa_update(v.x, buf["hist_Y"], gamma, buf["slot"], v.lo, v.top)
        buf["slot"].copy_((buf["slot"] + 1) % M)
