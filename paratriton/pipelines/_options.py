"""Which methods and options ``parallelize`` takes: read from the solver registry, checked before sampling."""

from __future__ import annotations

from ..mesh import Mesh2D
from ..solvers.registry import WINDOWED_METHODS, method_spec

__all__ = ["GRAPHED_METHODS", "SET_BY_PIPELINE", "check_mesh", "check_method_and_options", "pipeline_options"]

# cuda_graph=True: the windowed methods on the graphed engine, "sequential" as GraphedSequential
GRAPHED_METHODS = ("sequential", *WINDOWED_METHODS)
# registry options the parallel pipeline sets itself: callback drives the progress bar and callback_on_step_end,
# cuda_graph picks the path (the graphed solvers cached on the parallel pipeline, or paratriton.solve)
SET_BY_PIPELINE = ("callback", "cuda_graph")


def pipeline_options(method: str, graphed: bool) -> tuple[str, ...]:
    """The registry options of ``method`` a ``parallelize`` user may set (with ``cuda_graph=graphed``)."""
    names = tuple(n for n in method_spec(method).option_names if n not in SET_BY_PIPELINE)
    if graphed and method == "sequential":  # GraphedSequential: replays, no per-step check
        names = tuple(n for n in names if n != "check_finite")
    return names


def check_method_and_options(method: str, options: dict) -> None:
    """Validate ``method`` and its options now, with the registry's checks, so errors come before sampling."""
    spec = method_spec(method)  # ValueError naming the registry's methods
    if "callback" in options:
        raise TypeError(
            "callback is set by the pipeline (it drives the progress bar); pass "
            "callback_on_step_end=... to the pipeline call instead"
        )
    if "init" in options:
        raise TypeError("init is not an option of parallelize (the pipeline prepares x_T itself)")
    options = dict(options)
    graphed = options.pop("cuda_graph", False)
    if not isinstance(graphed, bool):
        raise TypeError(f"cuda_graph must be True or False, got {graphed!r}")
    check_mesh(options.pop("mesh", None), graphed, options.get("window"))
    if options.get("window") == "auto":
        if not spec.windowed:
            raise ValueError(
                f"window='auto' needs a windowed method ({', '.join(WINDOWED_METHODS)}), got method={method!r}"
            )
        del options["window"]
    if graphed and method not in GRAPHED_METHODS:
        raise ValueError(f"cuda_graph=True supports method in {GRAPHED_METHODS}, got method={method!r}")
    allowed = pipeline_options(method, graphed)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(
            f"options {unknown} do not apply to method={method!r}"
            f"{' with cuda_graph=True' if graphed else ''}; allowed: {allowed}"
        )
    spec.check_options(options)  # names and ranges (window >= 1, tol > 0, ...)


def check_mesh(mesh: object, graphed: bool, window: object) -> None:
    """``mesh=``: a ``paratriton.mesh.Mesh2D``, with a window chosen by the caller and no CUDA graphs."""
    if mesh is None:
        return
    if not isinstance(mesh, Mesh2D):
        raise TypeError(f"mesh must be a paratriton.mesh.Mesh2D (paratriton.mesh.init_mesh), got {type(mesh).__name__}")
    if graphed:
        raise ValueError("mesh= with cuda_graph=True is not supported: the row all-gather runs outside the graph")
    if window == "auto":
        raise ValueError(
            "mesh= with window='auto' is not supported: each rank would time its own candidates and could choose "
            "another window than its peers; pass a window size"
        )
