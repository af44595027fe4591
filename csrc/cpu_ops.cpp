// CPU kernels of the paratriton solver ops of PARATRITON_OPS (common.h; same semantics as
// paratriton/ops/<op>/naive.py), on the LibTorch stable ABI: they are registered as the ops ``paratriton_C::<op>``
// (schemas below) for the CPU key, and paratriton/_backends.py routes ``torch.ops.paratriton.<op>`` on CPU tensors
// to them. The engine reaches them on the CPU through its window ops: ``window_fixed_point`` runs step_residual and
// order_k_residual on the live window, ``window_taa`` taa_residual and taa_update, and every Anderson method
// masked_lstsq.
//
// Every op is one fused pass over the window where the reference takes several (temporaries, einsum, flips):
// rows (p, b) of D contiguous elements are split over torch's intra-op threads (torch::stable::parallel_for), and the
// inner loops over D are plain contiguous loops that the compiler vectorises (`omp simd`, -fopenmp-simd: no OpenMP
// runtime of our own). Reductions (RMS, Gram, the recurrence of the order-k residual) accumulate in double for
// float32 state, so a float32 result is at least as accurate as the float32 reference. `_Pragma` rather than
// `#pragma`: most loops sit inside dispatch macro arguments, where a directive is not allowed.
#include <torch/headeronly/core/Dispatch_v2.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <optional>
#include <tuple>
#include <vector>

#include "common.h"

namespace paratriton {
namespace {

using torch::stable::DeviceType;
using torch::stable::parallel_for;

constexpr int64_t kChunk = 512;           // D-chunk kept in L1 by the Gram pass
constexpr int64_t kGrainElems = 1 << 15;  // elements per parallel task: amortises the OpenMP fork

inline int64_t grain_rows(int64_t D) { return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(D, 1)); }

void check_state(const Tensor& t, const char* name) {
  STD_TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  STD_TORCH_CHECK(is_state(t.scalar_type()), name, " must be float32 or float64, got ",
                  torch::headeronly::toString(t.scalar_type()));
}

// A new uninitialised CPU tensor of `shape` and dtype `dt`.
Tensor new_cpu(std::initializer_list<int64_t> shape, ScalarType dt) {
  return torch::stable::empty(torch::headeronly::IntHeaderOnlyArrayRef(shape), dt, std::nullopt,
                              torch::stable::Device(DeviceType::CPU));
}

Tensor new_cpu_like(const Tensor& t) {  // contiguous, t's sizes and dtype
  return torch::stable::empty(t.sizes(), t.scalar_type(), std::nullopt, torch::stable::Device(DeviceType::CPU));
}

Tensor zeros_cpu(std::initializer_list<int64_t> shape, ScalarType dt) {
  Tensor t = new_cpu(shape, dt);
  torch::stable::zero_(t);
  return t;
}

template <typename T>
inline double dot(const T* __restrict x, const T* __restrict y, int64_t len) {
  double s = 0.0;
_Pragma("omp simd reduction(+ : s)")
  for (int64_t i = 0; i < len; ++i) s += static_cast<double>(x[i]) * static_cast<double>(y[i]);
  return s;
}

// [n] coefficient vector as T values in a small host vector (converted exactly like the reference's .to(dt)).
template <typename T>
std::vector<T> coef(const Tensor& v, int64_t n, const char* name) {
  STD_TORCH_CHECK(v.dim() == 1 && v.size(0) == n, name, " must have shape [", n, "], got ", shape_str(v));
  Tensor c = torch::stable::contiguous(torch::stable::to(v, torch::headeronly::CppTypeToScalarType<T>::value,
                                                         std::nullopt, torch::stable::Device(DeviceType::CPU)));
  return std::vector<T>(c.const_data_ptr<T>(), c.const_data_ptr<T>() + n);
}

// ---------------------------------------------------------------------------------------------------------------
// step_residual: r_p = a_p x_{p+1} + b_p m_p (+ c_p xi_p) - x_p, rms[p, b], top
// ---------------------------------------------------------------------------------------------------------------
template <typename T, typename M>
void residual_rows(Rows<const T> x, Rows<const M> mo, const Rows<const T>* xi, const T* a, const T* b, const T* c,
                   Rows<T> r, T* rms, int64_t n, int64_t B, int64_t D) {
  parallel_for(0, n * B, grain_rows(D), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t p = row / B, bb = row % B;
      const T* __restrict x0 = x.row(p, bb);
      const T* __restrict x1 = x.row(p + 1, bb);
      const M* __restrict m = mo.row(p, bb);
      T* __restrict out = r.row(p, bb);
      const T ap = a[p], bp = b[p];
      double ss = 0.0;
      if (xi != nullptr) {
        const T* __restrict z = xi->row(p, bb);
        const T cp = c[p];
_Pragma("omp simd reduction(+ : ss)")
        for (int64_t d = 0; d < D; ++d) {
          const T v = ap * x1[d] + bp * static_cast<T>(m[d]) - x0[d] + cp * z[d];
          out[d] = v;
          ss += static_cast<double>(v) * static_cast<double>(v);
        }
      } else {
_Pragma("omp simd reduction(+ : ss)")
        for (int64_t d = 0; d < D; ++d) {
          const T v = ap * x1[d] + bp * static_cast<T>(m[d]) - x0[d];
          out[d] = v;
          ss += static_cast<double>(v) * static_cast<double>(v);
        }
      }
      rms[row] = static_cast<T>(std::sqrt(ss / static_cast<double>(D)));
    }
  });
}

// Largest p with rms[p, b] > threshold[p] for some b (NaN compares false, as in the reference), or -1.
template <typename T>
int64_t top_unconverged(const T* rms, const T* thr, int64_t n, int64_t B) {
  for (int64_t p = n - 1; p >= 0; --p)
    for (int64_t bb = 0; bb < B; ++bb)
      if (rms[p * B + bb] > thr[p]) return p;
  return -1;
}

// residual_into for state dtype T (the model output's dtype is dispatched here: the dispatch macros do not nest).
template <typename T>
void residual_typed(const Tensor& x, const Tensor& model_out, const Tensor& noise, const Tensor& a, const Tensor& b,
                    const Tensor& c, const Tensor& threshold, const Tensor& r_out, const Tensor& rms,
                    const Tensor& top) {
  const int64_t n = x.size(0) - 1, B = x.size(1), D = x.size(2);
  const auto av = coef<T>(a, n, "a"), bv = coef<T>(b, n, "b"), tv = coef<T>(threshold, n, "threshold");
  std::vector<T> cv = noise.defined() ? coef<T>(c, n, "c") : std::vector<T>(n, T(0));
  Rows<const T> xr = crows_of<T>(x), zr{};
  if (noise.defined()) zr = crows_of<T>(noise);
  THO_DISPATCH_V2(model_out.scalar_type(), "paratriton_model_out", AT_WRAP(([&] {
    residual_rows<T, scalar_t>(xr, crows_of<scalar_t>(model_out), noise.defined() ? &zr : nullptr, av.data(),
                               bv.data(), cv.data(), rows_of<T>(r_out), rms.mutable_data_ptr<T>(), n, B, D);
  })), AT_FLOATING_TYPES, ScalarType::Half, ScalarType::BFloat16);
  *top.mutable_data_ptr<int64_t>() = top_unconverged<T>(rms.const_data_ptr<T>(), tv.data(), n, B);
}

// Writes r into `r_out` ([n, B, D] rows, state dtype) and returns (rms [n, B], top 0-d int64).
std::tuple<Tensor, Tensor> residual_into(const Tensor& x_, const Tensor& model_out_, const std::optional<Tensor>& noise_,
                                         const Tensor& a, const Tensor& b, const Tensor& c, const Tensor& threshold,
                                         const Tensor& r_out) {
  check_state(x_, "x");
  STD_TORCH_CHECK(x_.dim() == 3 && x_.size(0) >= 1, "x must be [n+1, B, D], got ", shape_str(x_));
  const int64_t n = x_.size(0) - 1, B = x_.size(1), D = x_.size(2);
  check_shape(model_out_, {n, B, D}, "model_out");
  STD_TORCH_CHECK(is_float(model_out_.scalar_type()), "model_out must be a float tensor");
  const Tensor x = rows_ok(x_), model_out = rows_ok(model_out_);
  Tensor noise;
  if (noise_.has_value() && noise_->defined()) {
    check_shape(*noise_, {n, B, D}, "noise");
    noise = rows_ok(to_dtype(*noise_, x.scalar_type()));  // usually already the state dtype: no copy
  }
  Tensor rms = new_cpu({n, B}, x.scalar_type());
  Tensor top = new_cpu({}, ScalarType::Long);
  THO_DISPATCH_V2(x.scalar_type(), "paratriton_step_residual", AT_WRAP(([&] {
    residual_typed<scalar_t>(x, model_out, noise, a, b, c, threshold, r_out, rms, top);
  })), AT_FLOATING_TYPES);
  return {rms, top};
}

std::tuple<Tensor, Tensor, Tensor> step_residual_cpu(const Tensor& x, const Tensor& model_out,
                                                     const std::optional<Tensor>& noise, const Tensor& a,
                                                     const Tensor& b, const Tensor& c, const Tensor& threshold) {
  count_call(op_step_residual);
  STD_TORCH_CHECK(x.dim() == 3 && x.size(0) >= 1, "x must be [n+1, B, D], got ", shape_str(x));
  Tensor r = new_cpu({x.size(0) - 1, x.size(1), x.size(2)}, x.scalar_type());
  auto [rms, top] = residual_into(x, model_out, noise, a, b, c, threshold, r);
  return {r, rms, top};
}

// ---------------------------------------------------------------------------------------------------------------
// order_k_residual: R_p = r_p + w_p R_{p+1} - [p + k < n] W_p r_{p+k},  W_p = prod_{s=p}^{p+k-1} w_s
// (the banded suffix sum of the reference in O(n D) instead of O(n^2 D); the running value is kept in double)
// ---------------------------------------------------------------------------------------------------------------
template <typename T>
void order_k_rows(Rows<const T> r, Rows<T> R, const std::vector<double>& w, const std::vector<double>& W, int64_t k,
                  int64_t n, int64_t B, int64_t D) {
  // The recurrence walks p, so each task owns a D-range of one trajectory through all steps. Long ranges (about
  // 4 tasks per thread) keep the accesses of each step one long contiguous stream for the prefetcher.
  const int64_t want = std::max<int64_t>(1, (4 * static_cast<int64_t>(torch::stable::get_num_threads()) + B - 1) / B);
  const int64_t chunk = std::min<int64_t>(std::max<int64_t>(1024, (D + want - 1) / want), std::max<int64_t>(D, 1));
  const int64_t nchunks = (D + chunk - 1) / chunk;
  parallel_for(0, B * nchunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> accv(chunk);
    double* __restrict acc = accv.data();
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bb = task / nchunks, d0 = (task % nchunks) * chunk, len = std::min(chunk, D - d0);
      std::fill(acc, acc + len, 0.0);
      for (int64_t p = n - 1; p >= 0; --p) {
        const T* __restrict rp = r.row(p, bb) + d0;
        T* __restrict out = R.row(p, bb) + d0;
        const double wp = w[p];
        if (p + k < n) {
          const T* __restrict rk = r.row(p + k, bb) + d0;
          const double Wp = W[p];
          _Pragma("omp simd")
          for (int64_t d = 0; d < len; ++d) {
            acc[d] = static_cast<double>(rp[d]) + wp * acc[d] - Wp * static_cast<double>(rk[d]);
            out[d] = static_cast<T>(acc[d]);
          }
        } else {
          _Pragma("omp simd")
          for (int64_t d = 0; d < len; ++d) {
            acc[d] = static_cast<double>(rp[d]) + wp * acc[d];
            out[d] = static_cast<T>(acc[d]);
          }
        }
      }
    }
  });
}

// Step weights w (a, or ones for Picard) as the reference rounds them (a.to(r.dtype)), and the band products W.
template <typename T>
void order_k_weights(const Tensor& a, int64_t n, int64_t k, bool unit, std::vector<double>& w, std::vector<double>& W) {
  const std::vector<T> av = coef<T>(a, n, "a");
  w.assign(n, 1.0);
  if (!unit)
    for (int64_t p = 0; p < n; ++p) w[p] = static_cast<double>(av[p]);
  W.assign(n, 0.0);
  for (int64_t p = 0; p + k < n; ++p) {
    double prod = 1.0;
    for (int64_t s = p; s < p + k; ++s) prod *= w[s];
    W[p] = prod;
  }
}

void order_k_into(const Tensor& r, const Tensor& a, int64_t order, bool unit_weights, const Tensor& R_out) {
  STD_TORCH_CHECK(order >= 1, "order must be >= 1, got ", order);
  const int64_t n = r.size(0), B = r.size(1), D = r.size(2);
  THO_DISPATCH_V2(r.scalar_type(), "paratriton_order_k", AT_WRAP(([&] {
    std::vector<double> w, W;
    order_k_weights<scalar_t>(a, n, order, unit_weights, w, W);
    order_k_rows<scalar_t>(crows_of<scalar_t>(r), rows_of<scalar_t>(R_out), w, W, order, n, B, D);
  })), AT_FLOATING_TYPES);
}

Tensor order_k_residual_cpu(const Tensor& r_, const Tensor& a, int64_t order, bool unit_weights) {
  count_call(op_order_k_residual);
  check_state(r_, "r");
  STD_TORCH_CHECK(r_.dim() == 3, "r must be [n, B, D], got ", shape_str(r_));
  const Tensor r = rows_ok(r_);
  Tensor R = new_cpu_like(r);
  order_k_into(r, a, order, unit_weights, R);
  return R;
}

// ---------------------------------------------------------------------------------------------------------------
// The TAA Gram pass (taa_residual): per-row Gram partials, then suffix sums over steps
// ---------------------------------------------------------------------------------------------------------------
// `load(p, b, d0, len, ptr, scratch)` sets ptr[j] (j < m) to dR_j and ptr[m] to R for elements [d0, d0 + len) of
// row (p, b): straight into the inputs, or into `scratch` ((m + 1) * kChunk elements) when they must be formed.
// part: [n * B, m * m + m] double partials (Gram row-major, then h).
template <typename T, typename Load>
void gram_rows(int64_t n, int64_t B, int64_t D, int64_t m, double* part, const Load& load) {
  const int64_t P = m * m + m;
  parallel_for(0, n * B, grain_rows(D * (m + 1)), [&](int64_t begin, int64_t end) {
    std::vector<T> scratch((m + 1) * kChunk);
    std::vector<const T*> ptr(m + 1);
    for (int64_t row = begin; row < end; ++row) {
      double* out = part + row * P;
      std::fill(out, out + P, 0.0);
      const int64_t p = row / B, bb = row % B;
      for (int64_t d0 = 0; d0 < D; d0 += kChunk) {  // chunks stay in L1 across the m(m+1)/2 + m dot products
        const int64_t len = std::min(kChunk, D - d0);
        load(p, bb, d0, len, ptr.data(), scratch.data());
        for (int64_t j = 0; j < m; ++j) {
          for (int64_t l = 0; l <= j; ++l) out[j * m + l] += dot(ptr[j], ptr[l], len);
          out[m * m + j] += dot(ptr[j], ptr[m], len);
        }
      }
      for (int64_t j = 0; j < m; ++j)
        for (int64_t l = 0; l < j; ++l) out[l * m + j] = out[j * m + l];
    }
  });
}

// Suffix sums over p of the partials, written as G [n, B, m, m] and h [n, B, m] (both contiguous, dtype T).
template <typename T>
void suffix_sums(double* part, int64_t n, int64_t B, int64_t m, T* G, T* h) {
  const int64_t P = m * m + m;
  parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bb = begin; bb < end; ++bb)
      for (int64_t p = n - 1; p >= 0; --p) {
        double* cur = part + (p * B + bb) * P;
        if (p + 1 < n) {
          const double* nxt = part + ((p + 1) * B + bb) * P;
          for (int64_t i = 0; i < P; ++i) cur[i] += nxt[i];
        }
        for (int64_t i = 0; i < m * m; ++i) G[(p * B + bb) * m * m + i] = static_cast<T>(cur[i]);
        for (int64_t j = 0; j < m; ++j) h[(p * B + bb) * m + j] = static_cast<T>(cur[m * m + j]);
      }
  });
}

// ---------------------------------------------------------------------------------------------------------------
// masked_lstsq: (G_p + lambda_p I) gamma = h on the first num_cols[p] columns (partial pivoting, in double)
// ---------------------------------------------------------------------------------------------------------------
template <typename T>
void lstsq_rows(const T* G, const T* h, const int64_t* ncols, T* out, int64_t n, int64_t B, int64_t m, double ridge,
                double floor) {
  parallel_for(0, n * B, 256, [&](int64_t begin, int64_t end) {
    std::vector<double> A(m * m), g(m);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t p = row / B;
      const int64_t nc = ncols[p];
      const int64_t k = std::clamp<int64_t>(nc, 0, m);           // columns in use
      const double div = static_cast<double>(std::max<int64_t>(nc, 1));  // the reference's num_cols.clamp_min(1)
      const T* Gr = G + row * m * m;
      const T* hr = h + row * m;
      T* o = out + row * m;
      double tr = 0.0;
      for (int64_t i = 0; i < k; ++i) tr += static_cast<double>(Gr[i * m + i]);
      const double lam = ridge * tr / div + floor;
      for (int64_t i = 0; i < k; ++i) {
        for (int64_t j = 0; j < k; ++j) A[i * k + j] = static_cast<double>(Gr[i * m + j]);
        A[i * k + i] += lam;
        g[i] = static_cast<double>(hr[i]);
      }
      // Gaussian elimination with partial pivoting (what torch.linalg.solve's LU does), k <= m is tiny
      for (int64_t c = 0; c < k; ++c) {
        int64_t piv = c;
        for (int64_t i = c + 1; i < k; ++i)
          if (std::abs(A[i * k + c]) > std::abs(A[piv * k + c])) piv = i;
        if (piv != c) {
          for (int64_t j = 0; j < k; ++j) std::swap(A[c * k + j], A[piv * k + j]);
          std::swap(g[c], g[piv]);
        }
        const double inv = 1.0 / A[c * k + c];
        for (int64_t i = c + 1; i < k; ++i) {
          const double f = A[i * k + c] * inv;
          for (int64_t j = c; j < k; ++j) A[i * k + j] -= f * A[c * k + j];
          g[i] -= f * g[c];
        }
      }
      for (int64_t i = k - 1; i >= 0; --i) {
        double s = g[i];
        for (int64_t j = i + 1; j < k; ++j) s -= A[i * k + j] * g[j];
        g[i] = s / A[i * k + i];
      }
      for (int64_t i = 0; i < m; ++i) o[i] = i < k ? static_cast<T>(g[i]) : T(0);
    }
  });
}

Tensor masked_lstsq_cpu(const Tensor& G_, const Tensor& h_, const Tensor& num_cols, double ridge, double floor) {
  count_call(op_masked_lstsq);
  check_state(G_, "G");
  STD_TORCH_CHECK(G_.dim() == 4 && G_.size(2) == G_.size(3), "G must be [n, B, m, m], got ", shape_str(G_));
  const int64_t n = G_.size(0), B = G_.size(1), m = G_.size(2);
  check_shape(h_, {n, B, m}, "h");
  STD_TORCH_CHECK(num_cols.dim() == 1 && num_cols.size(0) == n, "num_cols must be [n], got ", shape_str(num_cols));
  STD_TORCH_CHECK(!is_float(num_cols.scalar_type()) && num_cols.scalar_type() != ScalarType::Bool,
                  "num_cols must be an integer tensor");
  const Tensor G = torch::stable::contiguous(G_), h = torch::stable::contiguous(to_dtype(h_, G.scalar_type()));
  const Tensor nc = torch::stable::contiguous(to_dtype(num_cols, ScalarType::Long));
  Tensor out = new_cpu({n, B, m}, G.scalar_type());
  THO_DISPATCH_V2(G.scalar_type(), "paratriton_masked_lstsq", AT_WRAP(([&] {
    lstsq_rows<scalar_t>(G.const_data_ptr<scalar_t>(), h.const_data_ptr<scalar_t>(), nc.const_data_ptr<int64_t>(),
                         out.mutable_data_ptr<scalar_t>(), n, B, m, ridge, floor);
  })), AT_FLOATING_TYPES);
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// TAA ring ops (see paratriton/ops/taa/naive.py)
// ---------------------------------------------------------------------------------------------------------------
inline int64_t ring_slot(int64_t slot, int64_t M) { return ((slot % M) + M) % M; }

std::tuple<Tensor, Tensor, Tensor, Tensor> taa_residual_cpu(
    const Tensor& x, const Tensor& model_out, const std::optional<Tensor>& noise, const Tensor& a, const Tensor& b,
    const Tensor& c, const Tensor& threshold, const Tensor& hist_R, const Tensor& hist_Y, int64_t slot, int64_t order,
    bool unit_weights) {
  count_call(op_taa_residual);
  check_state(x, "x");
  STD_TORCH_CHECK(x.dim() == 3 && x.size(0) >= 1, "x must be [n+1, B, D], got ", shape_str(x));
  const int64_t n = x.size(0) - 1, B = x.size(1), D = x.size(2);
  STD_TORCH_CHECK(hist_R.dim() == 4 && hist_R.size(0) >= 1, "hist_R must be [M, n, B, D], got ", shape_str(hist_R));
  const int64_t M = hist_R.size(0), m = M - 1;
  check_shape(hist_R, {M, n, B, D}, "hist_R");
  check_shape(hist_Y, {M, n, B, D}, "hist_Y");
  STD_TORCH_CHECK(hist_R.scalar_type() == x.scalar_type() && hist_Y.scalar_type() == x.scalar_type(),
              "hist_R and hist_Y must have x's dtype");
  const int64_t s0 = ring_slot(slot, M);
  // mutated in place: work on the tensors themselves when each slot's rows are contiguous along D (the solver's
  // slices are), else on contiguous copies written back at the end
  const bool direct = D <= 1 || (hist_R.stride(-1) == 1 && hist_Y.stride(-1) == 1);
  const Tensor HR = direct ? hist_R : torch::stable::contiguous(hist_R);
  const Tensor HY = direct ? hist_Y : torch::stable::contiguous(hist_Y);
  const Tensor Rs = torch::stable::select(HR, 0, s0), Ys = torch::stable::select(HY, 0, s0);
  Tensor r = new_cpu({n, B, D}, x.scalar_type());
  auto [rms, top] = residual_into(x, model_out, noise, a, b, c, threshold, r);
  order_k_into(r, a, order, unit_weights, Rs);
  Tensor G = zeros_cpu({n, B, m, m}, x.scalar_type());
  Tensor h = zeros_cpu({n, B, m}, x.scalar_type());
  const Tensor xr = rows_ok(x);
  THO_DISPATCH_V2(x.scalar_type(), "paratriton_taa_residual", AT_WRAP(([&] {
    using T = scalar_t;
    const Rows<const T> xv = crows_of<T>(xr), Rv = crows_of<T>(Rs);
    const Rows<T> Yv = rows_of<T>(Ys);
    parallel_for(0, n * B, grain_rows(D), [&](int64_t begin, int64_t end) {  // Y = x + R
      for (int64_t row = begin; row < end; ++row) {
        const int64_t p = row / B, bb = row % B;
        const T* __restrict xs = xv.row(p, bb);
        const T* __restrict Rp = Rv.row(p, bb);
        T* __restrict Yp = Yv.row(p, bb);
_Pragma("omp simd")
        for (int64_t d = 0; d < D; ++d) Yp[d] = xs[d] + Rp[d];
      }
    });
    if (m > 0 && n * B > 0) {
      // dR_j = H[s_j] - H[s_{j+1}] with s_j the j-th newest slot, formed chunk by chunk (never materialised)
      std::vector<const T*> slots(M);
      for (int64_t j = 0; j < M; ++j) slots[j] = HR.const_data_ptr<T>() + ring_slot(s0 - j, M) * HR.stride(0);
      const int64_t sp = HR.stride(1), sb = HR.stride(2);
      std::vector<double> part(n * B * (m * m + m));
      gram_rows<T>(n, B, D, m, part.data(),
                   [&](int64_t p, int64_t bb, int64_t d0, int64_t len, const T** ptr, T* scratch) {
        const int64_t off = p * sp + bb * sb + d0;
        for (int64_t j = 0; j < m; ++j) {
          const T* __restrict hi = slots[j] + off;
          const T* __restrict lo = slots[j + 1] + off;
          T* __restrict dst = scratch + j * kChunk;
          _Pragma("omp simd")
          for (int64_t d = 0; d < len; ++d) dst[d] = hi[d] - lo[d];
          ptr[j] = dst;
        }
        ptr[m] = slots[0] + off;
      });
      suffix_sums<T>(part.data(), n, B, m, G.mutable_data_ptr<T>(), h.mutable_data_ptr<T>());
    }
  })), AT_FLOATING_TYPES);
  if (!direct) {
    Tensor hr = hist_R, hy = hist_Y;
    torch::stable::copy_(hr, HR);
    torch::stable::copy_(hy, HY);
  }
  return {rms, top, G, h};
}

void taa_update_cpu(const Tensor& x, const Tensor& hist_Y, const Tensor& gamma_, int64_t slot) {
  count_call(op_taa_update);
  check_state(x, "x");
  STD_TORCH_CHECK(x.dim() == 3 && hist_Y.dim() == 4, "x must be [n, B, D] and hist_Y [M, n, B, D]");
  const int64_t n = x.size(0), B = x.size(1), D = x.size(2), M = hist_Y.size(0), m = M - 1;
  check_shape(hist_Y, {M, n, B, D}, "hist_Y");
  check_shape(gamma_, {n, B, m}, "gamma");
  STD_TORCH_CHECK(hist_Y.scalar_type() == x.scalar_type(), "hist_Y must have x's dtype");
  const bool direct = D <= 1 || x.stride(-1) == 1;
  const Tensor xo = direct ? x : new_cpu_like(x);
  const Tensor H = (D <= 1 || hist_Y.stride(-1) == 1) ? hist_Y : torch::stable::contiguous(hist_Y);
  const Tensor gamma = torch::stable::contiguous(to_dtype(gamma_, x.scalar_type()));
  const int64_t s0 = ring_slot(slot, M);
  THO_DISPATCH_V2(x.scalar_type(), "paratriton_taa_update", AT_WRAP(([&] {
    using T = scalar_t;
    std::vector<const T*> slots(M);
    for (int64_t j = 0; j < M; ++j) slots[j] = H.const_data_ptr<T>() + ring_slot(s0 - j, M) * H.stride(0);
    const int64_t sp = H.stride(1), sb = H.stride(2);
    const Rows<T> xv = rows_of<T>(xo);
    const T* gp = gamma.const_data_ptr<T>();
    parallel_for(0, n * B, grain_rows(D * M), [&](int64_t begin, int64_t end) {
      std::vector<T> acc(D);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t p = row / B, bb = row % B, off = p * sp + bb * sb;
        const T* g = gp + row * m;
        T* __restrict ac = acc.data();
        std::fill(ac, ac + D, T(0));
        for (int64_t j = 0; j < m; ++j) {
          const T* __restrict hi = slots[j] + off;
          const T* __restrict lo = slots[j + 1] + off;
          const T gj = g[j];
_Pragma("omp simd")
          for (int64_t d = 0; d < D; ++d) ac[d] += (hi[d] - lo[d]) * gj;
        }
        const T* __restrict Y0 = slots[0] + off;
        T* __restrict out = xv.row(p, bb);  // written last: x may not alias the ring, but stays safe if it does
_Pragma("omp simd")
        for (int64_t d = 0; d < D; ++d) out[d] = Y0[d] - ac[d];
      }
    });
  })), AT_FLOATING_TYPES);
  if (!direct) {
    Tensor xd = x;
    torch::stable::copy_(xd, xo);
  }
}

}  // namespace
}  // namespace paratriton

// Schemas: those of the Python definitions (paratriton/ops/*), with the same mutation annotations
// (tests/test_cpp_ext.py compares them). One m.def per op of PARATRITON_OPS (common.h); the kernels are registered
// from that list, so an op named there without a `<op>_cpu` kernel does not compile.
STABLE_TORCH_LIBRARY(paratriton_C, m) {
  m.def("step_residual(Tensor x, Tensor model_out, Tensor? noise, Tensor a, Tensor b, Tensor c, Tensor threshold)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("order_k_residual(Tensor r, Tensor a, int order, bool unit_weights=False) -> Tensor");
  m.def("masked_lstsq(Tensor G, Tensor h, Tensor num_cols, float ridge=1e-3, float floor=1e-30) -> Tensor");
  m.def("taa_residual(Tensor x, Tensor model_out, Tensor? noise, Tensor a, Tensor b, Tensor c, Tensor threshold, "
        "Tensor(a!) hist_R, Tensor(b!) hist_Y, int slot, int order, bool unit_weights=False) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("taa_update(Tensor(a!) x, Tensor hist_Y, Tensor gamma, int slot) -> ()");
  m.def(paratriton::kCallCountsSchema);
}

#define PT_IMPL_CPU(name) m.impl(#name, TORCH_BOX(&paratriton::name##_cpu));
STABLE_TORCH_LIBRARY_IMPL(paratriton_C, CPU, m) {
  PARATRITON_OPS(PT_IMPL_CPU)
  m.impl("call_counts", TORCH_BOX(&paratriton::call_counts));
}
#undef PT_IMPL_CPU
