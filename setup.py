"""Build script. The pure-Python package always installs; the optional compiled extension ``paratriton._C``
(csrc/: C++ CPU kernels, CUDA kernels when nvcc and a CUDA build of torch are present) is added when it can be
built. docs/build.md explains the choices; in short:

* ``PARATRITON_BUILD_EXT=0`` skips the extension (and asks for no torch in the build environment).
* A failed compile never fails the install: one warning, and the package installs without ``_C`` (the Triton /
  plain-torch kernels are used, see ``paratriton.backends()``).
* The extension must be compiled against the torch it will run with. ``pip install --no-build-isolation`` builds
  against the installed torch. Under pip's default build isolation torch is not importable here, so this script
  asks for it as a *dynamic* build requirement (setuptools turns ``setup_requires`` into the PEP 517
  ``get_requires_for_build_*`` answer): the version already installed in the target environment if there is one,
  else the version pinned in constraints.txt (what CI and the README install). A mismatch that slips through is
  caught at import (``paratriton._backends``) and the extension is then not used.
* The runtime requirement on torch is pinned to the release the extension is built against (``torch==<that
  version>``, any local build tag such as ``+cpu`` or ``+cu128``), so pip cannot build against one torch and then
  install another to run with (what happened to ``pip install .`` without ``-c constraints.txt``: built against
  2.13.0, ran 2.14.1, extension never used). Without the extension (``PARATRITON_BUILD_EXT=0``) any torch >= 2.4.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
WANT_EXT = os.environ.get("PARATRITON_BUILD_EXT", "1").strip().lower() not in ("0", "false", "no", "off")


def _warn(msg: str) -> None:
    print(f"WARNING: paratriton: {msg}", file=sys.stderr, flush=True)


def _installed_torch_version() -> str | None:
    """torch's public version in the environment pip installs into (not the isolated build environment).

    pip runs this script with the target environment's interpreter and hides that environment's site-packages with
    a sitecustomize on PYTHONPATH; a child interpreter without PYTHONPATH sees it again. Metadata only: no import.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    code = "import importlib.metadata as m; print(m.version('torch'))"
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    v = out.stdout.strip()
    return v.split("+")[0] if out.returncode == 0 and v else None


def _constraints_torch_version() -> str | None:
    path = ROOT / "constraints.txt"
    if not path.is_file():
        return None
    m = re.search(r"^\s*torch\s*==\s*([0-9][^\s;#]*)", path.read_text(), flags=re.MULTILINE)
    return m.group(1) if m else None


RUNTIME_REQUIRES = ["numpy", "diffusers>=0.35", "pillow", "safetensors", "tqdm"]


def _requires(torch_version: str | None) -> list[str]:
    """install_requires: torch pinned to the release the extension is built against (public version)."""
    pin = f"torch=={torch_version.split('+')[0]}" if torch_version else "torch>=2.4"
    return [pin, *RUNTIME_REQUIRES]


def _cuda_arch_list(torch) -> str:
    """TORCH_CUDA_ARCH_LIST default: the visible GPUs, else Ampere and Hopper (+PTX), not every arch torch has."""
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{a}.{b}" for a, b in caps)
    return "8.0;9.0+PTX"


def _extension_config() -> dict:
    """setup() keywords for the extension: ext_modules/cmdclass, or setup_requires when torch is not importable."""
    if not WANT_EXT:
        return {"install_requires": _requires(None)}
    try:
        import warnings

        warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # the build env may lack numpy
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        version = _installed_torch_version() or _constraints_torch_version()
        if version is None:
            _warn(
                "torch is not importable and no torch version to build against is known; "
                "installing without the compiled extension (see docs/build.md)"
            )
            return {"install_requires": _requires(None)}
        # turned into a PEP 517 dynamic build requirement; pip installs it and runs this script again
        return {"setup_requires": [f"torch=={version}", "ninja"], "install_requires": _requires(version)}

    sources = [str(p.relative_to(ROOT)) for p in (CSRC / "module.cpp", CSRC / "cpu_ops.cpp")]
    # OpenMP: at::parallel_for is inline in ATen's headers. -g0 overrides the -g of Python's CFLAGS (debug info
    # of the torch headers costs compile time on the 2-core CI machine and bloats the module).
    cxx = ["-O3", "-g0", "-fopenmp", "-Wno-unknown-pragmas"]
    link = ["-fopenmp"]
    nvcc_ok = (
        torch.version.cuda is not None
        and cpp_extension.CUDA_HOME is not None
        and os.environ.get("PARATRITON_BUILD_CUDA", "1") != "0"
    )
    if nvcc_ok:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", _cuda_arch_list(torch))
        ext = cpp_extension.CUDAExtension(
            "paratriton._C",
            sources + [str((CSRC / "cuda_ops.cu").relative_to(ROOT))],
            define_macros=[("PARATRITON_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=link,
        )
    else:
        ext = cpp_extension.CppExtension(
            "paratriton._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link
        )

    class OptionalBuildExt(cpp_extension.BuildExtension):
        """BuildExtension whose failure leaves a pure-Python install (one warning) instead of failing pip."""

        failed = False

        def run(self):
            try:
                super().run()
            except Exception as e:  # noqa: BLE001 -- any compiler/toolchain failure
                OptionalBuildExt.failed = True
                _warn(
                    f"building the compiled extension failed ({type(e).__name__}: {str(e)[-300:]}); installing "
                    "without it, the Triton/torch kernels will be used (see docs/build.md)"
                )

        def get_outputs(self):  # editable wheels list these files: only the ones that exist
            return [] if OptionalBuildExt.failed else super().get_outputs()

        def get_output_mapping(self):
            return {} if OptionalBuildExt.failed else super().get_output_mapping()

    return {
        "ext_modules": [ext],
        "cmdclass": {"build_ext": OptionalBuildExt.with_options(use_ninja=True)},
        "install_requires": _requires(torch.__version__),
    }


setup(**_extension_config())
