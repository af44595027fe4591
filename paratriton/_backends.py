"""Which implementation each solver op uses per device, and the loading of the compiled extension.

Every op is one name, ``torch.ops.paratriton.<op>``, defined in Python (``torch.library.custom_op`` in
``paratriton/ops/<op>/__init__.py``: schema, fake implementation, the plain-torch default and, where it has one, the
Triton CUDA kernel). The compiled extension is two modules on the LibTorch stable ABI (csrc/, docs/build.md), built
against any torch >= 2.10 and loadable on torch 2.10 and every later release:

* ``paratriton._C``: C++ CPU kernels of the ops of ``OPS``, registered by the module itself as ``paratriton_C::<op>``;
* ``paratriton._C_cuda``: the CUDA kernel of ``masked_lstsq`` as ``paratriton_cuda::masked_lstsq`` (built only where
  nvcc and a CUDA torch were found).

``OPS`` is the op list of the C++ sources (``PARATRITON_OPS`` in csrc/common.h, the order of the call counters):
each module exports it as its ``OPS`` constant, a build whose list differs is refused like a stale one, and
tests/test_cpp_ext.py checks this copy against the header, the registrations and ``paratriton.ops``.

The switch is here, in Python: ``torch.ops.paratriton.<op>`` gets a ``CPU`` kernel that calls ``paratriton_C``
(it outranks custom_op's ``CompositeExplicitAutograd`` default: ``"cpp"``, else the plain-torch reference
``"torch"``), and the ops named by ``PARATRITON_CUDA_OPS=all|none|op1,op2`` (default ``DEFAULT_CUDA_OPS``: none yet)
a ``CUDA`` kernel that calls ``paratriton_cuda`` instead of Triton (``"cuda"``, else ``"triton"``; ``"torch"`` for
the CPU building blocks, which have no CUDA kernel). The registrations are ``torch.library.Library`` objects:
dropping them (``use_extension(False)``) restores the Python kernels.

``PARATRITON_DISABLE_EXT=1`` keeps the extension out (logged at INFO). Otherwise a missing or unusable extension
(not built, torch older than 2.10, import error, stale build) is one WARNING line on the ``paratriton`` logger at
import, which Python prints to stderr when logging is not configured; ``extension_status()["reason"]`` keeps it.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import warnings
from types import ModuleType
from typing import Any, Callable

import torch

from . import ops as _ops  # noqa: F401 -- the custom ops must be defined before the extension's kernels route them
from .ops._register import register_triton

log = logging.getLogger("paratriton")

# the ops with compiled kernels: csrc/common.h PARATRITON_OPS, in its order (the call counters' order)
OPS = ("step_residual", "order_k_residual", "masked_lstsq", "taa_residual", "taa_update")
API_VERSION = 3  # must equal csrc/common.h kApiVersion: a stale build (sources changed, not rebuilt) is refused
MIN_TORCH = (2, 10)  # setup.py's TORCH_TARGET_VERSION: the oldest torch the stable-ABI modules load on
CUDA_OPS = ("masked_lstsq",)  # the ops csrc/cuda_ops.cu registers for the CUDA key
CUDA_MAX_HISTORY = 16  # csrc/cuda_ops.cu kMaxM: a wider masked_lstsq runs the plain-torch reference
# CUDA ops whose compiled kernel replaces the Triton one by default. The CUDA masked_lstsq is faster than Triton on an
# H200 (benchmarks/RESULTS.md, "Compiled extension"); it stays opt-in (PARATRITON_CUDA_OPS=all) until the GPU test
# run of the stable-ABI build has passed.
DEFAULT_CUDA_OPS: tuple[str, ...] = ()

_status: dict[str, Any] = {
    "loaded": False,
    "reason": "not loaded yet",
    "abi": None,
    "cpu": (),
    "cuda": (),
    "cuda_module": "not loaded",
}
_libs: list[torch.library.Library] = []  # the live registrations; dropping them restores the Python kernels
_restores: list[Callable[[], None]] = []  # undo the CUDA kernels' replacements (_register_cuda)
_modules: dict[str, ModuleType] = {}


def _torch_version() -> tuple[int, int]:
    """(major, minor) of the running torch."""
    m = re.match(r"(\d+)\.(\d+)", torch.__version__)
    return (int(m[1]), int(m[2])) if m else (0, 0)


def _cuda_ops_wanted(available: tuple[str, ...], spec: str | None = None) -> list[str]:
    spec = (os.environ.get("PARATRITON_CUDA_OPS", "") if spec is None else spec).strip().lower()
    if spec in ("", "default"):
        wanted: tuple[str, ...] = DEFAULT_CUDA_OPS
    elif spec == "all":
        wanted = available
    elif spec == "none":
        wanted = ()
    else:
        wanted = tuple(s.strip() for s in spec.split(",") if s.strip())
        unknown = sorted(set(wanted) - set(CUDA_OPS))
        if unknown:
            raise ValueError(
                f"PARATRITON_CUDA_OPS / cuda_ops: unknown op(s) {unknown}; CUDA kernels exist for {CUDA_OPS}"
            )
    return [op for op in wanted if op in available]


def _import(name: str) -> ModuleType | str:
    """The module ``paratriton.<name>``, or why it is not usable ("not built" or the import error)."""
    try:
        # import_module, not "from . import _C": inside the package's own import a missing submodule would surface
        # as a generic ImportError ("partially initialized module") and read like a broken build
        return importlib.import_module(f"{__package__}.{name}")
    except ModuleNotFoundError as e:
        if e.name not in (f"{__package__}.{name}", name):
            raise
        return "not built"
    except ImportError as e:  # e.g. an undefined symbol: a module built against a torch newer than its target
        return f"import failed: {e}"


def _masked_lstsq_cuda(G: torch.Tensor, h: torch.Tensor, num_cols: torch.Tensor, ridge: float, floor: float):
    if G.shape[-1] > CUDA_MAX_HISTORY:  # beyond the kernel's register budget: the reference's batched solve
        from .ops.masked_lstsq.naive import masked_lstsq

        return masked_lstsq(G, h, num_cols, ridge, floor)
    return torch.ops.paratriton_cuda.masked_lstsq.default(G, h, num_cols, ridge, floor)


def _register(key: str, kernels: dict[str, Callable]) -> list[str]:
    if key == "CUDA":  # the ops' CUDA kernels are Python (Triton) kernels of their custom ops: replace those there
        return _register_cuda(kernels)
    lib = torch.library.Library("paratriton", "IMPL")
    with warnings.catch_warnings():
        # replacing the ops' Python CPU kernels is the point: keep the dispatcher's "Overriding a previously
        # registered kernel" note out of the user's log (this block only; the filters are restored on exit)
        warnings.filterwarnings("ignore", message=".*[Oo]verrid.*previously registered kernel")
        for op, fn in kernels.items():
            lib.impl(op, fn, key)
    _libs.append(lib)
    return list(kernels)


def _register_cuda(kernels: dict[str, Callable]) -> list[str]:
    """Route the custom ops' CUDA dispatch to ``kernels``: ``register_kernel`` replaces the op's Triton kernel
    (torch 2.11 refuses a second Python kernel on the key through ``Library.impl``); ``use_extension(False)`` puts
    it back (``_restores``)."""
    ops = importlib.import_module("paratriton.ops")
    for op, fn in kernels.items():
        getattr(ops, op).register_kernel("cuda")(fn)
        _restores.append(lambda op=op: _restore_cuda(op))
    return list(kernels)


def _restore_cuda(op: str) -> None:
    """The op's own CUDA kernel again: its Triton kernel (as its package registers it), or its reference where
    Triton is missing (the replaced kernel must not stay behind)."""
    package = importlib.import_module(f"paratriton.ops.{op}")
    opdef = getattr(package, op)
    if not register_triton(package.__name__, {opdef: f"{op}_triton"}):
        opdef.register_kernel("cuda")(getattr(package.naive, op))


def _fail(reason: str, level: int = logging.WARNING) -> None:
    _status.update(reason=reason)
    log.log(level, "paratriton: %s; using the Triton/torch kernels (docs/build.md)", reason)


def _load(cuda_spec: str | None = None) -> None:
    """Import the extension modules, check them against this torch and these sources, route the ops to them."""
    if os.environ.get("PARATRITON_DISABLE_EXT", "0") not in ("", "0"):
        return _fail("compiled extension disabled by PARATRITON_DISABLE_EXT", logging.INFO)
    if _torch_version() < MIN_TORCH:
        need = ".".join(map(str, MIN_TORCH))
        return _fail(f"compiled extension skipped: it needs torch >= {need}, this is torch {torch.__version__}")
    cpu = _import("_C")
    if isinstance(cpu, str):
        return _fail(f"compiled extension paratriton._C {cpu}")
    if getattr(cpu, "API_VERSION", None) != API_VERSION or tuple(getattr(cpu, "OPS", ())) != OPS:
        return _fail(
            f"compiled extension paratriton._C not used: stale build (kernel API {getattr(cpu, 'API_VERSION', '?')}, "
            f"ops {getattr(cpu, 'OPS', '?')}; sources expect {API_VERSION}, {OPS}); rebuild it: "
            "pip install --no-build-isolation -e ."
        )
    _modules["_C"] = cpu
    abi = f"stable ABI, torch >= {cpu.TORCH_TARGET} (built with torch {cpu.BUILT_WITH_TORCH}, {cpu.COMPILER})"
    cpu_ops = _register("CPU", {op: getattr(torch.ops.paratriton_C, op).default for op in OPS})
    cuda_ops: list[str] = []
    cuda_note, cuda_module = "no CUDA kernels", "not used: torch is a CPU build"
    if torch.version.cuda is not None:
        wanted = _cuda_ops_wanted(CUDA_OPS, cuda_spec)
        mod = _import("_C_cuda")
        if isinstance(mod, str):
            cuda_note = cuda_module = f"CUDA kernels paratriton._C_cuda {mod}"
        elif getattr(mod, "API_VERSION", None) != API_VERSION or tuple(getattr(mod, "OPS", ())) != OPS:
            cuda_note = cuda_module = "CUDA kernels paratriton._C_cuda not used: stale build"
        elif mod.CUDA_VERSION.split(".")[0] != torch.version.cuda.split(".")[0]:
            # a CUDA part is per CUDA major: the runtime it was compiled for must be the one torch ships
            cuda_note = f"CUDA kernels (CUDA {mod.CUDA_VERSION}) not used with torch's CUDA {torch.version.cuda}"
            cuda_module = cuda_note
        else:
            _modules["_C_cuda"] = mod
            cuda_note, cuda_module = f"CUDA {mod.CUDA_VERSION}", "ok"
            fns = {op: getattr(torch.ops.paratriton_cuda, op).default for op in wanted}
            if "masked_lstsq" in fns:
                fns["masked_lstsq"] = _masked_lstsq_cuda
            cuda_ops = _register("CUDA", fns) if fns else []
        if wanted and cuda_module != "ok":  # asked for (PARATRITON_CUDA_OPS), but not there: one visible line
            log.warning("paratriton: %s; the Triton kernels run on CUDA tensors", cuda_note)
    _status.update(
        loaded=True,
        reason="ok",
        abi=f"{abi}; {cuda_note}",
        cpu=tuple(cpu_ops),
        cuda=tuple(cuda_ops),
        cuda_module=cuda_module,
    )


def backends() -> dict[str, dict[str, str]]:
    """The implementation in use for each op of ``OPS`` and device: ``{op: {"cpu": "cpp" | "torch",
    "cuda": "cuda" | "triton" | "torch"}}`` (``extension_status()["reason"]`` says why the compiled one is not in
    use; "torch": the plain-torch reference)."""
    out = {}
    for op in OPS:
        cpu_cpp = torch._C._dispatch_has_kernel_for_dispatch_key(f"paratriton::{op}", "CPU")
        triton = torch._C._dispatch_has_kernel_for_dispatch_key(f"paratriton::{op}", "CUDA")
        out[op] = {
            "cpu": "cpp" if cpu_cpp and op in _status["cpu"] else "torch",
            "cuda": "cuda" if op in _status["cuda"] else ("triton" if triton else "torch"),
        }
    return out


def extension_status() -> dict[str, Any]:
    """``{"loaded": bool, "reason": str, "abi": str | None, "cpu": ops, "cuda": ops, "cuda_module": str}`` of the
    compiled extension (``cuda_module``: "ok", or why ``paratriton._C_cuda`` is not in use)."""
    return dict(_status)


def call_counts(reset: bool = False) -> dict[str, dict[str, int]]:
    """Calls of each compiled kernel, per device: ``{"cpu": {op: n}, "cuda": {op: n}}`` (0 where not loaded); lets
    tests prove a call reached the compiled kernel. ``reset=True`` zeroes the counters after reading them."""
    out = {}
    for dev, name, ns in (("cpu", "_C", "paratriton_C"), ("cuda", "_C_cuda", "paratriton_cuda")):
        out[dev] = dict.fromkeys(OPS, 0)
        if name in _modules:  # a loaded module's OPS equals OPS (checked at load); its names label its counters
            names = _modules[name].OPS
            counts = torch.zeros(len(names), dtype=torch.int64)
            getattr(torch.ops, ns).call_counts(counts, reset)
            out[dev].update(zip(names, counts.tolist()))
    return out


def use_extension(enabled: bool, cuda_ops: str | None = None) -> None:
    """Route the ops to the compiled kernels (True) or back to the Python ones (False), e.g. to compare them.

    cuda_ops: ``"all"``, ``"none"`` or ``"op1,op2"``: which CUDA kernels to use (default: as at import).
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"use_extension: enabled must be a bool, got {type(enabled).__name__}")
    if cuda_ops is not None:
        _cuda_ops_wanted(CUDA_OPS, cuda_ops)  # validate before dropping anything
    if not enabled or cuda_ops is not None:
        while _libs:
            _libs.pop()._destroy()
        while _restores:
            _restores.pop()()
        _status.update(loaded=False, reason="dropped by use_extension(False)", cpu=(), cuda=())
    if enabled and not _status["loaded"]:
        _load(cuda_ops)


_load()

__all__ = ["backends", "extension_status", "call_counts", "use_extension", "OPS", "DEFAULT_CUDA_OPS"]
