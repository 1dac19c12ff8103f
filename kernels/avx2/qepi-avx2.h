/* int8 epilogue on 8 int32 lanes, AVX2 (only files in kernels/avx2/ include this).
 *
 * Design: lane for lane the operations of qi_q_act / qi_q_requant / qi_q_exp in qinfer/qint8.h,
 * mul and add as separate instructions (never FMA, although the folder is built with -mfma), and
 * every max/min with the operand order that matches the scalar ternary, so outputs are
 * bit-identical to the scalar kernel and numpy. Conversions round to nearest even (MXCSR default).
 */
#ifndef QINFER_QEPI_AVX2_H
#define QINFER_QEPI_AVX2_H

#include <immintrin.h>
#include "qinfer/qint8.h"

typedef struct qi_qe8 {
  int code, out_u8;
  __m256 a, b, inv, zp;
} qi_qe8;

static inline qi_qe8 qi_qe8_init(const qi_qepi *ep) {
  qi_qe8 e;
  e.code = ep->act.code;
  e.out_u8 = ep->out_u8;
  e.a = _mm256_set1_ps(ep->act.a);
  e.b = _mm256_set1_ps(ep->act.b);
  e.inv = _mm256_set1_ps(ep->y_inv_scale);
  e.zp = _mm256_set1_ps(ep->zp_y);
  return e;
}

QI_INLINE __m256 qi_qe8_exp(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(-87.0f), x);
  x = _mm256_min_ps(_mm256_set1_ps(87.0f), x);
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(QI_Q_EXP_LOG2E)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(QI_Q_EXP_C1)));
  r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(QI_Q_EXP_C2)));
  __m256 p = _mm256_set1_ps(QI_Q_EXP_P0);
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(QI_Q_EXP_P1));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(QI_Q_EXP_P2));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(QI_Q_EXP_P3));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(QI_Q_EXP_P4));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(QI_Q_EXP_P5));
  p = _mm256_add_ps(_mm256_mul_ps(p, _mm256_mul_ps(r, r)),
                    _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

QI_INLINE __m256 qi_qe8_act(__m256 y, const qi_qe8 *e) {
  const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
  switch (e->code) {
    case QI_ACT_RELU: return _mm256_max_ps(zero, y);
    case QI_ACT_CLIP: return _mm256_min_ps(e->b, _mm256_max_ps(e->a, y));
    case QI_ACT_HARDSWISH: {
      __m256 t = _mm256_add_ps(_mm256_mul_ps(y, _mm256_set1_ps(QI_Q_SIXTH)), _mm256_set1_ps(0.5f));
      t = _mm256_min_ps(one, _mm256_max_ps(zero, t));
      return _mm256_mul_ps(y, t);
    }
    case QI_ACT_SIGMOID:
      return _mm256_div_ps(one, _mm256_add_ps(one, qi_qe8_exp(_mm256_sub_ps(zero, y))));
    case QI_ACT_HARDSIGMOID: {
      __m256 t = _mm256_add_ps(_mm256_mul_ps(e->a, y), e->b);
      return _mm256_min_ps(one, _mm256_max_ps(zero, t));
    }
    case QI_QACT_SILU:
      return _mm256_div_ps(y, _mm256_add_ps(one, qi_qe8_exp(_mm256_sub_ps(zero, y))));
    default: return y;
  }
}

/* 8 accumulators of consecutive columns -> out (pointer at the first column); n <= 8 valid */
QI_INLINE void qi_qe8_store(__m256i acc, __m256 scale, const qi_qe8 *e, void *out, size_t n) {
  __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), scale);
  y = qi_qe8_act(y, e);
  if (e->out_u8) {
    __m256 t = _mm256_add_ps(_mm256_mul_ps(y, e->inv), e->zp);
    t = _mm256_max_ps(t, _mm256_setzero_ps());
    t = _mm256_min_ps(t, _mm256_set1_ps(255.0f));
    __m256i q = _mm256_cvtps_epi32(t);
    __m128i q16 = _mm_packus_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    __m128i q8 = _mm_packus_epi16(q16, q16);
    if (n == 8) {
      _mm_storel_epi64((__m128i *)out, q8);
    } else {
      uint8_t tmp[16];
      _mm_storeu_si128((__m128i *)tmp, q8);
      memcpy(out, tmp, n);
    }
  } else if (n == 8) {
    _mm256_storeu_ps((float *)out, y);
  } else {
    float tmp[8];
    _mm256_storeu_ps(tmp, y);
    memcpy(out, tmp, n * sizeof(float));
  }
}

/* scale[0:n], n <= 8, zero past n (never reads past the array) */
QI_INLINE __m256 qi_qe8_load_scale(const float *s, size_t n) {
  if (n == 8) return _mm256_loadu_ps(s);
  float tmp[8] = {0};
  memcpy(tmp, s, n * sizeof(float));
  return _mm256_loadu_ps(tmp);
}

#endif /* QINFER_QEPI_AVX2_H */
