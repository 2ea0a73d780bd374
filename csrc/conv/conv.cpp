// Convolutions as GEMMs (im2col / col2im), forward and transposed, never as dense Toeplitz matrices.
// Layouts: images [N, C, H, W] (C-contiguous); weights [OC, C, KH, KW]; cols [C*KH*KW, OH*OW] per sample.
// The caller passes a workspace; the kernels process samples in chunks that fit in it.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "fastcert/common.h"
#include "fastcert/kernels.h"
#include "fastcert/pool.h"
#include "fastcert/relax_row.h"

namespace fastcert {

namespace {
struct Geo {
  int C, H, W, OC, KH, KW, SH, SW, PH, PW, OH, OW;
  py::ssize_t ckk() const { return static_cast<py::ssize_t>(C) * KH * KW; }
  py::ssize_t ohw() const { return static_cast<py::ssize_t>(OH) * OW; }
  py::ssize_t chw() const { return static_cast<py::ssize_t>(C) * H * W; }
};

template <typename T>
Geo make_geo(const View<T>& Wt, int H, int W, int sh, int sw, int ph, int pw) {
  if (Wt.ndim() != 4) throw std::invalid_argument("conv: weight must be [OC, C, KH, KW]");
  Geo g{};
  g.OC = static_cast<int>(Wt.shape(0));
  g.C = static_cast<int>(Wt.shape(1));
  g.KH = static_cast<int>(Wt.shape(2));
  g.KW = static_cast<int>(Wt.shape(3));
  if (g.OC < 1 || g.C < 1 || g.KH < 1 || g.KW < 1) throw std::invalid_argument("conv: weight has a zero dimension");
  g.H = H; g.W = W; g.SH = sh; g.SW = sw; g.PH = ph; g.PW = pw;
  if (sh < 1 || sw < 1 || ph < 0 || pw < 0) throw std::invalid_argument("conv: bad stride/padding");
  g.OH = (H + 2 * ph - g.KH) / sh + 1;
  g.OW = (W + 2 * pw - g.KW) / sw + 1;
  if (g.OH < 1 || g.OW < 1 || H < 1 || W < 1) throw std::invalid_argument("conv: kernel larger than padded input");
  return g;
}

// cols[(c,kh,kw), p] for one sample (caffe layout: each row is contiguous over output positions);
// rows are ld apart (ld = OH*OW for one sample's own buffer, larger when samples sit side by side)
template <typename T>
void im2col(const Geo& g, const T* x, T* cols, py::ssize_t ld) {
  py::ssize_t q = 0;
  for (int c = 0; c < g.C; ++c)
    for (int kh = 0; kh < g.KH; ++kh)
      for (int kw = 0; kw < g.KW; ++kw, ++q) {
        T* row = cols + q * ld;
        const T* xc = x + static_cast<py::ssize_t>(c) * g.H * g.W;
        for (int oh = 0; oh < g.OH; ++oh) {
          const int ih = oh * g.SH - g.PH + kh;
          T* dst = row + static_cast<py::ssize_t>(oh) * g.OW;
          if (ih < 0 || ih >= g.H) {
            for (int ow = 0; ow < g.OW; ++ow) dst[ow] = T(0);
            continue;
          }
          const T* src = xc + static_cast<py::ssize_t>(ih) * g.W;
          for (int ow = 0; ow < g.OW; ++ow) {
            const int iw = ow * g.SW - g.PW + kw;
            dst[ow] = (iw >= 0 && iw < g.W) ? src[iw] : T(0);
          }
        }
      }
}

// Flat image index of every (c,kh,kw) x output-position entry of the cols buffer, -1 where it falls in
// the zero padding: col2im as one scatter-add loop over the table (long inner loops; the per-(c,kh,kw,oh)
// loop set-up per (c,kh,kw,oh) dominated on small windows). Returns whether every entry is inside.
inline bool col2im_table(const Geo& g, std::vector<int>& idx) {
  const py::ssize_t ohw = g.ohw();
  idx.assign(static_cast<size_t>(g.ckk() * ohw), -1);
  bool all_in = true;
  py::ssize_t q = 0;
  for (int c = 0; c < g.C; ++c)
    for (int kh = 0; kh < g.KH; ++kh)
      for (int kw = 0; kw < g.KW; ++kw, ++q)
        for (int oh = 0; oh < g.OH; ++oh)
          for (int ow = 0; ow < g.OW; ++ow) {
            const int ih = oh * g.SH - g.PH + kh, iw = ow * g.SW - g.PW + kw;
            const bool in = ih >= 0 && ih < g.H && iw >= 0 && iw < g.W;
            all_in = all_in && in;
            idx[static_cast<size_t>(q * ohw + oh * g.OW + ow)] = in ? (c * g.H + ih) * g.W + iw : -1;
          }
  return all_in;
}

// img += col2im(cols) through the table (img zeroed by the caller); cols rows are ld apart. Entries of
// one (c,kh,kw) row go to distinct image positions; each position receives its terms in (c,kh,kw) order.
template <typename T>
inline void col2im_add_table(const Geo& g, const int* idx, bool all_in, const T* cols, T* img, py::ssize_t ld) {
  const py::ssize_t ohw = g.ohw(), ckk = g.ckk();
  for (py::ssize_t q = 0; q < ckk; ++q) {
    const T* __restrict src = cols + q * ld;
    const int* __restrict d = idx + q * ohw;
    if (all_in) {
      for (py::ssize_t k = 0; k < ohw; ++k) img[d[k]] += src[k];
    } else {
      for (py::ssize_t k = 0; k < ohw; ++k)
        if (d[k] >= 0) img[d[k]] += src[k];
    }
  }
}
}  // namespace

// out[N,OC,OH,OW] = conv(x[N,C,H,W], W) + b.  work: at least C*KH*KW*OH*OW elements.
// Per sample: im2col, then one GEMM Wmat[OC,CKK] @ cols[CKK,OHW] written straight into out.
template <typename T>
void conv_forward(const View<T>& x, const View<T>& Wt, const View<T>& b, View<T>& out, int H, int W, int sh, int sw,
                  int ph, int pw, View<T>& work) {
  const Geo g = make_geo(Wt, H, W, sh, sw, ph, pw);
  if (x.size() % g.chw() != 0) throw std::invalid_argument("conv_forward: x size is not a multiple of C*H*W");
  const py::ssize_t N = x.size() / g.chw();
  expect_size(out.size(), N * g.OC * g.ohw(), "out");
  const py::ssize_t nb = b.size();
  if (nb != 0 && nb != g.OC) throw std::invalid_argument("conv_forward: bias must have OC elements");
  const py::ssize_t per = g.ohw() * g.ckk();
  const py::ssize_t chunk = work.size() / per;
  if (chunk < 1) throw std::invalid_argument("conv_forward: workspace too small");
  const T* X = ro(x, "x");
  const T* Wp = ro(Wt, "W");
  const T* bp = nb ? ro(b, "b") : nullptr;
  T* O = mut(out, "out");
  T* ws = mut(work, "work");
  const int M = g.OC, Nn = static_cast<int>(g.ohw()), K = static_cast<int>(g.ckk());
  for (py::ssize_t n0 = 0; n0 < N; n0 += chunk) {
    const py::ssize_t nc = std::min(chunk, N - n0);
    parallel_for(nc, 1, nc * per > kParallelMin, [&](std::int64_t i, std::int64_t, int) {
      im2col(g, X + (n0 + i) * g.chw(), ws + i * per, g.ohw());
      T* o = O + (n0 + i) * g.OC * g.ohw();
      if (bp) {
        for (int oc = 0; oc < g.OC; ++oc)
          for (py::ssize_t p = 0; p < g.ohw(); ++p) o[oc * g.ohw() + p] = bp[oc];
      }
      gemm(false, false, M, Nn, K, T(1), Wp, K, ws + i * per, Nn, bp ? T(1) : T(0), o, Nn);
    });
  }
}

// Transposed (adjoint) conv: out[R,C,H,W] = conv^T(lam[R,OC,OH,OW]).  work: C*KH*KW*OH*OW per row.
// Per row: one GEMM Wmat^T[CKK,OC] @ lam_r[OC,OHW] -> cols, then col2im; rows in parallel (OpenMP),
// each GEMM single-threaded in its OpenMP thread (fastcert keeps OpenBLAS at 1 thread).
template <typename T>
void conv_backward(const View<T>& lam, const View<T>& Wt, View<T>& out, int H, int W, int sh, int sw, int ph, int pw,
                   View<T>& work) {
  const Geo g = make_geo(Wt, H, W, sh, sw, ph, pw);
  const py::ssize_t in_per = static_cast<py::ssize_t>(g.OC) * g.ohw();
  if (lam.size() % in_per != 0) throw std::invalid_argument("conv_backward: lam size is not a multiple of OC*OH*OW");
  const py::ssize_t R = lam.size() / in_per;
  expect_size(out.size(), R * g.chw(), "out");
  const py::ssize_t per = g.ohw() * g.ckk();
  const py::ssize_t chunk = work.size() / per;
  if (chunk < 1) throw std::invalid_argument("conv_backward: workspace too small");
  const T* L = ro(lam, "lam");
  const T* Wp = ro(Wt, "W");
  T* O = mut(out, "out");
  T* ws = mut(work, "work");
  const int M = static_cast<int>(g.ckk()), Nn = static_cast<int>(g.ohw()), K = g.OC;
  std::vector<int> table;
  const bool all_in = col2im_table(g, table);
  const int* tab = table.data();
  for (py::ssize_t r0 = 0; r0 < R; r0 += chunk) {
    const py::ssize_t rc = std::min(chunk, R - r0);
    // Rows are independent: each OpenMP thread runs its rows' (single-threaded) GEMMs and col2im.
    parallel_for(rc, 1, rc * per > kParallelMin, [&](std::int64_t i, std::int64_t, int) {
      gemm(true, false, M, Nn, K, T(1), Wp, M, L + (r0 + i) * in_per, Nn, T(0), ws + i * per, Nn);
      T* img = O + (r0 + i) * g.chw();
      std::memset(img, 0, sizeof(T) * g.chw());
      col2im_add_table(g, tab, all_in, ws + i * per, img, Nn);
    });
  }
}

// The interval step of a convolution in one call (the conv counterpart of interval_dense):
//   c = (l+u)/2, r >= max(u-c, c-l), h >= |c| + r           (interval_prep's formulas, per element)
//   mc = W c + b, mr = |W| r, mg = |W| h                    (im2col, then two GEMMs per chunk of samples)
//   g = (mg + tiny + |b|)(1 + gamma) rounded up, rad = mr + gamma g + 2 tiny rounded up,
//   out_l = down(mc - rad), out_u = up(mc + rad)           (interval_finish's formulas, per element)
// l, u: [B, C*H*W]; out_l, out_u, out_g: [B, OC*OH*OW]; b: [OC] or empty. The samples go in chunks of
// `chunk` (0: automatic): a chunk's c and r are built, gathered into im2col columns side by side (h on
// the columns), so that ONE GEMM W[OC,CKK] @ cols_c[CKK, nc*OHW] gives the chunk's W c and ONE GEMM
// |W| @ [cols_r | cols_h] gives both |W| r and |W| h; the finishing step reads the products while they
// are in cache and writes the [B, OC*OH*OW] outputs. Chunks run on the pool, each in its own scratch.
// Rounding: each output's W c + b, |W| r and |W| h are sums of CKK products (+ the bias) in some order,
// exactly as in the per-sample GEMMs before: gamma = gamma_{fan_in} and tiny = underflow_slack(fan_in)
// cover them, whatever the blocking (docs/architecture.md, "Floating point").
namespace {
template <typename T>
struct ConvChunk {
  Geo g;
  const T *L, *U, *W, *AW, *b;  // b: null without a bias
  const T* S;  // [OC, C] kernel sums of |W| rounded up (the window-max magnitude); null: the exact |W| h
  T *OL, *OU, *OG;
  const int* tab;  // input index of every (c,kh,kw) x output position; chw where it falls in the padding
  T gamma, tiny;
};

inline float bit_float(std::uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

// c = (l+u)/2 (inside [l,u] for finite l <= u), r = up_unless_zero(max(u-c, c-l)) of one sample's chw
// inputs, and a zero (c, r) after them (the padding's index): float as (c, r) pairs at pair offset off of
// pc (c in the low, r in the high half: the gather then loads one 64-bit pair per tap instead of two
// 32-bit values), double into the separate arrays pc + off, pr + off.
template <typename T>
inline __attribute__((always_inline)) void prep_cr(const T* __restrict Ls, const T* __restrict Us, py::ssize_t chw,
                                                   T* pc, T* pr, py::ssize_t off) {
  if constexpr (sizeof(T) == 4) {
    T* __restrict cr = pc + 2 * off;
#pragma omp simd
    for (py::ssize_t i = 0; i < chw; ++i) {
      const T ci = Ls[i] + (Us[i] - Ls[i]) / 2;
      cr[2 * i] = ci;
      cr[2 * i + 1] = up_unless_zero(std::max(Us[i] - ci, ci - Ls[i]));
    }
    cr[2 * chw] = cr[2 * chw + 1] = T(0);
  } else {
    T* __restrict cs = pc + off;
    T* __restrict rs = pr + off;
#pragma omp simd
    for (py::ssize_t i = 0; i < chw; ++i) {
      const T ci = Ls[i] + (Us[i] - Ls[i]) / 2;
      cs[i] = ci;
      rs[i] = up_unless_zero(std::max(Us[i] - ci, ci - Ls[i]));
    }
    cs[chw] = rs[chw] = T(0);
  }
}

// One sample's im2col row segment of c and r through the index table: float reads (c, r) pairs (pc, the
// sample at pair offset off), double the separate arrays pc + off, pr + off.
template <typename T>
inline __attribute__((always_inline)) void gather_cr(const T* pc, const T* pr, py::ssize_t off,
                                                     const int* __restrict tq, py::ssize_t ohw, T* __restrict dc,
                                                     T* __restrict dr) {
  if constexpr (sizeof(T) == 4) {
    // the pair is read as bytes (memcpy: one 64-bit load, without reading float storage through a
    // uint64_t lvalue, which strict aliasing forbids, and without assuming 8-byte alignment)
    const char* __restrict ps = reinterpret_cast<const char*>(pc + 2 * off);
#pragma omp simd
    for (py::ssize_t p = 0; p < ohw; ++p) {
      std::uint64_t v;
      std::memcpy(&v, ps + static_cast<py::ssize_t>(tq[p]) * 8, 8);
      dc[p] = bit_float(static_cast<std::uint32_t>(v));
      dr[p] = bit_float(static_cast<std::uint32_t>(v >> 32));
    }
  } else {
    const T* __restrict cs = pc + off;
    const T* __restrict rs = pr + off;
#pragma omp simd
    for (py::ssize_t p = 0; p < ohw; ++p) {
      const int k = tq[p];
      dc[p] = cs[k];
      dr[p] = rs[k];
    }
  }
}

// One chunk of samples [n0, n0 + nc) in scratch ws (chunk_scratch(nc) elements).
inline py::ssize_t chunk_scratch(const Geo& g, py::ssize_t nc) {
  return nc * (2 * (g.chw() + 1) + 3 * g.ckk() * g.ohw() + 3 * g.OC * g.ohw());
}
// The chunk step with the window-max magnitude (a.S set): instead of the third product |W| h,
//   g = ((mr + mq + 2 tiny) + |b|)(1 + gamma) rounded up,  mq = S @ cmax,
// cmax[ch, p] = max |c| over the window of output position p in input channel ch (the padding reads 0),
// S[o, ch] >= sum_{kh,kw} |W[o,ch,kh,kw]| (rounded up by the caller). |W| max(|l|,|u|) <= |W| |c| + |W| r
// and (|W| |c|)[o,p] <= sum_ch S[o,ch] cmax[ch,p]: a sum of C products, C <= fan_in, so gamma and tiny
// cover its rounding as they cover mr's (docs/architecture.md, "The window-max magnitude"). Scratch:
// cols_c [CKK, ld], cols_r [CKK, ld], cmax [C, ld] inside the exact step's cols buffers; oc_, then the
// [OC, ld] products |W| r and S cmax side by side in orh.
template <typename T>
inline __attribute__((always_inline)) void conv_chunk_window(const ConvChunk<T>& a, py::ssize_t n0, py::ssize_t nc,
                                                             const T* pc, const T* pr, T* cols_c, T* cols_r, T* oc_,
                                                             T* orh) {
  const Geo& g = a.g;
  const py::ssize_t ohw = g.ohw(), ckk = g.ckk(), chw1 = g.chw() + 1, ld = nc * ohw, kk = ckk / g.C;
  const py::ssize_t n_out = static_cast<py::ssize_t>(g.OC) * ohw;
  T* cmax = cols_r + ckk * ld;  // [C, ld]
  for (py::ssize_t q = 0; q < ckk; ++q) {
    const int* __restrict tq = a.tab + q * ohw;
    T* __restrict dcq = cols_c + q * ld;
    T* __restrict drq = cols_r + q * ld;
    for (py::ssize_t s = 0; s < nc; ++s)
      gather_cr(pc, pr, s * chw1, tq, ohw, dcq + s * ohw, drq + s * ohw);
    T* __restrict cm = cmax + (q / kk) * ld;
    if (q % kk == 0) {
#pragma omp simd
      for (py::ssize_t j = 0; j < ld; ++j) cm[j] = std::fabs(dcq[j]);
    } else {  // a NaN, once in, stays (x > NaN and NaN != NaN are false)
#pragma omp simd
      for (py::ssize_t j = 0; j < ld; ++j) {
        const T x = std::fabs(dcq[j]);
        cm[j] = (x > cm[j] || x != x) ? x : cm[j];
      }
    }
  }
  if (a.b)
    for (int o = 0; o < g.OC; ++o) std::fill(oc_ + o * ld, oc_ + (o + 1) * ld, a.b[o]);
  const int K = static_cast<int>(ckk), Ld = static_cast<int>(ld);
  T* orr = orh;
  T* oq = orh + g.OC * ld;
  gemm(false, false, g.OC, Ld, K, T(1), a.W, K, cols_c, Ld, a.b ? T(1) : T(0), oc_, Ld);
  gemm(false, false, g.OC, Ld, K, T(1), a.AW, K, cols_r, Ld, T(0), orr, Ld);
  gemm(false, false, g.OC, Ld, g.C, T(1), a.S, g.C, cmax, Ld, T(0), oq, Ld);
  const T gm = a.gamma, tn = a.tiny, g1 = up(T(1) + gm), tn2 = 2 * tn;
  for (py::ssize_t s = 0; s < nc; ++s)
    for (int o = 0; o < g.OC; ++o) {
      const T ab = a.b ? std::fabs(a.b[o]) : T(0);
      const T* __restrict cr = oc_ + o * ld + s * ohw;
      const T* __restrict rr = orr + o * ld + s * ohw;
      const T* __restrict qr = oq + o * ld + s * ohw;
      const py::ssize_t dst = (n0 + s) * n_out + o * ohw;
      T* __restrict lo = a.OL + dst;
      T* __restrict hi = a.OU + dst;
      T* __restrict go = a.OG + dst;
#pragma omp simd
      for (py::ssize_t p = 0; p < ohw; ++p) {
        // mr + mq: sums of products of nonnegative numbers (>= +0) or NaN; then sums with tn > 0
        T gi = up_pos(up_pos(up_pos(rr[p] + qr[p]) + tn2) + ab);
        gi = up_pos(gi * g1);
        go[p] = gi;
        const T rad = up_pos(up_pos(rr[p] + up_pos(gm * gi)) + tn2);
        lo[p] = down(cr[p] - rad);
        hi[p] = up(cr[p] + rad);
      }
    }
}

template <typename T>
inline __attribute__((always_inline)) void conv_chunk_body(const ConvChunk<T>& a, py::ssize_t n0, py::ssize_t nc,
                                                           T* ws) {
  const Geo& g = a.g;
  const py::ssize_t ohw = g.ohw(), ckk = g.ckk(), chw = g.chw(), chw1 = chw + 1, ld = nc * ohw;
  const py::ssize_t n_out = static_cast<py::ssize_t>(g.OC) * ohw;
  T *pc = ws, *pr = pc + nc * chw1;           // a sample's c (r) and the zero after it (the padding);
                                              // float: (c, r) pairs over both (prep_cr)
  T* cols_c = pr + nc * chw1;                 // [CKK, nc*OHW]
  T* cols_rh = cols_c + nc * ckk * ohw;       // [CKK, 2*nc*OHW]: r of the chunk's samples, then h
  T* oc_ = cols_rh + 2 * nc * ckk * ohw;      // [OC, nc*OHW]
  T* orh = oc_ + nc * n_out;                  // [OC, 2*nc*OHW]
  for (py::ssize_t s = 0; s < nc; ++s) prep_cr(a.L + (n0 + s) * chw, a.U + (n0 + s) * chw, chw, pc, pr, s * chw1);
  // im2col as a gather through the index table (a loop per (c,kh,kw,oh) with a bounds test per entry
  // was 2/3 of the step on 7-wide output rows)
  if (a.S) return conv_chunk_window(a, n0, nc, pc, pr, cols_c, cols_rh, oc_, orh);
  for (py::ssize_t q = 0; q < ckk; ++q) {
    const int* __restrict tq = a.tab + q * ohw;
    T* __restrict dcq = cols_c + q * ld;
    T* __restrict drq = cols_rh + q * 2 * ld;
    for (py::ssize_t s = 0; s < nc; ++s)
      gather_cr(pc, pr, s * chw1, tq, ohw, dcq + s * ohw, drq + s * ohw);
    // h = |c| + r (rounded up unless 0) on the columns: the same values as building h per input
    // element and gathering it (the padding gives |0| + 0 = 0), in a vectorized pass instead of a gather
    T* __restrict dhq = drq + ld;
#pragma omp simd
    for (py::ssize_t j = 0; j < ld; ++j) dhq[j] = up_unless_zero(std::fabs(dcq[j]) + drq[j]);
  }
  if (a.b)
    for (int o = 0; o < g.OC; ++o) std::fill(oc_ + o * ld, oc_ + (o + 1) * ld, a.b[o]);
  const int K = static_cast<int>(ckk);
  gemm(false, false, g.OC, static_cast<int>(ld), K, T(1), a.W, K, cols_c, static_cast<int>(ld), a.b ? T(1) : T(0),
       oc_, static_cast<int>(ld));
  gemm(false, false, g.OC, static_cast<int>(2 * ld), K, T(1), a.AW, K, cols_rh, static_cast<int>(2 * ld), T(0), orh,
       static_cast<int>(2 * ld));
  const T gm = a.gamma, tn = a.tiny, g1 = up(T(1) + gm), tn2 = 2 * tn;
  for (py::ssize_t s = 0; s < nc; ++s)
    for (int o = 0; o < g.OC; ++o) {
      const T ab = a.b ? std::fabs(a.b[o]) : T(0);
      const T* __restrict cr = oc_ + o * ld + s * ohw;
      const T* __restrict rr = orh + o * 2 * ld + s * ohw;
      const T* __restrict gr = rr + ld;
      const py::ssize_t dst = (n0 + s) * n_out + o * ohw;
      T* __restrict lo = a.OL + dst;
      T* __restrict hi = a.OU + dst;
      T* __restrict go = a.OG + dst;
#pragma omp simd
      for (py::ssize_t p = 0; p < ohw; ++p) {
        // mg falls short of the exact |W| h + |b| by at most a relative gamma and an absolute tiny
        // (up_pos: every operand below is >= tn > 0, a product of positive numbers (>= +0), or NaN)
        T gi = up_pos(up_pos(gr[p] + tn) + ab);
        gi = up_pos(gi * g1);
        go[p] = gi;
        // W c + b and |W| r: each off by at most gamma (|W||c| + |b|) resp. gamma |W| r, plus tiny
        const T rad = up_pos(up_pos(rr[p] + up_pos(gm * gi)) + tn2);
        lo[p] = down(cr[p] - rad);
        hi[p] = up(cr[p] + rad);
      }
    }
}
// The chunk step compiled for the machine's vector width (FASTCERT_SIMD_CLONES, common.h): the same IEEE
// operations in every clone (no contraction), so the same results on every machine.
FASTCERT_SIMD_CLONES void conv_chunk(const ConvChunk<float>& a, py::ssize_t n0, py::ssize_t nc, float* ws) {
  conv_chunk_body(a, n0, nc, ws);
}
FASTCERT_SIMD_CLONES void conv_chunk(const ConvChunk<double>& a, py::ssize_t n0, py::ssize_t nc, double* ws) {
  conv_chunk_body(a, n0, nc, ws);
}
}  // namespace

template <typename T>
void interval_conv(const View<T>& l, const View<T>& u, const View<T>& Wt, const View<T>& absW, const View<T>& b,
                   double gamma, double tiny, View<T>& out_l, View<T>& out_u, View<T>& out_g, int H, int W, int sh,
                   int sw, int ph, int pw, int chunk, const View<T>& wsum) {
  const Geo g = make_geo(Wt, H, W, sh, sw, ph, pw);
  expect_size(absW.size(), Wt.size(), "absW");
  if (wsum.size() != 0 && wsum.size() != static_cast<py::ssize_t>(g.OC) * g.C)
    throw std::invalid_argument("interval_conv: wsum must be empty or [OC, C] (the kernel sums of |W|)");
  if (l.size() % g.chw() != 0) throw std::invalid_argument("interval_conv: l size is not a multiple of C*H*W");
  const py::ssize_t B = l.size() / g.chw(), n_out = static_cast<py::ssize_t>(g.OC) * g.ohw();
  expect_size(u.size(), l.size(), "u");
  expect_size(out_l.size(), B * n_out, "out_l");
  expect_size(out_u.size(), B * n_out, "out_u");
  expect_size(out_g.size(), B * n_out, "out_g");
  const py::ssize_t nb = b.size();
  if (nb != 0 && nb != g.OC) throw std::invalid_argument("interval_conv: bias must be empty or have OC elements");
  if (chunk < 0) throw std::invalid_argument("interval_conv: chunk must be >= 0");
  if (!(tiny > 0)) throw std::invalid_argument("interval_conv: tiny must be > 0");
  if (!(gamma >= 0)) throw std::invalid_argument("interval_conv: gamma must be >= 0");
  if (B == 0) return;
  std::vector<int> table;
  col2im_table(g, table);
  for (int& t : table) t = t < 0 ? static_cast<int>(g.chw()) : t;
  const ConvChunk<T> a{g, ro(l, "l"), ro(u, "u"), ro(Wt, "W"), ro(absW, "absW"), nb ? ro(b, "b") : nullptr,
                       wsum.size() ? ro(wsum, "wsum") : nullptr,
                       mut(out_l, "out_l"), mut(out_u, "out_u"), mut(out_g, "out_g"), table.data(),
                       static_cast<T>(gamma), static_cast<T>(tiny)};
  if (!(a.tiny > 0)) throw std::invalid_argument("interval_conv: tiny must be > 0 in the compute dtype");
  const int nthreads = pool_threads();
  const py::ssize_t per = chunk_scratch(g, 1);
  py::ssize_t nc_max = chunk > 0 ? chunk : std::max<py::ssize_t>(1, kConvChunkElems / per);
  nc_max = std::min(nc_max, std::max<py::ssize_t>(1, (B + nthreads - 1) / nthreads));
  const py::ssize_t nchunks = (B + nc_max - 1) / nc_max;
  const bool par = nchunks > 1 && 3 * B * n_out * g.ckk() > kParallelMacs;
  const int nbuf = par ? nthreads : 1;
  // the calling thread's scratch, kept between calls: a fresh block of this size (up to kConvChunkElems per
  // thread) was returned to the system and faulted in again on many calls (~1000 page faults a call on the
  // CIFAR bench case, ~3.5 us each on a virtual machine: more than the arithmetic)
  thread_local std::vector<T> scratch;
  const size_t need = static_cast<size_t>(nbuf * nc_max * per);
  if (scratch.size() < need) scratch.resize(need);
  T* ws = scratch.data();
  parallel_for(nchunks, 1, par, [&](std::int64_t ic, std::int64_t, int tid) {
    const py::ssize_t n0 = ic * nc_max;
    conv_chunk(a, n0, std::min(nc_max, B - n0), ws + tid * nc_max * per);
  });
}

#define FASTCERT_INST(T)                                                                                    \
  template void interval_conv<T>(const View<T>&, const View<T>&, const View<T>&, const View<T>&, const View<T>&,  \
                                 double, double, View<T>&, View<T>&, View<T>&, int, int, int, int, int, int, int, \
                                 const View<T>&);
FASTCERT_INST(float)
FASTCERT_INST(double)
#undef FASTCERT_INST

#define FASTCERT_INST(T)                                                                                       \
  template void conv_forward<T>(const View<T>&, const View<T>&, const View<T>&, View<T>&, int, int, int, int, int, \
                                int, View<T>&);                                                                 \
  template void conv_backward<T>(const View<T>&, const View<T>&, View<T>&, int, int, int, int, int, int, View<T>&);
FASTCERT_INST(float)
FASTCERT_INST(double)
#undef FASTCERT_INST
}  // namespace fastcert

namespace fastcert {
// Fused backward step through an activation followed (going backwards) by the convolution that
// produced its input: for each row lam[b,s,:] over the activation's n = OC*OH*OW neurons,
//   1. relaxed = max(lam,0)*lo_s + min(lam,0)*up_s (+ intercepts into bias / bias_hi, slack into mag,
//      exactly as backward_act),
//   2. the conv's bias and magnitude terms (as bias_mag with the conv bias and g),
//   3. out[b,s,:] = conv^T(relaxed)  (GEMM + col2im),
// without writing the relaxed rows to memory. Rows go in blocks of block_rows: the block's relaxed
// rows are written channel-major ([OC, rows*OH*OW]) so that one GEMM W^T[CKK,OC] @ block serves the
// whole block, then col2im per row. lam may be [1,S,n] (rows shared by the batch).
// work: at least block_rows*(n + C*KH*KW*OH*OW) elements per OpenMP thread.
template <typename T>
void act_conv_backward(const View<T>& lam, const View<T>& lo_s, const View<T>& up_s, const View<T>& up_b,
                       const View<T>& zmag, double gamma_prod, double gamma_sum, const View<T>& Wt, const View<T>& cbias,
                       const View<T>& g, double gamma_g, double gamma_b, View<T>& out, View<T>& bias, View<T>& mag,
                       View<T>& bias_hi, int H, int W, int sh, int sw, int ph, int pw, int block_rows, View<T>& work) {
  const Geo geo = make_geo(Wt, H, W, sh, sw, ph, pw);
  if (lam.ndim() != 3) throw std::invalid_argument("act_conv_backward: Lam must be [B,S,n] or [1,S,n]");
  const py::ssize_t S = lam.shape(1), n = lam.shape(2);
  if (n != static_cast<py::ssize_t>(geo.OC) * geo.ohw())
    throw std::invalid_argument("act_conv_backward: Lam width must equal the conv's OC*OH*OW");
  const py::ssize_t B = lo_s.size() / n;
  if (lam.shape(0) != B && lam.shape(0) != 1) throw std::invalid_argument("act_conv_backward: Lam batch mismatch");
  const py::ssize_t lam_bstride = lam.shape(0) == 1 ? 0 : S * n;
  expect_size(lo_s.size(), B * n, "lo_slope");
  expect_size(up_s.size(), B * n, "up_slope");
  expect_size(up_b.size(), B * n, "up_bias");
  expect_size(zmag.size(), B * n, "zmag");
  expect_size(g.size(), B * n, "g");
  const bool has_cb = cbias.size() != 0;
  if (has_cb) expect_size(cbias.size(), n, "conv bias (flat)");
  expect_size(out.size(), B * S * geo.chw(), "out");
  expect_size(bias.size(), B * S, "bias");
  expect_size(mag.size(), B * S, "mag");
  const bool two = bias_hi.size() != 0;
  if (two) expect_size(bias_hi.size(), B * S, "bias_hi");
  if (block_rows < 1) throw std::invalid_argument("act_conv_backward: block_rows must be >= 1");
  const py::ssize_t R = block_rows;
  const py::ssize_t per = R * (n + geo.ckk() * geo.ohw());
  const int nthreads = pool_threads();
  if (work.size() < per * nthreads) throw std::invalid_argument("act_conv_backward: workspace too small");
  const T* Lm = ro(lam, "Lam");
  const T* LS = ro(lo_s, "lo_slope");
  const T* US = ro(up_s, "up_slope");
  const T* UB = ro(up_b, "up_bias");
  const T* ZM = ro(zmag, "zmag");
  const T* Wp = ro(Wt, "W");
  const T* CB = has_cb ? ro(cbias, "conv bias") : nullptr;
  const T* G = ro(g, "g");
  T* O = mut(out, "out");
  T* BI = mut(bias, "bias");
  T* MG = mut(mag, "mag");
  T* BH = two ? mut(bias_hi, "bias_hi") : nullptr;
  T* ws = mut(work, "work");
  const T gp = static_cast<T>(gamma_prod), gs = static_cast<T>(gamma_sum);
  const T gg = static_cast<T>(gamma_g), gb = static_cast<T>(gamma_b);
  const py::ssize_t ohw = geo.ohw(), rows = B * S, nblocks = (rows + R - 1) / R;
  const int M = static_cast<int>(geo.ckk()), K = geo.OC;
  std::vector<int> table;
  const bool all_in = col2im_table(geo, table);
  const int* tab = table.data();
  parallel_for(nblocks, 1, nblocks > 1 && rows * n * geo.ckk() > kParallelMacs, [&](std::int64_t ib0, std::int64_t,
                                                                                   int tid) {
    T* blk = ws + per * tid;
    T* cols = blk + R * n;
    {
      const py::ssize_t ib = ib0;
      const py::ssize_t q0 = ib * R, nr = std::min(R, rows - q0);
      for (py::ssize_t r = 0; r < nr; ++r) {
        const py::ssize_t q = q0 + r, b = q / S, s = q % S;
        RowSums<T> a;
        relax_row(Lm + b * lam_bstride + s * n, LS + b * n, US + b * n, UB + b * n, ZM + b * n, G + b * n, CB, n,
                  ohw, nr * ohw, two, blk + r * ohw, a);
        apply_row_sums(a, gp, gs, gg, gb, BI + q, two ? BH + q : nullptr, MG + q);
      }
      // cols[CKK, nr*OHW] = W^T[CKK, OC] @ blk[OC, nr*OHW]
      gemm(true, false, M, static_cast<int>(nr * ohw), K, T(1), Wp, M, blk, static_cast<int>(nr * ohw), T(0), cols,
           static_cast<int>(nr * ohw));
      for (py::ssize_t r = 0; r < nr; ++r) {
        T* img = O + (q0 + r) * geo.chw();
        std::memset(img, 0, sizeof(T) * geo.chw());
        col2im_add_table(geo, tab, all_in, cols + r * ohw, img, nr * ohw);
      }
    }
  });
}

#define FASTCERT_INST(T)                                                                                         \
  template void act_conv_backward<T>(const View<T>&, const View<T>&, const View<T>&, const View<T>&, const View<T>&,  \
                                     double, double, const View<T>&, const View<T>&, const View<T>&, double, double, \
                                     View<T>&, View<T>&, View<T>&, View<T>&, int, int, int, int, int, int, int, View<T>&);
FASTCERT_INST(float)
FASTCERT_INST(double)
#undef FASTCERT_INST
}  // namespace fastcert
