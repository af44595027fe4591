"""Solver ops. Each op lives in its own folder: ``naive.py`` is the plain-torch reference (the oracle), ``fused.py``
the Triton kernels, and ``__init__.py`` registers ``torch.ops.paratriton.<op>`` (CPU: the reference, or the C++
kernel of ``paratriton._C`` when it is built; CUDA: the Triton kernels, or opt-in CUDA kernels of ``paratriton._C``). The names exported here are the references; the registered ops are ``<op>_op`` in each folder.
"""

from .anderson_gram import anderson_gram
from .anderson_update import anderson_update
from .masked_lstsq import masked_lstsq
from .order_k_residual import order_k_residual
from .step_residual import step_residual
from .taa import taa_residual, taa_update

__all__ = ["step_residual", "order_k_residual", "anderson_gram", "masked_lstsq", "anderson_update",
           "taa_residual", "taa_update"]
