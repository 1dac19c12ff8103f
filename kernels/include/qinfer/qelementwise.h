/* Memory-bound kernels around the int8 convs: quantize / dequantize (with the NCHW <-> NHWC move
 * folded in), the residual QAdd, max pooling (uint8 NHWC and float32 NCHW), the uint8 global
 * average pool and the per-channel multiply of squeeze-excitation blocks.
 *
 * Design: plain C, baseline flags (the compiler vectorizes the inner loops; these ops stream
 * memory, their cost is the bytes). Each function works on a range of its outer units so the
 * Cython driver can split it over threads. Every function is bit-identical to its numpy
 * definition in qinfer/reference/qops.py: the same float32 operations in the same order, no FMA
 * (-ffp-contract=off), round half to even.
 */
#ifndef QINFER_QELEMENTWISE_H
#define QINFER_QELEMENTWISE_H

#include <stddef.h>
#include <stdint.h>

#include "qinfer/common.h"

/* y[i] = clamp(rint(x[i] / scale) + zp, 0, 255), NaN -> zp, for i in [begin, end) */
void qi_quantize_f32_u8(const float *x, uint8_t *y, size_t begin, size_t end, float scale, float zp);
/* one image x[c, hw] -> y[hw, c], pixels [p_begin, p_end) */
void qi_quantize_chw_hwc_f32_u8(const float *x, uint8_t *y, size_t c, size_t hw, size_t p_begin,
                                size_t p_end, float scale, float zp);
/* y[i] = ((float)x[i] - zp) * scale */
void qi_dequantize_u8_f32(const uint8_t *x, float *y, size_t begin, size_t end, float scale, float zp);
/* one image x[hw, c] -> y[c, hw], channels [c_begin, c_end) */
void qi_dequantize_hwc_chw_u8_f32(const uint8_t *x, float *y, size_t c, size_t hw, size_t c_begin,
                                  size_t c_end, float scale, float zp);

/* y = requant(((float)a - za) * sa + ((float)b - zb) * sb), relu if asked; same shapes */
typedef struct qi_qadd_params {
  float a_scale, a_zp, b_scale, b_zp, y_inv_scale, zp_y;
  int relu;
} qi_qadd_params;
void qi_qadd_u8(const uint8_t *a, const uint8_t *b, uint8_t *y, size_t begin, size_t end,
                const qi_qadd_params *p);

/* max pooling of one image: uint8 x[in_h, in_w, c] -> y[out_h, out_w, c], output rows
 * [oy_begin, oy_end); taps outside the image are skipped (a window with none gives 0, the
 * reference's -inf of uint8) */
void qi_maxpool2d_u8_hwc(const qi_conv2d_geom *g, size_t c, const uint8_t *x, uint8_t *y,
                         size_t oy_begin, size_t oy_end);
/* max pooling of planes [p_begin, p_end) of float32 x[planes, in_h, in_w] -> y[planes, out_h,
 * out_w]; NaN propagates, a window with no tap in the image gives -inf */
void qi_maxpool2d_f32_chw(const qi_conv2d_geom *g, const float *x, float *y, size_t p_begin,
                          size_t p_end);

/* global average pool of one uint8 image x[hw, c] -> float y[c] for channels [c_begin, c_end):
 * y = ((float)sum / (float)hw - zp) * scale */
void qi_gap_u8_hwc_f32(const uint8_t *x, float *y, size_t hw, size_t c, size_t c_begin,
                       size_t c_end, float scale, float zp);

/* per-channel multiply of one uint8 image x[hw, c]: y = requant(((float)x - zx) * m[ch] + zy),
 * pixels [p_begin, p_end) (m folds the input scale, the channel factor and 1 / output scale) */
void qi_qmul_channel_u8_hwc(const uint8_t *x, const float *m, uint8_t *y, size_t hw, size_t c,
                            size_t p_begin, size_t p_end, float zx, float zy);

#endif /* QINFER_QELEMENTWISE_H */
