"""Solver ops. Each op lives in its own folder: ``naive.py`` is the plain-torch reference (the oracle)."""

from .anderson_gram import anderson_gram
from .anderson_update import anderson_update
from .masked_lstsq import masked_lstsq
from .order_k_residual import order_k_residual
from .step_residual import step_residual

__all__ = ["step_residual", "order_k_residual", "anderson_gram", "masked_lstsq", "anderson_update"]
