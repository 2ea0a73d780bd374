// One row of the fused backward step "activation, then the affine layer before it": the relaxed row
// and its bias / rounding-slack terms, exactly as backward_act followed by bias_mag would compute them.
#pragma once
#include "fastcert/common.h"

namespace fastcert {

// Per-row sums of the fused step (see backward_act and bias_mag for their meaning).
template <typename T>
struct RowSums {
  T acc_b = 0, acc_m = 0, acc_i = 0, acc_h = 0;  // activation: intercepts, |lam|.zmag, |lam|.|intercepts|, upper
  T cacc_b = 0, cacc_m = 0, cacc_bm = 0;         // affine: relaxed.bias, |relaxed|.g, |relaxed|.|bias|
};

// Relax lam row ``lr`` (n entries, ReLU-style zero lower intercept) into ``dst`` and accumulate the sums.
// The row is split in segments of ``seg`` entries; segment k is written at dst + k*seg_stride (a dense
// layer uses one segment; a convolution writes its channels transposed for one GEMM per block).
// The loop body is branch-free (selects, no pointer tests) so that it vectorizes: TWO and HAS_CB are
// template parameters and relax_row dispatches on them once per row.
template <typename T, bool TWO, bool HAS_CB>
inline void relax_row_impl(const T* __restrict lr, const T* __restrict ls, const T* __restrict us,
                           const T* __restrict ub, const T* __restrict zm, const T* __restrict gr,
                           const T* __restrict cb, py::ssize_t n, py::ssize_t seg, py::ssize_t seg_stride,
                           T* __restrict dst, RowSums<T>& out) {
  T acc_b = 0, acc_m = 0, acc_i = 0, acc_h = 0, cacc_b = 0, cacc_m = 0, cacc_bm = 0;
  for (py::ssize_t k0 = 0; k0 < n; k0 += seg) {
    T* __restrict d = dst + (k0 / seg) * seg_stride;
    const T* __restrict l = lr + k0;
    const T* __restrict ls_ = ls + k0;
    const T* __restrict us_ = us + k0;
    const T* __restrict ub_ = ub + k0;
    const T* __restrict zm_ = zm + k0;
    const T* __restrict gr_ = gr + k0;
    const T* __restrict cb_ = HAS_CB ? cb + k0 : nullptr;
#pragma omp simd reduction(+ : acc_b, acc_m, acc_i, acc_h, cacc_b, cacc_m, cacc_bm)
    for (py::ssize_t j = 0; j < seg; ++j) {
      const T v = l[j], b_u = ub_[j], sl = ls_[j], su = us_[j];  // unconditional loads: selects, not branches
      const bool pos = v >= 0;
      const T vp = pos ? v : T(0), vn = pos ? T(0) : v;
      const T r = v * (pos ? sl : su);
      const T abu = std::fabs(b_u);
      acc_b += vn * b_u;
      if constexpr (TWO) {
        acc_i += (vp - vn) * abu;
        acc_h += vp * b_u;
      } else {
        acc_i += -vn * abu;
      }
      acc_m += (vp - vn) * zm_[j];
      d[j] = r;
      const T ar = std::fabs(r);
      cacc_m += ar * gr_[j];
      if constexpr (HAS_CB) {
        const T c = cb_[j];
        cacc_b += r * c;
        cacc_bm += ar * std::fabs(c);
      }
    }
  }
  out.acc_b = acc_b;
  out.acc_m = acc_m;
  out.acc_i = acc_i;
  out.acc_h = TWO ? acc_h : T(0);
  out.cacc_b = cacc_b;
  out.cacc_m = cacc_m;
  out.cacc_bm = cacc_bm;
}

template <typename T>
inline void relax_row(const T* lr, const T* ls, const T* us, const T* ub, const T* zm, const T* gr, const T* cb,
                      py::ssize_t n, py::ssize_t seg, py::ssize_t seg_stride, bool two, T* dst, RowSums<T>& out) {
  if (two) {
    if (cb) relax_row_impl<T, true, true>(lr, ls, us, ub, zm, gr, cb, n, seg, seg_stride, dst, out);
    else relax_row_impl<T, true, false>(lr, ls, us, ub, zm, gr, cb, n, seg, seg_stride, dst, out);
  } else {
    if (cb) relax_row_impl<T, false, true>(lr, ls, us, ub, zm, gr, cb, n, seg, seg_stride, dst, out);
    else relax_row_impl<T, false, false>(lr, ls, us, ub, zm, gr, cb, n, seg, seg_stride, dst, out);
  }
}

// Apply a row's sums to its bias / bias_hi / mag, in the order backward_act then bias_mag would.
template <typename T>
inline void apply_row_sums(const RowSums<T>& a, T gp, T gs, T gg, T gb, T* bias, T* bias_hi, T* mag) {
  const T uu = unit_roundoff<T>();
  T nb = *bias + a.acc_b;
  T m = gp * a.acc_m + gs * a.acc_i + 2 * uu * std::fabs(nb);
  nb = nb + a.cacc_b;
  m += gg * a.cacc_m + gb * a.cacc_bm + 2 * uu * std::fabs(nb);
  *bias = nb;
  if (bias_hi) {
    T nh = *bias_hi + a.acc_h;
    m += 2 * uu * std::fabs(nh);
    nh = nh + a.cacc_b;
    m += 2 * uu * std::fabs(nh);
    *bias_hi = nh;
  }
  *mag += m;
}
}  // namespace fastcert
