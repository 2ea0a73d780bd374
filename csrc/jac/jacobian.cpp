// Rigorous element-wise Jacobian bounds (Fast-Lip, issue #13): one backward step of the interval
// recursion Y_k = Y_{k+1} D_k W_k, where Y_{k+1} is known to lie in [Yl, Yu] (rows: batch x specification,
// columns: the neurons of a layer), D_k = diag(f'(z_k)) with f'(z_k) in [gl, gu] per sample, and W_k a
// constant matrix. float64 only: the caller runs the recursion in float64 (float32 weights are exact there).
//
// Every step returns bounds that contain the exact real result for every Y in the input box:
// - jac_dense_back: Y W for Y in [Yl, Yu] is exactly c W +- r |W| (c, r: centre and radius of the box);
//   with c rounded and r rounded up to cover the box, the two products are GEMMs whose error is at most
//   gamma_m (|c| |W|) + underflow and gamma_m (t |W|) + underflow, folded into the radius outward.
// - jac_act_back: Y o f' for Y in [Yl, Yu] and f' in [gl, gu]: the extreme corner products, each rounded
//   outward (one ulp covers a product's rounding and its underflow).
// - jac_diag_back: Y o s for a constant s of any sign: the min / max of the two corner products, outward.
#include <cmath>
#include <vector>

#include "fastcert/common.h"
#include "fastcert/pool.h"
#include "fastcert/view.h"

namespace fastcert {
namespace {

using I = std::int64_t;
using T = double;

void check_finite(const View<T>& g, const char* name) {
  for (I i = 0; i < g.numel; ++i)
    if (!std::isfinite(g.ptr[i])) throw std::invalid_argument(std::string(name) + " must be finite");
}

void jac_dense_back(const View<T>& Yl, const View<T>& Yu, const View<T>& W, const View<T>& absW, View<T> out_l,
                    View<T> out_u) {
  // Yl, Yu [R, m]; W, absW [m, n]; out [R, n]
  const I R = Yl.dim(0), m = Yl.dim(1), n = W.dim(1);
  expect_shape(Yu, {R, m}, "Yu");
  expect_shape(W, {m, n}, "W");
  expect_shape(absW, {m, n}, "absW");
  expect_shape(out_l, {R, n}, "out_l");
  expect_shape(out_u, {R, n}, "out_u");
  if (R == 0 || n == 0) return;
  if (m == 0) {
    std::fill(out_l.ptr, out_l.ptr + R * n, T(0));
    std::fill(out_u.ptr, out_u.ptr + R * n, T(0));
    return;
  }
  const T g = gamma_n64(m);
  const T uf = underflow_slack<T>(m);
  std::vector<T> c(static_cast<std::size_t>(R * m)), t(c.size());
  for (I i = 0; i < R * m; ++i) {
    const T lo = Yl.ptr[i], hi = Yu.ptr[i];
    if (!(lo <= hi)) throw std::invalid_argument("jac_dense_back: Yl must be <= Yu (and not NaN)");
    const T mid = lo == hi ? lo : lo / 2 + hi / 2;  // halves first: no overflow; any mid works, r covers
    const T r = lo == hi ? T(0) : std::max(up(hi - mid), up(mid - lo));
    c[i] = mid;
    t[i] = up(r + up(g * std::abs(mid)));
  }
  // out_l <- fl(c W), out_u <- fl(t |W|)
  gemm(false, false, int(R), int(n), int(m), T(1), c.data(), int(m), W.ptr, int(n), T(0), out_l.ptr, int(n));
  gemm(false, false, int(R), int(n), int(m), T(1), t.data(), int(m), absW.ptr, int(n), T(0), out_u.ptr, int(n));
  const T grow = up(T(1) + up(2 * g));
  parallel_for(R * n, kParallelMin, R * n >= kParallelMin, [&](std::int64_t i0, std::int64_t i1, int) {
    for (std::int64_t i = i0; i < i1; ++i) {
      const T mid = out_l.ptr[i];
      // t |W| <= (fl(t |W|) + uf) / (1 - g) <= (fl + uf)(1 + 2g); plus the centre product's underflow
      const T rad = up(up(up(out_u.ptr[i] + uf) * grow) + uf);
      out_l.ptr[i] = down(mid - rad);
      out_u.ptr[i] = up(mid + rad);
    }
  });
}

void jac_act_back(const View<T>& Yl, const View<T>& Yu, const View<T>& gl, const View<T>& gu, View<T> out_l,
                  View<T> out_u) {
  // Yl, Yu, out [B, S, n]; gl, gu [B, n] with gl <= gu
  const I B = Yl.dim(0), S = Yl.dim(1), n = Yl.dim(2);
  expect_shape(Yu, {B, S, n}, "Yu");
  expect_shape(gl, {B, n}, "gl");
  expect_shape(gu, {B, n}, "gu");
  expect_shape(out_l, {B, S, n}, "out_l");
  expect_shape(out_u, {B, S, n}, "out_u");
  check_finite(gl, "gl");
  check_finite(gu, "gu");
  for (I i = 0; i < B * n; ++i)
    if (gl.ptr[i] > gu.ptr[i]) throw std::invalid_argument("jac_act_back: gl must be <= gu");
  for (I b = 0; b < B; ++b)
    for (I s = 0; s < S; ++s) {
      const I o = (b * S + s) * n;
      const T* pl = gl.ptr + b * n;
      const T* pu = gu.ptr + b * n;
      for (I j = 0; j < n; ++j) {
        // the product of the intervals [lo, hi] x [pl, pu]: its extremes are at corners
        const T lo = Yl.ptr[o + j], hi = Yu.ptr[o + j];
        const T a = lo * pl[j], b = lo * pu[j], c = hi * pl[j], d = hi * pu[j];
        out_l.ptr[o + j] = down(std::min(std::min(a, b), std::min(c, d)));
        out_u.ptr[o + j] = up(std::max(std::max(a, b), std::max(c, d)));
      }
    }
}

void jac_diag_back(const View<T>& Yl, const View<T>& Yu, const View<T>& s, View<T> out_l, View<T> out_u) {
  // Yl, Yu, out [R, n]; s [n]
  const I R = Yl.dim(0), n = Yl.dim(1);
  expect_shape(Yu, {R, n}, "Yu");
  expect_shape(s, {n}, "s");
  expect_shape(out_l, {R, n}, "out_l");
  expect_shape(out_u, {R, n}, "out_u");
  for (I r = 0; r < R; ++r)
    for (I j = 0; j < n; ++j) {
      const T a = Yl.ptr[r * n + j] * s.ptr[j], b = Yu.ptr[r * n + j] * s.ptr[j];
      out_l.ptr[r * n + j] = down(std::min(a, b));
      out_u.ptr[r * n + j] = up(std::max(a, b));
    }
}

}  // namespace

void def_jacobian(py::module_& m) {
  m.def("jac_dense_back", &jac_dense_back);
  m.def("jac_act_back", &jac_act_back);
  m.def("jac_diag_back", &jac_diag_back);
}

}  // namespace fastcert
