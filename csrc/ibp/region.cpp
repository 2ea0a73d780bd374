// The input region of a bound computation (fastcert.api.make_region) in one pass: the box
// [down(x - e), up(x + e)] of an L-inf ball (also the box every ball lies in), clipped to the input domain,
// with the checks that refuse what the analysis does not cover. It replaces ~10 torch elementwise passes
// over [B, n] (and their temporaries), which cost as much as a convolution's interval step on CIFAR inputs.

#include "fastcert/common.h"
#include "fastcert/kernels.h"

namespace fastcert {

namespace {
// One sample's row: lo = down(x - e), hi = up(x + e) (down / up are std::nextafter towards -/+inf, the
// same bits as torch.nextafter), then lo = max(lo, xmin), hi = min(hi, xmax) where given. Returns the
// flags of region_box. Branch-free selects and integer ORs only, so the loop vectorizes; no reduction
// whose value depends on the order (the flags are ORs), so every clone gives the same bits.
template <bool HasMin, bool HasMax, typename T>
inline __attribute__((always_inline)) int region_row(const T* __restrict x, T e, const T* __restrict xmin,
                                                     const T* __restrict xmax, T* __restrict lo, T* __restrict hi,
                                                     py::ssize_t n) {
  int bad_x = 0, ovf = 0, below = 0, above = 0;
  const T inf = std::numeric_limits<T>::infinity();
#pragma omp simd reduction(| : bad_x, ovf, below, above)
  for (py::ssize_t k = 0; k < n; ++k) {
    const T xk = x[k];
    T l = down(xk - e), h = up(xk + e);
    bad_x |= !(std::fabs(xk) < inf);                           // NaN or +-inf
    ovf |= !(std::fabs(l) < inf) | !(std::fabs(h) < inf);      // x +- e beyond the range of T
    if constexpr (HasMin) {
      below |= xk < xmin[k];
      l = l < xmin[k] ? xmin[k] : l;  // as torch.maximum (a zero may differ in sign only)
    }
    if constexpr (HasMax) {
      above |= xk > xmax[k];
      h = h > xmax[k] ? xmax[k] : h;
    }
    lo[k] = l;
    hi[k] = h;
  }
  return (bad_x ? 1 : 0) | (ovf ? 2 : 0) | (below ? 4 : 0) | (above ? 8 : 0);
}
template <typename T>
inline __attribute__((always_inline)) int region_row_any(const T* x, T e, const T* xmin, const T* xmax, T* lo, T* hi,
                                                         py::ssize_t n) {
  if (xmin && xmax) return region_row<true, true>(x, e, xmin, xmax, lo, hi, n);
  if (xmin) return region_row<true, false>(x, e, xmin, xmax, lo, hi, n);
  if (xmax) return region_row<false, true>(x, e, xmin, xmax, lo, hi, n);
  return region_row<false, false>(x, e, xmin, xmax, lo, hi, n);
}
// per vector width (common.h): the float64 steps do not vectorize on baseline x86-64
FASTCERT_SIMD_CLONES int region_row_f(const float* x, float e, const float* xmin, const float* xmax, float* lo,
                                      float* hi, py::ssize_t n) {
  return region_row_any(x, e, xmin, xmax, lo, hi, n);
}
FASTCERT_SIMD_CLONES int region_row_f(const double* x, double e, const double* xmin, const double* xmax, double* lo,
                                      double* hi, py::ssize_t n) {
  return region_row_any(x, e, xmin, xmax, lo, hi, n);
}
}  // namespace

// x: [B, n]; e: [B] (finite, >= 0, already rounded up to T); xmin, xmax: [n] or empty (no bound);
// lo, hi: [B, n] out. Writes lo = max(down(x - e), xmin), hi = min(up(x + e), xmax) and returns the OR of
//   1: some x is NaN or infinite, 2: some x -+ e overflows T (lo or hi before clipping is infinite),
//   4: some x < xmin, 8: some x > xmax
// (0: the region is valid). The caller raises the errors (fastcert.api.make_region); with flag 1 the
// other flags and the outputs mean nothing.
template <typename T>
int region_box(const View<T>& x, const View<T>& e, const View<T>& xmin, const View<T>& xmax, View<T>& lo, View<T>& hi) {
  const py::ssize_t B = e.size(), N = x.size();
  if (B == 0 || N % B != 0) throw std::invalid_argument("region_box: x size is not a multiple of the batch");
  const py::ssize_t n = N / B;
  expect_size(lo.size(), N, "lo");
  expect_size(hi.size(), N, "hi");
  if (xmin.size() != 0) expect_size(xmin.size(), n, "xmin");
  if (xmax.size() != 0) expect_size(xmax.size(), n, "xmax");
  const T* X = ro(x, "x");
  const T* E = ro(e, "e");
  const T* XN = xmin.size() ? ro(xmin, "xmin") : nullptr;
  const T* XX = xmax.size() ? ro(xmax, "xmax") : nullptr;
  T* L = mut(lo, "lo");
  T* H = mut(hi, "hi");
  int flags = 0;
  for (py::ssize_t b = 0; b < B; ++b) flags |= region_row_f(X + b * n, E[b], XN, XX, L + b * n, H + b * n, n);
  return flags;
}
template int region_box<float>(const View<float>&, const View<float>&, const View<float>&, const View<float>&,
                               View<float>&, View<float>&);
template int region_box<double>(const View<double>&, const View<double>&, const View<double>&, const View<double>&,
                                View<double>&, View<double>&);

}  // namespace fastcert
