/* int8 GEMM block, AVX-512 VNNI: 8 rows x 32 output channels per register tile, vpdpbusd.
 *
 * Design: the tile keeps 16 zmm accumulators (8 rows x 2 x 16 channels); per K group of 4 it
 * loads the panel's 128 bytes (32 channels x 4 k, the packed layout) as two zmm and broadcasts 4
 * activation bytes per row (vpbroadcastd), 16 vpdpbusd (u8 x s8 -> int32, exact): 1 load per 1.6
 * dot products, 16 independent chains to cover the latency. Zen 4 runs one zmm vpdpbusd per cycle
 * (64 MACs), the machine's peak. Blocking: columns in blocks of 256 (NC), K in blocks of at most
 * 512 bytes (KC, balanced), rows as the driver hands them (<= 256); loops jc > kc > panel > row
 * tile, so the KC x 32 weight sliver (<= 16 KiB) stays in L1 while every row tile of the block
 * streams over it and the A block (<= 256 x 512 B) stays in L2 with the B block and the parked
 * sums (512 KiB in all; 256 rows let a 196-row layer read its weights once). Between K blocks
 * the tile parks its int32 sums in `acc`; the first block starts from the folded bias, the last
 * hands them straight from the registers to the epilogue (qepi-avx512vnni.h), instantiated per
 * activation, output type and full panel so its per-vector code is straight-line. Row tiles below 8 rows are
 * separate instantiations (no wasted rows at M = 1; a single row uses 4 chains and prefetches
 * its weight stream, and a single row tile skips K blocking); a K tail of k % 4 bytes is read
 * byte-wise, never past a row. Column edges: masked scale loads and stores.
 */
#include <immintrin.h>
#include "qinfer/ukernels.h"
#include "qepi-avx512vnni.h"

#define QI_MR 8
#define QI_NR 32
#define QI_KCG (QI_QGEMM_KC_MAX / 4) /* K groups per block */
#ifndef QI_PF_DIST
#define QI_PF_DIST 4096 /* bytes of weights prefetched ahead in the one-row loop (2-4 KiB: same) */
#endif

/* per panel: the epilogue's masks and scales (hoisted out of the row-tile loop) */
typedef struct qi_qpanel {
  __mmask16 m0, m1;
  __m512 s0, s1;
} qi_qpanel;

/* The epilogue of a tile straight from its accumulators (rows r < mr; `mr`, the activation, the
 * output type and the full-panel flag are compile-time constants per instantiation) */
#define QI_REG_ROW(r)                                                                     \
  if (mr > r) {                                                                           \
    if (full) {                                                                           \
      qi_qe16_store_k(c##r##0, P->s0, v, o + r * ldo, 0xFFFF, code, u8, 1);               \
      qi_qe16_store_k(c##r##1, P->s1, v, o + r * ldo + 16 * es, 0xFFFF, code, u8, 1);     \
    } else {                                                                              \
      qi_qe16_store_k(c##r##0, P->s0, v, o + r * ldo, P->m0, code, u8, P->m0 == 0xFFFF);  \
      if (P->m1)                                                                          \
        qi_qe16_store_k(c##r##1, P->s1, v, o + r * ldo + 16 * es, P->m1, code, u8, 0);    \
    }                                                                                     \
  }
QI_INLINE void qi_qepi_regs(const int mr, const int code, const int u8, const int full,
                            __m512i c00, __m512i c01, __m512i c10, __m512i c11, __m512i c20,
                            __m512i c21, __m512i c30, __m512i c31, __m512i c40, __m512i c41,
                            __m512i c50, __m512i c51, __m512i c60, __m512i c61, __m512i c70,
                            __m512i c71, const qi_qpanel *P, char *o, size_t ldo,
                            const qi_qe16v v) {
  const size_t es = u8 ? 1 : 4;
  QI_REG_ROW(0) QI_REG_ROW(1) QI_REG_ROW(2) QI_REG_ROW(3)
  QI_REG_ROW(4) QI_REG_ROW(5) QI_REG_ROW(6) QI_REG_ROW(7)
}
#undef QI_REG_ROW

/* One row's two accumulators are c<r>0, c<r>1: named variables rather than an array, so gcc keeps
 * all 16 in zmm registers with no copies in the K loop. `mr` is a compile-time constant in each
 * instantiation, so the `mr > r` tests fold away. */
#define QI_FOR_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)

/* A panel's valid channels (the last panel of a layer may hold fewer than 32): more than 24,
 * 17-24, 9-16, 1-8. A half of 8 valid channels or fewer runs at 256 bits, an empty half not at
 * all (Zen 4 runs a 512-bit vpdpbusd as two 256-bit halves); the lanes left out are padding
 * channels, which the epilogue never stores. */
#define QI_W32 0
#define QI_W24 1
#define QI_W16 2
#define QI_W8 3
/* acc += av . w on the low 256 bits (the high ones become zeros: padding lanes) */
#define QI_H256(acc, av, w)                                                                 \
  _mm512_zextsi256_si512(_mm256_dpbusd_epi32(_mm512_castsi512_si256(acc),                  \
                                             _mm512_castsi512_si256(av), _mm512_castsi512_si256(w)))

QI_INLINE void qi_qtile(const int mr, size_t g0, size_t g1, size_t kg_full, size_t tail,
                        const uint8_t *a, size_t lda, const int8_t *b, int first, int last,
                        const int32_t *bias, int32_t *acc, const qi_qepi *ep, const qi_qe16 *E,
                        size_t row0, size_t n0, const qi_qpanel *P, const int wm) {
#define QI_DECL(r) __m512i c##r##0 = _mm512_setzero_si512(), c##r##1 = _mm512_setzero_si512();
  QI_FOR_ROWS(QI_DECL)
#undef QI_DECL
  if (first) {
    const __m512i b0 = _mm512_loadu_si512(bias + n0), b1 = _mm512_loadu_si512(bias + n0 + 16);
#define QI_INIT(r) if (mr > r) { c##r##0 = b0; c##r##1 = b1; }
    QI_FOR_ROWS(QI_INIT)
#undef QI_INIT
  } else {
#define QI_LOAD(r)                                                   \
  if (mr > r) {                                                      \
    c##r##0 = _mm512_loadu_si512(acc + r * QI_QGEMM_NC_MAX);         \
    c##r##1 = _mm512_loadu_si512(acc + r * QI_QGEMM_NC_MAX + 16);    \
  }
    QI_FOR_ROWS(QI_LOAD)
#undef QI_LOAD
  }
  const size_t gend = g1 < kg_full ? g1 : kg_full;
  const uint8_t *ap = a + 4 * g0;
#define QI_DOT(r, LOADA)                                             \
  if (mr > r) {                                                      \
    const __m512i av = _mm512_set1_epi32(LOADA);                     \
    c##r##0 = wm == QI_W8 ? QI_H256(c##r##0, av, w0)                 \
                          : _mm512_dpbusd_epi32(c##r##0, av, w0);    \
    if (wm == QI_W32) c##r##1 = _mm512_dpbusd_epi32(c##r##1, av, w1); \
    if (wm == QI_W24) c##r##1 = QI_H256(c##r##1, av, w1);            \
  }
#define QI_DOT_FULL(r) QI_DOT(r, qi_q_load_i32(ap + r * lda))
#define QI_DOT_TAIL(r) QI_DOT(r, qi_q_load_tail(ap + r * lda, tail))
  size_t g = g0;
  if (mr == 1) { /* one row: a second accumulator pair on odd K groups, for 4 chains in flight */
    __m512i d00 = _mm512_setzero_si512(), d01 = _mm512_setzero_si512();
    for (; g + 2 <= gend; g += 2) {
      /* the weights are one sequential stream here (panels are contiguous): fetch ahead of the
       * hardware prefetcher, which alone leaves L3 -> L2 at about half its bandwidth */
      _mm_prefetch((const char *)b + QI_PF_DIST, _MM_HINT_T0);
      _mm_prefetch((const char *)b + QI_PF_DIST + 64, _MM_HINT_T0);
      _mm_prefetch((const char *)b + QI_PF_DIST + 128, _MM_HINT_T0);
      _mm_prefetch((const char *)b + QI_PF_DIST + 192, _MM_HINT_T0);
      const __m512i av = _mm512_set1_epi32(qi_q_load_i32(ap)), av2 = _mm512_set1_epi32(qi_q_load_i32(ap + 4));
      c00 = _mm512_dpbusd_epi32(c00, av, _mm512_loadu_si512(b));
      c01 = _mm512_dpbusd_epi32(c01, av, _mm512_loadu_si512(b + 64));
      d00 = _mm512_dpbusd_epi32(d00, av2, _mm512_loadu_si512(b + 128));
      d01 = _mm512_dpbusd_epi32(d01, av2, _mm512_loadu_si512(b + 192));
      b += 256;
      ap += 8;
    }
    c00 = _mm512_add_epi32(c00, d00);
    c01 = _mm512_add_epi32(c01, d01);
  }
  for (; g < gend; g++) {
    const __m512i w0 = _mm512_loadu_si512(b), w1 = wm >= QI_W16 ? w0 : _mm512_loadu_si512(b + 64);
    b += 128;
    QI_FOR_ROWS(QI_DOT_FULL)
    ap += 4;
  }
  if (tail && g1 > kg_full) {
    const __m512i w0 = _mm512_loadu_si512(b), w1 = wm >= QI_W16 ? w0 : _mm512_loadu_si512(b + 64);
    QI_FOR_ROWS(QI_DOT_TAIL)
  }
#undef QI_DOT_FULL
#undef QI_DOT_TAIL
#undef QI_DOT
  if (!last) {
#define QI_PARK(r)                                                   \
  if (mr > r) {                                                      \
    _mm512_storeu_si512(acc + r * QI_QGEMM_NC_MAX, c##r##0);         \
    _mm512_storeu_si512(acc + r * QI_QGEMM_NC_MAX + 16, c##r##1);    \
  }
    QI_FOR_ROWS(QI_PARK)
#undef QI_PARK
    return;
  }
  /* epilogue from the registers (a stack round trip was a sixth of the work of MobileNetV2's
   * K = 16..32 expand layers) */
  const qi_qe16v v = qi_qe16v_of(E);
  const size_t es = E->out_u8 ? 1 : 4;
  char *o = (char *)ep->out + (row0 * ep->ldo + n0) * es;
  const size_t ldo = ep->ldo * es;
#define QI_REG_CASE(CODE, U8, FULL)                                                          \
  qi_qepi_regs(mr, CODE, U8, FULL, c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, \
               c60, c61, c70, c71, P, o, ldo, v)
  QI_QE16_DISPATCH(E, P->m0 == 0xFFFF && P->m1 == 0xFFFF, QI_REG_CASE)
#undef QI_REG_CASE
}

#define QI_QTILE_W(R, W)                                                                     \
  qi_qtile(R, g0, g1, kg_full, tail, a + i * lda, lda, bp, first, last, bias,               \
           acc + i * QI_QGEMM_NC_MAX + (j - jc), ep, &E, i, j, &P, W)
#define QI_QTILE_CASE(R)                                                                     \
  case R:                                                                                    \
    switch (wm) {                                                                            \
      case QI_W32: QI_QTILE_W(R, QI_W32); break;                                             \
      case QI_W24: QI_QTILE_W(R, QI_W24); break;                                             \
      case QI_W16: QI_QTILE_W(R, QI_W16); break;                                             \
      default: QI_QTILE_W(R, QI_W8); break;                                                  \
    }                                                                                        \
    break;

void qi_gemm_qu8_qc8w__avx512vnni(size_t m, size_t n_begin, size_t n_end, size_t k,
                                  const uint8_t *a, size_t lda, const int32_t *bias,
                                  const int8_t *w, size_t k_pad, const qi_qepi *ep, int32_t *acc) {
  const qi_qe16 E = qi_qe16_init(ep);
  const size_t kg_full = k / 4, tail = k % 4, G = kg_full + (tail ? 1 : 0);
  /* K blocks pay off when several row tiles reuse the weight sliver; a single row tile streams
   * each panel whole (one contiguous stream for the prefetcher, no parked sums) */
  const size_t nkb = m <= QI_MR ? 1 : (G + QI_KCG - 1) / QI_KCG;
  const size_t kcg = nkb ? (G + nkb - 1) / nkb : 0;
  for (size_t jc = n_begin; jc < n_end; jc += QI_QGEMM_NC_MAX) {
    const size_t jend = n_end - jc < QI_QGEMM_NC_MAX ? n_end : jc + QI_QGEMM_NC_MAX;
    for (size_t g0 = 0; g0 < G; g0 += kcg) {
      const size_t g1 = g0 + kcg < G ? g0 + kcg : G;
      const int first = g0 == 0, last = g1 == G;
      for (size_t j = jc; j < jend; j += QI_NR) {
        const int8_t *bp = w + (j / QI_NR) * k_pad * QI_NR + g0 * 4 * QI_NR;
        const size_t nvalid = jend - j < QI_NR ? jend - j : QI_NR;
        qi_qpanel P;
        P.m0 = nvalid >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nvalid) - 1);
        P.m1 = nvalid >= 32 ? (__mmask16)0xFFFF
               : nvalid <= 16 ? (__mmask16)0 : (__mmask16)((1u << (nvalid - 16)) - 1);
        P.s0 = _mm512_maskz_loadu_ps(P.m0, ep->scale + j);
        P.s1 = _mm512_maskz_loadu_ps(P.m1, ep->scale + j + 16);
        const int wm = nvalid > 24 ? QI_W32 : nvalid > 16 ? QI_W24 : nvalid > 8 ? QI_W16 : QI_W8;
        for (size_t i = 0; i < m; i += QI_MR) {
          switch (m - i < QI_MR ? m - i : QI_MR) {
            QI_QTILE_CASE(8)
            QI_QTILE_CASE(7)
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

/* The weight-streaming bound of a one-row GEMM: each whole 64-byte line of buf (a tail of bytes % 64
 * is not read) is a zmm operand of one vpdpbusd per pass, 8 lines per iteration into 8 accumulators -- the
 * one-row tile's work per weight byte with no activation loads, epilogue or panel bookkeeping.
 * Timed over a layer's packed weights, it is the fastest that layer could run at M = 1 from where
 * its weights are cached. Returns a checksum. */
long long qi_qint8_vnni_stream__avx512vnni(const int8_t *buf, size_t bytes, long long passes);
long long qi_qint8_vnni_stream__avx512vnni(const int8_t *buf, size_t bytes, long long passes) {
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
  const size_t lines = bytes / 64;
  for (long long r = 0; r < passes; r++) {
    const int8_t *b = buf;
    size_t l = 0;
    for (; l + 8 <= lines; l += 8, b += 512) {
      c0 = _mm512_dpbusd_epi32(c0, ones, _mm512_loadu_si512(b));
      c1 = _mm512_dpbusd_epi32(c1, ones, _mm512_loadu_si512(b + 64));
      c2 = _mm512_dpbusd_epi32(c2, ones, _mm512_loadu_si512(b + 128));
      c3 = _mm512_dpbusd_epi32(c3, ones, _mm512_loadu_si512(b + 192));
      c4 = _mm512_dpbusd_epi32(c4, ones, _mm512_loadu_si512(b + 256));
      c5 = _mm512_dpbusd_epi32(c5, ones, _mm512_loadu_si512(b + 320));
      c6 = _mm512_dpbusd_epi32(c6, ones, _mm512_loadu_si512(b + 384));
      c7 = _mm512_dpbusd_epi32(c7, ones, _mm512_loadu_si512(b + 448));
    }
    for (; l < lines; l++, b += 64) c0 = _mm512_dpbusd_epi32(c0, ones, _mm512_loadu_si512(b));
    /* the memory clobber: every pass reloads the buffer (no pass folded away or merged) */
    __asm__ volatile("" ::: "memory");
  }
  c0 = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(c0, c1), _mm512_add_epi32(c2, c3)),
                        _mm512_add_epi32(_mm512_add_epi32(c4, c5), _mm512_add_epi32(c6, c7)));
  return _mm512_reduce_add_epi32(c0);
}

/* The peak measurement: 24 independent zmm accumulators, register operands only, written in asm
 * (gcc shuffles and spills two dozen live vector variables; the point here is the bare loop). */
long long qi_qint8_vnni_peak__avx512vnni(long long iters);
long long qi_qint8_vnni_peak__avx512vnni(long long iters) {
  int32_t out[16];
  if (iters < 1) return 0;
  __asm__ volatile(
      "vpbroadcastd %[one], %%zmm30\n\t"
      "vpbroadcastd %[two], %%zmm31\n\t"
      "vpxord %%zmm0, %%zmm0, %%zmm0\n\t"
      "vmovdqa64 %%zmm0, %%zmm1\n\t vmovdqa64 %%zmm0, %%zmm2\n\t vmovdqa64 %%zmm0, %%zmm3\n\t"
      "vmovdqa64 %%zmm0, %%zmm4\n\t vmovdqa64 %%zmm0, %%zmm5\n\t vmovdqa64 %%zmm0, %%zmm6\n\t"
      "vmovdqa64 %%zmm0, %%zmm7\n\t vmovdqa64 %%zmm0, %%zmm8\n\t vmovdqa64 %%zmm0, %%zmm9\n\t"
      "vmovdqa64 %%zmm0, %%zmm10\n\t vmovdqa64 %%zmm0, %%zmm11\n\t vmovdqa64 %%zmm0, %%zmm12\n\t"
      "vmovdqa64 %%zmm0, %%zmm13\n\t vmovdqa64 %%zmm0, %%zmm14\n\t vmovdqa64 %%zmm0, %%zmm15\n\t"
      "vmovdqa64 %%zmm0, %%zmm16\n\t vmovdqa64 %%zmm0, %%zmm17\n\t vmovdqa64 %%zmm0, %%zmm18\n\t"
      "vmovdqa64 %%zmm0, %%zmm19\n\t vmovdqa64 %%zmm0, %%zmm20\n\t vmovdqa64 %%zmm0, %%zmm21\n\t"
      "vmovdqa64 %%zmm0, %%zmm22\n\t vmovdqa64 %%zmm0, %%zmm23\n\t"
      "1:\n\t"
      "vpdpbusd %%zmm31, %%zmm30, %%zmm0\n\t vpdpbusd %%zmm31, %%zmm30, %%zmm1\n\t"
      "vpdpbusd %%zmm31, %%zmm30, %%zmm2\n\t vpdpbusd %%zmm31, %%zmm30, %%zmm3\n\t"
      "vpdpbusd %%zmm31, %%zmm30, %%zmm4\n\t vpdpbusd %%zmm31, %%zmm30, %%zmm5\n\t"
      "vpdpbusd %%zmm31, %%zmm30, %%zmm6\n\t vpdpbusd %%zmm31, %%zmm30, %%zmm7\n\t"
      "vpdpbusd %%zmm31, %%zmm30, %%zmm8\n\t vpdpbusd %%zmm31, %%zmm30, %%zmm9\n\t"
      "vpdpbusd %%zmm31, %%zmm30, %%zmm10\n\t vpdpbusd %%zmm31, %%zmm30, %%zmm11\n\t"
      "vpdpbusd %%zmm31, %%zmm30, %%zmm12\n\t vpdpbusd %%zmm31, %%zmm30, %%zmm13\n\t"
      "vpdpbusd %%zmm31, %%zmm30, %%zmm14\n\t vpdpbusd %%zmm31, %%zmm30, %%zmm15\n\t"
      "vpdpbusd %%zmm31, %%zmm30, %%zmm16\n\t vpdpbusd %%zmm31, %%zmm30, %%zmm17\n\t"
      "vpdpbusd %%zmm31, %%zmm30, %%zmm18\n\t vpdpbusd %%zmm31, %%zmm30, %%zmm19\n\t"
      "vpdpbusd %%zmm31, %%zmm30, %%zmm20\n\t vpdpbusd %%zmm31, %%zmm30, %%zmm21\n\t"
      "vpdpbusd %%zmm31, %%zmm30, %%zmm22\n\t vpdpbusd %%zmm31, %%zmm30, %%zmm23\n\t"
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      "vpaddd %%zmm1, %%zmm0, %%zmm0\n\t vpaddd %%zmm23, %%zmm0, %%zmm0\n\t"
      "vmovdqu32 %%zmm0, %[out]\n\t"
      : [n] "+r"(iters), [out] "=m"(out)
      : [one] "r"(0x01010101), [two] "r"(0x01020304)
      : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
        "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18",
        "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm30", "xmm31");
  long long s = 0;
  for (int i = 0; i < 16; i++) s += out[i];
  return s;
}
