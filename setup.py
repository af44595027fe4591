"""Build script. The pure-Python package always installs; the optional compiled extension is added when it can be
built. docs/build.md explains the choices; in short:

* Two modules, both on the LibTorch stable ABI (``torch/csrc/stable``, ``-DTORCH_TARGET_VERSION`` = torch 2.10) and
  the Python limited API (one ``abi3`` module for every CPython >= 3.11): ``paratriton._C`` (C++ CPU kernels,
  csrc/cpu_ops.cpp) whenever a C++ compiler and torch >= 2.10's headers are there, and ``paratriton._C_cuda`` (CUDA
  kernels, csrc/cuda_ops.cu) when torch is a CUDA build and nvcc is found. Each is built on its own: a failed CUDA
  build leaves the CPU module in place. Built against any torch >= 2.10, they load on torch 2.10 and every later
  release; paratriton skips them (one line at import) on an older torch.
* The build needs torch's headers, never a particular torch. In order: the torch importable here (``pip install
  --no-build-isolation``, or ``python3 setup.py``); under pip's build isolation, the torch installed in the
  environment pip installs into (found by a child interpreter, added to this process's path: nothing is downloaded
  or replaced); only if there is none anywhere, a torch build requirement (the version constraints.txt pins, what CI
  and the README install). ``torch`` is not in ``build-system.requires`` on purpose: pip would then install one into
  every isolated build.
* The runtime requirement is ``torch>=2.4`` (what the pure-Python package needs; pyproject.toml), never a pin.
* ``PARATRITON_BUILD_EXT=0`` skips both modules, ``PARATRITON_BUILD_CUDA=0`` the CUDA one. A failed compile never
  fails the install: one warning per module, and paratriton says at import which kernels it uses.
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
MIN_TORCH = (2, 10)  # TORCH_TARGET_VERSION below: the oldest torch the modules load on
TORCH_TARGET_VERSION = "0x020a000000000000"  # torch/csrc/stable/version.h: (2 << 56) | (10 << 48)


def _flag(name: str, default: str = "1") -> bool:
    return os.environ.get(name, default).strip().lower() not in ("0", "false", "no", "off")


def _warn(msg: str) -> None:
    print(f"WARNING: paratriton: {msg}", file=sys.stderr, flush=True)


def _target_env_torch_dir() -> str | None:
    """The directory holding the ``torch`` package of the environment pip installs into, if it has one.

    Under build isolation pip runs this script with the target environment's interpreter and hides that
    environment's site-packages with a sitecustomize on PYTHONPATH; a child interpreter without PYTHONPATH sees it
    again. find_spec only: torch is not imported there.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    code = "import importlib.util as u, os; s = u.find_spec('torch'); print(os.path.dirname(s.origin) if s else '')"
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    path = out.stdout.strip()
    return str(Path(path).parent) if out.returncode == 0 and path else None


def _constraints_torch_version() -> str | None:
    path = ROOT / "constraints.txt"
    if not path.is_file():
        return None
    m = re.search(r"^\s*torch\s*==\s*([0-9][^\s;#]*)", path.read_text(), flags=re.MULTILINE)
    return m.group(1) if m else None


def _import_torch():
    """torch for the build (see the module docstring), or None after adding it as a build requirement."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # the build env may lack numpy
        try:
            import torch

            return torch
        except ImportError:
            pass
        site = _target_env_torch_dir()
        if site is not None:
            sys.path.append(site)  # after the build environment's own packages: its setuptools stays first
            try:
                import torch

                print(f"paratriton: building against the installed torch {torch.__version__} ({site})", flush=True)
                return torch
            except ImportError as e:
                sys.path.remove(site)
                _warn(f"the installed torch in {site} does not import here ({e})")
    return None


def _cuda_arch_list(torch) -> str:
    """TORCH_CUDA_ARCH_LIST default: the visible GPUs, else Ampere and Hopper (+PTX), not every arch torch has."""
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{a}.{b}" for a, b in caps)
    return "8.0;9.0+PTX"


def _extension_config() -> dict:
    """setup() keywords for the extension modules: ext_modules/cmdclass, or setup_requires when torch is absent."""
    if not _flag("PARATRITON_BUILD_EXT"):
        return {}
    torch = _import_torch()
    if torch is None:
        version = _constraints_torch_version()
        # turned into a PEP 517 dynamic build requirement; pip installs it and runs this script again
        req = f"torch=={version}" if version else f"torch>={MIN_TORCH[0]}.{MIN_TORCH[1]}"
        return {"setup_requires": [req, "ninja"]}
    from torch.utils import cpp_extension

    have = tuple(int(v) for v in re.findall(r"\d+", torch.__version__)[:2])
    if have < MIN_TORCH:
        _warn(
            f"torch {torch.__version__} has no stable-ABI headers for torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]}; "
            "installing without the compiled extension (the Triton/torch kernels are used)"
        )
        return {}

    # -fopenmp-simd: the `omp simd` loop hints only, no OpenMP runtime (threads come from torch::stable::parallel_for).
    # -g0 overrides the -g of Python's CFLAGS (debug info costs compile time and bloats the module).
    cxx = ["-O3", "-g0", "-fopenmp-simd", "-Wno-unknown-pragmas"]
    common = [("TORCH_TARGET_VERSION", TORCH_TARGET_VERSION)]
    exts = [
        cpp_extension.CppExtension(
            "paratriton._C",
            ["csrc/module.cpp", "csrc/cpu_ops.cpp"],
            define_macros=[*common, ("PARATRITON_OPS_NAMESPACE", "paratriton_C")],
            extra_compile_args={"cxx": cxx},
            py_limited_api=True,
        )
    ]
    if torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None and _flag("PARATRITON_BUILD_CUDA"):
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", _cuda_arch_list(torch))
        cuda_defs = [*common, ("USE_CUDA", "1"), ("PARATRITON_WITH_CUDA", "1")]
        cuda_defs.append(("PARATRITON_OPS_NAMESPACE", "paratriton_cuda"))
        exts.append(
            cpp_extension.CUDAExtension(
                "paratriton._C_cuda",
                ["csrc/cuda_module.cpp", "csrc/cuda_ops.cu"],
                define_macros=cuda_defs,
                extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo"]},
                py_limited_api=True,
            )
        )

    class OptionalBuildExt(cpp_extension.BuildExtension):
        """BuildExtension where each module may fail on its own (one warning) instead of failing pip."""

        failed: set[str] = set()

        @staticmethod
        def _skip(names, what: str, e: Exception) -> None:
            OptionalBuildExt.failed.update(names)
            _warn(
                f"building {what} failed ({type(e).__name__}: {str(e)[-300:]}); installing without it "
                "(paratriton says at import which kernels it uses; see docs/build.md)"
            )

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as e:  # noqa: BLE001 -- any compiler/toolchain failure
                self._skip([ext.name], ext.name, e)

        def build_extensions(self):
            try:
                super().build_extensions()
            except Exception as e:  # noqa: BLE001 -- before any module: a compiler that torch cannot even query
                self._skip([x.name for x in self.extensions], "the extension", e)

        def copy_extensions_to_source(self):  # editable installs copy every module into the tree: the built ones
            built = [e for e in self.extensions if e.name not in OptionalBuildExt.failed]
            saved, self.extensions = self.extensions, built
            try:
                super().copy_extensions_to_source()
            finally:
                self.extensions = saved

        def get_outputs(self):  # editable wheels list these files: only the ones that exist
            return [p for p in super().get_outputs() if os.path.exists(p)]

        def get_output_mapping(self):
            return {k: v for k, v in super().get_output_mapping().items() if os.path.exists(v)}

    return {
        "ext_modules": exts,
        "cmdclass": {"build_ext": OptionalBuildExt.with_options(use_ninja=cpp_extension.is_ninja_available())},
        # one wheel for every CPython >= 3.11 (the modules use the limited API only)
        "options": {"bdist_wheel": {"py_limited_api": "cp311"}},
    }


setup(**_extension_config())
