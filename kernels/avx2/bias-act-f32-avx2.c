/* Bias + activation epilogue, float32, AVX2 + FMA (tier avx2), in place.
 *
 * Design: memory-bound except for sigmoid; one pass per row, 8 lanes, masked tail. Per-row bias
 * is one broadcast per row ([C, HW] layout); per-column bias is a vector load ([N, C] layout).
 */
#include "qinfer/ukernels.h"
#include "act-avx2.h"

#define VL 8

QI_INLINE __m256i qi_tail_mask(size_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

void qi_bias_act_f32__avx2(size_t r_begin, size_t r_end, size_t cols, float *y,
                                 const float *bias, size_t bias_len, int per_row,
                                 const qi_act *act) {
  const qi_act8 va = qi_act8_init(act);
  for (size_t r = r_begin; r < r_end; r++) {
    float *yr = y + r * cols;
    const __m256 vb = _mm256_set1_ps(bias && per_row ? bias[r % bias_len] : 0.0f);
    const float *bc = bias && !per_row ? bias : 0;
    size_t j = 0;
    for (; j + VL <= cols; j += VL) {
      __m256 v = _mm256_add_ps(_mm256_loadu_ps(yr + j), bc ? _mm256_loadu_ps(bc + j) : vb);
      _mm256_storeu_ps(yr + j, qi_act8_apply(v, &va));
    }
    if (j < cols) {
      const __m256i m = qi_tail_mask(cols - j);
      __m256 v = _mm256_add_ps(_mm256_maskload_ps(yr + j, m),
                               bc ? _mm256_maskload_ps(bc + j, m) : vb);
      _mm256_maskstore_ps(yr + j, m, qi_act8_apply(v, &va));
    }
  }
}
