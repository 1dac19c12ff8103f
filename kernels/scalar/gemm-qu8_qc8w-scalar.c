/* int8 GEMM block, portable C: the definition the SIMD variants follow (qinfer/qint8.h).
 *
 * Design: per 32-column panel and row, 32 int32 accumulators start from the folded bias and take
 * the K groups of 4 in order (w read in the packed panel layout, so the same bytes feed every
 * tier); integer sums are exact, so any other order would give the same acc. The epilogue is
 * qi_q_store1, the scalar definition of the float math and the round-half-even requantization.
 */
#include "qinfer/ukernels.h"

void qi_gemm_qu8_qc8w__scalar(size_t m, size_t n_begin, size_t n_end, size_t k,
                              const uint8_t *a, size_t lda, const int32_t *bias,
                              const int8_t *w, size_t k_pad, const qi_qepi *ep, int32_t *acc) {
  (void)acc;
  const size_t kg = k / 4, tail = k % 4;
  for (size_t j0 = n_begin; j0 < n_end; j0 += QI_QC8W_NR) {
    const int8_t *panel = w + (j0 / QI_QC8W_NR) * k_pad * QI_QC8W_NR;
    const size_t nr = n_end - j0 < QI_QC8W_NR ? n_end - j0 : QI_QC8W_NR;
    for (size_t i = 0; i < m; i++) {
      const uint8_t *ar = a + i * lda;
      int32_t c[QI_QC8W_NR];
      for (size_t j = 0; j < QI_QC8W_NR; j++) c[j] = bias[j0 + j];
      for (size_t g = 0; g < kg; g++) {
        const int8_t *b = panel + g * 4 * QI_QC8W_NR;
        const int32_t a0 = ar[4 * g], a1 = ar[4 * g + 1], a2 = ar[4 * g + 2], a3 = ar[4 * g + 3];
        for (size_t j = 0; j < QI_QC8W_NR; j++)
          c[j] += a0 * b[4 * j] + a1 * b[4 * j + 1] + a2 * b[4 * j + 2] + a3 * b[4 * j + 3];
      }
      if (tail) {
        const int8_t *b = panel + kg * 4 * QI_QC8W_NR;
        for (size_t j = 0; j < QI_QC8W_NR; j++)
          for (size_t t = 0; t < tail; t++) c[j] += (int32_t)ar[4 * kg + t] * b[4 * j + t];
      }
      for (size_t j = 0; j < nr; j++) qi_q_store1(ep, i, j0 + j, c[j]);
    }
  }
}
