// Shared helpers for the fastcert core: array views, checks, BLAS wrappers, rounding helpers.
// The core never allocates memory that a caller sees: Python validates and allocates, kernels fill.
#pragma once
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cfenv>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include "cblas.h"
#include "fastcert/view.h"

namespace fastcert {
namespace py = pybind11;

// Every kernel takes View<T>s (fastcert/view.h): pointer + shape of a C-contiguous buffer of exactly T (a
// wrong dtype is a TypeError at the binding, never a copy).
template <typename T>
inline T* mut(const View<T>& a, const char* name) {
  if (!a.writeable) throw std::invalid_argument(std::string(name) + " must be writeable");
  return a.ptr;
}
template <typename T>
inline const T* ro(const View<T>& a, const char*) {
  return a.ptr;
}
inline void expect_size(py::ssize_t got, py::ssize_t want, const char* name) {
  if (got != want)
    throw std::invalid_argument(std::string(name) + ": expected " + std::to_string(want) + " elements, got " +
                                std::to_string(got));
}

// C[M,N] = alpha * op(A) op(B) + beta * C, row-major. A single-row (M == 1) or single-column
// (N == 1) product goes to GEMV: OpenBLAS's GEMM packs its operands even then, which made batch-1
// interval passes ~2x slower than the bandwidth-bound matrix-vector product. (Any summation order is
// covered by the callers' rounding bounds.)
#define FASTCERT_GEMM(T, GEMM, GEMV)                                                                           \
  inline void gemm(bool ta, bool tb, int M, int N, int K, T alpha, const T* A, int lda, const T* B, int ldb,   \
                   T beta, T* C, int ldc) {                                                                    \
    if (M == 1 && N > 1 && K > 0) {                                                                            \
      /* c[N] = op(B)^T a: B is [K,N] (ldb) or, transposed, [N,K]; C zeroed first when beta == 0 so that */    \
      /* whatever it held (even NaN) is ignored, whatever the BLAS's scal does with 0 * NaN */                  \
      if (beta == T(0)) std::fill(C, C + N, T(0));                                                             \
      GEMV(CblasRowMajor, tb ? CblasNoTrans : CblasTrans, tb ? N : K, tb ? K : N, alpha, B, ldb, A,            \
           ta ? lda : 1, beta, C, 1);                                                                          \
      return;                                                                                                  \
    }                                                                                                          \
    if (N == 1 && M > 1 && K > 0) {                                                                            \
      /* c[M] = op(A) b: A is [M,K] (lda) or, transposed, [K,M] */                                             \
      if (beta == T(0))                                                                                        \
        for (int i = 0; i < M; ++i) C[static_cast<py::ssize_t>(i) * ldc] = T(0);                               \
      GEMV(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, ta ? K : M, ta ? M : K, alpha, A, lda, B,            \
           tb ? 1 : ldb, beta, C, ldc);                                                                        \
      return;                                                                                                  \
    }                                                                                                          \
    GEMM(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, \
         B, ldb, beta, C, ldc);                                                                                \
  }
FASTCERT_GEMM(float, scipy_cblas_sgemm, scipy_cblas_sgemv)
FASTCERT_GEMM(double, scipy_cblas_dgemm, scipy_cblas_dgemv)
#undef FASTCERT_GEMM

// Below this many elements a kernel runs on the calling thread: waking an OpenMP team costs more.
// (On a shared 2-core machine a sleeping team can take a scheduler tick to wake, so this is high.)
constexpr py::ssize_t kParallelMin = 1 << 18;
// Kernels whose work is GEMMs (the fused backward steps) split rows over threads above this many
// multiply-adds: ~1 ms of one core's GEMM, where a team's wake-up (tens of microseconds) is noise.
constexpr py::ssize_t kParallelMacs = 1 << 22;
// Elementwise hot loops compiled once per vector width, the widest the CPU has picked at load time
// (GCC function multi-versioning through an ifunc): the build targets baseline x86-64 (SSE2), where the
// float64 rounding steps do not vectorize at all (no 64-bit integer compare) and float32 ones run 4 wide.
// Every clone does the same IEEE operations (-ffp-contract=off: no fused multiply-add), so the results
// are the same bits on every machine. Empty elsewhere (other compilers, architectures, no ifunc).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FASTCERT_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FASTCERT_SIMD_CLONES
#endif
// Samples per chunk of the fused interval convolution: a chunk's scratch (its c, r, h, their im2col
// columns and the three products) is kept near this many elements, so the GEMMs see several samples side
// by side when they are small and the finishing step reads their results in cache. 2^16 (256 KiB in
// float32: one sample per chunk on the CIFAR bench case) rather than 2^17: 10-25% faster there on one and
// two threads, most after another computation had evicted the caches (BENCHMARKS.md, issue #10 5b).
constexpr py::ssize_t kConvChunkElems = 1 << 16;

// Unit roundoff of T (half machine epsilon).
template <typename T>
constexpr T unit_roundoff() {
  return std::numeric_limits<T>::epsilon() / 2;
}
// Move x one step outward (down / up): a cheap way to make a rounded result a sound bound
// when its error is at most one ulp (used after elementwise libm calls and single products).
// Equal to std::nextafter(x, -/+inf) for every input (NaN and the infinity in that direction are
// returned unchanged), but inline bit arithmetic instead of a libm call.
template <typename T>
inline T up(T x) {
  using U = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
  static_assert(sizeof(T) == sizeof(U), "float32 / float64 only");
  // branch-free (selects only), so that loops calling it vectorize
  U b, tiny;
  const T dmin = std::numeric_limits<T>::denorm_min();
  std::memcpy(&b, &x, sizeof b);
  std::memcpy(&tiny, &dmin, sizeof tiny);
  U nb = x > 0 ? b + 1 : b - 1;  // positive: larger magnitude; negative: smaller magnitude
  nb = x == 0 ? tiny : nb;
  nb = (x != x || x == std::numeric_limits<T>::infinity()) ? b : nb;
  T r;
  std::memcpy(&r, &nb, sizeof r);
  return r;
}
template <typename T>
inline T down(T x) {
  return -up(-x);
}
// up(x) for x whose sign bit is clear (+0, positive, +inf) or NaN: equal to up(x) there, in a third of its
// instructions (bits + 1, except that NaN and +inf stay). The finishing steps of the interval kernels
// round chains of sums and products of nonnegative terms, each with a positive term (tiny) in it; there
// every step but the last two (c -+ rad) meets only such operands, and the full up() per step made the
// finishing loop the most expensive part of a small convolution's interval step.
// NOT for negative numbers or -0 (bits + 1 would step a negative number down).
template <typename T>
inline T up_pos(T x) {
  using U = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
  U b;
  std::memcpy(&b, &x, sizeof b);
  const U nb = x < std::numeric_limits<T>::infinity() ? b + 1 : b;  // false for NaN and +inf
  T r;
  std::memcpy(&r, &nb, sizeof r);
  return r;
}
// up(x) for x the rounded result of ONE addition or subtraction, except that 0 stays 0: under round to
// nearest with gradual underflow a rounded sum or difference is 0 only when the exact one is 0 (and the
// max of two such results is <= 0 only when both exact ones are), so no step is needed there. The step
// would turn the radius of every degenerate interval (a dead ReLU: l = u = 0) into the smallest
// subnormal, and subnormal operands made the products that follow (GEMMs) 10-20x slower.
template <typename T>
inline T up_unless_zero(T x) {
  return x == T(0) ? T(0) : up(x);
}

// The T number nearest below / above the double x (x itself when representable): round to nearest,
// then one step outward where that went the wrong way. +-inf when x is beyond T's range.
template <typename T>
inline T down_from_double(double x) {
  T t = static_cast<T>(x);
  return static_cast<double>(t) > x ? down(t) : t;
}
template <typename T>
inline T up_from_double(double x) {
  T t = static_cast<T>(x);
  return static_cast<double>(t) < x ? up(t) : t;
}

// gamma_n for float64 sums, as fastcert.rounding.gamma_n: 1.01 (n+2) u / (1 - (n+2) u).
inline double gamma_n64(py::ssize_t n) {
  const double k = static_cast<double>(n + 2) * unit_roundoff<double>();
  return 1.01 * k / (1.0 - k);
}

// The smallest positive (subnormal) number of T. Under IEEE gradual underflow a rounded product or
// quotient is (exact)(1 + d) + e with |d| <= u and |e| <= eta/2 (additions have no e term), so a sum of
// n rounded products carries, besides the relative gamma_n term, an absolute error of at most n * eta.
template <typename T>
constexpr T eta() {
  return std::numeric_limits<T>::denorm_min();
}

// A bound on the absolute (underflow) part of the error of a sum of n rounded products: 2(n+2) eta
// (twice the n * eta of the model above, so the rounding of the relative terms' own magnitudes is
// covered too). Exact in T for any n < 2^22.
template <typename T>
inline T underflow_slack(py::ssize_t n) {
  return up(static_cast<T>(2 * (n + 2)) * eta<T>());
}

// The floating-point environment the rounding analysis assumes: round to nearest, and gradual
// underflow (no flush-to-zero / denormals-are-zero, which torch.set_flush_denormal(True) turns on).
inline bool fp_env_ok() {
  if (std::fegetround() != FE_TONEAREST) return false;
  volatile double dmin = std::numeric_limits<double>::denorm_min();
  volatile double tiny = std::numeric_limits<double>::min();
  volatile float fmin = std::numeric_limits<float>::denorm_min();
  const double half = tiny / 2;  // 0 under flush-to-zero
  const double daz = dmin + 0.0;  // 0 under denormals-are-zero
  const float fdaz = fmin * 1.0f;
  return half != 0 && daz != 0 && fdaz != 0;
}

// An upper bound on ||v||_2 (n entries), never spoiled by underflow or overflow of the squares: the
// entries are scaled by a power of two that brings the largest to [0.5, 1) (as BLAS nrm2 scales), so
// the sum of squares is >= 1/4 and what underflow loses (at most eta per scaled entry and per square)
// is bounded explicitly: ||y|| <= sqrt((ss + 2n eta)(1 + gamma)) + n eta for the scaled y. gamma must
// cover a sum of n rounded squares (gamma_n). Overflow of the result gives +inf (still an upper bound).
template <typename T>
inline T l2_norm_upper(const T* v, py::ssize_t n, T gamma) {
  T amax = 0;
#pragma omp simd reduction(max : amax)
  for (py::ssize_t j = 0; j < n; ++j) amax = std::max(amax, std::fabs(v[j]));
  if (amax == T(0)) return T(0);
  if (!(amax <= std::numeric_limits<T>::max())) return amax;  // inf (an upper bound) or NaN (propagated)
  int e = 0;
  std::frexp(amax, &e);  // amax = f 2^e, f in [0.5, 1)
  // 2^-e in two factors, each representable even when 2^-e alone is not (e near the exponent limits)
  const int e1 = -e / 2, e2 = -e - e1;
  const T s1 = std::ldexp(T(1), e1), s2 = std::ldexp(T(1), e2);
  T ss = 0;
#pragma omp simd reduction(+ : ss)
  for (py::ssize_t j = 0; j < n; ++j) {
    const T y = (v[j] * s1) * s2;
    ss += y * y;
  }
  const T tn = static_cast<T>(2 * n) * eta<T>();
  T r = up(std::sqrt(up(up(ss + up(tn)) * up(T(1) + gamma))));
  r = up(r + up(tn));
  // back to the original scale: 2^e = 1/(s1 s2), again in two exact-or-rounded-up steps
  return up(up(r * std::ldexp(T(1), -e1)) * std::ldexp(T(1), -e2));
}
}  // namespace fastcert
