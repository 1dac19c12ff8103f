/* Activation epilogue on 8 float lanes, AVX2 + FMA (only files in kernels/avx2/ include this).
 *
 * Design: constants are broadcast once per call into qi_act8; each activation follows
 * qi_act_scalar lane by lane (same NaN behaviour: max(zero, x) returns x for NaN). Sigmoid uses a
 * Cephes-style exp: x clamped to [-87, 87] (so 2^n stays a normal float), n = round(x log2 e),
 * r = x - n ln2 in two FMA steps, degree-5 polynomial; ~2 ulp, which the 1e-5 tolerance absorbs.
 */
#ifndef QINFER_ACT_AVX2_H
#define QINFER_ACT_AVX2_H

#include <immintrin.h>
#include "qinfer/common.h"

typedef struct qi_act8 {
  int code, post;
  __m256 a, b, pa, pb;
} qi_act8;

static inline qi_act8 qi_act8_init(const qi_act *act) {
  qi_act8 v;
  v.code = act->code;
  v.a = _mm256_set1_ps(act->a);
  v.b = _mm256_set1_ps(act->b);
  v.post = act->post;
  v.pa = _mm256_set1_ps(act->post_a);
  v.pb = _mm256_set1_ps(act->post_b);
  return v;
}

QI_INLINE __m256 qi_exp8(__m256 x) {
  /* operand order keeps NaN: max/min return the second operand when either is NaN */
  x = _mm256_min_ps(_mm256_set1_ps(87.0f), _mm256_max_ps(_mm256_set1_ps(-87.0f), x));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500E-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

QI_INLINE __m256 qi_clamp8(__m256 x, __m256 lo, __m256 hi) {
  return _mm256_min_ps(hi, _mm256_max_ps(lo, x));
}

QI_INLINE __m256 qi_act8_code(__m256 x, const qi_act8 *v) {
  switch (v->code) {
    case QI_ACT_RELU: return _mm256_max_ps(_mm256_setzero_ps(), x);
    case QI_ACT_CLIP: return qi_clamp8(x, v->a, v->b);
    case QI_ACT_HARDSWISH: {
      __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(1.0f / 6.0f), _mm256_set1_ps(0.5f));
      return _mm256_mul_ps(x, qi_clamp8(t, _mm256_setzero_ps(), _mm256_set1_ps(1.0f)));
    }
    case QI_ACT_SIGMOID: {
      __m256 e = qi_exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
      return _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
    }
    case QI_ACT_HARDSIGMOID:
      return qi_clamp8(_mm256_fmadd_ps(v->a, x, v->b), _mm256_setzero_ps(), _mm256_set1_ps(1.0f));
    default: return x;
  }
}

/* the activation, then the post affine (qinfer/common.h: a Mul, then an Add, unfused) */
QI_INLINE __m256 qi_act8_apply(__m256 x, const qi_act8 *v) {
  x = qi_act8_code(x, v);
  if (v->post & QI_ACT_POST_SCALE) x = _mm256_mul_ps(x, v->pa);
  if (v->post & QI_ACT_POST_SHIFT) x = _mm256_add_ps(x, v->pb);
  return x;
}

#endif /* QINFER_ACT_AVX2_H */
