"""What a parallel pipeline owns: ``fast.paratriton``, one ``ParallelState`` per ``parallelize`` result.

The user's pipeline is never written to: ``parallelize`` returns a new object (sharing the components) that holds
this state, and every parallel call reads its method and options here and writes its results back here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..planner import WindowChoice
    from ..solvers import SolveResult
    from ._graphed import GraphedSolvers

__all__ = ["ParallelState"]


@dataclass
class ParallelState:
    """The solver state of one parallel pipeline (``fast.paratriton``).

    method, options: what every call solves with (``options`` as given to ``parallelize``, ``cuda_graph`` and
                     ``window="auto"`` included); change them with ``fast.set_parallel_options``;
    last_result:     the last call's ``SolveResult`` (``iterations``, ``nfe``, ``converged``, ``residuals``,
                     ``window_history`` and the float64 trajectory ``[T+1, B, *latent_shape]``), None before;
    window_choices:  ``window="auto"``: the ``WindowChoice`` timed per problem, keyed by
                     ``(steps, x_T shape, device, method, cuda_graph)``; reused by later calls of that shape;
    auto_hints:      ``window="auto"``: timings known from elsewhere, which ``paratriton.plan`` passes from one
                     method's pass to the next, keyed by ``((steps, x_T shape, device), "bound_ms")`` (the fastest
                     candidate so far: slower candidates stop early) and ``(..., cuda_graph, "sequential_ms")`` (the
                     sequential sampler's time: not timed again);
    graphed:         ``cuda_graph=True``: the captured solvers of the last problem (one problem shape is kept);
    plan_cache:      ``window="auto"``: remember the choice on disk for later processes (None: unless
                     ``PARATRITON_PLAN_CACHE=0``; False: never; see ``paratriton._plan_cache``);
    lock:            held for the length of a call: calls of one parallel pipeline share the above, so calls from
                     several threads take turns (other parallel pipelines and stock calls do not wait).
    """

    method: str
    options: dict[str, Any] = field(default_factory=dict)
    last_result: SolveResult | None = None
    window_choices: dict[tuple, WindowChoice] = field(default_factory=dict)
    auto_hints: dict[tuple, float] = field(default_factory=dict)
    graphed: GraphedSolvers | None = field(default=None, repr=False)
    plan_cache: bool | None = None
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
