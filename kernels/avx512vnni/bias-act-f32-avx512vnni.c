/* Bias + activation epilogue, float32, AVX-512 (tier avx512vnni), in place.
 *
 * Design: memory-bound except for sigmoid; one pass per row, 16 lanes, masked tail. Per-row bias
 * is one broadcast per row ([C, HW] layout); per-column bias is a vector load ([N, C] layout).
 */
#include "qinfer/ukernels.h"
#include "act-avx512vnni.h"

#define VL 16

QI_INLINE __mmask16 qi_tail_mask(size_t n) { return (__mmask16)((1u << n) - 1u); }

void qi_bias_act_f32__avx512vnni(size_t r_begin, size_t r_end, size_t cols, float *y,
                                 const float *bias, size_t bias_len, int per_row,
                                 const qi_act *act) {
  const qi_act16 va = qi_act16_init(act);
  for (size_t r = r_begin; r < r_end; r++) {
    float *yr = y + r * cols;
    const __m512 vb = _mm512_set1_ps(bias && per_row ? bias[r % bias_len] : 0.0f);
    const float *bc = bias && !per_row ? bias : 0;
    size_t j = 0;
    for (; j + VL <= cols; j += VL) {
      __m512 v = _mm512_add_ps(_mm512_loadu_ps(yr + j), bc ? _mm512_loadu_ps(bc + j) : vb);
      _mm512_storeu_ps(yr + j, qi_act16_apply(v, &va));
    }
    if (j < cols) {
      const __mmask16 m = qi_tail_mask(cols - j);
      __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, yr + j),
                               bc ? _mm512_maskz_loadu_ps(m, bc + j) : vb);
      _mm512_mask_storeu_ps(yr + j, m, qi_act16_apply(v, &va));
    }
  }
}
