/* The streaming uint8 kernels, avx2 build of kernels/stream-u8-body.inc, with the requantizing
 * element-wise rules (QAdd, the per-channel multiply) 8 values at a time in explicit AVX2
 * operations, each step the scalar rule's own in the same order: max_ps(t, 0) is "t > 0 ? t : 0"
 * and min_ps(t, 255) "t < 255 ? t : 255", as qe_sat writes them. */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "qinfer/ukernels.h"

static inline __m256 qe_u8x8_avx2(const uint8_t *x) {
  long long v;
  memcpy(&v, x, 8);
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(v)));
}

static inline void qe_sat8_store_avx2(__m256 t, uint8_t *y) {
  t = _mm256_max_ps(t, _mm256_setzero_ps());
  t = _mm256_min_ps(t, _mm256_set1_ps(255.0f));
  const __m256 magic = _mm256_set1_ps(12582912.0f);
  t = _mm256_sub_ps(_mm256_add_ps(t, magic), magic);
  const __m256i i = _mm256_cvttps_epi32(t); /* 0..255 */
  const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
  const long long v = _mm_cvtsi128_si64(_mm_packus_epi16(w, w));
  memcpy(y, &v, 8);
}

static inline void qe_qadd_n_avx2(const uint8_t *a, const uint8_t *b, uint8_t *y,
                                  const qi_qadd_params *q) {
  const __m256 ta = _mm256_mul_ps(_mm256_sub_ps(qe_u8x8_avx2(a), _mm256_set1_ps(q->a_zp)),
                                  _mm256_set1_ps(q->a_scale));
  const __m256 tb = _mm256_mul_ps(_mm256_sub_ps(qe_u8x8_avx2(b), _mm256_set1_ps(q->b_zp)),
                                  _mm256_set1_ps(q->b_scale));
  __m256 v = _mm256_add_ps(ta, tb);
  if (q->relu) /* v < 0 ? 0 : v */
    v = _mm256_blendv_ps(v, _mm256_setzero_ps(), _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ));
  v = _mm256_add_ps(_mm256_mul_ps(v, _mm256_set1_ps(q->y_inv_scale)), _mm256_set1_ps(q->zp_y));
  qe_sat8_store_avx2(v, y);
}

static inline void qe_qmul_n_avx2(const uint8_t *x, const float *m, uint8_t *y, float zx, float zy) {
  __m256 t = _mm256_sub_ps(qe_u8x8_avx2(x), _mm256_set1_ps(zx));
  t = _mm256_add_ps(_mm256_mul_ps(t, _mm256_loadu_ps(m)), _mm256_set1_ps(zy));
  qe_sat8_store_avx2(t, y);
}

#define QE_VN 8
#define QE_QADD_N(a, b, y, n, q) qe_qadd_n_avx2(a, b, y, q)
#define QE_QMUL_N(x, m, y, n, zx, zy) qe_qmul_n_avx2(x, m, y, zx, zy)
#define QE_KERNEL qi_stream_u8__avx2
#include "stream-u8-body.inc"
