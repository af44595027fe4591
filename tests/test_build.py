"""The build: a compiler that fails never fails ``pip install`` (editable included); the package installs without
the extension and says so at import (``_backends``)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# answers --version as g++ (torch's ABI check asks), fails on the CPU kernels' source
_FAILING_CXX = """#!/bin/sh
case "$*" in *--version*) exec g++ "$@";; *cpu_ops.cpp*) echo "fake compile error" >&2; exit 1;; *) exec g++ "$@";; esac
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (to answer --version)")
@pytest.mark.parametrize("compiler", ["fails-on-kernels", "broken"])
def test_editable_install_survives_a_failing_compiler(tmp_path, compiler):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md", "constraints.txt"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "csrc", src / "csrc")
    # the package's Python files only (the shipped weights are not needed to build)
    shutil.copytree(
        ROOT / "paratriton", src / "paratriton", ignore=shutil.ignore_patterns("weights*", "*.so", "__pycache__")
    )
    cxx = tmp_path / "cxx"
    cxx.write_text(_FAILING_CXX if compiler == "fails-on-kernels" else "#!/bin/sh\nexit 1\n")
    cxx.chmod(0o755)
    env = {
        "PATH": "/usr/bin:/bin",
        "CXX": str(cxx),
        "CC": str(cxx),
        "PARATRITON_BUILD_CUDA": "0",
        "HOME": str(tmp_path),
    }
    # --ignore-installed: never uninstall the paratriton that runs these tests
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-build-isolation",
        "--no-deps",
        "--no-index",
        "--ignore-installed",
    ]
    cmd += ["--prefix", str(tmp_path / "prefix"), "-e", str(src)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert not list((src / "paratriton").glob("_C*.so"))  # nothing half-built was copied into the tree
