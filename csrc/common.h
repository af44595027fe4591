// Shared helpers of the paratriton compiled extension (CPU and CUDA sources).
//
// Layout convention of every op: a "window" tensor [n, B, D] is read as n*B rows of D contiguous elements, with
// arbitrary strides between steps (p) and trajectories (b). That covers the solver's slices (x[lo:hi],
// hist[:, lo:hi]) without copies; a tensor whose last dimension is not contiguous is copied once (rare).
#pragma once

#include <ATen/core/Tensor.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "api.h"

#if defined(__CUDACC__)
#define PT_HD __host__ __device__
#else
#define PT_HD
#endif

namespace paratriton {

// A [n, B, D] tensor as rows: row (p, b) starts at data + p * sp + b * sb and holds D contiguous elements.
template <typename T>
struct Rows {
  T* data;
  int64_t sp, sb;
  PT_HD inline T* row(int64_t p, int64_t b) const { return data + p * sp + b * sb; }
};

// A [n, B, D] (or [n, B, D]-shaped slice) tensor whose last dim is contiguous; otherwise a contiguous copy.
inline at::Tensor rows_ok(const at::Tensor& t) {
  return (t.size(-1) <= 1 || t.stride(-1) == 1) ? t : t.contiguous();
}

template <typename T>
inline Rows<T> rows_of(const at::Tensor& t) {  // t: [n, B, D] with stride(-1) == 1
  return Rows<T>{t.data_ptr<T>(), t.stride(0), t.stride(1)};
}

template <typename T>
inline Rows<const T> crows_of(const at::Tensor& t) {
  return Rows<const T>{t.const_data_ptr<T>(), t.stride(0), t.stride(1)};
}

// Call counters: let the tests prove that a call went to the compiled kernel (not the Python default).
enum Op { kStepResidual, kOrderK, kGram, kLstsq, kUpdate, kTaaResidual, kTaaUpdate, kNumOps };
extern std::atomic<int64_t> g_calls[2][kNumOps];  // [0] CPU, [1] CUDA
inline void count_call(int device, Op op) { g_calls[device][op].fetch_add(1, std::memory_order_relaxed); }

}  // namespace paratriton
