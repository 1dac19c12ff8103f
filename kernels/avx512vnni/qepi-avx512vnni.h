/* int8 epilogue on 16 int32 lanes, AVX-512 (only files in kernels/avx512vnni/ include this).
 *
 * Design: lane for lane the operations of qi_q_act / qi_q_requant / qi_q_exp in qinfer/qint8.h,
 * with mul and add as separate instructions (never FMA) and every max/min written with the
 * operand order that matches the scalar ternary (max_ps(a, b) returns b when either is NaN), so
 * requantized bytes and float outputs are bit-identical to the scalar kernel and numpy.
 * cvtepi32_ps and cvtps_epi32 round to nearest even (default MXCSR), as the scalar code does.
 */
#ifndef QINFER_QEPI_AVX512VNNI_H
#define QINFER_QEPI_AVX512VNNI_H

#include <immintrin.h>
#include "qinfer/qint8.h"

typedef struct qi_qe16 {
  int code, out_u8;
  __m512 a, b, inv, zp;
} qi_qe16;

static inline qi_qe16 qi_qe16_init(const qi_qepi *ep) {
  qi_qe16 e;
  e.code = ep->act.code;
  e.out_u8 = ep->out_u8;
  e.a = _mm512_set1_ps(ep->act.a);
  e.b = _mm512_set1_ps(ep->act.b);
  e.inv = _mm512_set1_ps(ep->y_inv_scale);
  e.zp = _mm512_set1_ps(ep->zp_y);
  return e;
}

QI_INLINE __m512 qi_qe16_exp(__m512 x) {
  /* x < -87 ? -87 : x  ==  max_ps(x, -87) for non-NaN; NaN: scalar keeps x, max_ps(-87, x) too */
  x = _mm512_max_ps(_mm512_set1_ps(-87.0f), x);
  x = _mm512_min_ps(_mm512_set1_ps(87.0f), x);
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(QI_Q_EXP_LOG2E)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(QI_Q_EXP_C1)));
  r = _mm512_sub_ps(r, _mm512_mul_ps(n, _mm512_set1_ps(QI_Q_EXP_C2)));
  __m512 p = _mm512_set1_ps(QI_Q_EXP_P0);
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(QI_Q_EXP_P1));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(QI_Q_EXP_P2));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(QI_Q_EXP_P3));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(QI_Q_EXP_P4));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(QI_Q_EXP_P5));
  p = _mm512_add_ps(_mm512_mul_ps(p, _mm512_mul_ps(r, r)),
                    _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

QI_INLINE __m512 qi_qe16_act(__m512 y, const qi_qe16 *e) {
  const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f);
  switch (e->code) {
    case QI_ACT_RELU: return _mm512_max_ps(zero, y); /* y < 0 ? 0 : y */
    case QI_ACT_CLIP: return _mm512_min_ps(e->b, _mm512_max_ps(e->a, y));
    case QI_ACT_HARDSWISH: {
      __m512 t = _mm512_add_ps(_mm512_mul_ps(y, _mm512_set1_ps(QI_Q_SIXTH)), _mm512_set1_ps(0.5f));
      t = _mm512_min_ps(one, _mm512_max_ps(zero, t));
      return _mm512_mul_ps(y, t);
    }
    case QI_ACT_SIGMOID:
      return _mm512_div_ps(one, _mm512_add_ps(one, qi_qe16_exp(_mm512_sub_ps(zero, y))));
    case QI_ACT_HARDSIGMOID: {
      __m512 t = _mm512_add_ps(_mm512_mul_ps(e->a, y), e->b);
      return _mm512_min_ps(one, _mm512_max_ps(zero, t));
    }
    case QI_QACT_SILU:
      return _mm512_div_ps(y, _mm512_add_ps(one, qi_qe16_exp(_mm512_sub_ps(zero, y))));
    default: return y;
  }
}

/* 16 accumulators of consecutive columns -> out (row pointer at the first column), lanes in m */
QI_INLINE void qi_qe16_store(__m512i acc, __m512 scale, const qi_qe16 *e, void *out, __mmask16 m) {
  __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), scale);
  y = qi_qe16_act(y, e);
  if (e->out_u8) {
    __m512 t = _mm512_add_ps(_mm512_mul_ps(y, e->inv), e->zp);
    t = _mm512_max_ps(t, _mm512_setzero_ps());      /* t > 0 ? t : 0 (NaN -> 0) */
    t = _mm512_min_ps(t, _mm512_set1_ps(255.0f));   /* t < 255 ? t : 255 */
    _mm_mask_storeu_epi8(out, m, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(t)));
  } else {
    _mm512_mask_storeu_ps(out, m, y);
  }
}

#endif /* QINFER_QEPI_AVX512VNNI_H */
