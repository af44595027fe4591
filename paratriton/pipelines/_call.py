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
  timestep) gives the start (img2img's ``strength``, the refiner's ``denoising_start``), ``PipelineSpec.loop_end``
  the end (SDXL's ``denoising_end``): the parallel solve covers exactly the steps the stock loop would take. A
  traced (multistep) scheduler is traced from that start, so its history and warm-up orders are the stock loop's.
* ``callback_on_step_end(pipe, i, t, {"latents": ...})`` keeps its stock meaning: once per loop step ``i`` with
  that step's timestep and its (converged) latents, called as steps converge. ``pipe`` is the call's pipeline (the
  private copy, with the call's ``guidance_scale``, ``num_timesteps``, ...); ``pipe._interrupt = True`` stops the
  solve and returns the latents of step ``i``, as the stock loop does. A callback that returns or edits
  ``latents`` raises: a parallel solve cannot apply an edit to one step.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Callable
from typing import Any

import torch

from ..schedulers import (
    TRACED_SCHEDULERS,
    SamplerCoefficients,
    coefficients_from_scheduler,
    draw_step_noise,
    one_tap_family,
    stock_draws,
)
from ..schedulers.traced import multistep_from_scheduler
from ..solvers import SolveResult
from ._capture import _NOT_PER_ROW, _bind_forward, _Capture, _first_tensor, _like, _ModelProxy
from ._guards import check_no_stateful_hooks
from ._replay import _Replay
from ._solve import _Solve
from ._specs import PipelineSpec
from ._state import ParallelState
from ._trees import copy_tree

logger = logging.getLogger("paratriton.pipelines")

# the conditioning key under which inpainting's extra input channels (mask, masked image latents) travel
_EXTRA_CHANNELS = "__paratriton_extra_channels__"
# ControlNet: the controlnet call's conditioning and the per-step scale travel with the UNet's conditioning
_CONTROL = "__paratriton_control__"
_COEFF_FIELDS = ("a", "b", "c", "posterior_std", "timesteps", "signal_scale", "noise_scale")
# the per-step fields of a k-tap ``MultistepCoefficients`` (``b`` is [T, k])
_MULTISTEP_FIELDS = _COEFF_FIELDS + ("input_scale", "output_scale", "output_mix")
# instance attributes the call sets on its scheduler copy (never traced: the tracer deep-copies the scheduler)
_OVERRIDES = ("step", "scale_model_input")


def _repeat_rows(value: Any, g: int, B: int, W: int) -> Any:
    """Repeat per-row conditioning ``[g * B, ...]`` to the solver's rows ``[g, W, B, ...]`` (step-major).

    The stock loop batches ``g`` guidance branches of ``B`` samples; the solver evaluates ``W`` steps of each, with
    rows ordered ``(branch, window position, sample)``. Tensors whose leading dimension is not ``g * B`` (scalars,
    broadcast tensors) pass through unchanged; dicts, lists and tuples are searched.
    """
    if torch.is_tensor(value):
        if value.ndim >= 1 and value.shape[0] == g * B:
            rest = tuple(value.shape[1:])
            return value.reshape(g, 1, B, *rest).expand(g, W, B, *rest).reshape(g * W * B, *rest)
        return value
    if isinstance(value, dict):
        return {k: _repeat_rows(v, g, B, W) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_repeat_rows(v, g, B, W) for v in value)
    return value


def _slice_steps(coeffs, lo: int, hi: int):
    """The sub-problem of solver steps ``lo .. hi-1`` (a one-tap operator's steps are independent rows).

    A k-tap operator (``MultistepCoefficients``) is traced from the loop's own first step (``start``: img2img's
    ``strength``, the refiner's ``denoising_start``), so only its end may be cut: a loop that stops early (``lo >
    0``: SDXL's ``denoising_end``) runs exactly the first steps of the traced loop. Its start cannot be cut, since
    the scheduler's history (warm-up orders, stored outputs) starts at the loop's first step.
    """
    T = coeffs.num_steps
    if (lo, hi) == (0, T):
        return coeffs
    if isinstance(coeffs, SamplerCoefficients):
        clip = None if coeffs.x0_clip is None else coeffs.x0_clip.steps(lo, hi)
        return type(coeffs)(
            **{f: getattr(coeffs, f)[lo:hi] for f in _COEFF_FIELDS},
            prediction_type=coeffs.prediction_type,
            x0_clip=clip,
        )
    if hi < T and coeffs.taps != 1:
        raise RuntimeError(
            f"{coeffs.scheduler}: a {coeffs.taps}-tap operator traced from an earlier step than the loop's first "
            "cannot be cut at its start (trace it from the loop's first step)"
        )
    draws = tuple(i - lo for i in coeffs.noise_draw_steps if lo <= i < hi)
    return dataclasses.replace(
        coeffs,
        **{f: getattr(coeffs, f)[lo:hi] for f in _MULTISTEP_FIELDS},
        noise_draw_steps=draws,
        noise_dtype=coeffs.noise_dtype if draws else None,
    )


def _traceable(sched):
    """A scheduler like the call's copy ``sched`` without its overrides (``step``, ``scale_model_input``) and with
    the step index the loop's first ``scale_model_input`` set cleared: what the tracer deep-copies and steps. The
    begin index the pipeline set (img2img's ``get_timesteps``) is kept: the stock loop steps from it."""
    clean = object.__new__(type(sched))
    clean.__dict__.update({k: v for k, v in sched.__dict__.items() if k not in _OVERRIDES})
    if "_step_index" in clean.__dict__:
        clean.__dict__["_step_index"] = None
    return clean


class _PipelineDenoiser:
    """The pipeline's network as a paratriton denoiser of the stacked guidance branches.

    ``x [g * W * B, *S]`` (solver dtype) and ``step_index [g * W * B]`` -> ``[g * W * B, *S]`` (model dtype), rows
    ordered ``(branch, window position, sample)``; the stock call's conditioning ``kwargs`` is repeated along the
    window. ``model`` is called as a module (``nn.Module.__call__``: hooks and ``compile`` apply). Only tensors are
    read per call, so the call can be captured in a CUDA graph: later pipeline calls copy their conditioning into
    ``kwargs`` in place (``load``) and replay.
    """

    def __init__(
        self,
        model: Callable,
        latent_name: str,
        kwargs: dict,
        ts_by_step: torch.Tensor,
        g: int,
        B: int,
        N0: int,
        x_dtype: torch.dtype,
        flow_timestep: bool,
        learned_sigma_channels: int | None,
    ) -> None:
        self.forward, self.latent_name, self.kwargs, self.ts_by_step = model, latent_name, kwargs, ts_by_step
        self.g, self.B, self.N0, self.x_dtype = g, B, N0, x_dtype
        self.flow_timestep, self.learned_sigma_channels = flow_timestep, learned_sigma_channels
        self.dummy: Any = None  # what later stock calls get back: zeros shaped like a stock call's output
        self.controlnet: Callable | None = None  # ControlNet: the real controlnet module and its latent argument
        self.control_latent = "sample"

    def __call__(self, x: torch.Tensor, step_index: torch.Tensor) -> torch.Tensor:
        g, B = self.g, self.B
        W = x.shape[0] // (g * B)
        t = self.ts_by_step[step_index]
        if self.flow_timestep:  # Flux: t.expand(B).to(latents.dtype) / 1000, exactly as the stock loop
            t = t.to(self.x_dtype) / 1000
        kw = {k: (v if k in _NOT_PER_ROW else _repeat_rows(v, g, B, W)) for k, v in self.kwargs.items()}
        if _CONTROL in kw:  # the per-step scale is indexed by step, not repeated per row
            kw[_CONTROL] = {**kw[_CONTROL], "scale_by_step": self.kwargs[_CONTROL]["scale_by_step"]}
        sample = x.to(self.x_dtype)
        extra = kw.pop(_EXTRA_CHANNELS, None)
        if extra is not None:  # inpainting: [latents, mask, masked image latents] along channels, as the loop does
            sample = torch.cat([sample, extra], dim=1)
        control = kw.pop(_CONTROL, None)
        if control is not None:  # ControlNet: its call is part of the model call, on the same rows
            kw.update(self._control(sample, t, step_index, control))
        raw = self.forward(**{self.latent_name: sample, "timestep": t}, **kw)
        out = _first_tensor(raw)
        if self.dummy is None:
            self.dummy = _like(raw, out.new_zeros((self.N0, *out.shape[1:])))
        if self.learned_sigma_channels is not None:
            out = out[:, : self.learned_sigma_channels]
        return out

    def _control(self, sample: torch.Tensor, t: torch.Tensor, step_index: torch.Tensor, control: dict) -> dict:
        """The ControlNet residuals for these rows, scaled per row by the step's ``conditioning_scale`` (the stock
        loop's ``controlnet_conditioning_scale * controlnet_keep[i]``; the net itself runs at scale 1)."""
        ckw = dict(control["kwargs"])
        down, mid = self.controlnet(
            **{self.control_latent: sample, "timestep": t}, **ckw, conditioning_scale=1.0, return_dict=False
        )
        scale = control["scale_by_step"][step_index]
        view = (-1,) + (1,) * (mid.ndim - 1)
        return {
            "down_block_additional_residuals": [d * scale.to(d.dtype).view(view) for d in down],
            "mid_block_additional_residual": mid * scale.to(mid.dtype).view(view),
        }

    def load(self, kwargs: dict) -> None:
        """Copy another call's conditioning (same structure and shapes) into this one's tensors."""
        copy_tree(self.kwargs, kwargs)


# --------------------------------------------------------------------------------------------------------------
# one parallel call
# --------------------------------------------------------------------------------------------------------------
class _ParallelCall(_Capture, _Solve, _Replay):
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
        self.model: torch.nn.Module = getattr(par, spec.denoiser)
        check_no_stateful_hooks(self.model, f"{type(par).__name__}.{spec.denoiser}")
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
        self.controlnet: torch.nn.Module | None = getattr(par, spec.controlnet) if spec.controlnet else None
        if self.controlnet is not None:
            check_no_stateful_hooks(self.controlnet, f"{type(par).__name__}.{spec.controlnet}")
        pipe = wrapped.__new__(wrapped)
        d = dict(par.__dict__)
        d.pop("paratriton", None)
        d[spec.denoiser], d["scheduler"] = self.proxy, self.scheduler
        if self.controlnet is not None:
            d[spec.controlnet] = _ModelProxy(self.control_call, self.controlnet)
        self.control_pending: tuple | None = None
        self.control_dummy: Any = None
        self.control_calls = 0
        d["_progress_bar_config"] = {**progress_config, "disable": True}  # the replay is not progress
        d["_interrupt"] = False  # the stock calls that honour it reset it too; DiT and DDPM have none
        # enable_model_cpu_offload's re-arming must act on the real components, not on this copy's proxy
        d["maybe_free_model_hooks"] = par.maybe_free_model_hooks
        pipe.__dict__.update(d)  # __dict__, not setattr: DiffusionPipeline.__setattr__ would write the shared config
        self.pipe = pipe
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
        # true CFG (Flux's true_cfg_scale with a negative prompt): the loop calls the network twice per step
        self.true_cfg_scale = spec.true_cfg(self.pipe, call_args) if spec.true_cfg is not None else None
        self.calls_per_step = 1 if self.true_cfg_scale is None else 2
        self.pending: tuple | None = None

    def _control_conditioning(self, x_in: torch.Tensor, T: int) -> dict:
        """The recorded ControlNet call as conditioning: its kwargs (per row) and the scale of every solver step."""
        if self.control_pending is None:
            raise RuntimeError("the loop called the UNet before its ControlNet")
        name, named = _bind_forward(self.controlnet, *self.control_pending)
        if named.get("guess_mode"):
            raise ValueError("guess_mode (or a ControlNet with global_pool_conditions) is not supported")
        cx = named.pop(name)
        named.pop("timestep", None)
        first_scale = named.pop("conditioning_scale", 1.0)
        named.pop("return_dict", None)
        named.pop("guess_mode", None)
        if cx.shape != x_in.shape or not torch.equal(cx, x_in):
            raise RuntimeError("the ControlNet and the UNet got different latents: not supported")
        scale, start, end = (
            self.call_args.get(k)
            for k in ("controlnet_conditioning_scale", "control_guidance_start", "control_guidance_end")
        )
        scale, start, end = (v[0] if isinstance(v, (list, tuple)) else v for v in (scale, start, end))
        # diffusers 0.42.1: controlnet_keep[i] = 1 - float(i / T < start or (i + 1) / T > end), over the loop's steps
        keep = [1.0 - float(k / T < start or (k + 1) / T > end) for k in range(T)]
        if not math.isclose(float(first_scale), float(scale) * keep[0], rel_tol=1e-6, abs_tol=1e-12):
            raise RuntimeError(
                f"the ControlNet's first conditioning_scale {first_scale} is not controlnet_conditioning_scale * "
                f"keep ({scale} * {keep[0]}): this loop's ControlNet schedule is not the stock one"
            )
        by_loop = torch.tensor([float(scale) * k for k in keep], dtype=torch.float64, device=x_in.device)
        self.control_latent = name
        return {"kwargs": named, "scale_by_step": by_loop.flip(0)}

    def _unscaled_latents(self, x_in: torch.Tensor, coeffs) -> torch.Tensor:
        """The loop's latents ``x_{i+1}`` behind the network's first input ``x_in`` (``scale_model_input``'s)."""
        if self.scaled is not None:
            before, after = self.scaled
            if after.shape == x_in.shape and torch.equal(after, x_in):
                return before
            if bool((coeffs.input_scale != 1).any()):
                raise RuntimeError(
                    "the network's first input is not scheduler.scale_model_input's output: this pipeline's loop "
                    "changes the scaled latents, which the parallel solve cannot reproduce with "
                    f"{type(self.scheduler).__name__}"
                )
            return x_in
        if bool((coeffs.input_scale != 1).any()):
            raise ValueError(
                f"{type(self.pipe).__name__} does not call scheduler.scale_model_input before its network, but "
                f"{type(self.scheduler).__name__} scales the model input: the stock loop is not the traced sampler. "
                "Use a scheduler whose scale_model_input is the identity (DDIM, DDPM, DPMSolverMultistep, UniPC, "
                "PNDM, DEIS)"
            )
        return x_in

    def _coefficients(self, sched, eta: float | None, start: int):
        """The call's step operator; a traced (k-tap) one over the loop's own steps from ``start`` on."""
        if type(sched).__name__ in TRACED_SCHEDULERS:
            return multistep_from_scheduler(_traceable(sched), start=start)
        family = one_tap_family(sched)  # e.g. DDPM with timesteps=[...]: the count its loop steps through
        return coefficients_from_scheduler(sched if family is None else family.as_stepped(sched), eta=eta)

    def _loop_range(self, t_in: Any, sched_ts: torch.Tensor) -> tuple[int, int]:
        """Loop indices ``k0 .. k1-1`` of ``sched_ts`` the stock loop steps through."""
        T_full = len(sched_ts)
        k1 = T_full if self.spec.loop_end is None else self.spec.loop_end(self.pipe, self.call_args, sched_ts)
        k0 = self._loop_start(t_in, sched_ts, k1)
        if not 0 <= k0 < k1 <= T_full:
            raise RuntimeError(f"the stock loop's steps {k0}..{k1 - 1} are not within its {T_full} timesteps")
        return k0, k1

    def _loop_start(self, t_in: Any, sched_ts: torch.Tensor, k1: int) -> int:
        """The loop index of the first network call (img2img's ``strength``, the refiner's ``denoising_start``).

        The begin index the pipeline set (``get_timesteps``' ``set_begin_index``), where there is one: the stock
        scheduler steps from it. Else the index of the first call's timestep; where that timestep is in the list
        more than once (PNDM's repeated step), the loop's length ``_num_timesteps`` tells which.
        """
        if not (torch.is_tensor(t_in) and t_in.numel() and len(sched_ts) > 1):
            return 0
        t0 = float(t_in.reshape(-1)[0]) * (1000.0 if self.spec.flow_timestep else 1.0)
        dist = (sched_ts.detach().to("cpu", torch.float64) - t0).abs()
        nearest = (dist == dist.min()).nonzero().flatten().tolist()
        name = type(self.scheduler).__name__
        begin = getattr(self.scheduler, "begin_index", None)
        if begin is not None:
            if int(begin) not in nearest:
                raise RuntimeError(
                    f"{name}.begin_index is {begin} but the loop's first network call has timestep {t0:g} (index "
                    f"{nearest[0]}): this pipeline's loop does not start where its scheduler does"
                )
            return int(begin)
        n = getattr(self.pipe, "_num_timesteps", None)
        if len(nearest) == 1:
            k0 = nearest[0]
        elif isinstance(n, int) and k1 - n in nearest:
            k0 = k1 - n
        else:
            raise ValueError(
                f"{name}: the loop's first timestep {t0:g} is at indices {nearest} of the scheduler's timesteps and "
                f"{type(self.pipe).__name__} sets no begin index or loop length that tells where the loop starts"
            )
        if k0 and hasattr(self.scheduler, "index_for_timestep") and hasattr(self.scheduler, "set_begin_index"):
            # without a begin index the stock step looks its sigmas up by timestep (a repeated one: the second)
            stock = int(self.scheduler.index_for_timestep(sched_ts[k0]))
            if stock != k0:
                raise ValueError(
                    f"{name} without a begin index steps loop index {k0} with the sigmas of index {stock}: "
                    f"{type(self.pipe).__name__}'s loop is not the traced sampler (call scheduler.set_begin_index "
                    "where the loop starts, as diffusers' get_timesteps does)"
                )
        return k0

    def _solve(self, args: tuple, kwargs: dict) -> None:
        self.solved = True
        spec, pipe, sched = self.spec, self.pipe, self.scheduler
        cap = self._capture(args, kwargs)
        latent_name, named, x_in, t_in = cap.latent_name, dict(cap.conditioning), cap.x_in, cap.t_in
        do_cfg, scale, rescale = cap.guidance
        x_full = x_in
        g = 2 if do_cfg else 1
        N0 = x_in.shape[0]
        if N0 % g:
            raise RuntimeError(f"{type(pipe).__name__}: model batch {N0} is not a multiple of the {g} CFG branches")
        B = N0 // g
        C = spec.latent_channels(pipe) if spec.latent_channels is not None else None
        if C is not None and x_in.ndim >= 2 and x_in.shape[1] > C:  # inpainting: mask and image channels
            named[_EXTRA_CHANNELS] = x_in[:, C:]
            x_in = x_in[:, :C]
        sample_shape = tuple(x_in.shape[1:])
        x_dtype, device = x_in.dtype, x_in.device

        family = one_tap_family(sched)  # a family whose step takes eta (DDIM): the call's, 0 where not handed over
        eta = None if family is None else family.loop_eta(self.call_args.get("eta") if spec.step_eta else None)
        self.eta = eta
        sched_ts = sched.timesteps  # the order the stock loop visits: step i = T - 1 - k at loop index k
        T_full = len(sched_ts)
        k0, k1 = self._loop_range(t_in, sched_ts)
        full = self._coefficients(sched, eta, k0)
        multistep = not isinstance(full, SamplerCoefficients)
        if multistep and spec.step_on_model_input and bool((full.input_scale != 1).any()):
            raise ValueError(
                f"{type(pipe).__name__} hands scheduler.step the scaled model input instead of the latents, so with "
                f"{type(sched).__name__} (whose scale_model_input is not the identity) its loop is not the "
                "scheduler's sampler and the parallel solve cannot reproduce it; supported here: DDIMScheduler, "
                "DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler, PNDMScheduler, "
                "DEISMultistepScheduler"
            )
        x_in = self._unscaled_latents(x_in, full) if multistep else x_in
        # a traced operator starts at the loop's first step (k0), a one-tap one covers every timestep
        traced_ts = sched_ts[k0:] if multistep else sched_ts
        if full.num_steps != len(traced_ts) or not torch.equal(
            traced_ts.detach().to("cpu", torch.float64).flip(0), full.timesteps
        ):
            raise RuntimeError("the scheduler's timesteps do not match the extracted coefficients")
        coeffs = _slice_steps(full, T_full - k1, full.num_steps if multistep else T_full - k0)
        T = k1 - k0
        self.T, self.B, self.x_dtype, self.k0 = T, B, x_dtype, k0
        self.loop_ts = sched_ts[k0:k1]
        self.ts_by_step = self.loop_ts.flip(0).to(device)
        self.x_start = x_in[:B]

        draws, in_float32 = stock_draws(sched, coeffs, self.loop_ts, eta)
        noise_dtype = torch.float32 if in_float32 else x_dtype
        noise = self._draw_noise(T, N0 if spec.step_rows_cfg else B, B, sample_shape, noise_dtype, device, draws)
        if self.controlnet is not None:
            named[_CONTROL] = self._control_conditioning(x_full, T)

        learned_sigma = spec.learned_sigma and getattr(self.model.config, "out_channels", None) == 2 * (
            sample_shape[0] if sample_shape else 0
        )
        branches = _PipelineDenoiser(
            self.model,
            latent_name,
            named,
            self.ts_by_step,
            g,
            B,
            N0,
            x_dtype,
            spec.flow_timestep,
            sample_shape[0] if learned_sigma else None,
        )
        if self.controlnet is not None:
            branches.controlnet, branches.control_latent = self.controlnet, self.control_latent
        x_T = x_in[:B].to(torch.float64)  # CFG-doubled inputs: both halves are the same latents
        self._solve_problem(branches, (do_cfg, scale, rescale), coeffs, x_T, noise)

    def _draw_noise(
        self, T: int, rows: int, B: int, sample_shape: tuple, dtype, device, draws: list[int]
    ) -> torch.Tensor | None:
        """Pre-draw the step noise ``[T, B, *S]`` (float64) with the generator the loop hands ``step``."""
        if not draws:
            return None
        self.step_generator = self.call_args.get("generator") if self.spec.step_generator else None
        return draw_step_noise(draws, T, rows, B, sample_shape, self.step_generator, device, dtype)

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
