/* Row-wise float32 ops (qinfer/rows.h): LayerNormalization, Softmax, Erf, portable C.
 *
 * Design: LayerNormalization makes three passes over a row -- the mean, the variance about it (no
 * cancellation for rows far from zero, as a one-pass sum of squares would have), the output --
 * with its sums in double; Softmax three -- the max (NaN kept), exp(x - max) with its sum in
 * double, the scaling. exp and erf come from libm (expf for Softmax: the reference's numpy float32
 * exp is also within an ulp; erf in double, rounded once). */
#include <math.h>
#include "qinfer/rows.h"

void qi_layernorm_f32(size_t r_begin, size_t r_end, size_t cols, const float *x,
                      const float *scale, const float *bias, float eps, float *y) {
  for (size_t r = r_begin; r < r_end; r++) {
    const float *xr = x + r * cols;
    float *yr = y + r * cols;
    double s = 0.0;
    for (size_t j = 0; j < cols; j++) s += xr[j];
    const double mean = s / (double)cols;
    double v = 0.0;
    for (size_t j = 0; j < cols; j++) {
      const double d = (double)xr[j] - mean;
      v += d * d;
    }
    const double inv = 1.0 / sqrt(v / (double)cols + (double)eps);
    for (size_t j = 0; j < cols; j++) {
      double t = ((double)xr[j] - mean) * inv * (double)scale[j];
      if (bias) t += (double)bias[j];
      yr[j] = (float)t;
    }
  }
}

void qi_softmax_f32(size_t r_begin, size_t r_end, size_t cols, const float *x, float *y) {
  for (size_t r = r_begin; r < r_end; r++) {
    const float *xr = x + r * cols;
    float *yr = y + r * cols;
    float m = -INFINITY;
    int nan = 0;
    for (size_t j = 0; j < cols; j++) {
      nan |= isnan(xr[j]);
      m = xr[j] > m ? xr[j] : m;
    }
    if (nan) m = NAN; /* the reference's max propagates NaN: the whole row is NaN */
    double s = 0.0;
    for (size_t j = 0; j < cols; j++) {
      const float e = expf(xr[j] - m);
      yr[j] = e;
      s += e;
    }
    const double inv = 1.0 / s;
    for (size_t j = 0; j < cols; j++) yr[j] = (float)((double)yr[j] * inv);
  }
}

void qi_erf_f32(size_t begin, size_t end, const float *x, float *y) {
  for (size_t i = begin; i < end; i++) y[i] = (float)erf((double)x[i]);
}
