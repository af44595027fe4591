"""The problem stage: what the captured first call poses, as a frozen ``Problem``.

``_Problem`` (mixed into ``_ParallelCall``) takes the ``Captured`` first network call and the call's scheduler copy
and returns the denoiser of the stacked guidance branches, the guidance, the step operator over the loop's own
steps (``_loop_range``: img2img's ``strength``, the refiner's ``denoising_start``, SDXL's ``denoising_end``), the
initial latents ``x_T`` and the pre-drawn step noise. It records on the call what the replay checks against
(``T``, ``B``, ``loop_ts``, ``x_start``, ``eta``, ``step_generator``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..schedulers import (
    SamplerCoefficients,
    draw_step_noise,
    one_tap_family,
    stock_draws,
)
from ._capture import Captured
from ._denoiser import _CONTROL, _EXTRA_CHANNELS, _EXTRA_TOKENS, _PipelineDenoiser, from_list_api, route_by_step
from ._guidance import GuidancePlan, plan_guidance
from ._operator import _slice_steps, step_operator


@dataclasses.dataclass(frozen=True)
class Problem:
    """The trajectory to solve: ``branches`` (the network on ``[g * W * B, *S]`` rows), ``guidance`` (how the
    branches combine), the step operator ``coeffs`` over the loop's steps, ``x_T [B, *S]`` (float64) and the step
    noise ``[T, rows, *S]`` (or None)."""

    branches: _PipelineDenoiser
    guidance: GuidancePlan
    coeffs: Any
    x_T: torch.Tensor
    noise: torch.Tensor | None


def _check_image_embeds(pipe: Any, named: dict, rows: int) -> None:
    """IP-Adapter image embeddings must have one row per model row: the stock attention processor reshapes any other
    count into extra image tokens per row (``view(batch, -1, ...)``), which a call of many steps' rows cannot repeat."""
    embeds = (named.get("added_cond_kwargs") or {}).get("image_embeds")
    for e in embeds if isinstance(embeds, (list, tuple)) else []:
        if torch.is_tensor(e) and e.shape[0] != rows:
            raise ValueError(
                f"{type(pipe).__name__}: ip_adapter_image_embeds reach the network with {e.shape[0]} rows for a "
                f"batch of {rows}; the parallel call needs one per row. Pass [negative; positive] embeddings of "
                "shape [2, num_images, ...] per IP-Adapter with CFG ([1, num_images, ...] without): the pipeline "
                "repeats them per prompt"
            )


class _Problem:
    """The problem stage of one parallel call."""

    spec: Any
    pipe: Any
    scheduler: Any
    call_args: dict
    model: torch.nn.Module
    experts: dict[str, torch.nn.Module]
    route: list[str] | None
    controlnet: torch.nn.Module | None
    _control_conditioning: Any  # the capture stage's (ControlNet)
    scaled: tuple[torch.Tensor, torch.Tensor] | None
    T: int
    B: int
    k0: int
    x_dtype: torch.dtype
    latent_dtype: torch.dtype
    calls_per_step: int
    calls_by_step: list[int] | None
    prepared: Any
    eta: float | None
    loop_ts: torch.Tensor
    ts_by_step: torch.Tensor
    x_start: torch.Tensor
    step_generator: Any

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

    def _loop_range(self, t_in: Any, sched_ts: torch.Tensor) -> tuple[int, int]:
        """Loop indices ``k0 .. k1-1`` of ``sched_ts`` the stock loop steps through."""
        T_full = len(sched_ts)
        end = self.spec.loop.end
        k1 = T_full if end is None else end(self.pipe, self.call_args, sched_ts)
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
        t0 = float(t_in.reshape(-1)[0])
        form, n_train = self.spec.step.timestep, getattr(self.scheduler.config, "num_train_timesteps", 1000)
        inverse = {"t/1000": t0 * 1000.0, "1-t/N": (1.0 - t0) * n_train, "(1000-t)/1000": 1000.0 - 1000.0 * t0}
        if form == "t*timestep_scale":  # SANA
            inverse[form] = t0 / float(self.model.config.timestep_scale)
        t0 = inverse.get(form, t0)
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

    def _pose(self, cap: Captured) -> Problem:
        """The problem the captured first call poses; records what the replay checks against."""
        self.solved = True
        spec, pipe, sched = self.spec, self.pipe, self.scheduler
        latent_name, named, x_in, t_in = cap.latent_name, dict(cap.conditioning), cap.x_in, cap.t_in
        if spec.calls.list_axis is not None:  # Z-Image: lists of per-sample tensors
            x_in, named = from_list_api(x_in, named, spec.calls.list_axis)
        do_cfg = cap.guidance[0]
        x_full = x_in
        g = 2 if do_cfg else 1
        N0 = x_in.shape[0]
        if N0 % g:
            raise RuntimeError(f"{type(pipe).__name__}: model batch {N0} is not a multiple of the {g} CFG branches")
        B = N0 // g
        _check_image_embeds(pipe, named, N0)
        C = spec.calls.latent_channels(pipe) if spec.calls.latent_channels is not None else None
        if C is not None and x_in.ndim >= 2 and x_in.shape[1] > C:  # inpainting: mask and image channels
            named[_EXTRA_CHANNELS] = x_in[:, C:]
            x_in = x_in[:, :C]
        L = self.prepared.shape[1] if spec.calls.latent_tokens and torch.is_tensor(self.prepared) else None
        if L is not None and x_in.ndim >= 2 and x_in.shape[1] > L:  # image tokens after the latents' tokens
            named[_EXTRA_TOKENS] = x_in[:, L:]
            x_in = x_in[:, :L]
        sample_shape = tuple(x_in.shape[1:])
        x_dtype, device = x_in.dtype, x_in.device

        family = one_tap_family(sched)  # a family whose step takes eta (DDIM): the call's, 0 where not handed over
        eta = None if family is None else family.loop_eta(self.call_args.get("eta") if spec.step.eta else None)
        self.eta = eta
        sched_ts = sched.timesteps  # the order the stock loop visits: step i = T - 1 - k at loop index k
        T_full = len(sched_ts)
        k0, k1 = self._loop_range(t_in, sched_ts)
        full = step_operator(sched, eta, k0)
        multistep = not isinstance(full, SamplerCoefficients)
        if multistep and spec.step.on_model_input and bool((full.input_scale != 1).any()):
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
        latents = self._loop_latents(x_in[:B])
        self.x_start, self.latent_dtype = latents, latents.dtype

        draws, in_float32 = stock_draws(sched, coeffs, self.loop_ts, eta)
        noise_dtype = torch.float32 if in_float32 else latents.dtype
        noise = self._draw_noise(T, N0 if spec.step.rows_cfg else B, B, sample_shape, noise_dtype, device, draws)
        if self.controlnet is not None:
            named[_CONTROL] = self._control_conditioning(x_full, T)

        route = self._route(device)
        learned_sigma = spec.calls.learned_sigma and getattr(self.model.config, "out_channels", None) == 2 * (
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
            spec.step.timestep,
            sample_shape[0] if learned_sigma else None,
        )
        if self.controlnet is not None:
            branches.controlnet, branches.control_latent = self.controlnet, self.control_latent
        if route is not None:
            branches.experts, branches.expert_by_step = route
        branches.num_train_timesteps = int(getattr(sched.config, "num_train_timesteps", 1000))
        branches.negate = spec.step.negate
        branches.timestep_arg, branches.list_axis = spec.calls.timestep_arg, spec.calls.list_axis
        branches.row_dims = dict(spec.calls.row_dims)
        branches.shared = spec.calls.shared
        if spec.step.timestep == "t*timestep_scale":
            branches.timestep_scale = float(self.model.config.timestep_scale)
        x_T = latents.to(torch.float64)  # CFG-doubled inputs: both halves are the same latents
        plan = plan_guidance(spec.guidance, pipe, self.call_args, cap.guidance, self.loop_ts)
        if plan.cfg_by_step is not None and self.calls_per_step == 2:  # one call on the steps without CFG
            self.calls_by_step = [2 if on else 1 for on in reversed(plan.cfg_by_step)]
        return Problem(branches, plan, coeffs, x_T, noise)

    def _loop_latents(self, first: torch.Tensor) -> torch.Tensor:
        """The latents the loop keeps: ``prepare_latents``' own where the loop casts them to the network's dtype for
        every call (Wan: float32 latents, a bfloat16 transformer), else the network's first input ``first``."""
        kept = self.prepared
        if (
            torch.is_tensor(kept)
            and kept.dtype != first.dtype
            and kept.shape == first.shape
            and torch.equal(kept.to(first.device, first.dtype), first)
        ):
            return kept.to(first.device)
        return first

    def _route(self, device: torch.device) -> tuple[list, torch.Tensor] | None:
        """``Calls.denoiser_at``: the network of every loop step (recorded for the replay's check)."""
        at = self.spec.calls.denoiser_at
        if at is None:
            return None
        route = [str(name) for name in at(self.pipe, self.call_args, self.loop_ts)]
        unknown = sorted(set(route) - set(self.experts))
        if len(route) != self.T or unknown:
            raise ValueError(f"{type(self.pipe).__name__}: the loop's steps call {route}; missing: {unknown}")
        self.route = route
        return route_by_step(route, self.experts, self.spec.calls.denoiser, device)

    def _draw_noise(
        self, T: int, rows: int, B: int, sample_shape: tuple, dtype, device, draws: list[int]
    ) -> torch.Tensor | None:
        """Pre-draw the step noise ``[T, B, *S]`` (float64) with the generator the loop hands ``step``."""
        if not draws:
            return None
        self.step_generator = self.call_args.get("generator") if self.spec.step.generator else None
        return draw_step_noise(draws, T, rows, B, sample_shape, self.step_generator, device, dtype)
