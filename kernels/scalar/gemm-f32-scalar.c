/* fp32 GEMM with fused bias + activation, portable C: 4 x 8 register tile.
 *
 * Design: the same macro loop and operand layouts as the SIMD variants (qinfer/gemm.h), with a
 * plain-C tile the compiler keeps in registers (and may vectorize along the 8 columns with the
 * baseline SSE2). Each element is bias (or 0), then acc = acc + a * b for k ascending, in separate
 * multiply and add (the build uses -ffp-contract=off, so no silent FMA): this defines the math
 * the SIMD variants follow with FMA. Column edges loop only over j < nr (nothing past the
 * operands is read).
 */
#include "qinfer/ukernels.h"

#define MR 4
#define NR 8
#define KC 128
#define NC 512
#define MC 512

static void qi_tile_scalar(const qi_gemm_f32_tile *t) {
  const size_t kc = t->kc, lda = t->lda, ldb = t->ldb, ldc = t->ldc, mr = t->mr, nr = t->nr;
  const size_t ars = t->a_packed ? 1 : lda, aks = t->a_packed ? QI_GEMM_F32_PANEL : 1;
  float acc[MR][NR];
  for (size_t i = 0; i < mr; i++)
    for (size_t j = 0; j < nr; j++)
      acc[i][j] = (t->flags & QI_GEMM_FIRST)
                      ? (t->bias_row ? t->bias_row[i] : t->bias_col ? t->bias_col[j] : 0.0f)
                      : t->c[i * ldc + j];
  if (mr == MR && nr == NR) {
    for (size_t k = 0; k < kc; k++) {
      const float *b = t->b + k * ldb;
      for (size_t i = 0; i < MR; i++) {
        const float av = t->a[i * ars + k * aks];
        for (size_t j = 0; j < NR; j++) acc[i][j] = acc[i][j] + av * b[j];
      }
    }
  } else {
    for (size_t k = 0; k < kc; k++) {
      const float *b = t->b + k * ldb;
      for (size_t i = 0; i < mr; i++) {
        const float av = t->a[i * ars + k * aks];
        for (size_t j = 0; j < nr; j++) acc[i][j] = acc[i][j] + av * b[j];
      }
    }
  }
  const int act = (t->flags & QI_GEMM_LAST) && qi_act_any(t->act);
  for (size_t i = 0; i < mr; i++)
    for (size_t j = 0; j < nr; j++)
      t->c[i * ldc + j] = act ? qi_act_scalar(acc[i][j], t->act) : acc[i][j];
}

void qi_gemm_f32__scalar(size_t m_begin, size_t m_end, size_t n_begin, size_t n_end, size_t k,
                         const float *a, size_t lda, int a_packed, const qi_gemm_f32_b *b, float *c,
                         size_t ldc, const float *bias, int bias_axis, const qi_act *act,
                         float *scratch) {
  qi_gemm_f32_run(m_begin, m_end, n_begin, n_end, k, a, lda, a_packed, b, c, ldc, bias, bias_axis,
                  act, scratch, MR, NR, KC, NC, MC, qi_tile_scalar);
}
