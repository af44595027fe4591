"""Which implementation each solver op uses per device, and the loading of the compiled extension ``paratriton._C``.

Every op is one name, ``torch.ops.paratriton.<op>``, defined in Python (``torch.library.custom_op`` in
``paratriton/ops/<op>/__init__.py``: schema, fake implementation, the plain-torch default and the Triton CUDA
kernel). When the compiled extension is present and matches the running torch, its kernels are registered with the
dispatcher on top of those:

* CPU: a ``CPU``-key kernel outranks custom_op's ``CompositeExplicitAutograd`` default, so every op runs the C++
  kernel on CPU tensors (``"cpp"``), else the plain-torch reference (``"torch"``).
* CUDA: the ops named by ``PARATRITON_CUDA_OPS=all|none|op1,op2`` (default: ``DEFAULT_CUDA_OPS``, none for now)
  take the compiled CUDA kernel instead of Triton (``"cuda"``); the others keep Triton (``"triton"``).

``PARATRITON_DISABLE_EXT=1`` keeps the extension out entirely. A missing extension is logged once at INFO, an
unusable one (import error, other torch version, stale build) once at WARNING; both fall back silently otherwise.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any

import torch

from . import ops as _ops  # noqa: F401 -- the custom ops must be defined before compiled kernels override them

log = logging.getLogger("paratriton")

OPS = (
    "step_residual",
    "order_k_residual",
    "anderson_gram",
    "masked_lstsq",
    "anderson_update",
    "taa_residual",
    "taa_update",
)
API_VERSION = 1  # must equal csrc/common.h kApiVersion: a stale build (sources changed, not rebuilt) is refused
# CUDA ops whose compiled kernel replaces the Triton one by default. The CUDA kernels are faster than Triton on an
# H200 (benchmarks/RESULTS.md, "Compiled extension") but their GPU correctness tests have not run on a GPU yet, so
# they are opt-in (PARATRITON_CUDA_OPS=all) until tests/test_cpp_ext.py -m gpu has passed there.
DEFAULT_CUDA_OPS: tuple[str, ...] = ()

_status: dict[str, Any] = {"loaded": False, "reason": "not loaded yet", "abi": None, "cpu": (), "cuda": ()}


def _cuda_ops_wanted(available: list[str], spec: str | None = None) -> list[str]:
    spec = (os.environ.get("PARATRITON_CUDA_OPS", "") if spec is None else spec).strip().lower()
    if spec in ("", "default"):
        wanted = DEFAULT_CUDA_OPS
    elif spec == "all":
        wanted = tuple(available)
    elif spec == "none":
        wanted = ()
    else:
        wanted = tuple(s.strip() for s in spec.split(",") if s.strip())
    return [op for op in wanted if op in available]


def _load(cuda_spec: str | None = None) -> None:
    """Import ``paratriton._C``, check it against this torch and these sources, register its kernels."""
    if os.environ.get("PARATRITON_DISABLE_EXT", "0") not in ("", "0"):
        _status.update(reason="disabled by PARATRITON_DISABLE_EXT")
        log.info("paratriton: compiled extension disabled (PARATRITON_DISABLE_EXT); using the Triton/torch kernels")
        return
    try:
        # import_module, not "from . import _C": inside the package's own import a missing submodule would surface
        # as a generic ImportError ("partially initialized module") and read like a broken build
        _C = importlib.import_module(f"{__package__}._C")
    except ModuleNotFoundError as e:
        if e.name not in (f"{__package__}._C", "_C"):
            raise
        _status.update(reason="not built")
        log.info(
            "paratriton: compiled extension paratriton._C not built; using the Triton/torch kernels (docs/build.md)"
        )
        return
    except ImportError as e:  # typically undefined symbols: built against another torch
        _status.update(reason=f"import failed: {e}")
        log.warning(
            "paratriton: compiled extension paratriton._C failed to import (%s); using the Triton/torch "
            "kernels. Rebuild it against this torch (docs/build.md)",
            e,
        )
        return
    built, running = _C.torch_version(), torch.__version__.split("+")[0]
    problem = None
    if _C.api_version() != API_VERSION:
        problem = f"stale build (kernel API {_C.api_version()}, sources expect {API_VERSION})"
    elif built != running:
        problem = f"built against torch {built}, running torch {running}"
    if problem is not None:
        _status.update(reason=f"mismatch: {problem}", abi=_C.abi())
        log.warning(
            "paratriton: compiled extension paratriton._C not used: %s; using the Triton/torch kernels. "
            "Rebuild it: pip install --no-build-isolation -e . (docs/build.md)",
            problem,
        )
        return
    cuda_ops: list[str] = []
    if _C.has_cuda():
        # the CUDA part needs a CUDA torch of the same major CUDA version as the nvcc that built it
        rt = torch.version.cuda
        if rt is not None and rt.split(".")[0] == _C.cuda_version().split(".")[0]:
            cuda_ops = _cuda_ops_wanted(list(_C.cuda_ops()), cuda_spec)
        else:
            log.warning(
                "paratriton: CUDA kernels of paratriton._C (CUDA %s) not used with torch CUDA %s", _C.cuda_version(), rt
            )
    reg = _C.register_kernels(True, cuda_ops)
    _status.update(loaded=True, reason="ok", abi=_C.abi(), cpu=tuple(reg["cpu"]), cuda=tuple(reg["cuda"]))


def backends() -> dict[str, dict[str, str]]:
    """The implementation in use for each op and device: ``{op: {"cpu": "cpp" | "torch",
    "cuda": "cuda" | "triton"}}`` (read off what is registered with the dispatcher now)."""
    out = {}
    for op in OPS:
        cpu_cpp = torch._C._dispatch_has_kernel_for_dispatch_key(f"paratriton::{op}", "CPU")
        out[op] = {
            "cpu": "cpp" if cpu_cpp and op in _status["cpu"] else "torch",
            "cuda": "cuda" if op in _status["cuda"] else "triton",
        }
    return out


def extension_status() -> dict[str, Any]:
    """``{"loaded": bool, "reason": str, "abi": str | None, "cpu": ops, "cuda": ops}`` of ``paratriton._C``."""
    return dict(_status)


def use_extension(enabled: bool, cuda_ops: str | None = None) -> None:
    """Register (True) or drop (False) the compiled kernels at run time, e.g. to compare against the defaults.

    cuda_ops: ``"all"``, ``"none"`` or ``"op1,op2"``: which CUDA kernels to register (default: as at import).
    """
    if not enabled or cuda_ops is not None:
        if _status["loaded"]:
            from . import _C

            _C.unregister()
        _status.update(loaded=False, reason="dropped by use_extension(False)", cpu=(), cuda=())
    if enabled and not _status["loaded"]:
        _load(cuda_ops)


_load()

__all__ = ["backends", "extension_status", "use_extension", "OPS", "DEFAULT_CUDA_OPS"]
