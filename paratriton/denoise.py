"""``denoise``: one call that replaces a user's own denoising loop.

The loop it replaces (Chi et al.'s Diffusion Policy, LeRobot, any hand-written sampler)::

    scheduler.set_timesteps(num_inference_steps)
    for t in scheduler.timesteps:
        out = model(scheduler.scale_model_input(x, t), t, **model_kwargs)
        x = scheduler.step(out, t, x, generator=generator).prev_sample

``denoise(model, scheduler, x, num_inference_steps, generator=generator, model_kwargs=model_kwargs)`` returns that
loop's sample up to ``tol`` (RMS, in the sample's units): the step noise is drawn up front in the loop's order with
the same generator, and ``model`` is called exactly as the loop calls it except that ``t`` is a 1-D tensor of one
diffusers timestep per row and the rows are many steps of the trajectory at once (tensors in ``model_kwargs`` with
a leading batch dimension are repeated per row). ``scale_model_input`` is the identity for DDPM, DDIM and flow
matching; the traced schedulers (Euler, DPM-Solver, ...) apply it inside the step operator.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .schedulers import GraphedDraws, coefficients_from_scheduler, draw_step_noise, stock_draws
from .schedulers.guess import WARM_VAR, gaussian_guess
from .solvers import METHODS, SolveResult, solve

__all__ = ["denoise", "LoopDenoiser", "auto_method", "is_stochastic", "AUTO_SEQUENTIAL_MAX_STEPS"]


class LoopDenoiser:
    """A loop-style network ``model(x, t, **model_kwargs)`` as a paratriton denoiser ``(x, step_index)``.

    ``timesteps [T]``: the diffusers timestep of solver step ``i`` (the loop's dtype, on the model's device).
    ``dtype``: what the loop's sample is (the network sees its rows in it). Tensors in ``kwargs`` whose leading
    dimension is the batch ``B`` are tiled to the call's rows (``row = w * B + b``); other values pass unchanged.
    """

    def __init__(
        self, model: Callable, timesteps: torch.Tensor, kwargs: Mapping[str, Any], batch: int, dtype: torch.dtype
    ) -> None:
        self.model, self.timesteps, self.kwargs, self.batch, self.dtype = model, timesteps, dict(kwargs), batch, dtype
        self.compute_dtype = getattr(model, "compute_dtype", None) or _parameter_dtype(model)

    def load(self, kwargs: Mapping[str, Any]) -> None:
        """Copy a later call's conditioning into this one's tensors (captured graphs read them)."""
        for k, v in kwargs.items():
            if torch.is_tensor(v):
                self.kwargs[k].copy_(v)

    def _rows(self, reps: int) -> dict[str, Any]:
        B = self.batch
        return {
            k: v.repeat(reps, *(1,) * (v.ndim - 1)) if torch.is_tensor(v) and v.ndim and v.shape[0] == B else v
            for k, v in self.kwargs.items()
        }

    def __call__(self, x: torch.Tensor, step_index: torch.Tensor) -> torch.Tensor:
        out = self.model(x.to(self.dtype), self.timesteps[step_index], **self._rows(x.shape[0] // self.batch))
        return _tensor_of(out)


def _parameter_dtype(model) -> torch.dtype | None:
    """A network's low-precision parameter dtype (its rounding sets the precision floor), else None."""
    if isinstance(model, torch.nn.Module):
        p = next(model.parameters(), None)
        if p is not None and p.dtype in (torch.float16, torch.bfloat16):
            return p.dtype
    return None


def _tensor_of(out: Any) -> Any:
    """The tensor a network returned: itself, the first of a tuple, or ``.sample`` (diffusers' outputs)."""
    if torch.is_tensor(out):
        return out
    if isinstance(out, tuple) and out:
        return out[0]
    return getattr(out, "sample", out)


AUTO_SEQUENTIAL_MAX_STEPS = 16
"""``method="auto"`` keeps schedules of this many steps or fewer sequential: at DDIM-16, TAA needs 9-11 of the 16
steps as iterations of a window call that costs about one call, and lost on an H100 (0.75x on the shipped policy,
0.83x on a 63.6M ConditionalUnet1D, ``benchmarks/RESULTS.md``, "Diffusion policies on one GPU"); at DDPM-100 it
won 2.5-4.5x."""


def auto_method(device: torch.device, num_steps: int) -> str:
    """What ``method="auto"`` runs: ``"taa"`` on CUDA for more than ``AUTO_SEQUENTIAL_MAX_STEPS`` steps (a batched
    call of many steps costs about one call there), else ``"sequential"`` (the CPU, where a window costs its rows;
    short schedules, where the iterations come near the steps)."""
    if torch.device(device).type == "cuda" and num_steps > AUTO_SEQUENTIAL_MAX_STEPS:
        return "taa"
    return "sequential"


# ---- checks, before any expensive work -----------------------------------------------------------------------------
def _check_inputs(model, x_T, num_inference_steps, model_kwargs, method, tol) -> int:
    if not callable(model):
        raise TypeError(f"model must be callable as model(x, t, **model_kwargs), got {type(model).__name__}")
    if not torch.is_tensor(x_T) or not x_T.is_floating_point() or x_T.ndim < 2 or x_T.shape[0] < 1:
        raise ValueError(
            "x_T must be a floating-point tensor [B, *sample_shape] with B >= 1 (the loop's initial noise), got "
            f"{getattr(x_T, 'dtype', type(x_T).__name__)} {list(getattr(x_T, 'shape', []))}"
        )
    if x_T.device.type == "meta" or x_T.numel() == 0:
        raise ValueError(f"x_T must hold data (a non-empty tensor off the meta device), got {x_T.device} {x_T.shape}")
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, torch.SymInt)):
        if not (isinstance(num_inference_steps, float) and num_inference_steps.is_integer()):
            raise TypeError(f"num_inference_steps must be an int >= 1, got {num_inference_steps!r}")
    if int(num_inference_steps) < 1:
        raise ValueError(f"num_inference_steps must be an int >= 1, got {num_inference_steps}")
    if model_kwargs is not None and not isinstance(model_kwargs, Mapping):
        raise TypeError(f"model_kwargs must be a dict of the model's keyword arguments, got {type(model_kwargs)}")
    if method != "auto" and method not in METHODS:
        raise ValueError(f"method={method!r} is not supported; use 'auto' or one of {list(METHODS)}")
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < math.inf):
        raise ValueError(f"tol must be a finite number > 0 (an RMS distance in the sample's units), got {tol!r}")
    return int(num_inference_steps)


_PROBED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {call signature: output dtype}


def _probe(den: LoopDenoiser, x_T: torch.Tensor, T: int) -> torch.dtype:
    """One call of ``2 B`` rows at the first and last steps (once per model and signature): the network must take a
    1-D timestep per row and return its input's shape, finite. Returns its output dtype (the step noise's)."""
    from .pipelines._trees import tree_signature

    key = (tuple(x_T.shape), str(x_T.dtype), str(x_T.device), tree_signature(den.kwargs), T)
    try:
        seen = _PROBED.setdefault(den.model, {})
    except TypeError:  # not weak-referenceable: probe every call
        seen = {}
    if key in seen:
        return seen[key]
    B = x_T.shape[0]
    steps = torch.tensor([T - 1] * B + [0] * B, device=den.timesteps.device)
    x2 = torch.cat([x_T, x_T])
    try:
        with torch.no_grad():
            out = den(x2, steps)
    except Exception as e:
        raise type(e)(
            f"model(x, t, **model_kwargs) failed when called as the parallel sampler calls it (x {list(x2.shape)}, "
            f"t a 1-D tensor of {2 * B} timesteps, one per row; tensors of model_kwargs with leading dimension {B} "
            f"repeated per row): {e}"
        ) from e
    if not torch.is_tensor(out) or tuple(out.shape) != tuple(x2.shape):
        raise ValueError(
            f"model(x, t, **model_kwargs) must return a tensor shaped like x {list(x2.shape)}, got "
            f"{list(out.shape) if torch.is_tensor(out) else type(out).__name__}"
        )
    if not bool(torch.isfinite(out).all()):
        raise FloatingPointError("model(x, t, **model_kwargs) returned NaN/inf at the first step of x_T")
    seen[key] = out.dtype
    return out.dtype


_OPERATORS: dict = {}  # (scheduler config, schedule tensor, T, eta, ...) -> (coefficients, scheduler with timesteps)


def _operator(scheduler, T: int, eta, use_clipped_model_output: bool):
    """The step operator of ``scheduler`` at ``T`` steps, a copy of it with its timesteps set, and which loop
    steps draw noise (``stock_draws``: the steps, whether in float32), cached by the scheduler's class, config and
    ``alphas_cumprod`` (a control loop asks for the same one every chunk)."""
    ac = getattr(scheduler, "alphas_cumprod", None)
    ac_key = None if ac is None else (str(ac.dtype), ac.data_ptr(), ac._version)
    key = (
        type(scheduler).__name__,
        repr(sorted(dict(scheduler.config).items())),
        ac_key,
        T,
        eta,
        use_clipped_model_output,
    )
    hit = _OPERATORS.get(key)
    if hit is None:
        coeffs = coefficients_from_scheduler(scheduler, T, eta=eta, use_clipped_model_output=use_clipped_model_output)
        sched = copy.deepcopy(scheduler)
        sched.set_timesteps(T)
        if len(_OPERATORS) >= 64:
            _OPERATORS.clear()
        hit = _OPERATORS[key] = (coeffs, sched, stock_draws(sched, coeffs, sched.timesteps, eta))
    return hit


# ---- the graphed solvers kept between calls (one problem per model) ----------------------------------------------
_GRAPHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> pipelines._graphed.GraphedSolvers
_GRAPHED_DRAWS = GraphedDraws()  # a control loop's step noise, one replay a chunk


def _graphed_solve(model, den, coeffs, x_T, noise, method, options, init) -> SolveResult:
    """Replay the graphs kept for ``model`` (the pipelines' ``GraphedSolvers``), capturing them for a new problem.
    The cached entry keeps the operator it captured with: a solver re-captures for another coefficients object."""
    from .pipelines._graphed import GraphedSolvers, _fingerprint
    from .pipelines._guards import model_fingerprint
    from .pipelines._trees import tree_signature

    mkey = model_fingerprint(model) if isinstance(model, torch.nn.Module) else id(model)
    key = (mkey, _fingerprint(coeffs), tuple(x_T.shape), str(x_T.dtype), str(x_T.device), tree_signature(den.kwargs))
    entry = _GRAPHED.get(model)
    if entry is None or entry.key != key:
        _GRAPHED.pop(model, None)  # free the old graphs before capturing new ones
        entry = _GRAPHED[model] = GraphedSolvers(key, den, lambda d: d, coeffs)  # its own copy of the conditioning
    else:
        entry.branches.load(den.kwargs)
    options = dict(options)
    callback = options.pop("callback", None)
    return entry.solve(method, options, x_T, noise, callback, init=init)


@torch.no_grad()  # a sampler, not a training step (the loop it replaces runs under no_grad too)
def denoise(
    model: Callable,
    scheduler,
    x_T: torch.Tensor,
    num_inference_steps: int,
    *,
    generator: torch.Generator | list[torch.Generator] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    method: str = "auto",
    tol: float | None = None,
    init: torch.Tensor | None = None,
    init_sample: torch.Tensor | None = None,
    cuda_graph: bool = False,
    eta: float | None = None,
    use_clipped_model_output: bool = False,
    return_result: bool = False,
    **options: Any,
) -> torch.Tensor | SolveResult:
    """The sample of the loop ``for t in timesteps: x = scheduler.step(model(x, t, **model_kwargs), t, x,
    generator=generator).prev_sample`` started from ``x_T [B, *S]``, solved in parallel.

    scheduler:  any scheduler of ``paratriton.schedulers.SUPPORTED_SCHEDULERS`` (DDPM/DDIM with ``clip_sample`` or
                ``thresholding`` included); it is copied, never changed.
    generator:  what the loop hands ``scheduler.step``: the step noise is drawn from it up front, in the loop's order
                (after ``x_T``, which the caller drew).
    method:     ``"auto"`` (``auto_method``: ``"taa"`` on CUDA for more than 16 steps, where a batched call of many
                steps costs about one call, else ``"sequential"``) or one of ``paratriton.METHODS``; ``options`` are
                the method's (``paratriton.solvers.REGISTRY[method].options``: window, history, max_iters, ...).
    tol:        the RMS distance of the sample to the sequential loop's, in the sample's units (default 1e-3).
    init:       ``[T, B, *S]`` (or ``[T+1, ...]``) a guess of the trajectory (``result.trajectory`` of an earlier
                call); the answer stays this problem's exact sample.
    init_sample: ``[B, *S]`` a guess of the sample (a policy's previous chunk shifted by its executed actions): the
                trajectory guess is ``x_i = alpha_i init_sample + sigma_i x_T`` at each state's noise level.
    cuda_graph: every iteration one CUDA-graph replay; the graphs are kept for the next call with the same model,
                shapes and schedule (a control loop's calls replay them).
    eta, use_clipped_model_output: the loop's ``DDIMScheduler.step`` arguments.
    Returns the sample (``x_T``'s dtype and device), or with ``return_result=True`` the ``SolveResult`` (sample,
    trajectory ``[T+1, B, *S]``, iterations, converged, ...).
    """
    T = _check_inputs(model, x_T, num_inference_steps, model_kwargs, method, tol)
    x_T = x_T.detach()
    if method == "sequential" and tol is not None:
        raise TypeError("tol does not apply to method='sequential' (it is the loop itself)")
    if init is not None and init_sample is not None:
        raise ValueError("init and init_sample exclude each other: pass a trajectory guess or a sample guess")
    if cuda_graph and x_T.device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs x_T on a CUDA device, got {x_T.device}")
    if method == "auto":  # the sequential loop is exact by itself: tol only applies to a parallel solve
        method = auto_method(x_T.device, T)
    if method != "sequential" and tol is not None:
        options["tol"] = tol
    coeffs, sched, (draws, in_float32) = _operator(scheduler, T, eta, bool(use_clipped_model_output))
    loop_ts = sched.timesteps
    if coeffs.num_steps != len(loop_ts):
        raise RuntimeError(f"{type(scheduler).__name__}: {coeffs.num_steps} steps traced, {len(loop_ts)} in the loop")
    device = x_T.device
    step_ts = coeffs.timesteps.to(device=device, dtype=loop_ts.dtype)  # step i: the i-th smallest timestep
    den = LoopDenoiser(model, step_ts, model_kwargs or {}, x_T.shape[0], x_T.dtype)
    out_dtype = _probe(den, x_T, coeffs.num_steps)

    noise_dtype = torch.float32 if in_float32 else out_dtype
    noise = (_GRAPHED_DRAWS if cuda_graph else draw_step_noise)(
        draws, coeffs.num_steps, x_T.shape[0], x_T.shape[0], tuple(x_T.shape[1:]), generator, device, noise_dtype
    )
    if noise is None and coeffs.is_stochastic:  # noise-free steps of a stochastic operator: zeros
        noise = torch.zeros(coeffs.num_steps, *x_T.shape, dtype=torch.float64, device=device)
    if init_sample is not None:
        init = noised_guess(coeffs, init_sample, x_T, noise)
    if cuda_graph:
        res = _graphed_solve(model, den, coeffs, x_T, noise, method, options, init)
    else:
        res = solve(den, coeffs, x_T, noise, method=method, init=init, **options)
    res = dataclasses.replace(res, sample=res.sample.to(x_T.dtype))
    return res if return_result else res.sample


def is_stochastic(scheduler, num_inference_steps: int, eta: float | None = None) -> bool:
    """Whether ``scheduler`` at ``num_inference_steps`` adds step noise (DDPM, DDIM with ``eta > 0``, the SDE
    solvers), from its step operator (cached, as ``denoise`` reads it)."""
    coeffs, _, _ = _operator(scheduler, int(num_inference_steps), eta, False)
    return bool(coeffs.is_stochastic)


def noised_guess(coeffs, sample: torch.Tensor, x_T: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """``[T, B, *S]`` trajectory guess from a guess of the sample. A stochastic sampler (``noise`` given): its
    steps under the exact denoiser of ``N(sample, WARM_VAR I)`` data with this problem's step noise
    (``schedulers/guess.py``); otherwise ``x_i = alpha_i sample + sigma_i x_T`` (``x_0 = sample``), each state at its
    noise level (``signal_scale, noise_scale`` of the step it feeds, over ``input_scale``)."""
    if not torch.is_tensor(sample) or tuple(sample.shape) != tuple(x_T.shape):
        raise ValueError(
            f"init_sample must be a tensor shaped like x_T {list(x_T.shape)}, got {list(getattr(sample, 'shape', []))}"
        )
    if noise is not None and coeffs.is_stochastic:
        return gaussian_guess(coeffs, x_T, noise, mean=sample, var=WARM_VAR, dtype=torch.float64)
    T = coeffs.num_steps
    scale = getattr(coeffs, "input_scale", None)
    sig, noi = coeffs.signal_scale.to(torch.float64), coeffs.noise_scale.to(torch.float64)
    if scale is not None:
        sig, noi = sig / scale.to(torch.float64), noi / scale.to(torch.float64)
    alpha = torch.cat([torch.ones(1, dtype=torch.float64), sig[: T - 1]]).to(x_T.device)
    sigma = torch.cat([torch.zeros(1, dtype=torch.float64), noi[: T - 1]]).to(x_T.device)
    view = (T,) + (1,) * x_T.ndim
    return alpha.view(view) * sample.to(x_T.device, torch.float64) + sigma.view(view) * x_T.to(torch.float64)
