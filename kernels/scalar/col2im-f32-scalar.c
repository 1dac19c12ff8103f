/* col2im (adjoint of im2col, accumulating), float32, portable C.
 *
 * Design: the exact mirror of im2col-f32-scalar.c: same valid ranges, += instead of copy. Each
 * call owns channels [c_begin, c_end) of x, so threads never share an output element, and every
 * element sums its contributions in (ky, kx, oy, ox) order whatever the thread count.
 */
#include "qinfer/ukernels.h"

static size_t qi_first_valid(ptrdiff_t off, size_t s) {
  return off >= 0 ? 0 : (size_t)((-off + (ptrdiff_t)s - 1) / (ptrdiff_t)s);
}

static size_t qi_first_past(ptrdiff_t off, size_t s, size_t n) {
  ptrdiff_t need = (ptrdiff_t)n - off;
  return need <= 0 ? 0 : (size_t)((need + (ptrdiff_t)s - 1) / (ptrdiff_t)s);
}

void qi_col2im_f32__scalar(const qi_conv2d_geom *g, size_t c_begin, size_t c_end,
                           const float *cols, float *x) {
  const size_t ohw = g->out_h * g->out_w;
  for (size_t c = c_begin; c < c_end; c++) {
    float *xc = x + c * g->in_h * g->in_w;
    for (size_t ky = 0; ky < g->k_h; ky++) {
      for (size_t kx = 0; kx < g->k_w; kx++) {
        const float *row = cols + ((c * g->k_h + ky) * g->k_w + kx) * ohw;
        ptrdiff_t offx = (ptrdiff_t)(kx * g->dil_w) - (ptrdiff_t)g->pad_left;
        size_t ox0 = qi_first_valid(offx, g->stride_w);
        size_t ox1 = qi_first_past(offx, g->stride_w, g->in_w);
        if (ox0 > g->out_w) ox0 = g->out_w;
        if (ox1 > g->out_w) ox1 = g->out_w;
        if (ox0 >= ox1) continue;
        for (size_t oy = 0; oy < g->out_h; oy++) {
          ptrdiff_t iy = (ptrdiff_t)(oy * g->stride_h + ky * g->dil_h) - (ptrdiff_t)g->pad_top;
          if (iy < 0 || iy >= (ptrdiff_t)g->in_h) continue;
          const float *src = row + oy * g->out_w;
          float *dst = xc + (size_t)iy * g->in_w;
          if (g->stride_w == 1) {
            float *d = dst + offx;
            for (size_t ox = ox0; ox < ox1; ox++) d[ox] += src[ox];
          } else {
            for (size_t ox = ox0; ox < ox1; ox++)
              dst[(ptrdiff_t)(ox * g->stride_w) + offx] += src[ox];
          }
        }
      }
    }
  }
}
