// Declarations of every kernel exported by fastcert._C (templated on float / double).
#pragma once
#include "fastcert/common.h"

namespace fastcert {
// The lower slope of an unstable ReLU (exposed to Python by name as _C.LowerSlope).
enum class LowerSlope { adaptive, parallel, zero, one };

template <typename T> void interval_prep(const View<T>& l, const View<T>& u, View<T>& c, View<T>& r, View<T>& h);
template <typename T>
void interval_finish(const View<T>& mc, const View<T>& mr, View<T>& mg, const View<T>& absb, double gamma, double tiny,
                     View<T>& l, View<T>& u);
template <typename T>
void interval_prep_rows(const View<T>& l, const View<T>& u, View<T>& c, View<T>& r, View<T>& cmax, View<T>& c2);
template <typename T>
void interval_finish_rows(View<T>& mc, View<T>& mr, const View<T>& cmax, const View<T>& c2, const View<T>& rowabs,
                          const View<T>& rownorm, const View<T>& absb, double gamma, double tiny, View<T>& out_g);
template <typename T>
void interval_dense(const View<T>& l, const View<T>& u, const View<T>& W, const View<T>& absW, const View<T>& b,
                    const View<T>& rowabs, const View<T>& rownorm, const View<T>& absb, double gamma, double tiny,
                    View<T>& out_l, View<T>& out_u, View<T>& out_g, View<T>& work);
template <typename T>
void interval_dense_center(const View<T>& l, const View<T>& u, const View<double>& W64, const View<T>& absW,
                           const View<double>& b64, const View<T>& rowabs, const View<T>& rownorm, const View<T>& absb,
                           double gamma, double tiny, double gamma_back, View<T>& out_l, View<T>& out_u, View<T>& out_g,
                           View<T>& out_w, View<T>& out_c, View<double>& out_v, View<T>& work, View<double>& work64);
template <typename T> void relu_interval(const View<T>& l, const View<T>& u, View<T>& ol, View<T>& ou);
template <typename T> void dense_forward(const View<T>& x, const View<T>& W, const View<T>& b, View<T>& out);
template <typename T> void dense_backward(const View<T>& lam, const View<T>& W, View<T>& out);
template <typename T>
void relu_relax(const View<T>& l, const View<T>& u, LowerSlope mode, View<T>& lo_slope, View<T>& up_slope, View<T>& up_bias);
template <typename T>
void backward_act(const View<T>& lam, const View<T>& lo_s, const View<T>& up_s, const View<T>& lo_b, const View<T>& up_b,
                  const View<T>& zmag, View<T>& out, View<T>& bias, View<T>& mag, double gamma_prod, double gamma_sum,
                  View<T>& bias_hi);
template <typename T>
void bias_mag(const View<T>& lam, const View<T>& bvec, const View<T>& g, View<T>& bias, View<T>& mag, double gamma_g,
              double gamma_b, View<T>& bias_hi);
template <typename T>
void concretize(const View<T>& lam, const View<T>& x0, const View<T>& l0, const View<T>& u0, const View<T>& eps, int p,
                const View<T>& bias, const View<T>& mag, double gamma, View<T>& out, const View<T>& bias_hi,
                View<T>& out_hi);
template <typename T>
void conv_forward(const View<T>& x, const View<T>& Wt, const View<T>& b, View<T>& out, int H, int W, int sh, int sw,
                  int ph, int pw, View<T>& work);
template <typename T>
void interval_conv(const View<T>& l, const View<T>& u, const View<T>& Wt, const View<T>& absW, const View<T>& b,
                   double gamma, double tiny, View<T>& out_l, View<T>& out_u, View<T>& out_g, int H, int W, int sh,
                   int sw, int ph, int pw, int chunk, const View<T>& wsum);
template <typename T> bool all_finite(const View<T>& x);
template <typename T>
int region_box(const View<T>& x, const View<T>& e, const View<T>& xmin, const View<T>& xmax, View<T>& lo, View<T>& hi);
template <typename T>
void eval_err_max(const View<T>& g, const View<double>& rowabs, const View<double>& emax_in, double gamma64, double uf,
                  double lip, const View<T>& post_l, const View<T>& post_u, double rel, double abs_term,
                  View<double>& emax_out);
template <typename T>
void conv_backward(const View<T>& lam, const View<T>& Wt, View<T>& out, int H, int W, int sh, int sw, int ph, int pw,
                   View<T>& work);
template <typename T>
void act_conv_backward(const View<T>& lam, const View<T>& lo_s, const View<T>& up_s, const View<T>& up_b,
                       const View<T>& zmag, double gamma_prod, double gamma_sum, const View<T>& Wt, const View<T>& cbias,
                       const View<T>& g, double gamma_g, double gamma_b, View<T>& out, View<T>& bias, View<T>& mag,
                       View<T>& bias_hi, int H, int W, int sh, int sw, int ph, int pw, int block_rows, View<T>& work);
template <typename T>
void act_dense_backward(const View<T>& lam, const View<T>& lo_s, const View<T>& up_s, const View<T>& up_b,
                        const View<T>& zmag, double gamma_prod, double gamma_sum, const View<T>& W, const View<T>& bvec,
                        const View<T>& g, double gamma_g, double gamma_b, View<T>& out, View<T>& bias, View<T>& mag,
                        View<T>& bias_hi, int block_rows, View<T>& work, const View<double>& cv, const View<T>& cin);
template <typename T>
void affine_center(const View<T>& lam, const View<T>& lam_out, const View<double>& cv, const View<T>& cin,
                   const View<T>& w, View<T>& bias, View<T>& mag, View<T>& bias_hi);
// IBP of a chain of dense / conv2d / ReLU layers in one call (csrc/ibp/chain.cpp): fills lower, upper;
// returns a code (-1 success).
template <typename T>
py::ssize_t ibp_chain(const py::list& steps, const View<T>& l0, const View<T>& u0, const View<T>& C,
                      const View<T>& eps, double gamma64, View<T>& lower, View<T>& upper);
}  // namespace fastcert
