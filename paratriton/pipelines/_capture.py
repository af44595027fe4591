"""The capture stage: the proxy networks, and what the first stock network call hands over, as a frozen value.

``_ModelProxy`` stands in for the denoiser (and a ControlNet) on the per-call pipeline copy. ``_Capture`` (mixed
into ``_ParallelCall``) answers its calls: it takes the stock loop's first network call (two for true CFG, and the
ControlNet's before it) and returns ``Captured`` (the latents, the timestep, the per-row conditioning and the
guidance) to the solve; later calls get zeros shaped like the network's output.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch

_RESIDUALS = ("down_block_additional_residuals", "mid_block_additional_residual")


def _bind_forward(model: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[str, dict]:
    """Name every argument of a ``model(...)`` call: returns (latent argument name, {name: value})."""
    target = getattr(model, "_orig_mod", model)  # torch.compile wrapper: the signature is the wrapped module's
    sig = inspect.signature(type(target).forward)
    bound = sig.bind(target, *args, **kwargs)
    params = list(sig.parameters.values())
    named: dict[str, Any] = {}
    for name, value in list(bound.arguments.items())[1:]:  # drop self
        kind = sig.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise TypeError(f"{type(target).__name__}.forward got extra positional arguments; not supported")
        else:
            named[name] = value
    return params[1].name, named


def _first_tensor(out: Any) -> torch.Tensor:
    return out if torch.is_tensor(out) else out[0]  # tuple or diffusers BaseOutput (which indexes like a tuple)


def _like(raw: Any, tensor: torch.Tensor) -> Any:
    """Wrap ``tensor`` in the same container the model returned (tensor, tuple or BaseOutput)."""
    if torch.is_tensor(raw):
        return tensor
    if isinstance(raw, tuple):
        return (tensor,)
    first = next(iter(raw.keys()))
    return type(raw)(**{first: tensor})


def _pad_text(a: dict, b: dict, text: str, mask: str) -> None:
    """Two calls' ``text [n, L, ...]`` of different lengths ``L`` (or one with a ``mask [n, L]`` and one with None,
    all tokens valid): pad the shorter with zeros along ``L`` and give both a mask, zeros where padded, so both batch
    as rows of one call. Exact where the network masks padded tokens out of its attention."""
    ta, tb, ma, mb = a.get(text), b.get(text), a.get(mask), b.get(mask)
    if not (torch.is_tensor(ta) and torch.is_tensor(tb)):
        return
    if ta.shape[1] == tb.shape[1] and torch.is_tensor(ma) == torch.is_tensor(mb):
        return
    n = max(ta.shape[1], tb.shape[1])
    dtype = next((m.dtype for m in (ma, mb) if torch.is_tensor(m)), torch.long)
    for d in (a, b):
        t, m = d[text], d.get(mask)
        m = m if torch.is_tensor(m) else torch.ones(t.shape[:2], dtype=dtype, device=t.device)
        extra = n - t.shape[1]
        if extra:
            t = torch.cat([t, t.new_zeros((t.shape[0], extra, *t.shape[2:]))], dim=1)
            m = torch.cat([m, m.new_zeros((m.shape[0], extra))], dim=1)
        d[text], d[mask] = t, m


class _ModelProxy(torch.nn.Module):
    """Stands in for a network of the pipeline (the denoiser, a ControlNet) on the per-call pipeline copy, never on
    a shared object.

    Reads of anything else (``config``, ``dtype``, ``device``, ``cache_context``, accelerate's ``_hf_hook``) go to
    the real network, so the stock ``__call__`` sees its own module; only calls are answered, by ``handler``.
    """

    def __init__(self, handler: Callable[[tuple, dict], Any], model: torch.nn.Module) -> None:
        super().__init__()
        self.inner = model  # a registered child, so .modules() / .device walk the real network
        object.__setattr__(self, "_paratriton_handler", handler)

    @property
    def __class__(self) -> type:  # isinstance(proxy, ControlNetModel) as the stock loop checks (type() is unchanged)
        return type(self._modules["inner"])

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._paratriton_handler(args, kwargs)


@dataclasses.dataclass(frozen=True)
class Captured:
    """What the stock loop's first network call hands over (two calls batched ``[neg; cond]`` for true CFG).

    ``x_in [g * B, ...]`` the network's latent input (``latent_name`` its argument), ``t_in`` its timestep,
    ``conditioning`` every other argument by name (ControlNet residuals dropped: the solve recomputes them), and
    ``guidance`` ``(do_cfg, scale, rescale)``.
    """

    latent_name: str
    x_in: torch.Tensor
    t_in: Any
    conditioning: dict[str, Any]
    guidance: tuple[bool, float, float]


class _Capture:
    """The capture stage of one parallel call: the proxies' handlers and ``_capture``."""

    model: torch.nn.Module
    experts: dict[str, torch.nn.Module]
    route: list[str] | None
    replayed: int
    controlnet: torch.nn.Module | None
    spec: Any
    pipe: Any
    call_args: dict
    in_callback: bool
    solved: bool
    dummy: Any
    pending: tuple | None
    guidance_read: tuple[bool, float, float] | None
    calls_per_step: int
    calls_since_step: int
    control_calls: int
    control_pending: tuple | None
    control_dummy: Any
    stock_scale: Callable
    scaled: tuple[torch.Tensor, torch.Tensor] | None
    prepared: Any

    _solve: Callable[[tuple, dict], None]  # the solve stage, run on the first call

    def model_call(self, args: tuple, kwargs: dict, which: str | None = None) -> Any:
        name = which or self.spec.calls.denoiser
        if self.in_callback:  # a callback calling pipe.unet(...) gets the real network
            return self.experts[name](*args, **kwargs)
        if self.route is not None and self.replayed < len(self.route) and self.route[self.replayed] != name:
            raise RuntimeError(
                f"the loop called {name} at loop step {self.replayed}, but the solve used {self.route[self.replayed]}"
                " there: this loop routes its steps to its networks differently from the spec"
            )
        self.calls_since_step += 1
        if not self.solved:
            if self.guidance_read is None:  # the stock call has set its guidance properties by now
                self.guidance_read = tuple(self.spec.guidance.read(self.pipe, self.call_args))
                two_calls = self.spec.guidance.layout == "two_calls" and self.guidance_read[0]
                self.calls_per_step = 2 if two_calls else 1
            if self.calls_per_step == 2 and self.pending is None:
                # two calls per step (Flux's true CFG): the conditional call comes first; the solve needs the
                # unconditional call's inputs too
                self.pending = (args, kwargs)
                return self._zeros_like_input(args, kwargs)
            self._solve(args, kwargs)
        if self.calls_per_step == 2:
            return self._zeros_like_input(args, kwargs)  # each branch call has B rows, not the 2B the solve batches
        return self.dummy

    def control_call(self, args: tuple, kwargs: dict) -> Any:
        """The ControlNet proxy: its first call (before the UNet's) is recorded and run for real, so the UNet's first
        call gets residuals of the right structure; the solve then runs the ControlNet inside every model call."""
        if self.in_callback:
            return self.controlnet(*args, **kwargs)
        self.control_calls += 1
        if self.solved:
            return self.control_dummy
        if self.control_pending is not None:
            raise RuntimeError("the loop called the ControlNet twice before the UNet")
        self.control_pending = (args, kwargs)
        out = self.controlnet(*args, **kwargs)
        down, mid = out
        self.control_dummy = ([torch.zeros_like(d) for d in down], torch.zeros_like(mid))
        return out

    def _zeros_like_input(self, args: tuple, kwargs: dict) -> Any:
        name, named = _bind_forward(self.model, args, kwargs)
        if named.get("return_dict", True):
            raise RuntimeError("true CFG: the loop is expected to call the network with return_dict=False")
        return (torch.zeros_like(named[name]),)  # Flux's transformer returns its (packed) input's shape

    def _merge_branches(self, args: tuple, kwargs: dict) -> tuple[str, dict]:
        """True CFG: the conditional call's and the negative call's inputs as one ``[neg; cond]`` batch."""
        latent_name, neg = _bind_forward(self.model, args, kwargs)
        _, cond = _bind_forward(self.model, *self.pending)
        for text, mask in self.spec.guidance.pad:  # text of two lengths: pad the shorter, masked
            _pad_text(neg, cond, text, mask)
        if not torch.equal(neg[latent_name], cond[latent_name]):
            raise RuntimeError("true CFG: the two calls of a step got different latents")
        merged: dict[str, Any] = {latent_name: torch.cat([neg[latent_name], cond[latent_name]])}
        for key in cond.keys() | neg.keys():
            a, b = neg.get(key), cond.get(key)
            if key == latent_name:
                continue
            if key in self.spec.calls.shared or not torch.is_tensor(a) or key == self.spec.calls.timestep_arg:
                same = torch.equal(a, b) if torch.is_tensor(a) and torch.is_tensor(b) else a is b or a == b
                if not same:
                    raise RuntimeError(f"true CFG: the conditional and negative calls differ in {key!r}, not per row")
                merged[key] = torch.cat([a, b]) if key == self.spec.calls.timestep_arg else a
            elif a.shape != b.shape:
                raise RuntimeError(f"true CFG: {key!r} has shape {tuple(b.shape)} and {tuple(a.shape)} in the calls")
            else:
                merged[key] = torch.cat([a, b])
        return latent_name, merged

    def record_latents(self, stock: Callable, *args: Any, **kwargs: Any) -> Any:
        """The private copy's ``prepare_latents``: the stock one, its latents recorded (the loop may keep them in
        another dtype than the network's input)."""
        out = stock(*args, **kwargs)
        if not self.solved:
            self.prepared = out if torch.is_tensor(out) else out[0] if isinstance(out, tuple) and out else None
        return out

    def _control_conditioning(self, x_in: torch.Tensor, T: int) -> dict:
        """The recorded ControlNet call as conditioning: its kwargs (per row) and the scale of every solver step."""
        if self.control_pending is None:
            raise RuntimeError("the loop called the UNet before its ControlNet")
        name, named = _bind_forward(self.controlnet, *self.control_pending)
        if named.get("guess_mode"):
            raise ValueError("guess_mode (or a ControlNet with global_pool_conditions) is not supported")
        cx = named.pop(name)
        named.pop("timestep", None)
        first_scale = named.pop("conditioning_scale", 1.0)
        named.pop("return_dict", None)
        named.pop("guess_mode", None)
        if cx.shape != x_in.shape or not torch.equal(cx, x_in):
            raise RuntimeError("the ControlNet and the UNet got different latents: not supported")
        scale, start, end = (
            self.call_args.get(k)
            for k in ("controlnet_conditioning_scale", "control_guidance_start", "control_guidance_end")
        )
        scale, start, end = (v[0] if isinstance(v, (list, tuple)) else v for v in (scale, start, end))
        # diffusers 0.42.1: controlnet_keep[i] = 1 - float(i / T < start or (i + 1) / T > end), over the loop's steps
        keep = [1.0 - float(k / T < start or (k + 1) / T > end) for k in range(T)]
        if not math.isclose(float(first_scale), float(scale) * keep[0], rel_tol=1e-6, abs_tol=1e-12):
            raise RuntimeError(
                f"the ControlNet's first conditioning_scale {first_scale} is not controlnet_conditioning_scale * "
                f"keep ({scale} * {keep[0]}): this loop's ControlNet schedule is not the stock one"
            )
        by_loop = torch.tensor([float(scale) * k for k in keep], dtype=torch.float64, device=x_in.device)
        self.control_latent = name
        return {"kwargs": named, "scale_by_step": by_loop.flip(0)}

    def scheduler_scale_input(self, sample: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.stock_scale(sample, *args, **kwargs)
        if not self.solved:
            self.scaled = (sample, out)
        return out

    def _capture(self, args: tuple, kwargs: dict) -> Captured:
        """The first network call (merged with the pending one for true CFG) as a ``Captured``."""
        if self.pending is not None:  # two calls per step, batched as [neg; cond] by the solve
            latent_name, named = self._merge_branches(args, kwargs)
        else:
            latent_name, named = _bind_forward(self.model, args, kwargs)
        guidance = self.guidance_read
        x_in = named.pop(latent_name)
        t_in = named.pop(self.spec.calls.timestep_arg, None)
        if self.controlnet is not None:
            for key in _RESIDUALS:  # recomputed for every row of every model call
                named.pop(key, None)
        return Captured(latent_name, x_in, t_in, named, guidance)
