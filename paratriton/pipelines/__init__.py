"""diffusers integration: ``parallelize(pipe, method="taa", **options)`` solves a stock pipeline's denoising loop in
parallel, and ``plan(pipe, steps)`` picks the method and window by timing them on the pipeline. diffusers is
imported only when a pipeline is parallelized, so ``import paratriton`` stays light.

Layout (imports go one way, down this list; nothing imports ``_plan``):
``_plan.py``: ``plan`` (``paratriton.plan``: pipelines here, denoisers to ``paratriton.planner``), ``plan_pipeline``,
``PipelinePlan``; ``_wrap.py``: ``parallelize`` and the parallel pipeline class; ``_call.py``: one parallel call (the
per-call pipeline copy and scheduler copy), coordinating its stages ``_capture.py`` (the proxy networks, the first
call as a frozen value), ``_problem.py`` (denoiser, step operator, noise, loop range; with ``_denoiser.py`` and
``_operator.py``), ``_solve.py`` (eager, graphed, ``window="auto"``) and ``_replay.py`` (the scheduler copy's
``step``, its checks, callbacks, interrupt); ``_graphed.py``: the
CUDA-graphed solvers cached per problem; ``_guards.py``: the model fingerprint the graph cache is keyed on, the
stateful-hook check, the diffusers version check; ``_options.py``: methods and options, from the solver registry;
``_state.py``: ``ParallelState``, what a parallel pipeline owns (``fast.paratriton``); ``_specs.py``: the
per-pipeline loop facts; ``_trees.py``: nested conditioning helpers. ``_modular.py``: ``parallelize_modular``, modular
diffusers' denoise loop blocks solved in parallel (its network calls recorded and batched by ``_modular_calls.py``).
"""

from ._modular import parallelize_modular
from ._plan import PipelinePlan, plan, plan_pipeline
from ._specs import SUPPORTED_PIPELINES
from ._state import ParallelState
from ._wrap import ParallelPipelineMixin, parallelize

__all__ = [
    "SUPPORTED_PIPELINES",
    "ParallelPipelineMixin",
    "ParallelState",
    "PipelinePlan",
    "parallelize",
    "parallelize_modular",
    "plan",
    "plan_pipeline",
]
