// ReLU linear relaxations. For pre-activation bounds [l,u] they give, per neuron,
//   lo_slope*z  <=  relu(z)  <=  up_slope*z + up_bias      for all z in [l,u].
// The lower line has zero intercept for every slope in [0,1], so any slope in [0,1] is sound.
// The upper intercept is rounded so the line stays above relu at both ends of [l,u].
#include "fastcert/common.h"
#include "fastcert/kernels.h"
#include "fastcert/pool.h"

namespace fastcert {

// mode (the lower slope of an unstable neuron): adaptive (CROWN: 1 if u >= -l else 0), parallel (Fast-Lin / KW:
// u/(u-l)), zero, one.
template <typename T>
void relu_relax(const View<T>& l, const View<T>& u, LowerSlope mode, View<T>& lo_slope, View<T>& up_slope, View<T>& up_bias) {
  const py::ssize_t n = l.size();
  expect_size(u.size(), n, "u");
  expect_size(lo_slope.size(), n, "lo_slope");
  expect_size(up_slope.size(), n, "up_slope");
  expect_size(up_bias.size(), n, "up_bias");
  const T* L = ro(l, "l");
  const T* U = ro(u, "u");
  T* LS = mut(lo_slope, "lo_slope");
  T* US = mut(up_slope, "up_slope");
  T* UB = mut(up_bias, "up_bias");
parallel_for(n, grain_for(n, 1024), n > kParallelMin, [&](std::int64_t i0_, std::int64_t i1_, int) {
for (py::ssize_t i = static_cast<py::ssize_t>(i0_); i < static_cast<py::ssize_t>(i1_); ++i) {
    const T li = L[i], ui = U[i];
    if (li >= 0) {  // stably active: exact identity
      LS[i] = 1; US[i] = 1; UB[i] = 0;
    } else if (ui <= 0) {  // stably inactive: exact zero
      LS[i] = 0; US[i] = 0; UB[i] = 0;
    } else {
      T s = ui / (ui - li);
      s = std::min(std::max(s, T(0)), T(1));
      // Intercept t with s*l + t >= 0 and s*u + t >= u, each product rounded up by one ulp step.
      T t1 = up(up(-s * li));
      T t2 = up(up((T(1) - s) * ui));
      T t = std::max(t1, t2);
      US[i] = s;
      UB[i] = t;
      switch (mode) {
        case LowerSlope::adaptive: LS[i] = (ui >= -li) ? T(1) : T(0); break;
        case LowerSlope::parallel: LS[i] = s; break;
        case LowerSlope::zero: LS[i] = 0; break;
        case LowerSlope::one: LS[i] = 1; break;
      }
    }
  }
});
}

template void relu_relax<float>(const View<float>&, const View<float>&, LowerSlope, View<float>&, View<float>&, View<float>&);
template void relu_relax<double>(const View<double>&, const View<double>&, LowerSlope, View<double>&, View<double>&,
                                 View<double>&);
}  // namespace fastcert
