"""One parallel call of a modular denoise loop block (``_modular.py``): the private pipeline copies, the solve, and
the final pass of the stock loop on the solved latents.

The solver's denoiser runs the loop's sub-blocks before ``after_denoiser`` for every step of a window on private
copies of the pipeline (``ModelProxy`` networks, scheduler and guider copies), in passes: the first records the
network calls, ``run_batched`` makes them, the next replays the sub-blocks with the outputs (``_modular_calls.py``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ..schedulers import SamplerCoefficients, draw_step_noise, one_tap_family, stock_draws
from ..solvers import SolveResult, solve
from ._modular_calls import CallLog, ModelProxy, run_batched
from ._operator import _slice_steps, step_operator

__all__ = ["ModularSolve"]

_STEP_STATE = frozenset({"_step", "_num_inference_steps", "_timestep", "_count_prepared"})  # guider.set_state's
# passes per step: one more than the number of networks called in turn (a ControlNet feeding the UNet: 3)
_MAX_PASSES = 8


class ModularSolve:
    """One parallel call of a loop block: the private pipeline copies, the solve, the final pass."""

    def __init__(self, loop: Any, components: Any) -> None:
        self.loop, self.method, self.options = loop, loop._paratriton.method, loop._paratriton.options
        from diffusers.guiders.guider_utils import BaseGuidance

        shared = dict(components.__dict__)
        for name, value in list(shared.items()):
            if isinstance(value, torch.nn.Module):
                shared[name] = ModelProxy(name, value, self)
            elif isinstance(value, BaseGuidance):  # guider, guider_2 (Wan 2.2's second expert): private copies
                if type(value).prepare_models is not BaseGuidance.prepare_models:
                    raise ValueError(
                        f"{type(value).__name__} changes the network per guidance branch (prepare_models): one "
                        "batched call of several branches cannot reproduce it; use ClassifierFreeGuidance or another "
                        "guider that only combines the branches' outputs"
                    )
                shared[name] = copy.deepcopy(value)
        self.guiders = [v for v in shared.values() if isinstance(v, BaseGuidance)]
        self.replay_generator = None
        self.log, self.templates, self.solved, self.next_step, self.result = None, {}, False, 0, None
        self.final, self.comps = copy.copy(components), copy.copy(components)
        self.final.__dict__.update(shared, scheduler=copy.deepcopy(components.scheduler), _paratriton_run=self)
        self.comps.__dict__.update(shared, scheduler=copy.deepcopy(components.scheduler))
        self.model_blocks = list(loop.sub_blocks.items())[:-1]
        self.after = loop.sub_blocks["after_denoiser"]

    # -- the problem ----------------------------------------------------------------------------------------------
    def solve(self, bs: Any) -> None:
        self.solved = True
        sched = self.comps.scheduler
        x = bs.latents
        ts = bs.timesteps
        T, B, S = len(ts), x.shape[0], tuple(x.shape[1:])
        family = one_tap_family(sched)
        eta = None if family is None else family.loop_eta(getattr(bs, "eta", None))
        all_ts = sched.timesteps
        k0 = int(getattr(sched, "begin_index", None) or 0)
        if k0 + T > len(all_ts) or not torch.equal(all_ts[k0 : k0 + T].to(ts.device), ts):
            raise ValueError(
                f"{type(self.loop).__name__}: the loop's timesteps are not its scheduler's from begin_index {k0}: "
                "the parallel solve cannot tell which scheduler steps the loop takes"
            )
        full = step_operator(sched, eta, k0)
        multistep = not isinstance(full, SamplerCoefficients)
        coeffs = _slice_steps(full, len(all_ts) - k0 - T, full.num_steps if multistep else len(all_ts) - k0)
        draws, in_float32 = stock_draws(sched, coeffs, ts, eta)
        noise = self._draw_noise(bs, draws, T, B, S, torch.float32 if in_float32 else x.dtype) if draws else None
        if noise is None and getattr(coeffs, "is_stochastic", False):  # noise-free steps of a stochastic operator
            noise = torch.zeros(T, *x.shape, dtype=torch.float64, device=x.device)
        self.T, self.B, self.S, self.ts, self.begin, self.x_dtype = T, B, S, ts, k0, x.dtype
        self.scale = coeffs.input_scale.tolist() if multistep else None
        self.start = copy.copy(bs)
        self.guider_state = copy.deepcopy(self._guider_state())
        self.seen: list[list] = [[] for _ in range(T)]  # per solver step: its last evaluations (latents, calls)
        res = solve(self._denoiser, coeffs, x.detach().to(torch.float64), noise, method=self.method, **self.options)
        self.result: SolveResult = res
        self.traj = res.trajectory
        # the final pass's check: the stock step at the solved latents is within a few tolerances of the solution
        self.tol = 10 * float(self.options.get("tol") or self.options.get("tol_abs") or 1e-3)

    def _draw_noise(self, bs: Any, draws: list, T: int, B: int, S: tuple, dtype: torch.dtype) -> torch.Tensor:
        """The step noise, drawn up front in the loop's order from the generator ``after_denoiser`` hands ``step``;
        the final pass then steps with a copy of that generator as it was before (the same noise again)."""
        name, sched = type(self.after).__name__, type(self.comps.scheduler).__name__
        gen = getattr(bs, "generator", None)
        gens = gen if isinstance(gen, list) else [gen]
        if "generator" not in {p.name for p in self.after.inputs} or not all(
            isinstance(g, torch.Generator) for g in gens
        ):
            raise ValueError(
                f"{sched} draws noise in scheduler.step, and {name} hands it "
                + ("no generator" if "generator" not in {p.name for p in self.after.inputs} else f"generator={gen!r}")
                + ": the step noise comes from the global random state, which a parallel solve cannot draw in the "
                "loop's order. Pass a torch.Generator (or a list, one per image), or use a deterministic scheduler"
            )
        self.generator = gen
        self.replay_generator = [_copy_generator(g) for g in gens] if isinstance(gen, list) else _copy_generator(gen)
        return draw_step_noise(draws, T, B, B, S, gen, bs.latents.device, dtype)

    def _guider_state(self) -> list[dict]:
        return [{k: v for k, v in vars(g).items() if k not in _STEP_STATE} for g in self.guiders]

    def _step_state(self, j: int, latents: torch.Tensor) -> Any:
        """The block state the loop's sub-blocks see at loop step ``j`` (containers copied one level)."""
        bs = copy.copy(self.start)
        for k, v in vars(bs).items():
            if isinstance(v, (dict, list)):
                setattr(bs, k, copy.copy(v))
        bs.latents = latents
        return bs

    def _run_models(self, comps: Any, bs: Any, j: int, log: CallLog) -> torch.Tensor:
        """The sub-blocks before ``after_denoiser`` at loop step ``j``: ``block_state.noise_pred``."""
        sched = comps.scheduler
        if comps is self.comps and hasattr(sched, "_step_index"):  # scale_model_input reads the step index
            sched._step_index = self.begin + j
        self.log = log
        try:
            for _, block in self.model_blocks:
                comps, bs = block(comps, bs, i=j, t=self.ts[j])
        finally:
            self.log = None
        for g, now, then in zip(self.guiders, self._guider_state(), self.guider_state):
            if not _same(now, then):
                raise ValueError(
                    f"{type(g).__name__} keeps state from one step to the next (e.g. a momentum buffer): each "
                    "step then depends on the earlier ones, which a parallel solve cannot reproduce"
                )
        out = getattr(bs, "noise_pred", None)
        if not torch.is_tensor(out) or out.shape != bs.latents.shape:
            raise ValueError(
                f"{type(self.loop).__name__}: the sub-blocks before 'after_denoiser' must set block_state.noise_pred "
                f"shaped like the latents {list(bs.latents.shape)}, got {getattr(out, 'shape', type(out).__name__)}"
            )
        return out

    def _denoiser(self, x: torch.Tensor, step_index: torch.Tensor) -> torch.Tensor:
        """The solver's model: rows ``[W * B, *S]`` of window steps; every step's sub-blocks, one batched call."""
        B, T = self.B, self.T
        steps = step_index.reshape(-1, B)[:, 0].tolist()
        lats = []
        for w, i in enumerate(steps):
            lat = x[w * B : (w + 1) * B]
            # a copy: the solver reuses its buffers, and the final pass serves the stored calls of these latents
            lats.append(
                lat.to(self.x_dtype, copy=True) if self.scale is None else (lat / self.scale[i]).to(self.x_dtype)
            )
        known: list[list] = [[] for _ in steps]
        for _ in range(_MAX_PASSES):
            preds, pending = [], []
            for w, i in enumerate(steps):
                log = CallLog(known[w], None, self.templates)
                preds.append(self._run_models(self.comps, self._step_state(T - 1 - i, lats[w]), T - 1 - i, log))
                known[w] = log.calls
                # this pass makes the step's first unknown network's calls; a later network's wait for the replay
                # (a UNet fed by a ControlNet's residuals would be called on the placeholders' otherwise)
                todo = [c for c in log.calls if c.out is None]
                pending += [c for c in todo if c.name == todo[0].name]
            if not pending:
                break
            run_batched(pending, self.templates)
        else:
            raise RuntimeError(f"the loop's network calls did not settle in {_MAX_PASSES} passes")
        for w, i in enumerate(steps):
            self.seen[i] = [*self.seen[i][-2:], (lats[w], known[w])]
        return torch.cat(preds)

    # -- the final pass: the stock loop on the solved latents -----------------------------------------------------
    def final_step(self, bs: Any, i: int, t: Any) -> tuple:
        T = self.T
        if i != self.next_step or i >= T or not torch.equal(torch.as_tensor(t), torch.as_tensor(self.ts[i])):
            raise RuntimeError(f"the loop stepped index {i} (timestep {t}); the solve has {T} steps {self.ts.tolist()}")
        self._check(bs.latents, T - i, i)
        if self.replay_generator is not None:  # the stock step draws the noise the solve drew up front
            bs.generator = self.replay_generator
        target = self.traj[T - i].to(self.x_dtype)
        lat, calls = min(self.seen[T - 1 - i], key=lambda e: float((e[0] - target).double().norm()))
        bs.latents = lat
        self._run_models(self.final, bs, i, CallLog(calls, i, self.templates))
        comps, bs = self.after(self.final, bs, i=i, t=t)
        self.next_step = i + 1
        if i == T - 1:
            self._check(bs.latents, 0, T)
            if self.replay_generator is not None:  # the pipeline's state keeps the caller's generator
                bs.generator = self.generator
        return comps, bs

    def _check(self, latents: torch.Tensor, row: int, i: int) -> None:
        ref = self.traj[row].to(torch.float64)
        rms = float((latents.to(torch.float64) - ref).pow(2).mean().sqrt())
        if not rms <= self.tol * max(1.0, float(ref.pow(2).mean().sqrt())):
            raise ValueError(
                f"{type(self.after).__name__} gave latents {rms:.3g} (RMS) from the solved trajectory at loop step "
                f"{i}: it is not the scheduler step the solve reproduced (an inpainting blend, a latent edit?), so "
                "this loop cannot be solved in parallel exactly"
            )


def _copy_generator(g: torch.Generator) -> torch.Generator:
    copy_ = torch.Generator(device=g.device)
    copy_.set_state(g.get_state())
    return copy_


def _same(a: Any, b: Any, depth: int = 0) -> bool:
    """``a`` equals ``b``: tensors by value, containers and plain objects (a momentum buffer) member by member."""
    if a is b:
        return True
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(v, b[k], depth) for k, v in a.items())
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y, depth) for x, y in zip(a, b))
    if type(a) is type(b) and hasattr(a, "__dict__") and depth < 4:
        return _same(vars(a), vars(b), depth + 1)
    try:
        return bool(a == b)
    except Exception:
        return False
