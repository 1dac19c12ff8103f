/* qinfer kernels: shared plain-C definitions (no intrinsics, no Python).
 *
 * Design: every kernel works on a contiguous range of "channels" (or rows) and is single-threaded;
 * the Cython drivers in src/qinfer/_ext/ partition the range statically over OpenMP threads, so a
 * given output element is always computed by the same code in the same order whatever the thread
 * count (bit-identical results for 1 or N threads). Kernels never allocate, print or abort: the
 * caller validates shapes and hands them a scratch buffer when they need one.
 */
#ifndef QINFER_COMMON_H
#define QINFER_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <math.h>

#if defined(__GNUC__) || defined(__clang__)
#define QI_RESTRICT __restrict__
#define QI_INLINE static inline __attribute__((always_inline))
#else
#define QI_RESTRICT
#define QI_INLINE static inline
#endif

/* Fused activation epilogue codes (stable: Python passes them as ints). */
enum qi_act_code {
  QI_ACT_NONE = 0,
  QI_ACT_RELU = 1,
  QI_ACT_CLIP = 2,        /* clip(x, a, b): a = min, b = max */
  QI_ACT_HARDSWISH = 3,   /* x * clamp(x / 6 + 1/2, 0, 1) (ONNX HardSwish) */
  QI_ACT_SIGMOID = 4,
  QI_ACT_HARDSIGMOID = 5, /* clamp(a * x + b, 0, 1) (ONNX HardSigmoid alpha, beta) */
  QI_ACT_COUNT = 6
};

/* post: after the activation, y = y * post_a (bit QI_ACT_POST_SCALE) then y = y + post_b (bit
 * QI_ACT_POST_SHIFT), two roundings as a Mul and an Add node would make (a model's constant affine
 * after its activation, e.g. PP-LCNetV3's learnable affine blocks); 0: none */
enum { QI_ACT_POST_SCALE = 1, QI_ACT_POST_SHIFT = 2 };

typedef struct qi_act {
  int code;   /* enum qi_act_code */
  float a, b; /* clip (min, max) or hardsigmoid (alpha, beta); ignored otherwise */
  int post;   /* QI_ACT_POST_* bits */
  float post_a, post_b;
} qi_act;

/* whether the epilogue has anything to apply after the bias */
QI_INLINE int qi_act_any(const qi_act *act) { return act->code != QI_ACT_NONE || act->post; }

/* 2-D convolution geometry, NCHW, one image. Output size follows ONNX Conv:
 * out_h = (in_h + pad_top + pad_bottom - dil_h * (k_h - 1) - 1) / stride_h + 1 (the caller computes
 * and validates it; kernels trust it). */
typedef struct qi_conv2d_geom {
  size_t in_h, in_w;
  size_t out_h, out_w;
  size_t k_h, k_w;
  size_t stride_h, stride_w;
  size_t dil_h, dil_w;
  size_t pad_top, pad_left, pad_bottom, pad_right;
} qi_conv2d_geom;

/* Scalar activation, the definition every SIMD variant follows lane by lane. Comparisons are
 * written so that NaN propagates (x < 0 is false for NaN), matching _mm*_max_ps(zero, x). */
QI_INLINE float qi_clampf(float x, float lo, float hi) {
  x = x < lo ? lo : x;
  return x > hi ? hi : x;
}

QI_INLINE float qi_act_code_scalar(float x, const qi_act *act) {
  switch (act->code) {
    case QI_ACT_RELU: return x < 0.0f ? 0.0f : x;
    case QI_ACT_CLIP: return qi_clampf(x, act->a, act->b);
    case QI_ACT_HARDSWISH: return x * qi_clampf(x * (1.0f / 6.0f) + 0.5f, 0.0f, 1.0f);
    case QI_ACT_SIGMOID: return 1.0f / (1.0f + expf(-x));
    case QI_ACT_HARDSIGMOID: return qi_clampf(act->a * x + act->b, 0.0f, 1.0f);
    default: return x;
  }
}

QI_INLINE float qi_act_scalar(float x, const qi_act *act) {
  x = qi_act_code_scalar(x, act);
  if (act->post & QI_ACT_POST_SCALE) x = x * act->post_a;
  if (act->post & QI_ACT_POST_SHIFT) x = x + act->post_b;
  return x;
}

#endif /* QINFER_COMMON_H */
