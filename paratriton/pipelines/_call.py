"""One parallel pipeline call: a private stand-in pipeline, a proxy network, a scheduler copy, the solve, the replay.

Why this shape
--------------
The stock ``__call__`` runs unchanged (prompt encoding, input checks, latent preparation, timesteps, decoding,
``output_type``, ...), but on a **per-call shallow copy** of the pipeline whose denoiser attribute is a
``_ModelProxy`` and whose scheduler is a deep copy with a replaying ``step``. Nothing shared is patched: the
user's pipeline, the parallel pipeline, their modules and their scheduler are never written to (the stock call
sets ``_guidance_scale``, ``_interrupt``, timesteps, ... on the private copies only). So a stock call, another
parallel call from another thread, or an exception raised halfway can never observe or leave a patch.

* The proxy's **first** call hands over everything the loop body has prepared (the initial latents, the CFG-batched
  conditioning). The step noise of DDPM-style samplers is drawn now, in the order and with the ``randn_tensor``
  calls the stock ``scheduler.step`` would make. Then the trajectory is solved: one batched call of the **real**
  network per iteration, through ``nn.Module.__call__`` (so forward hooks, ``.compile()`` and accelerate's offload
  hooks see every batched call). Later loop calls get zeros shaped like the network's output.
* The scheduler copy's ``step`` replays the solved trajectory into the stock loop, which ends on the solved
  ``x_0`` and decodes it as usual. Each replayed step checks what the parallel solve assumed: one network call per
  step, the timestep, the generator and ``eta`` the loop hands to ``step``, and that the loop did not change the
  latents between steps (a legacy callback, a subclass or an inpainting blend would): otherwise it raises instead
  of returning a silently different image.
* Where the loop starts and ends is read from the run: the scheduler's begin index (else the first network call's
  timestep) gives the start (img2img's ``strength``, the refiner's ``denoising_start``), ``PipelineSpec.loop.end``
  the end (SDXL's ``denoising_end``): the parallel solve covers exactly the steps the stock loop would take. A
  traced (multistep) scheduler is traced from that start, so its history and warm-up orders are the stock loop's.
* ``callback_on_step_end(pipe, i, t, {"latents": ...})`` keeps its stock meaning: once per loop step ``i`` with
  that step's timestep and its (converged) latents, called as steps converge. ``pipe`` is the call's pipeline (the
  private copy, with the call's ``guidance_scale``, ``num_timesteps``, ...); ``pipe._interrupt = True`` stops the
  solve and returns the latents of step ``i``, as the stock loop does. A callback that returns or edits
  ``latents`` raises: a parallel solve cannot apply an edit to one step.

The stages, one module each, mixed into ``_ParallelCall``, which only builds the private copy and runs the stock call:
``_capture`` (the proxies; the first network call as a frozen ``Captured``) -> ``_problem`` (denoiser, step operator,
noise, loop range as a frozen ``Problem``; ``_denoiser``, ``_operator``) -> ``_solve`` (eager, graphed,
``window="auto"``) -> ``_replay`` (the scheduler copy's ``step``, its checks, callbacks, interrupt).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import torch

from ..solvers import SolveResult
from ._capture import _Capture, _ModelProxy
from ._guards import check_no_stateful_hooks
from ._problem import _Problem
from ._replay import _Replay
from ._solve import _Solve
from ._specs import PipelineSpec
from ._state import ParallelState


# --------------------------------------------------------------------------------------------------------------
# one parallel call
# --------------------------------------------------------------------------------------------------------------
class _ParallelCall(_Capture, _Problem, _Solve, _Replay):
    """One parallel pipeline call (see the module docstring).

    ``par`` is the parallel pipeline (read, never written); ``state`` its ``ParallelState``, which gives the method
    and options and gets the result, the window choices and the graph cache back; ``wrapped`` the pipeline class
    whose ``__call__`` runs (the user's class: its overrides of helper methods apply).
    """

    def __init__(
        self,
        par,
        wrapped: type,
        state: ParallelState,
        spec: PipelineSpec,
        call_args: dict,
        callback: Callable | None,
        progress_config: dict,
    ) -> None:
        self.state, self.spec, self.call_args = state, spec, call_args
        self.callback, self.progress_config = callback, progress_config
        self.pipeline_name = wrapped.__name__  # the plan cache's key
        calls = spec.calls
        self.model: torch.nn.Module = getattr(par, calls.denoiser)
        check_no_stateful_hooks(self.model, f"{type(par).__name__}.{calls.denoiser}")
        # the call's own scheduler: set_timesteps, begin_index and the replaying step stay on this copy
        self.scheduler = copy.deepcopy(par.scheduler)
        self.scheduler.step = self.scheduler_step  # an instance attribute of a private object
        # scale_model_input (Euler, Heun, LMS: x / sqrt(1 + sigma^2)) is part of the model call the solve makes: the
        # copy records its last input before the first network call, the unscaled latents the trajectory starts at
        self.scaled: tuple[torch.Tensor, torch.Tensor] | None = None
        self.stock_scale = getattr(self.scheduler, "scale_model_input", None)
        if self.stock_scale is not None:
            self.scheduler.scale_model_input = self.scheduler_scale_input
        self.proxy = _ModelProxy(self.model_call, self.model)
        # networks the loop may call in the denoiser's place (Wan 2.2's transformer_2), each behind its own proxy
        self.experts: dict[str, torch.nn.Module] = {calls.denoiser: self.model}
        for name in calls.experts:
            net = getattr(par, name, None)
            if net is not None:
                check_no_stateful_hooks(net, f"{type(par).__name__}.{name}")
                self.experts[name] = net
        self.route: list[str] | None = None  # the expert of every loop step, once solved
        self.controlnet: torch.nn.Module | None = getattr(par, calls.controlnet) if calls.controlnet else None
        if self.controlnet is not None:
            check_no_stateful_hooks(self.controlnet, f"{type(par).__name__}.{calls.controlnet}")
        pipe = wrapped.__new__(wrapped)
        d = dict(par.__dict__)
        d.pop("paratriton", None)
        d[calls.denoiser], d["scheduler"] = self.proxy, self.scheduler
        for name, net in self.experts.items():
            if name != calls.denoiser:
                d[name] = _ModelProxy(functools.partial(self.model_call, which=name), net)
        if self.controlnet is not None:
            d[calls.controlnet] = _ModelProxy(self.control_call, self.controlnet)
        self.control_pending: tuple | None = None
        self.control_dummy: Any = None
        self.control_calls = 0
        d["_progress_bar_config"] = {**progress_config, "disable": True}  # the replay is not progress
        d["_interrupt"] = False  # the stock calls that honour it reset it too; DiT and DDPM have none
        # enable_model_cpu_offload's re-arming must act on the real components, not on this copy's proxy
        d["maybe_free_model_hooks"] = par.maybe_free_model_hooks
        pipe.__dict__.update(d)  # __dict__, not setattr: DiffusionPipeline.__setattr__ would write the shared config
        self.pipe = pipe
        self.prepared: Any = None  # prepare_latents' latents, recorded on this copy
        if callable(getattr(pipe, "prepare_latents", None)):
            pipe.__dict__["prepare_latents"] = functools.partial(self.record_latents, pipe.prepare_latents)
        self.solved = False
        self.result: SolveResult | None = None
        self.trajectory: torch.Tensor | None = None
        self.dummy: Any = None
        self.replayed = 0
        self.calls_since_step = 0
        self.last_out: torch.Tensor | None = None
        self.interrupted_at: int | None = None
        self.in_callback = False
        self.reported = 0
        # (do_cfg, scale, rescale), read at the first network call; two calls per step for Guidance "two_calls"
        self.guidance_read: tuple[bool, float, float] | None = None
        self.calls_per_step = 1
        self.calls_by_step: list[int] | None = None  # where CFG is on for some steps only (loop order)
        self.pending: tuple | None = None

    def _solve(self, args: tuple, kwargs: dict) -> None:
        """The proxy's first call: capture it, pose the problem, solve it (the replay then steps through it)."""
        self.solved = True
        self._solve_problem(self._pose(self._capture(args, kwargs)))

    # -- run the stock __call__ on the private copy ------------------------------------------------------------
    def run(self, stock_call: Callable, kwargs: dict) -> Any:
        out = stock_call(self.pipe, **kwargs)
        if self.solved:
            done = self.replayed == self.T or (self.interrupted_at is not None and self.replayed >= 1)
            if not done:
                raise RuntimeError(f"the stock loop replayed {self.replayed} of {self.T} solved steps")
            if self.calls_since_step:
                raise RuntimeError("the loop called the network after its last step")
        return out
