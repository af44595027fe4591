"""The model calls of a modular denoise loop: recorded per step, made as one batched call, served back.

``ModelProxy`` stands in for a component network (``unet``, ``transformer``, ``controlnet``, ...) on the parallel
loop's private copy of the pipeline. Inside a ``CallLog`` pass it records each call; a call whose output is known
(same model, same arguments as a call of an earlier pass) gets that output, an unknown one gets a placeholder (the
output of the model's first real call with that signature) and is batched with the other unknown calls by
``run_batched``. A pass whose calls are all known computes exactly what the stock loop does at that step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils import _pytree as pytree

from ._guards import check_no_stateful_hooks

__all__ = ["Call", "CallLog", "ModelProxy", "run_batched"]


class Call:
    """One model call: which model, its flattened arguments, its output (None until computed)."""

    __slots__ = ("leaves", "model", "name", "out", "spec")

    def __init__(self, name: str, model: Any, args: tuple, kwargs: dict) -> None:
        self.name, self.model, self.out = name, model, None
        self.leaves, self.spec = pytree.tree_flatten((args, kwargs))

    def key(self) -> tuple:
        """What calls that can share one batched call (and one placeholder) have in common."""
        leaves = tuple(
            (tuple(v.shape), str(v.dtype), str(v.device)) if torch.is_tensor(v) else ("v", repr(v)) for v in self.leaves
        )
        return (self.name, str(self.spec), leaves)

    def same_inputs(self, other: Call) -> bool:
        if self.name != other.name or self.spec != other.spec:
            return False
        for a, b in zip(self.leaves, other.leaves):
            if torch.is_tensor(a) != torch.is_tensor(b):
                return False
            if torch.is_tensor(a):
                if a is not b and (a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a, b)):
                    return False
            elif a is not b and not _equal(a, b):
                return False
        return True

    def rows(self) -> int:
        """The call's batch: the leading size of its first tensor argument (the latents)."""
        return next((v.shape[0] for v in self.leaves if torch.is_tensor(v) and v.ndim), 1)

    def run(self) -> Any:
        args, kwargs = pytree.tree_unflatten(self.leaves, self.spec)
        return self.model(*args, **kwargs)


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # no truth value (an array): not the same input
        return False


class CallLog:
    """The calls of one step's pass: ``known`` are the previous pass's (with outputs), ``calls`` this pass's."""

    def __init__(self, known: list[Call], serve: int | None, templates: dict) -> None:
        """``serve``: the loop step of the final pass (only known calls are served), None while solving."""
        self.known, self.serve, self.templates, self.calls = known, serve, templates, []

    def call(self, name: str, model: Any, args: tuple, kwargs: dict) -> Any:
        call = Call(name, model, args, kwargs)
        pos = len(self.calls)
        self.calls.append(call)
        if pos < len(self.known) and self.known[pos].out is not None and self.known[pos].same_inputs(call):
            call.out = self.known[pos].out
            return _fresh(call.out)
        if self.serve is not None:
            raise ValueError(
                f"the loop's call {pos} of {name} at loop step {self.serve} has other inputs than the parallel solve "
                "evaluated: a sub-block carries state from one step to the next (the step is not a function of its "
                "latents alone), which a parallel solve cannot reproduce"
            )
        template = self.templates.get(call.key())
        if template is None:  # the first call of this signature runs as it is: its output shapes the placeholders
            call.out = call.run()
            self.templates[call.key()] = (call, call.out, [False])
            return _fresh(call.out)
        return _fresh(template[1])  # a placeholder: the pass is replayed once the batched call has filled call.out


def _fresh(out: Any) -> Any:
    """A stored output as the network would return it: new tensors, so a sub-block's in-place edit of one cannot
    change what later passes are served."""
    return pytree.tree_map(lambda v: v.clone() if torch.is_tensor(v) else v, out)


class ModelProxy:
    """A component network on the private pipeline copy: attributes read through, calls go to ``owner.log``."""

    def __init__(self, name: str, module: torch.nn.Module, owner: Any) -> None:
        self.__dict__.update(_name=name, _module=module, _owner=owner, _checked=False)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._module, attr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        log = self._owner.log
        if log is None:  # outside the parallel loop's passes: the network itself
            return self._module(*args, **kwargs)
        if not self._checked:  # once per loop call: only the networks the loop calls
            check_no_stateful_hooks(self._module, f"the loop's {self._name}")
            self.__dict__["_checked"] = True
        return log.call(self._name, self._module, args, kwargs)


_UNBATCHABLE = object()


def _stack(values: list, n: int) -> Any:
    """One argument of ``len(values)`` calls of ``n`` rows as one batched argument (``_UNBATCHABLE`` if not)."""
    first = values[0]
    if first.ndim and first.shape[0] == n:
        return torch.cat(values)
    if all(v is first or torch.equal(v, first) for v in values[1:]):
        return first  # shared by every row (broadcast or not batched: passed as the single calls pass it)
    if first.ndim == 0 or first.shape[0] == 1:  # a per-call scalar (the timestep): one value per row
        return torch.cat([v.reshape(1, *v.shape[1:]).expand(n, *v.shape[1:]) for v in values])
    return _UNBATCHABLE


def _split(out: Any, rows: int, parts: int) -> list:
    """The batched output cut back into ``parts`` calls' outputs (leaves without the batch rows are shared)."""
    leaves, spec = pytree.tree_flatten(out)
    cut = [v.chunk(parts) if torch.is_tensor(v) and v.ndim and v.shape[0] == rows * parts else None for v in leaves]
    return [
        pytree.tree_unflatten([c[p] if c is not None else v for c, v in zip(cut, leaves)], spec) for p in range(parts)
    ]


def _close(a: Any, b: Any) -> bool:
    """The batched rows of a call reproduce its single call: up to TF32 / bf16 rounding (a misbatch is O(1))."""
    la, lb = pytree.tree_leaves(a), pytree.tree_leaves(b)
    for x, y in zip(la, lb):
        if torch.is_tensor(x):
            tol = 1e-2 if x.dtype in (torch.float32, torch.float64) else 5e-2
            scale = max(float(y.detach().abs().max()), 1.0) if y.numel() else 1.0
            if x.shape != y.shape or not bool(((x - y).abs() <= tol * scale).all()):
                return False
    return len(la) == len(lb)


def run_batched(calls: list[Call], templates: dict) -> int:
    """Fill ``call.out`` of every call: one model call per group of calls with the same key. The first batched call
    of a key also runs its template call (a real single call) and checks the batched rows reproduce it. Returns the
    number of model calls made."""
    groups: dict[tuple, list[Call]] = {}
    for c in calls:
        groups.setdefault(c.key(), []).append(c)
    made = 0
    for key, group in groups.items():
        tcall, tout, checked = templates[key]
        members = group if checked[0] else [*group, tcall]
        n = members[0].rows()
        columns = list(zip(*(m.leaves for m in members)))
        stacked = [_stack(list(col), n) if torch.is_tensor(col[0]) else col[0] for col in columns]
        if any(v is _UNBATCHABLE for v in stacked):  # an argument that differs per call and is not per row: one by one
            for c in group:
                c.out = c.run()
            made += len(group)
            continue
        args, kwargs = pytree.tree_unflatten(stacked, members[0].spec)
        try:
            outs = _split(members[0].model(*args, **kwargs), n, len(members))
        except Exception as e:
            raise type(e)(
                f"{key[0]} failed when called on {len(members)} steps' rows at once (tensors with the step's batch "
                f"{n} stacked, a per-step timestep given per row): {e}"
            ) from e
        made += 1
        if not checked[0]:
            if not _close(outs[-1], tout):
                raise ValueError(
                    f"{key[0]}: a batched call of several steps gives other outputs than the single call: one of its "
                    "inputs is not per row (a tensor whose first size is the batch but that is not batched), so the "
                    "parallel loop cannot batch this network exactly"
                )
            checked[0] = True
        for c, o in zip(group, outs):
            c.out = o
    return made
