// pybind11 module paratriton._C: build information and the switch that registers the compiled kernels.
//
// The op schemas and fake (meta) implementations stay in Python (torch.library.custom_op in paratriton/ops/*);
// the kernels and their registration live in cpu_ops.cpp / cuda_ops.cu. This file includes pybind11 and no torch
// header beyond the version macros, so that it compiles in seconds.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/headeronly/version.h>

#include <string>
#include <vector>

#include "api.h"

#ifndef TORCH_EXTENSION_NAME
#define TORCH_EXTENSION_NAME _C
#endif

namespace py = pybind11;
namespace pt = paratriton;

namespace {

// "major.minor.patch" of the torch headers this module was compiled against (the local tag, +cpu/+cu130, is not
// part of the C++ ABI of the CPU code; the CUDA part is checked separately against torch.version.cuda).
std::string torch_version() {
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
}

bool has_cuda() {
#ifdef PARATRITON_WITH_CUDA
  return true;
#else
  return false;
#endif
}

std::string cuda_version() {
#ifdef PARATRITON_WITH_CUDA
  return pt::cuda_build_version();
#else
  return "";
#endif
}

std::vector<std::string> cuda_ops() {
#ifdef PARATRITON_WITH_CUDA
  return pt::cuda_op_names();
#else
  return {};
#endif
}

std::string build_abi() {
  std::string s = "torch=" + torch_version();
  s += " cxx11abi=" + std::to_string(_GLIBCXX_USE_CXX11_ABI);
#if defined(__clang__)
  s += " compiler=clang-" + std::to_string(__clang_major__);
#elif defined(__GNUC__)
  s += " compiler=gcc-" + std::to_string(__GNUC__) + "." + std::to_string(__GNUC_MINOR__);
#endif
  s += " cuda=" + (has_cuda() ? cuda_version() : std::string("no"));
  return s;
}

py::dict as_dict(const pt::OpLists& l) {
  py::dict d;
  d["cpu"] = l.first;
  d["cuda"] = l.second;
  return d;
}

py::dict call_counts() {
  py::dict d;
  const auto names = pt::op_names();
  const char* dev[2] = {"cpu", "cuda"};
  for (int i = 0; i < 2; ++i) {
    py::dict per;
    const auto counts = pt::call_counts(i);
    for (size_t op = 0; op < names.size(); ++op) per[py::str(names[op])] = counts[op];
    d[dev[i]] = per;
  }
  return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "paratriton compiled kernels (C++ CPU, CUDA); see paratriton/_backends.py and docs/build.md";
  m.def("api_version", [] { return pt::kApiVersion; }, "Version of the kernels' contract with the Python package.");
  m.def("torch_version", &torch_version, "torch version (major.minor.patch) this module was built against.");
  m.def("abi", &build_abi, "Build description: torch version, C++ ABI, compiler, CUDA.");
  m.def("has_cuda", &has_cuda, "Whether the CUDA kernels were compiled in.");
  m.def("cuda_version", &cuda_version, "CUDA runtime version the CUDA kernels were built with ('' without CUDA).");
  m.def("cuda_ops", &cuda_ops, "Ops that have a CUDA kernel in this build.");
  m.def("op_names", &pt::op_names, "Ops that have a C++ CPU kernel.");
  m.def("register_kernels", [](bool cpu, const std::vector<std::string>& ops) {
    return as_dict(pt::register_kernels(cpu, ops));
  }, py::arg("cpu"), py::arg("cuda_ops"),
        "Register the CPU kernels and the named CUDA kernels with the dispatcher (idempotent); returns "
        "{'cpu': [...], 'cuda': [...]}.");
  m.def("registered", [] { return as_dict(pt::registered()); }, "Ops whose compiled kernels are registered.");
  m.def("unregister", &pt::unregister, "Drop the compiled kernels; the Python kernels take over again.");
  m.def("call_counts", &call_counts, "Calls of each compiled kernel, per device: {'cpu': {op: n}, 'cuda': {...}}.");
  m.def("reset_call_counts", &pt::reset_call_counts);
}
