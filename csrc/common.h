// Shared helpers of the paratriton compiled extension (CPU and CUDA sources), written against the LibTorch stable
// ABI (torch/csrc/stable, torch/headeronly) only: built with -DTORCH_TARGET_VERSION for torch 2.10, the modules load
// on torch 2.10 and every later release, whichever torch they were compiled against.
//
// Layout convention of every op: a "window" tensor [n, B, D] is read as n*B rows of D contiguous elements, with
// arbitrary strides between steps (p) and trajectories (b). That covers the solver's slices (x[lo:hi],
// hist[:, lo:hi]) without copies; a tensor whose last dimension is not contiguous is copied once (rare).
#pragma once

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

// an AOTI shim call's error code as a torch error (STABLE_TORCH_ERROR_CODE_CHECK is not in torch 2.11's headers)
#define PARATRITON_AOTI_CHECK(call) STD_TORCH_CHECK((call) == AOTI_TORCH_SUCCESS, #call " failed")

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <sstream>
#include <string>

#if defined(__CUDACC__)
#define PT_HD __host__ __device__
#else
#define PT_HD
#endif

namespace paratriton {

// Bumped whenever an op's C++ semantics or signature changes, so Python refuses a stale build (editable installs).
// Must equal paratriton/_backends.py API_VERSION.
constexpr int kApiVersion = 3;

using Tensor = torch::stable::Tensor;
using ScalarType = torch::headeronly::ScalarType;

// A [n, B, D] tensor as rows: row (p, b) starts at data + p * sp + b * sb and holds D contiguous elements.
template <typename T>
struct Rows {
  T* data;
  int64_t sp, sb;
  PT_HD inline T* row(int64_t p, int64_t b) const { return data + p * sp + b * sb; }
};

// A [n, B, D] (or [n, B, D]-shaped slice) tensor whose last dim is contiguous; otherwise a contiguous copy.
inline Tensor rows_ok(const Tensor& t) {
  return (t.size(-1) <= 1 || t.stride(-1) == 1) ? t : torch::stable::contiguous(t);
}

template <typename T>
inline Rows<T> rows_of(const Tensor& t) {  // t: [n, B, D] with stride(-1) == 1
  return Rows<T>{t.mutable_data_ptr<T>(), t.stride(0), t.stride(1)};
}

template <typename T>
inline Rows<const T> crows_of(const Tensor& t) {
  return Rows<const T>{t.const_data_ptr<T>(), t.stride(0), t.stride(1)};
}

inline bool is_float(ScalarType s) {
  return s == ScalarType::Float || s == ScalarType::Double || s == ScalarType::Half || s == ScalarType::BFloat16;
}

inline bool is_state(ScalarType s) { return s == ScalarType::Float || s == ScalarType::Double; }

// "[2, 3, 5]"
inline std::string shape_str(const Tensor& t) {
  std::ostringstream os;
  os << '[';
  for (int64_t i = 0; i < t.dim(); ++i) os << (i ? ", " : "") << t.size(i);
  os << ']';
  return os.str();
}

inline std::string shape_str(std::initializer_list<int64_t> shape) {
  std::ostringstream os;
  os << '[';
  bool first = true;
  for (int64_t s : shape) {
    os << (first ? "" : ", ") << s;
    first = false;
  }
  os << ']';
  return os.str();
}

inline bool has_shape(const Tensor& t, std::initializer_list<int64_t> shape) {
  if (t.dim() != static_cast<int64_t>(shape.size())) return false;
  int64_t i = 0;
  for (int64_t s : shape)
    if (t.size(i++) != s) return false;
  return true;
}

inline void check_shape(const Tensor& t, std::initializer_list<int64_t> shape, const char* name) {
  STD_TORCH_CHECK(has_shape(t, shape), name, " must have shape ", shape_str(shape), ", got ", shape_str(t));
}

// t converted to dtype (no copy when it already has it), as Tensor.to(dtype)
inline Tensor to_dtype(const Tensor& t, ScalarType dtype) {
  return t.scalar_type() == dtype ? t : torch::stable::to(t, dtype);
}

// The ops with compiled kernels: the one list of them, in call-counter order. The CPU module registers a kernel
// `<op>_cpu` for each (cpu_ops.cpp), the CUDA module for some (cuda_ops.cu); each module exports the list as its
// OPS constant (module.cpp). paratriton/_backends.py OPS must equal it: tests/test_cpp_ext.py reads this line, and
// a build whose list differs from the Python one is refused at import.
#define PARATRITON_OPS(X) X(step_residual) X(order_k_residual) X(masked_lstsq) X(taa_residual) X(taa_update)

#define PT_OP_ENUM(name) op_##name,
enum Op : int { PARATRITON_OPS(PT_OP_ENUM) kNumOps };
#undef PT_OP_ENUM

#define PT_OP_NAME(name) #name,
constexpr const char* kOpNames[kNumOps] = {PARATRITON_OPS(PT_OP_NAME)};
#undef PT_OP_NAME

// Call counters: let the tests prove that a call went to the compiled kernel (not the Python default). Internal
// linkage on purpose: each module (_C, _C_cuda) keeps its own table, even with both loaded in one process.
namespace {

inline std::atomic<int64_t>* call_table() {
  static std::atomic<int64_t> calls[kNumOps] = {};
  return calls;
}

inline void count_call(Op op) { call_table()[op].fetch_add(1, std::memory_order_relaxed); }

// The op `call_counts(Tensor(a!) out, bool reset) -> ()` of each module: the calls of each kernel since the last
// reset, written into `out` (int64 [kNumOps], CPU); `reset` zeroes them.
constexpr const char* kCallCountsSchema = "call_counts(Tensor(a!) out, bool reset) -> ()";

inline void call_counts(Tensor out, bool reset) {
  STD_TORCH_CHECK(out.is_cpu() && out.scalar_type() == ScalarType::Long && has_shape(out, {kNumOps}) &&
                      out.is_contiguous(),
                  "call_counts: out must be a contiguous int64 CPU tensor of shape [", kNumOps, "]");
  int64_t* o = out.mutable_data_ptr<int64_t>();
  std::atomic<int64_t>* calls = call_table();
  for (int op = 0; op < kNumOps; ++op) o[op] = reset ? calls[op].exchange(0) : calls[op].load();
}

}  // namespace

}  // namespace paratriton
