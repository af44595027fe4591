// Python module paratriton._C: the CPU kernels (cpu_ops.cpp) register themselves as the ops paratriton_C::<op> when
// the shared object is loaded; this file only gives the module its Python entry point and build information (and
// OPS, the op list of common.h in call-counter order), as plain module constants (the limited C API: one abi3 module serves every Python >= 3.10, and no pybind11/torch
// Python binding is linked, so nothing here depends on the torch release).
#include <Python.h>

#include <torch/csrc/stable/version.h>
#include <torch/headeronly/version.h>

#include <string>

#include "common.h"

#ifdef PARATRITON_WITH_CUDA
#include <cuda_runtime_api.h>  // CUDART_VERSION of the toolkit that compiled the CUDA kernels
#endif

#ifndef PARATRITON_MODULE_NAME
#define PARATRITON_MODULE_NAME _C
#endif
#define PT_STR2(x) #x
#define PT_STR(x) PT_STR2(x)
#define PT_CAT2(a, b) a##b
#define PT_CAT(a, b) PT_CAT2(a, b)

namespace {

// "major.minor" of a TORCH_*_VERSION value (major << 56 | minor << 48)
std::string version_str(unsigned long long v) {
  return std::to_string((v >> 56) & 0xff) + "." + std::to_string((v >> 48) & 0xff);
}

// ("step_residual", ...): PARATRITON_OPS of common.h, the order of the call_counts table
PyObject* op_names() {
  PyObject* t = PyTuple_New(paratriton::kNumOps);
  if (t == nullptr) return nullptr;
  for (int i = 0; i < paratriton::kNumOps; ++i) {
    PyObject* name = PyUnicode_FromString(paratriton::kOpNames[i]);
    if (name == nullptr || PyTuple_SetItem(t, i, name) < 0) {  // SetItem steals `name`, also on failure
      Py_DECREF(t);
      return nullptr;
    }
  }
  return t;
}

std::string compiler() {
#if defined(__clang__)
  return "clang-" + std::to_string(__clang_major__);
#elif defined(__GNUC__)
  return "gcc-" + std::to_string(__GNUC__) + "." + std::to_string(__GNUC_MINOR__);
#else
  return "unknown";
#endif
}

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    PT_STR(PARATRITON_MODULE_NAME),
    "paratriton compiled kernels on the LibTorch stable ABI; see paratriton/_backends.py and docs/build.md",
    -1,
    nullptr,
};

}  // namespace

extern "C" PyMODINIT_FUNC PT_CAT(PyInit_, PARATRITON_MODULE_NAME)(void) {
  PyObject* m = PyModule_Create(&module_def);
  if (m == nullptr) return nullptr;
  const std::string built = std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
                            std::to_string(TORCH_VERSION_PATCH);
#ifdef TORCH_TARGET_VERSION
  const std::string target = version_str(TORCH_TARGET_VERSION);
#else
  const std::string target = built.substr(0, built.rfind('.'));  // no target: only the torch it was built with
#endif
#ifdef PARATRITON_WITH_CUDA
  const std::string cuda = std::to_string(CUDART_VERSION / 1000) + "." + std::to_string((CUDART_VERSION % 1000) / 10);
#else
  const std::string cuda;
#endif
  if (PyModule_AddIntConstant(m, "API_VERSION", paratriton::kApiVersion) < 0 ||
      PyModule_AddStringConstant(m, "TORCH_TARGET", target.c_str()) < 0 ||
      PyModule_AddStringConstant(m, "BUILT_WITH_TORCH", built.c_str()) < 0 ||
      PyModule_AddStringConstant(m, "COMPILER", compiler().c_str()) < 0 ||
      PyModule_AddStringConstant(m, "CUDA_VERSION", cuda.c_str()) < 0 ||
      PyModule_AddStringConstant(m, "OPS_NAMESPACE", PT_STR(PARATRITON_OPS_NAMESPACE)) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  PyObject* ops = op_names();
  if (ops == nullptr || PyModule_AddObject(m, "OPS", ops) < 0) {  // AddObject steals `ops` on success only
    Py_XDECREF(ops);
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
