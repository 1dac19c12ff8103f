/* int8 GEMM block, AVX2 without VNNI: 6 rows x 8 output channels per register tile, vpmaddwd.
 *
 * Design: no int16 saturation (vpmaddubsw would saturate u8*s8 pair sums above 32767). Per K group
 * of 4 the 32 panel bytes of 8 channels are sign-extended to int16 (two ymm: channels 0-3 and
 * 4-7, each k0..k3), the row's 4 activation bytes zero-extended to int16 and repeated 4 times
 * (vpbroadcastd + vpshufb), and vpmaddwd gives per channel two exact int32 half sums
 * (x0 w0 + x1 w1, x2 w2 + x3 w3; |each| <= 2 * 255 * 128) in adjacent lanes, added into two
 * accumulators per row; one vphaddd + vpermq per tile at the end of a K block folds the halves
 * into channel order. Integer sums are exact, so the result equals the VNNI and scalar kernels'.
 * 12 accumulators + 2 weight registers + 1 activation + the shuffle mask = 16 ymm.
 * Blocking as the AVX-512 kernel (NC 256, KC <= 512, rows <= 256 from the driver); the 8-column
 * sub-tiles walk the same 32-column panels, KC x 8 bytes of weights (4 KiB) per sliver.
 */
#include <immintrin.h>
#include "qinfer/ukernels.h"
#include "qepi-avx2.h"

#define QI_MR 6
#define QI_KCG (QI_QGEMM_KC_MAX / 4)
#define QI_FOR_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)

/* [v0, 0, v1, 0, v2, 0, v3, 0 | ...]: 8 int32 sums as the (even, odd) half-sum layout */
QI_INLINE void qi_qsplit8(const int32_t *src, __m256i *lo, __m256i *hi) {
  *lo = _mm256_cvtepu32_epi64(_mm_loadu_si128((const __m128i *)src));
  *hi = _mm256_cvtepu32_epi64(_mm_loadu_si128((const __m128i *)(src + 4)));
}

/* halves -> 8 int32 sums in channel order */
QI_INLINE __m256i qi_qfold8(__m256i lo, __m256i hi) {
  return _mm256_permute4x64_epi64(_mm256_hadd_epi32(lo, hi), 0xD8);
}

QI_INLINE void qi_qtile6(const int mr, size_t g0, size_t g1, size_t kg_full, size_t tail,
                         const uint8_t *a, size_t lda, const int8_t *b, int first, int last,
                         const int32_t *bias, int32_t *acc, const qi_qepi *ep, const qi_qe8 *E,
                         size_t row0, size_t n0, size_t nvalid) {
  const __m256i spread = _mm256_setr_epi8(0, -1, 1, -1, 2, -1, 3, -1, 0, -1, 1, -1, 2, -1, 3, -1,
                                          0, -1, 1, -1, 2, -1, 3, -1, 0, -1, 1, -1, 2, -1, 3, -1);
#define QI_DECL(r) __m256i c##r##l = _mm256_setzero_si256(), c##r##h = _mm256_setzero_si256();
  QI_FOR_ROWS(QI_DECL)
#undef QI_DECL
#define QI_INIT(r) \
  if (mr > r) qi_qsplit8(first ? bias + n0 : acc + r * QI_QGEMM_NC_MAX, &c##r##l, &c##r##h);
  QI_FOR_ROWS(QI_INIT)
#undef QI_INIT
  const size_t gend = g1 < kg_full ? g1 : kg_full;
  const uint8_t *ap = a + 4 * g0;
#define QI_DOT(r, LOADA)                                                         \
  if (mr > r) {                                                                  \
    const __m256i av = _mm256_shuffle_epi8(_mm256_set1_epi32(LOADA), spread);    \
    c##r##l = _mm256_add_epi32(c##r##l, _mm256_madd_epi16(av, w0));              \
    c##r##h = _mm256_add_epi32(c##r##h, _mm256_madd_epi16(av, w1));              \
  }
#define QI_DOT_FULL(r) QI_DOT(r, qi_q_load_i32(ap + r * lda))
#define QI_DOT_TAIL(r) QI_DOT(r, qi_q_load_tail(ap + r * lda, tail))
  for (size_t g = g0; g < gend; g++) {
    const __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)b));
    const __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 16)));
    b += 128;
    QI_FOR_ROWS(QI_DOT_FULL)
    ap += 4;
  }
  if (tail && g1 > kg_full) {
    const __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)b));
    const __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 16)));
    QI_FOR_ROWS(QI_DOT_TAIL)
  }
#undef QI_DOT_FULL
#undef QI_DOT_TAIL
#undef QI_DOT
  if (!last) {
#define QI_PARK(r) \
  if (mr > r) _mm256_storeu_si256((__m256i *)(acc + r * QI_QGEMM_NC_MAX), qi_qfold8(c##r##l, c##r##h));
    QI_FOR_ROWS(QI_PARK)
#undef QI_PARK
    return;
  }
  const __m256 s = qi_qe8_load_scale(ep->scale + n0, nvalid);
  const size_t es = ep->out_u8 ? 1 : 4;
  char *o = (char *)ep->out + (row0 * ep->ldo + n0) * es;
  const size_t ldo = ep->ldo * es;
#define QI_EPI(r) \
  if (mr > r) qi_qe8_store(qi_qfold8(c##r##l, c##r##h), s, E, o + r * ldo, nvalid);
  QI_FOR_ROWS(QI_EPI)
#undef QI_EPI
}

#define QI_QTILE_CASE(R)                                                                     \
  case R:                                                                                    \
    qi_qtile6(R, g0, g1, kg_full, tail, a + i * lda, lda, bp, first, last, bias,            \
              acc + i * QI_QGEMM_NC_MAX + (j - jc), ep, &E, i, j, nvalid);                 \
    break;

void qi_gemm_qu8_qc8w__avx2(size_t m, size_t n_begin, size_t n_end, size_t k,
                            const uint8_t *a, size_t lda, const int32_t *bias,
                            const int8_t *w, size_t k_pad, const qi_qepi *ep, int32_t *acc) {
  const qi_qe8 E = qi_qe8_init(ep);
  const size_t kg_full = k / 4, tail = k % 4, G = kg_full + (tail ? 1 : 0);
  const size_t nkb = (G + QI_KCG - 1) / QI_KCG;
  const size_t kcg = (G + nkb - 1) / nkb;
  for (size_t jc = n_begin; jc < n_end; jc += QI_QGEMM_NC_MAX) {
    const size_t jend = n_end - jc < QI_QGEMM_NC_MAX ? n_end : jc + QI_QGEMM_NC_MAX;
    for (size_t g0 = 0; g0 < G; g0 += kcg) {
      const size_t g1 = g0 + kcg < G ? g0 + kcg : G;
      const int first = g0 == 0, last = g1 == G;
      for (size_t j = jc; j < jend; j += 8) {
        const int8_t *bp = w + (j / QI_QC8W_NR) * k_pad * QI_QC8W_NR + g0 * 4 * QI_QC8W_NR +
                           (j % QI_QC8W_NR) * 4;
        const size_t nvalid = jend - j < 8 ? jend - j : 8;
        for (size_t i = 0; i < m; i += QI_MR) {
          switch (m - i < QI_MR ? m - i : QI_MR) {
            QI_QTILE_CASE(6)
            QI_QTILE_CASE(5)
            QI_QTILE_CASE(4)
            QI_QTILE_CASE(3)
            QI_QTILE_CASE(2)
            QI_QTILE_CASE(1)
          }
        }
      }
    }
  }
}
