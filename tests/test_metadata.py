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
