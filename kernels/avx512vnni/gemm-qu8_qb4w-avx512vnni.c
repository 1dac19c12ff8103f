/* int4 GEMM block, AVX-512 VNNI: 4 rows x 32 output channels per register tile, nibbles widened
 * in registers, vpdpbusd per 4 k, one float accumulation per block (qinfer/qint4.h).
 *
 * Design: a step of the panel is one zmm of 64 bytes = 32 channels x 4 k, channel c's byte in
 * the low nibble (c < 16) or the high nibble (c >= 16) of byte 4 (c % 16) + k. `v & 0xF0` is the
 * high nibble times 16 as a signed byte, `(v << 4) & 0xF0` the low one (the 16-bit shift moves
 * bits across bytes, the mask drops them): two ALU ops give the two int8 operands of the step's
 * vpdpbusd pair, with no sign fix-up, and 16 q * x still sums exactly in int32. Per block the
 * tile's int32 sums (16 d) go to float and times the block's scales / 16 (scaled once per block,
 * shared by the rows: the arithmetic's own definition of t), into float accumulators: 8 int + 8 float zmm for 4 rows, plus the step, its two operands and the
 * row broadcast -- no spills, and 8 vpdpbusd per 64-byte load and 3 unpack ops (4 rows run at
 * about one vpdpbusd per cycle). One row (batch-1 dense layers, the memory-bound case int4 is for)
 * runs four chains over consecutive steps; its weights are one sequential stream of 0.5625 bytes
 * per weight (block 64: a panel's blocks are contiguous and panels follow each other), which the
 * hardware prefetcher keeps up with (software prefetch measured slower here, as it did not for
 * the int8 kernel's twice longer stream), and the loop runs at about the rate L2 delivers it.
 * Each step is loaded once into a register (gcc would fold the load into both unpack ops). No K
 * blocking: a panel (<= 74 KiB at K = 4096) stays in L2 while the row tiles walk over it. Column
 * edges: masked epilogue loads and stores (the packing zero-fills nibbles and scales past n).
 */
#include <immintrin.h>
#include "qinfer/ukernels.h"
#include "qepi-avx512vnni.h"

#define QI_MR 4
#define QI_FOR_ROWS(X) X(0) X(1) X(2) X(3)

/* per panel: what the epilogue needs, loaded once for every row tile */
typedef struct qi_q4panel {
  __mmask16 m0, m1;
  __m512 off0, off1, sc0, sc1, b0, b1;
  int has_bias;
} qi_q4panel;

/* y = (acc + offset) * scale (+ bias), the activation, then float or requantized uint8 out */
QI_INLINE void qi_q4e_store(__m512 acc, __m512 off, __m512 sc, __m512 bias, int has_bias,
                            const qi_qe16v *v, int code, int u8, void *out, __mmask16 m) {
  __m512 y = _mm512_mul_ps(_mm512_add_ps(acc, off), sc);
  if (has_bias) y = _mm512_add_ps(y, bias);
  y = qi_qe16_act_k(y, code, v->a, v->b);
  if (!u8) {
    _mm512_mask_storeu_ps(out, m, y);
    return;
  }
  /* t = y * inv + zp; t > 0 ? t : 0; the rounding convert, and the unsigned saturating narrow
   * clamps at 255 (qepi-avx512vnni.h says why that equals the scalar clamp-then-rint) */
  const __m512 t = _mm512_max_ps(_mm512_add_ps(_mm512_mul_ps(y, v->inv), v->zp), _mm512_setzero_ps());
  _mm_mask_storeu_epi8(out, m, _mm512_cvtusepi32_epi8(_mm512_cvtps_epi32(t)));
}

/* the two int8 operands (16 q) of a step: channels 0-15 and 16-31 */
#define QI_Q4_UNPACK(v, w0, w1)                                                 \
  __asm__("" : "+v"(v)); /* one load of the step: gcc would fold it into both ops */ \
  const __m512i w0 = _mm512_and_si512(_mm512_slli_epi16(v, 4), hi_mask);        \
  const __m512i w1 = _mm512_and_si512(v, hi_mask)

QI_INLINE void qi_q4tile(const int mr, size_t k, size_t block, size_t nblk, const uint8_t *a,
                         size_t lda, const uint8_t *panel, const qi_q4panel *P, const qi_qe16v *v,
                         int code, int u8, char *o, size_t ldo) {
  const __m512i hi_mask = _mm512_set1_epi8((char)0xF0);
  const __m512 sixteenth = _mm512_set1_ps(0.0625f);
  const size_t bstride = block * 16 + 128;
#define QI_DECL(r) __m512 f##r##0 = _mm512_setzero_ps(), f##r##1 = _mm512_setzero_ps();
  QI_FOR_ROWS(QI_DECL)
#undef QI_DECL
  for (size_t b = 0; b < nblk; b++) {
    const size_t k0 = b * block, len = k - k0 < block ? k - k0 : block;
    const size_t steps = len / 4, tail = len % 4;
    const uint8_t *bp = panel + b * bstride, *ap = a + k0;
#define QI_DECL(r) __m512i c##r##0 = _mm512_setzero_si512(), c##r##1 = _mm512_setzero_si512();
    QI_FOR_ROWS(QI_DECL)
#undef QI_DECL
    size_t t = 0;
    if (mr == 1) { /* four chains over consecutive steps: 8 vpdpbusd in flight */
      __m512i e0 = _mm512_setzero_si512(), e1 = _mm512_setzero_si512();
      __m512i g0 = _mm512_setzero_si512(), g1 = _mm512_setzero_si512();
      __m512i h0 = _mm512_setzero_si512(), h1 = _mm512_setzero_si512();
      for (; t + 4 <= steps; t += 4) {
        const uint8_t *sp = bp + 64 * t;
        __m512i va = _mm512_loadu_si512(sp), vb = _mm512_loadu_si512(sp + 64);
        __m512i vc = _mm512_loadu_si512(sp + 128), vd = _mm512_loadu_si512(sp + 192);
        QI_Q4_UNPACK(va, wa0, wa1);
        QI_Q4_UNPACK(vb, wb0, wb1);
        QI_Q4_UNPACK(vc, wc0, wc1);
        QI_Q4_UNPACK(vd, wd0, wd1);
        const uint8_t *xp = ap + 4 * t;
        const __m512i xa = _mm512_set1_epi32(qi_q_load_i32(xp)), xb = _mm512_set1_epi32(qi_q_load_i32(xp + 4));
        const __m512i xc = _mm512_set1_epi32(qi_q_load_i32(xp + 8)), xd = _mm512_set1_epi32(qi_q_load_i32(xp + 12));
        c00 = _mm512_dpbusd_epi32(c00, xa, wa0);
        c01 = _mm512_dpbusd_epi32(c01, xa, wa1);
        e0 = _mm512_dpbusd_epi32(e0, xb, wb0);
        e1 = _mm512_dpbusd_epi32(e1, xb, wb1);
        g0 = _mm512_dpbusd_epi32(g0, xc, wc0);
        g1 = _mm512_dpbusd_epi32(g1, xc, wc1);
        h0 = _mm512_dpbusd_epi32(h0, xd, wd0);
        h1 = _mm512_dpbusd_epi32(h1, xd, wd1);
      }
      c00 = _mm512_add_epi32(_mm512_add_epi32(c00, e0), _mm512_add_epi32(g0, h0));
      c01 = _mm512_add_epi32(_mm512_add_epi32(c01, e1), _mm512_add_epi32(g1, h1));
    }
#define QI_DOT(r, LOADA)                                          \
  if (mr > r) {                                                   \
    const __m512i x = _mm512_set1_epi32(LOADA);                   \
    c##r##0 = _mm512_dpbusd_epi32(c##r##0, x, w0);                \
    c##r##1 = _mm512_dpbusd_epi32(c##r##1, x, w1);                \
  }
#define QI_DOT_FULL(r) QI_DOT(r, qi_q_load_i32(ap + r * lda + 4 * t))
#define QI_DOT_TAIL(r) QI_DOT(r, qi_q_load_tail(ap + r * lda + 4 * t, tail))
    for (; t < steps; t++) {
      __m512i vs = _mm512_loadu_si512(bp + 64 * t);
      QI_Q4_UNPACK(vs, w0, w1);
      QI_FOR_ROWS(QI_DOT_FULL)
    }
    if (tail) {
      __m512i vs = _mm512_loadu_si512(bp + 64 * t);
      QI_Q4_UNPACK(vs, w0, w1);
      QI_FOR_ROWS(QI_DOT_TAIL)
      t++;
    }
#undef QI_DOT_FULL
#undef QI_DOT_TAIL
#undef QI_DOT
    /* the block's scales follow its steps; t = float(16 d) * (s * 0.0625), acc = acc + t */
    const __m512 s0 = _mm512_mul_ps(_mm512_loadu_ps(bp + 64 * t), sixteenth), s1 = _mm512_mul_ps(_mm512_loadu_ps(bp + 64 * t + 64), sixteenth);
#define QI_ACC(r)                                                                                  \
  if (mr > r) {                                                                                    \
    f##r##0 = _mm512_add_ps(f##r##0, _mm512_mul_ps(_mm512_cvtepi32_ps(c##r##0), s0)); \
    f##r##1 = _mm512_add_ps(f##r##1, _mm512_mul_ps(_mm512_cvtepi32_ps(c##r##1), s1)); \
  }
    QI_FOR_ROWS(QI_ACC)
#undef QI_ACC
  }
#define QI_OUT(r)                                                                                  \
  if (mr > r) {                                                                                    \
    qi_q4e_store(f##r##0, P->off0, P->sc0, P->b0, P->has_bias, v, code, u8, o + r * ldo, P->m0);   \
    if (P->m1)                                                                                     \
      qi_q4e_store(f##r##1, P->off1, P->sc1, P->b1, P->has_bias, v, code, u8,                      \
                   o + r * ldo + 16 * (u8 ? 1 : 4), P->m1);                                        \
  }
  QI_FOR_ROWS(QI_OUT)
#undef QI_OUT
}

void qi_gemm_qu8_qb4w__avx512vnni(size_t m, size_t n_begin, size_t n_end, size_t k,
                                  const uint8_t *a, size_t lda, const uint8_t *w,
                                  size_t panel_bytes, size_t block, const float *offset,
                                  const float *bias, const qi_qepi *ep) {
  const qi_qe16 E = qi_qe16_init(ep);
  const qi_qe16v v = qi_qe16v_of(&E);
  const size_t nblk = (k + block - 1) / block, es = ep->out_u8 ? 1 : 4;
  for (size_t j = n_begin; j < n_end; j += QI_QB4W_NR) {
    const uint8_t *panel = w + (j / QI_QB4W_NR) * panel_bytes;
    const size_t nvalid = n_end - j < QI_QB4W_NR ? n_end - j : QI_QB4W_NR;
    qi_q4panel P;
    P.m0 = nvalid >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nvalid) - 1);
    P.m1 = nvalid >= 32 ? (__mmask16)0xFFFF
           : nvalid <= 16 ? (__mmask16)0 : (__mmask16)((1u << (nvalid - 16)) - 1);
    P.off0 = _mm512_loadu_ps(offset + j);
    P.off1 = _mm512_loadu_ps(offset + j + 16);
    P.sc0 = _mm512_maskz_loadu_ps(P.m0, ep->scale + j);
    P.sc1 = _mm512_maskz_loadu_ps(P.m1, ep->scale + j + 16);
    P.has_bias = bias != NULL;
    P.b0 = P.has_bias ? _mm512_maskz_loadu_ps(P.m0, bias + j) : _mm512_setzero_ps();
    P.b1 = P.has_bias ? _mm512_maskz_loadu_ps(P.m1, bias + j + 16) : _mm512_setzero_ps();
    for (size_t i = 0; i < m; i += QI_MR) {
      char *o = (char *)ep->out + (i * ep->ldo + j) * es;
      const uint8_t *ai = a + i * lda;
      switch (m - i < QI_MR ? m - i : QI_MR) {
        case 4: qi_q4tile(4, k, block, nblk, ai, lda, panel, &P, &v, E.code, E.out_u8, o, ep->ldo * es); break;
        case 3: qi_q4tile(3, k, block, nblk, ai, lda, panel, &P, &v, E.code, E.out_u8, o, ep->ldo * es); break;
        case 2: qi_q4tile(2, k, block, nblk, ai, lda, panel, &P, &v, E.code, E.out_u8, o, ep->ldo * es); break;
        default: qi_q4tile(1, k, block, nblk, ai, lda, panel, &P, &v, E.code, E.out_u8, o, ep->ldo * es); break;
      }
    }
  }
}
