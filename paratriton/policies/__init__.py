"""Diffusion policies: exact parallel action sampling (``adapters.py``: Chi et al.'s and LeRobot's policies by duck
typing, warm start across control steps)."""

from .adapters import PolicyState, parallelize_policy, policy_kind, shift_trajectory

__all__ = ["parallelize_policy", "PolicyState", "policy_kind", "shift_trajectory"]
