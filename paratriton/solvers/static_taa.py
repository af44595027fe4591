"""Parallel solvers with static shapes and device-side masking, so a whole iteration is one CUDA graph replay.

The windowed reference solvers slice the state by the window on the host every iteration. Here every iteration
works on ``H`` consecutive steps ``lo .. lo+H-1`` with ``lo`` a device scalar; steps at or above the anchor ``F``
(a device scalar) are masked out of every sum and update, so the iterates are those of the reference solver.
The only value that reaches the host per iteration is ``F`` (with a finiteness flag): it ends the loop at
``F == 0``. Full window (``window=None``): ``lo = 0`` and ``H`` is the smallest of a few bucket sizes covering
``F``. Sliding window (``window=W``): ``H = W`` and ``lo = max(F - W, 0)``, new steps are initialised on the device
as the reference does (a copy of the lowest initialised state). On CUDA each ``H`` is captured once into a graph.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .._cuda_graph import NestedCUDAGraphError, capture, warn_nested_graphs
from ..model import Denoiser
from ..ops import anderson_gram, order_k_residual
from ..schedule import SamplerCoefficients
from ._common import (IterationInfo, ModelCaller, NonFiniteError, SolveResult, _check_int, _check_positive,
                      check_problem, default_tol_abs)


class StaticTAA:
    """TAA (or order-k fixed point / Picard) as fixed-shape tensor programs, one CUDA graph per window size.

    method:  "taa" (default), "fp" (order-k fixed point) or "picard" (unit weights); the same iterates as
             ``paratriton.solve`` with that method and window.
    window:  None (all T steps, shrinking through ``buckets`` sizes ``T, T/2, T/4, ...``) or a sliding window W.
    iters_per_sync: iterations per graph replay (1..64) between the host's reads of the window top. The iterates
             are the same for every value (an iteration after convergence changes nothing, and a bucket larger
             than the window top computes masked rows only; bit for bit where the model's output per row does not
             depend on the batch size); more saves host round trips and wastes up to
             ``iters_per_sync - 1`` masked iterations at the end and at bucket changes. ``callback`` then runs
             once per replay.
    The model must be capturable on CUDA (no host syncs, static shapes). A model that replays CUDA graphs of its
    own (``torch.compile(mode="reduce-overhead")``) cannot be captured: the iterations then run uncaptured around
    the model's graphs, with a warning.
    """

    def __init__(self, *, method: str = "taa", window: int | None = None, order: int | None = None,
                 history: int = 2, ridge: float = 1e-3, tol_abs: float | None = None, tol_rel: float = 1e-3,
                 max_iters: int | None = None, buckets: int = 4, use_cuda_graph: bool = True, safeguard: bool = True,
                 callback: Callable[[IterationInfo], None] | None = None, iters_per_sync: int = 1) -> None:
        if method not in ("taa", "fp", "picard"):
            raise ValueError(f"method must be one of ('taa', 'fp', 'picard'), got {method!r}")
        if method == "picard" and order is not None:
            raise ValueError("order is not an option of Picard (it always sums the whole window); use method='fp'")
        self.method = method
        self.window = None if window is None else _check_int("window", window, 1)
        self.order = None if order is None else _check_int("order", order, 1)
        self.history = _check_int("history", history, 1)
        self.ridge = _check_positive("ridge", ridge)
        self.tol_abs = None if tol_abs is None else _check_positive("tol_abs", tol_abs)
        self.tol_rel = _check_positive("tol_rel", tol_rel)
        self.max_iters = None if max_iters is None else _check_int("max_iters", max_iters, 1)
        self.buckets = _check_int("buckets", buckets, 1, 16)
        self.use_cuda_graph = use_cuda_graph
        self.safeguard = bool(safeguard)
        self.callback = callback
        self.iters_per_sync = _check_int("iters_per_sync", iters_per_sync, 1, 64)

    def _iteration(self, H: int) -> None:
        """One iteration on steps ``lo .. lo+H-1`` (all shapes static; everything stays on the device)."""
        s = self._s
        x, F = s["x"], s["F"]
        F_before = F.clone()
        lo = (F - H).clamp_min(0) if self.window is not None else torch.zeros_like(F)
        idx = lo + s["idx"][:H]
        active = idx < F  # steps below the anchor
        if self.window is not None:  # steps entering the window start as a copy of the lowest initialised state
            U = s["uninit"]
            fresh = (idx <= U)[:, None, None]
            x.index_copy_(0, idx, torch.where(fresh, x.index_select(0, (U + 1).view(1)), x.index_select(0, idx)))
            U.copy_(torch.minimum(U, lo - 1))
        xw, xin = x.index_select(0, idx), x.index_select(0, idx + 1)
        a = s["a"].index_select(0, idx)
        out = s["call"](xin, idx).to(x.dtype)
        r = a[:, None, None] * xin + s["b"].index_select(0, idx)[:, None, None] * out - xw
        if s["xi"] is not None:
            r = r + s["c"].index_select(0, idx)[:, None, None] * s["xi"].index_select(0, idx)
        rms = r.square().mean(-1).sqrt()
        unconv = (rms > s["thr"].index_select(0, idx)[:, None]).any(1) & active
        # j*: the highest unconverged step, or the window bottom when all have converged
        jstar = torch.maximum(torch.where(unconv, idx, torch.full_like(idx, -1)).max(), lo)
        s["bad"].logical_or_((~torch.isfinite(rms) & active[:, None]).any())
        act = active[:, None, None].to(x.dtype)
        R = order_k_residual(r * act, a, H if self.order is None else self.order, self.method == "picard")
        new = xw + R
        if self.method == "taa":
            new = new - self._anderson(idx, active, jstar, rms, xw, R, act)
        x.index_copy_(0, idx, torch.where(active[:, None, None], new, xw))
        s["rms"].fill_(float("nan"))
        s["rms"].index_copy_(0, idx, torch.where(active[:, None], rms, torch.full_like(rms, float("nan"))))
        F.copy_(jstar)
        # the log of live iterations (an iteration after convergence is a no-op and is not counted)
        n = s["n_it"].view(1)
        s["log_F"].index_copy_(0, n, F_before.view(1))
        s["log_res"].index_copy_(0, n, s["rms"].amax(1)[None])
        s["n_it"].add_((F_before > 0).long())

    def _anderson(self, idx, active, jstar, rms, xw, R, act) -> torch.Tensor:
        """The Anderson correction ``(dX + dR) gamma`` of the window (as ``TriangularAnderson``), history pushed."""
        s = self._s
        M = self.history + 1
        hist_x, hist_R, count, slot = s["hist_x"], s["hist_R"], s["count"], s["slot"]
        # ring over iterations, indexed by step: slot `slot` takes this iteration's (x, R) of the window
        hist_x[slot.view(1), idx] = xw[None]
        hist_R[slot.view(1), idx] = R[None]
        count.index_add_(0, idx, active.long())
        m_i = count.index_select(0, idx).clamp(max=M) - 1
        newest = (slot - torch.arange(M, device=xw.device)) % M  # ring slots, newest first
        hx = hist_x.index_select(0, newest).index_select(1, idx)
        hR = hist_R.index_select(0, newest).index_select(1, idx)
        dX, dR = hx[:-1] - hx[1:], (hR[:-1] - hR[1:]) * act
        G, h = anderson_gram(dR, R)
        accel = active & (idx < jstar) & (m_i >= 1)
        if self.safeguard:  # as TriangularAnderson._accelerated: no Anderson step where it made the residual grow
            worst = rms.amax(1)
            prev_rms, prev_accel = s["prev_rms"].index_select(0, idx), s["prev_accel"].index_select(0, idx)
            accel &= ~(prev_accel & (worst > prev_rms))
            s["prev_rms"].index_copy_(0, idx, torch.where(active, worst, prev_rms))
            s["prev_accel"].index_copy_(0, idx, torch.where(active, accel, prev_accel))
        num_cols = torch.where(accel, m_i, torch.zeros_like(m_i))
        gamma = torch.ops.paratriton.masked_lstsq(G, h, num_cols, self.ridge)
        slot.copy_((slot + 1) % M)
        return torch.einsum("jnbd,nbj->nbd", dX + dR, gamma.to(xw.dtype))

    def solve(self, model: Denoiser, coeffs: SamplerCoefficients, x_T: torch.Tensor,
              noise: torch.Tensor | None = None) -> SolveResult:
        """Same contract as ``paratriton.solve(..., method=self.method, window=self.window)``.

        Solving again with the same model, coefficients and shapes reuses the buffers and the captured graphs
        (only ``x_T`` and ``noise`` are copied in), so a second call costs the replays alone.
        """
        check_problem(coeffs, x_T, noise)
        key = (model, coeffs, tuple(x_T.shape), x_T.device, noise is None)
        old = getattr(self, "_key", None)
        if old is None or old[0] is not model or old[1] is not coeffs or old[2:] != key[2:]:
            self._setup(model, coeffs, x_T, noise)
            self._key, self._graphs, self._uncaptured = key, {}, False
        else:
            self._reset(x_T, noise)
        s, T, B, shape = self._s, coeffs.num_steps, x_T.shape[0], tuple(x_T.shape[1:])
        sizes = ([min(self.window, T)] if self.window is not None
                 else sorted({max(1, math.ceil(T / 2**j)) for j in range(self.buckets)}))
        graphed = self.use_cuda_graph and x_T.device.type == "cuda" and not self._uncaptured
        max_iters = T if self.max_iters is None else self.max_iters
        F_host, it, nfe, windows = T, 0, 0, []
        while F_host > 0 and it < max_iters:
            H = next((h for h in sizes if h >= F_host), sizes[-1])
            k = min(self.iters_per_sync, max_iters - it)
            if graphed and (H, k) not in self._graphs:
                try:
                    self._graphs[H, k] = self._capture(H, k)
                except NestedCUDAGraphError:  # a reduce-overhead compiled model: its graphs, our update eager
                    warn_nested_graphs()
                    self._uncaptured, graphed = True, False  # for this model: no capture tried again
            if graphed:
                self._graphs[H, k].replay()
            else:
                for _ in range(k):
                    self._iteration(H)
            # the one sync per replay: window top, non-finite flag, iteration count and this replay's window tops
            vals = torch.cat([torch.stack([s["F"], s["bad"].long(), s["n_it"]]), s["log_F"][it:it + k]]).tolist()
            F_new, bad, n = vals[:3]
            if bad:
                where = f"iteration {it}" if k == 1 else f"iterations {it}..{it + k - 1}"
                raise NonFiniteError(f"the model output or the residual is NaN/inf in {where}; "
                                     "the sampler stopped and returns no image")
            for top in vals[3:3 + n - it]:  # what the device computed, known here now
                lo = max(top - H, 0) if self.window is not None else 0
                nfe += top - lo
                windows.append((lo, top))
            F_host, it = F_new, n
            if self.callback is not None:
                lo = windows[-1][0]
                self.callback(IterationInfo(it, windows[-1], F_host, s["rms"][lo:lo + H],
                                            s["x"].reshape(T + 1, B, *shape)))
        if self.window is not None:  # stopped early: steps never reached get the best guess there is
            U = int(s["uninit"])
            if U >= 0:
                s["x"][:U + 1] = s["x"][U + 1]
        traj = s["x"].reshape(T + 1, B, *shape)
        res = s["log_res"][:it].to("cpu", torch.float64)
        return SolveResult(traj[0], traj, it, nfe, res, F_host == 0, f"{self.method}(static)", windows)

    def _setup(self, model: Denoiser, coeffs: SamplerCoefficients, x_T: torch.Tensor,
               noise: torch.Tensor | None) -> None:
        T, B, shape = coeffs.num_steps, x_T.shape[0], tuple(x_T.shape[1:])
        D, dev, dt, M = math.prod(shape), x_T.device, torch.float64, self.history + 1
        cap = (T if self.max_iters is None else self.max_iters) + self.iters_per_sync  # + no-op iterations' slots
        cf = coeffs.to(dev)
        self._s = dict(
            T=T, x=torch.empty(T + 1, B, D, dtype=dt, device=dev), a=cf.a.to(dt), b=cf.b.to(dt), c=cf.c.to(dt),
            thr=torch.clamp(self.tol_rel * cf.posterior_std,
                            min=default_tol_abs(T) if self.tol_abs is None else self.tol_abs).to(dt),
            xi=None if noise is None else torch.empty(T, B, D, dtype=dt, device=dev),
            hist_x=torch.empty(M, T, B, D, dtype=dt, device=dev), hist_R=torch.empty(M, T, B, D, dtype=dt, device=dev),
            count=torch.empty(T, dtype=torch.long, device=dev), F=torch.empty((), dtype=torch.long, device=dev),
            slot=torch.empty(1, dtype=torch.long, device=dev), idx=torch.arange(T, device=dev),
            prev_rms=torch.empty(T, dtype=dt, device=dev), prev_accel=torch.empty(T, dtype=torch.bool, device=dev),
            uninit=torch.empty((), dtype=torch.long, device=dev),
            bad=torch.zeros((), dtype=torch.bool, device=dev), rms=torch.zeros(T, B, dtype=dt, device=dev),
            n_it=torch.zeros((), dtype=torch.long, device=dev),
            log_F=torch.empty(cap, dtype=torch.long, device=dev), log_res=torch.empty(cap, T, dtype=dt, device=dev),
            call=ModelCaller(model, shape, B))
        self._reset(x_T, noise)

    def _reset(self, x_T: torch.Tensor, noise: torch.Tensor | None) -> None:
        """Fill the static buffers in place (captured graphs keep pointing at them)."""
        s = self._s
        s["x"].copy_(x_T.reshape(1, *s["x"].shape[1:]).expand_as(s["x"]))  # every step starts as a copy of x_T
        if s["xi"] is not None:
            s["xi"].copy_(noise.reshape(s["xi"].shape))
        for k in ("hist_x", "hist_R", "count", "prev_rms", "prev_accel", "slot", "bad", "n_it"):
            s[k].zero_()
        s["F"].fill_(s["T"])
        s["uninit"].fill_(s["T"] - 1 if self.window is not None else -1)  # full window: all start as x_T

    def _capture(self, H: int, k: int = 1) -> "torch.cuda.CUDAGraph":
        """Capture ``k`` iterations of bucket ``H``. The warm-up run on a side stream (which lets lazy initialisation
        happen outside the capture) runs ``k`` real iterations, so the state is saved before it and restored after."""
        s = self._s
        saved = {name: s[name].clone() for name in ("x", "hist_x", "hist_R", "count", "F", "slot", "rms", "bad",
                                                    "prev_rms", "prev_accel", "uninit", "n_it")}
        try:
            graph, _ = capture(lambda: [self._iteration(H) for _ in range(k)])
        finally:
            for name, v in saved.items():  # undo the warm-up iterations (the capture itself runs nothing)
                s[name].copy_(v)
        return graph
