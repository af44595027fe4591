"""Solver ops. Each op lives in its own folder: ``naive.py`` is the plain-torch reference (the oracle), ``fused.py``
the Triton kernels where the op has a CUDA kernel, and ``__init__.py`` registers ``torch.ops.paratriton.<op>``.
``paratriton.ops.<op>`` is that registered op and ``paratriton.ops.<op>.naive`` its reference module.

* The engine's ops (``solvers/rules.py`` ``KERNELS``), on every device: ``thresholds``, ``window_residual``,
  ``window_gains``, ``window_track``, ``window_close``, ``window_fixed_point``, ``window_taa`` (``push``, ``plan``,
  ``update``), ``multistep_drift`` and ``masked_lstsq``. CUDA: Triton.
* Their CPU building blocks: ``step_residual``, ``order_k_residual``, ``taa_residual`` and ``taa_update``. The CPU
  kernels of ``window_fixed_point`` and ``window_taa`` run them on the live window; with ``masked_lstsq`` they are
  the ops with C++ kernels (``paratriton._C``, ``paratriton._backends.OPS``). On CUDA they run their reference.

The older generation (the sliced Triton kernels and the ``anderson_gram`` / ``anderson_update`` ops) is quarantined
in ``paratriton.ops.legacy``, which nothing here imports.
"""

from .masked_lstsq import masked_lstsq
from .multistep_drift import multistep_drift
from .order_k_residual import order_k_residual
from .step_residual import step_residual
from .taa import taa_residual, taa_update
from .thresholds import thresholds
from . import window_taa
from .window_close import window_close
from .window_fixed_point import window_fixed_point
from .window_gains import window_gains
from .window_track import window_track
from .window_residual import window_residual

__all__ = [
    "window_residual",
    "window_fixed_point",
    "window_gains",
    "window_track",
    "window_close",
    "thresholds",
    "window_taa",
    "multistep_drift",
    "masked_lstsq",
    "step_residual",
    "order_k_residual",
    "taa_residual",
    "taa_update",
]
