// CUDA kernel of the paratriton op masked_lstsq (the Anderson methods' small least-squares solves), on the LibTorch
// stable ABI (see common.h). It is registered as the op ``paratriton_cuda::masked_lstsq`` for the CUDA key, in a
// module of its own (paratriton._C_cuda), so that the CPU module builds and loads whether or not this one does;
// paratriton/_backends.py routes ``torch.ops.paratriton.masked_lstsq`` on CUDA tensors to it when asked to
// (PARATRITON_CUDA_OPS). The engine's other ops run Triton on CUDA (paratriton/ops/window_*/fused.py).
//
// Every launch goes to the current CUDA stream of the inputs' device (a DeviceGuard makes it current) and nothing
// reads device memory back on the host, so the op can be captured in a CUDA graph.
// Semantics: paratriton/ops/masked_lstsq/naive.py.
//
// The dispatcher sends a call here when *any* tensor argument is a CUDA tensor, so every argument is checked to be
// a CUDA tensor on the first one's device (a CPU pointer handed to a kernel is an illegal address or a silent host
// read, and a tensor of another GPU is read through the wrong context), with a floating dtype where values are read,
// and with sizes whose launch grid fits; bad inputs raise (RuntimeError in Python) instead of crashing.
#include <cuda_runtime.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/headeronly/core/Dispatch_v2.h>

#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

#include "common.h"

namespace paratriton {
namespace {

constexpr int kMaxM = 16;  // systems up to 16 x 16 live in registers/local memory (larger m: Python's reference)
constexpr int64_t kMaxGridX = 2147483647;  // gridDim.x limit

std::string device_str(const Tensor& t) {
  std::ostringstream os;
  if (t.is_cuda())
    os << "cuda:" << static_cast<int>(t.get_device_index());
  else if (t.is_cpu())
    os << "cpu";
  else
    os << "a non-CUDA device";
  return os.str();
}

// `t` (argument `name` of `op`) is a CUDA tensor on the device of `first` (itself a CUDA tensor).
void check_device(const char* op, const Tensor& first, const char* first_name, const Tensor& t, const char* name) {
  STD_TORCH_CHECK(first.is_cuda(), op, ": ", first_name, " must be a CUDA tensor, got one on ", device_str(first),
                  " (the CUDA kernel runs when any argument is on CUDA: move every tensor to the same GPU)");
  STD_TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor on ", device_str(first), " like ", first_name,
                  ", got one on ", device_str(t));
  STD_TORCH_CHECK(t.get_device_index() == first.get_device_index(), op, ": ", name, " is on ", device_str(t), " but ",
                  first_name, " is on ", device_str(first), "; every tensor must be on the same GPU");
}

void check_float(const char* op, const Tensor& t, const char* name) {
  STD_TORCH_CHECK(is_float(t.scalar_type()), op, ": ", name, " must be a floating tensor, got ",
                  torch::headeronly::toString(t.scalar_type()));
}

bool is_integer(ScalarType s) {
  return s == ScalarType::Long || s == ScalarType::Int || s == ScalarType::Short || s == ScalarType::Char ||
         s == ScalarType::Byte;
}

cudaStream_t current_stream(const Tensor& t) {
  void* stream = nullptr;
  PARATRITON_AOTI_CHECK(aoti_torch_get_current_cuda_stream(t.get_device_index(), &stream));
  return static_cast<cudaStream_t>(stream);
}

void check_launch(const char* op) {
  const cudaError_t err = cudaGetLastError();
  STD_TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

Tensor new_like_device(const Tensor& t, std::initializer_list<int64_t> shape, ScalarType dt) {
  return torch::stable::empty(torch::headeronly::IntHeaderOnlyArrayRef(shape), dt, std::nullopt, t.device());
}

// ---------------------------------------------------------------------------------------------------------------
// masked_lstsq: one thread per (step, trajectory) system, Gaussian elimination with partial pivoting in double
// ---------------------------------------------------------------------------------------------------------------
template <typename T, int MAXM>
__global__ void lstsq_kernel(const T* __restrict__ G, const T* __restrict__ h, const int64_t* __restrict__ ncols,
                             T* __restrict__ out, int64_t n, int64_t B, int m, double ridge, double floor) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (row >= n * B) return;
  const int64_t p = row / B;
  const int64_t nc = ncols[p];
  const int k = static_cast<int>(nc < 0 ? 0 : (nc > m ? m : nc));
  const double div = static_cast<double>(nc < 1 ? 1 : nc);
  const T* Gr = G + row * m * m;
  const T* hr = h + row * m;
  double A[MAXM][MAXM + 1];  // augmented [A | h]
  double tr = 0.0;
  for (int i = 0; i < k; ++i) tr += static_cast<double>(Gr[i * m + i]);
  const double lam = ridge * tr / div + floor;
  for (int i = 0; i < k; ++i) {
    for (int j = 0; j < k; ++j) A[i][j] = static_cast<double>(Gr[i * m + j]);
    A[i][i] += lam;
    A[i][k] = static_cast<double>(hr[i]);
  }
  for (int c = 0; c < k; ++c) {
    int piv = c;
    for (int i = c + 1; i < k; ++i)
      if (fabs(A[i][c]) > fabs(A[piv][c])) piv = i;
    if (piv != c)
      for (int j = c; j <= k; ++j) {
        const double t = A[c][j];
        A[c][j] = A[piv][j];
        A[piv][j] = t;
      }
    const double inv = 1.0 / A[c][c];
    for (int i = c + 1; i < k; ++i) {
      const double f = A[i][c] * inv;
      for (int j = c; j <= k; ++j) A[i][j] -= f * A[c][j];
    }
  }
  T* o = out + row * m;
  for (int i = k - 1; i >= 0; --i) {
    double s = A[i][k];
    for (int j = i + 1; j < k; ++j) s -= A[i][j] * A[j][k];
    A[i][k] = s / A[i][i];
  }
  for (int i = 0; i < m; ++i) o[i] = i < k ? static_cast<T>(A[i][k]) : T(0);
}

Tensor masked_lstsq_cuda(const Tensor& G_, const Tensor& h_, const Tensor& num_cols, double ridge, double floor) {
  count_call(op_masked_lstsq);
  constexpr const char* op = "masked_lstsq (CUDA)";
  check_device(op, G_, "G", h_, "h");
  check_device(op, G_, "G", num_cols, "num_cols");
  STD_TORCH_CHECK(G_.dim() == 4 && G_.size(2) == G_.size(3), "G must be [n, B, m, m], got ", shape_str(G_));
  STD_TORCH_CHECK(is_state(G_.scalar_type()), "G must be float32 or float64");
  const int64_t n = G_.size(0), B = G_.size(1), m = G_.size(2);
  STD_TORCH_CHECK(has_shape(h_, {n, B, m}), "h must be [n, B, m], got ", shape_str(h_));
  check_float(op, h_, "h");
  STD_TORCH_CHECK(num_cols.dim() == 1 && num_cols.size(0) == n, "num_cols must be [n], got ", shape_str(num_cols));
  STD_TORCH_CHECK(is_integer(num_cols.scalar_type()), "num_cols must be an integer tensor, got ",
                  torch::headeronly::toString(num_cols.scalar_type()));
  STD_TORCH_CHECK(m <= kMaxM, op, ": at most ", kMaxM, " history columns, got ", m);
  STD_TORCH_CHECK((n * B + 127) / 128 <= kMaxGridX, op, ": too many systems (", n * B, ")");
  const torch::stable::accelerator::DeviceGuard guard(G_.get_device_index());
  const Tensor nc = torch::stable::contiguous(to_dtype(num_cols, ScalarType::Long));
  const Tensor G = torch::stable::contiguous(G_), h = torch::stable::contiguous(to_dtype(h_, G.scalar_type()));
  Tensor out = new_like_device(G, {n, B, m}, G.scalar_type());
  const int64_t rows = n * B;
  if (rows == 0 || m == 0) return out;
  const int threads = 128;
  const int blocks = static_cast<int>((rows + threads - 1) / threads);
  const cudaStream_t stream = current_stream(G);
  THO_DISPATCH_V2(G.scalar_type(), "paratriton_masked_lstsq_cuda", AT_WRAP(([&] {
    // two register budgets: the common m <= 4 (history <= 4) gets the small, spill-free variant
    if (m <= 4)
      lstsq_kernel<scalar_t, 4><<<blocks, threads, 0, stream>>>(G.const_data_ptr<scalar_t>(),
          h.const_data_ptr<scalar_t>(), nc.const_data_ptr<int64_t>(), out.mutable_data_ptr<scalar_t>(), n, B,
          static_cast<int>(m), ridge, floor);
    else
      lstsq_kernel<scalar_t, kMaxM><<<blocks, threads, 0, stream>>>(G.const_data_ptr<scalar_t>(),
          h.const_data_ptr<scalar_t>(), nc.const_data_ptr<int64_t>(), out.mutable_data_ptr<scalar_t>(), n, B,
          static_cast<int>(m), ridge, floor);
    check_launch(op);
  })), AT_FLOATING_TYPES);
  return out;
}

}  // namespace
}  // namespace paratriton

STABLE_TORCH_LIBRARY(paratriton_cuda, m) {  // the schema of cpu_ops.cpp (tests/test_cpp_ext.py compares them)
  m.def("masked_lstsq(Tensor G, Tensor h, Tensor num_cols, float ridge=1e-3, float floor=1e-30) -> Tensor");
  m.def(paratriton::kCallCountsSchema);
}

STABLE_TORCH_LIBRARY_IMPL(paratriton_cuda, CUDA, m) {
  m.impl("masked_lstsq", TORCH_BOX(&paratriton::masked_lstsq_cuda));
}

STABLE_TORCH_LIBRARY_IMPL(paratriton_cuda, CPU, m) {  // the counters live on the host
  m.impl("call_counts", TORCH_BOX(&paratriton::call_counts));
}
