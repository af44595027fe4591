"""``parallelize(pipe)``: run a stock diffusers pipeline with its denoising loop solved by ``paratriton.solve``.

How it works (and why this shape)
---------------------------------
The parallel pipeline is an instance of a subclass of the stock pipeline class that shares every component of the
original (a shallow copy, so nothing is re-initialised or cast). Its ``__call__`` runs the **stock** ``__call__``
unchanged, so prompt encoding, input checks, latent preparation,
timesteps (including Flux's dynamic shift), the VAE decode, the safety checker, ``output_type`` and
``return_dict`` are diffusers' own code. For the duration of the call two instance attributes are patched and
restored afterwards:

* ``<denoiser>.forward``: the stock loop's **first** model call hands over everything the loop body has prepared
  (the initial latents, the already CFG-batched conditioning: prompt embeddings, SDXL's added conditions, DiT's
  class labels, PixArt's attention mask, Flux's pooled projections and guidance). At that point the pipeline has
  set the scheduler's timesteps and drawn the initial latents, so the step noise of DDPM-style samplers is drawn
  now, in the order and with the ``randn_tensor`` calls the stock ``scheduler.step`` would make. Then the whole
  trajectory is solved with ``paratriton.solve``: one batched model call per iteration, the per-sample
  conditioning repeated along the window. Later stock model calls get a zero tensor of the right shape.
* ``scheduler.step``: replays the solved trajectory, step by step, into the stock loop, which therefore ends on
  the solved ``x_0`` and decodes it as usual. (The replay checks each timestep against the solved one.)

This needs no copy of any pipeline's ``__call__``: only the loop-body facts in ``_specs.py`` (CFG row order,
learned sigma, which generator ``scheduler.step`` gets, Flux's ``t / 1000``) are pipeline specific. It is not
safe to run from several threads: a parallel call holds a re-entrant lock on its model and its scheduler (one lock
per object, ``_holding``) from before it reads the model's ``forward`` until both patches are restored, so parallel
calls that share a component serialise instead of interleaving their patches; calls on disjoint components take
different locks and run concurrently. (A *stock* call of a pipeline that shares the components, made from another
thread while a parallel call is patching them, is not guarded: it would see the patches.)
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from ..model import ClassifierFreeGuidance
from ..planner import WindowChoice, choose_window
from ..schedule import (
    SUPPORTED_SCHEDULERS,
    SamplerCoefficients,
    coefficients_from_scheduler,
)
from ..solvers import SolveResult, solve
from ._graphed import graphed_solvers
from ._options import check_method_and_options, pipeline_options
from ._specs import PipelineSpec, find_spec
from ._state import ParallelState
from ._trees import copy_tree

if TYPE_CHECKING:  # diffusers is imported lazily, only once a pipeline is parallelized
    from diffusers import DiffusionPipeline

logger = logging.getLogger("paratriton.pipelines")

# arguments of the parallel __call__ that the stock loop must not see: the parallel loop calls them per iteration
_OWN_CALL_ARGS = ("callback_on_step_end", "callback_on_step_end_tensor_inputs")
# model kwargs that are not per-row although their leading dimension can equal the batch (Flux's 2-D position ids)
_NOT_PER_ROW = frozenset({"txt_ids", "img_ids"})
_CALLBACK_TENSORS = ("latents",)


# --------------------------------------------------------------------------------------------------------------
# checks (the method and its options: ``_options.py``, from the solver registry)
# --------------------------------------------------------------------------------------------------------------
def _check_scheduler(scheduler) -> None:
    name = type(scheduler).__name__
    if name not in SUPPORTED_SCHEDULERS:
        raise ValueError(
            f"scheduler {name} is not supported by parallel samplers; supported: {SUPPORTED_SCHEDULERS}"
            f" (e.g. pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, "
            "clip_sample=False))"
        )


# --------------------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------------------
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


def _repeat_rows(value: Any, g: int, B: int, W: int) -> Any:
    """Repeat per-row conditioning ``[g * B, ...]`` to the solver's rows ``[g, W, B, ...]`` (step-major).

    The stock loop batches ``g`` guidance branches of ``B`` samples; the solver evaluates ``W`` steps of each, with
    rows ordered ``(branch, window position, sample)``. Tensors whose leading dimension is not ``g * B`` (scalars,
    broadcast tensors) pass through unchanged; dicts, lists and tuples are searched.
    """
    if torch.is_tensor(value):
        if value.ndim >= 1 and value.shape[0] == g * B:
            rest = tuple(value.shape[1:])
            return value.reshape(g, 1, B, *rest).expand(g, W, B, *rest).reshape(g * W * B, *rest)
        return value
    if isinstance(value, dict):
        return {k: _repeat_rows(v, g, B, W) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_repeat_rows(v, g, B, W) for v in value)
    return value


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


def _step_draws(scheduler, timestep: torch.Tensor, eta: float | None) -> bool:
    """Whether the stock ``scheduler.step`` draws noise at this timestep (mirrors diffusers 0.42.1)."""
    name = type(scheduler).__name__
    if name == "DDPMScheduler":
        return bool(timestep > 0)
    if name == "DDIMScheduler":
        return eta is not None and eta > 0
    return bool(scheduler.config.stochastic_sampling)  # FlowMatchEulerDiscreteScheduler


# one re-entrant lock per patched object (model, scheduler), kept only while the object lives; re-entrant so that a
# parallel call made from inside another one on the same thread (a callback) nests its patches instead of deadlocking
_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def _holding(*objects: Any) -> Iterator[None]:
    """Hold the lock of every object (deduplicated, always taken in ``id`` order, so two calls never deadlock)."""
    unique = sorted({id(o): o for o in objects}.values(), key=id)
    with _LOCKS_GUARD:
        locks = [_LOCKS.setdefault(o, threading.RLock()) for o in unique]
    with contextlib.ExitStack() as stack:
        for lock in locks:
            stack.enter_context(lock)
        yield


class _PipelineDenoiser:
    """The pipeline's model as a paratriton denoiser of the stacked guidance branches.

    ``x [g * W * B, *S]`` (solver dtype) and ``step_index [g * W * B]`` -> ``[g * W * B, *S]`` (model dtype), rows
    ordered ``(branch, window position, sample)``; the stock call's conditioning ``kwargs`` is repeated along the
    window. Only tensors are read per call, so the call can be captured in a CUDA graph: later pipeline calls
    copy their conditioning into ``kwargs`` in place (``load``) and replay.
    """

    def __init__(
        self,
        forward: Callable,
        latent_name: str,
        kwargs: dict,
        ts_by_step: torch.Tensor,
        g: int,
        B: int,
        N0: int,
        x_dtype: torch.dtype,
        flow_timestep: bool,
        learned_sigma_channels: int | None,
    ) -> None:
        self.forward, self.latent_name, self.kwargs, self.ts_by_step = forward, latent_name, kwargs, ts_by_step
        self.g, self.B, self.N0, self.x_dtype = g, B, N0, x_dtype
        self.flow_timestep, self.learned_sigma_channels = flow_timestep, learned_sigma_channels
        self.dummy: Any = None  # what later stock calls get back: zeros shaped like a stock call's output

    def __call__(self, x: torch.Tensor, step_index: torch.Tensor) -> torch.Tensor:
        g, B = self.g, self.B
        W = x.shape[0] // (g * B)
        t = self.ts_by_step[step_index]
        if self.flow_timestep:  # Flux: t.expand(B).to(latents.dtype) / 1000, exactly as the stock loop
            t = t.to(self.x_dtype) / 1000
        kw = {k: (v if k in _NOT_PER_ROW else _repeat_rows(v, g, B, W)) for k, v in self.kwargs.items()}
        raw = self.forward(**{self.latent_name: x.to(self.x_dtype), "timestep": t}, **kw)
        out = _first_tensor(raw)
        if self.dummy is None:
            self.dummy = _like(raw, out.new_zeros((self.N0, *out.shape[1:])))
        if self.learned_sigma_channels is not None:
            out = out[:, : self.learned_sigma_channels]
        return out

    def load(self, kwargs: dict) -> None:
        """Copy another call's conditioning (same structure and shapes) into this one's tensors."""
        copy_tree(self.kwargs, kwargs)


def _guided(branches: Callable, do_cfg: bool, scale: float, rescale: float, cond_first: bool) -> Callable:
    return ClassifierFreeGuidance(branches, scale, rescale, cond_first=cond_first) if do_cfg else branches


# --------------------------------------------------------------------------------------------------------------
# one parallel call
# --------------------------------------------------------------------------------------------------------------
class _ParallelCall:
    """One parallel pipeline call: the patched model and scheduler, the solve, the replay.

    ``pipe`` is the parallel pipeline; ``state`` its ``ParallelState``, which gives the method and options and gets
    the result, the window choices and the graph cache back. Nothing is written to the pipeline's attributes
    (only its progress bar config, the model's ``forward`` and the scheduler's ``step`` are patched for the
    call and restored).
    """

    def __init__(
        self,
        pipe,
        state: ParallelState,
        spec: PipelineSpec,
        call_args: dict,
        callback: Callable | None,
        progress_config: dict,
    ) -> None:
        self.pipe = pipe
        self.state = state
        self.spec = spec
        self.call_args = call_args
        self.callback = callback
        self.progress_config = progress_config
        self.model = getattr(pipe, spec.denoiser)
        self.scheduler = pipe.scheduler
        self.orig_forward = self.model.forward
        self.result: SolveResult | None = None
        self.dummy: Any = None
        self.replayed = 0

    # -- the patched model: solve on the first stock call -------------------------------------------------------
    def model_call(self, *args: Any, **kwargs: Any) -> Any:
        if self.result is None:
            self._solve(args, kwargs)
        return self.dummy

    def _auto_window(
        self, denoiser, coeffs, x_T, noise, method, options, cuda_graph: bool = False
    ) -> tuple[str, int | None]:
        """``window="auto"``: time the candidate windows and the sequential sampler once per problem shape (on a
        calibration problem with other noise), keep the choice in ``state.window_choices``, and reuse it."""
        key = (coeffs.num_steps, tuple(x_T.shape), str(x_T.device), method, cuda_graph)
        cache: dict[tuple, WindowChoice] = self.state.window_choices
        if key not in cache:
            g = torch.Generator().manual_seed(1234)
            cal_x = torch.randn(x_T.shape, generator=g, dtype=x_T.dtype).to(x_T.device)
            cal_noise = (
                None if noise is None else torch.randn(noise.shape, generator=g, dtype=noise.dtype).to(noise.device)
            )
            rest = {k: v for k, v in options.items() if k != "window"}
            cache[key] = choose_window(denoiser, coeffs, cal_x, cal_noise, method, cuda_graph=cuda_graph, **rest)
            logger.info("paratriton: window='auto': %s", cache[key].reason)
        choice = cache[key]
        return choice.method, choice.window

    def _solve(self, args: tuple, kwargs: dict) -> None:
        spec, pipe, sched = self.spec, self.pipe, self.scheduler
        latent_name, named = _bind_forward(self.model, args, kwargs)
        x_in = named.pop(latent_name)
        named.pop("timestep", None)
        do_cfg, scale, rescale = spec.guidance(pipe, self.call_args)
        g = 2 if do_cfg else 1
        N0 = x_in.shape[0]
        if N0 % g:
            raise RuntimeError(f"{type(pipe).__name__}: model batch {N0} is not a multiple of the {g} CFG branches")
        B = N0 // g
        sample_shape = tuple(x_in.shape[1:])
        x_dtype, device = x_in.dtype, x_in.device

        eta = None
        if type(sched).__name__ == "DDIMScheduler":
            eta = float(self.call_args.get("eta", 0.0)) if spec.step_eta else 0.0
        coeffs = coefficients_from_scheduler(sched, eta=eta)
        T = coeffs.num_steps
        sched_ts = sched.timesteps  # the order the stock loop visits: step i = T - 1 - k at loop index k
        if len(sched_ts) != T or not torch.equal(sched_ts.detach().to("cpu", torch.float64).flip(0), coeffs.timesteps):
            raise RuntimeError("the scheduler's timesteps do not match the extracted coefficients")
        self.T, self.B, self.sched_ts, self.x_dtype = T, B, sched_ts, x_dtype
        self.ts_by_step = sched_ts.flip(0).to(device)

        noise = self._draw_noise(coeffs, N0 if spec.step_rows_cfg else B, B, sample_shape, x_dtype, device, eta)

        C = sample_shape[0] if sample_shape else 0
        learned_sigma = spec.learned_sigma and getattr(self.model.config, "out_channels", None) == 2 * C
        branches = _PipelineDenoiser(
            self.orig_forward,
            latent_name,
            named,
            self.ts_by_step,
            g,
            B,
            N0,
            x_dtype,
            spec.flow_timestep,
            C if learned_sigma else None,
        )
        x_T = x_in[:B].to(torch.float64)  # CFG-doubled inputs: both halves are the same latents
        method, options = self.state.method, dict(self.state.options)
        graphed = options.pop("cuda_graph", False)
        with self._progress(T) as bar:
            self.bar = bar
            if graphed:
                self.result = self._solve_graphed(
                    branches, (do_cfg, scale, rescale), coeffs, x_T, noise, method, options
                )
            else:
                denoiser = _guided(branches, do_cfg, scale, rescale, spec.cond_first)
                if options.get("window") == "auto":
                    method, options["window"] = self._auto_window(denoiser, coeffs, x_T, noise, method, options)
                    if method == "sequential":
                        options = {k: v for k, v in options.items() if k in pipeline_options(method, False)}
                self.result = solve(denoiser, coeffs, x_T, noise, method=method, callback=self._on_iteration, **options)
                self.dummy = branches.dummy
        if not self.result.converged:
            logger.warning(
                "paratriton: %s stopped after %d iterations before every step converged "
                "(max_iters); the image is the current estimate",
                self.result.method,
                self.result.iterations,
            )
        self.trajectory = self.result.trajectory
        self.state.last_result = self.result

    def _solve_graphed(
        self,
        branches: _PipelineDenoiser,
        guidance: tuple,
        coeffs: SamplerCoefficients,
        x_T: torch.Tensor,
        noise: torch.Tensor | None,
        method: str,
        options: dict,
    ):
        """``cuda_graph=True``: solve with the pipeline's cached, CUDA-graphed solvers (see ``_graphed``)."""
        do_cfg, scale, rescale = guidance
        cond_first = self.spec.cond_first
        entry = graphed_solvers(
            self.state,
            self.model,
            branches,
            (*guidance, cond_first),
            lambda b: _guided(b, do_cfg, scale, rescale, cond_first),
            coeffs,
            x_T,
            noise,
        )
        if options.get("window") == "auto":
            method, options["window"] = self._auto_window(
                entry.denoiser, entry.coeffs, x_T, noise, method, options, cuda_graph=True
            )
            if method == "sequential":
                options = {k: v for k, v in options.items() if k in pipeline_options(method, True)}
        result = entry.solve(method, options, x_T, noise, self._on_iteration)
        self.dummy = entry.branches.dummy
        return result

    def _draw_noise(
        self, coeffs: SamplerCoefficients, rows: int, B: int, sample_shape: tuple, x_dtype, device, eta: float | None
    ) -> torch.Tensor | None:
        """Pre-draw the step noise ``[T, B, *S]`` (float64) exactly as the stock ``scheduler.step`` calls would."""
        # deferred: diffusers is heavy and optional (``import paratriton`` never imports it)
        from diffusers.utils.torch_utils import randn_tensor

        sched, T = self.scheduler, coeffs.num_steps
        draws = [_step_draws(sched, self.sched_ts[k], eta) for k in range(T)]
        if not any(draws):
            return None
        generator = self.call_args.get("generator") if self.spec.step_generator else None
        # DDPM/DDIM draw in model_output's dtype, flow matching in the float32 it upcasts the sample to
        dtype = torch.float32 if type(sched).__name__ == "FlowMatchEulerDiscreteScheduler" else x_dtype
        noise = torch.zeros(T, B, *sample_shape, dtype=torch.float64, device=device)
        for k in range(T):  # loop order k = 0 .. T-1 is step i = T-1 .. 0
            if draws[k]:
                xi = randn_tensor((rows, *sample_shape), generator=generator, device=device, dtype=dtype)
                noise[T - 1 - k] = xi[:B]  # DiT steps the [cond; uncond] pair and keeps the cond half
        return noise

    # -- progress bar and per-iteration callback ---------------------------------------------------------------
    def _progress(self, T: int):
        config = {"desc": f"paratriton {self.state.method}", **self.progress_config}
        return tqdm(total=T, **config)

    def _on_iteration(self, info) -> None:
        bar = self.bar
        if not bar.disable:
            lo, hi = info.window
            rms = info.residual_rms[torch.isfinite(info.residual_rms)]  # solvers mark unevaluated steps with NaN
            res = f"{float(rms.max()):.2e}" if rms.numel() else "-"
            bar.set_postfix_str(f"iter {info.iteration}, window {lo}..{hi - 1}, max residual {res}", refresh=False)
            bar.update(max(self.T - info.frozen_from - bar.n, 0))  # the bar counts converged (final) steps
        if self.callback is not None:
            t = self.ts_by_step[min(info.frozen_from, self.T - 1)]
            # a copy in the pipeline's dtype: the trajectory is a view the solver keeps updating
            self.callback(self.pipe, info.iteration - 1, t, {"latents": info.sample.to(self.x_dtype)})

    # -- the patched scheduler: replay the solved trajectory ---------------------------------------------------
    def scheduler_step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        *args: Any,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> Any:
        # deferred: diffusers is heavy and optional (``import paratriton`` never imports it)
        from diffusers.schedulers.scheduling_utils import SchedulerOutput

        if self.result is None:
            raise RuntimeError("scheduler.step was called before the model: this pipeline's loop is not supported")
        k = self.replayed
        if k >= self.T or float(torch.as_tensor(timestep)) != float(self.sched_ts[k]):
            raise RuntimeError(
                f"the stock loop stepped timestep {timestep} at loop index {k}, but the solved "
                f"trajectory has {self.T} steps with timesteps {self.sched_ts.tolist()}"
            )
        self.replayed += 1
        x = self.trajectory[self.T - 1 - k]
        prev = x.to(sample.dtype).repeat(sample.shape[0] // self.B, *([1] * (x.ndim - 1)))
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    # -- run the stock __call__ with both patches --------------------------------------------------------------
    def run(self, stock_call: Callable, kwargs: dict) -> Any:
        pipe, model, sched = self.pipe, self.model, self.scheduler
        had_forward, had_step = "forward" in model.__dict__, "step" in sched.__dict__
        old_forward, old_step = model.__dict__.get("forward"), sched.__dict__.get("step")
        had_bar = hasattr(pipe, "_progress_bar_config")
        old_bar = getattr(pipe, "_progress_bar_config", None)
        model.forward = self.model_call
        sched.step = self.scheduler_step
        pipe._progress_bar_config = {**self.progress_config, "disable": True}  # the replay is not progress
        try:
            out = stock_call(pipe, **kwargs)
        finally:
            if had_forward:
                model.forward = old_forward
            else:
                del model.forward
            if had_step:
                sched.step = old_step
            else:
                del sched.step
            if had_bar:
                pipe._progress_bar_config = old_bar
            else:
                del pipe._progress_bar_config
        if self.result is not None and self.replayed != self.T:
            raise RuntimeError(f"the stock loop replayed {self.replayed} of {self.T} solved steps")
        return out


# --------------------------------------------------------------------------------------------------------------
# the parallel pipeline class and parallelize()
# --------------------------------------------------------------------------------------------------------------
class ParallelPipelineMixin:
    """Mixed into a stock pipeline class by ``parallelize``; the denoising loop is solved by ``paratriton.solve``.

    Attribute ``paratriton``: the ``ParallelState`` this pipeline owns (set by ``parallelize``): ``method`` and
    ``options`` (change them with ``set_parallel_options``), ``last_result`` (the last call's ``SolveResult``:
    iterations, nfe, converged, residuals, trajectory), ``window_choices`` (``window="auto"``) and the graph cache.
    """

    paratriton: ParallelState

    @property
    def paratriton_result(self) -> SolveResult | None:
        """The last call's ``SolveResult``: an alias of ``paratriton.last_result`` (read only)."""
        return self.paratriton.last_result

    def set_parallel_options(self, method: str | None = None, **options: Any) -> None:
        """Replace the solver method and options (validated as in ``parallelize``)."""
        method = self.paratriton.method if method is None else method
        check_method_and_options(method, options)
        self.paratriton.method, self.paratriton.options = method, dict(options)

    def _parallel_call(self, stock_call: Callable, args: tuple, kwargs: dict) -> Any:
        _, spec = find_spec(type(self))  # looked up per call, so the table stays the single source of truth
        callback = kwargs.pop("callback_on_step_end", None)
        tensor_inputs = kwargs.pop("callback_on_step_end_tensor_inputs", None)
        sig = inspect.signature(stock_call)
        bound = sig.bind(self, *args, **kwargs)
        for name in _OWN_CALL_ARGS:  # passed positionally to a pipeline that has them
            if name in bound.arguments:
                value = bound.arguments.pop(name)
                callback = value if name == "callback_on_step_end" else callback
                tensor_inputs = value if name != "callback_on_step_end" else tensor_inputs
        call_kwargs = dict(list(bound.arguments.items())[1:])
        bound.apply_defaults()
        call_args = dict(list(bound.arguments.items())[1:])

        if callback is not None:
            if not callable(callback):
                raise TypeError("callback_on_step_end must be callable as callback(pipe, i, t, callback_kwargs)")
            requested = getattr(callback, "tensor_inputs", None) or tensor_inputs or ["latents"]
            bad = sorted(set(requested) - set(_CALLBACK_TENSORS))
            if bad:
                raise ValueError(
                    f"callback_on_step_end_tensor_inputs {bad} are not available in the parallel loop; "
                    f"allowed: {list(_CALLBACK_TENSORS)}"
                )
        _check_scheduler(self.scheduler)
        if spec.check is not None:
            spec.check(self, call_args)
        progress = dict(getattr(self, "_progress_bar_config", {}) or {})
        # held from before _ParallelCall reads the model's forward until run() has restored both patches
        with _holding(getattr(self, spec.denoiser), self.scheduler):
            call = _ParallelCall(self, self.paratriton, spec, call_args, callback, progress)
            return call.run(stock_call, call_kwargs)


_CLASS_CACHE: dict[type, type] = {}


def _parallel_class(stock: type) -> type:
    if stock in _CLASS_CACHE:
        return _CLASS_CACHE[stock]
    stock_call = stock.__call__

    @functools.wraps(stock_call)
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._parallel_call(stock_call, args, kwargs)

    __call__.__doc__ = (
        f"The stock {stock.__name__}.__call__ with the denoising loop solved by paratriton.solve "
        "(method and options: see paratriton.parallelize). callback_on_step_end(pipe, iteration, "
        "t, {'latents': current x_0 estimate}) is called once per solver iteration.\n\n" + (stock_call.__doc__ or "")
    )
    cls = type(
        f"Parallel{stock.__name__}", (ParallelPipelineMixin, stock), {"__call__": __call__, "__module__": __name__}
    )
    _CLASS_CACHE[stock] = cls
    return cls


def parallelize(pipe: DiffusionPipeline, method: str = "taa", **options: Any) -> DiffusionPipeline:
    """Return a pipeline like ``pipe`` (same components, no copy) whose denoising loop is solved in parallel.

    pipe:     a ``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``, ``PixArtAlphaPipeline``, ``DiTPipeline``,
              ``FluxPipeline``, ``DDPMPipeline`` or ``DDIMPipeline`` whose scheduler is a ``DDIMScheduler``,
              ``DDPMScheduler`` or ``FlowMatchEulerDiscreteScheduler`` (without clip_sample/thresholding)
    method:   any name in ``paratriton.METHODS`` (the solver registry, ``paratriton.solvers.REGISTRY``);
              ``options`` are the method's registry options (but ``callback``, which the pipeline sets) and go to
              ``paratriton.solve`` unchanged: ``window``, ``order``, ``history``, ``tol_abs``, ``tol_rel``,
              ``max_iters``, ``state_dtype``, ...; ``window="auto"`` (a windowed method) times the candidates
              once per problem shape. ``cuda_graph=True`` (``"sequential"`` and every windowed method): every
              iteration is one CUDA-graph replay (the graphed engine / ``GraphedSequential``), graphs cached
              between calls.

    Call the result exactly like the stock pipeline. With the same generator it returns the stock sequential
    pipeline's image up to the solver tolerance, DDPM-style step noise included. The solver state has
    ``state_dtype`` (the registry's default when None); the model sees its own dtype.

    Returns an instance of ``Parallel<Stock>`` (a subclass of the stock class, sharing ``pipe``'s components) that
    owns a fresh ``ParallelState`` as its ``paratriton`` attribute; ``pipe`` itself is not changed. After each call
    ``fast.paratriton.last_result`` holds that call's ``SolveResult`` (iterations, nfe, converged, residuals, and
    the trajectory ``[T+1, B, *latent_shape]``).
    Raises ``ValueError`` for an unsupported pipeline, scheduler or method, or an option out of range, and
    ``TypeError`` for an option the method does not take.
    """
    stock, _ = find_spec(type(pipe))
    check_method_and_options(method, options)
    cls = _parallel_class(stock)
    # A shallow copy with the parallel class: every component is shared and keeps its dtype and device.
    # (DiffusionPipeline.from_pipe would re-run __init__ and then cast all shared modules to one dtype, float32 by
    # default, which would also change the caller's pipeline.)
    new = cls.__new__(cls)
    new.__dict__.update(pipe.__dict__)
    if hasattr(pipe, "_progress_bar_config"):
        new._progress_bar_config = dict(pipe._progress_bar_config)
    _check_scheduler(new.scheduler)
    # its own state, never one shared with ``pipe`` (a parallel pipeline parallelized again gets a fresh one)
    new.paratriton = ParallelState(method, dict(options))
    return new
