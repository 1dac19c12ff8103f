/* int4 conv / GEMM driver: common code (baseline flags, in kernels/scalar/ for that reason), run
 * by every ISA tier.
 *
 * Design: the int8 driver's plan (qint8-driver.c) for the int4 kernels. A thread owns a rectangle
 * of the output, rows [m_begin, m_end) x panels [p_begin, p_end), cut statically by the Cython
 * driver. A GEMM, and a 1x1 / stride 1 / unpadded conv, hands the kernel its rows in place (the
 * int4 kernel has no K blocking, so it needs no scratch). Other convs go through blocks of at most
 * QI_Q4_MC patch rows gathered into the thread's scratch, once per (row block, group) and shared by
 * every panel of that group: each patch is kh*kw runs of cin bytes of x, or cin bytes of zp_x where
 * the tap falls in the padding (the folded offset cancels them as it cancels the zero point
 * everywhere). Rows and channels are computed whole by one kernel call, so the rectangle and the
 * block size change no output.
 */
#include "qinfer/ukernels.h"

#define QI_Q4_MC 64 /* patch rows per block: 64 x k bytes stay in L2 next to the panel */

size_t qi_q4conv_scratch_bytes(const qi_q4conv_problem *p, size_t rows) {
  if (p->c.direct || rows == 0) return 0;
  return (rows < QI_Q4_MC ? rows : QI_Q4_MC) * p->c.k;
}

/* the patch of output pixel r, group g, into dst[k] */
static void qi_q4_patch(const qi_qconv_problem *p, size_t g, size_t r, uint8_t *dst) {
  const qi_conv2d_geom *ge = &p->geom;
  const size_t ohw = ge->out_h * ge->out_w, img = r / ohw, pix = r % ohw;
  const size_t oy = pix / ge->out_w, ox = pix % ge->out_w, run = p->cin;
  const uint8_t *xi = p->x + img * ge->in_h * ge->in_w * p->cin_total + g * p->cin;
  for (size_t ky = 0; ky < ge->k_h; ky++) {
    const ptrdiff_t iy = (ptrdiff_t)(oy * ge->stride_h + ky * ge->dil_h) - (ptrdiff_t)ge->pad_top;
    for (size_t kx = 0; kx < ge->k_w; kx++, dst += run) {
      const ptrdiff_t ix = (ptrdiff_t)(ox * ge->stride_w + kx * ge->dil_w) - (ptrdiff_t)ge->pad_left;
      const int inside = iy >= 0 && iy < (ptrdiff_t)ge->in_h && ix >= 0 && ix < (ptrdiff_t)ge->in_w;
      if (inside)
        memcpy(dst, xi + ((size_t)iy * ge->in_w + (size_t)ix) * p->cin_total, run);
      else
        memset(dst, p->zp_x, run);
    }
  }
}

void qi_q4conv_run(const qi_q4conv_problem *p4, qi_gemm_qu8_qb4w_fn *fn, size_t m_begin,
                   size_t m_end, size_t p_begin, size_t p_end, void *scratch) {
  const qi_qconv_problem *p = &p4->c;
  if (m_begin >= m_end || p_begin >= p_end) return;
  const size_t ppg = p->n_pad / QI_QB4W_NR; /* panels per group */
  const size_t es = p->ep.out_u8 ? 1 : sizeof(float);
  const size_t mc = p->direct ? m_end - m_begin : QI_Q4_MC;
  uint8_t *cols = (uint8_t *)scratch;
  for (size_t r0 = m_begin; r0 < m_end; r0 += mc) {
    const size_t m = m_end - r0 < mc ? m_end - r0 : mc;
    for (size_t g = p_begin / ppg; g * ppg < p_end; g++) {
      size_t n0, n1;
      if (!qi_group_cols(g, ppg, p_begin, p_end, QI_QB4W_NR, p->n, &n0, &n1)) continue;
      const uint8_t *a = p->x + r0 * p->lda + g * p->cin;
      size_t lda = p->lda;
      if (!p->direct) {
        for (size_t i = 0; i < m; i++) qi_q4_patch(p, g, r0 + i, cols + i * p->k);
        a = cols;
        lda = p->k;
      }
      qi_qepi ep = p->ep;
      ep.scale = p->ep.scale + g * p->n;
      ep.out = (char *)p->ep.out + (r0 * p->ep.ldo + g * p->n) * es;
      fn(m, n0, n1, p->k, a, lda, p4->w + g * ppg * p4->panel_bytes, p4->panel_bytes, p4->block,
         p4->offset + g * p->n_pad, p4->bias ? p4->bias + g * p->n : NULL, &ep);
      qi_qconv_residual(p, r0, m, g * p->n + n0, g * p->n + n1);
    }
  }
}
