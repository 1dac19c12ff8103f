/* im2col, float32, portable C.
 *
 * Design: memory-bound, so one variant only. Per (c, ky, kx) row and output row oy the valid
 * output columns [ox0, ox1) are computed once, the rest is zero fill; stride-1 rows are memcpy.
 */
#include <string.h>
#include "qinfer/ukernels.h"

/* First ox with ox*s + off >= 0, i.e. ox >= ceil(-off / s), where off = kx*dw - pad (may be < 0). */
static size_t qi_first_valid(ptrdiff_t off, size_t s) {
  return off >= 0 ? 0 : (size_t)((-off + (ptrdiff_t)s - 1) / (ptrdiff_t)s);
}

/* First ox with ox*s + off >= n. */
static size_t qi_first_past(ptrdiff_t off, size_t s, size_t n) {
  ptrdiff_t need = (ptrdiff_t)n - off;
  return need <= 0 ? 0 : (size_t)((need + (ptrdiff_t)s - 1) / (ptrdiff_t)s);
}

void qi_im2col_f32__scalar(const qi_conv2d_geom *g, size_t c_begin, size_t c_end,
                           const float *x, float *cols) {
  const size_t ohw = g->out_h * g->out_w;
  for (size_t c = c_begin; c < c_end; c++) {
    const float *xc = x + c * g->in_h * g->in_w;
    for (size_t ky = 0; ky < g->k_h; ky++) {
      for (size_t kx = 0; kx < g->k_w; kx++) {
        float *row = cols + ((c * g->k_h + ky) * g->k_w + kx) * ohw;
        ptrdiff_t offx = (ptrdiff_t)(kx * g->dil_w) - (ptrdiff_t)g->pad_left;
        size_t ox0 = qi_first_valid(offx, g->stride_w);
        size_t ox1 = qi_first_past(offx, g->stride_w, g->in_w);
        if (ox0 > g->out_w) ox0 = g->out_w;
        if (ox1 > g->out_w) ox1 = g->out_w;
        if (ox1 < ox0) ox1 = ox0;
        for (size_t oy = 0; oy < g->out_h; oy++) {
          float *dst = row + oy * g->out_w;
          ptrdiff_t iy = (ptrdiff_t)(oy * g->stride_h + ky * g->dil_h) - (ptrdiff_t)g->pad_top;
          if (iy < 0 || iy >= (ptrdiff_t)g->in_h || ox0 == ox1) {
            memset(dst, 0, g->out_w * sizeof(float));
            continue;
          }
          const float *src = xc + (size_t)iy * g->in_w;
          memset(dst, 0, ox0 * sizeof(float));
          if (g->stride_w == 1) {
            memcpy(dst + ox0, src + (ptrdiff_t)ox0 + offx, (ox1 - ox0) * sizeof(float));
          } else {
            for (size_t ox = ox0; ox < ox1; ox++)
              dst[ox] = src[(ptrdiff_t)(ox * g->stride_w) + offx];
          }
          memset(dst + ox1, 0, (g->out_w - ox1) * sizeof(float));
        }
      }
    }
  }
}
