// The CROWN / Fast-Lin / KW backward pass, lower-bound form. An upper bound of c^T f is minus the
// lower bound of (-c)^T f, so callers stack C and -C and only this one direction exists.
//
// State per (sample b, spec row s): Lam[b,s,:] (coefficients on the current layer's values),
// bias[b,s] (constant terms collected so far) and mag[b,s] (a bound on the floating-point error
// accumulated by the pass so far; each kernel adds its own, see docs/architecture.md "Floating point").
#include "fastcert/common.h"

#include <vector>
#include "fastcert/pool.h"

#include "fastcert/kernels.h"
#include "fastcert/relax_row.h"

namespace fastcert {

namespace {
// sum_j a[j] * v[j] in float64 (a product of a float32 entry and a double is rounded once in double;
// of two float32 numbers it is exact): off by at most gamma64_n sum |a_j v_j| (any order). 32 fixed
// lanes, combined in a fixed tree: the same bits in every clone (FASTCERT_SIMD_CLONES, common.h) and on
// every machine; the clones run the lanes 2, 4 or 8 wide (32 lanes: several independent vector sums, so
// the additions' latency does not bound the loop).
template <typename T, typename V>
inline __attribute__((always_inline)) double dot64_body(const T* __restrict a, const V* __restrict v, py::ssize_t n) {
  constexpr int kLanes = 32;
  double acc[kLanes] = {};
  py::ssize_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
#pragma omp simd
    for (int k = 0; k < kLanes; ++k) acc[k] += static_cast<double>(a[j + k]) * static_cast<double>(v[j + k]);
  for (int k = 0; j < n; ++j, ++k) acc[k] += static_cast<double>(a[j]) * static_cast<double>(v[j]);
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int k = 0; k < w; ++k) acc[k] += acc[k + w];
  return acc[0];
}
FASTCERT_SIMD_CLONES double dot64(const float* a, const float* v, py::ssize_t n) { return dot64_body(a, v, n); }
FASTCERT_SIMD_CLONES double dot64(const float* a, const double* v, py::ssize_t n) { return dot64_body(a, v, n); }
FASTCERT_SIMD_CLONES double dot64(const double* a, const double* v, py::ssize_t n) { return dot64_body(a, v, n); }
// bias (and bias_hi) += t (a float64 correction), rounded once to T; mag += 4u |new bias| for that
// rounding and the double addition (docs/architecture.md, "centre form").
template <typename T>
inline void centre_fix(double t, T* bias, T* bias_hi, T* mag) {
  const T uu = unit_roundoff<T>();
  const T nb = static_cast<T>(static_cast<double>(*bias) + t);
  *bias = nb;
  T m = 4 * uu * std::fabs(nb);
  if (bias_hi) {
    const T nh = static_cast<T>(static_cast<double>(*bias_hi) + t);
    *bias_hi = nh;
    m += 4 * uu * std::fabs(nh);
  }
  *mag += m;
}
}  // namespace

// Through an activation with relaxations  lo_s*z + lo_b <= act(z) <= up_s*z + up_b  on [l,u]:
//   out[b,s,j] = max(Lam,0)*lo_s[b,j] + min(Lam,0)*up_s[b,j]
//   bias[b,s] += sum_j max(Lam,0)*lo_b[b,j] + min(Lam,0)*up_b[b,j]
//   mag[b,s]  += gamma_prod * sum_j |Lam| * zmag[b,j]  (zmag >= max|z| on the box: one rounded product each)
//              + gamma_sum * sum_j |Lam| * (|lo_b| + |up_b|)  (the intercept sum over n terms)
//              + 2u |bias[b,s]|                          (the accumulation into bias)
// With a non-empty bias_hi the caller guarantees lo_s == up_s (a symmetric relaxation such as
// Fast-Lin's): then Lam's update is the same for the upper direction, and
//   bias_hi[b,s] += sum_j max(Lam,0)*up_b[b,j] + min(Lam,0)*lo_b[b,j]
// collects the constants of the upper bound of Lam . h (one pass serves both directions).
// lo_b may be empty (ReLU: zero lower intercept). Lam: [B,S,n] or [1,S,n] (rows shared by the batch);
// out: [B,S,n]; zmag: [B,n]; lo_s, up_s, lo_b, up_b: [B,n] or, each on its own, [B,S,n] (one relaxation
// per row, as alpha-CROWN's slopes per start node and row; any valid lines keep the bound sound).
template <typename T>
void backward_act(const View<T>& lam, const View<T>& lo_s, const View<T>& up_s, const View<T>& lo_b, const View<T>& up_b,
                  const View<T>& zmag, View<T>& out, View<T>& bias, View<T>& mag, double gamma_prod, double gamma_sum,
                  View<T>& bias_hi) {
  if (lam.ndim() != 3) throw std::invalid_argument("backward_act: Lam must be [B,S,n] or [1,S,n]");
  const py::ssize_t S = lam.shape(1), n = lam.shape(2);
  if (n == 0 || zmag.size() % n != 0) throw std::invalid_argument("backward_act: zmag must be [B,n]");
  const py::ssize_t B = zmag.size() / n;
  if (lam.shape(0) != B && lam.shape(0) != 1)
    throw std::invalid_argument("backward_act: Lam batch must equal the slopes' batch or be 1 (shared rows)");
  const py::ssize_t lam_bstride = lam.shape(0) == 1 ? 0 : S * n;
  // per array: does it hold one relaxation per row ([B,S,n]) or per neuron ([B,n])?
  auto per_row = [&](py::ssize_t size, const char* what) {
    if (size == B * n) return false;
    if (size == B * S * n && S > 1) return true;
    expect_size(size, B * n, what);
    return false;
  };
  const bool r_ls = per_row(lo_s.size(), "lo_slope"), r_us = per_row(up_s.size(), "up_slope");
  const bool r_ub = per_row(up_b.size(), "up_bias");
  const bool has_lb = lo_b.size() != 0;
  const bool r_lb = has_lb && per_row(lo_b.size(), "lo_bias");
  expect_size(out.size(), B * S * n, "out");
  expect_size(bias.size(), B * S, "bias");
  expect_size(mag.size(), B * S, "mag");
  const bool two = bias_hi.size() != 0;  // symmetric relaxation: also the upper-direction intercepts
  if (two) expect_size(bias_hi.size(), B * S, "bias_hi");
  T* BH = two ? mut(bias_hi, "bias_hi") : nullptr;
  const T* Lm = ro(lam, "Lam");
  const T* LS = ro(lo_s, "lo_slope");
  const T* US = ro(up_s, "up_slope");
  const T* LB = has_lb ? ro(lo_b, "lo_bias") : nullptr;
  const T* UB = ro(up_b, "up_bias");
  const T* ZM = ro(zmag, "zmag");
  T* O = mut(out, "out");
  T* BI = mut(bias, "bias");
  T* MG = mut(mag, "mag");
  const T gp = static_cast<T>(gamma_prod), gs = static_cast<T>(gamma_sum), uu = unit_roundoff<T>();
parallel_for(B * S, grain_for(B * S), B * S * n > kParallelMin, [&](std::int64_t q0, std::int64_t q1, int) {
  for (py::ssize_t q = q0; q < q1; ++q) {
    const py::ssize_t b = q / S, s = q % S;
      const T* lr = Lm + b * lam_bstride + s * n;
      T* orow = O + (b * S + s) * n;
      const py::ssize_t row = (b * S + s) * n, neuron = b * n;
      const T* ls = LS + (r_ls ? row : neuron);
      const T* us = US + (r_us ? row : neuron);
      const T* ub = UB + (r_ub ? row : neuron);
      const T* zm = ZM + neuron;
      const T* lb = has_lb ? LB + (r_lb ? row : neuron) : nullptr;
      T acc_b = 0, acc_m = 0, acc_i = 0, acc_h = 0;
      if (!lb) {  // zero lower intercepts (ReLU): a branch-free SIMD loop
#pragma omp simd reduction(+ : acc_b, acc_m, acc_i, acc_h)
        for (py::ssize_t j = 0; j < n; ++j) {
          const T v = lr[j], u_s = us[j], l_s = ls[j], b_u = ub[j];
          const T vp = v >= 0 ? v : T(0), vn = v < 0 ? v : T(0);
          orow[j] = v * (v >= 0 ? l_s : u_s);
          acc_b += vn * b_u;
          const T abu = b_u < 0 ? -b_u : b_u;
          acc_i += (two ? vp - vn : -vn) * abu;
          acc_h += vp * b_u;
          acc_m += (vp - vn) * zm[j];
        }
        if (!two) acc_h = 0;
      } else
      for (py::ssize_t j = 0; j < n; ++j) {
        const T v = lr[j];
        if (v >= 0) {
          orow[j] = v * ls[j];
          if (lb) {
            acc_b += v * lb[j];
            acc_i += v * std::fabs(lb[j]);
          }
          if (two) {
            acc_h += v * ub[j];
            acc_i += v * std::fabs(ub[j]);
          }
        } else {
          orow[j] = v * us[j];
          acc_b += v * ub[j];
          acc_i -= v * std::fabs(ub[j]);
          if (two && lb) {
            acc_h += v * lb[j];
            acc_i -= v * std::fabs(lb[j]);
          }
        }
        acc_m += std::fabs(v) * zm[j];
      }
      const T nb = BI[b * S + s] + acc_b;
      BI[b * S + s] = nb;
      T extra = 0;
      if (two) {
        const T nh = BH[b * S + s] + acc_h;
        BH[b * S + s] = nh;
        extra = 2 * uu * std::fabs(nh);
      }
      MG[b * S + s] += gp * acc_m + gs * acc_i + 2 * uu * std::fabs(nb) + extra;
  }
});
}

// Through an affine layer's bias and magnitude: bias[b,s] += Lam[b,s,:] . bvec ;
// mag[b,s] += gamma_g * |Lam[b,s,:]| . g[b,:]   (g >= |W| max|h_in| + |b|: the product Lam W and its sums)
//           + gamma_b * |Lam[b,s,:]| . |bvec|  (the bias dot product over m terms) + 2u |bias[b,s]|.
template <typename T>
void bias_mag(const View<T>& lam, const View<T>& bvec, const View<T>& g, View<T>& bias, View<T>& mag, double gamma_g,
              double gamma_b, View<T>& bias_hi) {
  if (lam.ndim() != 3) throw std::invalid_argument("bias_mag: Lam must be [B,S,m]");
  const py::ssize_t B = lam.shape(0), S = lam.shape(1), m = lam.shape(2);
  const bool has_b = bvec.size() != 0;
  if (has_b) expect_size(bvec.size(), m, "bias vector");
  expect_size(g.size(), B * m, "g");
  expect_size(bias.size(), B * S, "bias");
  expect_size(mag.size(), B * S, "mag");
  const T* Lm = ro(lam, "Lam");
  const T* bv = has_b ? ro(bvec, "bias vector") : nullptr;
  const T* G = ro(g, "g");
  T* BI = mut(bias, "bias");
  T* MG = mut(mag, "mag");
  const bool two = bias_hi.size() != 0;  // the same constant also goes to the upper direction
  if (two) expect_size(bias_hi.size(), B * S, "bias_hi");
  T* BH = two ? mut(bias_hi, "bias_hi") : nullptr;
  const T gg = static_cast<T>(gamma_g), gb = static_cast<T>(gamma_b), uu = unit_roundoff<T>();
parallel_for(B * S, grain_for(B * S), B * S * m > kParallelMin, [&](std::int64_t q0, std::int64_t q1, int) {
  for (py::ssize_t q = q0; q < q1; ++q) {
    const py::ssize_t b = q / S, s = q % S;
      const T* lr = Lm + (b * S + s) * m;
      const T* gr = G + b * m;
      T acc_b = 0, acc_m = 0, acc_bm = 0;
#pragma omp simd reduction(+ : acc_b, acc_m, acc_bm)
      for (py::ssize_t j = 0; j < m; ++j) {
        const T av = std::fabs(lr[j]);
        if (has_b) {
          acc_b += lr[j] * bv[j];
          acc_bm += av * std::fabs(bv[j]);
        }
        acc_m += av * gr[j];
      }
      const T nb = BI[b * S + s] + acc_b;
      BI[b * S + s] = nb;
      T extra = 0;
      if (two) {
        const T nh = BH[b * S + s] + acc_b;
        BH[b * S + s] = nh;
        extra = 2 * uu * std::fabs(nh);
      }
      MG[b * S + s] += gg * acc_m + gb * acc_bm + 2 * uu * std::fabs(nb) + extra;
  }
});
}

namespace {
// The box sums of one row of concretize: box = sum_j lr_j * (lr_j >= 0 ? lo_j : hi_j) and (two) boxh, the
// same with lo and hi swapped, both in float64; boxmag = sum_j |lr_j| max(|lo_j|, |hi_j|) in T. In 8 fixed
// lanes (lane j sums the entries j mod 8 in index order, then a fixed tree): the same bits in every clone
// and on every machine, and a loop that vectorizes at any width (one accumulator each, as before, ran
// scalar: ~0.75 ns an entry, 2.8x the lanes' time with AVX-512 in a standalone measurement).
// (boxh, the upper bound's sum, is box_row on (lr, hi, lo): computing it in the same loop as a third set of
// lanes made the loop ~15x slower with GCC 12, stack-spilled accumulators.)
template <typename T>
inline __attribute__((always_inline)) void box_row(const T* __restrict lr, const T* __restrict lo,
                                                   const T* __restrict hi, py::ssize_t n, double& box, T& boxmag) {
  constexpr int kL = 8;
  double bx[kL] = {0, 0, 0, 0, 0, 0, 0, 0};
  T bm[kL] = {0, 0, 0, 0, 0, 0, 0, 0};
  const py::ssize_t nv = n - n % kL;
  for (py::ssize_t k0 = 0; k0 < nv; k0 += kL) {
#pragma omp simd
    for (int j = 0; j < kL; ++j) {
      const T v = lr[k0 + j], a = lo[k0 + j], c = hi[k0 + j];
      bx[j] += static_cast<double>(v) * static_cast<double>(v >= 0 ? a : c);
      const T al = std::fabs(a), ah = std::fabs(c), av = std::fabs(v);
      bm[j] += av * (al > ah ? al : ah);
    }
  }
  for (py::ssize_t k = nv; k < n; ++k) {
    const int j = static_cast<int>(k - nv);
    const T v = lr[k], a = lo[k], c = hi[k];
    bx[j] += static_cast<double>(v) * static_cast<double>(v >= 0 ? a : c);
    const T al = std::fabs(a), ah = std::fabs(c), av = std::fabs(v);
    bm[j] += av * (al > ah ? al : ah);
  }
  box = ((bx[0] + bx[4]) + (bx[2] + bx[6])) + ((bx[1] + bx[5]) + (bx[3] + bx[7]));
  boxmag = ((bm[0] + bm[4]) + (bm[2] + bm[6])) + ((bm[1] + bm[5]) + (bm[3] + bm[7]));
}
template <typename T>
inline __attribute__((always_inline)) void box_row_both(const T* lr, const T* lo, const T* hi, py::ssize_t n,
                                                        bool two, double& box, T& boxmag, double& boxh) {
  box_row(lr, lo, hi, n, box, boxmag);
  if (two) {
    T unused;
    box_row(lr, hi, lo, n, boxh, unused);
  }
}
FASTCERT_SIMD_CLONES void box_row_f(const float* lr, const float* lo, const float* hi, py::ssize_t n, bool two,
                                    double& box, float& boxmag, double& boxh) {
  box_row_both(lr, lo, hi, n, two, box, boxmag, boxh);
}
FASTCERT_SIMD_CLONES void box_row_f(const double* lr, const double* lo, const double* hi, py::ssize_t n, bool two,
                                    double& box, double& boxmag, double& boxh) {
  box_row_both(lr, lo, hi, n, two, box, boxmag, boxh);
}
}  // namespace

// Concretize min over x in (ball(x0, eps, p) ∩ box[l0,u0]) of Lam[b,s,:] . x, plus bias, minus the
// accumulated rounding slack mag (already weighted by the kernels' gammas) and this step's own
// (gamma = the factor for sums of n terms), into out[b,s].
// p: 0 = box only (L-inf: the box already is the ball ∩ domain), 1, 2 = L1 / L2 ball
// (the box term is then also computed and the larger, still sound, lower bound kept).
template <typename T>
void concretize(const View<T>& lam, const View<T>& x0, const View<T>& l0, const View<T>& u0, const View<T>& eps, int p,
                const View<T>& bias, const View<T>& mag, double gamma, View<T>& out, const View<T>& bias_hi,
                View<T>& out_hi) {
  if (lam.ndim() != 3) throw std::invalid_argument("concretize: Lam must be [B,S,n]");
  const py::ssize_t B = lam.shape(0), S = lam.shape(1), n = lam.shape(2);
  if (p != 0 && p != 1 && p != 2) throw std::invalid_argument("concretize: p must be 0 (box), 1 or 2");
  expect_size(x0.size(), B * n, "x0");
  expect_size(l0.size(), B * n, "l0");
  expect_size(u0.size(), B * n, "u0");
  expect_size(eps.size(), B, "eps");
  expect_size(bias.size(), B * S, "bias");
  expect_size(mag.size(), B * S, "mag");
  expect_size(out.size(), B * S, "out");
  const T* Lm = ro(lam, "Lam");
  const T* X = ro(x0, "x0");
  const T* Lo = ro(l0, "l0");
  const T* Up = ro(u0, "u0");
  const T* E = ro(eps, "eps");
  const T* BI = ro(bias, "bias");
  const T* MG = ro(mag, "mag");
  T* O = mut(out, "out");
  const bool two = out_hi.size() != 0;  // also the upper bound (max) with the constants bias_hi
  if (two) {
    expect_size(out_hi.size(), B * S, "out_hi");
    expect_size(bias_hi.size(), B * S, "bias_hi");
  }
  T* OH = two ? mut(out_hi, "out_hi") : nullptr;
  const T* BH = two ? ro(bias_hi, "bias_hi") : nullptr;
  const T g = static_cast<T>(gamma);
  const T uu = unit_roundoff<T>();
  const T tn = underflow_slack<T>(n);  // each sum of n products below may also lose this much to underflow
  const double g64 = gamma_n64(n), u64 = unit_roundoff<double>();
parallel_for(B * S, grain_for(B * S), B * S * n > kParallelMin, [&](std::int64_t q0, std::int64_t q1, int) {
  for (py::ssize_t q = q0; q < q1; ++q) {
    const py::ssize_t b = q / S, s = q % S;
      const T* lr = Lm + (b * S + s) * n;
      const T* xr = X + b * n;
      const T* lo = Lo + b * n;
      const T* hi = Up + b * n;
      T boxmag = 0, dot = 0, dotmag = 0, dn = 0;
      // The box sums in float64 (issue #10 point 5c): a product of two T numbers is exact in double
      // (float32: 24 + 24 bits; float64 entries are rounded once, covered by gamma64 below), so the sum
      // is off by at most gamma64_n * boxmag instead of gamma_n * boxmag. In lanes (box_row): the
      // summation order is not the index order, which the rounding bound (any order) covers.
      double box = 0, boxh = 0;
      box_row_f(lr, lo, hi, n, two, box, boxmag, boxh);
      if (p) {
#pragma omp simd reduction(+ : dot, dotmag)
        for (py::ssize_t j = 0; j < n; ++j) {
          dot += lr[j] * xr[j];
          dotmag += std::fabs(lr[j]) * std::fabs(xr[j]);
        }
        if (p == 2) {
          dn = l2_norm_upper(lr, n, g);  // dual of L2 is L2 (scaled: squares would underflow / overflow)
        } else {
          for (py::ssize_t j = 0; j < n; ++j) dn = std::max(dn, std::fabs(lr[j]));  // dual of L1 is Linf (exact)
        }
      }
      // mag was summed in floating point too: 1% covers its own relative rounding (n*u << 1%)
      const T m0 = up(MG[b * S + s] * T(1.01));
      // box's error: gamma64_n * boxmag (boxmag, summed in T, is >= (1 - g) times the exact one) plus the
      // absolute (underflow) term of double products, far below eta<T>; the two double operations below
      // and the rounding to T are covered by the 8 u64 margin and the outward conversion
      const double bs64 = g64 * (1 + 2 * static_cast<double>(g)) * static_cast<double>(boxmag) + static_cast<double>(tn);
      T best = down_from_double<T>(box - bs64 - 8 * u64 * (std::fabs(box) + bs64));
      T besth = up_from_double<T>(boxh + bs64 + 8 * u64 * (std::fabs(boxh) + bs64));
      if (p) {
        const T pen = up(E[b] * dn);
        const T dslack = up(up(g * up(dotmag + pen)) + tn);
        best = std::max(best, down(dot - pen - dslack));
        besth = std::min(besth, up(dot + pen + dslack));
      }
      // final additions with the collected constants and the slack, rounded outward with a margin
      const T bsum = BI[b * S + s];
      T r = best + bsum - m0;
      r -= 4 * uu * (std::fabs(best) + std::fabs(bsum) + m0);
      O[b * S + s] = down(r);
      if (two) {
        const T hsum = BH[b * S + s];
        T rh = besth + hsum + m0;
        rh += 4 * uu * (std::fabs(besth) + std::fabs(hsum) + m0);
        OH[b * S + s] = up(rh);
      }
  }
});
}

// Fused backward step through an activation and the dense layer before it (the dense analogue of
// act_conv_backward): per row, the relaxation and both layers' bias / slack terms (exactly as
// backward_act then bias_mag), written to a block buffer that stays in cache, then one GEMM per block
// of block_rows rows: out[rows] = relaxed[rows, n] @ W[n, n_in]. Saves three passes over the rows in
// memory. lam may be [1,S,n] (rows shared by the batch). work: >= block_rows*n per OpenMP thread.
template <typename T>
void act_dense_backward(const View<T>& lam, const View<T>& lo_s, const View<T>& up_s, const View<T>& up_b,
                        const View<T>& zmag, double gamma_prod, double gamma_sum, const View<T>& W, const View<T>& bvec,
                        const View<T>& g, double gamma_g, double gamma_b, View<T>& out, View<T>& bias, View<T>& mag,
                        View<T>& bias_hi, int block_rows, View<T>& work, const View<double>& cv, const View<T>& cin) {
  if (lam.ndim() != 3) throw std::invalid_argument("act_dense_backward: Lam must be [B,S,n] or [1,S,n]");
  if (W.ndim() != 2) throw std::invalid_argument("act_dense_backward: W must be [n, n_in]");
  const py::ssize_t S = lam.shape(1), n = lam.shape(2), n_in = W.shape(1);
  if (W.shape(0) != n) throw std::invalid_argument("act_dense_backward: W rows must equal the activation width");
  if (n == 0 || lo_s.size() % n != 0) throw std::invalid_argument("act_dense_backward: slopes must be [B,n]");
  const py::ssize_t B = lo_s.size() / n;
  if (lam.shape(0) != B && lam.shape(0) != 1) throw std::invalid_argument("act_dense_backward: Lam batch mismatch");
  const py::ssize_t lam_bstride = lam.shape(0) == 1 ? 0 : S * n;
  expect_size(up_s.size(), B * n, "up_slope");
  expect_size(up_b.size(), B * n, "up_bias");
  expect_size(zmag.size(), B * n, "zmag");
  expect_size(g.size(), B * n, "g");
  const bool has_b = bvec.size() != 0;
  if (has_b) expect_size(bvec.size(), n, "bias vector");
  expect_size(out.size(), B * S * n_in, "out");
  expect_size(bias.size(), B * S, "bias");
  expect_size(mag.size(), B * S, "mag");
  const bool two = bias_hi.size() != 0;
  if (two) expect_size(bias_hi.size(), B * S, "bias_hi");
  if (block_rows < 1) throw std::invalid_argument("act_dense_backward: block_rows must be >= 1");
  const py::ssize_t R = block_rows;
  if (work.size() < R * n * pool_threads()) throw std::invalid_argument("act_dense_backward: workspace too small");
  const T* Lm = ro(lam, "Lam");
  const T* LS = ro(lo_s, "lo_slope");
  const T* US = ro(up_s, "up_slope");
  const T* UB = ro(up_b, "up_bias");
  const T* ZM = ro(zmag, "zmag");
  const T* Wp = ro(W, "W");
  const T* BV = has_b ? ro(bvec, "bias vector") : nullptr;
  const T* G = ro(g, "g");
  T* O = mut(out, "out");
  T* BI = mut(bias, "bias");
  T* MG = mut(mag, "mag");
  T* BH = two ? mut(bias_hi, "bias_hi") : nullptr;
  T* ws = mut(work, "work");
  const T gp = static_cast<T>(gamma_prod), gs = static_cast<T>(gamma_sum);
  const T gg = static_cast<T>(gamma_g), gb = static_cast<T>(gamma_b);
  // centre mode (see affine_center): the dense layer's bias and centre correction in float64
  const bool centre = cv.size() != 0;
  if (centre) {
    if (has_b) throw std::invalid_argument("act_dense_backward: centre mode takes the bias inside v, not bvec");
    expect_size(cv.size(), B * n, "v");
    expect_size(cin.size(), B * n_in, "cin");
  }
  const double* CV = centre ? ro(cv, "v") : nullptr;
  const T* CI = centre ? ro(cin, "cin") : nullptr;
  const py::ssize_t rows = B * S, nblocks = (rows + R - 1) / R;
  // blocks handed out one at a time (dynamic balance); each thread has its own block buffer
  parallel_for(nblocks, 1, nblocks > 1 && rows * n * n_in > kParallelMacs, [&](std::int64_t ib0, std::int64_t, int tid) {
    T* blk = ws + R * n * tid;
    {
      const py::ssize_t ib = ib0;
      const py::ssize_t q0 = ib * R, nr = std::min(R, rows - q0);
      std::vector<double> dv(centre ? nr : 0);  // relaxed row . v of the block's rows
      for (py::ssize_t r = 0; r < nr; ++r) {
        const py::ssize_t q = q0 + r, b = q / S, s = q % S;
        RowSums<T> a;
        relax_row(Lm + b * lam_bstride + s * n, LS + b * n, US + b * n, UB + b * n, ZM + b * n, G + b * n, BV, n, n,
                  0, two, blk + r * n, a);
        apply_row_sums(a, gp, gs, gg, gb, BI + q, two ? BH + q : nullptr, MG + q);
        if (centre) dv[r] = dot64(blk + r * n, CV + b * n, n);
      }
      gemm(false, false, static_cast<int>(nr), static_cast<int>(n_in), static_cast<int>(n), T(1), blk,
           static_cast<int>(n), Wp, static_cast<int>(n_in), T(0), O + q0 * n_in, static_cast<int>(n_in));
      if (centre)
        for (py::ssize_t r = 0; r < nr; ++r) {
          const py::ssize_t q = q0 + r, b = q / S;
          centre_fix(dv[r] - dot64(O + q * n_in, CI + b * n_in, n_in), BI + q, two ? BH + q : nullptr, MG + q);
        }
    }
  });
}

// The centre form of a backward step through a dense layer y = W64 x + b64 (x in the box of centre c,
// radius r; issue #10 point 5c, docs/architecture.md): with Lam' = fl(Lam W) and e = Lam W64 - Lam',
//   Lam . y = Lam' . x + [Lam . v - Lam' . c] + e . (x - c),   v = W64 c + b64 (float64, precomputed),
// so the bracket goes to bias (float64 sums, here) and only |e| . r, not |e| . max|x|, to mag: the
// caller's weight w >= gamma_back |W| r + k64 g covers it and the float64 sums' errors (mag += |Lam| . w).
// lam: [B,S,m] rows on the layer's output; lam_out: [B,S,n] = fl(lam W) (already computed);
// v: [B,m] float64; cin: [B,n] the centres; w: [B,m]; bias, mag (and bias_hi): [B,S].
template <typename T>
void affine_center(const View<T>& lam, const View<T>& lam_out, const View<double>& cv, const View<T>& cin,
                   const View<T>& w, View<T>& bias, View<T>& mag, View<T>& bias_hi) {
  if (lam.ndim() != 3 || lam_out.ndim() != 3) throw std::invalid_argument("affine_center: Lam must be [B,S,m]");
  const py::ssize_t B = lam.shape(0), S = lam.shape(1), m = lam.shape(2), n = lam_out.shape(2);
  if (lam_out.shape(0) != B || lam_out.shape(1) != S) throw std::invalid_argument("affine_center: Lam' shape");
  expect_size(cv.size(), B * m, "v");
  expect_size(cin.size(), B * n, "cin");
  expect_size(w.size(), B * m, "w");
  expect_size(bias.size(), B * S, "bias");
  expect_size(mag.size(), B * S, "mag");
  const bool two = bias_hi.size() != 0;
  if (two) expect_size(bias_hi.size(), B * S, "bias_hi");
  const T* Lm = ro(lam, "Lam");
  const T* LO = ro(lam_out, "Lam'");
  const double* CV = ro(cv, "v");
  const T* CI = ro(cin, "cin");
  const T* Wt = ro(w, "w");
  T* BI = mut(bias, "bias");
  T* MG = mut(mag, "mag");
  T* BH = two ? mut(bias_hi, "bias_hi") : nullptr;
  parallel_for(B * S, grain_for(B * S), B * S * (m + n) > kParallelMin, [&](std::int64_t q0, std::int64_t q1, int) {
    for (py::ssize_t q = q0; q < q1; ++q) {
      const py::ssize_t b = q / S;
      const T* lr = Lm + q * m;
      const T* wr = Wt + b * m;
      T am = 0;
#pragma omp simd reduction(+ : am)
      for (py::ssize_t j = 0; j < m; ++j) am += std::fabs(lr[j]) * wr[j];
      MG[q] += am;
      centre_fix(dot64(lr, CV + b * m, m) - dot64(LO + q * n, CI + b * n, n), BI + q, two ? BH + q : nullptr, MG + q);
    }
  });
}

#define FASTCERT_INST(T)                                                                                       \
  template void backward_act<T>(const View<T>&, const View<T>&, const View<T>&, const View<T>&, const View<T>&,     \
                                const View<T>&, View<T>&, View<T>&, View<T>&, double, double, View<T>&);          \
  template void bias_mag<T>(const View<T>&, const View<T>&, const View<T>&, View<T>&, View<T>&, double, double,    \
                            View<T>&);                                                                        \
  template void concretize<T>(const View<T>&, const View<T>&, const View<T>&, const View<T>&, const View<T>&, int,  \
                              const View<T>&, const View<T>&, double, View<T>&, const View<T>&, View<T>&);        \
  template void act_dense_backward<T>(const View<T>&, const View<T>&, const View<T>&, const View<T>&, const View<T>&, \
                                      double, double, const View<T>&, const View<T>&, const View<T>&, double, double, \
                                      View<T>&, View<T>&, View<T>&, View<T>&, int, View<T>&, const View<double>&,       \
                                      const View<T>&);                                                             \
  template void affine_center<T>(const View<T>&, const View<T>&, const View<double>&, const View<T>&, const View<T>&,  \
                                 View<T>&, View<T>&, View<T>&);
FASTCERT_INST(float)
FASTCERT_INST(double)
#undef FASTCERT_INST
}  // namespace fastcert
