"""Plans remembered on disk: what ``window="auto"`` and ``paratriton.plan`` timed, reused by later processes.

A plan is a small JSON file under ``$PARATRITON_CACHE_DIR`` (default ``~/.cache/paratriton``, or
``$XDG_CACHE_HOME/paratriton``), in ``plans/``, named by the SHA-256 of its key. The key holds everything the timing
depended on: the device's name, torch's and paratriton's versions, the model's fingerprint (its class, its
parameters' names, shapes, dtypes and a sample of their values), the problem's shapes and dtypes, the scheduler
(its coefficients) and step count, the method and its options. A changed key is a miss, and the file stores its key
so a hash collision is a miss too. ``PARATRITON_PLAN_CACHE=0`` (or ``plan_cache=False`` where offered) turns it off.

Writes are atomic (a temporary file renamed into place); a cache that cannot be read or written is one INFO line and
the plan is timed as without a cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("paratriton")

FORMAT = 1  # bumped when the stored fields change: older files are misses
_SAMPLES = 8  # values sampled per parameter for the fingerprint
_warned: set[str] = set()


def enabled(flag: bool | None = None) -> bool:
    """Whether plans are remembered: ``flag`` if given, else not ``PARATRITON_PLAN_CACHE=0``."""
    if flag is not None:
        if not isinstance(flag, bool):
            raise TypeError(f"plan_cache must be a bool or None, got {type(flag).__name__}")
        return flag
    return os.environ.get("PARATRITON_PLAN_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    """``$PARATRITON_CACHE_DIR``, else ``$XDG_CACHE_HOME/paratriton``, else ``~/.cache/paratriton``."""
    if os.environ.get("PARATRITON_CACHE_DIR"):
        return Path(os.environ["PARATRITON_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "paratriton"


def device_name(device: torch.device) -> str:
    """The hardware a timing holds for: the GPU's name and capability, or the CPU's model and torch's threads."""
    device = torch.device(device)
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(idx)
        return f"cuda {torch.cuda.get_device_name(idx)} sm{major}{minor}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{device.type} {cpu}, {torch.get_num_threads()} threads"


def fingerprint(model: Any) -> str | None:
    """A content fingerprint of ``model`` that is the same in every process: its class and, for an
    ``nn.Module``, every parameter's and buffer's name, shape and dtype and ``_SAMPLES`` of its values (one
    device-to-host copy in all). None for anything else (a plain function): such a plan is not remembered unless
    the caller names it (``cache_key``)."""
    if not isinstance(model, torch.nn.Module):
        return None
    h = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    picks = []
    with torch.no_grad():
        for name, t in (*model.named_parameters(), *model.named_buffers()):
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
            flat = t.detach().reshape(-1)
            if flat.numel() and not t.is_complex() and not t.is_meta:
                step = max(1, flat.numel() // _SAMPLES)
                picks.append(flat[::step][:_SAMPLES].to(torch.float64))
    if picks:
        h.update(torch.cat([p.to(picks[0].device) for p in picks]).cpu().numpy().tobytes())
    return h.hexdigest()


def signature(obj: Any, depth: int = 0) -> Any:
    """A JSON-able description of a call's inputs that decides their cost: tensors by shape and dtype, numbers and
    strings by value, containers recursively, anything else by its type's name."""
    if isinstance(obj, torch.Tensor):
        return ["tensor", list(obj.shape), str(obj.dtype)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if depth > 6:
        return type(obj).__name__
    if isinstance(obj, dict):
        return {str(k): signature(v, depth + 1) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [signature(v, depth + 1) for v in obj]
    return type(obj).__name__


def coeffs_digest(coeffs: Any) -> str:
    """SHA-256 of a sampler's coefficient tensors (they fix the scheduler, its configuration and the steps)."""
    h = hashlib.sha256(type(coeffs).__qualname__.encode())
    for name in sorted(vars(coeffs)):
        v = getattr(coeffs, name)
        if isinstance(v, torch.Tensor):
            h.update(f"{name}:{tuple(v.shape)}:{v.dtype};".encode())
            h.update(v.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
        elif isinstance(v, (bool, int, float, str)) or v is None:
            h.update(f"{name}={v!r};".encode())
    return h.hexdigest()


def make_key(kind: str, device: torch.device, **fields: Any) -> dict[str, Any]:
    """The full key of a plan: ``fields`` plus the format, the device, torch's and paratriton's versions."""
    from . import __version__

    return {
        "format": FORMAT,
        "kind": kind,
        "device": device_name(device),
        "torch": torch.__version__,
        "paratriton": __version__,
        **{k: signature(v) for k, v in fields.items()},
    }


def path_of(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return cache_dir() / "plans" / f"{key['kind']}-{digest[:32]}.json"


def _note(what: str, err: Exception) -> None:
    if what not in _warned:  # once per process and kind of failure
        _warned.add(what)
        log.info("paratriton: plan cache %s failed (%s); plans are timed as without a cache", what, err)


def load(key: dict[str, Any]) -> dict[str, Any] | None:
    """The stored value of ``key``, or None (no file, another key in it, unreadable)."""
    path = path_of(key)
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        _note("read", e)
        return None
    if not isinstance(data, dict) or data.get("key") != json.loads(json.dumps(key)):
        return None
    return data.get("value")


def store(key: dict[str, Any], value: dict[str, Any]) -> Path | None:
    """Write ``value`` under ``key`` atomically; the path, or None when the cache is not writable."""
    path = path_of(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump({"key": key, "value": value}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except (OSError, TypeError, ValueError) as e:
        _note("write", e)
        return None
    return path
