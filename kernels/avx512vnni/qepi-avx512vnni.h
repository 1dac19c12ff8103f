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
  int inv_one; /* y_inv_scale == 1: y * 1 == y exactly, skip the multiply */
  int nonneg;  /* the activation's output is >= 0 (or -0): t = y*inv + zp >= +0, skip max(t, 0) */
  int zp_zero; /* zp_y == 0: t + 0 differs from t only for t = -0, which converts to 0 all the same */
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
  e.inv_one = ep->y_inv_scale == 1.0f;
  e.zp_zero = ep->zp_y == 0.0f;
  /* y >= 0 and zp_y >= 0 (a fractional, even negative, zp_y carries an affine map folded
   * after the activation) */
  e.nonneg = (ep->act.code == QI_ACT_RELU || ep->act.code == QI_ACT_SIGMOID ||
              ep->act.code == QI_ACT_HARDSIGMOID || (ep->act.code == QI_ACT_CLIP && ep->act.a >= 0.0f)) &&
             ep->zp_y >= 0.0f;
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

QI_INLINE __m512 qi_qe16_act_k(__m512 y, const int code, const __m512 a, const __m512 b) {
  const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f);
  switch (code) {
    case QI_ACT_RELU: return _mm512_max_ps(zero, y); /* y < 0 ? 0 : y */
    case QI_ACT_CLIP: return _mm512_min_ps(b, _mm512_max_ps(a, y));
    case QI_ACT_HARDSWISH: {
      __m512 t = _mm512_add_ps(_mm512_mul_ps(y, _mm512_set1_ps(QI_Q_SIXTH)), _mm512_set1_ps(0.5f));
      t = _mm512_min_ps(one, _mm512_max_ps(zero, t));
      return _mm512_mul_ps(y, t);
    }
    case QI_ACT_SIGMOID:
      return _mm512_div_ps(one, _mm512_add_ps(one, qi_qe16_exp(_mm512_sub_ps(zero, y))));
    case QI_ACT_HARDSIGMOID: {
      __m512 t = _mm512_add_ps(_mm512_mul_ps(a, y), b);
      return _mm512_min_ps(one, _mm512_max_ps(zero, t));
    }
    case QI_QACT_SILU:
      return _mm512_div_ps(y, _mm512_add_ps(one, qi_qe16_exp(_mm512_sub_ps(zero, y))));
    default: return y;
  }
}

QI_INLINE __m512 qi_qe16_act(__m512 y, const qi_qe16 *e) { return qi_qe16_act_k(y, e->code, e->a, e->b); }

/* t = y * inv + zp; t > 0 ? t : 0 (NaN -> 0); rint; then the unsigned saturating narrow (vpmovusdb)
 * does "t < 255 ? t : 255": rint is monotonic and 255 an integer, so clamping after rounding
 * gives the scalar's bytes, and a t beyond int32 converts to 0x80000000, which saturates to 255
 * as the clamp would. The skips (inv_one, zp_zero, nonneg) leave every result byte unchanged. */
QI_INLINE __m128i qi_qe16_requant(__m512 y, const qi_qe16 *e) {
  __m512 t = e->inv_one ? y : _mm512_mul_ps(y, e->inv);
  if (!e->zp_zero) t = _mm512_add_ps(t, e->zp);
  if (!e->nonneg) t = _mm512_max_ps(t, _mm512_setzero_ps());
  return _mm512_cvtusepi32_epi8(_mm512_cvtps_epi32(t));
}

/* qi_qe16_store with the activation, output type and full mask as compile-time constants and
 * the epilogue's vectors and flags passed by value (callers load them once, outside their pixel
 * loop, so a depthwise pixel carries no loads or branches beyond its own data) */
typedef struct qi_qe16v {
  __m512 a, b, inv, zp;
  int inv_one, zp_zero, nonneg;
} qi_qe16v;

QI_INLINE qi_qe16v qi_qe16v_of(const qi_qe16 *e) {
  qi_qe16v v;
  v.a = e->a, v.b = e->b, v.inv = e->inv, v.zp = e->zp;
  v.inv_one = e->inv_one, v.zp_zero = e->zp_zero, v.nonneg = e->nonneg;
  return v;
}

QI_INLINE void qi_qe16_store_k(__m512i acc, __m512 scale, const qi_qe16v v, void *out,
                               __mmask16 m, const int code, const int u8, const int full) {
  __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), scale);
  y = qi_qe16_act_k(y, code, v.a, v.b);
  if (u8) {
    __m512 t = v.inv_one ? y : _mm512_mul_ps(y, v.inv);
    if (!v.zp_zero) t = _mm512_add_ps(t, v.zp);
    if (!v.nonneg) t = _mm512_max_ps(t, _mm512_setzero_ps());
    const __m128i q = _mm512_cvtusepi32_epi8(_mm512_cvtps_epi32(t));
    if (full)
      _mm_storeu_si128((__m128i *)out, q);
    else
      _mm_mask_storeu_epi8(out, m, q);
  } else if (full) {
    _mm512_storeu_ps((float *)out, y);
  } else {
    _mm512_mask_storeu_ps(out, m, y);
  }
}

/* calls F(code, u8, full) with those as constants, for the 7 x 2 x 2 cases */
#define QI_QE16_DISPATCH(E, FULL, F)                                                   \
  switch ((E)->code * 4 + (E)->out_u8 * 2 + ((FULL) ? 1 : 0)) {                       \
    case 0: F(0, 0, 0); break;  case 1: F(0, 0, 1); break;                             \
    case 2: F(0, 1, 0); break;  case 3: F(0, 1, 1); break;                             \
    case 4: F(1, 0, 0); break;  case 5: F(1, 0, 1); break;                             \
    case 6: F(1, 1, 0); break;  case 7: F(1, 1, 1); break;                             \
    case 8: F(2, 0, 0); break;  case 9: F(2, 0, 1); break;                             \
    case 10: F(2, 1, 0); break; case 11: F(2, 1, 1); break;                            \
    case 12: F(3, 0, 0); break; case 13: F(3, 0, 1); break;                            \
    case 14: F(3, 1, 0); break; case 15: F(3, 1, 1); break;                            \
    case 16: F(4, 0, 0); break; case 17: F(4, 0, 1); break;                            \
    case 18: F(4, 1, 0); break; case 19: F(4, 1, 1); break;                            \
    case 20: F(5, 0, 0); break; case 21: F(5, 0, 1); break;                            \
    case 22: F(5, 1, 0); break; case 23: F(5, 1, 1); break;                            \
    case 24: F(6, 0, 0); break; case 25: F(6, 0, 1); break;                            \
    case 26: F(6, 1, 0); break; default: F(6, 1, 1); break;                            \
  }

/* 16 accumulators of consecutive columns -> out (row pointer at the first column), lanes in m */
QI_INLINE void qi_qe16_store(__m512i acc, __m512 scale, const qi_qe16 *e, void *out, __mmask16 m) {
  __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), scale);
  y = qi_qe16_act(y, e);
  if (e->out_u8) {
    const __m128i q = qi_qe16_requant(y, e);
    /* a full store when possible: the masked narrowing store (vpmovdb m128{k}) is slow on Zen 4 */
    if (m == (__mmask16)0xFFFF)
      _mm_storeu_si128((__m128i *)out, q);
    else
      _mm_mask_storeu_epi8(out, m, q);
  } else if (m == (__mmask16)0xFFFF) {
    _mm512_storeu_ps((float *)out, y);
  } else {
    _mm512_mask_storeu_ps(out, m, y);
  }
}

#endif /* QINFER_QEPI_AVX512VNNI_H */
