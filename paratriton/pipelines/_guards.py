"""Checks that keep a parallel call from silently computing something other than the stock loop.

* ``model_fingerprint``: what a captured CUDA graph of the network reads (parameter and buffer storages and their
  in-place versions, the module tree, attention processors and their plain state, PEFT adapter state, the content
  of the tensors PEFT writes through ``.data``, hooks). ``_graphed.py`` and ``denoise``'s graph cache key on it, so
  LoRA loading, hotswapping, fusing and unfusing, ``set_adapters``, ``enable_lora``/``disable_lora``,
  ``set_ip_adapter_scale``, a processor swap, fused projections or ``.to()`` recapture instead of replaying stale
  weights or scales.
* ``check_no_stateful_hooks``: diffusers' cache hooks (``apply_first_block_cache``, ``apply_faster_cache``,
  pyramid attention broadcast, TaylorSeer, MagCache, ...) keep state from one step's call to the next. A parallel
  solve evaluates many steps in one batched call and the same step many times, so such a cache would return
  another step's features: refused up front, naming the hooks.
* ``check_diffusers_version``: the loop facts in ``_specs.py`` are read from one diffusers release; one warning
  per process outside it.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import torch

__all__ = [
    "TESTED_DIFFUSERS",
    "check_diffusers_version",
    "check_no_stateful_hooks",
    "content_digest",
    "model_fingerprint",
]

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


def _plain(value: Any, depth: int = 0) -> Any:
    """A hashable form of plain python state a forward reads (numbers, strings, their containers). Floats keep 12
    significant digits: ``apply_lora_scale`` multiplies a LoRA scaling by the call's scale and divides it back,
    which can move its last bit (0.9 * 0.3 / 0.3 != 0.9); a key that followed that bit would recapture for it."""
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if torch.is_tensor(value):  # read by a graph at its address: a replaced one is a new key, an edit a new version
        return ("tensor", value.data_ptr(), value._version, tuple(value.shape), str(value.dtype))
    if depth < 4 and isinstance(value, dict):
        return tuple((str(k), _plain(v, depth + 1)) for k, v in sorted(value.items(), key=lambda kv: str(kv[0])))
    if depth < 4 and isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return (type(value).__name__, tuple(_plain(v, depth + 1) for v in items))
    return type(value).__qualname__  # a module or object: its parameters and tree are keyed elsewhere


def _processor_key(module: torch.nn.Module) -> Any:
    # an attention processor is a plain object (module.__dict__) or, for IP-Adapter's, a submodule; either way its
    # public plain state (IP-Adapter's ``scale``, which set_ip_adapter_scale rewrites in place) is what it reads
    proc = module.__dict__.get("processor", module._modules.get("processor"))
    if proc is None:
        return None
    attrs = sorted(getattr(proc, "__dict__", {}).items())
    state = tuple((k, _plain(v)) for k, v in attrs if not k.startswith("_") and k != "training")
    return (type(proc).__qualname__, id(proc), state)


def _tuner_layer_class() -> type | None:
    # PEFT's layer base class, once peft is imported (diffusers imports it to load a LoRA): without it, no model
    # has tuner layers, and an isinstance check is cheaper than probing every module's attributes
    tuners = sys.modules.get("peft.tuners.tuners_utils")
    return getattr(tuners, "BaseTunerLayer", None)


def _adapter_key(module: torch.nn.Module) -> Any:
    # PEFT tuner layers (LoRA): which adapters are active, their scales, what is merged; plain python state that
    # set_adapters / fuse_lora / enable_lora change without touching a base weight's storage
    names = ("active_adapters", "merged_adapters", "disable_adapters", *getattr(module, "other_param_names", ()))
    return tuple((n, _plain(getattr(module, n, None))) for n in dict.fromkeys(names))


def _adapter_tensors(layer: torch.nn.Module) -> list[torch.Tensor]:
    """The tensors of a tuner layer that PEFT writes through ``.data`` (which bumps no version counter): its adapter
    weights (hotswapping an adapter copies into them) and, while adapters are merged into it, its base layer's."""
    merged = bool(getattr(layer, "merged_adapters", None))
    named = (*layer.named_parameters(), *layer.named_buffers())
    return [t for n, t in named if merged or not n.startswith("base_layer.")]


_SAMPLES = 16  # values read per tensor beside its norms


def content_digest(tensors: list[torch.Tensor]) -> bytes:
    """Each floating tensor's L1 and L2 norms and ``_SAMPLES`` of its values, in float64 (one host copy): sees an
    in-place write through ``.data`` that a version counter does not (only one keeping all of these misses)."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        if t.is_floating_point() and not t.is_meta and t.numel():
            groups.setdefault((t.device, t.dtype), []).append(t.detach())
    parts = []
    with torch.no_grad():
        for ts in groups.values():
            norms = [torch.stack(torch._foreach_norm(ts, p, dtype=torch.float64)) for p in (1, 2)]
            picks = [t.reshape(-1)[:: max(1, t.numel() // _SAMPLES)][:_SAMPLES] for t in ts]
            parts.append(torch.cat([*norms, torch.cat(picks).to(torch.float64)]).cpu())
    return torch.cat(parts).numpy().tobytes() if parts else b""


def model_fingerprint(model: torch.nn.Module) -> tuple:
    """A hashable description of everything a captured graph of ``model`` depends on beyond its inputs.

    One walk over the module tree (a control loop asks for it every chunk): per module its identity, type, hooks,
    processor, adapter state and mode, and per parameter or buffer its storage, in-place version, shape, dtype and
    device. A module, parameter or buffer that is replaced changes an identity or a storage. PEFT writes adapter
    weights (hotswap) and merged base weights (fuse_lora) through ``.data``, which no version counter sees: those
    tensors, of tuner layers only, are also keyed by content (``content_digest``)."""
    tensors = []
    modules = []
    adapter_tensors: list[torch.Tensor] = []
    tuner = _tuner_layer_class()
    for m in model.modules():
        d = m.__dict__  # plain dict reads: nn.Module's __getattr__ is slow, and most modules have no hooks
        is_tuner = tuner is not None and isinstance(m, tuner)
        if is_tuner:
            adapter_tensors += _adapter_tensors(m)
        params, buffers = d["_parameters"], d["_buffers"]
        for t in (*params.values(), *buffers.values()):
            if t is not None:
                tensors.append((t.data_ptr(), t._version, t.shape, t.dtype, t.device))
        pre, post = d["_forward_pre_hooks"], d["_forward_hooks"]
        hooks = (
            tuple(map(id, pre.values())) if pre else (),
            tuple(map(id, post.values())) if post else (),
            tuple(sorted(_hooks_of(m))) if "_diffusers_hook" in d else (),
        )
        adapter = _adapter_key(m) if is_tuner else None
        extra = (_processor_key(m), adapter, d.get("fused_projections"), d["training"])
        modules.append((type(m).__qualname__, id(m), len(params), len(buffers), hooks, extra))
    compiled = model.__dict__.get("_compiled_call_impl") is not None
    adapters = content_digest(adapter_tensors)  # no tuner layers: nothing to read, no device sync
    return (id(model), type(model).__qualname__, compiled, tuple(tensors), tuple(modules), adapters)
