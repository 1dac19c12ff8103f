/* int8 depthwise conv, NHWC, portable C: the definition the SIMD variants follow.
 *
 * Design: per output pixel and channel, acc = bias[c], then every tap (kx-major, then ky, as the
 * packed quads are laid out) adds x * w in int32 -- exact, so the SIMD variants' quad rows and
 * channel vectorization cannot change it -- with x = zp_x outside the image (the folded bias
 * makes that exact), then the epilogue qi_q_store1. No scratch needed.
 */
#include "qinfer/ukernels.h"

void qi_dwconv2d_qu8_qc8w__scalar(const qi_conv2d_geom *g, size_t c, size_t c_begin,
                                  size_t c_end, size_t p_begin, size_t p_end, const uint8_t *x, const int32_t *bias,
                                  const int8_t *w, size_t c_pad, uint8_t zp_x,
                                  const qi_qepi *ep, uint8_t *scratch) {
  (void)scratch;
  const size_t nq = qi_qdw_nq(g);
  for (size_t p = p_begin; p < p_end; p++) {
    const size_t oy = p / g->out_w, ox = p - oy * g->out_w;
    for (size_t ch = c_begin; ch < c_end; ch++) {
      int32_t acc = bias[ch];
      for (size_t kx = 0; kx < g->k_w; kx++) {
        const ptrdiff_t ix = (ptrdiff_t)(ox * g->stride_w + kx * g->dil_w) - (ptrdiff_t)g->pad_left;
        const int col_ok = ix >= 0 && ix < (ptrdiff_t)g->in_w;
        for (size_t ky = 0; ky < g->k_h; ky++) {
          const ptrdiff_t iy = (ptrdiff_t)(oy * g->stride_h + ky * g->dil_h) - (ptrdiff_t)g->pad_top;
          const int32_t xv = (col_ok && iy >= 0 && iy < (ptrdiff_t)g->in_h)
                                 ? x[((size_t)iy * g->in_w + (size_t)ix) * c + ch]
                                 : zp_x;
          acc += xv * w[((kx * nq + ky / 4) * c_pad + ch) * 4 + ky % 4];
        }
      }
      qi_q_store1(ep, p, ch, acc);
    }
  }
}
