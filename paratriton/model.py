"""The one model interface every solver uses, and classifier-free guidance as a wrapper around it.

A *denoiser* is any callable ``model(x, step_index) -> output`` with

    x:           ``[N, *sample_shape]`` tensor (the solver's state dtype; cast inside the model if needed),
    step_index:  ``[N]`` int64 tensor, the sampler step ``i`` of each row (``0`` = last step),
    output:      ``[N, *sample_shape]``, the raw network output in the sampler's prediction type.

A denoiser may carry ``compute_dtype`` (e.g. ``torch.bfloat16``): the precision its network computes in, when its
output is cast to a wider dtype. The parallel solvers then stop at that precision's rounding floor
(``solvers/tolerance.py``); an fp16/bf16 output dtype says the same by itself.

Solvers batch a window of steps over ``B`` trajectories into one call; rows are ordered step-major
(``row = w * B + b`` for window position ``w`` and trajectory ``b``), so ``row % B`` is the trajectory.
"""

from __future__ import annotations

import math
from typing import Callable, Protocol

import torch

__all__ = ["Denoiser", "ClassifierFreeGuidance", "rescale_noise_cfg"]


class Denoiser(Protocol):
    def __call__(self, x: torch.Tensor, step_index: torch.Tensor) -> torch.Tensor: ...


def rescale_noise_cfg(guided: torch.Tensor, cond: torch.Tensor, guidance_rescale: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2023, sec. 3.4), per row, as diffusers' ``rescale_noise_cfg``."""
    dims = tuple(range(1, cond.ndim))
    std_cond = cond.std(dim=dims, keepdim=True)
    std_cfg = guided.std(dim=dims, keepdim=True)
    rescaled = guided * (std_cond / std_cfg)
    return guidance_rescale * rescaled + (1 - guidance_rescale) * guided


class ClassifierFreeGuidance:
    """Turn a two-branch network into a guided denoiser with one batched call per solver iteration.

    ``branch_model(x2, step_index2)`` receives ``[2N, ...]`` rows: the unconditional half first and the
    conditional half second (``cond_first=True`` swaps them, as DiT does). The guided output is
    ``uncond + scale * (cond - uncond)``, optionally followed by guidance rescale. With ``pass_branch=True`` the
    call is ``branch_model(x2, step_index2, cond=...)`` with a ``[2N]`` bool flag marking the conditional rows.
    """

    def __init__(
        self,
        branch_model: Callable[..., torch.Tensor],
        guidance_scale: float,
        guidance_rescale: float = 0.0,
        cond_first: bool = False,
        pass_branch: bool = False,
    ) -> None:
        try:
            scale = float(guidance_scale)
        except (TypeError, ValueError):
            raise TypeError(
                f"guidance_scale must be a finite number >= 0, got {type(guidance_scale).__name__} {guidance_scale!r}"
            ) from None
        if not math.isfinite(scale) or scale < 0:
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale}")
        if not 0.0 <= guidance_rescale <= 1.0:
            raise ValueError(f"guidance_rescale must be in [0, 1], got {guidance_rescale}")
        self.branch_model = branch_model
        self.guidance_scale = float(guidance_scale)
        self.guidance_rescale = float(guidance_rescale)
        self.cond_first = cond_first
        self.pass_branch = pass_branch
        # the network's precision, for the solvers' rounding floor (``solvers/tolerance.py``); None: full precision
        self.compute_dtype = getattr(branch_model, "compute_dtype", None)

    def __call__(self, x: torch.Tensor, step_index: torch.Tensor) -> torch.Tensor:
        x2, s2 = torch.cat([x, x]), torch.cat([step_index, step_index])
        if self.pass_branch:  # a per-row flag, so the rows need not stay in place (e.g. sharded over ranks)
            half = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
            cond = torch.cat([~half, half]) if self.cond_first else torch.cat([half, ~half])
            out = self.branch_model(x2, s2, cond=cond)
        else:
            out = self.branch_model(x2, s2)
        if not torch.is_tensor(out) or out.shape[:1] != x2.shape[:1]:
            raise ValueError(
                f"ClassifierFreeGuidance: branch_model must return one row per input row ([uncond; cond]: "
                f"{[x2.shape[0], *x2.shape[1:]]}), got {list(getattr(out, 'shape', [type(out).__name__]))}"
            )
        first, second = out.chunk(2)
        cond, uncond = (first, second) if self.cond_first else (second, first)
        guided = uncond + self.guidance_scale * (cond - uncond)
        if self.guidance_rescale > 0:
            guided = rescale_noise_cfg(guided, cond, self.guidance_rescale)
        return guided
