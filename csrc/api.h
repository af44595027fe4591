// The host-side interface between the pybind11 module (module.cpp, which includes no torch header so that it
// compiles fast) and the kernels' translation units. Standard types only.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace paratriton {

// Bumped whenever an op's C++ semantics or signature changes, so Python refuses a stale build (editable installs).
constexpr int kApiVersion = 1;

using OpLists = std::pair<std::vector<std::string>, std::vector<std::string>>;  // (cpu ops, cuda ops)

std::vector<std::string> op_names();                // every op of the extension, in call-counter order
OpLists register_kernels(bool cpu, const std::vector<std::string>& cuda_ops);
OpLists registered();
void unregister();
std::vector<int64_t> call_counts(int device);       // device 0: CPU, 1: CUDA; indexed like op_names()
void reset_call_counts();

#ifdef PARATRITON_WITH_CUDA
std::vector<std::string> cuda_op_names();
std::string cuda_build_version();
#endif

}  // namespace paratriton
