"""Checks that keep a parallel call from silently computing something other than the stock loop.

* ``model_fingerprint``: what a captured CUDA graph of the network reads (parameter and buffer storages and their
  in-place versions, the module tree, attention processors, PEFT adapter state, hooks). ``_graphed.py`` keys its
  cache on it, so LoRA fusing, ``set_adapters``, a processor swap, fused projections or ``.to()`` recapture instead
  of replaying stale weights.
* ``check_no_stateful_hooks``: diffusers' cache hooks (``apply_first_block_cache``, ``apply_faster_cache``,
  pyramid attention broadcast, TaylorSeer, MagCache, ...) keep state from one step's call to the next. A parallel
  solve evaluates many steps in one batched call and the same step many times, so such a cache would return
  another step's features: refused up front, naming the hooks.
* ``check_diffusers_version``: the loop facts in ``_specs.py`` are read from one diffusers release; one warning
  per process outside it.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

__all__ = ["TESTED_DIFFUSERS", "check_diffusers_version", "check_no_stateful_hooks", "model_fingerprint"]

# the release line the parity tests run on (constraints.txt pins 0.42.1; pyproject's test extra: >=0.42,<0.43)
TESTED_DIFFUSERS = (0, 42)
_version_warned = False


def check_diffusers_version(version: str | None = None) -> bool:
    """Warn once per process when diffusers is outside the tested release line; returns whether it is inside."""
    global _version_warned
    if version is None:
        import diffusers

        version = diffusers.__version__
    try:
        major_minor = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        major_minor = ()
    inside = major_minor == TESTED_DIFFUSERS
    if not inside and not _version_warned:
        _version_warned = True
        tested = ".".join(map(str, TESTED_DIFFUSERS))
        warnings.warn(
            f"paratriton.parallelize is tested with diffusers {tested}.x, but diffusers {version} is installed: "
            "the parallel loop copies stock loop facts (guidance row order, step-noise draws, Flux's t/1000) "
            "that another release may change; compare an image against the stock pipeline before relying on it",
            UserWarning,
            stacklevel=3,
        )
    return inside


def _hooks_of(module: torch.nn.Module) -> dict[str, Any]:
    registry = module.__dict__.get("_diffusers_hook")
    return dict(getattr(registry, "hooks", {}) or {})


def check_no_stateful_hooks(model: torch.nn.Module, owner: str) -> None:
    """Raise ``ValueError`` naming every stateful diffusers hook (the caches) registered on ``model``."""
    found: list[str] = []
    for name, module in model.named_modules():
        for hook_name, hook in _hooks_of(module).items():
            if getattr(hook, "_is_stateful", False):
                found.append(f"{hook_name} ({type(hook).__name__} on {name or type(module).__name__})")
    if found:
        shown = ", ".join(sorted(set(found))[:6]) + (" ..." if len(set(found)) > 6 else "")
        raise ValueError(
            f"{owner} has stateful diffusers hooks that cache features from one step to the next: {shown}. "
            "A parallel solve evaluates many steps per call, so a step cache would hand one step another's "
            "features. Remove them first (e.g. pipe.transformer.disable_cache()) or use the stock pipeline."
        )


def _processor_key(module: torch.nn.Module) -> Any:
    proc = module.__dict__.get("processor")
    return None if proc is None else (type(proc).__qualname__, id(proc))


def _adapter_key(module: torch.nn.Module) -> Any:
    # PEFT tuner layers (LoRA): which adapters are active, their scales, what is merged; plain python state that
    # set_adapters / fuse_lora change without touching a base weight's storage
    if not hasattr(module, "active_adapters") or not hasattr(module, "scaling"):
        return None
    return (
        repr(getattr(module, "active_adapters", None)),
        repr(getattr(module, "scaling", None)),
        repr(getattr(module, "merged_adapters", None)),
        bool(getattr(module, "disable_adapters", False)),
    )


def model_fingerprint(model: torch.nn.Module) -> tuple:
    """A hashable description of everything a captured graph of ``model`` depends on beyond its inputs.

    One walk over the module tree (a control loop asks for it every chunk): per module its identity, type, hooks,
    processor, adapter state and mode, and per parameter or buffer its storage, in-place version, shape, dtype and
    device. A module, parameter or buffer that is replaced changes an identity or a storage."""
    tensors = []
    modules = []
    for m in model.modules():
        for t in (*m._parameters.values(), *m._buffers.values()):
            if t is not None:
                tensors.append((t.data_ptr(), t._version, t.shape, t.dtype, t.device))
        hooks = (
            tuple(map(id, m._forward_pre_hooks.values())),
            tuple(map(id, m._forward_hooks.values())),
            tuple(sorted(_hooks_of(m))),
        )
        extra = (_processor_key(m), _adapter_key(m), m.__dict__.get("fused_projections"), m.training)
        modules.append((type(m).__qualname__, id(m), len(m._parameters), len(m._buffers), hooks, extra))
    compiled = model.__dict__.get("_compiled_call_impl") is not None
    return (id(model), type(model).__qualname__, compiled, tuple(tensors), tuple(modules))
