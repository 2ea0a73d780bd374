// Interval kernels: center/radius preparation, sound finishing of interval affine maps,
// monotone activations, and plain dense affine maps (GEMM + bias).

#include "fastcert/common.h"
#include "fastcert/kernels.h"
#include "fastcert/pool.h"

#include <vector>

namespace fastcert {

template <typename T>
void dense_forward(const View<T>& x, const View<T>& W, const View<T>& b, View<T>& out);

// c = (l+u)/2; r >= max(u-c, c-l) (rounded up); h = |c| + r (rounded up).  All [n].
template <typename T>
void interval_prep(const View<T>& l, const View<T>& u, View<T>& c, View<T>& r, View<T>& h) {
  const py::ssize_t n = l.size();
  expect_size(u.size(), n, "u");
  expect_size(c.size(), n, "c");
  expect_size(r.size(), n, "r");
  expect_size(h.size(), n, "h");
  const T* L = ro(l, "l");
  const T* U = ro(u, "u");
  T* C = mut(c, "c");
  T* R = mut(r, "r");
  T* H = mut(h, "h");
parallel_for(n, grain_for(n, 1024), n > kParallelMin, [&](std::int64_t i0_, std::int64_t i1_, int) {
for (py::ssize_t i = static_cast<py::ssize_t>(i0_); i < static_cast<py::ssize_t>(i1_); ++i) {
    T ci = L[i] + (U[i] - L[i]) / 2;  // stays inside [l,u] for finite l<=u
    T ri = up_unless_zero(std::max(U[i] - ci, ci - L[i]));
    C[i] = ci;
    R[i] = ri;
    H[i] = up_unless_zero(std::fabs(ci) + ri);
  }
});
}

// From mc = W c (+b), mr = |W| r, mg = |W| h (+|b| added here), write sound bounds:
//   l = mc - mr - gamma*g,  u = mc + mr + gamma*g,  g = mg + |b|  (gamma covers the GEMM rounding).
// bias may be empty (size 0). Arrays are [B, m] with the bias broadcast over rows.
// tiny: the absolute (underflow) error bound of one of the products' sums (underflow_slack of its length).
template <typename T>
void interval_finish(const View<T>& mc, const View<T>& mr, View<T>& mg, const View<T>& absb, double gamma, double tiny,
                     View<T>& l, View<T>& u) {
  const py::ssize_t n = mc.size();
  const py::ssize_t m = absb.size();
  expect_size(mr.size(), n, "mr");
  expect_size(mg.size(), n, "mg");
  expect_size(l.size(), n, "l");
  expect_size(u.size(), n, "u");
  const T* C = ro(mc, "mc");
  const T* R = ro(mr, "mr");
  T* G = mut(mg, "mg");
  const T* AB = m ? ro(absb, "absb") : nullptr;
  T* Lo = mut(l, "l");
  T* Up = mut(u, "u");
  const T g = static_cast<T>(gamma);
  const T tn = static_cast<T>(tiny);
  if (!(tn > 0)) throw std::invalid_argument("interval_finish: tiny must be > 0");
  if (!(g >= 0)) throw std::invalid_argument("interval_finish: gamma must be >= 0");
  // rows of the bias's length (no modulo per element); pointers copied into the loop so that stores
  // through them cannot be taken to alias them, and the branch-free steps vectorize
  const py::ssize_t mm = m ? m : n, rows = n / mm;
  if (m && n % m != 0) throw std::invalid_argument("interval_finish: size is not a multiple of the bias length");
  // one loop per case: a conditional load of the bias (AB ? AB[j] : 0) kept the loop from vectorizing
  // (it ran scalar with a branch per rounding step: 40 ns an element); without a bias AB is never read
  auto run = [&](auto has_bias) {
    constexpr bool HB = decltype(has_bias)::value;
    parallel_for(rows, grain_for(rows), n > kParallelMin, [=](std::int64_t r0, std::int64_t r1, int) {
      const T g1 = up(T(1) + g), tn2 = 2 * tn;
      for (py::ssize_t row = r0; row < r1; ++row) {
        const T* __restrict Cr = C + row * mm;
        const T* __restrict Rr = R + row * mm;
        T* __restrict Gr = G + row * mm;
        T* __restrict Lr = Lo + row * mm;
        T* __restrict Ur = Up + row * mm;
#pragma omp simd
        for (py::ssize_t j = 0; j < mm; ++j) {
          // g as computed may fall short of the exact |W|h + |b| by a relative gamma and an absolute tiny
          // (up_pos: every operand below is >= tn > 0 (mg, |b| >= +0), a product of positive numbers, or NaN)
          T gi;
          if constexpr (HB) gi = up_pos(up_pos(Gr[j] + tn) + AB[j]);
          else gi = up_pos(up_pos(Gr[j] + tn) + T(0));
          gi = up_pos(gi * g1);
          Gr[j] = gi;
          // W c (+b) and |W| r: each off by at most gamma (|W||c| + |b|) resp. gamma |W| r, plus tiny
          const T rad = up_pos(up_pos(Rr[j] + up_pos(g * gi)) + tn2);
          Lr[j] = down(Cr[j] - rad);
          Ur[j] = up(Cr[j] + rad);
        }
      }
    });
  };
  if (AB) run(std::true_type{});
  else run(std::false_type{});
}

// Whether every entry of x is finite (x - x is 0 for a finite x and NaN for an infinity or a NaN; the
// sum is a vectorizable reduction): the overflow check of the interval pass without torch temporaries.
template <typename T>
bool all_finite(const View<T>& x) {
  const T* X = ro(x, "x");
  const py::ssize_t n = x.size();
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (py::ssize_t i = 0; i < n; ++i) acc += X[i] - X[i];
  return acc == T(0);
}
template bool all_finite<float>(const View<float>&);
template bool all_finite<double>(const View<double>&);

// One step of the float64-evaluation error bound (algorithms/slack.py, eval_slack) through an affine
// layer followed by an activation, when the next layer needs only each sample's largest entry:
//   E_aff[b,k] = (gamma64 * g[b,k] + rowabs[k] * emax_in[b]) + uf
//   E_act[b,k] = (lip * E_aff[b,k] + rel * max(|post_l[b,k]|, |post_u[b,k]|)) + abs_term
//   emax_out[b] = max_k E_act[b,k]
// in float64, in the same operations and order as the torch code it replaces (so the same numbers),
// without its [B, n] float64 temporaries (whose allocation and page faults made that code ~1 ms a
// layer). g, post_l, post_u: [B, n] (compute dtype); rowabs: [n] float64; emax_in, emax_out: [B].
// A NaN anywhere in a sample's terms makes its emax_out NaN.
namespace {
// max_k of one sample's terms (see eval_err_max); NaN if any term is NaN or infinite
template <typename T>
inline __attribute__((always_inline)) double err_row_max(const T* __restrict gb, const T* __restrict lb,
                                                         const T* __restrict ub, const double* __restrict RA,
                                                         py::ssize_t n, double ei, double gamma64, double uf,
                                                         double lip, double rel, double abs_term) {
  double m = 0, nan = 0;
#pragma omp simd reduction(max : m) reduction(+ : nan)
  for (py::ssize_t k = 0; k < n; ++k) {
    const double ea = (gamma64 * static_cast<double>(gb[k]) + RA[k] * ei) + uf;
    const double mag = std::max(std::fabs(static_cast<double>(lb[k])), std::fabs(static_cast<double>(ub[k])));
    const double v = (lip * ea + rel * mag) + abs_term;
    m = std::max(m, v);
    nan += v - v;  // 0, or NaN when v is NaN or infinite
  }
  return nan == 0 ? m : std::numeric_limits<double>::quiet_NaN();
}
// compiled per vector width (common.h): float64 arithmetic does not vectorize on baseline x86-64
FASTCERT_SIMD_CLONES double err_row_max_f(const float* gb, const float* lb, const float* ub, const double* RA,
                                          py::ssize_t n, double ei, double gamma64, double uf, double lip, double rel,
                                          double abs_term) {
  return err_row_max(gb, lb, ub, RA, n, ei, gamma64, uf, lip, rel, abs_term);
}
FASTCERT_SIMD_CLONES double err_row_max_f(const double* gb, const double* lb, const double* ub, const double* RA,
                                          py::ssize_t n, double ei, double gamma64, double uf, double lip, double rel,
                                          double abs_term) {
  return err_row_max(gb, lb, ub, RA, n, ei, gamma64, uf, lip, rel, abs_term);
}
}  // namespace

template <typename T>
void eval_err_max(const View<T>& g, const View<double>& rowabs, const View<double>& emax_in, double gamma64, double uf,
                  double lip, const View<T>& post_l, const View<T>& post_u, double rel, double abs_term,
                  View<double>& emax_out) {
  const py::ssize_t B = emax_in.size(), n = rowabs.size();
  expect_size(g.size(), B * n, "g");
  expect_size(post_l.size(), B * n, "post_l");
  expect_size(post_u.size(), B * n, "post_u");
  expect_size(emax_out.size(), B, "emax_out");
  const T* G = ro(g, "g");
  const double* RA = ro(rowabs, "rowabs");
  const double* EI = ro(emax_in, "emax_in");
  const T* PL = ro(post_l, "post_l");
  const T* PU = ro(post_u, "post_u");
  double* EO = mut(emax_out, "emax_out");
  parallel_for(B, grain_for(B), B * n > kParallelMin, [=](std::int64_t b0, std::int64_t b1, int) {
    for (py::ssize_t b = b0; b < b1; ++b)
      EO[b] = err_row_max_f(G + b * n, PL + b * n, PU + b * n, RA, n, EI[b], gamma64, uf, lip, rel, abs_term);
  });
}
template void eval_err_max<float>(const View<float>&, const View<double>&, const View<double>&, double, double, double,
                                  const View<float>&, const View<float>&, double, double, View<double>&);
template void eval_err_max<double>(const View<double>&, const View<double>&, const View<double>&, double, double,
                                   double, const View<double>&, const View<double>&, double, double, View<double>&);

// One row of interval_prep_rows: c, r of m entries, max |c| and the float64 sum of the squares of c.
// The sum runs in kLanes fixed partial sums (entry k goes to lane k % kLanes), added up in a fixed tree at the
// end: the order is written here, not chosen by the vectorizer, so every clone (common.h) and every machine
// gives the same bits, and the lanes map onto vector registers of any width (the baseline build ran this
// float64 sum scalar: ~0.5 ms of a dense interval step on 1568 inputs x 32 samples).
namespace {
constexpr int kLanes = 8;
template <typename T>
inline __attribute__((always_inline)) void prep_row(const T* __restrict L, const T* __restrict U, T* __restrict C,
                                                    T* __restrict R, py::ssize_t m, T& cmax, double& ss) {
  double acc[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  T cm[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  py::ssize_t k0 = 0;
  for (; k0 + kLanes <= m; k0 += kLanes) {
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) {
      const py::ssize_t k = k0 + j;
      const T ci = L[k] + (U[k] - L[k]) / 2;  // stays inside [l,u] for finite l<=u
      C[k] = ci;
      R[k] = up_unless_zero(std::max(U[k] - ci, ci - L[k]));
      cm[j] = std::max(cm[j], std::fabs(ci));
      acc[j] += static_cast<double>(ci) * static_cast<double>(ci);
    }
  }
  for (int j = 0; k0 + j < m; ++j) {
    const py::ssize_t k = k0 + j;
    const T ci = L[k] + (U[k] - L[k]) / 2;
    C[k] = ci;
    R[k] = up_unless_zero(std::max(U[k] - ci, ci - L[k]));
    cm[j] = std::max(cm[j], std::fabs(ci));
    acc[j] += static_cast<double>(ci) * static_cast<double>(ci);
  }
  ss = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
  // max is exact: any order gives the same value (a NaN entry makes the bounds NaN downstream anyway)
  cmax = std::max(std::max(std::max(cm[0], cm[4]), std::max(cm[2], cm[6])),
                  std::max(std::max(cm[1], cm[5]), std::max(cm[3], cm[7])));
}
FASTCERT_SIMD_CLONES void prep_row_f(const float* L, const float* U, float* C, float* R, py::ssize_t m, float& cmax,
                                     double& ss) {
  prep_row(L, U, C, R, m, cmax, ss);
}
FASTCERT_SIMD_CLONES void prep_row_f(const double* L, const double* U, double* C, double* R, py::ssize_t m,
                                     double& cmax, double& ss) {
  prep_row(L, U, C, R, m, cmax, ss);
}
}  // namespace

// c = (l+u)/2; r >= max(u-c, c-l) (rounded up); cmax[b] = max_i |c[b,i]|; c2[b] >= ||c[b,:]||_2.
// l,u,c,r: [B, n]; cmax, c2: [B]. Used with interval_finish_rows, which needs no |W| h product:
// |W| h <= |W| r + |W| |c|  and  (|W| |c|)_i <= min(cmax * rowsum_i |W|, ||c||_2 ||W_i||_2).
template <typename T>
void interval_prep_rows(const View<T>& l, const View<T>& u, View<T>& c, View<T>& r, View<T>& cmax, View<T>& c2) {
  const py::ssize_t n = l.size();
  const py::ssize_t B = cmax.size();
  expect_size(u.size(), n, "u");
  expect_size(c.size(), n, "c");
  expect_size(r.size(), n, "r");
  if (B == 0 || n % B != 0) throw std::invalid_argument("interval_prep_rows: size is not a multiple of B");
  const py::ssize_t m = n / B;
  const T* L = ro(l, "l");
  const T* U = ro(u, "u");
  T* C = mut(c, "c");
  T* R = mut(r, "r");
  T* CM = mut(cmax, "cmax");
  expect_size(c2.size(), B, "c2");
  T* C2 = mut(c2, "c2");
  // the sum of squares in double: each square and addition has relative error <= u64, so the sum (in any
  // order: prep_row's fixed one included) is within (1 + (m+1) u64) of exact; inflate by 2(m+2) u64, take
  // sqrt (correctly rounded), step up
  const double infl = 1.0 + 2.0 * static_cast<double>(m + 2) * unit_roundoff<double>();
parallel_for(B, grain_for(B), n > kParallelMin, [&](std::int64_t i0_, std::int64_t i1_, int) {
for (py::ssize_t b = static_cast<py::ssize_t>(i0_); b < static_cast<py::ssize_t>(i1_); ++b) {
    T cm = 0;
    double ss = 0;
    prep_row_f(L + b * m, U + b * m, C + b * m, R + b * m, m, cm, ss);
    CM[b] = cm;
    // squares of float64 entries below 2^-537 underflow: each loses at most eta64, so add m+2 of them
    const double nrm = up(std::sqrt(up(up(ss + static_cast<double>(m + 2) * eta<double>()) * infl)));
    T t = static_cast<T>(nrm);  // round to T, then make sure it is not below
    if (static_cast<double>(t) < nrm) t = up(t);
    C2[b] = t;
  }
});
}

// From mc = W c (+b) and mr = |W| r (rows of [B, m]), write l = mc - rad, u = mc + rad with
// rad = mr + gamma*g and g >= |W| max(|l_in|,|u_in|) + |b|, where
//   |W| max(|l_in|,|u_in|) <= |W| r + |W| |c| <= mr (1 + 2 gamma) + min(cmax * rowabs, c2 * rownorm)
// (mr falls short of the exact |W| r by at most a relative gamma; rowabs >= sum_j |W_ij| and
// rownorm >= ||W_i||_2 are given; the second is Cauchy-Schwarz, usually the tighter one).
// g is returned in out_g: the magnitude that bounds this layer's floating-point error downstream.
template <typename T>
void interval_finish_rows(View<T>& mc, View<T>& mr, const View<T>& cmax, const View<T>& c2, const View<T>& rowabs,
                          const View<T>& rownorm, const View<T>& absb, double gamma, double tiny, View<T>& out_g) {
  const py::ssize_t n = mc.size();
  const py::ssize_t m = rowabs.size();
  const py::ssize_t nb = absb.size();
  expect_size(mr.size(), n, "mr");
  expect_size(out_g.size(), n, "out_g");
  if (m == 0 || n % m != 0) throw std::invalid_argument("interval_finish_rows: size is not a multiple of n_out");
  expect_size(cmax.size(), n / m, "cmax");
  expect_size(c2.size(), n / m, "c2");
  expect_size(rownorm.size(), m, "rownorm");
  const T* C2 = ro(c2, "c2");
  const T* RN = ro(rownorm, "rownorm");
  if (nb != 0 && nb != m) throw std::invalid_argument("interval_finish_rows: absb must be empty or [n_out]");
  T* C = mut(mc, "mc");
  T* R = mut(mr, "mr");
  T* G = mut(out_g, "out_g");
  const T* CM = ro(cmax, "cmax");
  const T* RA = ro(rowabs, "rowabs");
  const T* AB = nb ? ro(absb, "absb") : nullptr;
  const T g = static_cast<T>(gamma);
  const T g2 = up(T(1) + up(2 * g));
  const T g1 = up(T(1) + g);
  const T tn = static_cast<T>(tiny);
  if (!(tn > 0)) throw std::invalid_argument("interval_finish_rows: tiny must be > 0");
  const py::ssize_t rows = n / m;
  // one vectorizable loop per case (no bias: AB is null and must not be read, even speculatively)
  auto run = [&](auto has_bias) {
    constexpr bool HB = decltype(has_bias)::value;
parallel_for(rows, grain_for(rows), n > kParallelMin, [&](std::int64_t i0_, std::int64_t i1_, int) {
for (py::ssize_t row = static_cast<py::ssize_t>(i0_); row < static_cast<py::ssize_t>(i1_); ++row) {
      const T cm = CM[row], cn = C2[row];
#pragma omp simd
      for (py::ssize_t j = 0; j < m; ++j) {
        const py::ssize_t k = row * m + j;
        // mr falls short of |W| r by at most a relative gamma and an absolute tiny (underflow)
        T gi = up(up(up(R[k] * g2) + 2 * tn) + std::min(up(cm * RA[j]), up(cn * RN[j])));
        if constexpr (HB) gi = up(gi + AB[j]);
        gi = up(gi * g1);
        G[k] = gi;
        const T rad = up(up(R[k] + up(g * gi)) + 2 * tn);
        const T c = C[k];
        C[k] = down(c - rad);
        R[k] = up(c + rad);
      }
    }
});
  };
  if (nb) run(std::true_type{});
  else run(std::false_type{});
}

// The whole interval step of a dense layer in one call: out_l/out_u = bounds of W x + b over
// x in [l, u] (rows [B, n_in] -> [B, n_out]), out_g = g as in interval_finish_rows.
// work: >= 2*B*n_in + 2*B elements.
template <typename T>
void interval_dense(const View<T>& l, const View<T>& u, const View<T>& W, const View<T>& absW, const View<T>& b,
                    const View<T>& rowabs, const View<T>& rownorm, const View<T>& absb, double gamma, double tiny,
                    View<T>& out_l, View<T>& out_u, View<T>& out_g, View<T>& work) {
  if (W.ndim() != 2) throw std::invalid_argument("interval_dense: W must be 2-D [out, in]");
  const int m = static_cast<int>(W.shape(0)), n = static_cast<int>(W.shape(1));
  if (m == 0 || n == 0) throw std::invalid_argument("interval_dense: W has a zero dimension");
  expect_size(absW.size(), W.size(), "absW");
  if (l.size() % n != 0) throw std::invalid_argument("interval_dense: l size is not a multiple of in_features");
  const int B = static_cast<int>(l.size() / n);
  expect_size(u.size(), l.size(), "u");
  expect_size(out_l.size(), static_cast<py::ssize_t>(B) * m, "out_l");
  expect_size(out_u.size(), static_cast<py::ssize_t>(B) * m, "out_u");
  expect_size(out_g.size(), static_cast<py::ssize_t>(B) * m, "out_g");
  expect_size(rowabs.size(), m, "rowabs");
  const py::ssize_t nb = b.size();
  if (nb != 0 && nb != m) throw std::invalid_argument("interval_dense: bias size must equal out_features");
  const py::ssize_t need = 2 * static_cast<py::ssize_t>(B) * n + 2 * B;
  if (work.size() < need) throw std::invalid_argument("interval_dense: work is too small");
  if (B == 0) return;
  T* wk = mut(work, "work");
  // views of the workspace as arrays for the shared helpers (no copies)
  auto view = [](T* p, py::ssize_t k) { return View<T>::of(p, {k}); };
  View<T> c = view(wk, static_cast<py::ssize_t>(B) * n);
  View<T> r = view(wk + static_cast<py::ssize_t>(B) * n, static_cast<py::ssize_t>(B) * n);
  View<T> cm = view(wk + 2 * static_cast<py::ssize_t>(B) * n, B);
  View<T> cn = view(wk + 2 * static_cast<py::ssize_t>(B) * n + B, B);
  interval_prep_rows<T>(l, u, c, r, cm, cn);
  const T* Wp = ro(W, "W");
  const T* bp = nb ? ro(b, "b") : nullptr;
  T* OL = mut(out_l, "out_l");
  T* OU = mut(out_u, "out_u");
  const T* cp = wk;                                  // centres [B, n]
  const T* rp = wk + static_cast<py::ssize_t>(B) * n;  // radii [B, n]
  if (B <= 2) {
    // A matrix-vector product is bound by reading the matrix, and BLAS has no product that gives
    // W c and |W| r together: one pass over W does both (|w| on the fly), half the traffic of two GEMVs.
    // Sums in a different order than BLAS's: the rounding bound of interval_finish_rows holds for any.
    for (int s = 0; s < B; ++s) {
      const T* cs = cp + static_cast<py::ssize_t>(s) * n;
      const T* rs = rp + static_cast<py::ssize_t>(s) * n;
parallel_for(m, grain_for(m), static_cast<py::ssize_t>(m) * n > kParallelMin, [&](std::int64_t i0_, std::int64_t i1_, int) {
for (int i = static_cast<int>(i0_); i < static_cast<int>(i1_); ++i) {
        const T* w = Wp + static_cast<py::ssize_t>(i) * n;
        T ac = 0, ar = 0;
#pragma omp simd reduction(+ : ac, ar)
        for (int j = 0; j < n; ++j) {
          ac += w[j] * cs[j];
          ar += std::fabs(w[j]) * rs[j];
        }
        OL[static_cast<py::ssize_t>(s) * m + i] = bp ? ac + bp[i] : ac;
        OU[static_cast<py::ssize_t>(s) * m + i] = ar;
      }
});
    }
  } else {
    // the two products W c (+b) and |W| r are independent: one per pool thread (each GEMM runs on the
    // single-threaded BLAS of its thread); pointers and checks are taken before the region. Each is
    // computed transposed, [m, B] = W [m, n] . c^T, into a reused per-thread scratch: OpenBLAS's sgemm
    // runs this orientation ~1.3-1.5x faster than c [B, n] . W^T on the dense layers of the bench cases
    // (M = 100, N = 32, K = 1568-2048, one thread; the same sums of n products in another order, which
    // the rounding bound of interval_finish_rows covers), and the [m, B] results are small to transpose.
    const T* AWp = ro(absW, "absW");
    const py::ssize_t mB = static_cast<py::ssize_t>(m) * B;
    thread_local std::vector<T> tr;
    if (static_cast<py::ssize_t>(tr.size()) < 2 * mB) tr.resize(2 * mB);
    T* tc = tr.data();
    T* trr = tc + mB;
    if (bp)
      for (int i = 0; i < m; ++i) std::fill(tc + static_cast<py::ssize_t>(i) * B, tc + static_cast<py::ssize_t>(i + 1) * B, bp[i]);
    const bool par = static_cast<py::ssize_t>(B) * m * n > kParallelMacs;
    parallel_for(2, 1, par, [&](std::int64_t k, std::int64_t, int) {
      if (k == 0) gemm(false, true, m, B, n, T(1), Wp, n, cp, n, bp ? T(1) : T(0), tc, B);
      else gemm(false, true, m, B, n, T(1), AWp, n, rp, n, T(0), trr, B);
    });
    for (int s = 0; s < B; ++s)
      for (int i = 0; i < m; ++i) {
        OL[static_cast<py::ssize_t>(s) * m + i] = tc[static_cast<py::ssize_t>(i) * B + s];
        OU[static_cast<py::ssize_t>(s) * m + i] = trr[static_cast<py::ssize_t>(i) * B + s];
      }
  }
  interval_finish_rows<T>(out_l, out_u, cm, cn, rowabs, rownorm, absb, gamma, tiny, out_g);
}

// ReLU on intervals: exact in floating point (a max), and a vectorizable loop. (The other
// activations are primitives of their own, python/fastcert/primitives/, with their own rounding.)
template <typename T>
void relu_interval(const View<T>& l, const View<T>& u, View<T>& ol, View<T>& ou) {
  const py::ssize_t n = l.size();
  expect_size(u.size(), n, "u");
  expect_size(ol.size(), n, "out_l");
  expect_size(ou.size(), n, "out_u");
  const T* L = ro(l, "l");
  const T* U = ro(u, "u");
  T* OL = mut(ol, "out_l");
  T* OU = mut(ou, "out_u");
  parallel_for(n, grain_for(n, 1024), n > kParallelMin, [=](std::int64_t i0, std::int64_t i1, int) {
#pragma omp simd
    for (py::ssize_t i = i0; i < i1; ++i) {
      OL[i] = L[i] > T(0) ? L[i] : T(0);
      OU[i] = U[i] > T(0) ? U[i] : T(0);
    }
  });
}

// out[B,m] = x[B,n] @ W[m,n]^T + b  (b may be empty).
template <typename T>
void dense_forward(const View<T>& x, const View<T>& W, const View<T>& b, View<T>& out) {
  if (W.ndim() != 2) throw std::invalid_argument("dense_forward: W must be 2-D [out, in]");
  const int m = static_cast<int>(W.shape(0)), n = static_cast<int>(W.shape(1));
  if (m == 0 || n == 0) throw std::invalid_argument("dense_forward: W has a zero dimension");
  if (x.size() % n != 0) throw std::invalid_argument("dense_forward: x size is not a multiple of in_features");
  const int B = static_cast<int>(x.size() / n);
  expect_size(out.size(), static_cast<py::ssize_t>(B) * m, "out");
  T* O = mut(out, "out");
  const py::ssize_t nb = b.size();
  if (nb != 0 && nb != m) throw std::invalid_argument("dense_forward: bias size must equal out_features");
  if (nb) {
    const T* bb = ro(b, "b");
    for (int i = 0; i < B; ++i)
      for (int j = 0; j < m; ++j) O[static_cast<py::ssize_t>(i) * m + j] = bb[j];
  }
  if (B == 0) return;
  gemm(false, true, B, m, n, T(1), ro(x, "x"), n, ro(W, "W"), n, nb ? T(1) : T(0), O, m);
}

// The interval step of a dense layer around the centre (issue #10 point 5c), for the linear methods:
// out_l/out_u bound W64 x + b64 over x in [l, u] (rows [B, n] -> [B, m]) computed as
//   v = W64 c + b64 in float64 (c the T centre of the box, out_v),  rad = gr + ev,
//   gr >= |W64| r (the T product |W| r inflated as in interval_finish_rows, out of the centre's radius r),
//   ev >= |v_computed - v| = gamma64_{n+2} (|W64| |c| + |b64|) + underflow <= gamma64 g + tiny64,
// so the float32 rounding of the centre product (gamma * |W| |c|, most of the width of a float32 interval
// step) is gone. out_g = g as in interval_dense (>= |W| max(|l|,|u|) + |b|); out_c = c; out_v = v;
// out_w = the per-neuron weight of this layer's backward rounding term (linear_bounds._backsub):
//   w >= gamma_back * gr + k64 * g  (k64 = 12 gamma64 of the longer side: the float64 sums of the
//   centre correction; see docs/architecture.md) + tiny_w (v's underflow, at least T's smallest normal).
// work: >= B*n + 2*B elements of T; work64: >= B*n doubles.
template <typename T>
void interval_dense_center(const View<T>& l, const View<T>& u, const View<double>& W64, const View<T>& absW,
                           const View<double>& b64, const View<T>& rowabs, const View<T>& rownorm, const View<T>& absb,
                           double gamma, double tiny, double gamma_back, View<T>& out_l, View<T>& out_u, View<T>& out_g,
                           View<T>& out_w, View<T>& out_c, View<double>& out_v, View<T>& work, View<double>& work64) {
  if (W64.ndim() != 2) throw std::invalid_argument("interval_dense_center: W must be 2-D [out, in]");
  const int m = static_cast<int>(W64.shape(0)), n = static_cast<int>(W64.shape(1));
  if (m == 0 || n == 0) throw std::invalid_argument("interval_dense_center: W has a zero dimension");
  expect_size(absW.size(), W64.size(), "absW");
  if (l.size() % n != 0) throw std::invalid_argument("interval_dense_center: l size is not a multiple of in_features");
  const int B = static_cast<int>(l.size() / n);
  const py::ssize_t Bm = static_cast<py::ssize_t>(B) * m, Bn = static_cast<py::ssize_t>(B) * n;
  expect_size(u.size(), l.size(), "u");
  for (auto* a : {&out_l, &out_u, &out_g, &out_w}) expect_size(a->size(), Bm, "out_l/out_u/out_g/out_w");
  expect_size(out_v.size(), Bm, "out_v");
  expect_size(out_c.size(), Bn, "out_c");
  expect_size(rowabs.size(), m, "rowabs");
  expect_size(rownorm.size(), m, "rownorm");
  const py::ssize_t nb = b64.size();
  if (nb != 0 && nb != m) throw std::invalid_argument("interval_dense_center: bias size must equal out_features");
  if (absb.size() != nb) throw std::invalid_argument("interval_dense_center: absb must match the bias");
  if (work.size() < Bn + 2 * B) throw std::invalid_argument("interval_dense_center: work is too small");
  if (work64.size() < Bn) throw std::invalid_argument("interval_dense_center: work64 is too small");
  const T tn = static_cast<T>(tiny);
  if (!(tn > 0)) throw std::invalid_argument("interval_dense_center: tiny must be > 0");
  if (B == 0) return;
  T* wk = mut(work, "work");
  auto view = [](T* p, py::ssize_t k) { return View<T>::of(p, {k}); };
  View<T> r = view(wk, Bn), cm = view(wk + Bn, B), cn = view(wk + Bn + B, B);
  interval_prep_rows<T>(l, u, out_c, r, cm, cn);
  const T* C = ro(out_c, "out_c");
  double* c64 = mut(work64, "work64");
  double* V = mut(out_v, "out_v");
  T* MR = mut(out_u, "out_u");  // |W| r, overwritten by the upper bounds below
  const double* Wp = ro(W64, "W64");
  const double* bp = nb ? ro(b64, "b64") : nullptr;
  const T* AWp = ro(absW, "absW");
  const T* rp = wk;
  for (py::ssize_t k = 0; k < Bn; ++k) c64[k] = static_cast<double>(C[k]);
  if (bp)
    for (int i = 0; i < B; ++i) std::copy(bp, bp + m, V + static_cast<py::ssize_t>(i) * m);
  const bool par = Bm * n > kParallelMacs;
  parallel_for(2, 1, par, [&](std::int64_t k, std::int64_t, int) {
    if (k == 0) gemm(false, true, B, m, n, 1.0, c64, n, Wp, n, bp ? 1.0 : 0.0, V, m);
    else gemm(false, true, B, m, n, T(1), rp, n, AWp, n, T(0), MR, m);
  });
  const T* CM = ro(cm, "cmax");
  const T* C2 = ro(cn, "c2");
  const T* RA = ro(rowabs, "rowabs");
  const T* RN = ro(rownorm, "rownorm");
  const T* AB = nb ? ro(absb, "absb") : nullptr;
  T* OL = mut(out_l, "out_l");
  T* G = mut(out_g, "out_g");
  T* Wt = mut(out_w, "out_w");
  const T g = static_cast<T>(gamma);
  const T g2 = up(T(1) + up(2 * g)), g1 = up(T(1) + g);
  const double g64 = 1.01 * gamma_n64(n + 2), u64 = unit_roundoff<double>();
  // the product's absolute (underflow) error in float64, raised to the smallest normal double
  const double tiny64 = std::max(2.0 * (n + 4) * eta<double>(), std::numeric_limits<double>::min());
  const T gb = up(static_cast<T>(gamma_back)), k64 = up(static_cast<T>(12 * gamma_n64(std::max(n, m) + 2)));
  // v's absolute (underflow) error multiplies |Lam| in the backward step: tiny64 per neuron, raised to T's
  // smallest normal number (also keeps w free of subnormals, which slow the hot loops)
  const T tiny_w = std::max(up_from_double<T>(tiny64), std::numeric_limits<T>::min());
  parallel_for(B, grain_for(B), Bm > kParallelMin, [&](std::int64_t r0, std::int64_t r1, int) {
    for (py::ssize_t row = r0; row < r1; ++row) {
      const T cmx = CM[row], c2 = C2[row];
      for (py::ssize_t j = 0; j < m; ++j) {
        const py::ssize_t k = row * m + j;
        // mr falls short of |W64| r by at most a relative gamma and an absolute tiny (interval_finish_rows)
        const T gr = up(up(MR[k] * g2) + 2 * tn);
        T gi = up(gr + std::min(up(cmx * RA[j]), up(c2 * RN[j])));
        if (AB) gi = up(gi + AB[j]);
        gi = up(gi * g1);
        G[k] = gi;
        Wt[k] = up(up(up(gb * gr) + up(k64 * gi)) + tiny_w);
        const double v = V[k];
        const double rad = static_cast<double>(gr) + (g64 * static_cast<double>(gi) + tiny64);
        const double margin = 4 * u64 * (std::fabs(v) + rad);  // the double operations' own rounding
        OL[k] = down_from_double<T>(v - rad - margin);
        MR[k] = up_from_double<T>(v + rad + margin);
      }
    }
  });
}

#define FASTCERT_INST(T)                                                                                    \
  template void interval_prep<T>(const View<T>&, const View<T>&, View<T>&, View<T>&, View<T>&);                  \
  template void interval_finish<T>(const View<T>&, const View<T>&, View<T>&, const View<T>&, double, double,    \
                                   View<T>&, View<T>&);                                                      \
  template void relu_interval<T>(const View<T>&, const View<T>&, View<T>&, View<T>&);                          \
  template void dense_forward<T>(const View<T>&, const View<T>&, const View<T>&, View<T>&);                       \
  template void interval_prep_rows<T>(const View<T>&, const View<T>&, View<T>&, View<T>&, View<T>&, View<T>&);    \
  template void interval_finish_rows<T>(View<T>&, View<T>&, const View<T>&, const View<T>&, const View<T>&,        \
                                        const View<T>&, const View<T>&, double, double, View<T>&);             \
  template void interval_dense_center<T>(const View<T>&, const View<T>&, const View<double>&, const View<T>&,         \
                                         const View<double>&, const View<T>&, const View<T>&, const View<T>&, double,   \
                                         double, double, View<T>&, View<T>&, View<T>&, View<T>&, View<T>&, View<double>&, \
                                         View<T>&, View<double>&);                                                      \
  template void interval_dense<T>(const View<T>&, const View<T>&, const View<T>&, const View<T>&, const View<T>&,  \
                                  const View<T>&, const View<T>&, const View<T>&, double, double, View<T>&, View<T>&, \
                                  View<T>&, View<T>&);
FASTCERT_INST(float)
FASTCERT_INST(double)
#undef FASTCERT_INST
}  // namespace fastcert

namespace fastcert {
// out[R,n] = lam[R,m] @ W[m,n]   (the transpose of a dense layer, applied to coefficient rows)
template <typename T>
void dense_backward(const View<T>& lam, const View<T>& W, View<T>& out) {
  if (W.ndim() != 2) throw std::invalid_argument("dense_backward: W must be 2-D [out, in]");
  const int m = static_cast<int>(W.shape(0)), n = static_cast<int>(W.shape(1));
  if (m == 0 || n == 0) throw std::invalid_argument("dense_backward: W has a zero dimension");
  if (lam.size() % m != 0) throw std::invalid_argument("dense_backward: lam size is not a multiple of out_features");
  const int R = static_cast<int>(lam.size() / m);
  expect_size(out.size(), static_cast<py::ssize_t>(R) * n, "out");
  if (R == 0) return;
  gemm(false, false, R, n, m, T(1), ro(lam, "lam"), m, ro(W, "W"), n, T(0), mut(out, "out"), n);
}
template void dense_backward<float>(const View<float>&, const View<float>&, View<float>&);
template void dense_backward<double>(const View<double>&, const View<double>&, View<double>&);
}  // namespace fastcert
