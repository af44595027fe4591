"""Diffusion-policy building blocks: Chi et al.'s ``ConditionalUnet1D`` (``unet1d.py``) and, behind the optional
``[sim]`` extra, a Meta-World task with its scripted expert (``metaworld_task.py``)."""

from __future__ import annotations

from .unet1d import (
    ConditionalResidualBlock1D,
    ConditionalUnet1D,
    Conv1dBlock,
    Downsample1d,
    SinusoidalPosEmb,
    Upsample1d,
)

__all__ = [
    "ConditionalUnet1D",
    "ConditionalResidualBlock1D",
    "Conv1dBlock",
    "Downsample1d",
    "Upsample1d",
    "SinusoidalPosEmb",
]
