// IBP of a chain in one core call: the interval pass, the overflow check, the last layer's backward step
// fused with the specification C, the concretization, the float64 evaluation slack and the final outward
// rounding. The same kernels, in the same order and with the same arguments, as the Python-driven path
// (python/fastcert/algorithms/linear_bounds.py, slack.py, state.finish), whose per-call cost (~25 kernel
// calls, ~600 Python function calls, ~40 tensor allocations) was about a third of an IBP call at batch 32
// on the CNN bench cases. The Python side (algorithms/ibp_chain.py) decides which chains qualify (dense,
// conv2d and plain ReLU layers, a dense last layer, no folded BatchNorm terms) and prepares each layer's
// constants once per dtype; anything else takes the Python path.
//
// Where this file computes what the Python path computes in numpy (the underflow units of the last step,
// the evaluation slack's unfused steps, the output slack, the final rounding), the operations are the same
// IEEE operations in the same order (the build has -ffp-contract=off), except for the order of two sums
// that the Python path leaves to numpy (the float64 magnitude sum of the underflow units, the |C| Ef
// product): their rounding is covered by the factors the analysis already applies for *any* order
// ((1 + 4 (n + 2) 2^-53) and (1 + 1e-6)), so the bounds stay sound and agree with the Python path's to
// the last bits.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "fastcert/common.h"
#include "fastcert/kernels.h"

namespace fastcert {
namespace {

// The intermediate arrays of a call, carved from one block the calling thread keeps between calls: fresh
// blocks of these sizes (megabytes on the CNN bench cases) came back from the allocator unmapped on many
// calls, and faulting them in (~1000 page faults a call, ~3.5 us each measured on a virtual machine) cost
// more than the arithmetic. They live only inside the call (the kernels run no Python code, so the block
// is not reused meanwhile).
template <typename T>
class Arena {
 public:
  explicit Arena(size_t elems) {
    thread_local std::vector<T> block;
    if (block.size() < elems) block.resize(elems);
    p_ = block.data();
    left_ = elems;
  }
  View<T> take(std::vector<std::int64_t> shape) {
    size_t k = 1;
    for (auto d : shape) k *= static_cast<size_t>(d);
    if (k > left_) throw std::logic_error("ibp_chain: arena too small (internal)");
    View<T> a = View<T>::of(p_, std::move(shape));
    p_ += k;
    left_ -= k;
    return a;
  }

 private:
  T* p_ = nullptr;
  size_t left_ = 0;
};

// Item i of a step tuple as a view of the compute dtype (a tensor or a buffer, C-contiguous).
template <typename T>
View<T> arr_at(const py::tuple& t, size_t i, const char* what) {
  py::detail::make_caster<View<T>> conv;
  if (!conv.load(t[i], false))
    throw std::invalid_argument(std::string("ibp_chain: ") + what + " must be a C-contiguous array of the compute dtype");
  return py::detail::cast_op<View<T>>(std::move(conv));
}

// max(|l|, |u|) of entry i, in T (exact)
template <typename T>
inline T mag_at(const T* l, const T* u, py::ssize_t i) {
  const T a = std::fabs(l[i]), b = std::fabs(u[i]);
  return a > b ? a : b;
}

struct Step {
  enum Kind { relu, dense, conv } kind;
  py::tuple t;
  py::ssize_t n_out = 0;
};

// The state of one call: the steps, the box entering each layer (bl[j], bu[j]; bl[n], bu[n] the output box)
// and the magnitude g of each affine layer (G[gi[j]]).
template <typename T>
struct Chain {
  std::vector<Step> steps;
  py::ssize_t B = 0, S = 0, K = 0;
  std::vector<View<T>> bl, bu, G;
  std::vector<py::ssize_t> gi;
  py::ssize_t width(size_t j) const { return bl[j].size() / (B ? B : 1); }
};

std::vector<Step> parse_steps(const py::list& steps_in) {
  std::vector<Step> steps(steps_in.size());
  for (size_t j = 0; j < steps.size(); ++j) {
    py::handle h = steps_in[j];
    if (!py::isinstance<py::tuple>(h)) throw std::invalid_argument("ibp_chain: every step must be a tuple");
    steps[j].t = py::reinterpret_borrow<py::tuple>(h);
    const std::string kind = steps[j].t[0].cast<std::string>();
    if (kind == "relu") steps[j].kind = Step::relu;
    else if (kind == "dense") steps[j].kind = Step::dense;
    else if (kind == "conv2d") steps[j].kind = Step::conv;
    else throw std::invalid_argument("ibp_chain: unknown step kind " + kind);
  }
  if (steps.empty()) throw std::invalid_argument("ibp_chain: no layers");
  if (steps.back().kind != Step::dense) throw std::invalid_argument("ibp_chain: the last layer must be dense");
  return steps;
}

// The arena's size: every intermediate array of interval_pass and last_step.
template <typename T>
size_t arena_elems(const std::vector<Step>& steps, py::ssize_t w, py::ssize_t B, py::ssize_t S) {
  size_t elems = 3 * static_cast<size_t>(B * S);
  for (size_t j = 0; j < steps.size(); ++j) {
    const py::tuple& t = steps[j].t;
    if (steps[j].kind == Step::relu) {
      elems += 2 * static_cast<size_t>(B * w);
      continue;
    }
    const py::ssize_t m = steps[j].kind == Step::dense ? arr_at<T>(t, 1, "W").shape(0) : t[15].cast<py::ssize_t>();
    elems += 3 * static_cast<size_t>(B * m);
    if (steps[j].kind == Step::dense) elems += static_cast<size_t>(2 * B * w + 2 * B);
    if (j + 1 == steps.size()) elems += static_cast<size_t>(B * S * w);
    w = m;
  }
  return elems;
}

// linear_bounds._forward with cfg None: the box entering every layer and every affine layer's g.
template <typename T>
void interval_pass(Chain<T>& c, Arena<T>& arena) {
  const py::ssize_t B = c.B;
  for (size_t j = 0; j < c.steps.size(); ++j) {
    Step& st = c.steps[j];
    const py::tuple& t = st.t;
    const View<T>& l = c.bl[j];
    const View<T>& u = c.bu[j];
    const py::ssize_t n_in = c.width(j);
    if (st.kind == Step::relu) {
      View<T> lo = arena.take({B, n_in}), hi = arena.take({B, n_in});
      relu_interval<T>(l, u, lo, hi);
      st.n_out = n_in;
      c.bl.push_back(std::move(lo));
      c.bu.push_back(std::move(hi));
      continue;
    }
    const View<T> W = arr_at<T>(t, 1, "W"), absW = arr_at<T>(t, 2, "absW"), b = arr_at<T>(t, 3, "bias");
    const py::ssize_t m = st.kind == Step::dense ? W.shape(0) : t[15].cast<py::ssize_t>();
    View<T> lo = arena.take({B, m}), hi = arena.take({B, m}), g = arena.take({B, m});
    if (st.kind == Step::dense) {
      View<T> work = arena.take({2 * l.size() + 2 * B});
      interval_dense<T>(l, u, W, absW, b, arr_at<T>(t, 4, "rowabs"), arr_at<T>(t, 5, "rownorm"),
                        arr_at<T>(t, 6, "absb"), t[7].cast<double>(), t[8].cast<double>(), lo, hi, g, work);
    } else {
      interval_conv<T>(l, u, W, absW, b, t[4].cast<double>(), t[5].cast<double>(), lo, hi, g, t[6].cast<int>(),
                       t[7].cast<int>(), t[8].cast<int>(), t[9].cast<int>(), t[10].cast<int>(), t[11].cast<int>(), 0,
                       arr_at<T>(t, 12, "wsum"));
    }
    st.n_out = m;
    c.gi[j] = static_cast<py::ssize_t>(c.G.size());
    c.G.push_back(std::move(g));
    c.bl.push_back(std::move(lo));
    c.bu.push_back(std::move(hi));
  }
}

// slack.check_overflow: the index of the first non-finite array among every g and the output box's l, u; -1.
template <typename T>
py::ssize_t first_overflow(const Chain<T>& c) {
  py::ssize_t k = 0;
  for (const View<T>& g : c.G) {
    if (!all_finite<T>(g)) return k;
    ++k;
  }
  if (!all_finite<T>(c.bl.back())) return k;
  if (!all_finite<T>(c.bu.back())) return k + 1;
  return -1;
}

// The last (dense) layer's backward step fused with C, then concretization against its input box: fills
// lower, upper (linear_bounds._two_sided, symmetric, with slack.initial_mag for one affine step).
template <typename T>
void last_step(const Chain<T>& c, const View<T>& C, const View<T>& eps, Arena<T>& arena, View<T>& lower,
               View<T>& upper) {
  const py::ssize_t B = c.B, S = c.S;
  const size_t last = c.steps.size() - 1;
  const py::tuple& tl = c.steps[last].t;
  const View<T>& Ll = c.bl[last];
  const View<T>& Lu = c.bu[last];
  const py::ssize_t n_in = c.width(last);
  View<T> mag = arena.take({B, S}), bias = arena.take({B, S}), bias_hi = arena.take({B, S});
  // slack.underflow_units for an affine step (no relaxation: m = max(|l|, |u|)), as initial_mag rounds it
  const double back_len = static_cast<double>(tl[13].cast<py::ssize_t>());
  const double m_out = static_cast<double>(c.steps[last].n_out);
  const double infl = 1.0 + 4.0 * static_cast<double>(n_in + 2) * 0x1p-53;
  const double eta_t = static_cast<double>(eta<T>());
  const T* Lp = Ll.data();
  const T* Up = Lu.data();
  T* MG = mag.mutable_data();
  for (py::ssize_t b = 0; b < B; ++b) {
    double s = 0;
    for (py::ssize_t i = 0; i < n_in; ++i) s += static_cast<double>(mag_at(Lp, Up, b * n_in + i));
    const double a = (back_len + 2) * (s * infl) + (4 * m_out + static_cast<double>(n_in) + 12);
    const double v64 = ((0.0 + a) * (1 + 1e-12) + 1) * eta_t;
    T v = static_cast<T>(v64);
    if (static_cast<double>(v) < v64) v = std::nextafter(v, std::numeric_limits<T>::infinity());
    std::fill(MG + b * S, MG + (b + 1) * S, v);
  }
  std::fill(bias.mutable_data(), bias.mutable_data() + B * S, T(0));
  std::fill(bias_hi.mutable_data(), bias_hi.mutable_data() + B * S, T(0));
  bias_mag<T>(C, arr_at<T>(tl, 3, "bias"), c.G[c.gi[last]], bias, mag, tl[11].cast<double>(), tl[12].cast<double>(),
              bias_hi);
  View<T> lam = arena.take({B, S, n_in});
  dense_backward<T>(C, arr_at<T>(tl, 1, "W"), lam);
  concretize<T>(lam, Ll, Ll, Lu, eps, 0, bias, mag, tl[14].cast<double>(), lower, bias_hi, upper);
}

// slack.eval_slack up to the outputs: [B, K] bounds on a float64 evaluation's error of the outputs. E per
// neuron, or only its per-sample max (emax) where the next layer is affine and not diagonal.
template <typename T>
std::vector<double> eval_error(const Chain<T>& c, double gamma64) {
  const py::ssize_t B = c.B;
  const size_t n = c.steps.size();
  const double u64 = 0x1p-53;
  const double relu_abs = std::max(8 * eta<double>(), std::numeric_limits<double>::min());
  std::vector<double> emax(B, 0.0), E;  // E empty: only emax is kept
  py::ssize_t En = 0;                   // E's row length when held
  if (c.steps[0].kind == Step::relu) {  // an activation first reads the (zero) error per neuron
    En = c.width(0);
    E.assign(B * En, 0.0);
  }
  for (size_t j = 0; j < n; ++j) {
    const Step& st = c.steps[j];
    if (st.kind == Step::relu) {
      if (E.empty()) throw std::logic_error("ibp_chain: an activation after a fused step (two activations in a row)");
      const T* Pl = c.bl[j + 1].data();
      const T* Pu = c.bu[j + 1].data();
      for (py::ssize_t i = 0; i < B * En; ++i)
        E[i] = (1.0 * E[i] + (4 * u64) * static_cast<double>(mag_at(Pl, Pu, i))) + relu_abs;
      continue;
    }
    const size_t ia = st.kind == Step::dense ? 9 : 13;  // rowabs64, then uf64
    const View<double> rowabs64 = arr_at<double>(st.t, ia, "rowabs64 (float64)");
    const double uf = st.t[ia + 1].cast<double>();
    const View<T>& g = c.G[c.gi[j]];
    std::vector<double> e_in = emax;  // the largest incoming error per sample
    for (py::ssize_t b = 0; !E.empty() && b < B; ++b)
      e_in[b] = *std::max_element(E.begin() + b * En, E.begin() + (b + 1) * En);
    if (j + 2 < n && c.steps[j + 1].kind == Step::relu && c.steps[j + 2].kind != Step::relu) {
      // this layer and its activation in one kernel, as eval_slack fuses them
      std::vector<double> eo(static_cast<size_t>(B));
      const View<double> ein = View<double>::of(e_in.data(), {B});
      View<double> eout = View<double>::of(eo.data(), {B});
      eval_err_max<T>(g, rowabs64, ein, gamma64, uf, 1.0, c.bl[j + 2], c.bu[j + 2], 4 * u64, relu_abs, eout);
      std::copy(eo.begin(), eo.end(), emax.begin());
      E.clear();
      ++j;  // the activation is part of this step
      continue;
    }
    const py::ssize_t m = st.n_out;
    expect_size(rowabs64.size(), m, "rowabs64");
    const double* RA = rowabs64.data();
    const T* Gp = g.data();
    E.assign(B * m, 0.0);
    En = m;
    for (py::ssize_t b = 0; b < B; ++b)
      for (py::ssize_t i = 0; i < m; ++i)
        E[b * m + i] = (gamma64 * static_cast<double>(Gp[b * m + i]) + RA[i] * e_in[b]) + uf;
  }
  return E;  // the last layer is dense and never fused: E is [B, K]
}

// slack.output_slack (|C| (E + gamma64 max|f|) * (1 + 1e-6) + uf, rounded up to T), then state.finish (widen,
// refuse NaN, round outward). Returns false on a NaN.
template <typename T>
bool widen(const Chain<T>& c, const std::vector<double>& E, const View<T>& C, double gamma64, View<T>& lower,
           View<T>& upper) {
  const py::ssize_t B = c.B, S = c.S, K = c.K;
  const double ufK = 2.0 * static_cast<double>(K + 2) * eta<double>();
  const T* Ol = c.bl.back().data();
  const T* Ou = c.bu.back().data();
  const T* Cp = C.data();
  T* LO = lower.mutable_data();
  T* HI = upper.mutable_data();
  bool nan = false;
  std::vector<double> Ef(K);
  for (py::ssize_t b = 0; b < B; ++b) {
    for (py::ssize_t k = 0; k < K; ++k)
      Ef[k] = E[b * K + k] + gamma64 * static_cast<double>(mag_at(Ol, Ou, b * K + k));
    for (py::ssize_t s = 0; s < S; ++s) {
      const T* cr = Cp + (b * S + s) * K;
      double acc = 0;
      for (py::ssize_t k = 0; k < K; ++k) acc += std::fabs(static_cast<double>(cr[k])) * Ef[k];
      const double v = acc * (1 + 1e-6) + ufK;
      T r = static_cast<T>(v);
      if (static_cast<double>(r) < v) r = std::nextafter(r, std::numeric_limits<T>::infinity());
      const py::ssize_t o = b * S + s;
      const T lo = LO[o] - r, hi = HI[o] + r;
      nan = nan || std::isnan(lo) || std::isnan(hi);
      LO[o] = std::nextafter(lo, -std::numeric_limits<T>::infinity());
      HI[o] = std::nextafter(hi, std::numeric_limits<T>::infinity());
    }
  }
  return !nan;
}

}  // namespace

// steps: one tuple per layer (python/fastcert/algorithms/ibp_chain.py, ``chain_step``):
//   ("relu",)
//   ("dense", W, absW, b, rowabs, rownorm, absb, gamma, tiny, rowabs64, uf64, gamma_back, gamma_nout, back_len,
//    gamma_nin)
//   ("conv2d", W, absW, bias_c, gamma, tiny, H, W_in, sh, sw, ph, pw, wsum, rowabs64, uf64, n_out)
// l0, u0: [B, n0] the input box; C: [B, S, K]; eps: [B] (the region's, read by concretize's size check only);
// gamma64: the evaluation slack's factor (rounding.gamma_for(layers, float64)).
// lower, upper: [B, S] outputs (the caller allocates). Returns a code: -1 on success (lower, upper filled);
// k >= 0 the index of the first non-finite array among (the g of every affine layer in order, the output
// box's l, u) -- the interval pass overflowed; -2 a NaN after widening by the slack (overflow in the
// backward step). lower, upper hold nothing meaningful unless the code is -1.
template <typename T>
py::ssize_t ibp_chain(const py::list& steps_in, const View<T>& l0, const View<T>& u0, const View<T>& C,
                      const View<T>& eps, double gamma64, View<T>& lower, View<T>& upper) {
  if (l0.ndim() != 2 || u0.ndim() != 2) throw std::invalid_argument("ibp_chain: l0, u0 must be [B, n]");
  if (C.ndim() != 3) throw std::invalid_argument("ibp_chain: C must be [B, S, K]");
  expect_size(u0.size(), l0.size(), "u0");
  if (C.shape(0) != l0.shape(0)) throw std::invalid_argument("ibp_chain: C's batch differs from the box's");
  Chain<T> c;
  c.steps = parse_steps(steps_in);
  c.B = l0.shape(0);
  c.S = C.shape(1);
  c.K = C.shape(2);
  const size_t n = c.steps.size();
  c.gi.assign(n, -1);
  c.bl.reserve(n + 1);
  c.bu.reserve(n + 1);
  c.bl.push_back(l0);
  c.bu.push_back(u0);
  Arena<T> arena(arena_elems<T>(c.steps, c.width(0), c.B, c.S));
  interval_pass(c, arena);
  if (c.bl.back().size() != c.B * c.K)
    throw std::invalid_argument("ibp_chain: C's last dimension differs from the outputs");
  const py::ssize_t bad = first_overflow(c);
  if (bad >= 0) return bad;
  expect_size(lower.size(), c.B * c.S, "out_lower");
  expect_size(upper.size(), c.B * c.S, "out_upper");
  mut(lower, "out_lower");
  mut(upper, "out_upper");
  last_step(c, C, eps, arena, lower, upper);
  if (!widen(c, eval_error(c, gamma64), C, gamma64, lower, upper)) return -2;
  return -1;
}

template py::ssize_t ibp_chain<float>(const py::list&, const View<float>&, const View<float>&,
                                        const View<float>&, const View<float>&, double, View<float>&,
                                        View<float>&);
template py::ssize_t ibp_chain<double>(const py::list&, const View<double>&, const View<double>&,
                                        const View<double>&, const View<double>&, double, View<double>&,
                                        View<double>&);
}  // namespace fastcert
