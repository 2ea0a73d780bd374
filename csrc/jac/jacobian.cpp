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

// RecurJac (Zhang, Zhang & Hsieh, AAAI 2019), the upper-bound pass through one activation node: for each
// coefficient column j of each row r, an upper bound of sum_i Y_i D_i c_i over Y_i in [Yl, Yu] (the gradient at
// the node's output, already bounded), D_i in [gl, gu] (its derivative) and c_i in [Cl, Cu]. Where the sign of
// Y_i is known (or D_i is fixed), Y_i D_i c_i <= Y_i g c_mid + |Y_i| |D_i| rad_c with g the end of [gl, gu] that
// the sign of Y_i c_mid picks: the linear part g c_mid becomes the coefficient passed on (Y_i is bounded
// recursively, through the later layers), the rest is added to acc; elsewhere the corner bound of the product
// of the three intervals is added to acc and the coefficient passed on is 0. Cl, Cu, nCl, nCu [R, k, n]; Yl,
// Yu [R, n]; gl, gu [R / S rows = B, n]; acc [R, k] (added to, rounded up).
void rj_act_split(const View<T>& Cl, const View<T>& Cu, const View<T>& Yl, const View<T>& Yu, const View<T>& gl,
                  const View<T>& gu, I S, View<T> nCl, View<T> nCu, View<T> acc) {
  const I R = Cl.dim(0), k = Cl.dim(1), n = Cl.dim(2);
  if (S <= 0 || R % S) throw std::invalid_argument("rj_act_split: rows must be batch x S");
  const I B = R / S;
  expect_shape(Cu, {R, k, n}, "Cu");
  expect_shape(Yl, {R, n}, "Yl");
  expect_shape(Yu, {R, n}, "Yu");
  expect_shape(gl, {B, n}, "gl");
  expect_shape(gu, {B, n}, "gu");
  expect_shape(nCl, {R, k, n}, "nCl");
  expect_shape(nCu, {R, k, n}, "nCu");
  expect_shape(acc, {R, k}, "acc");
  check_finite(gl, "gl");
  check_finite(gu, "gu");
  parallel_for(R * k, 64, R * k * n >= kParallelMin, [&](std::int64_t q0, std::int64_t q1, int) {
    for (std::int64_t q = q0; q < q1; ++q) {
      const I r = q / k, b = r / S;
      const T* cl = Cl.ptr + q * n;
      const T* cu = Cu.ptr + q * n;
      const T* yl = Yl.ptr + r * n;
      const T* yu = Yu.ptr + r * n;
      const T* dl = gl.ptr + b * n;
      const T* du = gu.ptr + b * n;
      T* ol = nCl.ptr + q * n;
      T* ou = nCu.ptr + q * n;
      T s = acc.ptr[q];
      for (I i = 0; i < n; ++i) {
        const T lo = cl[i], hi = cu[i];
        if (!(lo <= hi)) throw std::invalid_argument("rj_act_split: Cl must be <= Cu (and not NaN)");
        const bool fixed = dl[i] == du[i];
        const bool known = yl[i] >= 0 || yu[i] <= 0 || fixed;
        if (known) {
          const T c = lo == hi ? lo : lo / 2 + hi / 2;
          const T rad = lo == hi ? T(0) : std::max(up(hi - c), up(c - lo));
          T g;
          if (fixed) {
            g = dl[i];
          } else if (yl[i] >= 0 && yu[i] <= 0) {
            g = T(0);  // Y_i == 0 on the box: the term is 0
          } else {
            // Y_i >= 0 or Y_i <= 0: Y_i D_i c is linear in D_i, largest at du when Y_i c >= 0, else at dl
            const int sy = yl[i] >= 0 ? 1 : -1;
            const int sc = c > 0 ? 1 : (c < 0 ? -1 : 0);
            g = (sy * sc >= 0) ? du[i] : dl[i];
          }
          ol[i] = down(g * c);
          ou[i] = up(g * c);
          if (rad > 0) {
            const T ym = std::max(std::abs(yl[i]), std::abs(yu[i]));
            const T dm = std::max(std::abs(dl[i]), std::abs(du[i]));
            s = up(s + up(up(ym * dm) * rad));
          }
        } else {
          // P = Y x D (corners, outward), then the largest corner of P x [lo, hi]
          const T a = yl[i] * dl[i], bb = yl[i] * du[i], cc = yu[i] * dl[i], d = yu[i] * du[i];
          const T pl = down(std::min(std::min(a, bb), std::min(cc, d)));
          const T pu = up(std::max(std::max(a, bb), std::max(cc, d)));
          const T m = std::max(std::max(up(pl * lo), up(pl * hi)), std::max(up(pu * lo), up(pu * hi)));
          s = up(s + m);
          ol[i] = T(0);
          ou[i] = T(0);
        }
      }
      acc.ptr[q] = s;
    }
  });
}

// The top of a RecurJac pass: acc [R, k] += an upper bound of C_r . c for c in [Cl, Cu] [R, k, n], C [R, n]
// exact (sequential sum, each step rounded up).
void rj_top(const View<T>& Cl, const View<T>& Cu, const View<T>& C, View<T> acc) {
  const I R = Cl.dim(0), k = Cl.dim(1), n = Cl.dim(2);
  expect_shape(Cu, {R, k, n}, "Cu");
  expect_shape(C, {R, n}, "C");
  expect_shape(acc, {R, k}, "acc");
  parallel_for(R * k, 64, R * k * n >= kParallelMin, [&](std::int64_t q0, std::int64_t q1, int) {
    for (std::int64_t q = q0; q < q1; ++q) {
      const I r = q / k;
      const T* cl = Cl.ptr + q * n;
      const T* cu = Cu.ptr + q * n;
      const T* c = C.ptr + r * n;
      T s = acc.ptr[q];
      for (I i = 0; i < n; ++i) s = up(s + std::max(up(c[i] * cl[i]), up(c[i] * cu[i])));
      acc.ptr[q] = s;
    }
  });
}

}  // namespace

void def_jacobian(py::module_& m) {
  m.def("rj_act_split", &rj_act_split);
  m.def("rj_top", &rj_top);
  m.def("jac_dense_back", &jac_dense_back);
  m.def("jac_act_back", &jac_act_back);
  m.def("jac_diag_back", &jac_diag_back);
}

}  // namespace fastcert
