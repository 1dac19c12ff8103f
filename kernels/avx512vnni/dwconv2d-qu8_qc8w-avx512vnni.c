/* int8 depthwise conv, NHWC, AVX-512 VNNI: quad rows + vpdpbusd, 16 channels per zmm.
 *
 * Design: for each output row the kernel first interleaves the (up to 4) input rows one kernel
 * column needs into a "quad row" Q (qinfer/qint8.h: 4 bytes per channel and padded input column,
 * zp_x in the padding), reused by every output pixel and kernel column that reads that input
 * column. Then one vpdpbusd of 16 channel quads with the matching weight quads adds a whole
 * kernel column: a 3x3 output pixel is 3 vpdpbusd per 16 channels instead of 9 multiplies.
 * Building Q costs about as much as the dot products, so a 3x3 / stride-1 / undilated conv builds
 * one Q of 4 input rows for two output rows: row oy takes kernel rows (0, 1, 2, -) of it, row
 * oy + 1 the same Q with the weights shifted one lane, (-, 0, 1, 2) (built per call in scratch).
 * Q is built 32 channels at a time (ymm unpacks, lanes put back in order by vperm2i128).
 * Integer sums are exact; the epilogue is qepi-avx512vnni.h, bit-identical to the scalar kernel.
 * Channel tails: masked loads and stores (Q and the weights are padded to 16 channels).
 */
#include <immintrin.h>
#include "qinfer/ukernels.h"
#include "qepi-avx512vnni.h"

/* 32 channels of 4 rows -> 32 quads at dst (ymm unpacks; lanes put back in order) */
QI_INLINE void qi_qdw_quads32(__m256i r0, __m256i r1, __m256i r2, __m256i r3, uint8_t *dst,
                              int upper) {
  const __m256i p01l = _mm256_unpacklo_epi8(r0, r1), p01h = _mm256_unpackhi_epi8(r0, r1);
  const __m256i p23l = _mm256_unpacklo_epi8(r2, r3), p23h = _mm256_unpackhi_epi8(r2, r3);
  const __m256i q0 = _mm256_unpacklo_epi16(p01l, p23l), q1 = _mm256_unpackhi_epi16(p01l, p23l);
  const __m256i q2 = _mm256_unpacklo_epi16(p01h, p23h), q3 = _mm256_unpackhi_epi16(p01h, p23h);
  /* lanes: q0 = ch 0-3 | 16-19, q1 = 4-7 | 20-23, q2 = 8-11 | 24-27, q3 = 12-15 | 28-31 */
  __m256i *d = (__m256i *)dst;
  _mm256_storeu_si256(d + 0, _mm256_permute2x128_si256(q0, q1, 0x20));
  _mm256_storeu_si256(d + 1, _mm256_permute2x128_si256(q2, q3, 0x20));
  if (upper) {
    _mm256_storeu_si256(d + 2, _mm256_permute2x128_si256(q0, q1, 0x31));
    _mm256_storeu_si256(d + 3, _mm256_permute2x128_si256(q2, q3, 0x31));
  }
}

/* one quad row; src[q][t]: an input row (cstride c) or a constant row of c_pad + 32 bytes (zp_x
 * or 0, cstride 0). Padding columns are one precomputed column copied; interior columns walk
 * the rows with pointer increments. */
static void qi_qdw_build(const qi_conv2d_geom *g, size_t c, size_t c_pad, size_t cb0, size_t cb1,
                         size_t nq, const uint8_t *const src[][4], const size_t cstride[][4],
                         const uint8_t *zp_row, uint8_t *Q) {
  const size_t we = qi_qdw_row_width(g), col = nq * c_pad * 4;
  const size_t pl = g->pad_left, pr = we - pl - g->in_w;
  for (size_t q = 0; q < nq; q++) {
    /* the padding column: zp_x for real rows, 0 for rows past the kernel */
    uint8_t *pad = Q + q * c_pad * 4;
    const uint8_t *pc[4];
    for (int t = 0; t < 4; t++) pc[t] = cstride[q][t] ? zp_row : src[q][t];
    if (pl + pr) {
      if (!pl) pad = Q + (pl + g->in_w) * col + q * c_pad * 4;
      for (size_t c0 = cb0; c0 < cb1; c0 += 32)
        qi_qdw_quads32(_mm256_loadu_si256((const __m256i *)(pc[0] + c0)),
                       _mm256_loadu_si256((const __m256i *)(pc[1] + c0)),
                       _mm256_loadu_si256((const __m256i *)(pc[2] + c0)),
                       _mm256_loadu_si256((const __m256i *)(pc[3] + c0)), pad + c0 * 4,
                       c0 + 16 < cb1);
      for (size_t e = 0; e < we; e++) {
        if (e >= pl && e < pl + g->in_w) continue;
        uint8_t *dst = Q + e * col + q * c_pad * 4;
        if (dst != pad) memcpy(dst + cb0 * 4, pad + cb0 * 4, (cb1 - cb0) * 4);
      }
    }
    const uint8_t *p0 = src[q][0], *p1 = src[q][1], *p2 = src[q][2], *p3 = src[q][3];
    const size_t s0 = cstride[q][0], s1 = cstride[q][1], s2 = cstride[q][2], s3 = cstride[q][3];
    uint8_t *dst = Q + pl * col + q * c_pad * 4;
    for (size_t ix = 0; ix < g->in_w; ix++, p0 += s0, p1 += s1, p2 += s2, p3 += s3, dst += col) {
      size_t c0 = cb0;
      for (; c0 + 32 <= c && c0 + 32 <= cb1; c0 += 32)
        qi_qdw_quads32(_mm256_loadu_si256((const __m256i *)(p0 + c0)),
                       _mm256_loadu_si256((const __m256i *)(p1 + c0)),
                       _mm256_loadu_si256((const __m256i *)(p2 + c0)),
                       _mm256_loadu_si256((const __m256i *)(p3 + c0)), dst + c0 * 4, 1);
      if (c0 < cb1) { /* tail: only input rows need the mask, constant rows are long enough */
        const __mmask32 m = c0 < c ? (__mmask32)(0xFFFFFFFFu >> (32 - (c - c0 < 32 ? c - c0 : 32)))
                                   : (__mmask32)0;
#define QI_LD(P, S) ((S) ? _mm256_maskz_loadu_epi8(m, (P) + c0) : _mm256_loadu_si256((const __m256i *)((P) + c0)))
        qi_qdw_quads32(QI_LD(p0, s0), QI_LD(p1, s1), QI_LD(p2, s2), QI_LD(p3, s3), dst + c0 * 4,
                       c0 + 16 < cb1);
#undef QI_LD
      }
    }
  }
}

/* 3 quads per pixel (3x3 and other 3-wide kernels up to 4 rows): unrolled, weights in registers,
 * epilogue instantiated per (activation, output type, full block) */
QI_INLINE void qi_qdw3(const int code, const int u8, const int full, const uint8_t *qx,
                       size_t sx, size_t d1, __m512i b, __m512i w0, __m512i w1, __m512i w2,
                       __m512 s, const qi_qe16 *E, char *o, size_t ostep, size_t n, __mmask16 m) {
  const qi_qe16v v = qi_qe16v_of(E);
  for (size_t i = 0; i < n; i++, qx += sx, o += ostep) {
    __m512i acc = _mm512_dpbusd_epi32(b, _mm512_loadu_si512(qx), w0);
    acc = _mm512_dpbusd_epi32(acc, _mm512_loadu_si512(qx + d1), w1);
    acc = _mm512_dpbusd_epi32(acc, _mm512_loadu_si512(qx + 2 * d1), w2);
    qi_qe16_store_k(acc, s, v, o, m, code, u8, full);
  }
}

/* any other kernel: taps t = (kx, q) at Q offsets qoff[t] with weight quads wc + woff[t]; four
 * output pixels at a time, so four independent vpdpbusd chains hide the instruction's latency
 * (one pixel at a time waits on it: a 5x5 kernel is a chain of 10) */
QI_INLINE void qi_qdwn(const int code, const int u8, const int full, const uint8_t *qx, size_t sx,
                       size_t ntap, const size_t *qoff, const int8_t *wc, const size_t *woff,
                       __m512i b, __m512 s, const qi_qe16 *E, char *o, size_t ostep, size_t n,
                       __mmask16 m) {
  const qi_qe16v v = qi_qe16v_of(E);
  size_t i = 0;
  for (; i + 4 <= n; i += 4, qx += 4 * sx, o += 4 * ostep) {
    __m512i a0 = b, a1 = b, a2 = b, a3 = b;
    for (size_t t = 0; t < ntap; t++) {
      const __m512i wv = _mm512_loadu_si512(wc + woff[t]);
      const uint8_t *p = qx + qoff[t];
      a0 = _mm512_dpbusd_epi32(a0, _mm512_loadu_si512(p), wv);
      a1 = _mm512_dpbusd_epi32(a1, _mm512_loadu_si512(p + sx), wv);
      a2 = _mm512_dpbusd_epi32(a2, _mm512_loadu_si512(p + 2 * sx), wv);
      a3 = _mm512_dpbusd_epi32(a3, _mm512_loadu_si512(p + 3 * sx), wv);
    }
    qi_qe16_store_k(a0, s, v, o, m, code, u8, full);
    qi_qe16_store_k(a1, s, v, o + ostep, m, code, u8, full);
    qi_qe16_store_k(a2, s, v, o + 2 * ostep, m, code, u8, full);
    qi_qe16_store_k(a3, s, v, o + 3 * ostep, m, code, u8, full);
  }
  for (; i < n; i++, qx += sx, o += ostep) {
    __m512i acc = b;
    for (size_t t = 0; t < ntap; t++)
      acc = _mm512_dpbusd_epi32(acc, _mm512_loadu_si512(qx + qoff[t]),
                                _mm512_loadu_si512(wc + woff[t]));
    qi_qe16_store_k(acc, s, v, o, m, code, u8, full);
  }
}

#define QI_QDW_TAPS_MAX 64 /* kernels with more taps (k_w * quads) take the plain loop */

/* output pixels [ox0, ox1) of output row oy from quad row Q with weight quads w */
static void qi_qdw_row(const qi_conv2d_geom *g, size_t c_begin, size_t c_end, size_t c_pad,
                       size_t nq, const uint8_t *Q, const int8_t *w, const int32_t *bias,
                       const qi_qepi *ep, const qi_qe16 *E, size_t oy, size_t ox0, size_t ox1) {
  const size_t es = ep->out_u8 ? 1 : 4, qstep = nq * c_pad * 4;
  for (size_t c0 = c_begin; c0 < c_end; c0 += 16) {
    const int full = c0 + 16 <= c_end;
    const __mmask16 m = full ? (__mmask16)0xFFFF : (__mmask16)((1u << (c_end - c0)) - 1);
    const __m512i b = _mm512_loadu_si512(bias + c0);
    const __m512 s = _mm512_maskz_loadu_ps(m, ep->scale + c0);
    const uint8_t *qc = Q + c0 * 4;
    const int8_t *wc = w + c0 * 4;
    char *o = (char *)ep->out + ((oy * g->out_w) * ep->ldo + c0) * es;
    if (nq == 1 && g->k_w == 3) {
      const size_t d1 = g->dil_w * qstep, sx = g->stride_w * qstep;
      const __m512i w0 = _mm512_loadu_si512(wc), w1 = _mm512_loadu_si512(wc + c_pad * 4),
                    w2 = _mm512_loadu_si512(wc + 2 * c_pad * 4);
#define QI_QDW3_CASE(CODE, U8, FULL)                                                          \
  qi_qdw3(CODE, U8, FULL, qc + ox0 * sx, sx, d1, b, w0, w1, w2, s, E,                       \
          o + ox0 * ep->ldo * es, ep->ldo * es, ox1 - ox0, m)
      QI_QE16_DISPATCH(E, full, QI_QDW3_CASE)
#undef QI_QDW3_CASE
      continue;
    }
    const size_t ntap = g->k_w * nq;
    if (ntap <= QI_QDW_TAPS_MAX) {
      size_t qoff[QI_QDW_TAPS_MAX], woff[QI_QDW_TAPS_MAX];
      for (size_t kx = 0, t = 0; kx < g->k_w; kx++)
        for (size_t q = 0; q < nq; q++, t++) {
          qoff[t] = kx * g->dil_w * qstep + q * c_pad * 4;
          woff[t] = (kx * nq + q) * c_pad * 4;
        }
      const size_t sx = g->stride_w * qstep;
#define QI_QDWN_CASE(CODE, U8, FULL)                                                          \
  qi_qdwn(CODE, U8, FULL, qc + ox0 * sx, sx, ntap, qoff, wc, woff, b, s, E,                  \
          o + ox0 * ep->ldo * es, ep->ldo * es, ox1 - ox0, m)
      QI_QE16_DISPATCH(E, full, QI_QDWN_CASE)
#undef QI_QDWN_CASE
      continue;
    }
    for (size_t ox = ox0; ox < ox1; ox++) {
      __m512i acc = b;
      const uint8_t *qx = qc + ox * g->stride_w * qstep;
      for (size_t kx = 0; kx < g->k_w; kx++) {
        const uint8_t *qk = qx + kx * g->dil_w * qstep;
        const int8_t *wk = wc + kx * nq * c_pad * 4;
        for (size_t q = 0; q < nq; q++)
          acc = _mm512_dpbusd_epi32(acc, _mm512_loadu_si512(qk + q * c_pad * 4),
                                    _mm512_loadu_si512(wk + q * c_pad * 4));
      }
      qi_qe16_store(acc, s, E, o + ox * ep->ldo * es, m);
    }
  }
}

void qi_dwconv2d_qu8_qc8w__avx512vnni(const qi_conv2d_geom *g, size_t c, size_t c_begin,
                                      size_t c_end, size_t p_begin, size_t p_end, const uint8_t *x, const int32_t *bias,
                                      const int8_t *w, size_t c_pad, uint8_t zp_x,
                                      const qi_qepi *ep, uint8_t *scratch) {
  const qi_qe16 E = qi_qe16_init(ep);
  const size_t nq = qi_qdw_nq(g);
  uint8_t *Q = scratch;
  uint8_t *zp_row = Q + qi_qdw_row_width(g) * nq * c_pad * 4;
  uint8_t *zero_row = zp_row + c_pad + 32;
  int8_t *w_shift = (int8_t *)(zero_row + c_pad + 32);
  const size_t cb1 = (c_end + 15) / 16 * 16; /* channels of Q this call builds: [c_begin, cb1) */
  memset(zp_row, zp_x, c_pad + 32);
  memset(zero_row, 0, c_pad + 32);
  const int pairs = g->stride_h == 1 && g->dil_h == 1 && g->k_h <= 3;
  if (pairs) { /* weights for the second row of a pair: lane t takes kernel row t - 1 */
    for (size_t kx = 0; kx < g->k_w; kx++)
      for (size_t ch = c_begin; ch < cb1; ch++) {
        const int8_t *s4 = w + 4 * (kx * c_pad + ch);
        int8_t *d4 = w_shift + 4 * (kx * c_pad + ch);
        d4[0] = 0, d4[1] = s4[0], d4[2] = s4[1], d4[3] = s4[2];
      }
  }
  const uint8_t *src[QI_QDW_NQ_MAX][4];
  size_t cstride[QI_QDW_NQ_MAX][4];
  size_t p = p_begin;
  while (p < p_end) {
    const size_t oy = p / g->out_w, ox0 = p - oy * g->out_w;
    const size_t ox1 = p_end - oy * g->out_w < g->out_w ? p_end - oy * g->out_w : g->out_w;
    const int two = pairs && oy + 1 < g->out_h && (oy + 1) * g->out_w < p_end;
    for (size_t q = 0; q < nq; q++)
      for (size_t t = 0; t < 4; t++) {
        const size_t ky = 4 * q + t;
        const ptrdiff_t iy = (ptrdiff_t)(oy * g->stride_h + ky * g->dil_h) - (ptrdiff_t)g->pad_top;
        if (ky >= g->k_h + (two ? 1 : 0)) { /* a pair's second row reads one row further */
          src[q][t] = zero_row, cstride[q][t] = 0;
        } else if (iy < 0 || iy >= (ptrdiff_t)g->in_h) {
          src[q][t] = zp_row, cstride[q][t] = 0;
        } else {
          src[q][t] = x + (size_t)iy * g->in_w * c, cstride[q][t] = c;
        }
      }
    qi_qdw_build(g, c, c_pad, c_begin, cb1, nq, (const uint8_t *const(*)[4])src,
                 (const size_t(*)[4])cstride, zp_row, Q);
    qi_qdw_row(g, c_begin, c_end, c_pad, nq, Q, w, bias, ep, &E, oy, ox0, ox1);
    p = oy * g->out_w + ox1;
    if (two) {
      const size_t ox1b = p_end - (oy + 1) * g->out_w < g->out_w ? p_end - (oy + 1) * g->out_w
                                                                  : g->out_w;
      qi_qdw_row(g, c_begin, c_end, c_pad, nq, Q, w_shift, bias, ep, &E, oy + 1, 0, ox1b);
      p = (oy + 1) * g->out_w + ox1b;
    }
  }
}
