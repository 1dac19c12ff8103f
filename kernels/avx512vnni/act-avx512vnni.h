/* Activation epilogue on 16 float lanes, AVX-512 (only files in kernels/avx512vnni/ include this).
 *
 * Design: constants are broadcast once per call into qi_act16; each activation follows
 * qi_act_scalar lane by lane (same NaN behaviour: max(zero, x) returns x for NaN). Sigmoid uses a
 * Cephes-style exp: x clamped to [-87, 87] (so 2^n stays a normal float), n = round(x log2 e),
 * r = x - n ln2 in two FMA steps, degree-5 polynomial; ~2 ulp, which the 1e-5 tolerance absorbs.
 */
#ifndef QINFER_ACT_AVX512VNNI_H
#define QINFER_ACT_AVX512VNNI_H

#include <immintrin.h>
#include "qinfer/common.h"

typedef struct qi_act16 {
  int code, post;
  __m512 a, b, pa, pb;
} qi_act16;

static inline qi_act16 qi_act16_init(const qi_act *act) {
  qi_act16 v;
  v.code = act->code;
  v.a = _mm512_set1_ps(act->a);
  v.b = _mm512_set1_ps(act->b);
  v.post = act->post;
  v.pa = _mm512_set1_ps(act->post_a);
  v.pb = _mm512_set1_ps(act->post_b);
  return v;
}

QI_INLINE __m512 qi_exp16(__m512 x) {
  /* operand order keeps NaN: max/min return the second operand when either is NaN */
  x = _mm512_min_ps(_mm512_set1_ps(87.0f), _mm512_max_ps(_mm512_set1_ps(-87.0f), x));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500E-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

QI_INLINE __m512 qi_clamp16(__m512 x, __m512 lo, __m512 hi) {
  return _mm512_min_ps(hi, _mm512_max_ps(lo, x));
}

QI_INLINE __m512 qi_act16_code(__m512 x, const qi_act16 *v) {
  switch (v->code) {
    case QI_ACT_RELU: return _mm512_max_ps(_mm512_setzero_ps(), x);
    case QI_ACT_CLIP: return qi_clamp16(x, v->a, v->b);
    case QI_ACT_HARDSWISH: {
      __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(1.0f / 6.0f), _mm512_set1_ps(0.5f));
      return _mm512_mul_ps(x, qi_clamp16(t, _mm512_setzero_ps(), _mm512_set1_ps(1.0f)));
    }
    case QI_ACT_SIGMOID: {
      __m512 e = qi_exp16(_mm512_sub_ps(_mm512_setzero_ps(), x));
      return _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    }
    case QI_ACT_HARDSIGMOID:
      return qi_clamp16(_mm512_fmadd_ps(v->a, x, v->b), _mm512_setzero_ps(), _mm512_set1_ps(1.0f));
    default: return x;
  }
}

/* the activation, then the post affine (qinfer/common.h: a Mul, then an Add, unfused) */
QI_INLINE __m512 qi_act16_apply(__m512 x, const qi_act16 *v) {
  x = qi_act16_code(x, v);
  if (v->post & QI_ACT_POST_SCALE) x = _mm512_mul_ps(x, v->pa);
  if (v->post & QI_ACT_POST_SHIFT) x = _mm512_add_ps(x, v->pb);
  return x;
}

#endif /* QINFER_ACT_AVX512VNNI_H */
