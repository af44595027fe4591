"""The method registry: one entry per method, read by ``solve``, ``parallelize``, the planner and the CLI.

An entry holds the method's options with their ranges, whether it runs on the windowed engine (and so can be
CUDA-graphed and sharded) and how to build its solver. Adding a windowed method is one rule (``rules.py``) and one
entry here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ._common import Solver
from .engine import Engine
from .rules import AndersonRule, FixedPointRule, Rule
from .sequential import SequentialSolver
from .srds import SRDS, SRDSPipelined
from .tolerance import TOLERANCE_OPTIONS, Tolerance, positive_number


@dataclass(frozen=True)
class Option:
    """One solver option: ``kind`` is "int", "float", "bool", "dtype", "choice" or "callable"; ``lo``/``hi`` bound
    numbers (inclusive); ``none_ok``: None is allowed (and means ``default`` is computed at solve time).

    key:   its key in the command line's ``--methods NAME:KEY=N`` (``python -m paratriton``); None: not settable there
    steps: how an int relates to the number of steps ``T``, which only the solve knows: "at_most" (a value above
           ``T`` acts as ``T``; the command line asks for ``lo..T``) or "divides" (it must divide ``T``)
    """

    name: str
    kind: str
    default: Any
    help: str
    lo: float | None = None
    hi: float | None = None
    none_ok: bool = False
    choices: tuple = ()
    key: str | None = None
    steps: str | None = None

    def range_text(self) -> str:
        if self.kind == "int":
            return f"an int in [{int(self.lo)}, {int(self.hi)}]" if self.hi is not None else f"an int >= {int(self.lo)}"
        if self.kind == "float":
            return "a finite number > 0"
        if self.kind == "dtype":
            return "torch.float32 or torch.float64"
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        return {"bool": "True or False", "callable": "a callable"}[self.kind]

    def check(self, value: Any) -> Any:
        """The validated value; raises naming the option and its allowed range."""
        if value is None and self.none_ok:
            return None
        allowed = self.range_text() + (" or None" if self.none_ok else "")
        bad = ValueError(f"{self.name} must be {allowed}, got {value!r}")
        if self.kind == "int":
            # no silent truncation: a float tensor's __index__ truncates (torch.tensor(3.7) -> 3)
            tensor_ok = not torch.is_tensor(value) or (
                value.numel() == 1 and not value.is_floating_point() and not value.is_complex()
            )
            if isinstance(value, bool) or not hasattr(value, "__index__") or not tensor_ok:
                raise TypeError(f"{self.name} must be {allowed}, got {type(value).__name__} {value!r}")
            value = int(value)
            if value < self.lo or (self.hi is not None and value > self.hi):
                raise bad
        elif self.kind == "float":
            value = positive_number(self.name, value, allowed)
        elif self.kind == "bool":
            if not isinstance(value, (bool, int)) or value not in (0, 1):
                raise bad
            value = bool(value)
        elif self.kind == "dtype":
            if value not in (torch.float32, torch.float64):
                raise bad
        elif self.kind == "choice":
            if value not in self.choices:
                raise bad
        elif self.kind == "callable" and not callable(value):
            raise TypeError(f"{self.name} must be {allowed}, got {type(value).__name__}")
        return value


_TOL = (
    Option(
        "tol",
        "float",
        None,
        "target RMS distance of the sample to the sequential sample, in the sample's units (None: 1e-3 unless "
        "tol_abs/tol_rel are given)",
        none_ok=True,
    ),
    Option(
        "tol_abs",
        "float",
        None,
        "expert: absolute per-step RMS residual threshold instead of tol (None with tol_rel set: 1e-3, scaled by "
        "100/T beyond 100 steps)",
        none_ok=True,
    ),
    Option(
        "tol_rel",
        "float",
        None,
        "expert: per-step threshold relative to the step's posterior std instead of tol (None with tol_abs set: 1e-3)",
        none_ok=True,
    ),
    Option("max_iters", "int", None, "stop after this many iterations (None: at most T)", lo=1, none_ok=True, key="it"),
)
_RUN = (
    Option("state_dtype", "dtype", None, "state precision (None: float32 on CUDA, float64 elsewhere)", none_ok=True),
    Option("callback", "callable", None, "callback(IterationInfo) after every iteration", none_ok=True),
)
_ENGINE = (
    Option(
        "window", "int", None, "steps updated per iteration (None: all T)", lo=1, none_ok=True, key="w", steps="at_most"
    ),
    *_TOL,
    *_RUN,
    Option("cuda_graph", "bool", False, "capture each iteration into a CUDA graph (CUDA only)"),
    Option("buckets", "int", 4, "full-window sizes captured: T, T/2, ... (graphed)", lo=1, hi=16),
    Option("iters_per_sync", "int", 1, "iterations per graph replay between host reads", lo=1, hi=64),
    Option(
        "backend",
        "choice",
        "auto",
        "kernels: 'auto' (Triton on CUDA, C++ on the CPU) or 'reference' (plain torch)",
        choices=("auto", "reference"),
    ),
)
_ORDER = Option(
    "order",
    "int",
    None,
    "k of the order-k equations (None: the whole window)",
    lo=1,
    none_ok=True,
    key="k",
    steps="at_most",
)
_ANDERSON = (
    Option(
        "base",
        "choice",
        "picard",
        "the map accelerated: 'picard' (unit weights, ParaDiGMS; the default, fewest iterations in the issue-23 "
        "sweep) or 'order' (the order-k equations' affine weights, the ParaTAA paper's)",
        choices=("picard", "order"),
    ),
    Option(
        "order",
        "int",
        None,
        "k of the band of the base map's sums (None: the whole window)",
        lo=1,
        none_ok=True,
        key="k",
        steps="at_most",
    ),
    Option(
        "history",
        "int",
        None,
        "Anderson secant pairs (None: 2 for one trajectory, 1 for a batch: fewest iterations in the issue-23 sweep)",
        lo=1,
        hi=8,
        none_ok=True,
        key="h",
    ),
    Option("ridge", "float", 1e-3, "relative ridge of the least squares"),
    Option(
        "safeguard", "bool", True, "a step whose residual grew after an accelerated update takes the plain step next"
    ),
)


@dataclass(frozen=True)
class MethodSpec:
    """A method: its name, a one-line summary, its options, and how its solver is built."""

    name: str
    summary: str
    options: tuple[Option, ...]
    windowed: bool  # runs on the engine: sliding windows, CUDA graphs, sharding
    build: Callable[[dict], Solver] = field(repr=False)

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options)

    def check_options(self, options: dict) -> dict:
        """All options with defaults filled in, validated; unknown names raise ``TypeError`` naming them.
        ``tol``/``tol_abs``/``tol_rel`` come back as one ``tolerance`` (a ``Tolerance``, validated there)."""
        unknown = sorted(set(options) - set(self.option_names))
        if unknown:
            raise TypeError(
                f"options {unknown} do not apply to method={self.name!r}; its options are {list(self.option_names)}"
            )
        checked: dict[str, Any] = {}
        for o in self.options:
            if o.name not in TOLERANCE_OPTIONS:
                checked[o.name] = o.check(options.get(o.name, o.default))
            elif "tolerance" not in checked:  # the three made into one value, validated there (in option order)
                checked["tolerance"] = Tolerance(*(options.get(n) for n in TOLERANCE_OPTIONS))
        return checked

    def make(self, **options: Any) -> Solver:
        """Build the solver (a ``Solver``: ``.solve(model, coeffs, x_T, noise, init=None)``)."""
        return self.build(self.check_options(options))


def _engine(method: str, rule_of: Callable[[dict], Rule]) -> Callable[[dict], Solver]:
    def build(o: dict) -> Engine:
        kw = {
            k: o[k]
            for k in (
                "window",
                "tolerance",
                "max_iters",
                "state_dtype",
                "callback",
                "cuda_graph",
                "buckets",
                "iters_per_sync",
                "backend",
            )
        }
        return Engine(rule_of(o), method=method, **kw)

    return build


def _fp_rule(o: dict) -> Rule:
    return FixedPointRule(order=o["order"])


def _picard_rule(o: dict) -> Rule:
    return FixedPointRule(order=None, unit_weights=True)


def _anderson_rule(triangular: bool) -> Callable[[dict], Rule]:
    def rule(o: dict) -> Rule:
        return AndersonRule(
            order=o["order"],
            unit_weights=o["base"] == "picard",
            history=o["history"],
            ridge=o["ridge"],
            safeguard=o["safeguard"],
            triangular=triangular,
        )

    return rule


def _sequential(o: dict) -> Solver:
    return SequentialSolver(**o)


def _srds(pipelined: bool) -> Callable[[dict], Solver]:
    def build(o: dict) -> Solver:
        return (SRDSPipelined if pipelined else SRDS)(**o)

    return build


_SRDS_OPTIONS = (
    Option(
        "blocks",
        "int",
        None,
        "Parareal blocks K, a divisor of T (None: closest to sqrt(T))",
        lo=1,
        none_ok=True,
        key="blocks",
        steps="divides",
    ),
    *_TOL,
    *_RUN,
)

REGISTRY: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "sequential",
            "the sequential sampler, one model call per step (the ground truth)",
            (
                *_RUN,
                Option("cuda_graph", "bool", False, "the whole loop as one CUDA graph (CUDA only)"),
                Option("check_finite", "bool", True, "stop on a non-finite model output (one read per step)"),
            ),
            windowed=False,
            build=_sequential,
        ),
        MethodSpec("fp", "fixed point on the order-k equations", (*_ENGINE, _ORDER), True, _engine("fp", _fp_rule)),
        MethodSpec(
            "picard",
            "Picard iteration (ParaDiGMS): unit weights over the window",
            _ENGINE,
            True,
            _engine("picard", _picard_rule),
        ),
        MethodSpec(
            "aa",
            "standard Anderson acceleration (one global least squares) of the same base maps",
            (*_ENGINE, *_ANDERSON),
            True,
            _engine("aa", _anderson_rule(False)),
        ),
        MethodSpec(
            "taa",
            "triangular Anderson acceleration (ParaTAA) of the Picard map (base='picard') or the order-k map",
            (*_ENGINE, *_ANDERSON),
            True,
            _engine("taa", _anderson_rule(True)),
        ),
        MethodSpec("srds", "SRDS: Parareal over blocks of steps", _SRDS_OPTIONS, False, _srds(False)),
        MethodSpec("srds_pipelined", "SRDS with the pipelined (wavefront) schedule", _SRDS_OPTIONS, False, _srds(True)),
    )
}

METHODS = tuple(REGISTRY)
WINDOWED_METHODS = tuple(n for n, s in REGISTRY.items() if s.windowed)


def method_spec(method: str) -> MethodSpec:
    """The registry entry of ``method``; raises naming the allowed methods."""
    spec = REGISTRY.get(method) if isinstance(method, str) else None
    if spec is None:
        raise ValueError(f"method={method!r} is not supported; use one of {METHODS}")
    return spec


def make_solver(method: str, **options: Any) -> Solver:
    """The solver of ``method`` with ``options`` (validated against the registry)."""
    return method_spec(method).make(**options)


def graphed_solver(method: str = "taa", **options: Any) -> Solver:
    """``make_solver(method, cuda_graph=True, ...)``: the engine's graphed schedule (captured on CUDA)."""
    return make_solver(method, **{"cuda_graph": True, **options})
