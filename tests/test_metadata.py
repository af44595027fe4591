"""Package metadata: the Python floor, and the warning outside the tested diffusers range."""

import importlib.metadata
import tomllib
import warnings
from pathlib import Path

import pytest

import paratriton

ROOT = Path(__file__).resolve().parents[1]


def test_requires_python_matches_readme():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["requires-python"] == ">=3.11"
    assert "Python 3.11" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize(
    "version,warns", [("0.42.1", False), ("0.42.0.dev0", False), ("0.35.0", True), ("0.43.0", True), ("1.0.0", True)]
)
def test_diffusers_range_warning(monkeypatch, version, warns):
    monkeypatch.setattr(importlib.metadata, "version", lambda name: version)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        paratriton._check_diffusers_version()
    assert bool([x for x in w if "tested with diffusers" in str(x.message)]) == warns


def test_torch_is_required_but_never_pinned():
    """Installing paratriton never replaces the user's torch: the requirement is what the pure-Python package needs
    (the stable-ABI extension loads on torch >= 2.10 and is skipped on an older one), in pyproject.toml and in the
    installed metadata; torch is no static build requirement (pip would install one into every isolated build)."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "torch>=2.4" in meta["project"]["dependencies"] and "dependencies" not in meta["project"]["dynamic"]
    assert not any(r.startswith("torch") for r in meta["build-system"]["requires"])
    installed = [r for r in importlib.metadata.requires("paratriton") or [] if r.split(";")[0].startswith("torch")]
    assert installed == ["torch>=2.4"], installed
