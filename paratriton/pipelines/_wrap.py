"""``parallelize(pipe)``: run a stock diffusers pipeline with its denoising loop solved by ``paratriton.solve``.

How it works (and why this shape)
---------------------------------
``parallelize`` returns an instance of ``Parallel<Class>``, a subclass of the pipeline's own class (a user subclass
included, so its overrides of helper methods such as ``prepare_latents`` or ``encode_prompt`` apply), sharing every
component of the original (a shallow copy, so nothing is re-initialised or cast). Its ``__call__`` runs that class's
**stock** ``__call__`` unchanged (prompt encoding, input checks, latent preparation, timesteps including Flux's
dynamic shift, the VAE decode, the safety checker, ``output_type``, ``return_dict`` are diffusers' own code) on a
**per-call** private copy of the pipeline whose network attribute is a proxy module and whose scheduler is a deep
copy (``_call.py``). Nothing shared is ever patched, so the user's pipeline, its modules and its scheduler are
never modified: not by another thread, not by an exception raised mid-call.

Only the loop-body facts in ``_specs.py`` (CFG row order, learned sigma, which generator ``scheduler.step`` gets,
Flux's ``t / 1000``, where the loop ends) are pipeline specific; each replayed step checks the rest at run time.
A subclass that overrides ``__call__`` itself is refused by name (its loop is unknown). Calls of one parallel
pipeline from several threads serialise on its ``ParallelState.lock`` (they share its result and graph cache);
calls of different parallel pipelines, and stock calls, run concurrently, also when they share components.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..schedulers import REFUSED_SCHEDULERS, SUPPORTED_SCHEDULERS
from ..solvers import SolveResult
from ._call import _ParallelCall
from ._guards import check_diffusers_version
from ._options import check_method_and_options
from ._specs import find_spec
from ._state import ParallelState

if TYPE_CHECKING:  # diffusers is imported lazily, only once a pipeline is parallelized
    from diffusers import DiffusionPipeline

# arguments of the parallel __call__ that the stock loop must not see: the parallel loop calls them per step
_OWN_CALL_ARGS = ("callback_on_step_end", "callback_on_step_end_tensor_inputs")
_CALLBACK_TENSORS = ("latents",)


def _check_scheduler(scheduler) -> None:
    name = type(scheduler).__name__
    if name in REFUSED_SCHEDULERS:
        raise ValueError(f"scheduler {name} is not supported by parallel samplers: {REFUSED_SCHEDULERS[name]}")
    if name not in SUPPORTED_SCHEDULERS:
        raise ValueError(
            f"scheduler {name} is not supported by parallel samplers; supported: {SUPPORTED_SCHEDULERS}"
            f" (e.g. pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config))"
        )


# --------------------------------------------------------------------------------------------------------------
# the parallel pipeline class and parallelize()
# --------------------------------------------------------------------------------------------------------------
class ParallelPipelineMixin:
    """Mixed into a pipeline class by ``parallelize``; the denoising loop is solved by ``paratriton.solve``.

    Attribute ``paratriton``: the ``ParallelState`` this pipeline owns (set by ``parallelize``): ``method`` and
    ``options`` (change them with ``set_parallel_options``), ``last_result`` (the last call's ``SolveResult``:
    iterations, nfe, converged, residuals, trajectory), ``window_choices`` (``window="auto"``) and the graph cache.
    Class attribute ``_paratriton_wrapped``: the pipeline class whose ``__call__`` runs (and whose name
    ``save_pretrained`` writes, so diffusers loads the saved pipeline as that class).
    """

    paratriton: ParallelState
    _paratriton_wrapped: type

    @property
    def paratriton_result(self) -> SolveResult | None:
        """The last call's ``SolveResult``: an alias of ``paratriton.last_result`` (read only)."""
        return self.paratriton.last_result

    def set_parallel_options(self, method: str | None = None, **options: Any) -> None:
        """Replace the solver method and options (validated as in ``parallelize``)."""
        method = self.paratriton.method if method is None else method
        check_method_and_options(method, options)
        self.paratriton.method, self.paratriton.options = method, dict(options)

    def to_json_string(self) -> str:
        """The pipeline config with the wrapped class's name: ``save_pretrained`` (and ``push_to_hub``) write it to
        ``model_index.json``, and diffusers can only load a class it knows."""
        config = json.loads(super().to_json_string())
        config["_class_name"] = self._paratriton_wrapped.__name__
        return json.dumps(config, indent=2, sort_keys=True) + "\n"

    def _parallel_call(self, stock_call: Callable, args: tuple, kwargs: dict) -> Any:
        wrapped = self._paratriton_wrapped
        _, spec = find_spec(wrapped)  # looked up per call, so the table stays the single source of truth
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
        if spec.loop.check is not None:
            spec.loop.check(self, call_args)
        progress = dict(getattr(self, "_progress_bar_config", {}) or {})
        with self.paratriton.lock:  # this pipeline's result and graph cache are one per state
            # no stale result: a call that raises (KeyboardInterrupt included) leaves None, not the previous call's
            self.paratriton.last_result = None
            call = _ParallelCall(self, wrapped, self.paratriton, spec, call_args, callback, progress)
            return call.run(stock_call, call_kwargs)


_CLASS_CACHE: dict[type, type] = {}


def _wrapped_class(cls: type) -> type:
    """The pipeline class a (possibly already parallel) pipeline class runs."""
    return cls._paratriton_wrapped if issubclass(cls, ParallelPipelineMixin) else cls


def _parallel_class(wrapped: type) -> type:
    if wrapped in _CLASS_CACHE:
        return _CLASS_CACHE[wrapped]
    stock_call = wrapped.__call__

    @functools.wraps(stock_call)
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._parallel_call(stock_call, args, kwargs)

    __call__.__doc__ = (
        f"The stock {wrapped.__name__}.__call__ with the denoising loop solved by paratriton.solve "
        "(method and options: see paratriton.parallelize). callback_on_step_end(pipe, i, t, {'latents': ...}) is "
        "called once per loop step as the steps converge, with the stock meaning of i, t and latents.\n\n"
        + (stock_call.__doc__ or "")
    )
    namespace = {"__call__": __call__, "__module__": __name__, "_paratriton_wrapped": wrapped}
    cls = type(f"Parallel{wrapped.__name__}", (ParallelPipelineMixin, wrapped), namespace)
    _CLASS_CACHE[wrapped] = cls
    return cls


def parallelize(pipe: DiffusionPipeline, method: str = "taa", **options: Any) -> DiffusionPipeline:
    """Return a pipeline like ``pipe`` (same components, no copy) whose denoising loop is solved in parallel.

    pipe:     one of ``paratriton.pipelines.SUPPORTED_PIPELINES`` (Stable Diffusion, SDXL and their img2img and
              inpainting pipelines, SD3, PixArt-alpha, DiT, Flux, Flux Kontext, Flux.2, SANA, LTX-Video, CogVideoX,
              HiDream-I1, the SD x4 upscaler, AudioLDM2, Stable Audio, DDPM, DDIM), or a subclass of one that does not
              override ``__call__``, whose scheduler is one of ``paratriton.schedulers.SUPPORTED_SCHEDULERS``:
              DDIM, DDPM, flow-match Euler (one-tap) and, traced into k-tap operators
              (``paratriton.schedulers.traced``), Euler, Euler ancestral, DPM-Solver(++) multistep (SDE variants
              included), UniPC, Heun, PNDM, LMS, DEIS and CogVideoX's DDIM; no clip_sample/thresholding
              (``REFUSED_SCHEDULERS`` names the ones refused with their reason). Heun and PNDM's
              Runge-Kutta warm-up solve one step per network call (``T = len(scheduler.timesteps)``); the
              stochastic ones (Euler ancestral, SDE-DPM-Solver) draw their step noise up front in the stock order.
              With ``DiTPipeline`` (whose loop steps the scaled model input) the k-tap ones run only when
              ``scale_model_input`` is the identity
    method:   any name in ``paratriton.METHODS`` (the solver registry, ``paratriton.solvers.REGISTRY``);
              ``options`` are the method's registry options (but ``callback``, which the pipeline sets) and go to
              ``paratriton.solve`` unchanged: ``window``, ``order``, ``history``, ``tol_abs``, ``tol_rel``,
              ``max_iters``, ``state_dtype``, ...; ``window="auto"`` (a windowed method) times the candidates
              once per problem shape. ``cuda_graph=True`` (``"sequential"`` and every windowed method): every
              iteration is one CUDA-graph replay (the graphed engine / ``GraphedSequential``), graphs cached
              between calls and keyed on the network's weights, structure, processors and adapters.
              ``mesh=paratriton.mesh.init_mesh(G, S)`` (under ``torchrun``): every window call's rows are split over
              the ``G`` time groups (the network's own context parallelism,
              ``paratriton.mesh.enable_sequence_parallel``, splits the tokens inside a group); needs a fixed
              ``window`` and ``cuda_graph=False``.

    Call the result exactly like the stock pipeline. With the same generator it returns the stock sequential
    pipeline's image up to the solver tolerance, DDPM-style step noise included. The solver state has
    ``state_dtype`` (the registry's default when None); the model sees its own dtype.

    Returns an instance of ``Parallel<Class>`` (a subclass of ``pipe``'s class, sharing ``pipe``'s components) that
    owns a fresh ``ParallelState`` as its ``paratriton`` attribute; ``pipe`` itself is not changed, and neither are
    its components during a call. After each call ``fast.paratriton.last_result`` holds that call's
    ``SolveResult`` (iterations, nfe, converged, residuals, and the trajectory ``[T+1, B, *latent_shape]``).
    Raises ``ValueError`` for an unsupported pipeline, a subclass overriding ``__call__``, an unsupported
    scheduler or method, or an option out of range, and ``TypeError`` for an option the method does not take.
    Warns once per process when diffusers is not the tested release line (0.42.x).
    """
    wrapped = _wrapped_class(type(pipe))
    stock, _ = find_spec(wrapped)
    if wrapped.__call__ is not stock.__call__:
        raise ValueError(
            f"{wrapped.__name__} overrides {stock.__name__}.__call__: its denoising loop is unknown to "
            f"paratriton.parallelize, which could return a silently different image. Parallelize a "
            f"{stock.__name__} (subclasses that override helper methods but not __call__ are supported)"
        )
    check_diffusers_version()
    check_method_and_options(method, options)
    cls = _parallel_class(wrapped)
    # A shallow copy with the parallel class: every component is shared and keeps its dtype and device.
    # (DiffusionPipeline.from_pipe would re-run __init__ and then cast all shared modules to one dtype, float32 by
    # default, which would also change the caller's pipeline.)
    new = cls.__new__(cls)
    new.__dict__.update(pipe.__dict__)
    if hasattr(pipe, "_progress_bar_config"):
        new._progress_bar_config = dict(pipe._progress_bar_config)
    _check_scheduler(new.scheduler)
    # its own state, never one shared with ``pipe`` (a parallel pipeline parallelized again gets a fresh one)
    new.__dict__["paratriton"] = ParallelState(method, dict(options))
    return new
