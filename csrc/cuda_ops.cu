// CUDA kernels of the paratriton solver ops: the masked least-squares solve and the updates, on the LibTorch stable
// ABI (see common.h). They are registered as the ops ``paratriton_cuda::<op>`` for the CUDA key, in a module of their
// own (paratriton._C_cuda), so that the CPU module builds and loads whether or not this one does;
// paratriton/_backends.py routes ``torch.ops.paratriton.<op>`` on CUDA tensors to them when asked to.
//
// Every launch goes to the current CUDA stream of the inputs' device (a DeviceGuard makes it current) and nothing
// reads device memory back on the host, so the ops can be captured in a CUDA graph.
// Semantics: paratriton/ops/{masked_lstsq,anderson_update,taa}/naive.py.
//
// The dispatcher sends a call here when *any* tensor argument is a CUDA tensor, so every argument is checked to be
// a CUDA tensor on the first one's device (a CPU pointer handed to a kernel is an illegal address or a silent host
// read, and a tensor of another GPU is read through the wrong context), with a floating dtype where values are read,
// and with sizes whose launch grid fits; bad inputs raise (RuntimeError in Python) instead of crashing.
#include <cuda_runtime.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/headeronly/core/Dispatch_v2.h>

#include <algorithm>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "common.h"

namespace paratriton {
namespace {

std::atomic<int64_t> g_calls[kNumOps] = {};
inline void count_call(Op op) { g_calls[op].fetch_add(1, std::memory_order_relaxed); }

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

// An expanded tensor (a stride-0 dimension of size > 1) has elements that share memory: a write race in place.
bool is_expanded(const Tensor& t) {
  for (int64_t i = 0; i < t.dim(); ++i)
    if (t.size(i) > 1 && t.stride(i) == 0) return true;
  return false;
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
  count_call(kLstsq);
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

// ---------------------------------------------------------------------------------------------------------------
// Updates: grid (D-blocks, rows); each thread owns one element of one (step, trajectory) row
// ---------------------------------------------------------------------------------------------------------------
constexpr int kThreads = 256;
constexpr int64_t kMaxGridY = 65535;

// out = x + R - sum_j (dX_j + dR_j) gamma_j ; dX, dR contiguous [m, n, B, D], gamma contiguous [n, B, m]
template <typename T>
__global__ void update_kernel(Rows<const T> x, Rows<const T> R, const T* __restrict__ dX, const T* __restrict__ dR,
                              const T* __restrict__ gamma, Rows<T> out, int64_t B, int64_t rows, int64_t D, int m) {
  const int64_t d = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (d >= D) return;
  const int64_t slab = rows * D;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const int64_t p = row / B, b = row % B;
    T corr = T(0);
    for (int j = 0; j < m; ++j) {
      const int64_t i = j * slab + row * D + d;
      corr += (dX[i] + dR[i]) * gamma[row * m + j];
    }
    out.row(p, b)[d] = x.row(p, b)[d] + R.row(p, b)[d] - corr;
  }
}

Tensor anderson_update_cuda(const Tensor& x_, const Tensor& R_, const Tensor& dX_, const Tensor& dR_,
                            const Tensor& gamma_) {
  count_call(kUpdate);
  constexpr const char* op = "anderson_update (CUDA)";
  check_device(op, x_, "x", R_, "R");
  check_device(op, x_, "x", dX_, "dX");
  check_device(op, x_, "x", dR_, "dR");
  check_device(op, x_, "x", gamma_, "gamma");
  check_float(op, R_, "R");
  check_float(op, dX_, "dX");
  check_float(op, dR_, "dR");
  check_float(op, gamma_, "gamma");
  STD_TORCH_CHECK(x_.dim() == 3 && dX_.dim() == 4, "x must be [n, B, D] and dX [m, n, B, D]");
  STD_TORCH_CHECK(is_state(x_.scalar_type()), "x must be float32 or float64");
  const int64_t n = x_.size(0), B = x_.size(1), D = x_.size(2), m = dX_.size(0);
  STD_TORCH_CHECK(has_shape(R_, {n, B, D}), "R must have x's shape");
  STD_TORCH_CHECK(has_shape(dX_, {m, n, B, D}) && has_shape(dR_, {m, n, B, D}), "dX, dR must be [m, n, B, D]");
  STD_TORCH_CHECK(has_shape(gamma_, {n, B, m}), "gamma must be [n, B, m]");
  STD_TORCH_CHECK(m <= std::numeric_limits<int>::max(), op, ": too many history columns (", m, ")");
  STD_TORCH_CHECK((D + kThreads - 1) / kThreads <= kMaxGridX, op, ": D too large (", D, ")");
  const torch::stable::accelerator::DeviceGuard guard(x_.get_device_index());
  const auto dt = x_.scalar_type();
  const Tensor x = rows_ok(x_), R = rows_ok(to_dtype(R_, dt));
  const Tensor dX = torch::stable::contiguous(to_dtype(dX_, dt)), dR = torch::stable::contiguous(to_dtype(dR_, dt));
  const Tensor gamma = torch::stable::contiguous(to_dtype(gamma_, dt));
  Tensor out = new_like_device(x, {n, B, D}, dt);
  const int64_t rows = n * B;
  if (rows == 0 || D == 0) return out;
  const dim3 grid(static_cast<unsigned>((D + kThreads - 1) / kThreads), static_cast<unsigned>(std::min(rows, kMaxGridY)));
  const cudaStream_t stream = current_stream(x);
  THO_DISPATCH_V2(dt, "paratriton_anderson_update_cuda", AT_WRAP(([&] {
    using T = scalar_t;
    update_kernel<T><<<grid, kThreads, 0, stream>>>(
        crows_of<T>(x), crows_of<T>(R), dX.const_data_ptr<T>(), dR.const_data_ptr<T>(), gamma.const_data_ptr<T>(),
        rows_of<T>(out), B, rows, D, static_cast<int>(m));
    check_launch(op);
  })), AT_FLOATING_TYPES);
  return out;
}

// x = Y_{s_0} - sum_j gamma_j (Y_{s_j} - Y_{s_{j+1}}), s_j = (slot - j) mod M, hist_Y [M, n, B, D] rows
template <typename T>
__global__ void ring_update_kernel(const T* __restrict__ H, int64_t s_slot, int64_t sp, int64_t sb,
                                   const T* __restrict__ gamma, Rows<T> x, int64_t B, int64_t rows, int64_t D, int M,
                                   int slot) {
  const int64_t d = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (d >= D) return;
  const int m = M - 1;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const int64_t p = row / B, b = row % B;
    const T* base = H + p * sp + b * sb + d;
    T hi = base[static_cast<int64_t>(slot) * s_slot];
    const T y0 = hi;
    T corr = T(0);
    for (int j = 0; j < m; ++j) {
      const int s = ((slot - j - 1) % M + M) % M;
      const T lo = base[static_cast<int64_t>(s) * s_slot];
      corr += (hi - lo) * gamma[row * m + j];
      hi = lo;
    }
    x.row(p, b)[d] = y0 - corr;
  }
}

void taa_update_cuda(const Tensor& x, const Tensor& hist_Y, const Tensor& gamma_, int64_t slot) {
  count_call(kTaaUpdate);
  constexpr const char* op = "taa_update (CUDA)";
  check_device(op, x, "x", hist_Y, "hist_Y");
  check_device(op, x, "x", gamma_, "gamma");
  STD_TORCH_CHECK(x.dim() == 3 && hist_Y.dim() == 4, "x must be [n, B, D] and hist_Y [M, n, B, D]");
  STD_TORCH_CHECK(is_state(x.scalar_type()), "x must be float32 or float64");
  STD_TORCH_CHECK(hist_Y.scalar_type() == x.scalar_type(), "hist_Y must have x's dtype");
  check_float(op, gamma_, "gamma");
  const int64_t n = x.size(0), B = x.size(1), D = x.size(2), M = hist_Y.size(0);
  STD_TORCH_CHECK(M >= 1, op, ": hist_Y needs at least one ring slot, got ", shape_str(hist_Y));  // slot % M below
  STD_TORCH_CHECK(M - 1 <= std::numeric_limits<int>::max(), op, ": too many ring slots (", M, ")");
  STD_TORCH_CHECK(has_shape(hist_Y, {M, n, B, D}), "hist_Y must be [M, n, B, D], got ", shape_str(hist_Y));
  STD_TORCH_CHECK(has_shape(gamma_, {n, B, M - 1}), "gamma must be [n, B, M-1], got ", shape_str(gamma_));
  // x is written in place by one thread per element: an expanded (stride-0) x would be a write race
  STD_TORCH_CHECK(!is_expanded(x), op, ": x must not have internal overlap (an expanded tensor); pass a contiguous x");
  STD_TORCH_CHECK((D + kThreads - 1) / kThreads <= kMaxGridX, op, ": D too large (", D, ")");
  const torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  const bool direct = D <= 1 || x.stride(-1) == 1;
  const Tensor xo = direct ? x : new_like_device(x, {n, B, D}, x.scalar_type());
  const Tensor H = (D <= 1 || hist_Y.stride(-1) == 1) ? hist_Y : torch::stable::contiguous(hist_Y);
  const Tensor gamma = torch::stable::contiguous(to_dtype(gamma_, x.scalar_type()));
  const int64_t rows = n * B;
  const int s0 = static_cast<int>(((slot % M) + M) % M);
  if (rows > 0 && D > 0) {
    const dim3 grid(static_cast<unsigned>((D + kThreads - 1) / kThreads), static_cast<unsigned>(std::min(rows, kMaxGridY)));
    const cudaStream_t stream = current_stream(x);
    THO_DISPATCH_V2(x.scalar_type(), "paratriton_taa_update_cuda", AT_WRAP(([&] {
      using T = scalar_t;
      ring_update_kernel<T><<<grid, kThreads, 0, stream>>>(
          H.const_data_ptr<T>(), H.stride(0), H.stride(1), H.stride(2), gamma.const_data_ptr<T>(), rows_of<T>(xo), B,
          rows, D, static_cast<int>(M), s0);
      check_launch(op);
    })), AT_FLOATING_TYPES);
  }
  if (!direct) {
    Tensor xd = x;
    torch::stable::copy_(xd, xo);
  }
}

// Calls of each kernel since the last reset, written into `out` (int64 [kNumOps], CPU); `reset` zeroes them.
void call_counts(Tensor out, bool reset) {
  STD_TORCH_CHECK(out.is_cpu() && out.scalar_type() == ScalarType::Long && has_shape(out, {kNumOps}) &&
                      out.is_contiguous(),
                  "call_counts: out must be a contiguous int64 CPU tensor of shape [", kNumOps, "]");
  int64_t* o = out.mutable_data_ptr<int64_t>();
  for (int op = 0; op < kNumOps; ++op) o[op] = reset ? g_calls[op].exchange(0) : g_calls[op].load();
}

}  // namespace
}  // namespace paratriton

STABLE_TORCH_LIBRARY(paratriton_cuda, m) {
  m.def("masked_lstsq(Tensor G, Tensor h, Tensor num_cols, float ridge=1e-3, float floor=1e-30) -> Tensor");
  m.def("anderson_update(Tensor x, Tensor R, Tensor dX, Tensor dR, Tensor gamma) -> Tensor");
  m.def("taa_update(Tensor(a!) x, Tensor hist_Y, Tensor gamma, int slot) -> ()");
  m.def("call_counts(Tensor(a!) out, bool reset) -> ()");
}

STABLE_TORCH_LIBRARY_IMPL(paratriton_cuda, CUDA, m) {
  m.impl("masked_lstsq", TORCH_BOX(&paratriton::masked_lstsq_cuda));
  m.impl("anderson_update", TORCH_BOX(&paratriton::anderson_update_cuda));
  m.impl("taa_update", TORCH_BOX(&paratriton::taa_update_cuda));
}

STABLE_TORCH_LIBRARY_IMPL(paratriton_cuda, CPU, m) {  // the counters live on the host
  m.impl("call_counts", TORCH_BOX(&paratriton::call_counts));
}
