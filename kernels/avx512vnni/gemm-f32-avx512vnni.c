/* fp32 GEMM with fused bias + activation, AVX-512F (tier avx512vnni): 8 x 32 register tile.
 *
 * Design: the tile is 8 rows x 32 columns = 16 zmm accumulators, plus 2 zmm of B per k; A comes
 * as an embedded-broadcast memory operand of the FMA (vfmadd231ps zmm, zmm, m32{1to16}), so 18 of
 * the 32 registers are live and the k loop has 2 vector loads + 8 broadcasts per 16 FMAs. Zen 4
 * retires one 512-bit FMA per cycle with 4 cycles of latency: 16 independent chains hide it with
 * room to spare, and the 10 loads per 16 cycles are far under its load ports. Why 8 x 32 rather
 * than 14 x 32 or 6 x 64: conv output channels (M) are multiples of 8 (16, 24, 32, 64, ...), so
 * 8 rows leave no row edges, and 32 columns keep the column edge of small maps (7x7 = 49, 14x14 =
 * 196) at one partial tile. A packed-A panel (8 rows) is exactly one tile high.
 * Edges: a column edge (nr < 32) masks both the B loads and the C loads/stores (a 16-column
 * variant skips the empty second vector when nr <= 16); a row edge (mr < 8) is its own unrolled
 * instance, so nothing is read or written past the operands. Every lane of every tile runs the
 * same FMA chain, so edges and thread splits do not change results.
 * Blocking: KC = 128 (the 128 x 32 B sliver, 16 KiB, stays in L1 while the ir loop runs every
 * 8-row tile over it), MC = 512, NC = 512 (a 128 x 512 band, 256 KiB, in L2).
 */
#include "qinfer/ukernels.h"
#include "act-avx512vnni.h"

#define MR 8
#define NR 32
#define KC 128
#define NC 512
#define MC 512

/* Tile of R rows, NV vectors of 16 columns; MASK: columns nr < 16 * NV (masked B, C, bias).
 * Accumulators are named scalars c<row><vector> (an array of 16 __m512 is not reliably kept in
 * registers by GCC once the epilogue grows); rows >= R / vectors >= NV fold away. */
#define QI_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)

QI_INLINE void qi_tile(const int R, const int NV, const int MASK, const int APK,
                       const qi_gemm_f32_tile *t) {
  const size_t kc = t->kc, lda = t->lda, ldb = t->ldb, ldc = t->ldc;
  const float *a = t->a;
  const float *b = t->b;
  float *c = t->c;
  /* lane masks of the two column vectors (all ones when not MASK) */
  const size_t nr = t->nr;
  const __mmask16 mk0 = !MASK || nr >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nr) - 1u);
  const __mmask16 mk1 = !MASK || nr >= 32 ? (__mmask16)0xFFFF
                        : nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1u) : (__mmask16)0;
#define QI_LD(mk, p) (MASK ? _mm512_maskz_loadu_ps(mk, p) : _mm512_loadu_ps(p))
#define QI_DECL(i) __m512 c##i##0 = _mm512_setzero_ps(), c##i##1 = _mm512_setzero_ps();
  QI_ROWS(QI_DECL)
  if (t->flags & QI_GEMM_FIRST) {
    if (t->bias_row) {
#define QI_INIT(i) if (i < R) { c##i##0 = c##i##1 = _mm512_set1_ps(t->bias_row[i]); }
      QI_ROWS(QI_INIT)
#undef QI_INIT
    } else if (t->bias_col) {
      const __m512 b0 = QI_LD(mk0, t->bias_col);
      const __m512 b1 = NV > 1 ? QI_LD(mk1, t->bias_col + 16) : b0;
#define QI_INIT(i) if (i < R) { c##i##0 = b0; c##i##1 = b1; }
      QI_ROWS(QI_INIT)
#undef QI_INIT
    }
  } else {
#define QI_INIT(i)                                                   \
    if (i < R) {                                                     \
      c##i##0 = QI_LD(mk0, c + i * ldc);                             \
      if (NV > 1) c##i##1 = QI_LD(mk1, c + i * ldc + 16);            \
    }
    QI_ROWS(QI_INIT)
#undef QI_INIT
  }
#define QI_FMA(i)                                                                          \
    if (i < R) {                                                                           \
      const __m512 av = _mm512_set1_ps(APK ? a[k * QI_GEMM_F32_PANEL + i] : a[i * lda + k]); \
      c##i##0 = _mm512_fmadd_ps(av, b0, c##i##0);                                          \
      if (NV > 1) c##i##1 = _mm512_fmadd_ps(av, b1, c##i##1);                              \
    }
#pragma GCC unroll 2
  for (size_t k = 0; k < kc; k++) {
    const __m512 b0 = QI_LD(mk0, b);
    const __m512 b1 = NV > 1 ? QI_LD(mk1, b + 16) : b0;
    QI_ROWS(QI_FMA)
    b += ldb;
  }
#undef QI_FMA
  if ((t->flags & QI_GEMM_LAST) && qi_act_any(t->act)) {
    const qi_act16 va = qi_act16_init(t->act);
#define QI_ACT(i)                                                    \
    if (i < R) {                                                     \
      c##i##0 = qi_act16_apply(c##i##0, &va);                        \
      if (NV > 1) c##i##1 = qi_act16_apply(c##i##1, &va);            \
    }
    QI_ROWS(QI_ACT)
#undef QI_ACT
  }
#define QI_ST(i)                                                                            \
  if (i < R) {                                                                              \
    if (MASK) _mm512_mask_storeu_ps(c + i * ldc, mk0, c##i##0);                             \
    else _mm512_storeu_ps(c + i * ldc, c##i##0);                                            \
    if (NV > 1) {                                                                           \
      if (MASK) _mm512_mask_storeu_ps(c + i * ldc + 16, mk1, c##i##1);                      \
      else _mm512_storeu_ps(c + i * ldc + 16, c##i##1);                                     \
    }                                                                                       \
  }
  QI_ROWS(QI_ST)
#undef QI_ST
#undef QI_DECL
#undef QI_LD
}

/* Instances: [a_packed][rows - 1][0: 32 full, 1: 32 masked, 2: 16 masked]. */
#define QI_TILE_FNS(R, APK)                                                                   \
  static void qi_tile_##R##_full_##APK(const qi_gemm_f32_tile *t) { qi_tile(R, 2, 0, APK, t); } \
  static void qi_tile_##R##_m32_##APK(const qi_gemm_f32_tile *t) { qi_tile(R, 2, 1, APK, t); }  \
  static void qi_tile_##R##_m16_##APK(const qi_gemm_f32_tile *t) { qi_tile(R, 1, 1, APK, t); }
#define QI_TILE_ROW(R, APK) {qi_tile_##R##_full_##APK, qi_tile_##R##_m32_##APK, qi_tile_##R##_m16_##APK}

QI_TILE_FNS(1, 0) QI_TILE_FNS(2, 0) QI_TILE_FNS(3, 0) QI_TILE_FNS(4, 0)
QI_TILE_FNS(5, 0) QI_TILE_FNS(6, 0) QI_TILE_FNS(7, 0) QI_TILE_FNS(8, 0)
QI_TILE_FNS(1, 1) QI_TILE_FNS(2, 1) QI_TILE_FNS(3, 1) QI_TILE_FNS(4, 1)
QI_TILE_FNS(5, 1) QI_TILE_FNS(6, 1) QI_TILE_FNS(7, 1) QI_TILE_FNS(8, 1)

static qi_gemm_f32_tile_fn *const qi_tiles[2][MR][3] = {
  {QI_TILE_ROW(1, 0), QI_TILE_ROW(2, 0), QI_TILE_ROW(3, 0), QI_TILE_ROW(4, 0),
   QI_TILE_ROW(5, 0), QI_TILE_ROW(6, 0), QI_TILE_ROW(7, 0), QI_TILE_ROW(8, 0)},
  {QI_TILE_ROW(1, 1), QI_TILE_ROW(2, 1), QI_TILE_ROW(3, 1), QI_TILE_ROW(4, 1),
   QI_TILE_ROW(5, 1), QI_TILE_ROW(6, 1), QI_TILE_ROW(7, 1), QI_TILE_ROW(8, 1)},
};

static void qi_tile_dispatch(const qi_gemm_f32_tile *t) {
  const int w = t->nr == NR ? 0 : (t->nr > 16 ? 1 : 2);
  qi_tiles[t->a_packed ? 1 : 0][t->mr - 1][w](t);
}

void qi_gemm_f32__avx512vnni(size_t m_begin, size_t m_end, size_t n_begin, size_t n_end, size_t k,
                             const float *a, size_t lda, int a_packed, const qi_gemm_f32_b *b,
                             float *c, size_t ldc, const float *bias, int bias_axis,
                             const qi_act *act, float *scratch) {
  qi_gemm_f32_run(m_begin, m_end, n_begin, n_end, k, a, lda, a_packed, b, c, ldc, bias, bias_axis,
                  act, scratch, MR, NR, KC, NC, MC, qi_tile_dispatch);
}
