"""The sequential sampler as one CUDA graph: the strongest single-GPU baseline a parallel sampler must beat."""

from __future__ import annotations

import math

import torch

from .._cuda_graph import NestedCUDAGraphError, capture, warn_nested_graphs
from ..model import Denoiser
from ..schedule import StepOperator
from ._common import ModelCaller, NonFiniteError, SolveResult, check_problem
from .sequential import diagnose_step, first_bad_step, one_tap_view


class GraphedSequential:
    """Capture all ``T`` steps ``x_i = a_i x_{i+1} + sum_j b[i, j] M_{i+j} + c_i xi_i`` into one CUDA graph, then
    replay (``M_i = output_scale_i m_i + output_mix_i x_{i+1}``, ``m_i = model(input_scale_i x_{i+1}, i)``: the
    identity maps for one-tap operators; every tap output is kept in a ``[T, B, D]`` buffer).

    ``prepare`` captures (the model must be capturable: static shapes, no host syncs); ``run`` replays and
    returns the trajectory. Off CUDA (or with ``use_cuda_graph=False``, or around a model that replays CUDA graphs
    of its own: ``torch.compile(mode="reduce-overhead")``, with a warning) the same loop runs eagerly. The state dtype
    defaults to float32 here: this is the baseline timed against, and float64 would slow it for nothing.
    """

    def __init__(
        self,
        model: Denoiser,
        coeffs: StepOperator,
        x_T: torch.Tensor,
        noise: torch.Tensor | None = None,
        *,
        state_dtype: torch.dtype = torch.float32,
        use_cuda_graph: bool = True,
    ) -> None:
        if state_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"state_dtype must be torch.float32 or torch.float64, got {state_dtype}")
        check_problem(one_tap_view(coeffs), x_T, noise)
        T, B, self.shape = coeffs.num_steps, x_T.shape[0], tuple(x_T.shape[1:])
        D, dev = math.prod(self.shape), x_T.device
        cf = coeffs.to(dev)
        self.T, self.B = T, B
        self.a, self.b, self.c = (v.to(state_dtype) for v in (cf.a, cf.b, cf.c))
        if self.b.ndim == 1:
            self.b = self.b[:, None]
        # host structure (which taps and maps are not the identity), fixed at capture
        self.taps = [[j for j, w in enumerate(row) if w != 0.0] for row in coeffs.b.reshape(T, -1).tolist()]
        self.scale_in, self.scale_out, self.mix = (
            getattr(cf, n).to(state_dtype) for n in ("input_scale", "output_scale", "output_mix")
        )
        self.host_maps = [
            (s != 1.0, u != 1.0, v != 0.0)
            for s, u, v in zip(coeffs.input_scale.tolist(), coeffs.output_scale.tolist(), coeffs.output_mix.tolist())
        ]
        self.multi = int(coeffs.taps) > 1 or any(any(f) for f in self.host_maps)
        self.M = torch.zeros(T, B, D, dtype=state_dtype, device=dev) if self.multi else None
        self.stochastic = noise is not None and coeffs.is_stochastic
        self.xi = noise.reshape(T, B, D).to(state_dtype, copy=True) if self.stochastic else None
        self.x = torch.empty(T + 1, B, D, dtype=state_dtype, device=dev)
        self.x[T] = x_T.reshape(B, D)
        self.steps = torch.arange(T, device=dev)
        self.call = ModelCaller(model, self.shape, B, clamp=False)  # the reference answer: never clamped
        self.coeffs = coeffs
        self.graph = None
        if use_cuda_graph and dev.type == "cuda":
            try:
                self.graph, _ = capture(self._loop)  # the warm-up run only rewrites x[:T], which every run rewrites
            except NestedCUDAGraphError:  # a reduce-overhead compiled model: its own graphs, our loop eager
                warn_nested_graphs()

    def _model_input(self, i: int) -> torch.Tensor:
        xin = self.x[i + 1 : i + 2]
        return self.scale_in[i] * xin if self.host_maps[i][0] else xin

    def _loop(self) -> None:
        x = self.x
        for i in range(self.T - 1, -1, -1):
            out = self.call(self._model_input(i), self.steps[i : i + 1])[0].to(x.dtype)
            if not self.multi:
                nxt = self.a[i] * x[i + 1] + self.b[i, 0] * out
            else:
                _, scaled, mixed = self.host_maps[i]
                m = self.scale_out[i] * out if scaled else out
                self.M[i] = m + self.mix[i] * x[i + 1] if mixed else m
                nxt = self.a[i] * x[i + 1]
                for j in self.taps[i]:
                    nxt = nxt + self.b[i, j] * self.M[i + j]
            x[i] = nxt + self.c[i] * self.xi[i] if self.stochastic else nxt

    def load(self, x_T: torch.Tensor, noise: torch.Tensor | None = None) -> None:
        """Copy another problem's ``x_T`` (and step noise) into the captured buffers, for the next ``run``."""
        if tuple(x_T.shape) != (self.B, *self.shape):
            raise ValueError(
                f"x_T must have shape {[self.B, *self.shape]} like the captured problem, got {list(x_T.shape)}"
            )
        if self.stochastic and noise is None:
            raise ValueError("noise is required: the captured problem has step noise")
        if not torch.isfinite(x_T).all():
            raise NonFiniteError("x_T contains NaN or inf (the input is bad, not the model)")
        if self.stochastic:
            if tuple(noise.shape) != (self.T, self.B, *self.shape):
                raise ValueError(f"noise must have shape {[self.T, self.B, *self.shape]}, got {list(noise.shape)}")
            if not torch.isfinite(noise).all():
                raise NonFiniteError("noise contains NaN or inf (the input is bad, not the model)")
        self.x[self.T].copy_(x_T.reshape(self.B, -1))
        if self.stochastic:
            self.xi.copy_(noise.reshape(self.xi.shape))

    def run(self) -> SolveResult:
        """Replay (or run) the loop; checks the whole trajectory once at the end (one host read): a NaN/inf state
        at any step is an error naming the first such step and what was non-finite there (diagnosed eagerly)."""
        if self.graph is not None:
            self.graph.replay()
        else:
            self._loop()
        if not torch.isfinite(self.x).all():
            i = first_bad_step(self.x, self.T)
            out = self.call(self._model_input(i), self.steps[i : i + 1])[0].to(self.x.dtype)
            raise diagnose_step(
                i, self.T - 1 - i, self.x[i + 1], out, None if self.xi is None else self.xi[i], self.coeffs, self.x[i]
            )
        traj = self.x.reshape(self.T + 1, self.B, *self.shape)
        return SolveResult(
            traj[0], traj, self.T, self.T, torch.empty(0, self.T, dtype=torch.float64), True, "sequential(graphed)"
        )
