/* int8 depthwise conv, NHWC, AVX2: quad rows + vpmaddwd, 8 channels per step.
 *
 * Design: the quad rows of the AVX-512 kernel (qinfer/qint8.h), built with SSE2 unpacks once per
 * output row; without VNNI, 8 channel quads (32 bytes) are widened to int16 (u8 zero-, weights
 * sign-extended) and vpmaddwd gives two exact int32 half sums per channel (rows 0-1, rows 2-3),
 * accumulated apart and folded once per pixel (vphaddd + vpermq), as the AVX2 GEMM does. Integer
 * sums are exact; the epilogue is qepi-avx2.h, bit-identical to the scalar kernel. Channel tails
 * go through a zero-padded copy (Q and the weights are padded to 16 channels).
 */
#include <immintrin.h>
#include "qinfer/ukernels.h"
#include "qepi-avx2.h"

static void qi_qdw_build(const qi_conv2d_geom *g, size_t c, size_t c_pad, size_t cb0, size_t cb1,
                         const uint8_t *x, uint8_t zp_x, size_t oy, uint8_t *Q) {
  const size_t nq = qi_qdw_nq(g), we = qi_qdw_row_width(g);
  const __m128i zpv = _mm_set1_epi8((char)zp_x), zero = _mm_setzero_si128();
  for (size_t q = 0; q < nq; q++) {
    const uint8_t *rows[4];
    int beyond[4];
    for (int t = 0; t < 4; t++) rows[t] = qi_qdw_src_row(g, c, x, oy, 4 * q + (size_t)t, &beyond[t]);
    for (size_t e = 0; e < we; e++) {
      const ptrdiff_t ix = (ptrdiff_t)e - (ptrdiff_t)g->pad_left;
      const int col_ok = ix >= 0 && ix < (ptrdiff_t)g->in_w;
      uint8_t *dst = Q + (e * nq + q) * c_pad * 4;
      for (size_t c0 = cb0; c0 < cb1; c0 += 16) {
        const size_t n = c0 + 16 <= c ? 16 : c0 < c ? c - c0 : 0;
        __m128i r[4];
        for (int t = 0; t < 4; t++) {
          if (beyond[t]) {
            r[t] = zero;
          } else if (!col_ok || !rows[t]) {
            r[t] = zpv;
          } else if (n == 16) {
            r[t] = _mm_loadu_si128((const __m128i *)(rows[t] + (size_t)ix * c + c0));
          } else {
            uint8_t tmp[16] = {0};
            memcpy(tmp, rows[t] + (size_t)ix * c + c0, n);
            r[t] = _mm_loadu_si128((const __m128i *)tmp);
          }
        }
        const __m128i p01l = _mm_unpacklo_epi8(r[0], r[1]), p01h = _mm_unpackhi_epi8(r[0], r[1]);
        const __m128i p23l = _mm_unpacklo_epi8(r[2], r[3]), p23h = _mm_unpackhi_epi8(r[2], r[3]);
        __m128i *d = (__m128i *)(dst + c0 * 4);
        _mm_storeu_si128(d + 0, _mm_unpacklo_epi16(p01l, p23l));
        _mm_storeu_si128(d + 1, _mm_unpackhi_epi16(p01l, p23l));
        _mm_storeu_si128(d + 2, _mm_unpacklo_epi16(p01h, p23h));
        _mm_storeu_si128(d + 3, _mm_unpackhi_epi16(p01h, p23h));
      }
    }
  }
}

void qi_dwconv2d_qu8_qc8w__avx2(const qi_conv2d_geom *g, size_t c, size_t c_begin,
                                size_t c_end, size_t p_begin, size_t p_end, const uint8_t *x, const int32_t *bias,
                                const int8_t *w, size_t c_pad, uint8_t zp_x,
                                const qi_qepi *ep, uint8_t *scratch) {
  const qi_qe8 E = qi_qe8_init(ep);
  const size_t nq = qi_qdw_nq(g), es = ep->out_u8 ? 1 : 4;
  const size_t qstep = nq * c_pad * 4;
  size_t p = p_begin;
  while (p < p_end) {
    const size_t oy = p / g->out_w, ox0 = p - oy * g->out_w;
    const size_t ox1 = p_end - oy * g->out_w < g->out_w ? p_end - oy * g->out_w : g->out_w;
    qi_qdw_build(g, c, c_pad, c_begin, (c_end + 15) / 16 * 16, x, zp_x, oy, scratch);
    for (size_t c0 = c_begin; c0 < c_end; c0 += 8) {
      const size_t n = c_end - c0 < 8 ? c_end - c0 : 8;
      const __m256i b = _mm256_loadu_si256((const __m256i *)(bias + c0));
      const __m256 s = qi_qe8_load_scale(ep->scale + c0, n);
      const uint8_t *qc = scratch + c0 * 4;
      const int8_t *wc = w + c0 * 4;
      char *o = (char *)ep->out + ((oy * g->out_w) * ep->ldo + c0) * es;
      for (size_t ox = ox0; ox < ox1; ox++) {
        __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();
        const uint8_t *qx = qc + ox * g->stride_w * qstep;
        for (size_t kx = 0; kx < g->k_w; kx++) {
          const uint8_t *qk = qx + kx * g->dil_w * qstep;
          const int8_t *wk = wc + kx * nq * c_pad * 4;
          for (size_t q = 0; q < nq; q++) {
            const uint8_t *qq = qk + q * c_pad * 4;
            const int8_t *ww = wk + q * c_pad * 4;
            lo = _mm256_add_epi32(lo, _mm256_madd_epi16(
                     _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)qq)),
                     _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)ww))));
            hi = _mm256_add_epi32(hi, _mm256_madd_epi16(
                     _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(qq + 16))),
                     _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(ww + 16)))));
          }
        }
        const __m256i acc = _mm256_add_epi32(
            b, _mm256_permute4x64_epi64(_mm256_hadd_epi32(lo, hi), 0xD8));
        qi_qe8_store(acc, s, &E, o + ox * ep->ldo * es, n);
      }
    }
    p = oy * g->out_w + ox1;
  }
}
