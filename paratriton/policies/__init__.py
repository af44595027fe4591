"""Diffusion policies: exact parallel action sampling.

* ``adapters.py``: ``parallelize_policy`` for Chi et al.'s and LeRobot's policies by duck typing, with warm start
  across control steps;
* ``unet1d.py``: Chi et al.'s ``ConditionalUnet1D``;
* ``metaworld_task.py`` (behind the optional ``[sim]`` extra): a Meta-World task with its scripted expert.
"""

from __future__ import annotations

from .adapters import PolicyState, parallelize_policy, policy_kind, shift_trajectory
from .unet1d import (
    ConditionalResidualBlock1D,
    ConditionalUnet1D,
    Conv1dBlock,
    Downsample1d,
    SinusoidalPosEmb,
    Upsample1d,
)

__all__ = [
    "parallelize_policy",
    "PolicyState",
    "policy_kind",
    "shift_trajectory",
    "ConditionalUnet1D",
    "ConditionalResidualBlock1D",
    "Conv1dBlock",
    "Downsample1d",
    "Upsample1d",
    "SinusoidalPosEmb",
]
