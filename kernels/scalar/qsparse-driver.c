/* Sparse int8 conv / GEMM driver: common code (baseline flags, in kernels/scalar/ for that reason),
 * run by every ISA tier.
 *
 * Design: the int8 driver's plan (qint8-driver.c) for the sparse kernels. A thread owns a
 * rectangle of the output, rows [m_begin, m_end) x units of 16 channels [u_begin, u_end), cut
 * statically by the Cython driver. A GEMM, and a 1x1 / stride 1 / unpadded conv, hands the kernel
 * its rows in place (the kernel re-packs them K-group-major itself, QI_SPMM_MR rows at a time).
 * Other convs: with a multiple of 64 input channels per group the kernel reads the patches in
 * place (qi_sp_patches: the AVX-512 variant re-packs them straight from x, a 64-byte piece of a
 * row never straddling two taps, or for stride 1 runs from planes, whose bytes the scratch here
 * includes; the others build them with the im2col below); otherwise blocks of
 * QI_SPMM_MR patch rows built by the dense int8 driver's im2col (qi_qconv_patches: the same
 * patches, padding taps zp_x, zeros past k), once per (row block, group) and shared by every
 * channel of that group. Integer sums are exact, so the rectangle and
 * the block sizes change no output.
 */
#include "qinfer/ukernels.h"

#define QI_ALIGN64(n) (((n) + 63) & ~(size_t)63)

/* conv patches read in place by the kernel (qinfer/qsparse.h, qi_sp_patches) */
static int qi_spconv_patches_in_place(const qi_spconv_problem *p) {
  return !p->c.direct && p->c.cin % QI_SP_PATCH_CIN == 0;
}

static size_t qi_spconv_cols_bytes(const qi_spconv_problem *p, size_t rows) {
  if (p->c.direct || qi_spconv_patches_in_place(p) || rows == 0) return 0;
  size_t mc = rows < QI_SPMM_MR ? rows : QI_SPMM_MR;
  return QI_ALIGN64(mc * qi_qconv_patch_stride(p->c.k_pad) + qi_qconv_patch_slack());
}

size_t qi_spconv_scratch_bytes(const qi_spconv_problem *p, size_t rows) {
  qi_sp_planes_geom pg;
  const size_t planes =
      qi_spconv_patches_in_place(p) && qi_sp_planes_geometry(&p->c, &pg) ? pg.bytes : 0;
  return qi_spconv_cols_bytes(p, rows) + QI_ALIGN64(qi_spmm_scratch_bytes(p->c.k_pad)) + planes;
}

void qi_spconv_run(const qi_spconv_problem *p, qi_spmm_qu8_sb4w_fn *fn, size_t m_begin,
                   size_t m_end, size_t u_begin, size_t u_end, void *scratch) {
  const qi_qconv_problem *c = &p->c;
  if (m_begin >= m_end || u_begin >= u_end) return;
  const size_t upg = c->n_pad / QI_SB4W_NR; /* units per group */
  const size_t es = c->ep.out_u8 ? 1 : sizeof(float);
  const int in_place = qi_spconv_patches_in_place(p);
  const size_t mc = c->direct || in_place ? m_end - m_begin : QI_SPMM_MR;
  uint8_t *cols = (uint8_t *)scratch;
  void *kscratch = (uint8_t *)scratch + qi_spconv_cols_bytes(p, m_end - m_begin);
  for (size_t r0 = m_begin; r0 < m_end; r0 += mc) {
    const size_t m = m_end - r0 < mc ? m_end - r0 : mc;
    for (size_t g = u_begin / upg; g * upg < u_end; g++) {
      size_t n0, n1;
      if (!qi_group_cols(g, upg, u_begin, u_end, QI_SB4W_NR, c->n, &n0, &n1)) continue;
      const uint8_t *a;
      size_t lda, k;
      qi_sp_patches pa = {c, g, r0};
      if (in_place) {
        a = NULL;
        lda = 0;
        k = c->k_pad;
      } else if (c->direct) {
        a = c->x + r0 * c->lda + g * c->cin;
        lda = c->lda;
        k = c->k;
      } else {
        qi_qconv_patches(c, g, r0, m, cols);
        a = cols;
        lda = qi_qconv_patch_stride(c->k_pad);
        k = c->k_pad; /* zeros past k meet no weight (kb < ceil(k / 4) holds its tail zeros) */
      }
      qi_qepi ep = c->ep;
      ep.scale = c->ep.scale + g * c->n;
      ep.out = (char *)c->ep.out + (r0 * c->ep.ldo + g * c->n) * es;
      fn(m, n0, n1, k, a, lda, &pa, p->bias + g * c->n_pad, p->ptr + g * c->n_pad * p->nseg, p->nseg,
         p->seg, p->rec, p->nnzb, &ep, kscratch);
      qi_qconv_residual(c, r0, m, g * c->n + n0, g * c->n + n1);
    }
  }
}
