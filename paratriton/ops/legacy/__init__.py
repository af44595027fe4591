"""The older generation of ops, quarantined: no default path reaches them, and ``import paratriton`` (or
``paratriton.ops``) does not import this package.

* ``anderson_gram`` and ``anderson_update``: the Anderson Gram pass and update on explicit difference stacks,
  registered as ``torch.ops.paratriton.anderson_gram`` / ``anderson_update`` when this package is imported (CPU: the
  plain-torch reference, CUDA: Triton). The solvers' Anderson methods run ``paratriton.ops.window_taa`` instead.
* ``residual_pass`` (``residual_pass.py``) and ``anderson_update.fused.ring_update_triton``: the Triton kernels that
  served ``step_residual``, ``order_k_residual``, ``taa_residual`` and ``taa_update`` on CUDA tensors. The engine
  calls those four ops on CPU tensors only (the CPU kernels of ``window_fixed_point`` and ``window_taa``, backed by
  the C++ kernels of ``paratriton._C``); on CUDA it runs the window ops' own Triton kernels. So those ops now run
  their plain-torch reference on CUDA tensors, and these kernels are plain functions, registered for nothing.

Kept so that the first kernel measurements (``benchmarks/bench_kernels.py``) stay reproducible, and tested
(``tests/ops/test_legacy.py``) while they are here. Nothing outside ``legacy``, its tests and that benchmark may
import it (``tests/test_contributing.py`` checks); remove the three together.
"""

from .anderson_gram import anderson_gram
from .anderson_update import anderson_update

__all__ = ["anderson_gram", "anderson_update"]
