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

/* y = requant(((float)a - za) * sa + ((float)b - zb) * sb), relu if asked; same shapes */
typedef struct qi_qadd_params {
  float a_scale, a_zp, b_scale, b_zp, y_inv_scale, zp_y;
  int relu;
} qi_qadd_params;

/* What one call of the stream slot does, on the range [begin, end) of its units (x, y point to
 * one image, or to the whole tensor for the element-wise ops):
 *   QUANTIZE            y[i] = clamp(rint(x[i] / scale) + zp, 0, 255), NaN -> zp; units: elements
 *   QUANTIZE_CHW_HWC    the same, x[c, hw] float -> y[hw, c] uint8, channel j divided by m[j]
 *                       when m is not NULL (per-channel scales, one zero point); units: pixels
 *   DEQUANTIZE          y[i] = ((float)x[i] - zp) * scale; units: elements
 *   DEQUANTIZE_HWC_CHW  the same, x[hw, c] uint8 -> y[c, hw] float; units: channels
 *   QADD                y = requant(((float)x - za) * sa + ((float)x2 - zb) * sb) (qadd); elements
 *   MAXPOOL_U8_HWC      y[oh, ow, c] = max over the window's taps inside x[in_h, in_w, c] (0 if
 *                       none, the reference's -inf of uint8); units: output rows
 *   MAXPOOL_F32_CHW     float planes x[p, in_h, in_w] -> y[p, oh, ow], NaN propagates, -inf if no
 *                       tap; units: planes
 *   GAP_U8_HWC          y[c] = ((float)sum_p x[p, c] / (float)hw - zp) * scale; units: channels
 *   QMUL_CHANNEL        y[p, c] = requant(((float)x[p, c] - zp) * m[c] + zp2); units: pixels
 * requant(t) = rint(min(max(t, 0), 255)); rint is round half to even. */
enum qi_stream_op {
  QI_STREAM_QUANTIZE,
  QI_STREAM_QUANTIZE_CHW_HWC,
  QI_STREAM_DEQUANTIZE,
  QI_STREAM_DEQUANTIZE_HWC_CHW,
  QI_STREAM_QADD,
  QI_STREAM_MAXPOOL_U8_HWC,
  QI_STREAM_MAXPOOL_F32_CHW,
  QI_STREAM_GAP_U8_HWC,
  QI_STREAM_QMUL_CHANNEL
};

typedef struct qi_stream_args {
  int op;                  /* enum qi_stream_op */
  const void *x, *x2;      /* x2: QADD's second operand */
  void *y;
  const float *m;          /* QMUL_CHANNEL's factors [c]; QUANTIZE_CHW_HWC's scales [c] or NULL */
  const qi_conv2d_geom *g; /* the max pools' geometry */
  size_t c, hw;
  float scale, zp, zp2;    /* zp2: QMUL_CHANNEL's output zero point */
  qi_qadd_params qadd;
} qi_stream_args;

typedef void qi_stream_u8_fn(const qi_stream_args *a, size_t begin, size_t end);

#endif /* QINFER_QELEMENTWISE_H */
