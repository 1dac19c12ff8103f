/* fp32 GEMM with fused bias + activation, AVX2 + FMA (tier avx2): 4 x 24 register tile.
 *
 * Design: 16 ymm registers: 4 rows x 3 vectors = 12 accumulators, 3 of B per k and 1 broadcast of
 * A (AVX2 has no embedded broadcast). Zen 4 retires two 256-bit FMAs per cycle with 4 cycles of
 * latency, so it needs >= 8 independent chains: 12 do it, with 3 loads + 4 broadcasts per 12
 * FMAs. (6 x 16 would also fit, but 6 rows do not divide the 8-row packed-A panel, 4 do: a tile
 * reads half a panel.) Column edges mask B, C and the column bias with vmaskmov (lanes past nr
 * are neither read nor written); row edges are unrolled instances; every lane runs the same FMA
 * chain, so edges and thread splits do not change results.
 * Blocking: KC = 128 (the 128 x 24 B sliver, 12 KiB, stays in L1 across the row tiles), MC = 512,
 * NC = 480 (a multiple of 24; a 128 x 480 band, 240 KiB, in L2).
 */
#include "qinfer/ukernels.h"
#include "act-avx2.h"

#define MR 4
#define NR 24
#define KC 128
#define NC 480
#define MC 512

QI_INLINE __m256i qi_lane_mask(size_t n) { /* lanes [0, n) set, n may exceed 8 or be 0 */
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  int m = n > 8 ? 8 : (int)n;
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(m), idx);
}

/* Tile of R rows, NV vectors of 8 columns; MASK: columns nr < 8 * NV. Accumulators are named
 * scalars c<row><vector> (GCC does not reliably keep an array of them in registers); rows >= R
 * and vectors >= NV fold away. */
#define QI_ROWS(X) X(0) X(1) X(2) X(3)

QI_INLINE void qi_tile(const int R, const int NV, const int MASK, const int APK,
                       const qi_gemm_f32_tile *t) {
  const size_t kc = t->kc, lda = t->lda, ldb = t->ldb, ldc = t->ldc;
  const float *a = t->a;
  const float *b = t->b;
  float *c = t->c;
  const size_t nr = t->nr;
  const __m256i mk0 = qi_lane_mask(MASK ? nr : 8);
  const __m256i mk1 = qi_lane_mask(MASK ? (nr > 8 ? nr - 8 : 0) : 8);
  const __m256i mk2 = qi_lane_mask(MASK ? (nr > 16 ? nr - 16 : 0) : 8);
#define QI_LD(mk, p) (MASK ? _mm256_maskload_ps(p, mk) : _mm256_loadu_ps(p))
#define QI_DECL(i) __m256 c##i##0 = _mm256_setzero_ps(), c##i##1 = c##i##0, c##i##2 = c##i##0;
  QI_ROWS(QI_DECL)
  if (t->flags & QI_GEMM_FIRST) {
    if (t->bias_row) {
#define QI_INIT(i) if (i < R) { c##i##0 = c##i##1 = c##i##2 = _mm256_set1_ps(t->bias_row[i]); }
      QI_ROWS(QI_INIT)
#undef QI_INIT
    } else if (t->bias_col) {
      const __m256 b0 = QI_LD(mk0, t->bias_col);
      const __m256 b1 = NV > 1 ? QI_LD(mk1, t->bias_col + 8) : b0;
      const __m256 b2 = NV > 2 ? QI_LD(mk2, t->bias_col + 16) : b0;
#define QI_INIT(i) if (i < R) { c##i##0 = b0; c##i##1 = b1; c##i##2 = b2; }
      QI_ROWS(QI_INIT)
#undef QI_INIT
    }
  } else {
#define QI_INIT(i)                                                   \
    if (i < R) {                                                     \
      c##i##0 = QI_LD(mk0, c + i * ldc);                             \
      if (NV > 1) c##i##1 = QI_LD(mk1, c + i * ldc + 8);             \
      if (NV > 2) c##i##2 = QI_LD(mk2, c + i * ldc + 16);            \
    }
    QI_ROWS(QI_INIT)
#undef QI_INIT
  }
  for (size_t k = 0; k < kc; k++) {
    const __m256 b0 = QI_LD(mk0, b);
    const __m256 b1 = NV > 1 ? QI_LD(mk1, b + 8) : b0;
    const __m256 b2 = NV > 2 ? QI_LD(mk2, b + 16) : b0;
#define QI_FMA(i)                                                                              \
    if (i < R) {                                                                               \
      const __m256 av = _mm256_broadcast_ss(APK ? a + k * QI_GEMM_F32_PANEL + i : a + i * lda + k); \
      c##i##0 = _mm256_fmadd_ps(av, b0, c##i##0);                                              \
      if (NV > 1) c##i##1 = _mm256_fmadd_ps(av, b1, c##i##1);                                  \
      if (NV > 2) c##i##2 = _mm256_fmadd_ps(av, b2, c##i##2);                                  \
    }
    QI_ROWS(QI_FMA)
#undef QI_FMA
    b += ldb;
  }
  if ((t->flags & QI_GEMM_LAST) && qi_act_any(t->act)) {
    const qi_act8 va = qi_act8_init(t->act);
#define QI_ACT(i)                                                    \
    if (i < R) {                                                     \
      c##i##0 = qi_act8_apply(c##i##0, &va);                         \
      if (NV > 1) c##i##1 = qi_act8_apply(c##i##1, &va);             \
      if (NV > 2) c##i##2 = qi_act8_apply(c##i##2, &va);             \
    }
    QI_ROWS(QI_ACT)
#undef QI_ACT
  }
#define QI_ST1(i, v, mk)                                                          \
  if (MASK) _mm256_maskstore_ps(c + i * ldc + 8 * v, mk, c##i##v);                \
  else _mm256_storeu_ps(c + i * ldc + 8 * v, c##i##v);
#define QI_ST(i)                                                     \
  if (i < R) {                                                       \
    QI_ST1(i, 0, mk0)                                                \
    if (NV > 1) { QI_ST1(i, 1, mk1) }                                \
    if (NV > 2) { QI_ST1(i, 2, mk2) }                                \
  }
  QI_ROWS(QI_ST)
#undef QI_ST
#undef QI_ST1
#undef QI_DECL
#undef QI_LD
}

/* Instances: [a_packed][rows - 1][0: 24 full, 1: 24 masked, 2: 16 masked, 3: 8 masked]. */
#define QI_TILE_FNS(R, APK)                                                                   \
  static void qi_tile_##R##_full_##APK(const qi_gemm_f32_tile *t) { qi_tile(R, 3, 0, APK, t); } \
  static void qi_tile_##R##_m24_##APK(const qi_gemm_f32_tile *t) { qi_tile(R, 3, 1, APK, t); }  \
  static void qi_tile_##R##_m16_##APK(const qi_gemm_f32_tile *t) { qi_tile(R, 2, 1, APK, t); }  \
  static void qi_tile_##R##_m8_##APK(const qi_gemm_f32_tile *t) { qi_tile(R, 1, 1, APK, t); }
#define QI_TILE_ROW(R, APK)                                                        \
  {qi_tile_##R##_full_##APK, qi_tile_##R##_m24_##APK, qi_tile_##R##_m16_##APK,     \
   qi_tile_##R##_m8_##APK}

QI_TILE_FNS(1, 0) QI_TILE_FNS(2, 0) QI_TILE_FNS(3, 0) QI_TILE_FNS(4, 0)
QI_TILE_FNS(1, 1) QI_TILE_FNS(2, 1) QI_TILE_FNS(3, 1) QI_TILE_FNS(4, 1)

static qi_gemm_f32_tile_fn *const qi_tiles[2][MR][4] = {
  {QI_TILE_ROW(1, 0), QI_TILE_ROW(2, 0), QI_TILE_ROW(3, 0), QI_TILE_ROW(4, 0)},
  {QI_TILE_ROW(1, 1), QI_TILE_ROW(2, 1), QI_TILE_ROW(3, 1), QI_TILE_ROW(4, 1)},
};

static void qi_tile_dispatch(const qi_gemm_f32_tile *t) {
  const int w = t->nr == NR ? 0 : (t->nr > 16 ? 1 : (t->nr > 8 ? 2 : 3));
  qi_tiles[t->a_packed ? 1 : 0][t->mr - 1][w](t);
}

void qi_gemm_f32__avx2(size_t m_begin, size_t m_end, size_t n_begin, size_t n_end, size_t k,
                       const float *a, size_t lda, int a_packed, const qi_gemm_f32_b *b, float *c,
                       size_t ldc, const float *bias, int bias_axis, const qi_act *act,
                       float *scratch) {
  qi_gemm_f32_run(m_begin, m_end, n_begin, n_end, k, a, lda, a_packed, b, c, ldc, bias, bias_axis,
                  act, scratch, MR, NR, KC, NC, MC, qi_tile_dispatch);
}
