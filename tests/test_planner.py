"""The planner predicts from the batch-time curve and chooses the sequential sampler when parallel cannot win."""

import ast
import pathlib
import pkgutil
import subprocess
import sys

import pytest
import torch

import paratriton
from paratriton.planner import bucket_sizes, plan
from paratriton.testing import GaussianMixture
from paratriton.testing.gaussian_mixture import default_schedule


def _problem(T=40):
    cf = default_schedule(T)
    model = GaussianMixture.random((2, 3, 3), 3, seed=0).denoiser(cf)
    x_T = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    return cf, model, x_T


def test_bucket_sizes():
    assert bucket_sizes(100, 4) == [13, 25, 50, 100]
    assert bucket_sizes(3, 4) == [1, 2, 3]


def test_plan_uses_the_calibration_schedule_and_curve():
    cf, model, x_T = _problem()
    p = plan(model, cf, x_T, schedule=None, solver_ms=0.25)
    assert 1 <= len(p.schedule) <= 40 and all(h in bucket_sizes(40, 4) for h in p.schedule)
    expected_par = sum(p.batch_ms[h] + 0.25 for h in p.schedule)
    assert abs(p.parallel_ms - expected_par) < 1e-9
    assert abs(p.sequential_ms - 40 * p.batch_ms[1]) < 1e-9
    # the choice follows the two predictions (not just "one of the two methods")
    assert p.method == ("taa" if p.parallel_ms < p.sequential_ms else "sequential") and p.reason


class _Costed:
    """A denoiser with a known batch-time curve ``ms(rows)``, seeded into the planner's cache: the planner's
    decisions are tested on exact numbers, not on ``time.sleep`` timings of a shared machine."""

    def __init__(self, model, shape, ms):
        from paratriton import planner

        self.model = model
        planner._CURVES[self] = {(tuple(shape), "cpu"): {n: ms(n) for n in range(1, 200)}}

    def __call__(self, x, s):
        return self.model(x, s)


@pytest.mark.parametrize(
    "per_row_ms,overhead_ms,expect",
    [
        (1.0, 0.0, "sequential"),  # linear cost: 10 windows of 40 rows cost 400 ms > 40 sequential calls (40 ms)
        (0.0, 1.0, "taa"),  # flat cost: 4 iterations (4 ms + solver) beat 40 calls (40 ms)
    ],
)
def test_plan_decides_from_the_batch_time_curve(per_row_ms, overhead_ms, expect):
    cf, model, x_T = _problem()
    costed = _Costed(model, x_T.shape[1:], lambda n: overhead_ms + per_row_ms * n)
    schedule = [40] * 10 if expect == "sequential" else [40, 40, 20, 10]
    p = plan(costed, cf, x_T, schedule=schedule, solver_ms=0.1)
    seq = 40 * (overhead_ms + per_row_ms)
    par = sum(overhead_ms + per_row_ms * h + 0.1 for h in schedule)
    assert abs(p.sequential_ms - seq) < 1e-9 and abs(p.parallel_ms - par) < 1e-9
    assert p.method == expect and p.reason.startswith("parallel" if expect == "taa" else "sequential")
    assert p.predicted_ms == (par if expect == "taa" else seq)


def test_plan_break_even():
    # parallel wins exactly when its predicted time is below the sequential one: one side of the line each
    cf, model, x_T = _problem()
    costed = _Costed(model, x_T.shape[1:], lambda n: 1.0)
    for solver_ms, expect in ((8.9, "taa"), (9.1, "sequential")):  # 4 x (1 + s) vs 40 x 1
        assert plan(costed, cf, x_T, schedule=[40, 40, 20, 10], solver_ms=solver_ms).method == expect


# ---------------------------------------------------------------------------------------------------------------
# layout: planning knows nothing of diffusers, and no import circle (issue 16, "Layout")
# ---------------------------------------------------------------------------------------------------------------
PKG = pathlib.Path(paratriton.__file__).parent


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _relative_imports(path: pathlib.Path, *, in_functions: bool) -> list[tuple[int, str]]:
    """(line, absolute module) of the package-relative imports at module level or inside function bodies
    (``if TYPE_CHECKING:`` blocks are skipped: they never run)."""
    tree = ast.parse(path.read_text())
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node, in_func):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            func = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom) and child.level and func == in_functions:
                base = package.split(".")[: len(package.split(".")) - child.level + 1]
                mod = ".".join(base + ([child.module] if child.module else []))
                found.append((child.lineno, mod))
                if not child.module:  # ``from . import x``: x may be a submodule
                    found.extend((child.lineno, f"{mod}.{a.name}") for a in child.names)
            elif isinstance(child, ast.Import) and func == in_functions:
                found.extend((child.lineno, a.name) for a in child.names if a.name.startswith("paratriton"))
            visit(child, func)

    visit(tree, False)
    return found


def test_planner_imports_nothing_of_the_pipelines():
    path = PKG / "planner.py"
    imported = [m for _, m in _relative_imports(path, in_functions=False) + _relative_imports(path, in_functions=True)]
    assert not [m for m in imported if m.startswith("paratriton.pipelines")], imported
    absolute = [
        getattr(n, "module", None) or n.names[0].name
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, (ast.Import, ast.ImportFrom)) and not getattr(n, "level", 0)
    ]
    assert not [m for m in absolute if m.split(".")[0] in ("diffusers", "paratriton")], absolute


def test_planning_and_pipelines_have_no_function_local_package_imports():
    # the circle planner -> pipelines -> planner used to be dodged by imports inside functions; the only ones
    # left in these modules defer diffusers (heavy and optional), which is an absolute import
    for path in [PKG / "planner.py", *sorted((PKG / "pipelines").glob("*.py"))]:
        assert _relative_imports(path, in_functions=True) == [], path.name


def test_package_import_graph_has_no_cycle():
    # module-level imports between paratriton's modules (a submodule import also runs its packages' __init__)
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in files.items():
        deps = set()
        for _, mod in _relative_imports(path, in_functions=False):
            while mod and mod not in files:
                mod = mod.rpartition(".")[0]  # ``from .x import name``: the module x
            parts = mod.split(".")
            for k in range(1, len(parts) + 1):  # the module and every package above it ...
                anc = ".".join(parts[:k])
                if anc in files and not (name == anc or name.startswith(anc + ".")):  # ... not one we are inside
                    deps.add(anc)
        edges[name] = deps - {name}
    state: dict[str, int] = {}

    def dfs(node, stack):
        state[node] = 1
        for dep in sorted(edges[node]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(dep) :], dep]))
            if dep not in state:
                dfs(dep, [*stack, dep])
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            dfs(name, [name])
    assert edges["paratriton.planner"].isdisjoint({n for n in files if n.startswith("paratriton.pipelines")})


def _all_modules() -> list[str]:
    names = ["paratriton"]
    for info in pkgutil.walk_packages([str(PKG)], prefix="paratriton."):
        if info.name.rpartition(".")[2] != "__main__":
            names.append(info.name)
    return names


def test_every_module_imports_first_in_a_fresh_interpreter():
    # each module as the first one imported (so no other module's import order hides a circle); in parallel
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", f"import importlib; importlib.import_module({name!r})"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in _all_modules()
        if "planner" in name or "pipelines" in name or name == "paratriton"
    }
    failed = {name: p.communicate(timeout=300)[0][-2000:] for name, p in procs.items()}
    failed = {name: out for name, out in failed.items() if procs[name].returncode != 0}
    assert not failed, failed


def test_plan_dispatches_denoisers_to_the_planner():
    from paratriton.pipelines import plan as pipelines_plan

    assert paratriton.plan is pipelines_plan
    cf, model, x_T = _problem()
    p = paratriton.plan(model, cf, x_T, schedule=[40], solver_ms=0.1)
    assert isinstance(p, paratriton.Plan) and p.schedule == [40]


def test_choose_window_takes_windowed_methods_only():
    from paratriton.planner import choose_window

    cf, model, x_T = _problem(8)
    with pytest.raises(ValueError, match="windowed method"):
        choose_window(model, cf, x_T, None, method="srds")


def test_iteration_bounds():
    from paratriton.planner import iteration_lower_ms, iterations_left, window_lower_ms

    assert [iterations_left(F, 4) for F in (0, 1, 4, 5, 16)] == [0, 1, 1, 2, 4]
    assert [iterations_left(F, 4, static=False) for F in (0, 1, 4, 5, 16)] == [0, 0, 0, 1, 3]
    assert iteration_lower_ms({}, 8) == 0.0
    assert iteration_lower_ms({4: 3.0}, 8) == 3.0  # one window timed: the time does not decrease
    # ... or, with the sequential step (1.5 ms at window 1), grows at half the slope from it: 3 + 4 * 0.25
    assert iteration_lower_ms({4: 3.0}, 8, step_ms=1.5) == pytest.approx(4.0)
    assert iteration_lower_ms({4: 3.0}, 8, step_ms=4.0) == 3.0
    # two: the line through them, extended (a convex curve lies above it); never decreasing
    assert iteration_lower_ms({2: 1.0, 4: 2.0, 16: 99.0}, 8) == pytest.approx(4.0)
    assert iteration_lower_ms({2: 3.0, 4: 2.0}, 8) == 2.0
    assert iteration_lower_ms({2: 1.0, 4: float("inf")}, 8) == 1.0  # a window with no clean interval: unused
    # a solve: at least T / W iterations, and at least the rows of a smaller window over W
    assert window_lower_ms({}, 8, 32) == 0.0
    assert window_lower_ms({4: (2.0, 40)}, 8, 32) == pytest.approx(5 * 2.0)
    assert window_lower_ms({4: (2.0, 80)}, 8, 32) == pytest.approx(10 * 2.0)


@pytest.mark.parametrize("graphed", [False, True])
@pytest.mark.parametrize("fixed_ms,row_ms,square_ms", [(1.0, 1.0, 0.0), (1.0, 0.05, 0.0), (0.2, 0.4, 0.0), (1, 0, 0.1)])
def test_choose_window_prunes_and_stops_only_losers(monkeypatch, fixed_ms, row_ms, square_ms, graphed):
    """On a clock that model calls advance by a convex batch-time curve ``fixed + row n + square n^2`` of their
    rows ``n``, a pruned or stopped
    candidate's recorded time is a lower bound of its full run, and the choice is the fastest full run. graphed:
    the static engine and the step-graph sequential sampler (uncaptured off CUDA)."""
    import types

    from paratriton import planner
    from paratriton.solvers import graphed_sequential, make_solver

    clock = [0.0]
    fake = types.SimpleNamespace(perf_counter=lambda: clock[0])
    monkeypatch.setattr(planner, "time", fake)
    monkeypatch.setattr(graphed_sequential, "time", fake)
    cf, model, _ = _problem(32)
    x_T = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def costed(x, s):
        clock[0] += (fixed_ms + row_ms * x.shape[0] + square_ms * x.shape[0] ** 2) / 1e3
        return model(x, s)

    windows = (2, 4, 8, 16, 32)
    choice = planner.choose_window(costed, cf, x_T, None, "taa", candidates=list(windows), cuda_graph=graphed)
    full = {"sequential": choice.wall_ms["sequential"]}
    for W in windows:
        t0 = clock[0]
        make_solver("taa", window=W, cuda_graph=graphed).solve(costed, cf, x_T, None)
        full[f"W={W}"] = 1e3 * (clock[0] - t0)
    assert full["sequential"] == pytest.approx(32 * (fixed_ms + row_ms + square_ms))
    for name, ms in choice.wall_ms.items():
        if name in choice.stopped:
            assert ms <= full[name] * (1 + 1e-9) and ms > min(full.values())
        else:
            assert ms == pytest.approx(full[name])
    assert set(choice.pruned) <= set(choice.stopped)
    fastest = min(full, key=full.get)
    assert choice.window == (None if fastest == "sequential" else int(fastest[2:]))
    if graphed and square_ms:  # a call's time grows faster than its rows: the wide windows are known slower unrun
        assert "W=32" in choice.pruned and "not run" in choice.reason
