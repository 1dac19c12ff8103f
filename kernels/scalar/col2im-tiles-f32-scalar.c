/* col2im of a ConvTranspose whose kernel equals its stride (no padding, no dilation), float32,
 * portable C, with the bias fused.
 *
 * Design: in such a layer each input pixel (oy, ox) owns the k_h x k_w tile of the output at
 * (oy * k_h, ox * k_w), so the GEMM's columns fill the output exactly once: no zero fill, no
 * accumulation, and the bias goes in the same pass (one write of the output instead of the general
 * path's zero fill, col2im read-modify-write and bias pass). The value written is (0 + cols) +
 * bias: the bytes of the general path. The caller runs the activation (the vectorized bias_act
 * kernel) on each channel while it is in cache. Each call owns channels [c_begin, c_end). The 2 x 2 tile (U-Net, FPN and DB-head upsampling) has its
 * own loop, two rows interleaved per output row, which the compiler vectorizes.
 */
#include "qinfer/ukernels.h"

void qi_col2im_tiles_f32__scalar(const qi_conv2d_geom *g, size_t c_begin, size_t c_end,
                                 const float *cols, const float *bias, float *x) {
  const size_t kh = g->k_h, kw = g->k_w, oh = g->out_h, ow = g->out_w, ohw = oh * ow;
  const size_t xw = ow * kw, xhw = oh * kh * xw;
  for (size_t c = c_begin; c < c_end; c++) {
    const float b = bias ? bias[c] : 0.0f;
    float *xc = x + c * xhw;
    for (size_t oy = 0; oy < oh; oy++) {
      for (size_t ky = 0; ky < kh; ky++) {
        float *restrict d = xc + (oy * kh + ky) * xw;
        const float *row = cols + (c * kh + ky) * kw * ohw + oy * ow;
        if (kw == 2) {
          const float *restrict s0 = row, *restrict s1 = row + ohw;
          for (size_t ox = 0; ox < ow; ox++) {
            d[2 * ox] = (0.0f + s0[ox]) + b;
            d[2 * ox + 1] = (0.0f + s1[ox]) + b;
          }
        } else {
          for (size_t kx = 0; kx < kw; kx++) {
            const float *restrict s = row + kx * ohw;
            for (size_t ox = 0; ox < ow; ox++) d[ox * kw + kx] = (0.0f + s[ox]) + b;
          }
        }
      }
    }
  }
}
