"""``parallelize_modular(pipe)``: a modular diffusers pipeline whose denoise loops are solved by ``paratriton.solve``.

Why a function that returns a pipeline (and not a block to swap in): ``ModularPipeline.blocks`` returns a deep copy,
so ``pipe.blocks.sub_blocks["denoise"] = ...`` changes nothing, and the loop sits inside auto and sequential blocks
whose nesting differs per model. ``parallelize_modular`` finds every ``LoopSequentialPipelineBlocks`` in a copy of
the pipeline's blocks and returns a shallow copy of the pipeline (sharing its components) that runs them in parallel.

How (one call): the model's own loop block runs unchanged (its ``__call__``: guider set-up, warm-up count, progress
bar) on a private copy of the pipeline whose networks are ``ModelProxy`` objects and whose scheduler and guider
are copies. At the loop's first step the whole trajectory is solved (``paratriton.solve``, any method): the solver's
denoiser runs the loop's sub-blocks before ``after_denoiser`` (``before_denoiser``, ``denoiser``: the guider's
branches and combine, per-step switches included) for every step of the window, recording the network calls, makes
one batched call per network and argument signature (per-row timesteps), and replays the sub-blocks with the
outputs: ``block_state.noise_pred`` is f_i's model output, exactly. The scheduler step is the step operator
extracted or traced from the scheduler copy. Then the loop runs every step with the solved latents: the sub-blocks
are served the recorded outputs and ``after_denoiser`` (``scheduler.step``) runs unchanged, checked against the
solved trajectory. Nothing shared is modified; the user's pipeline is unchanged afterwards.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import torch

from ..schedulers import one_tap_family, stock_draws
from ..solvers import SolveResult, solve
from ._guards import check_diffusers_version
from ._modular_calls import CallLog, ModelProxy, run_batched
from ._operator import _slice_steps, step_operator

__all__ = ["parallelize_modular"]

_STEP_STATE = frozenset({"_step", "_num_inference_steps", "_timestep", "_count_prepared"})  # guider.set_state's
_MAX_PASSES = 8  # passes per step: one more than the longest chain of networks fed by networks (ControlNet: 3)


def parallelize_modular(pipe: Any, method: str = "taa", **options: Any) -> Any:
    """A copy of the modular pipeline ``pipe`` whose denoise loops are solved in parallel with ``method`` (one of
    ``paratriton.METHODS``; ``options`` are its options). The copy shares ``pipe``'s components; ``pipe`` is not
    changed. ``fast.paratriton.last_result`` is the last call's ``SolveResult`` (``method``, ``options`` beside it)."""
    from diffusers.modular_pipelines import ModularPipeline

    from ._options import check_method_and_options

    if not isinstance(pipe, ModularPipeline):
        raise TypeError(f"parallelize_modular takes a diffusers ModularPipeline, got {type(pipe).__name__}")
    check_diffusers_version()
    check_method_and_options(method, options)
    blocks = copy.deepcopy(pipe._blocks)
    state = SimpleNamespace(method=method, options=dict(options), last_result=None)
    if not _swap_loops(blocks, state):
        raise ValueError(f"{type(blocks).__name__} has no denoise loop (LoopSequentialPipelineBlocks) to parallelize")
    fast = copy.copy(pipe)  # shares the components; its own blocks, specs and state
    specs = {k: dict(getattr(pipe, k)) for k in ("_component_specs", "_config_specs") if hasattr(pipe, k)}
    fast.__dict__.update(specs, _blocks=blocks, paratriton=state)
    fast.__class__ = _parallel_class(type(pipe), _ParallelPipeline)
    return fast


def _swap_loops(block: Any, state: SimpleNamespace) -> int:
    from diffusers.modular_pipelines import LoopSequentialPipelineBlocks

    swapped = 0
    for name, sub in list((getattr(block, "sub_blocks", None) or {}).items()):
        if isinstance(sub, LoopSequentialPipelineBlocks):
            names = list(sub.sub_blocks)
            if not names or names[-1] != "after_denoiser":
                raise ValueError(
                    f"{type(sub).__name__}: its sub-blocks {names} do not end with 'after_denoiser' (the scheduler "
                    "step): the parallel loop cannot tell the model's part of a step from the step itself"
                )
            par = object.__new__(_parallel_class(type(sub), _ParallelLoop))
            par.__dict__.update(sub.__dict__, _paratriton=state)
            block.sub_blocks[name] = par
            swapped += 1
        else:
            swapped += _swap_loops(sub, state)
    return swapped


_CLASSES: dict = {}


def _parallel_class(cls: type, mixin: type) -> type:
    """``Parallel<Class>``: a subclass made here with ``mixin``'s methods first, so nothing of diffusers' classes
    changes (``_ParallelPipeline`` for the pipeline, ``_ParallelLoop`` for a loop block)."""
    if (cls, mixin) not in _CLASSES:
        _CLASSES[cls, mixin] = type(f"Parallel{cls.__name__}", (mixin, cls), {})
    return _CLASSES[cls, mixin]


class _ParallelPipeline:
    """Each call runs on a private copy of the pipeline whose schedulers and guiders are copies: the blocks before
    the loop (``set_timesteps``) and the loop's guider set-up write to those, not to the shared components."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from diffusers.guiders.guider_utils import BaseGuidance
        from diffusers.schedulers.scheduling_utils import SchedulerMixin

        private = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, (SchedulerMixin, BaseGuidance)):
                private.__dict__[name] = copy.deepcopy(value)
        return super(_ParallelPipeline, private).__call__(*args, **kwargs)


class _ParallelLoop:
    _paratriton: SimpleNamespace

    def __call__(self, components: Any, state: Any) -> tuple:
        run = _ModularSolve(self, components)
        _, state = super().__call__(run.final, state)  # the stock loop: its loop_step is ours
        if run.next_step != run.T:
            raise RuntimeError(f"the loop stepped {run.next_step} of the {run.T} solved steps")
        self._paratriton.last_result = run.result
        return components, state

    def loop_step(self, components: Any, block_state: Any, i: int, t: Any) -> tuple:
        run = components.__dict__["_paratriton_run"]
        if not run.solved:
            run.solve(block_state)
        return run.final_step(block_state, i, t)


class _ModularSolve:
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
        multistep = hasattr(full, "input_scale")
        coeffs = _slice_steps(full, len(all_ts) - k0 - T, full.num_steps if multistep else len(all_ts) - k0)
        draws, _ = stock_draws(sched, coeffs, ts, eta)
        if draws or getattr(coeffs, "is_stochastic", False):
            raise ValueError(
                f"{type(sched).__name__} draws noise in scheduler.step, and modular loops hand step a generator of "
                "their own choosing: the parallel modular loop supports deterministic schedulers only (e.g. "
                "EulerDiscrete, FlowMatchEulerDiscrete, DPMSolverMultistep, UniPCMultistep, DDIM with eta=0)"
            )
        self.T, self.B, self.S, self.ts, self.begin, self.x_dtype = T, B, S, ts, k0, x.dtype
        self.scale = coeffs.input_scale.tolist() if multistep else None
        self.start = copy.copy(bs)
        self.guider_state = copy.deepcopy(self._guider_state())
        self.seen: list[list] = [[] for _ in range(T)]  # per solver step: its last evaluations (latents, calls)
        res = solve(self._denoiser, coeffs, x.detach().to(torch.float64), None, method=self.method, **self.options)
        self.result: SolveResult = res
        self.traj = res.trajectory
        # the final pass's check: the stock step at the solved latents is within a few tolerances of the solution
        self.tol = 10 * float(self.options.get("tol") or self.options.get("tol_abs") or 1e-3)

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
                log = CallLog(known[w], False, self.templates)
                preds.append(self._run_models(self.comps, self._step_state(T - 1 - i, lats[w]), T - 1 - i, log))
                known[w] = log.calls
                pending += [c for c in log.calls if c.out is None]
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
        target = self.traj[T - i].to(self.x_dtype)
        lat, calls = min(self.seen[T - 1 - i], key=lambda e: float((e[0] - target).double().norm()))
        bs.latents = lat
        self._run_models(self.final, bs, i, CallLog(calls, True, self.templates))
        comps, bs = self.after(self.final, bs, i=i, t=t)
        self.next_step = i + 1
        if i == T - 1:
            self._check(bs.latents, 0, T)
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
