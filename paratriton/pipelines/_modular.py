"""``parallelize_modular(pipe)``: a modular diffusers pipeline whose denoise loops are solved by ``paratriton.solve``.

Why a function that returns a pipeline (and not a block to swap in): ``ModularPipeline.blocks`` returns a deep copy,
so ``pipe.blocks.sub_blocks["denoise"] = ...`` changes nothing, and the loop sits inside auto and sequential blocks
whose nesting differs per model. ``parallelize_modular`` finds every ``LoopSequentialPipelineBlocks`` in a copy of
the pipeline's blocks and returns a shallow copy of the pipeline (sharing its components) that runs them in parallel.

How (one call): the model's own loop block runs unchanged (its ``__call__``: guider set-up, warm-up count, progress
bar) on a private copy of the pipeline whose networks are ``ModelProxy`` objects and whose scheduler and guider
are copies. At the loop's first step the whole trajectory is solved (``paratriton.solve``, any method): the solver's
denoiser runs the loop's sub-blocks before ``after_denoiser`` (``before_denoiser``, ``denoiser``: the guider's
branches and combine, per-step switches included) for every step of the window, recording the network calls, makes
one batched call per network and argument signature (per-row timesteps), and replays the sub-blocks with the
outputs: ``block_state.noise_pred`` is f_i's model output, exactly. The scheduler step is the step operator
extracted or traced from the scheduler copy. Then the loop runs every step with the solved latents: the sub-blocks
are served the recorded outputs and ``after_denoiser`` (``scheduler.step``) runs unchanged, checked against the
solved trajectory. Nothing shared is modified; the user's pipeline is unchanged afterwards.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

from ._guards import check_diffusers_version
from ._modular_solve import ModularSolve
from ._options import check_method_and_options

__all__ = ["parallelize_modular"]


def parallelize_modular(pipe: Any, method: str = "taa", **options: Any) -> Any:
    """A copy of the modular pipeline ``pipe`` whose denoise loops are solved in parallel with ``method`` (one of
    ``paratriton.METHODS``; ``options`` are its options). The copy shares ``pipe``'s components; ``pipe`` is not
    changed. ``fast.paratriton.last_result`` is the last call's ``SolveResult`` (``method``, ``options`` beside it).

    A function returning a pipeline rather than a block to swap in: ``pipe.blocks`` is a deep copy (assigning to its
    ``sub_blocks`` changes nothing), the loop block is nested differently per model (inside auto and sequential
    blocks), and each call must run on private schedulers and guiders; one line then fits every modular model."""
    from diffusers.modular_pipelines import ModularPipeline

    if not isinstance(pipe, ModularPipeline):
        raise TypeError(f"parallelize_modular takes a diffusers ModularPipeline, got {type(pipe).__name__}")
    check_diffusers_version()
    check_method_and_options(method, options)
    if options.get("cuda_graph"):
        raise ValueError(
            "parallelize_modular: cuda_graph=True does not apply: the loop's sub-blocks run in Python for every step "
            "of a window (the guider, the recorded calls), which a CUDA graph cannot capture"
        )
    if options.get("mesh") is not None:
        raise ValueError("parallelize_modular: mesh= is not supported; use paratriton.parallelize")
    if options.get("window") == "auto":
        raise ValueError("parallelize_modular: window='auto' is not timed here; pass a window size (or none)")
    blocks = copy.deepcopy(pipe._blocks)
    state = SimpleNamespace(method=method, options=dict(options), last_result=None)
    if not _swap_loops(blocks, state):
        raise ValueError(f"{type(blocks).__name__} has no denoise loop (LoopSequentialPipelineBlocks) to parallelize")
    fast = copy.copy(pipe)  # shares the components; its own blocks, specs and state
    specs = {k: dict(getattr(pipe, k)) for k in ("_component_specs", "_config_specs") if hasattr(pipe, k)}
    fast.__dict__.update(specs, _blocks=blocks, paratriton=state)
    fast.__class__ = _parallel_class(type(pipe), _ParallelPipeline)
    return fast


def _swap_loops(block: Any, state: SimpleNamespace) -> int:
    from diffusers.modular_pipelines import LoopSequentialPipelineBlocks

    swapped = 0
    for name, sub in list((getattr(block, "sub_blocks", None) or {}).items()):
        if isinstance(sub, LoopSequentialPipelineBlocks):
            names = list(sub.sub_blocks)
            if not names or names[-1] != "after_denoiser":
                raise ValueError(
                    f"{type(sub).__name__}: its sub-blocks {names} do not end with 'after_denoiser' (the scheduler "
                    "step): the parallel loop cannot tell the model's part of a step from the step itself"
                )
            par = object.__new__(_parallel_class(type(sub), _ParallelLoop))
            par.__dict__.update(sub.__dict__, _paratriton=state)
            block.sub_blocks[name] = par
            swapped += 1
        else:
            swapped += _swap_loops(sub, state)
    return swapped


_CLASSES: dict = {}


def _parallel_class(cls: type, mixin: type) -> type:
    """``Parallel<Class>``: a subclass made here with ``mixin``'s methods first, so nothing of diffusers' classes
    changes (``_ParallelPipeline`` for the pipeline, ``_ParallelLoop`` for a loop block)."""
    if (cls, mixin) not in _CLASSES:
        _CLASSES[cls, mixin] = type(f"Parallel{cls.__name__}", (mixin, cls), {})
    return _CLASSES[cls, mixin]


class _ParallelPipeline:
    """Each call runs on a private copy of the pipeline whose schedulers and guiders are copies: the blocks before
    the loop (``set_timesteps``) and the loop's guider set-up write to those, not to the shared components."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from diffusers.guiders.guider_utils import BaseGuidance
        from diffusers.schedulers.scheduling_utils import SchedulerMixin

        private = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, (SchedulerMixin, BaseGuidance)):
                private.__dict__[name] = copy.deepcopy(value)
        return super(_ParallelPipeline, private).__call__(*args, **kwargs)


class _ParallelLoop:
    _paratriton: SimpleNamespace

    def __call__(self, components: Any, state: Any) -> tuple:
        run = ModularSolve(self, components)
        _, state = super().__call__(run.final, state)  # the stock loop: its loop_step is ours
        if run.next_step != getattr(run, "T", 0):
            raise RuntimeError(f"the loop stepped {run.next_step} of the {run.T} solved steps")
        self._paratriton.last_result = run.result
        return components, state

    def loop_step(self, components: Any, block_state: Any, i: int, t: Any) -> tuple:
        run = components.__dict__["_paratriton_run"]
        if not run.solved:
            run.solve(block_state)
        return run.final_step(block_state, i, t)
