/* int4 GEMM block, portable C: the definition the SIMD variants follow (qinfer/qint4.h).
 *
 * Design: per 32-channel panel and row, the blocks in order: 32 int32 block sums over the
 * block's bytes (nibbles decoded one at a time, the packed bytes read in place, so every tier
 * reads the same layout), then per channel t = float(16 d) * (s * 0.0625) and acc = acc + t, as
 * the arithmetic defines them; the epilogue is qi_q4_store1. A K tail of k % 4 bytes reads only the
 * bytes the row has (the packing holds zero nibbles past k).
 */
#include "qinfer/ukernels.h"

void qi_gemm_qu8_qb4w__scalar(size_t m, size_t n_begin, size_t n_end, size_t k, const uint8_t *a,
                              size_t lda, const uint8_t *w, size_t panel_bytes, size_t block,
                              const float *offset, const float *bias, const qi_qepi *ep) {
  const size_t nblk = (k + block - 1) / block, bstride = block * 16 + 128;
  for (size_t j0 = n_begin; j0 < n_end; j0 += QI_QB4W_NR) {
    const uint8_t *panel = w + (j0 / QI_QB4W_NR) * panel_bytes;
    const size_t nr = n_end - j0 < QI_QB4W_NR ? n_end - j0 : QI_QB4W_NR;
    for (size_t i = 0; i < m; i++) {
      const uint8_t *ar = a + i * lda;
      float acc[QI_QB4W_NR];
      for (size_t j = 0; j < QI_QB4W_NR; j++) acc[j] = 0.0f;
      for (size_t b = 0; b < nblk; b++) {
        const size_t k0 = b * block, len = k - k0 < block ? k - k0 : block;
        const uint8_t *bp = panel + b * bstride;
        int32_t d[QI_QB4W_NR] = {0};
        for (size_t kk = 0; kk < len; kk++) {
          const int32_t x = ar[k0 + kk];
          const uint8_t *step = bp + (kk / 4) * 64 + kk % 4;
          for (size_t j = 0; j < 16; j++) {
            d[j] += x * qi_q4_nibble(step[4 * j], 0);
            d[16 + j] += x * qi_q4_nibble(step[4 * j], 1);
          }
        }
        float s[QI_QB4W_NR];
        memcpy(s, bp + (len + 3) / 4 * 64, sizeof s);
        for (size_t j = 0; j < QI_QB4W_NR; j++) {
          const float s16 = s[j] * 0.0625f;
          const float t = (float)(16 * d[j]) * s16;
          acc[j] = acc[j] + t;
        }
      }
      for (size_t j = 0; j < nr; j++) qi_q4_store1(ep, offset, bias, i, j0 + j, acc[j]);
    }
  }
}
