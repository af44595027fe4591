"""What CONTRIBUTING.md asks of a new method, scheduler and kernel, checked: the checklists' enforceable items.

* every registry method, and every option key the registry gives the command line, is in ``--help``;
* every scheduler in ``TRACED_SCHEDULERS`` has parity tests (the stock loop, and the pipelines);
* every pipeline in ``SPECS`` is named in a ``tests/test_pipelines*.py`` file and has a row in ``docs/diffusers.md``;
* every ``paratriton/ops/<op>/`` has ``naive.py``, a ``torch.library`` registration and a test under ``tests/ops/``,
  and ``paratriton.ops.<op>`` is the registered op with its reference at ``.naive``;
* the quarantined ``paratriton/ops/legacy/`` is imported by nothing outside it (``import paratriton`` leaves it out);
* the package's imports form no circles (imports inside functions and type-only ones included).
"""

from __future__ import annotations

import ast
import pathlib

import pytest
import torch

import paratriton

PACKAGE = pathlib.Path(paratriton.__file__).parent
TESTS = pathlib.Path(__file__).parent


def _sample_help() -> str:
    import paratriton.__main__ as cli

    parser = cli.build_parser()
    return parser._subparsers._group_actions[0].choices["sample"].format_help()


def test_every_pipeline_family_has_a_parity_test_and_a_docs_row():
    import re

    from paratriton.pipelines._specs import SPECS

    tests = "\n".join(p.read_text() for p in sorted(TESTS.glob("test_pipelines*.py")))
    docs = (TESTS.parent / "docs" / "diffusers.md").read_text()
    for name in SPECS:
        assert re.search(rf"\b{name}\b", tests), f"{name}: add its parity test to tests/test_pipelines*.py"
        assert f"| `{name}` |" in docs, f"{name}: add its row to the 'What is supported' table of docs/diffusers.md"


def test_every_registry_method_and_option_key_is_in_the_cli_help():
    import paratriton.__main__ as cli
    from paratriton.solvers.registry import REGISTRY

    text = _sample_help()
    for name, spec in REGISTRY.items():
        line = next((ln for ln in text.splitlines() if ln.split()[:1] == [name]), None)
        assert line is not None, f"method {name!r} is not in `python -m paratriton sample --help`"
        keys = tuple(o.key for o in spec.options if o.key)
        assert cli.METHOD_KEYS[name] == keys
        for key in keys:
            assert f"{key}=" in line and f"  {key}=" in text, (name, key)
        for o in spec.options:  # one key, one range: the command line checks every method's against it
            if o.key:
                same = cli.OPTION_KEYS[o.key]
                assert (o.name, o.kind, o.lo, o.hi, o.steps) == (same.name, same.kind, same.lo, same.hi, same.steps)


def test_every_traced_scheduler_has_parity_tests():
    pytest.importorskip("diffusers")
    from test_multistep import CONFIGS
    from test_pipelines_schedulers import SCHEDULERS

    from paratriton.schedule import TRACED_SCHEDULERS

    stock_loop = {name for name, _ in CONFIGS}  # test_operator_steps_like_the_scheduler: the scheduler's own loop
    pipelines = {type(make()).__name__ for make in SCHEDULERS.values()}  # parallelize on the SD/SDXL pipelines
    for name in TRACED_SCHEDULERS:
        assert name in stock_loop, f"{name}: add a config to tests/test_multistep.py CONFIGS"
        assert name in pipelines, f"{name}: add it to tests/test_pipelines_schedulers.py SCHEDULERS"


def _op_folders() -> list[pathlib.Path]:
    """The live op folders (``legacy/`` is the quarantine, checked on its own below)."""
    return sorted(
        p for p in (PACKAGE / "ops").iterdir() if p.is_dir() and (p / "__init__.py").exists() and p.name != "legacy"
    )


@pytest.mark.parametrize("folder", _op_folders(), ids=lambda p: p.name)
def test_every_op_has_a_reference_a_registration_and_a_test(folder: pathlib.Path):
    import paratriton.ops  # noqa: F401  (registers torch.ops.paratriton.*)

    assert (folder / "naive.py").exists(), f"ops/{folder.name}/naive.py: the plain-torch reference is missing"
    registered = [
        node.args[0].value
        for node in ast.walk(ast.parse((folder / "__init__.py").read_text()))
        if isinstance(node, ast.Call)
        and ast.unparse(node.func) == "torch.library.custom_op"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    ]
    assert registered, f"ops/{folder.name}/__init__.py registers no torch.library.custom_op"
    for qualname in registered:
        ns, name = qualname.split("::")
        assert ns == "paratriton" and hasattr(getattr(torch.ops, ns), name), qualname
    tests = [p.name for p in (TESTS / "ops").glob("test_*.py") if folder.name in p.read_text()]
    assert tests, f"no test under tests/ops/ names ops/{folder.name}"


def test_every_exported_op_is_the_registered_op_with_its_oracle():
    import paratriton.ops as ops

    for name in ops.__all__:
        found = getattr(ops, name)
        registered = [found] if hasattr(found, "_qualname") else [getattr(found, o) for o in found.__all__[:-1]]
        for op in registered:  # a group of ops (window_taa) exports its ops, then ``naive``
            assert isinstance(op, torch._library.custom_ops.CustomOpDef), (name, op)
            assert op._qualname.startswith("paratriton::"), op._qualname
            assert op.naive.__name__.startswith("paratriton.ops.") and op.naive.__name__.endswith(".naive")


def _imported_parts(path: pathlib.Path) -> set[str]:
    """Every dotted part of every name a module imports (``from .legacy import x`` gives {"legacy", "x"})."""
    parts: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            parts |= {p for a in node.names for p in a.name.split(".")}
        elif isinstance(node, ast.ImportFrom):
            parts |= set((node.module or "").split(".")) | {a.name for a in node.names}
    return parts


def test_the_legacy_ops_stay_quarantined():
    """Nothing in the package outside ``ops/legacy/`` imports it, and ``import paratriton`` leaves it out."""
    import subprocess
    import sys

    outside = [p for p in PACKAGE.rglob("*.py") if "legacy" not in p.relative_to(PACKAGE).parts]
    assert [p for p in outside if "legacy" in _imported_parts(p)] == []
    code = "import sys, paratriton.ops; print([m for m in sys.modules if m.startswith('paratriton.ops.legacy')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere (top level, in functions, under TYPE_CHECKING). An arrow
    into a package's ``__init__`` (its public face) is left out unless the name imported is a module."""
    mods: dict[str, tuple[pathlib.Path, bool]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in mods.items():
        pkg = name if is_pkg else name.rsplit(".", 1)[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                found = [f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target for a in node.names]
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            else:
                continue
            deps |= {m for m in found if m in mods and m != name and not mods[m][1]}
        graph[name] = deps
    return graph


def _circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    return out


KNOWN_CIRCLES: list[set[str]] = []  # none: the schedulers move removed the last one (schedule <-> multistep)


def test_the_package_has_no_import_circles():
    graph = _import_graph()
    assert "paratriton.solvers.engine" in graph and graph["paratriton.solvers.engine"]
    circles = [c for c in _circles(graph) if c not in KNOWN_CIRCLES]
    assert not circles, f"import circles: {[sorted(c) for c in circles]}"
