"""Nested call arguments (tensors inside dicts, lists and tuples): describe, clone and copy them in place.

The conditioning a stock loop hands its model is such a tree. The eager path reads it as is; the graphed path
(``_graphed.py``) keeps its own clone, keyed by ``tree_signature``, and copies each later call's tree into it.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["clone_tree", "copy_tree", "tree_signature"]


def tree_signature(value: Any) -> Any:
    """A hashable description of a (nested) call argument: tensor shapes, dtypes and devices, other values' repr."""
    if torch.is_tensor(value):
        return ("tensor", tuple(value.shape), str(value.dtype), str(value.device))
    if isinstance(value, dict):
        return ("dict", tuple((k, tree_signature(v)) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(tree_signature(v) for v in value))
    return ("value", repr(value))


def clone_tree(value: Any) -> Any:
    """The same tree with every tensor cloned (other leaves shared)."""
    if torch.is_tensor(value):
        return value.clone()
    if isinstance(value, dict):
        return {k: clone_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(clone_tree(v) for v in value)
    return value


def copy_tree(dst: Any, src: Any) -> None:
    """Copy ``src``'s tensors into ``dst``'s (same structure and shapes), in place."""
    if torch.is_tensor(dst):
        dst.copy_(src)
    elif isinstance(dst, dict):
        for k in dst:
            copy_tree(dst[k], src[k])
    elif isinstance(dst, (list, tuple)):
        for a, b in zip(dst, src):
            copy_tree(a, b)
