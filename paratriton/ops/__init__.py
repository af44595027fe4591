"""Solver ops. Each op lives in its own folder: ``naive.py`` is the plain-torch reference (the oracle), ``fused.py``
the Triton kernels, and ``__init__.py`` registers ``torch.ops.paratriton.<op>`` (CPU: the reference, or the C++
kernel of ``paratriton._C`` when it is built; CUDA: the Triton kernels, or opt-in CUDA kernels of
``paratriton._C``). The engine's ops (``window_residual``, ``window_fixed_point``, ``window_taa``,
``multistep_drift``) are exported as the registered ops, their references at ``.naive``; for the sliced per-op
building blocks the names exported here are the references and the registered ops are ``<op>_op`` in each folder.
"""

from .anderson_gram import anderson_gram
from .anderson_update import anderson_update
from .masked_lstsq import masked_lstsq
from .multistep_drift import multistep_drift
from .multistep_drift import naive as _multistep_drift_naive
from .order_k_residual import order_k_residual
from .step_residual import step_residual
from .taa import taa_residual, taa_update
from . import window_taa
from .window_fixed_point import naive as _window_fixed_point_naive
from .window_fixed_point import window_fixed_point
from .window_residual import naive as _window_residual_naive
from .window_residual import window_residual

# the engine's ops are the registered ops, their references beside them (``paratriton.ops.<op>.naive``)
window_residual.naive = _window_residual_naive
window_fixed_point.naive = _window_fixed_point_naive
multistep_drift.naive = _multistep_drift_naive

__all__ = [
    "step_residual",
    "order_k_residual",
    "anderson_gram",
    "masked_lstsq",
    "anderson_update",
    "taa_residual",
    "taa_update",
    "window_residual",
    "window_fixed_point",
    "window_taa",
    "multistep_drift",
]
