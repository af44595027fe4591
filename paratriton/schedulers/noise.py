"""The step noise of stochastic samplers, drawn up front exactly as the stock ``scheduler.step`` calls would draw it.

A parallel solve needs every step's noise ``xi_i`` before the first iteration. diffusers' schedulers draw it inside
``step`` with ``randn_tensor`` (DDPM when ``t > 0``, DDIM when ``eta > 0``, flow-match Euler with
``stochastic_sampling``; the traced schedulers record their own draws as ``noise_draw_steps``), so drawing the same
shapes, in the same order, with the same generator and dtype reproduces the loop's noise. Which steps draw, and in
which dtype, is each scheduler family's rule (``stock_draws`` in ``paratriton.schedulers``); here the draws.
"""

from __future__ import annotations

import torch

__all__ = ["draw_step_noise"]


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
