"""The step noise of stochastic samplers, drawn up front exactly as the stock ``scheduler.step`` calls would draw it.

A parallel solve needs every step's noise ``xi_i`` before the first iteration. diffusers' schedulers draw it inside
``step`` with ``randn_tensor`` (DDPM when ``t > 0``, DDIM when ``eta > 0``, flow-match Euler with
``stochastic_sampling``; the traced schedulers record their own draws as ``noise_draw_steps``), so drawing the same
shapes, in the same order, with the same generator and dtype reproduces the loop's noise.
"""

from __future__ import annotations

import torch

from .schedule import SamplerCoefficients

__all__ = ["stock_draws", "draw_step_noise"]


def _one_tap_draws(name: str, scheduler, timestep: torch.Tensor, eta: float | None) -> bool:
    """Whether the stock ``scheduler.step`` draws noise at this timestep (mirrors diffusers 0.42.1)."""
    if name == "DDPMScheduler":
        return bool(timestep > 0)
    if name == "DDIMScheduler":
        return eta is not None and eta > 0
    return bool(scheduler.config.stochastic_sampling)  # FlowMatchEulerDiscreteScheduler


def stock_draws(scheduler, coeffs, loop_timesteps: torch.Tensor, eta: float | None) -> tuple[list[int], bool]:
    """The solver steps whose ``step`` draws noise, in the loop's draw order, and whether it draws in float32
    (else in the model output's dtype). ``loop_timesteps``: the loop's timesteps, first (noisiest) first; solver
    step ``T - 1 - k`` runs at ``loop_timesteps[k]``."""
    if not isinstance(coeffs, SamplerCoefficients):  # traced: the tracer recorded the draws
        return list(coeffs.noise_draw_steps), coeffs.noise_dtype == "float32"
    name = type(scheduler).__name__
    T = len(loop_timesteps)
    draws = [T - 1 - k for k in range(T) if _one_tap_draws(name, scheduler, loop_timesteps[k], eta)]
    # DDPM/DDIM draw in model_output's dtype, flow matching in the float32 it upcasts the sample to
    return draws, name == "FlowMatchEulerDiscreteScheduler"


def draw_step_noise(
    draws: list[int],
    T: int,
    rows: int,
    B: int,
    sample_shape: tuple[int, ...],
    generator,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """``[T, B, *S]`` float64 step noise: one ``randn_tensor((rows, *S))`` per step in ``draws`` (draw order), of
    which the first ``B`` rows are kept (DiT steps a ``[cond; uncond]`` pair and keeps the cond half). None when
    nothing is drawn."""
    # deferred: diffusers is heavy and optional (``import paratriton`` never imports it)
    from diffusers.utils.torch_utils import randn_tensor

    if not draws:
        return None
    drawn = [randn_tensor((rows, *sample_shape), generator=generator, device=device, dtype=dtype)[:B] for i in draws]
    noise = torch.zeros(T, B, *sample_shape, dtype=torch.float64, device=device)
    # one scatter, not a copy per step (a control loop draws 99 steps' noise every chunk)
    return noise.index_copy_(0, torch.tensor(draws, device=device), torch.stack(drawn).to(torch.float64))
