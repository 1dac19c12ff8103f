/* int8 depthwise conv, NHWC, AVX2: 8 channels per ymm, vpmulld + vpaddd.
 *
 * Design: per output pixel the tap pointers are resolved once (interior pixels: corner + fixed
 * offsets; border taps point at zp_row); per block of 8 channels acc = bias, then per tap x
 * (u8 -> int32) times w (s8 -> int32) added in int32, exact. Two blocks interleaved. The last
 * c % 8 channels run the scalar loop and epilogue (same integers, same float operations), so no
 * load reads past a pixel. Kernels above 64 taps use the scalar kernel.
 */
#include <immintrin.h>
#include "qinfer/ukernels.h"
#include "qepi-avx2.h"

QI_INLINE __m256i qi_qdw_mac8(__m256i acc, const uint8_t *x, const int8_t *w) {
  const __m256i xv = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)x));
  const __m256i wv = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)w));
  return _mm256_add_epi32(acc, _mm256_mullo_epi32(xv, wv));
}

void qi_dwconv2d_qu8_qc8w__avx2(const qi_conv2d_geom *g, size_t c, size_t p_begin,
                                size_t p_end, const uint8_t *x, const int32_t *bias,
                                const int8_t *w, size_t c_pad, const uint8_t *zp_row,
                                const qi_qepi *ep) {
  const size_t taps = g->k_h * g->k_w;
  if (taps > QI_QDW_MAX_TAPS) {
    qi_dwconv2d_qu8_qc8w__scalar(g, c, p_begin, p_end, x, bias, w, c_pad, zp_row, ep);
    return;
  }
  const qi_qe8 E = qi_qe8_init(ep);
  ptrdiff_t off[QI_QDW_MAX_TAPS];
  const uint8_t *tp[QI_QDW_MAX_TAPS];
  qi_qdw_offsets(g, c, off);
  const size_t es = ep->out_u8 ? 1 : 4;
  for (size_t p = p_begin; p < p_end; p++) {
    const size_t oy = p / g->out_w, ox = p - oy * g->out_w;
    qi_qdw_taps(g, c, oy, ox, x, zp_row, off, tp);
    char *o = (char *)ep->out + p * ep->ldo * es;
    size_t c0 = 0;
    for (; c0 + 16 <= c; c0 += 16) {
      __m256i a0 = _mm256_loadu_si256((const __m256i *)(bias + c0));
      __m256i a1 = _mm256_loadu_si256((const __m256i *)(bias + c0 + 8));
      const int8_t *wt = w + c0;
      for (size_t t = 0; t < taps; t++, wt += c_pad) {
        a0 = qi_qdw_mac8(a0, tp[t] + c0, wt);
        a1 = qi_qdw_mac8(a1, tp[t] + c0 + 8, wt + 8);
      }
      qi_qe8_store(a0, _mm256_loadu_ps(ep->scale + c0), &E, o + c0 * es, 8);
      qi_qe8_store(a1, _mm256_loadu_ps(ep->scale + c0 + 8), &E, o + (c0 + 8) * es, 8);
    }
    for (; c0 + 8 <= c; c0 += 8) {
      __m256i a0 = _mm256_loadu_si256((const __m256i *)(bias + c0));
      const int8_t *wt = w + c0;
      for (size_t t = 0; t < taps; t++, wt += c_pad) a0 = qi_qdw_mac8(a0, tp[t] + c0, wt);
      qi_qe8_store(a0, _mm256_loadu_ps(ep->scale + c0), &E, o + c0 * es, 8);
    }
    for (; c0 < c; c0++) {
      int32_t acc = bias[c0];
      for (size_t t = 0; t < taps; t++) acc += (int32_t)tp[t][c0] * w[t * c_pad + c0];
      qi_q_store1(ep, p, c0, acc);
    }
  }
}
