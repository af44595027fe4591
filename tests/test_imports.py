"""The import graph (issue 33): ``paratriton.schedulers`` is the ground floor, and no two modules import each other.

Read from the source with ``ast``, nothing imported: an import inside ``if TYPE_CHECKING:`` counts (a type-only
circle is still a circle for a reader and a type checker); an import inside a function does not (it runs later).
"""

from __future__ import annotations

import ast
from pathlib import Path

import paratriton

ROOT = Path(paratriton.__file__).parent


def _modules() -> dict[str, tuple[Path, bool]]:
    """``{"paratriton.x.y": (path, is_package)}`` for every module of the package."""
    mods = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return mods


def _module_level(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported (or that a type checker follows): the top level
    and the bodies of ``if`` (``TYPE_CHECKING`` included), ``try`` and ``with`` blocks; not functions or classes."""
    out: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, ast.If):
            out += _module_level(node.body) + _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            out += _module_level(node.body) + _module_level(node.orelse) + _module_level(node.finalbody)
            for handler in node.handlers:
                out += _module_level(handler.body)
        elif isinstance(node, ast.With):
            out += _module_level(node.body)
    return out


def _targets(name: str, is_pkg: bool, nodes: list, mods: dict) -> set[str]:
    """The ``paratriton`` modules the statements ``nodes`` of module ``name`` import (``from pkg import sub`` names
    the submodule ``pkg.sub`` where there is one, else ``pkg``)."""
    package = name if is_pkg else name.rpartition(".")[0]
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "paratriton"}
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        if mod.split(".")[0] != "paratriton":
            continue
        for alias in node.names:
            sub = f"{mod}.{alias.name}"
            out.add(sub if sub in mods else mod)
    return {m for m in out if m in mods and m != name}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {
        name: _targets(name, is_pkg, _module_level(ast.parse(path.read_text()).body), mods)
        for name, (path, is_pkg) in mods.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_type_only_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    nodes = _module_level(ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import x\n").body)
    assert len(nodes) == 2


def test_schedulers_import_no_other_paratriton_subpackage() -> None:
    """``schedulers/`` is the ground floor: every import in it (function-level ones too) stays inside it."""
    mods = _modules()
    inside = [name for name in mods if name == "paratriton.schedulers" or name.startswith("paratriton.schedulers.")]
    assert {"paratriton.schedulers.operator", "paratriton.schedulers.traced"} <= set(inside)
    for name in inside:
        path, is_pkg = mods[name]
        nodes = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, (ast.Import, ast.ImportFrom))]
        package = name if is_pkg else name.rpartition(".")[0]
        for node in nodes:
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                names = [".".join(base + ([node.module] if node.module else []))]
            else:
                names = [node.module or ""]
            for mod in names:
                if mod.split(".")[0] == "paratriton":
                    assert mod.startswith("paratriton.schedulers"), f"{name} imports {mod} (line {node.lineno})"


def test_the_shims_keep_the_public_paths() -> None:
    from paratriton import multistep, schedule, schedulers

    assert schedule.SamplerCoefficients is schedulers.SamplerCoefficients is paratriton.SamplerCoefficients
    assert multistep.MultistepCoefficients is schedulers.MultistepCoefficients is paratriton.MultistepCoefficients
    assert schedule.coefficients_from_scheduler is paratriton.coefficients_from_scheduler
    assert schedule.SUPPORTED_SCHEDULERS == schedulers.ONE_TAP_SCHEDULERS + schedulers.TRACED_SCHEDULERS
    assert multistep.MULTISTEP_SCHEDULERS == schedule.TRACED_SCHEDULERS
