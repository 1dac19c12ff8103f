/* int8 depthwise conv, NHWC, AVX-512 VNNI: 16 channels per zmm, vpdpwssd.
 *
 * Design: per output pixel the tap pointers are resolved once (interior pixels: corner + fixed
 * offsets; border taps point at zp_row), then for each block of 16 channels acc = bias and per tap
 * x (u8 -> int32, vpmovzxbd) and w (s8 -> int32, vpmovsxbd) feed vpdpwssd: the int16 halves are
 * (x, 0) and (w, sign), so the dot product adds exactly x * w. Two blocks (32 channels) run
 * interleaved for two independent chains. Channel tails use masked loads and stores, never
 * reading past a pixel; weights, bias are padded to 16 channels by the packing. The epilogue is
 * qepi-avx512vnni.h, bit-identical to the scalar kernel. Kernels above 64 taps use the scalar one.
 */
#include <immintrin.h>
#include "qinfer/ukernels.h"
#include "qepi-avx512vnni.h"

QI_INLINE __m512i qi_qdw_mac16(__m512i acc, const uint8_t *x, const int8_t *w, __mmask16 m) {
  const __m512i xv = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, x));
  const __m512i wv = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)w));
  return _mm512_dpwssd_epi32(acc, xv, wv);
}

void qi_dwconv2d_qu8_qc8w__avx512vnni(const qi_conv2d_geom *g, size_t c, size_t p_begin,
                                      size_t p_end, const uint8_t *x, const int32_t *bias,
                                      const int8_t *w, size_t c_pad, const uint8_t *zp_row,
                                      const qi_qepi *ep) {
  const size_t taps = g->k_h * g->k_w;
  if (taps > QI_QDW_MAX_TAPS) {
    qi_dwconv2d_qu8_qc8w__scalar(g, c, p_begin, p_end, x, bias, w, c_pad, zp_row, ep);
    return;
  }
  const qi_qe16 E = qi_qe16_init(ep);
  ptrdiff_t off[QI_QDW_MAX_TAPS];
  const uint8_t *tp[QI_QDW_MAX_TAPS];
  qi_qdw_offsets(g, c, off);
  const size_t es = ep->out_u8 ? 1 : 4;
  for (size_t p = p_begin; p < p_end; p++) {
    const size_t oy = p / g->out_w, ox = p - oy * g->out_w;
    qi_qdw_taps(g, c, oy, ox, x, zp_row, off, tp);
    char *o = (char *)ep->out + p * ep->ldo * es;
    size_t c0 = 0;
    for (; c0 + 32 <= c; c0 += 32) {
      __m512i a0 = _mm512_loadu_si512(bias + c0), a1 = _mm512_loadu_si512(bias + c0 + 16);
      const int8_t *wt = w + c0;
      for (size_t t = 0; t < taps; t++, wt += c_pad) {
        a0 = qi_qdw_mac16(a0, tp[t] + c0, wt, 0xFFFF);
        a1 = qi_qdw_mac16(a1, tp[t] + c0 + 16, wt + 16, 0xFFFF);
      }
      qi_qe16_store(a0, _mm512_loadu_ps(ep->scale + c0), &E, o + c0 * es, 0xFFFF);
      qi_qe16_store(a1, _mm512_loadu_ps(ep->scale + c0 + 16), &E, o + (c0 + 16) * es, 0xFFFF);
    }
    for (; c0 < c; c0 += 16) {
      const size_t n = c - c0 < 16 ? c - c0 : 16;
      const __mmask16 m = (__mmask16)((1u << n) - 1);
      __m512i a0 = _mm512_loadu_si512(bias + c0);
      const int8_t *wt = w + c0;
      for (size_t t = 0; t < taps; t++, wt += c_pad) a0 = qi_qdw_mac16(a0, tp[t] + c0, wt, m);
      qi_qe16_store(a0, _mm512_maskz_loadu_ps(m, ep->scale + c0), &E, o + c0 * es, m);
    }
  }
}
