// CUDA kernels of the paratriton solver ops: the masked least-squares solve and the updates.
//
// Every launch goes to c10::cuda::getCurrentCUDAStream() of the inputs' device (a CUDAGuard makes it current) and
// nothing reads device memory back on the host, so the ops can be captured in a CUDA graph.
// Semantics: paratriton/ops/{masked_lstsq,anderson_update,taa}/naive.py.
//
// The dispatcher sends a call here when *any* tensor argument is a CUDA tensor, so every argument is checked to be
// a CUDA tensor on the first one's device (a CPU pointer handed to a kernel is an illegal address or a silent host
// read, and a tensor of another GPU is read through the wrong context), with a floating dtype where values are read,
// and with sizes whose launch grid fits; bad inputs raise (RuntimeError in Python) instead of crashing.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // at::cuda::getCurrentCUDAStream is this c10 function (no cuBLAS/cuSPARSE headers)
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "common.h"

namespace paratriton {
namespace {

using at::Tensor;

constexpr int kMaxM = 16;  // systems up to 16 x 16 live in registers/local memory; larger m takes the ATen path
constexpr int64_t kMaxGridX = 2147483647;  // gridDim.x limit

// `t` (argument `name` of `op`) is a CUDA tensor on the device of `first` (itself a CUDA tensor).
void check_device(const char* op, const Tensor& first, const char* first_name, const Tensor& t, const char* name) {
  TORCH_CHECK(first.is_cuda(), op, ": ", first_name, " must be a CUDA tensor, got one on ", first.device(),
              " (the CUDA kernel runs when any argument is on CUDA: move every tensor to the same GPU)");
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor on ", first.device(), " like ", first_name,
              ", got one on ", t.device());
  TORCH_CHECK(t.device() == first.device(), op, ": ", name, " is on ", t.device(), " but ", first_name, " is on ",
              first.device(), "; every tensor must be on the same GPU");
}

void check_float(const char* op, const Tensor& t, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be a floating tensor, got ",
              t.scalar_type());
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

// The reference's own formulation in ATen ops, for m > kMaxM (asynchronous too: linalg_solve_ex checks nothing).
Tensor masked_lstsq_aten(const Tensor& G, const Tensor& h, const Tensor& num_cols, double ridge, double floor) {
  const int64_t m = G.size(-1);
  const Tensor cols = at::arange(m, G.options().dtype(at::kLong));
  const Tensor valid = cols.unsqueeze(0) < num_cols.unsqueeze(1);                       // [n, m]
  const Tensor pair = (valid.unsqueeze(2) & valid.unsqueeze(1)).unsqueeze(1);           // [n, 1, m, m]
  const Tensor Gm = at::where(pair, G, at::zeros({}, G.options()));
  const Tensor k = num_cols.clamp_min(1).to(G.scalar_type()).unsqueeze(1);              // [n, 1]
  const Tensor lam = ridge * Gm.diagonal(0, -2, -1).sum(-1) / k + floor;                // [n, B]
  const Tensor diag = at::where(valid.unsqueeze(1), lam.unsqueeze(-1), at::ones_like(lam).unsqueeze(-1));
  const Tensor system = Gm + at::eye(m, G.options()) * diag.unsqueeze(-2);
  const Tensor rhs = at::where(valid.unsqueeze(1), h.to(G.scalar_type()), at::zeros({}, G.options()));
  return std::get<0>(at::linalg_solve_ex(system, rhs.unsqueeze(-1))).squeeze(-1);
}

Tensor masked_lstsq_cuda(const Tensor& G_, const Tensor& h_, const Tensor& num_cols, double ridge, double floor) {
  count_call(1, kLstsq);
  constexpr const char* op = "masked_lstsq (CUDA)";
  check_device(op, G_, "G", h_, "h");
  check_device(op, G_, "G", num_cols, "num_cols");
  TORCH_CHECK(G_.dim() == 4 && G_.size(2) == G_.size(3), "G must be [n, B, m, m], got ", G_.sizes());
  TORCH_CHECK(G_.scalar_type() == at::kFloat || G_.scalar_type() == at::kDouble, "G must be float32 or float64");
  const int64_t n = G_.size(0), B = G_.size(1), m = G_.size(2);
  TORCH_CHECK(h_.sizes() == at::IntArrayRef({n, B, m}), "h must be [n, B, m], got ", h_.sizes());
  check_float(op, h_, "h");
  TORCH_CHECK(num_cols.dim() == 1 && num_cols.size(0) == n, "num_cols must be [n], got ", num_cols.sizes());
  TORCH_CHECK(!at::isFloatingType(num_cols.scalar_type()) && !at::isComplexType(num_cols.scalar_type()),
              "num_cols must be an integer tensor, got ", num_cols.scalar_type());
  TORCH_CHECK((n * B + 127) / 128 <= kMaxGridX, op, ": too many systems (", n * B, ")");
  const c10::cuda::CUDAGuard guard(G_.device());
  const Tensor nc = num_cols.to(at::kLong).contiguous();
  if (m > kMaxM) return masked_lstsq_aten(G_, h_, nc, ridge, floor);
  const Tensor G = G_.contiguous(), h = h_.to(G.scalar_type()).contiguous();
  Tensor out = at::empty({n, B, m}, G.options());
  const int64_t rows = n * B;
  if (rows == 0 || m == 0) return out;
  const int threads = 128;
  const int blocks = static_cast<int>((rows + threads - 1) / threads);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(G.scalar_type(), "paratriton_masked_lstsq_cuda", [&] {
    // two register budgets: the common m <= 4 (history <= 4) gets the small, spill-free variant
    if (m <= 4)
      lstsq_kernel<scalar_t, 4><<<blocks, threads, 0, stream>>>(G.const_data_ptr<scalar_t>(),
          h.const_data_ptr<scalar_t>(), nc.const_data_ptr<int64_t>(), out.data_ptr<scalar_t>(), n, B,
          static_cast<int>(m), ridge, floor);
    else
      lstsq_kernel<scalar_t, kMaxM><<<blocks, threads, 0, stream>>>(G.const_data_ptr<scalar_t>(),
          h.const_data_ptr<scalar_t>(), nc.const_data_ptr<int64_t>(), out.data_ptr<scalar_t>(), n, B,
          static_cast<int>(m), ridge, floor);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
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
  count_call(1, kUpdate);
  constexpr const char* op = "anderson_update (CUDA)";
  check_device(op, x_, "x", R_, "R");
  check_device(op, x_, "x", dX_, "dX");
  check_device(op, x_, "x", dR_, "dR");
  check_device(op, x_, "x", gamma_, "gamma");
  check_float(op, R_, "R");
  check_float(op, dX_, "dX");
  check_float(op, dR_, "dR");
  check_float(op, gamma_, "gamma");
  TORCH_CHECK(x_.dim() == 3 && dX_.dim() == 4, "x must be [n, B, D] and dX [m, n, B, D]");
  TORCH_CHECK(x_.scalar_type() == at::kFloat || x_.scalar_type() == at::kDouble, "x must be float32 or float64");
  const int64_t n = x_.size(0), B = x_.size(1), D = x_.size(2), m = dX_.size(0);
  TORCH_CHECK(R_.sizes() == x_.sizes(), "R must have x's shape");
  TORCH_CHECK(dX_.sizes() == at::IntArrayRef({m, n, B, D}) && dR_.sizes() == dX_.sizes(), "dX, dR must be [m, n, B, D]");
  TORCH_CHECK(gamma_.sizes() == at::IntArrayRef({n, B, m}), "gamma must be [n, B, m]");
  TORCH_CHECK(m <= std::numeric_limits<int>::max(), op, ": too many history columns (", m, ")");
  TORCH_CHECK((D + kThreads - 1) / kThreads <= kMaxGridX, op, ": D too large (", D, ")");
  const c10::cuda::CUDAGuard guard(x_.device());
  const auto dt = x_.scalar_type();
  const Tensor x = rows_ok(x_), R = rows_ok(R_.to(dt));
  const Tensor dX = dX_.to(dt).contiguous(), dR = dR_.to(dt).contiguous(), gamma = gamma_.to(dt).contiguous();
  Tensor out = at::empty({n, B, D}, x.options());
  const int64_t rows = n * B;
  if (rows == 0 || D == 0) return out;
  const dim3 grid(static_cast<unsigned>((D + kThreads - 1) / kThreads), static_cast<unsigned>(std::min(rows, kMaxGridY)));
  AT_DISPATCH_FLOATING_TYPES(dt, "paratriton_anderson_update_cuda", [&] {
    using T = scalar_t;
    update_kernel<T><<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        crows_of<T>(x), crows_of<T>(R), dX.const_data_ptr<T>(), dR.const_data_ptr<T>(), gamma.const_data_ptr<T>(),
        rows_of<T>(out), B, rows, D, static_cast<int>(m));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
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
  count_call(1, kTaaUpdate);
  constexpr const char* op = "taa_update (CUDA)";
  check_device(op, x, "x", hist_Y, "hist_Y");
  check_device(op, x, "x", gamma_, "gamma");
  TORCH_CHECK(x.dim() == 3 && hist_Y.dim() == 4, "x must be [n, B, D] and hist_Y [M, n, B, D]");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "x must be float32 or float64");
  TORCH_CHECK(hist_Y.scalar_type() == x.scalar_type(), "hist_Y must have x's dtype");
  check_float(op, gamma_, "gamma");
  const int64_t n = x.size(0), B = x.size(1), D = x.size(2), M = hist_Y.size(0);
  TORCH_CHECK(M >= 1, op, ": hist_Y needs at least one ring slot, got ", hist_Y.sizes());  // slot % M below
  TORCH_CHECK(M - 1 <= std::numeric_limits<int>::max(), op, ": too many ring slots (", M, ")");
  TORCH_CHECK(hist_Y.sizes() == at::IntArrayRef({M, n, B, D}), "hist_Y must be [M, n, B, D], got ", hist_Y.sizes());
  TORCH_CHECK(gamma_.sizes() == at::IntArrayRef({n, B, M - 1}), "gamma must be [n, B, M-1], got ", gamma_.sizes());
  // x is written in place by one thread per element: an expanded (stride-0) x would be a write race
  TORCH_CHECK(at::has_internal_overlap(x) != at::MemOverlap::Yes, op,
              ": x must not have internal overlap (an expanded tensor); pass a contiguous x");
  TORCH_CHECK((D + kThreads - 1) / kThreads <= kMaxGridX, op, ": D too large (", D, ")");
  const c10::cuda::CUDAGuard guard(x.device());
  const bool direct = D <= 1 || x.stride(-1) == 1;
  const Tensor xo = direct ? x : at::empty(x.sizes(), x.options());
  const Tensor H = (D <= 1 || hist_Y.stride(-1) == 1) ? hist_Y : hist_Y.contiguous();
  const Tensor gamma = gamma_.to(x.scalar_type()).contiguous();
  const int64_t rows = n * B;
  const int s0 = static_cast<int>(((slot % M) + M) % M);
  if (rows > 0 && D > 0) {
    const dim3 grid(static_cast<unsigned>((D + kThreads - 1) / kThreads), static_cast<unsigned>(std::min(rows, kMaxGridY)));
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "paratriton_taa_update_cuda", [&] {
      using T = scalar_t;
      ring_update_kernel<T><<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          H.const_data_ptr<T>(), H.stride(0), H.stride(1), H.stride(2), gamma.const_data_ptr<T>(), rows_of<T>(xo), B,
          rows, D, static_cast<int>(M), s0);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  if (!direct) x.copy_(xo);
}

}  // namespace

std::vector<std::string> cuda_op_names() { return {"masked_lstsq", "anderson_update", "taa_update"}; }

std::string cuda_build_version() {
  return std::to_string(CUDART_VERSION / 1000) + "." + std::to_string((CUDART_VERSION % 1000) / 10);
}

// Registers the requested subset of cuda_op_names(); returns the ones registered.
std::vector<std::string> register_cuda(torch::Library& m, const std::vector<std::string>& ops) {
  std::vector<std::string> done;
  for (const auto& op : ops) {
    if (op == "masked_lstsq") m.impl("masked_lstsq", TORCH_FN(masked_lstsq_cuda));
    else if (op == "anderson_update") m.impl("anderson_update", TORCH_FN(anderson_update_cuda));
    else if (op == "taa_update") m.impl("taa_update", TORCH_FN(taa_update_cuda));
    else continue;
    done.push_back(op);
  }
  return done;
}

}  // namespace paratriton
