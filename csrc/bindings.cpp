// The one PYBIND11_MODULE of fastcert: every exported kernel is listed here.
// Each kernel exists for float32 and float64; pybind11 picks the overload by dtype, and since the
// View<T> caster (fastcert/view.h) does not convert, a dtype mismatch is a TypeError rather than a silent copy.
#include <dirent.h>
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <utility>
#include <vector>

#include "fastcert/common.h"
#include "fastcert/kernels.h"
#include "fastcert/pool.h"

namespace py = pybind11;
using namespace fastcert;

namespace fastcert {
void def_diff_ops(py::module_& m);  // csrc/diff/ops.cpp: kernels of the differentiable ops
void def_jacobian(py::module_& m);  // csrc/jac/jacobian.cpp: rigorous Jacobian bound steps (Fast-Lip)
}

template <typename T>
static void step_outward(const View<T>& x, View<T>& out_up, View<T>& out_down) {
  expect_size(out_up.size(), x.size(), "out_up");
  expect_size(out_down.size(), x.size(), "out_down");
  const T* X = ro(x, "x");
  T* U = mut(out_up, "out_up");
  T* D = mut(out_down, "out_down");
  for (py::ssize_t i = 0; i < x.size(); ++i) {
    U[i] = up(X[i]);
    D[i] = down(X[i]);
  }
}

template <typename T>
static void step_up_pos(const View<T>& x, View<T>& out) {
  expect_size(out.size(), x.size(), "out");
  const T* X = ro(x, "x");
  T* O = mut(out, "out");
  for (py::ssize_t i = 0; i < x.size(); ++i) O[i] = up_pos(X[i]);
}

template <typename T>
static void def_all(py::module_& m) {
  m.def("_step_up_pos", &step_up_pos<T>, py::arg("x").noconvert(), py::arg("out").noconvert(),
        "Test hook: the core's up_pos() rounding step (for +0, positive numbers, +inf and NaN), elementwise.");
  m.def("_step_outward", &step_outward<T>, py::arg("x").noconvert(), py::arg("out_up").noconvert(),
        py::arg("out_down").noconvert(), "Test hook: the core's up()/down() rounding steps, elementwise.");
  m.def("interval_prep", &interval_prep<T>, py::arg("l").noconvert(), py::arg("u").noconvert(), py::arg("c").noconvert(), py::arg("r").noconvert(), py::arg("h").noconvert());
  m.def("interval_finish", &interval_finish<T>, py::arg("mc").noconvert(), py::arg("mr").noconvert(), py::arg("mg").noconvert(), py::arg("absb").noconvert(), py::arg("gamma"), py::arg("tiny"), py::arg("l").noconvert(), py::arg("u").noconvert());
  m.def("interval_prep_rows", &interval_prep_rows<T>, py::arg("l").noconvert(), py::arg("u").noconvert(), py::arg("c").noconvert(), py::arg("r").noconvert(), py::arg("cmax").noconvert(), py::arg("c2").noconvert());
  m.def("interval_finish_rows", &interval_finish_rows<T>, py::arg("mc").noconvert(), py::arg("mr").noconvert(), py::arg("cmax").noconvert(), py::arg("c2").noconvert(), py::arg("rowabs").noconvert(), py::arg("rownorm").noconvert(), py::arg("absb").noconvert(), py::arg("gamma"), py::arg("tiny"), py::arg("out_g").noconvert());
  m.def("interval_dense", &interval_dense<T>, py::arg("l").noconvert(), py::arg("u").noconvert(), py::arg("W").noconvert(), py::arg("absW").noconvert(), py::arg("b").noconvert(), py::arg("rowabs").noconvert(), py::arg("rownorm").noconvert(), py::arg("absb").noconvert(), py::arg("gamma"), py::arg("tiny"), py::arg("out_l").noconvert(), py::arg("out_u").noconvert(), py::arg("out_g").noconvert(), py::arg("work").noconvert());
  m.def("interval_dense_center", &interval_dense_center<T>, py::arg("l").noconvert(), py::arg("u").noconvert(), py::arg("W64").noconvert(), py::arg("absW").noconvert(), py::arg("b64").noconvert(), py::arg("rowabs").noconvert(), py::arg("rownorm").noconvert(), py::arg("absb").noconvert(), py::arg("gamma"), py::arg("tiny"), py::arg("gamma_back"), py::arg("out_l").noconvert(), py::arg("out_u").noconvert(), py::arg("out_g").noconvert(), py::arg("out_w").noconvert(), py::arg("out_c").noconvert(), py::arg("out_v").noconvert(), py::arg("work").noconvert(), py::arg("work64").noconvert());
  m.def("relu_interval", &relu_interval<T>, py::arg("l").noconvert(), py::arg("u").noconvert(), py::arg("out_l").noconvert(), py::arg("out_u").noconvert());
  m.def("dense_forward", &dense_forward<T>, py::arg("x").noconvert(), py::arg("W").noconvert(), py::arg("b").noconvert(), py::arg("out").noconvert());
  m.def("dense_backward", &dense_backward<T>, py::arg("lam").noconvert(), py::arg("W").noconvert(), py::arg("out").noconvert());
  m.def("relu_relax", &relu_relax<T>, py::arg("l").noconvert(), py::arg("u").noconvert(), py::arg("mode"), py::arg("lo_slope").noconvert(), py::arg("up_slope").noconvert(), py::arg("up_bias").noconvert());
  m.def("backward_act", &backward_act<T>, py::arg("lam").noconvert(), py::arg("lo_slope").noconvert(), py::arg("up_slope").noconvert(), py::arg("lo_bias").noconvert(), py::arg("up_bias").noconvert(), py::arg("zmag").noconvert(), py::arg("out").noconvert(), py::arg("bias").noconvert(), py::arg("mag").noconvert(), py::arg("gamma_prod"), py::arg("gamma_sum"), py::arg("bias_hi").noconvert());
  m.def("bias_mag", &bias_mag<T>, py::arg("lam").noconvert(), py::arg("bvec").noconvert(), py::arg("g").noconvert(), py::arg("bias").noconvert(), py::arg("mag").noconvert(), py::arg("gamma_g"), py::arg("gamma_b"), py::arg("bias_hi").noconvert());
  m.def("concretize", &concretize<T>, py::arg("lam").noconvert(), py::arg("x0").noconvert(), py::arg("l0").noconvert(), py::arg("u0").noconvert(), py::arg("eps").noconvert(), py::arg("p"), py::arg("bias").noconvert(), py::arg("mag").noconvert(), py::arg("gamma"), py::arg("out").noconvert(), py::arg("bias_hi").noconvert(), py::arg("out_hi").noconvert());
  m.def("conv_forward", &conv_forward<T>, py::arg("x").noconvert(), py::arg("W").noconvert(), py::arg("b").noconvert(), py::arg("out").noconvert(), py::arg("H"), py::arg("W_in"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("work").noconvert());
  m.def(
      "interval_conv",
      [](const View<T>& l, const View<T>& u, const View<T>& W, const View<T>& absW, const View<T>& b, double gamma,
         double tiny, View<T>& out_l, View<T>& out_u, View<T>& out_g, int H, int W_in, int sh, int sw, int ph, int pw,
         int chunk, const py::object& wsum) {
        View<T> ws;  // empty: no kernel sums given
        if (!wsum.is_none()) ws = wsum.cast<View<T>>();
        interval_conv<T>(l, u, W, absW, b, gamma, tiny, out_l, out_u, out_g, H, W_in, sh, sw, ph, pw, chunk, ws);
      },
      py::arg("l").noconvert(), py::arg("u").noconvert(), py::arg("W").noconvert(), py::arg("absW").noconvert(),
      py::arg("b").noconvert(), py::arg("gamma"), py::arg("tiny"), py::arg("out_l").noconvert(),
      py::arg("out_u").noconvert(), py::arg("out_g").noconvert(), py::arg("H"), py::arg("W_in"), py::arg("sh"),
      py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("chunk") = 0, py::arg("wsum") = py::none());
  m.def("all_finite", &all_finite<T>, py::arg("x").noconvert(), "Whether every entry of x is finite.");
  m.def("region_box", &region_box<T>, py::arg("x").noconvert(), py::arg("e").noconvert(), py::arg("xmin").noconvert(),
        py::arg("xmax").noconvert(), py::arg("lo").noconvert(), py::arg("hi").noconvert(),
        "The input box of fastcert.api.make_region; returns flags (1 x not finite, 2 overflow, 4 below xmin, "
        "8 above xmax).");
  m.def("eval_err_max", &eval_err_max<T>, py::arg("g").noconvert(), py::arg("rowabs").noconvert(),
        py::arg("emax_in").noconvert(), py::arg("gamma64"), py::arg("uf"), py::arg("lip"), py::arg("post_l").noconvert(),
        py::arg("post_u").noconvert(), py::arg("rel"), py::arg("abs_term"), py::arg("emax_out").noconvert());
  m.def("conv_backward", &conv_backward<T>, py::arg("lam").noconvert(), py::arg("W").noconvert(), py::arg("out").noconvert(), py::arg("H"), py::arg("W_in"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("work").noconvert());
  m.def("act_conv_backward", &act_conv_backward<T>, py::arg("lam").noconvert(), py::arg("lo_slope").noconvert(),
        py::arg("up_slope").noconvert(), py::arg("up_bias").noconvert(), py::arg("zmag").noconvert(),
        py::arg("gamma_prod"), py::arg("gamma_sum"), py::arg("W").noconvert(), py::arg("cbias").noconvert(),
        py::arg("g").noconvert(), py::arg("gamma_g"), py::arg("gamma_b"), py::arg("out").noconvert(),
        py::arg("bias").noconvert(), py::arg("mag").noconvert(), py::arg("bias_hi").noconvert(), py::arg("H"),
        py::arg("W_in"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("block_rows"),
        py::arg("work").noconvert());
  m.def("act_dense_backward", &act_dense_backward<T>, py::arg("lam").noconvert(), py::arg("lo_slope").noconvert(),
        py::arg("up_slope").noconvert(), py::arg("up_bias").noconvert(), py::arg("zmag").noconvert(),
        py::arg("gamma_prod"), py::arg("gamma_sum"), py::arg("W").noconvert(), py::arg("bvec").noconvert(),
        py::arg("g").noconvert(), py::arg("gamma_g"), py::arg("gamma_b"), py::arg("out").noconvert(),
        py::arg("bias").noconvert(), py::arg("mag").noconvert(), py::arg("bias_hi").noconvert(),
        py::arg("block_rows"), py::arg("work").noconvert(), py::arg("v").noconvert(), py::arg("cin").noconvert());
  m.def("ibp_chain", &ibp_chain<T>, py::arg("steps"), py::arg("l0").noconvert(), py::arg("u0").noconvert(),
        py::arg("C").noconvert(), py::arg("eps").noconvert(), py::arg("gamma64"), py::arg("out_lower").noconvert(),
        py::arg("out_upper").noconvert(),
        "IBP of a chain of dense / conv2d / ReLU layers in one call (see csrc/ibp/chain.cpp): fills out_lower, "
        "out_upper [B, S]; returns -1 on success, else the overflow code.");
  m.def("affine_center", &affine_center<T>, py::arg("lam").noconvert(), py::arg("lam_out").noconvert(),
        py::arg("v").noconvert(), py::arg("cin").noconvert(), py::arg("w").noconvert(), py::arg("bias").noconvert(),
        py::arg("mag").noconvert(), py::arg("bias_hi").noconvert());
}

extern "C" char* scipy_openblas_get_config(void);
#ifdef FASTCERT_WITH_CUDA
extern "C" int fastcert_cuda_device_count();
#endif

namespace {
// The threads of this process as (tid, start time): a thread created since the last check (e.g. an
// OpenMP worker started while flush-to-zero was on) changes the set. Start times (clock ticks since boot)
// make a reused tid count as a new thread. Empty if /proc is unreadable (then every call checks).
std::vector<std::pair<long, unsigned long long>> thread_set() {
  std::vector<std::pair<long, unsigned long long>> out;
  DIR* d = opendir("/proc/self/task");
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    const long tid = std::strtol(e->d_name, nullptr, 10);
    unsigned long long start = 0;
    const std::string path = std::string("/proc/self/task/") + e->d_name + "/stat";
    if (FILE* f = std::fopen(path.c_str(), "r")) {
      char buf[1024];
      const size_t k = std::fread(buf, 1, sizeof(buf) - 1, f);
      std::fclose(f);
      buf[k] = 0;
      // field 22 (starttime) counted after the ")" that ends the command name (field 2)
      const char* p = std::strrchr(buf, ')');
      for (int field = 2; p && field < 22; ++field) p = std::strchr(p + 1, ' ');
      if (p) start = std::strtoull(p + 1, nullptr, 10);
    }
    out.emplace_back(tid, start);
  }
  closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

// OpenMP's workers keep the floating-point mode they were created with (flush-to-zero when torch started
// them under torch.set_flush_denormal(True)): they are checked in an OpenMP region. That region is the
// expensive part in a default environment (OMP_WAIT_POLICY unset: the team spin-waits, and on a busy
// machine a preempted worker stalls it for a scheduler tick, ~10 ms a call measured), and a worker's mode
// never changes after its creation, so the region runs only when the thread set differs from the one
// last found good (per calling thread: each has its own OpenMP pool).
bool fp_env_ok_all() {
  if (!fp_env_ok()) return false;
  thread_local std::vector<std::pair<long, unsigned long long>> good;
  thread_local int good_threads = 0;
  // inside fastcert._ext.torch_serial() torch's count is 1 but pool_threads() keeps the caller's: the
  // workers torch used before (e.g. to build the input region) are that many
  const int nt = std::max(omp_get_max_threads(), pool_threads());
  auto now = thread_set();
  if (!now.empty() && now == good && nt <= good_threads) return true;
  int bad = 0;
#pragma omp parallel num_threads(nt) reduction(+ : bad)
  bad += fp_env_ok() ? 0 : 1;
  if (bad != 0) return false;
  good = thread_set();  // after the region: any worker it started is in the set and was checked
  good_threads = nt;
  return true;
}
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastcert compiled core (no libtorch, no numpy: kernels take pointer + shape views of C-contiguous float32/float64 tensors or buffers)";
  py::enum_<LowerSlope>(m, "LowerSlope", "The lower slope of an unstable ReLU neuron (relu_relax).")
      .value("adaptive", LowerSlope::adaptive)
      .value("parallel", LowerSlope::parallel)
      .value("zero", LowerSlope::zero)
      .value("one", LowerSlope::one);
  def_diff_ops(m);
  def_jacobian(m);
  def_all<float>(m);
  def_all<double>(m);
  m.def("fp_env_ok", &fp_env_ok_all,
        "Whether this thread and every OpenMP worker of its pool round to nearest with gradual underflow (no "
        "flush-to-zero / denormals-are-zero), as the core's rounding analysis assumes. fastcert's own pool "
        "adopts the caller's floating-point environment per job; torch's OpenMP workers (which run the "
        "elementwise torch operations of a bound computation) are checked in an OpenMP region, again only "
        "when the process's set of threads has changed since the last successful check.");
  m.def("set_pool_threads", &set_pool_threads, py::arg("n"),
        "Fix the number of threads of the core's parallel loops on the calling thread (0: follow "
        "omp_get_max_threads()); returns the previous setting.");
  m.def(
      "first_nonfinite",
      [](const py::list& xs) -> py::ssize_t {
        py::ssize_t i = 0;
        for (const py::handle h : xs) {
          bool ok;
          py::detail::make_caster<View<float>> f32;
          py::detail::make_caster<View<double>> f64;
          if (f32.load(h, false)) ok = all_finite<float>(py::detail::cast_op<View<float>&>(f32));
          else if (f64.load(h, false)) ok = all_finite<double>(py::detail::cast_op<View<double>&>(f64));
          else throw std::invalid_argument("first_nonfinite: every item must be a C-contiguous float32 or float64 tensor");
          if (!ok) return i;
          ++i;
        }
        return -1;
      },
      py::arg("xs"),
      "Index of the first array in the list with a NaN or infinite entry, -1 if none (the interval pass's "
      "overflow check in one call).");
  m.def("pool_burst", &pool_burst, py::arg("begin"),
        "Open (True) or close (False) a burst of kernel calls: while one is open, the pool's idle workers "
        "poll for the next job for up to ~2 ms instead of ~10 us before sleeping. fastcert._ext.torch_serial() "
        "brackets each bound computation with it.");
  m.def("omp_max_threads", []() { return pool_threads(); },
        "Threads a parallel loop of the core would use now, caller included (sizes per-thread workspaces): "
        "omp_get_max_threads(), so OMP_NUM_THREADS and torch.set_num_threads() apply.");
  m.def("build_info", []() {
    py::dict d;
    d["blas"] = FASTCERT_BLAS_NAME;
    d["blas_config"] = std::string(scipy_openblas_get_config());
#ifdef _OPENMP
    d["openmp"] = py::int_(_OPENMP);
    d["omp_max_threads"] = pool_threads();
    d["threads"] = "fastcert pool (sleeping workers, chunked loops; OpenMP only for SIMD and thread counts)";
#else
    d["openmp"] = py::none();
#endif
#ifdef FASTCERT_WITH_CUDA
    d["cuda"] = true;
    d["cuda_devices"] = fastcert_cuda_device_count();
#else
    d["cuda"] = false;
#endif
    d["compiler"] = std::string(__VERSION__);
    return d;
  });
}
