// pybind11 module paratriton._C: build information and the registration of the compiled kernels.
//
// The op schemas and fake (meta) implementations stay in Python (torch.library.custom_op in paratriton/ops/*).
// Kernels are registered here *on request* rather than by static TORCH_LIBRARY_IMPL blocks, so Python first checks
// that this build matches the running torch and the package's sources, and only then lets the dispatcher use it:
// a CPU-key kernel outranks custom_op's CompositeExplicitAutograd default, and a CUDA-key kernel registered after
// the Triton one replaces it (the Triton kernel comes back when the Library object is dropped: unregister()).
#include <torch/extension.h>
#include <torch/library.h>
#include <torch/version.h>

#include <memory>
#include <string>
#include <vector>

#include "common.h"

#ifndef TORCH_EXTENSION_NAME
#define TORCH_EXTENSION_NAME _C
#endif

namespace paratriton {

std::atomic<int64_t> g_calls[2][kNumOps] = {};

void register_cpu(torch::Library& m);
#ifdef PARATRITON_WITH_CUDA
std::vector<std::string> register_cuda(torch::Library& m, const std::vector<std::string>& ops);
std::vector<std::string> cuda_op_names();
std::string cuda_build_version();
#endif

namespace {

// "major.minor.patch" of the torch headers this module was compiled against (the local tag, +cpu/+cu130, is not
// part of the C++ ABI of the CPU code; the CUDA part is checked separately against torch.version.cuda).
std::string torch_version() {
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
}

const char* kOpNames[kNumOps] = {"step_residual", "order_k_residual", "anderson_gram", "masked_lstsq",
                                 "anderson_update", "taa_residual", "taa_update"};

std::unique_ptr<torch::Library> g_cpu_lib, g_cuda_lib;
std::vector<std::string> g_cpu_ops, g_cuda_ops;

// Replacing the Triton CUDA kernel is intended; keep the dispatcher's one-time "Overriding a previously registered
// kernel" warning out of the user's log.
struct SilentHandler : c10::WarningHandler {
  void process(const c10::Warning&) override {}
};

pybind11::dict registered() {
  pybind11::dict d;
  d["cpu"] = g_cpu_ops;
  d["cuda"] = g_cuda_ops;
  return d;
}

// Register the CPU kernels (cpu=True) and the named CUDA kernels; returns {"cpu": [...], "cuda": [...]}.
pybind11::dict register_kernels(bool cpu, const std::vector<std::string>& cuda_ops) {
  SilentHandler silent;
  c10::WarningUtils::WarningHandlerGuard guard(&silent);
  if (cpu && !g_cpu_lib) {
    g_cpu_lib = std::make_unique<torch::Library>(torch::Library::IMPL, "paratriton", c10::DispatchKey::CPU,
                                                 __FILE__, __LINE__);
    register_cpu(*g_cpu_lib);
    g_cpu_ops.assign(kOpNames, kOpNames + kNumOps);
  }
#ifdef PARATRITON_WITH_CUDA
  if (!cuda_ops.empty() && !g_cuda_lib) {
    g_cuda_lib = std::make_unique<torch::Library>(torch::Library::IMPL, "paratriton", c10::DispatchKey::CUDA,
                                                  __FILE__, __LINE__);
    g_cuda_ops = register_cuda(*g_cuda_lib, cuda_ops);
  }
#else
  (void)cuda_ops;
#endif
  return registered();
}

void unregister() {  // the dispatcher falls back to the Python (torch / Triton) kernels
  g_cpu_lib.reset();
  g_cuda_lib.reset();
  g_cpu_ops.clear();
  g_cuda_ops.clear();
}

pybind11::dict call_counts() {
  pybind11::dict d;
  const char* dev[2] = {"cpu", "cuda"};
  for (int i = 0; i < 2; ++i) {
    pybind11::dict per;
    for (int op = 0; op < kNumOps; ++op) per[kOpNames[op]] = g_calls[i][op].load();
    d[dev[i]] = per;
  }
  return d;
}

void reset_call_counts() {
  for (auto& dev : g_calls)
    for (auto& c : dev) c.store(0);
}

std::string abi() {
  std::string s = "torch=" + torch_version();
  s += " cxx11abi=" + std::to_string(_GLIBCXX_USE_CXX11_ABI);
#if defined(__clang__)
  s += " compiler=clang-" + std::to_string(__clang_major__);
#elif defined(__GNUC__)
  s += " compiler=gcc-" + std::to_string(__GNUC__) + "." + std::to_string(__GNUC_MINOR__);
#endif
#ifdef PARATRITON_WITH_CUDA
  s += " cuda=" + cuda_build_version();
#else
  s += " cuda=no";
#endif
  return s;
}

}  // namespace
}  // namespace paratriton

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace pt = paratriton;
  m.doc() = "paratriton compiled kernels (C++ CPU, CUDA); see paratriton/_backends.py";
  m.def("api_version", [] { return pt::kApiVersion; }, "Version of the kernels' contract with the Python package.");
  m.def("torch_version", &pt::torch_version,
        "torch.__version__ that this module was built against.");
  m.def("abi", &pt::abi, "Build description: torch version, C++ ABI, compiler, CUDA.");
  m.def("has_cuda", [] {
#ifdef PARATRITON_WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "Whether the CUDA kernels were compiled in.");
  m.def("cuda_ops", [] {
#ifdef PARATRITON_WITH_CUDA
    return pt::cuda_op_names();
#else
    return std::vector<std::string>{};
#endif
  }, "Ops that have a CUDA kernel in this build.");
  m.def("cuda_version", [] {
#ifdef PARATRITON_WITH_CUDA
    return pt::cuda_build_version();
#else
    return std::string();
#endif
  }, "CUDA runtime version ('13.0') the CUDA kernels were compiled with, or '' without CUDA.");
  m.def("register_kernels", &pt::register_kernels, pybind11::arg("cpu"), pybind11::arg("cuda_ops"),
        "Register the CPU kernels and the named CUDA kernels with the dispatcher (idempotent).");
  m.def("registered", &pt::registered, "Ops whose compiled kernels are registered, per device.");
  m.def("unregister", &pt::unregister, "Drop the compiled kernels; the Python kernels take over again.");
  m.def("call_counts", &pt::call_counts, "Calls of each compiled kernel, per device.");
  m.def("reset_call_counts", &pt::reset_call_counts);
}
