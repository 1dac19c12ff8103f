/* Depthwise conv, float32, portable C: the definition the SIMD variants follow.
 *
 * Design: direct loops, bounds checked per tap row and with the valid output-column range per
 * tap computed once, so padding costs nothing in the inner loop. Per output: acc = bias, then
 * taps in (ky, kx) order, then the activation -- the same order as the SIMD variants (which use
 * FMA, hence rounding-level differences). No scratch needed.
 */
#include <string.h>
#include "qinfer/ukernels.h"

void qi_dwconv2d_f32__scalar(const qi_conv2d_geom *g, size_t c_begin, size_t c_end,
                             const float *x, const float *w, const float *bias, float *y,
                             const qi_act *act, float *scratch) {
  const size_t kk = g->k_h * g->k_w, ow = g->out_w;
  (void)scratch;
  for (size_t c = c_begin; c < c_end; c++) {
    const float *xc = x + c * g->in_h * g->in_w;
    const float *wc = w + c * kk;
    float *yc = y + c * g->out_h * ow;
    const float b = bias ? bias[c] : 0.0f;
    for (size_t oy = 0; oy < g->out_h; oy++) {
      float *yr = yc + oy * ow;
      for (size_t ox = 0; ox < ow; ox++) yr[ox] = b;
      for (size_t ky = 0; ky < g->k_h; ky++) {
        ptrdiff_t iy = (ptrdiff_t)(oy * g->stride_h + ky * g->dil_h) - (ptrdiff_t)g->pad_top;
        if (iy < 0 || iy >= (ptrdiff_t)g->in_h) continue;
        const float *xr = xc + (size_t)iy * g->in_w;
        for (size_t kx = 0; kx < g->k_w; kx++) {
          const float wv = wc[ky * g->k_w + kx];
          ptrdiff_t off = (ptrdiff_t)(kx * g->dil_w) - (ptrdiff_t)g->pad_left;
          /* valid ox: 0 <= ox*sw + off < in_w */
          ptrdiff_t s = (ptrdiff_t)g->stride_w;
          size_t ox0 = off >= 0 ? 0 : (size_t)((-off + s - 1) / s);
          ptrdiff_t need = (ptrdiff_t)g->in_w - off;
          size_t ox1 = need <= 0 ? 0 : (size_t)((need + s - 1) / s);
          if (ox1 > ow) ox1 = ow;
          for (size_t ox = ox0; ox < ox1; ox++)
            yr[ox] += xr[(ptrdiff_t)ox * s + off] * wv;
        }
      }
      if (qi_act_any(act))
        for (size_t ox = 0; ox < ow; ox++) yr[ox] = qi_act_scalar(yr[ox], act);
    }
  }
}
