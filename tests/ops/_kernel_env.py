"""Where the op tests run the Triton kernels, and the setup that makes that work (imported first by conftest.py).

* CUDA present: the compiled Triton kernels on CUDA tensors (``DEVICE = cuda``). ``TRITON_INTERPRET`` is never set
  here, so nothing else in the suite (inductor, CUDA graph capture, other kernels) goes through the interpreter.
* CPU only: the Triton interpreter on CPU tensors (``DEVICE = cpu``). Triton chooses the interpreter when a kernel
  is decorated (``@triton.jit`` reads ``TRITON_INTERPRET`` then; that includes triton.language's own jit functions,
  decorated when triton is first imported), and reads it again at run time (lazy imports, constexpr functions). So
  ``TRITON_INTERPRET=1`` is set (1) while triton and paratriton's kernel modules are first imported, at conftest
  import, and (2) around each test of tests/ops (an autouse fixture), and restored after each: the rest of the suite
  never sees it.

Test modules use ``DEVICE`` (or the ``device`` fixture of conftest.py) to create their inputs, and ``DEVICES``
("cpu", plus "cuda" when present) where a registered op must be exercised on both of its dispatch keys.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings
from pathlib import Path

import torch

CUDA = torch.cuda.is_available()
ENV_BEFORE = os.environ.get("TRITON_INTERPRET")  # the value the suite started with (restored after every use)
INTERPRET = not CUDA  # whether the op tests run the interpreter
DEVICE = torch.device("cuda" if CUDA else "cpu")
DEVICES = ("cpu", "cuda") if CUDA else ("cpu",)


def kernel_module_names() -> list[str]:
    """``paratriton.ops`` modules that define Triton kernels, found by their source text without importing anything
    (importing paratriton may import a kernel module, which must not happen before the interpreter is chosen)."""
    spec = importlib.util.find_spec("paratriton")
    assert spec is not None and spec.submodule_search_locations, "paratriton is not installed"
    root = Path(next(iter(spec.submodule_search_locations))).resolve() / "ops"
    names = []
    for path in sorted(root.rglob("*.py")):
        if "@triton.jit" not in path.read_text(encoding="utf-8", errors="replace"):
            continue
        rel = path.relative_to(root).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        names.append(".".join(["paratriton.ops", *parts]))
    return names


def _is_interpreted(module) -> bool:
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    kernels = [v for v in vars(module).values() if isinstance(v, (JITFunction, InterpretedFunction))]
    return all(isinstance(v, InterpretedFunction) for v in kernels)


def triton_is_interpreted() -> bool | None:
    """Whether triton.language's own jit functions were decorated for the interpreter (None: triton not imported)."""
    if "triton" not in sys.modules:
        return None
    from triton.language import standard
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(standard.cdiv, InterpretedFunction)


def import_kernels_interpreted() -> list[str]:
    """CPU only: import triton and every kernel module of paratriton.ops with ``TRITON_INTERPRET=1``, then restore
    the variable. Returns the modules imported. A module that fails to import is reported as a warning (its own
    tests then fail)."""
    assert not CUDA, "never set TRITON_INTERPRET when CUDA is present"
    names = kernel_module_names()
    if any(n in sys.modules and not _is_interpreted(sys.modules[n]) for n in names):
        # imported before in compiled mode (by another test module): drop them all, so that dependants
        # (``from ..window_fixed_point.fused import launch_walk``) are re-created against the re-decorated kernels
        for n in names:
            sys.modules.pop(n, None)
    prev = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    done = []
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401

        try:  # imported lazily by Triton's argument specialisation; it checks the interpreter flag when imported
            import triton.experimental.gluon  # noqa: F401
        except ImportError:
            pass
        import paratriton  # noqa: F401  (the package may import or register kernels at import time)
        import paratriton.ops  # noqa: F401

        for n in names:
            try:
                importlib.import_module(n)
                done.append(n)
            except Exception as e:  # noqa: BLE001 -- e.g. a work-in-progress kernel module
                warnings.warn(
                    f"tests/ops: could not import the kernel module {n}: {type(e).__name__}: {e}", stacklevel=1
                )
    finally:
        if prev is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = prev
    return done


SETUP_ERROR: str | None = None  # why the interpreter cannot run the kernels in this process (CPU only)


def setup() -> None:
    global SETUP_ERROR
    if not CUDA:
        if triton_is_interpreted() is False:
            SETUP_ERROR = (
                "triton was imported (for compiled kernels) before tests/ops/conftest.py could set "
                "TRITON_INTERPRET=1; on a CPU-only machine run the op tests in a process of their own or "
                "with TRITON_INTERPRET=1 set"
            )
            return
        import_kernels_interpreted()
    elif os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        warnings.warn(
            "TRITON_INTERPRET is set on a CUDA machine: the op tests run the interpreter, not the compiled "
            "kernels (unset it to test the compiled Triton kernels)",
            stacklevel=1,
        )


def to(t, device=None):
    """``t`` moved to ``device`` (default DEVICE); None stays None."""
    return None if t is None else t.to(DEVICE if device is None else device)
