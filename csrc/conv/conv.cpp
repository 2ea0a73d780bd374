// Convolutions as GEMMs (im2row / row2im), forward and transposed, never as dense Toeplitz matrices.
// Layouts: images [N, C, H, W] (C-contiguous); weights [OC, C, KH, KW]; rows [N*OH*OW, C*KH*KW].
// The caller passes a workspace; the kernels process samples in chunks that fit in it.
#include <cstring>

#include "fastcert/common.h"
#include "fastcert/kernels.h"

namespace fastcert {

namespace {
struct Geo {
  int C, H, W, OC, KH, KW, SH, SW, PH, PW, OH, OW;
  py::ssize_t ckk() const { return static_cast<py::ssize_t>(C) * KH * KW; }
  py::ssize_t ohw() const { return static_cast<py::ssize_t>(OH) * OW; }
  py::ssize_t chw() const { return static_cast<py::ssize_t>(C) * H * W; }
};

template <typename T>
Geo make_geo(const Arr<T>& Wt, int H, int W, int sh, int sw, int ph, int pw) {
  if (Wt.ndim() != 4) throw std::invalid_argument("conv: weight must be [OC, C, KH, KW]");
  Geo g{};
  g.OC = static_cast<int>(Wt.shape(0));
  g.C = static_cast<int>(Wt.shape(1));
  g.KH = static_cast<int>(Wt.shape(2));
  g.KW = static_cast<int>(Wt.shape(3));
  g.H = H; g.W = W; g.SH = sh; g.SW = sw; g.PH = ph; g.PW = pw;
  if (sh < 1 || sw < 1 || ph < 0 || pw < 0) throw std::invalid_argument("conv: bad stride/padding");
  g.OH = (H + 2 * ph - g.KH) / sh + 1;
  g.OW = (W + 2 * pw - g.KW) / sw + 1;
  if (g.OH < 1 || g.OW < 1) throw std::invalid_argument("conv: kernel larger than padded input");
  return g;
}

// rows[p, (c,kh,kw)] for one sample
template <typename T>
void im2row(const Geo& g, const T* x, T* rows) {
  const py::ssize_t ckk = g.ckk();
  for (int oh = 0; oh < g.OH; ++oh)
    for (int ow = 0; ow < g.OW; ++ow) {
      T* r = rows + (static_cast<py::ssize_t>(oh) * g.OW + ow) * ckk;
      py::ssize_t q = 0;
      for (int c = 0; c < g.C; ++c)
        for (int kh = 0; kh < g.KH; ++kh) {
          const int ih = oh * g.SH - g.PH + kh;
          for (int kw = 0; kw < g.KW; ++kw, ++q) {
            const int iw = ow * g.SW - g.PW + kw;
            r[q] = (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W)
                       ? x[(static_cast<py::ssize_t>(c) * g.H + ih) * g.W + iw]
                       : T(0);
          }
        }
    }
}

// img += row2im(rows) for one sample (img must be zeroed by the caller)
template <typename T>
void row2im_add(const Geo& g, const T* rows, T* img) {
  const py::ssize_t ckk = g.ckk();
  for (int oh = 0; oh < g.OH; ++oh)
    for (int ow = 0; ow < g.OW; ++ow) {
      const T* r = rows + (static_cast<py::ssize_t>(oh) * g.OW + ow) * ckk;
      py::ssize_t q = 0;
      for (int c = 0; c < g.C; ++c)
        for (int kh = 0; kh < g.KH; ++kh) {
          const int ih = oh * g.SH - g.PH + kh;
          for (int kw = 0; kw < g.KW; ++kw, ++q) {
            const int iw = ow * g.SW - g.PW + kw;
            if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) img[(static_cast<py::ssize_t>(c) * g.H + ih) * g.W + iw] += r[q];
          }
        }
    }
}
}  // namespace

// out[N,OC,OH,OW] = conv(x[N,C,H,W], W) + b.  work: at least OH*OW*(C*KH*KW + OC) elements.
template <typename T>
void conv_forward(const Arr<T>& x, const Arr<T>& Wt, const Arr<T>& b, Arr<T>& out, int H, int W, int sh, int sw,
                  int ph, int pw, Arr<T>& work) {
  const Geo g = make_geo(Wt, H, W, sh, sw, ph, pw);
  if (x.size() % g.chw() != 0) throw std::invalid_argument("conv_forward: x size is not a multiple of C*H*W");
  const py::ssize_t N = x.size() / g.chw();
  expect_size(out.size(), N * g.OC * g.ohw(), "out");
  const py::ssize_t nb = b.size();
  if (nb != 0 && nb != g.OC) throw std::invalid_argument("conv_forward: bias must have OC elements");
  const py::ssize_t per = g.ohw() * (g.ckk() + g.OC);
  const py::ssize_t chunk = work.size() / per;
  if (chunk < 1) throw std::invalid_argument("conv_forward: workspace too small");
  const T* X = ro(x, "x");
  const T* Wp = ro(Wt, "W");
  const T* bp = nb ? ro(b, "b") : nullptr;
  T* O = mut(out, "out");
  T* ws = mut(work, "work");
  for (py::ssize_t n0 = 0; n0 < N; n0 += chunk) {
    const py::ssize_t nc = std::min(chunk, N - n0);
    T* rows = ws;
    T* res = ws + nc * g.ohw() * g.ckk();
#pragma omp parallel for schedule(static)
    for (py::ssize_t i = 0; i < nc; ++i) im2row(g, X + (n0 + i) * g.chw(), rows + i * g.ohw() * g.ckk());
    // res[nc*OHW, OC] = rows @ Wmat^T
    gemm(false, true, static_cast<int>(nc * g.ohw()), g.OC, static_cast<int>(g.ckk()), T(1), rows,
         static_cast<int>(g.ckk()), Wp, static_cast<int>(g.ckk()), T(0), res, g.OC);
#pragma omp parallel for collapse(2) schedule(static)
    for (py::ssize_t i = 0; i < nc; ++i)
      for (int oc = 0; oc < g.OC; ++oc) {
        T* o = O + ((n0 + i) * g.OC + oc) * g.ohw();
        const T* r = res + i * g.ohw() * g.OC + oc;
        const T bb = bp ? bp[oc] : T(0);
        for (py::ssize_t p = 0; p < g.ohw(); ++p) o[p] = r[p * g.OC] + bb;
      }
  }
}

// Transposed (adjoint) conv: out[R,C,H,W] = conv^T(lam[R,OC,OH,OW]).  work: OH*OW*(OC + C*KH*KW) per row.
template <typename T>
void conv_backward(const Arr<T>& lam, const Arr<T>& Wt, Arr<T>& out, int H, int W, int sh, int sw, int ph, int pw,
                   Arr<T>& work) {
  const Geo g = make_geo(Wt, H, W, sh, sw, ph, pw);
  const py::ssize_t in_per = static_cast<py::ssize_t>(g.OC) * g.ohw();
  if (lam.size() % in_per != 0) throw std::invalid_argument("conv_backward: lam size is not a multiple of OC*OH*OW");
  const py::ssize_t R = lam.size() / in_per;
  expect_size(out.size(), R * g.chw(), "out");
  const py::ssize_t per = g.ohw() * (g.ckk() + g.OC);
  const py::ssize_t chunk = work.size() / per;
  if (chunk < 1) throw std::invalid_argument("conv_backward: workspace too small");
  const T* L = ro(lam, "lam");
  const T* Wp = ro(Wt, "W");
  T* O = mut(out, "out");
  T* ws = mut(work, "work");
  for (py::ssize_t r0 = 0; r0 < R; r0 += chunk) {
    const py::ssize_t rc = std::min(chunk, R - r0);
    T* lt = ws;                              // [rc*OHW, OC]
    T* rows = ws + rc * g.ohw() * g.OC;      // [rc*OHW, CKK]
#pragma omp parallel for schedule(static)
    for (py::ssize_t i = 0; i < rc; ++i) {
      const T* src = L + (r0 + i) * in_per;
      T* dst = lt + i * g.ohw() * g.OC;
      for (int oc = 0; oc < g.OC; ++oc)
        for (py::ssize_t p = 0; p < g.ohw(); ++p) dst[p * g.OC + oc] = src[oc * g.ohw() + p];
    }
    gemm(false, false, static_cast<int>(rc * g.ohw()), static_cast<int>(g.ckk()), g.OC, T(1), lt, g.OC, Wp,
         static_cast<int>(g.ckk()), T(0), rows, static_cast<int>(g.ckk()));
#pragma omp parallel for schedule(static)
    for (py::ssize_t i = 0; i < rc; ++i) {
      T* img = O + (r0 + i) * g.chw();
      std::memset(img, 0, sizeof(T) * g.chw());
      row2im_add(g, rows + i * g.ohw() * g.ckk(), img);
    }
  }
}

#define FASTCERT_INST(T)                                                                                       \
  template void conv_forward<T>(const Arr<T>&, const Arr<T>&, const Arr<T>&, Arr<T>&, int, int, int, int, int, \
                                int, Arr<T>&);                                                                 \
  template void conv_backward<T>(const Arr<T>&, const Arr<T>&, Arr<T>&, int, int, int, int, int, int, Arr<T>&);
FASTCERT_INST(float)
FASTCERT_INST(double)
#undef FASTCERT_INST
}  // namespace fastcert
