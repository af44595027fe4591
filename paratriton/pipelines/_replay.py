"""The replay stage: the scheduler copy's ``step``, its checks, ``callback_on_step_end`` and the interrupt.

``_Replay`` is mixed into ``_ParallelCall``. It takes the solved trajectory (``trajectory [T, B, *S]``, step-major:
loop step ``j`` is row ``T - 1 - j``) and what the solve assumed (``T``, ``B``, ``loop_ts``, ``calls_per_step``,
``eta``, ``step_generator``, ``x_start``) and returns, step by step, what the stock ``scheduler.step`` would: the
next latents, or an error where the loop is not the one the solve reproduced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm


class _Interrupted(Exception):
    """Raised from the solver callback when ``callback_on_step_end`` set ``pipe._interrupt``."""

    def __init__(self, step: int, trajectory: torch.Tensor) -> None:
        super().__init__(step)
        self.step, self.trajectory = step, trajectory


class _Replay:
    """The replay stage of one parallel call: progress, callbacks while solving, then the replaying ``step``."""

    state: Any
    spec: Any
    pipe: Any
    callback: Callable | None
    progress_config: dict
    controlnet: torch.nn.Module | None
    T: int
    B: int
    latent_dtype: torch.dtype
    loop_ts: torch.Tensor
    x_start: torch.Tensor
    eta: float | None
    bar: Any
    solved: bool
    trajectory: torch.Tensor | None
    replayed: int
    reported: int
    calls_since_step: int
    calls_per_step: int
    calls_by_step: list[int] | None
    control_calls: int
    last_out: torch.Tensor | None
    interrupted_at: int | None
    in_callback: bool

    # -- progress bar and callback_on_step_end ------------------------------------------------------------------
    def _progress(self, T: int):
        config = {"desc": f"paratriton {self.state.method}", **self.progress_config}
        return tqdm(total=T, **config)

    def _on_iteration(self, info) -> None:
        bar, T = self.bar, self.T
        if not bar.disable:
            lo, hi = info.window
            rms = info.residual_rms[torch.isfinite(info.residual_rms)]  # solvers mark unevaluated steps with NaN
            res = f"{float(rms.max()):.2e}" if rms.numel() else "-"
            bar.set_postfix_str(f"iter {info.iteration}, window {lo}..{hi - 1}, max residual {res}", refresh=False)
            bar.update(max(T - info.frozen_from - bar.n, 0))  # the bar counts converged (final) steps
        if self.callback is None:
            return
        final = T - info.frozen_from  # loop steps 0 .. final-1 have converged (solver steps >= frozen_from)
        if final <= self.reported:
            return
        traj = info.trajectory
        for j in range(self.reported, final):
            self.reported = j + 1
            self._call_back(j, traj)

    def _call_back(self, j: int, traj: torch.Tensor) -> None:
        """``callback_on_step_end`` for loop step ``j``, as the stock loop calls it after that step."""
        latents = traj[self.T - 1 - j].to(self.latent_dtype)
        kept = latents.clone()
        self.in_callback = True
        try:
            out = self.callback(self.pipe, j, self.loop_ts[j], {"latents": latents})
        finally:
            self.in_callback = False
        returned = out.get("latents", latents) if isinstance(out, dict) else latents
        if not torch.equal(latents, kept) or (
            returned is not latents and not (torch.is_tensor(returned) and torch.equal(returned, kept))
        ):
            raise ValueError(
                f"callback_on_step_end changed 'latents' at step {j}: a parallel solve computes every step at once "
                "and cannot apply an edit to one step. Return the callback_kwargs unchanged (or an empty dict), or "
                "use the stock pipeline for latent edits."
            )
        if getattr(self.pipe, "_interrupt", False):
            raise _Interrupted(j, traj)

    # -- the scheduler copy's step: replay the solved trajectory -----------------------------------------------
    def scheduler_step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        *args: Any,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> Any:
        # deferred: diffusers is heavy and optional (``import paratriton`` never imports it)
        from diffusers.schedulers.scheduling_utils import SchedulerOutput

        if not self.solved:
            raise RuntimeError("scheduler.step was called before the model: this pipeline's loop is not supported")
        j = self.replayed
        if j >= self.T or float(torch.as_tensor(timestep)) != float(self.loop_ts[j]):
            raise RuntimeError(
                f"the stock loop stepped timestep {timestep} at loop index {j}, but the solved "
                f"trajectory has {self.T} steps with timesteps {self.loop_ts.tolist()}"
            )
        calls = self.calls_per_step if self.calls_by_step is None else self.calls_by_step[j]
        if self.calls_since_step != calls:
            raise RuntimeError(
                f"the loop called the network {self.calls_since_step} times before step {j}; the parallel solve "
                f"assumes {calls} there"
            )
        self.calls_since_step = 0
        if self.controlnet is not None:
            if self.control_calls != 1:
                raise RuntimeError(f"the loop called the ControlNet {self.control_calls} times before step {j}")
            self.control_calls = 0
        self._check_step_kwargs(kwargs)
        rows = sample.shape[0] // self.B
        expected = self.x_start if self.last_out is None else self.last_out[: self.B]
        if sample.shape[1:] != expected.shape[1:] or not torch.equal(sample[: self.B], expected.to(sample.dtype)):
            raise RuntimeError(
                f"the loop changed the latents before step {j} (a legacy callback, a subclass, or an inpainting "
                "blend with a 4-channel UNet): the parallel solve cannot apply changes made between steps"
            )
        self.replayed += 1
        if self.interrupted_at is not None:  # every replayed step ends on the interrupted step's latents
            x = self.trajectory[self.T - 1 - self.interrupted_at]
        else:
            x = self.trajectory[self.T - 1 - j]
        prev = x.to(sample.dtype).repeat(rows, *([1] * (x.ndim - 1)))
        self.last_out = prev
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def _check_step_kwargs(self, kwargs: dict) -> None:
        """What the loop hands ``step`` must be what the step noise was drawn with."""
        if "generator" in kwargs and getattr(self, "step_generator", kwargs["generator"]) is not kwargs["generator"]:
            raise RuntimeError(
                "the loop passes another generator to scheduler.step than the parallel solve drew the step noise "
                "from: a subclass changed prepare_extra_step_kwargs?"
            )
        if self.eta is not None and "eta" in kwargs and float(kwargs["eta"] or 0.0) != self.eta:
            raise RuntimeError(f"the loop passes eta={kwargs['eta']} to scheduler.step, the solve used {self.eta}")
