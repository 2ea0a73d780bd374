// Kernels of the differentiable ops (python/fastcert/ops): forward and backward of each, in the nominal
// arithmetic of the optimize/train mode (docs/architecture.md, "Two modes"). They take View<T>s of
// contiguous CPU tensors that the caller allocated (the outputs too) and write the outputs; the products
// go through the BLAS (common.h's gemm). Shapes are checked here as well as in Python.
#include <cmath>
#include <vector>

#include "fastcert/common.h"
#include "fastcert/pool.h"
#include "fastcert/view.h"

namespace fastcert {
namespace {

using I = std::int64_t;

// C[M,N] = op(A) op(B) (beta 0), split over fastcert's pool when the product is large: by blocks of C's
// rows, or of its columns when there are few rows (OpenBLAS runs single-threaded inside fastcert; each
// block is one single-threaded GEMM).
template <typename T>
void gemm_rows(bool ta, bool tb, I M, I N, I K, const T* A, I lda, const T* B, I ldb, T* C, I ldc) {
  const I most = 2 * I(pool_threads());
  const bool big = M * N * K > kParallelMacs;
  const I rblocks = std::min<I>(M / 64, most), cblocks = std::min<I>(N / 64, most);
  const bool by_rows = rblocks > 1 || cblocks <= 1;
  const I blocks = std::max<I>(1, by_rows ? rblocks : cblocks);
  const bool par = big && blocks > 1;
  const I nb = par ? blocks : 1;
  parallel_for(nb, 1, par, [&](std::int64_t b0, std::int64_t b1, int) {
    for (std::int64_t b = b0; b < b1; ++b) {
      if (by_rows) {
        const I r0 = M * b / nb, r1 = M * (b + 1) / nb;
        if (r1 <= r0) continue;
        const T* Ab = ta ? A + r0 : A + r0 * lda;
        gemm(ta, tb, int(r1 - r0), int(N), int(K), T(1), Ab, int(lda), B, int(ldb), T(0), C + r0 * ldc, int(ldc));
      } else {
        const I c0 = N * b / nb, c1 = N * (b + 1) / nb;
        if (c1 <= c0) continue;
        const T* Bb = tb ? B + c0 * ldb : B + c0;
        gemm(ta, tb, int(M), int(c1 - c0), int(K), T(1), A, int(lda), Bb, int(ldb), T(0), C + c0, int(ldc));
      }
    }
  });
}

template <typename T>
void ibp_affine_fwd(const View<T>& l, const View<T>& u, const View<T>& W, const View<T>& b, View<T> lo, View<T> hi) {
  // lo/hi [B,m] = W c + b -/+ |W| r with c = (l+u)/2, r = (u-l)/2, l/u [B,n], W [m,n], b [m] or empty
  const I B = l.dim(0), n = l.dim(1), m = W.dim(0);
  expect_shape(u, {B, n}, "u");
  expect_shape(W, {m, n}, "W");
  expect_shape(lo, {B, m}, "lo");
  expect_shape(hi, {B, m}, "hi");
  if (!b.empty()) expect_shape(b, {m}, "b");
  std::vector<T> c(static_cast<std::size_t>(B * n)), r(c.size()), a(static_cast<std::size_t>(m * n));
  for (I i = 0; i < B * n; ++i) {
    c[i] = (l.ptr[i] + u.ptr[i]) / 2;
    r[i] = (u.ptr[i] - l.ptr[i]) / 2;
  }
  for (I i = 0; i < m * n; ++i) a[i] = std::abs(W.ptr[i]);
  gemm_rows<T>(false, true, B, m, n, c.data(), n, W.ptr, n, lo.ptr, m);
  gemm_rows<T>(false, true, B, m, n, r.data(), n, a.data(), n, hi.ptr, m);
  for (I s = 0; s < B; ++s)
    for (I j = 0; j < m; ++j) {
      const T mid = lo.ptr[s * m + j] + (b.empty() ? T(0) : b.ptr[j]);
      const T rad = hi.ptr[s * m + j];
      lo.ptr[s * m + j] = mid - rad;
      hi.ptr[s * m + j] = mid + rad;
    }
}

template <typename T>
void ibp_affine_bwd(const View<T>& l, const View<T>& u, const View<T>& W, const View<T>& glo, const View<T>& ghi,
                    View<T> gl, View<T> gu, View<T> gW, View<T> gb) {
  // gs = glo + ghi, gd = ghi - glo [B,m]; g_c = gs W, g_r = gd |W| [B,n]; gl = (g_c - g_r)/2, gu = (g_c + g_r)/2;
  // gW = gs^T c + sign(W) (gd^T r) [m,n]; gb = sum_B gs. Outputs with zero elements are skipped.
  const I B = l.dim(0), n = l.dim(1), m = W.dim(0);
  expect_shape(glo, {B, m}, "grad_lo");
  expect_shape(ghi, {B, m}, "grad_hi");
  std::vector<T> gs(static_cast<std::size_t>(B * m)), gd(gs.size());
  for (I i = 0; i < B * m; ++i) {
    gs[i] = glo.ptr[i] + ghi.ptr[i];
    gd[i] = ghi.ptr[i] - glo.ptr[i];
  }
  std::vector<T> c(static_cast<std::size_t>(B * n)), r(c.size());
  for (I i = 0; i < B * n; ++i) {
    c[i] = (l.ptr[i] + u.ptr[i]) / 2;
    r[i] = (u.ptr[i] - l.ptr[i]) / 2;
  }
  if (!gl.empty() || !gu.empty()) {
    expect_shape(gl, {B, n}, "grad_l");
    expect_shape(gu, {B, n}, "grad_u");
    std::vector<T> a(static_cast<std::size_t>(m * n));
    for (I i = 0; i < m * n; ++i) a[i] = std::abs(W.ptr[i]);
    gemm_rows<T>(false, false, B, n, m, gs.data(), m, W.ptr, n, gl.ptr, n);
    gemm_rows<T>(false, false, B, n, m, gd.data(), m, a.data(), n, gu.ptr, n);
    for (I i = 0; i < B * n; ++i) {
      const T gc = gl.ptr[i], gr = gu.ptr[i];
      gl.ptr[i] = (gc - gr) / 2;
      gu.ptr[i] = (gc + gr) / 2;
    }
  }
  if (!gW.empty()) {
    expect_shape(gW, {m, n}, "grad_W");
    std::vector<T> t(static_cast<std::size_t>(m * n));
    gemm_rows<T>(true, false, m, n, B, gs.data(), m, c.data(), n, gW.ptr, n);
    gemm_rows<T>(true, false, m, n, B, gd.data(), m, r.data(), n, t.data(), n);
    for (I i = 0; i < m * n; ++i) {
      const T w = W.ptr[i];
      gW.ptr[i] += (w > 0 ? t[i] : (w < 0 ? -t[i] : T(0)));
    }
  }
  if (!gb.empty()) {
    expect_shape(gb, {m}, "grad_b");
    for (I j = 0; j < m; ++j) gb.ptr[j] = 0;
    for (I s = 0; s < B; ++s)
      for (I j = 0; j < m; ++j) gb.ptr[j] += gs[static_cast<std::size_t>(s * m + j)];
  }
}

// ReLU relaxation. mode: 0 adaptive (lower slope 1 if u >= -l else 0), 1 parallel (= upper slope), 2 zero,
// 3 one, 4 given (alpha [B,n], in [0,1]). Stable neurons: slopes 0 (u <= 0) or 1 (l >= 0), intercept 0.
template <typename T>
void relu_relax_fwd(const View<T>& l, const View<T>& u, const View<T>& alpha, int mode, View<T> lo_s, View<T> up_s,
                    View<T> up_b) {
  const I N = l.size();
  if (u.size() != N || lo_s.size() != N || up_s.size() != N || up_b.size() != N || (mode == 4 && alpha.size() != N))
    throw std::invalid_argument("relu_relax: l, u, alpha and the outputs must have the same number of entries");
  for (I i = 0; i < N; ++i) {
    const T lv = l.ptr[i], uv = u.ptr[i];
    T ls, us, ub;
    if (uv <= 0) {
      ls = us = ub = 0;
    } else if (lv >= 0) {
      ls = us = 1;
      ub = 0;
    } else {
      us = uv / (uv - lv);
      ub = -lv * us;
      ls = mode == 0 ? (uv >= -lv ? T(1) : T(0)) : mode == 1 ? us : mode == 2 ? T(0) : mode == 3 ? T(1) : alpha.ptr[i];
    }
    lo_s.ptr[i] = ls;
    up_s.ptr[i] = us;
    up_b.ptr[i] = ub;
  }
}

template <typename T>
void relu_relax_bwd(const View<T>& l, const View<T>& u, int mode, const View<T>& g_lo_s, const View<T>& g_up_s,
                    const View<T>& g_up_b, View<T> gl, View<T> gu, View<T> galpha) {
  // unstable neurons only: d us/dl = u/(u-l)^2, d us/du = -l/(u-l)^2, d ub/dl = -u^2/(u-l)^2, d ub/du = l^2/(u-l)^2;
  // the parallel lower slope is us; a given one passes its gradient to alpha
  const I N = l.size();
  for (I i = 0; i < N; ++i) {
    const T lv = l.ptr[i], uv = u.ptr[i];
    T dl = 0, du = 0, da = 0;
    if (uv > 0 && lv < 0) {
      const T d = uv - lv, d2 = d * d;
      T gus = g_up_s.ptr[i];
      if (mode == 1) gus += g_lo_s.ptr[i];
      if (mode == 4) da = g_lo_s.ptr[i];
      const T gub = g_up_b.ptr[i];
      dl = gus * uv / d2 - gub * uv * uv / d2;
      du = -gus * lv / d2 + gub * lv * lv / d2;
    }
    gl.ptr[i] = dl;
    gu.ptr[i] = du;
    if (!galpha.empty()) galpha.ptr[i] = da;
  }
}

// One back-substitution step through an elementwise relaxation, for the lower bound of lam . f(z):
// out = lam+ lo_s + lam- up_s [B,S,n]; bias = sum_j lam+ lo_b + lam- up_b [B,S]. Slopes and intercepts are
// [B,n] (shared by the S rows) or [B,S,n] (per row: alpha-CROWN); lo_b may be empty (all zero).
struct RelaxDims {
  I B, S, n;
  bool per_row_lo, per_row_up;
};

template <typename T>
RelaxDims relax_dims(const View<T>& lam, const View<T>& lo_s, const View<T>& up_s, const View<T>& lo_b,
                     const View<T>& up_b) {
  if (lam.ndim() != 3) throw std::invalid_argument("relax_back: lam must be [B, S, n]");
  RelaxDims d{lam.dim(0), lam.dim(1), lam.dim(2), lo_s.ndim() == 3, up_s.ndim() == 3};
  expect_shape(lo_s, d.per_row_lo ? std::initializer_list<I>{d.B, d.S, d.n} : std::initializer_list<I>{d.B, d.n},
               "lo_s");
  expect_shape(up_s, d.per_row_up ? std::initializer_list<I>{d.B, d.S, d.n} : std::initializer_list<I>{d.B, d.n},
               "up_s");
  if (!lo_b.empty()) expect_shape(lo_b, {d.B, d.n}, "lo_b");
  expect_shape(up_b, {d.B, d.n}, "up_b");
  return d;
}

// Parallel loops of the elementwise kernels: rows (b, s) when each writes only its own outputs, column
// chunks when rows accumulate into shared [B, n] gradients (no two threads write the same element).
inline bool par_elems(I elems) { return elems > (I(1) << 15); }
constexpr I kCols = 512;  // columns per chunk of the column-parallel loops

// Row bodies of the elementwise loops, branch-free (selects) so that they vectorize, compiled per vector
// width (FASTCERT_SIMD_CLONES; nominal arithmetic: no bit-exactness is promised between clones). Pointers
// are already offset to the row (and column chunk); lb / lo-side outputs may be null.
template <typename T>
inline __attribute__((always_inline)) T rb_fwd_body(const T* __restrict L, const T* __restrict ls,
                                                    const T* __restrict us, const T* __restrict lb,
                                                    const T* __restrict ub, T* __restrict O, I n) {
  T acc = 0;
  if (lb) {
#pragma omp simd reduction(+ : acc)
    for (I j = 0; j < n; ++j) {
      const T x = L[j];
      const bool p = x >= 0;
      O[j] = x * (p ? ls[j] : us[j]);
      acc += x * (p ? lb[j] : ub[j]);
    }
  } else {
#pragma omp simd reduction(+ : acc)
    for (I j = 0; j < n; ++j) {
      const T x = L[j];
      const bool p = x >= 0;
      O[j] = x * (p ? ls[j] : us[j]);
      acc += p ? T(0) : x * ub[j];
    }
  }
  return acc;
}
FASTCERT_SIMD_CLONES float rb_fwd_row(const float* L, const float* ls, const float* us, const float* lb,
                                      const float* ub, float* O, I n) {
  return rb_fwd_body(L, ls, us, lb, ub, O, n);
}
FASTCERT_SIMD_CLONES double rb_fwd_row(const double* L, const double* ls, const double* us, const double* lb,
                                       const double* ub, double* O, I n) {
  return rb_fwd_body(L, ls, us, lb, ub, O, n);
}

template <typename T>
struct RbGrad {  // the outputs of one row chunk of relax_back_bwd (null: not asked)
  T* GL;
  T* gls;
  T* gus;
  T* glb;
  T* gub;
};

template <typename T>
inline __attribute__((always_inline)) void rb_bwd_body(const T* __restrict L, const T* __restrict G, T gb,
                                                       const T* __restrict ls, const T* __restrict us,
                                                       const T* __restrict lb, const T* __restrict ub,
                                                       const RbGrad<T>& o, I n) {
  T* __restrict GL = o.GL;
  if (lb) {
#pragma omp simd
    for (I j = 0; j < n; ++j) {
      const bool p = L[j] >= 0;
      GL[j] = p ? ls[j] * G[j] + lb[j] * gb : us[j] * G[j] + ub[j] * gb;
    }
  } else {
#pragma omp simd
    for (I j = 0; j < n; ++j) {
      const bool p = L[j] >= 0;
      GL[j] = p ? ls[j] * G[j] : us[j] * G[j] + ub[j] * gb;
    }
  }
  if (T* __restrict g = o.gls) {
#pragma omp simd
    for (I j = 0; j < n; ++j) g[j] += L[j] >= 0 ? L[j] * G[j] : T(0);
  }
  if (T* __restrict g = o.gus) {
#pragma omp simd
    for (I j = 0; j < n; ++j) g[j] += L[j] >= 0 ? T(0) : L[j] * G[j];
  }
  if (T* __restrict g = o.glb) {
#pragma omp simd
    for (I j = 0; j < n; ++j) g[j] += L[j] >= 0 ? L[j] * gb : T(0);
  }
  if (T* __restrict g = o.gub) {
#pragma omp simd
    for (I j = 0; j < n; ++j) g[j] += L[j] >= 0 ? T(0) : L[j] * gb;
  }
}
FASTCERT_SIMD_CLONES void rb_bwd_row(const float* L, const float* G, float gb, const float* ls, const float* us,
                                     const float* lb, const float* ub, const RbGrad<float>& o, I n) {
  rb_bwd_body(L, G, gb, ls, us, lb, ub, o, n);
}
FASTCERT_SIMD_CLONES void rb_bwd_row(const double* L, const double* G, double gb, const double* ls, const double* us,
                                     const double* lb, const double* ub, const RbGrad<double>& o, I n) {
  rb_bwd_body(L, G, gb, ls, us, lb, ub, o, n);
}

template <typename T>
void relax_back_fwd(const View<T>& lam, const View<T>& lo_s, const View<T>& up_s, const View<T>& lo_b,
                    const View<T>& up_b, View<T> out, View<T> bias) {
  const RelaxDims d = relax_dims(lam, lo_s, up_s, lo_b, up_b);
  expect_shape(out, {d.B, d.S, d.n}, "out");
  expect_shape(bias, {d.B, d.S}, "bias");
  const I rows = d.B * d.S;
  parallel_for(rows, grain_for(rows), par_elems(rows * d.n), [&](std::int64_t q0, std::int64_t q1, int) {
    for (I row = q0; row < q1; ++row) {
      const I b = row / d.S;
      bias.ptr[row] = rb_fwd_row(lam.ptr + row * d.n, lo_s.ptr + (d.per_row_lo ? row : b) * d.n,
                                 up_s.ptr + (d.per_row_up ? row : b) * d.n,
                                 lo_b.empty() ? nullptr : lo_b.ptr + b * d.n, up_b.ptr + b * d.n,
                                 out.ptr + row * d.n, d.n);
    }
  });
}

template <typename T>
void relax_back_bwd(const View<T>& lam, const View<T>& lo_s, const View<T>& up_s, const View<T>& lo_b,
                    const View<T>& up_b, const View<T>& g_out, const View<T>& g_bias, View<T> g_lam, View<T> g_lo_s,
                    View<T> g_up_s, View<T> g_lo_b, View<T> g_up_b) {
  const RelaxDims d = relax_dims(lam, lo_s, up_s, lo_b, up_b);
  for (View<T>* g : {&g_lo_s, &g_up_s, &g_lo_b, &g_up_b})
    if (!g->empty()) std::fill(g->ptr, g->ptr + g->size(), T(0));
  const I chunks = (d.n + kCols - 1) / kCols;
  parallel_for(d.B * chunks, 1, par_elems(d.B * d.S * d.n), [&](std::int64_t c0, std::int64_t c1, int) {
    for (I cb = c0; cb < c1; ++cb) {
      const I b = cb / chunks, j0 = (cb % chunks) * kCols, j1 = std::min(d.n, j0 + kCols);
      const T* lb = lo_b.empty() ? nullptr : lo_b.ptr + b * d.n + j0;
      const T* ub = up_b.ptr + b * d.n + j0;
      for (I s = 0; s < d.S; ++s) {
        const I row = b * d.S + s;
        const I olo = (d.per_row_lo ? row : b) * d.n + j0, oup = (d.per_row_up ? row : b) * d.n + j0;
        const RbGrad<T> o{g_lam.ptr + row * d.n + j0, g_lo_s.empty() ? nullptr : g_lo_s.ptr + olo,
                          g_up_s.empty() ? nullptr : g_up_s.ptr + oup,
                          g_lo_b.empty() ? nullptr : g_lo_b.ptr + b * d.n + j0,
                          g_up_b.empty() ? nullptr : g_up_b.ptr + b * d.n + j0};
        rb_bwd_row(lam.ptr + row * d.n + j0, g_out.ptr + row * d.n + j0, g_bias.ptr[row], lo_s.ptr + olo,
                   up_s.ptr + oup, lb, ub, o, j1 - j0);
      }
    }
  });
}

// Concretization over a box (center c, radius r >= 0, both [B,n]): out [B,S] = lam . c - |lam| . r (+ bias).
template <typename T>
void concretize_box_fwd(const View<T>& lam, const View<T>& c, const View<T>& r, View<T> out) {
  const I B = lam.dim(0), S = lam.dim(1), n = lam.dim(2);
  expect_shape(c, {B, n}, "center");
  expect_shape(r, {B, n}, "radius");
  expect_shape(out, {B, S}, "out");
  parallel_for(B * S, grain_for(B * S), par_elems(B * S * n), [&](std::int64_t q0, std::int64_t q1, int) {
    for (I row = q0; row < q1; ++row) {
      const I b = row / S;
      const T* L = lam.ptr + row * n;
      const T* C = c.ptr + b * n;
      const T* R = r.ptr + b * n;
      T acc = 0;
#pragma omp simd reduction(+ : acc)
      for (I j = 0; j < n; ++j) acc += L[j] * C[j] - std::abs(L[j]) * R[j];
      out.ptr[row] = acc;
    }
  });
}

template <typename T>
inline __attribute__((always_inline)) void cb_bwd_body(const T* __restrict L, const T* __restrict C,
                                                       const T* __restrict R, T gv, T* __restrict GL,
                                                       T* __restrict gc, T* __restrict gr, I n) {
  if (GL) {
#pragma omp simd
    for (I j = 0; j < n; ++j) {
      const T x = L[j];
      GL[j] = gv * (x > 0 ? C[j] - R[j] : (x < 0 ? C[j] + R[j] : C[j]));
    }
  }
  if (gc) {
#pragma omp simd
    for (I j = 0; j < n; ++j) gc[j] += gv * L[j];
  }
  if (gr) {
#pragma omp simd
    for (I j = 0; j < n; ++j) gr[j] -= gv * std::abs(L[j]);
  }
}
FASTCERT_SIMD_CLONES void cb_bwd_row(const float* L, const float* C, const float* R, float gv, float* GL, float* gc,
                                     float* gr, I n) {
  cb_bwd_body(L, C, R, gv, GL, gc, gr, n);
}
FASTCERT_SIMD_CLONES void cb_bwd_row(const double* L, const double* C, const double* R, double gv, double* GL,
                                     double* gc, double* gr, I n) {
  cb_bwd_body(L, C, R, gv, GL, gc, gr, n);
}

template <typename T>
void concretize_box_bwd(const View<T>& lam, const View<T>& c, const View<T>& r, const View<T>& g, View<T> g_lam,
                        View<T> g_c, View<T> g_r) {
  // g_lam = g (c - sign(lam) r); g_c = sum_s g lam; g_r = -sum_s g |lam| (empty outputs: not asked)
  const I B = lam.dim(0), S = lam.dim(1), n = lam.dim(2);
  if (!g_c.empty()) std::fill(g_c.ptr, g_c.ptr + g_c.size(), T(0));
  if (!g_r.empty()) std::fill(g_r.ptr, g_r.ptr + g_r.size(), T(0));
  const I chunks = (n + kCols - 1) / kCols;
  parallel_for(B * chunks, 1, par_elems(B * S * n), [&](std::int64_t c0, std::int64_t c1, int) {
    for (I cb = c0; cb < c1; ++cb) {
      const I b = cb / chunks, j0 = (cb % chunks) * kCols, j1 = std::min(n, j0 + kCols);
      T* gc = g_c.empty() ? nullptr : g_c.ptr + b * n + j0;
      T* gr = g_r.empty() ? nullptr : g_r.ptr + b * n + j0;
      for (I s = 0; s < S; ++s) {
        const I row = b * S + s;
        cb_bwd_row(lam.ptr + row * n + j0, c.ptr + b * n + j0, r.ptr + b * n + j0, g.ptr[row],
                   g_lam.empty() ? nullptr : g_lam.ptr + row * n + j0, gc, gr, j1 - j0);
      }
    }
  });
}

// Back-substitution through a dense layer: out [R,n] = lam [R,m] W [m,n]; its backward: g_lam = g W^T,
// g_W = lam^T g (R = B*S rows).
template <typename T>
void linear_back_fwd(const View<T>& lam, const View<T>& W, View<T> out) {
  const I m = W.dim(0), n = W.dim(1), R = lam.size() / (m ? m : 1);
  if (lam.size() != R * m || out.size() != R * n)
    throw std::invalid_argument("linear_back: lam [.., m] and out [.., n] do not match W [m, n]");
  gemm_rows<T>(false, false, R, n, m, lam.ptr, m, W.ptr, n, out.ptr, n);
}

template <typename T>
void linear_back_bwd(const View<T>& lam, const View<T>& W, const View<T>& g, View<T> g_lam, View<T> g_W) {
  const I m = W.dim(0), n = W.dim(1), R = lam.size() / (m ? m : 1);
  if (!g_lam.empty()) gemm_rows<T>(false, true, R, m, n, g.ptr, n, W.ptr, n, g_lam.ptr, m);
  if (!g_W.empty()) gemm_rows<T>(true, false, m, n, R, lam.ptr, m, g.ptr, n, g_W.ptr, n);
}

template <typename T>
void def_typed(py::module_& m) {
  m.def("d_ibp_affine_fwd", &ibp_affine_fwd<T>);
  m.def("d_ibp_affine_bwd", &ibp_affine_bwd<T>);
  m.def("d_relu_relax_fwd", &relu_relax_fwd<T>);
  m.def("d_relu_relax_bwd", &relu_relax_bwd<T>);
  m.def("d_relax_back_fwd", &relax_back_fwd<T>);
  m.def("d_relax_back_bwd", &relax_back_bwd<T>);
  m.def("d_concretize_box_fwd", &concretize_box_fwd<T>);
  m.def("d_concretize_box_bwd", &concretize_box_bwd<T>);
  m.def("d_linear_back_fwd", &linear_back_fwd<T>);
  m.def("d_linear_back_bwd", &linear_back_bwd<T>);
}

}  // namespace

void def_diff_ops(py::module_& m) {
  def_typed<float>(m);
  def_typed<double>(m);
}

}  // namespace fastcert
