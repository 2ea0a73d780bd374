// Declarations of every kernel exported by fastcert._C (templated on float / double).
#pragma once
#include "fastcert/common.h"

namespace fastcert {
// The lower slope of an unstable ReLU (exposed to Python by name as _C.LowerSlope).
enum class LowerSlope { adaptive, parallel, zero, one };

template <typename T> void interval_prep(const Arr<T>& l, const Arr<T>& u, Arr<T>& c, Arr<T>& r, Arr<T>& h);
template <typename T>
void interval_finish(const Arr<T>& mc, const Arr<T>& mr, Arr<T>& mg, const Arr<T>& absb, double gamma, double tiny,
                     Arr<T>& l, Arr<T>& u);
template <typename T>
void interval_prep_rows(const Arr<T>& l, const Arr<T>& u, Arr<T>& c, Arr<T>& r, Arr<T>& cmax, Arr<T>& c2);
template <typename T>
void interval_finish_rows(Arr<T>& mc, Arr<T>& mr, const Arr<T>& cmax, const Arr<T>& c2, const Arr<T>& rowabs,
                          const Arr<T>& rownorm, const Arr<T>& absb, double gamma, double tiny, Arr<T>& out_g);
template <typename T>
void interval_dense(const Arr<T>& l, const Arr<T>& u, const Arr<T>& W, const Arr<T>& absW, const Arr<T>& b,
                    const Arr<T>& rowabs, const Arr<T>& rownorm, const Arr<T>& absb, double gamma, double tiny,
                    Arr<T>& out_l, Arr<T>& out_u, Arr<T>& out_g, Arr<T>& work);
template <typename T>
void interval_dense_center(const Arr<T>& l, const Arr<T>& u, const Arr<double>& W64, const Arr<T>& absW,
                           const Arr<double>& b64, const Arr<T>& rowabs, const Arr<T>& rownorm, const Arr<T>& absb,
                           double gamma, double tiny, double gamma_back, Arr<T>& out_l, Arr<T>& out_u, Arr<T>& out_g,
                           Arr<T>& out_w, Arr<T>& out_c, Arr<double>& out_v, Arr<T>& work, Arr<double>& work64);
template <typename T> void relu_interval(const Arr<T>& l, const Arr<T>& u, Arr<T>& ol, Arr<T>& ou);
template <typename T> void dense_forward(const Arr<T>& x, const Arr<T>& W, const Arr<T>& b, Arr<T>& out);
template <typename T> void dense_backward(const Arr<T>& lam, const Arr<T>& W, Arr<T>& out);
template <typename T>
void relu_relax(const Arr<T>& l, const Arr<T>& u, LowerSlope mode, Arr<T>& lo_slope, Arr<T>& up_slope, Arr<T>& up_bias);
template <typename T>
void backward_act(const Arr<T>& lam, const Arr<T>& lo_s, const Arr<T>& up_s, const Arr<T>& lo_b, const Arr<T>& up_b,
                  const Arr<T>& zmag, Arr<T>& out, Arr<T>& bias, Arr<T>& mag, double gamma_prod, double gamma_sum,
                  Arr<T>& bias_hi);
template <typename T>
void bias_mag(const Arr<T>& lam, const Arr<T>& bvec, const Arr<T>& g, Arr<T>& bias, Arr<T>& mag, double gamma_g,
              double gamma_b, Arr<T>& bias_hi);
template <typename T>
void concretize(const Arr<T>& lam, const Arr<T>& x0, const Arr<T>& l0, const Arr<T>& u0, const Arr<T>& eps, int p,
                const Arr<T>& bias, const Arr<T>& mag, double gamma, Arr<T>& out, const Arr<T>& bias_hi,
                Arr<T>& out_hi);
template <typename T>
void conv_forward(const Arr<T>& x, const Arr<T>& Wt, const Arr<T>& b, Arr<T>& out, int H, int W, int sh, int sw,
                  int ph, int pw, Arr<T>& work);
template <typename T>
void interval_conv(const Arr<T>& l, const Arr<T>& u, const Arr<T>& Wt, const Arr<T>& absW, const Arr<T>& b,
                   double gamma, double tiny, Arr<T>& out_l, Arr<T>& out_u, Arr<T>& out_g, int H, int W, int sh,
                   int sw, int ph, int pw, int chunk, const Arr<T>& wsum);
template <typename T> bool all_finite(const Arr<T>& x);
template <typename T>
int region_box(const Arr<T>& x, const Arr<T>& e, const Arr<T>& xmin, const Arr<T>& xmax, Arr<T>& lo, Arr<T>& hi);
template <typename T>
void eval_err_max(const Arr<T>& g, const Arr<double>& rowabs, const Arr<double>& emax_in, double gamma64, double uf,
                  double lip, const Arr<T>& post_l, const Arr<T>& post_u, double rel, double abs_term,
                  Arr<double>& emax_out);
template <typename T>
void conv_backward(const Arr<T>& lam, const Arr<T>& Wt, Arr<T>& out, int H, int W, int sh, int sw, int ph, int pw,
                   Arr<T>& work);
template <typename T>
void act_conv_backward(const Arr<T>& lam, const Arr<T>& lo_s, const Arr<T>& up_s, const Arr<T>& up_b,
                       const Arr<T>& zmag, double gamma_prod, double gamma_sum, const Arr<T>& Wt, const Arr<T>& cbias,
                       const Arr<T>& g, double gamma_g, double gamma_b, Arr<T>& out, Arr<T>& bias, Arr<T>& mag,
                       Arr<T>& bias_hi, int H, int W, int sh, int sw, int ph, int pw, int block_rows, Arr<T>& work);
template <typename T>
void act_dense_backward(const Arr<T>& lam, const Arr<T>& lo_s, const Arr<T>& up_s, const Arr<T>& up_b,
                        const Arr<T>& zmag, double gamma_prod, double gamma_sum, const Arr<T>& W, const Arr<T>& bvec,
                        const Arr<T>& g, double gamma_g, double gamma_b, Arr<T>& out, Arr<T>& bias, Arr<T>& mag,
                        Arr<T>& bias_hi, int block_rows, Arr<T>& work, const Arr<double>& cv, const Arr<T>& cin);
template <typename T>
void affine_center(const Arr<T>& lam, const Arr<T>& lam_out, const Arr<double>& cv, const Arr<T>& cin,
                   const Arr<T>& w, Arr<T>& bias, Arr<T>& mag, Arr<T>& bias_hi);
// IBP of a chain of dense / conv2d / ReLU layers in one call (csrc/ibp/chain.cpp): (lower, upper, code).
template <typename T>
py::tuple ibp_chain(const py::list& steps, const Arr<T>& l0, const Arr<T>& u0, const Arr<T>& C, const Arr<T>& eps,
                    double gamma64);
}  // namespace fastcert
