/* Sparse int8 GEMM block, portable C: the definition the SIMD variants follow (qinfer/qsparse.h).
 *
 * Design: per row and channel, one int32 accumulator starts from the folded bias and takes the
 * channel's non-zero blocks in stored order (segment by segment, the records read in place, so
 * every tier reads the same bytes); a block adds sum_t A[i, 4 kb + t] * w[t] over the t with
 * 4 kb + t < k (a K tail reads no byte past the row). Integer sums are exact, so the dense int8
 * kernels' result on the same zero-filled weights is this one bit for bit. Record ranges and kb are
 * clamped (qi_sb4w_range, kb < kg) so malformed weights cannot move a read out of bounds. The
 * epilogue is qi_q_store1, the scalar definition of the float math and the requantization. Conv
 * patches (a == NULL) are built one row at a time in the scratch by the int8 driver's im2col.
 */
#include "qinfer/ukernels.h"

void qi_spmm_qu8_sb4w__scalar(size_t m, size_t n_begin, size_t n_end, size_t k,
                              const uint8_t *a, size_t lda, const qi_sp_patches *pa,
                              const int32_t *bias, const uint32_t *ptr, size_t nseg, size_t seg,
                              const qi_sb4w_rec *rec, size_t nnzb, const qi_qepi *ep,
                              void *scratch) {
  (void)seg;
  const size_t kg = (k + 3) / 4;
  for (size_t i = 0; i < m; i++) {
    const uint8_t *ar;
    if (a) {
      ar = a + i * lda;
    } else { /* conv patches: this row's, built in scratch */
      qi_qconv_patches(pa->conv, pa->g, pa->r0 + i, 1, (uint8_t *)scratch);
      ar = (const uint8_t *)scratch;
    }
    for (size_t j = n_begin; j < n_end; j++) {
      size_t b, e;
      qi_sb4w_range(ptr, nseg, j, 0, nseg, nnzb, &b, &e);
      int32_t acc = bias[j];
      for (size_t r = b; r < e; r++) {
        const size_t kb = rec[r].kb < kg ? rec[r].kb : 0;
        int8_t w[4];
        memcpy(w, &rec[r].w, 4);
        for (size_t t = 0; t < 4; t++)
          if (4 * kb + t < k) acc += (int32_t)ar[4 * kb + t] * w[t];
      }
      qi_q_store1(ep, i, j, acc);
    }
  }
}
