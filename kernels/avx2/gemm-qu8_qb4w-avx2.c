/* int4 GEMM block, AVX2 without VNNI: 4 rows x 8 output channels per register tile, vpmaddwd.
 *
 * Design: an 8-channel slice c..c+7 of a 32-channel panel lives in 32 consecutive bytes of each
 * 64-byte step (4 k per channel), in the low nibbles for c < 16 and the high ones for c >= 16.
 * The slice's nibble, moved to the top of its byte and masked, is 16 q as a signed byte; widened
 * to int16 (two ymm: channels c..c+3 and c+4..c+7, k0..k3 each) it meets the row's 4 activation
 * bytes zero-extended to int16 and repeated (vpbroadcastd + vpshufb) in vpmaddwd, whose int32 pair
 * sums (|x0 16q0 + x1 16q1| <= 2 * 255 * 128) never saturate. Two accumulators per row hold the
 * (k0k1, k2k3) halves; at the end of a block one vphaddd + vpermq folds them into channel order,
 * and the float steps run as in the scalar kernel (16 d to float, times the block's scales / 16,
 * added). 8 int + 4 float accumulators, 2 weight registers, the activation and the
 * shuffle pattern: 16 ymm. Every byte of a step is loaded twice (once per nibble half), from L1.
 */
#include <immintrin.h>
#include "qinfer/ukernels.h"
#include "qepi-avx2.h"

#define QI_MR 4
#define QI_FOR_ROWS(X) X(0) X(1) X(2) X(3)

/* y = (acc + offset) * scale (+ bias), the activation, then n <= 8 floats or bytes out */
QI_INLINE void qi_q4e8_store(__m256 acc, __m256 off, __m256 sc, __m256 bias, int has_bias,
                             const qi_qe8 *e, void *out, size_t n) {
  __m256 y = _mm256_mul_ps(_mm256_add_ps(acc, off), sc);
  if (has_bias) y = _mm256_add_ps(y, bias);
  y = qi_qe8_act(y, e);
  const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n),
                                          _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  if (!e->out_u8) {
    _mm256_maskstore_ps((float *)out, keep, y);
    return;
  }
  __m256 t = _mm256_max_ps(_mm256_add_ps(_mm256_mul_ps(y, e->inv), e->zp), _mm256_setzero_ps());
  int32_t q[8];
  _mm256_storeu_si256((__m256i *)q, _mm256_cvtps_epi32(_mm256_min_ps(t, _mm256_set1_ps(255.0f))));
  for (size_t i = 0; i < n; i++) ((uint8_t *)out)[i] = (uint8_t)q[i];
}

QI_INLINE void qi_q4tile8(const int mr, const int high, size_t k, size_t block, size_t nblk,
                          const uint8_t *a, size_t lda, const uint8_t *slice, const float *bscale,
                          __m256 off, __m256 sc, __m256 bias, int has_bias, const qi_qe8 *e,
                          char *o, size_t ldo, size_t nvalid) {
  const __m256i spread = _mm256_setr_epi8(0, -1, 1, -1, 2, -1, 3, -1, 0, -1, 1, -1, 2, -1, 3, -1,
                                          0, -1, 1, -1, 2, -1, 3, -1, 0, -1, 1, -1, 2, -1, 3, -1);
  const __m256i hi_mask = _mm256_set1_epi8((char)0xF0);
  const __m256 sixteenth = _mm256_set1_ps(0.0625f);
  const size_t bstride = block * 16 + 128;
#define QI_DECL(r) __m256 f##r = _mm256_setzero_ps();
  QI_FOR_ROWS(QI_DECL)
#undef QI_DECL
  for (size_t b = 0; b < nblk; b++) {
    const size_t k0 = b * block, len = k - k0 < block ? k - k0 : block;
    const size_t steps = len / 4, tail = len % 4;
    const uint8_t *bp = slice + b * bstride, *ap = a + k0;
#define QI_DECL(r) __m256i c##r##l = _mm256_setzero_si256(), c##r##h = _mm256_setzero_si256();
    QI_FOR_ROWS(QI_DECL)
#undef QI_DECL
    /* one step: the slice's 16 q as int16 (channels c..c+3, c+4..c+7), times each row's 4 bytes */
#define QI_STEP(LOADA)                                                                            \
  {                                                                                               \
    const __m256i raw = _mm256_loadu_si256((const __m256i *)(bp + 64 * t));                       \
    const __m256i q16 = _mm256_and_si256(high ? raw : _mm256_slli_epi16(raw, 4), hi_mask);       \
    const __m256i w0 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(q16));                        \
    const __m256i w1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(q16, 1));                    \
    QI_FOR_ROWS(LOADA)                                                                            \
  }
#define QI_DOT(r, X4)                                                                             \
  if (mr > r) {                                                                                   \
    const __m256i av = _mm256_shuffle_epi8(_mm256_set1_epi32(X4), spread);                        \
    c##r##l = _mm256_add_epi32(c##r##l, _mm256_madd_epi16(av, w0));                               \
    c##r##h = _mm256_add_epi32(c##r##h, _mm256_madd_epi16(av, w1));                               \
  }
#define QI_DOT_FULL(r) QI_DOT(r, qi_q_load_i32(ap + r * lda + 4 * t))
#define QI_DOT_TAIL(r) QI_DOT(r, qi_q_load_tail(ap + r * lda + 4 * t, tail))
    size_t t = 0;
    for (; t < steps; t++) QI_STEP(QI_DOT_FULL)
    if (tail) {
      QI_STEP(QI_DOT_TAIL)
      t++;
    }
#undef QI_DOT_FULL
#undef QI_DOT_TAIL
#undef QI_DOT
#undef QI_STEP
    const __m256 s16 = _mm256_mul_ps(_mm256_loadu_ps(bscale + b * bstride / sizeof(float) + 16 * t),
                                     sixteenth);
#define QI_ACC(r)                                                                                  \
  if (mr > r) {                                                                                    \
    const __m256i d16 = _mm256_permute4x64_epi64(_mm256_hadd_epi32(c##r##l, c##r##h), 0xD8);       \
    f##r = _mm256_add_ps(f##r, _mm256_mul_ps(_mm256_cvtepi32_ps(d16), s16));                       \
  }
    QI_FOR_ROWS(QI_ACC)
#undef QI_ACC
  }
#define QI_OUT(r) \
  if (mr > r) qi_q4e8_store(f##r, off, sc, bias, has_bias, e, o + r * ldo, nvalid);
  QI_FOR_ROWS(QI_OUT)
#undef QI_OUT
}

/* v[0:n], n <= 8, zero past n (never reads past the array) */
QI_INLINE __m256 qi_q4_load8(const float *p, size_t n) {
  const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n),
                                          _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  return _mm256_maskload_ps(p, keep);
}

void qi_gemm_qu8_qb4w__avx2(size_t m, size_t n_begin, size_t n_end, size_t k, const uint8_t *a,
                            size_t lda, const uint8_t *w, size_t panel_bytes, size_t block,
                            const float *offset, const float *bias, const qi_qepi *ep) {
  const qi_qe8 E = qi_qe8_init(ep);
  const size_t nblk = (k + block - 1) / block, es = ep->out_u8 ? 1 : 4;
  for (size_t j = n_begin; j < n_end; j += 8) {
    const size_t c = j % QI_QB4W_NR, nvalid = n_end - j < 8 ? n_end - j : 8;
    const uint8_t *panel = w + (j / QI_QB4W_NR) * panel_bytes;
    const uint8_t *slice = panel + (c % 16) * 4;
    /* the scales of block b start at byte b * bstride + len4 * 16 of the panel: the tile adds
     * b * bstride and 64 bytes per step to this base */
    const float *bscale = (const float *)(panel + c * 4);
    const __m256 off = _mm256_loadu_ps(offset + j), sc = qi_q4_load8(ep->scale + j, nvalid);
    const __m256 bv = bias ? qi_q4_load8(bias + j, nvalid) : _mm256_setzero_ps();
    for (size_t i = 0; i < m; i += QI_MR) {
      char *o = (char *)ep->out + (i * ep->ldo + j) * es;
      const uint8_t *ai = a + i * lda;
      const size_t ldo = ep->ldo * es;
      const int rows = (int)(m - i < QI_MR ? m - i : QI_MR);
#define QI_CASE(R, H)                                                                              \
  case R * 2 + H:                                                                                 \
    qi_q4tile8(R, H, k, block, nblk, ai, lda, slice, bscale, off, sc, bv, bias != NULL, &E, o,    \
               ldo, nvalid);                                                                      \
    break;
      switch (rows * 2 + (c >= 16)) {
        QI_CASE(4, 0) QI_CASE(4, 1) QI_CASE(3, 0) QI_CASE(3, 1)
        QI_CASE(2, 0) QI_CASE(2, 1) QI_CASE(1, 0) default: QI_CASE(1, 1)
      }
#undef QI_CASE
    }
  }
}
