/* qinfer kernels: fp32 GEMM, the plain-C parts shared by every ISA variant (no intrinsics):
 * operand descriptors, packing of A (ahead of time) and of B bands (per call, dense or im2col),
 * and the cache-blocked macro loop each variant runs around its register-blocked tile.
 *
 * Design: C[M, N] = act(A[M, K] @ B[K, N] + bias), row-major, vectors along N (the contiguous
 * axis of B and C), broadcasts along M. The tile (MR x NR, e.g. 8 x 32 on AVX-512) keeps its C
 * block in registers for one K block of KC steps; the first K block starts from the bias (or 0),
 * later ones reload C (stored floats reload exactly), the last applies the activation before the
 * store: bias and activation cost no extra pass over C. Every element is a chain of FMAs (or
 * mul + add in the scalar variant) over k = 0, 1, ... K-1 in that order, whatever the tile, the
 * edge masking, the blocking or the part of C a thread owns, so any static split of C over
 * threads gives bit-identical results.
 *
 * Operands. A: either row-major with leading dimension lda (read in place: broadcasts from MR
 * row streams), or packed ahead of time (the constant operand of a conv: its weights) in panels
 * of QI_GEMM_F32_PANEL = 8 rows, k-major inside a panel (pa[(p*K + k)*8 + r] = A[8p + r, k], rows
 * past M zero): one contiguous broadcast stream per tile, the same layout for every tier (AVX2
 * tiles of 4 rows read half a panel). B: row-major with leading dimension ldb, copied band by band (KC rows x NC
 * columns) into per-thread scratch (also for small M: see qi_gemm_f32_run); a conv's B is the im2col matrix of its input, which is never
 * built: its bands are gathered straight from x, so a big feature map never materializes more
 * than KC x NC floats of it. The band's row stride is an odd number of cache lines, so the
 * KC x NR sliver a tile streams spreads over every L1 set instead of aliasing at 4 KiB strides.
 *
 * Blocking (Zen 4: 32 KiB L1d, 1 MiB L2): loops jc (NC columns) > pc (KC rows of B) > ic (MC rows
 * of A) > jr (NR) > ir (MR). The KC x NR sliver of B (KC = 128: 16 KiB) stays in L1 while the ir
 * loop runs every row tile of the MC block over it; the A block (MC x KC <= 256 KiB) and the B
 * band (KC x NC <= 256 KiB) stay in L2.
 */
#ifndef QINFER_GEMM_H
#define QINFER_GEMM_H

#include <string.h>
#include "qinfer/common.h"

#define QI_GEMM_F32_PANEL 8    /* rows per packed-A panel (every tier) */
#define QI_GEMM_F32_KC_MAX 256 /* largest KC of any variant (scratch size) */
#define QI_GEMM_F32_NC_MAX 512 /* largest NC of any variant (scratch size) */

/* tile flags */
#define QI_GEMM_FIRST 1 /* first K block: start from the bias (or 0), not from C */
#define QI_GEMM_LAST 2  /* last K block: apply the activation before the store */

/* The B operand: a row-major matrix, or the im2col matrix of a conv input (never built). */
typedef struct qi_gemm_f32_b {
  const float *data;          /* dense: B[k, j] = data[k * ldb + j]; im2col: x[C, H, W] */
  size_t ldb;                 /* dense: row stride (floats, >= N); im2col: unused */
  const qi_conv2d_geom *geom; /* NULL: dense; else B = im2col(x) [C*KH*KW, OH*OW] (K = C*KH*KW) */
} qi_gemm_f32_b;

/* One tile call: C[0:mr, 0:nr] (+)= A[0:mr, 0:kc] @ B[0:kc, 0:nr], pointers already offset. */
typedef struct qi_gemm_f32_tile {
  size_t kc;
  const float *a; /* packed: a[k * 8 + i]; else a[i * lda + k] */
  size_t lda;
  int a_packed;
  const float *b; /* b[k * ldb + j], only j < nr readable */
  size_t ldb;
  float *c;       /* c[i * ldc + j] */
  size_t ldc;
  size_t mr, nr;  /* 1 <= mr <= MR, 1 <= nr <= NR of the variant */
  int flags;      /* QI_GEMM_FIRST | QI_GEMM_LAST */
  const float *bias_row; /* per-row bias of row 0 of the tile (bias_row[i]), or NULL */
  const float *bias_col; /* per-column bias of column 0 of the tile (bias_col[j]), or NULL */
  const qi_act *act;
} qi_gemm_f32_tile;

typedef void qi_gemm_f32_tile_fn(const qi_gemm_f32_tile *t);

/* Floats of packed A for an [m, k] matrix (one group). */
static inline size_t qi_gemm_f32_packed_a_floats(size_t m, size_t k) {
  return (m + QI_GEMM_F32_PANEL - 1) / QI_GEMM_F32_PANEL * QI_GEMM_F32_PANEL * k;
}

/* Pack A[m, k] (row stride lda) into panels (layout above); pa holds packed_a_floats(m, k). */
static inline void qi_gemm_f32_pack_a(size_t m, size_t k, const float *QI_RESTRICT a, size_t lda,
                                      float *QI_RESTRICT pa) {
  const size_t P = QI_GEMM_F32_PANEL;
  for (size_t p = 0; p * P < m; p++) {
    float *dst = pa + p * P * k;
    size_t rows = m - p * P < P ? m - p * P : P;
    for (size_t kk = 0; kk < k; kk++) {
      for (size_t r = 0; r < rows; r++) dst[kk * P + r] = a[(p * P + r) * lda + kk];
      for (size_t r = rows; r < P; r++) dst[kk * P + r] = 0.0f;
    }
  }
}

/* Floats of B-band scratch one thread needs (any variant), 64-byte aligned by the caller. */
static inline size_t qi_gemm_f32_scratch_floats(void) {
  return (size_t)QI_GEMM_F32_KC_MAX * (QI_GEMM_F32_NC_MAX + 32) + 64;
}

/* Row stride of a band of nc columns: whole cache lines, an odd number of them. */
static inline size_t qi_gemm_f32_band_ld(size_t nc) {
  size_t lines = (nc + 15) / 16;
  return (lines | 1) * 16;
}

/* dst[k * ld + j] = B[pc + k, jc + j] for k < kc, j < nc (columns past nc are left alone). */
static inline void qi_gemm_f32_pack_b(const qi_gemm_f32_b *b, size_t pc, size_t kc, size_t jc,
                                      size_t nc, float *QI_RESTRICT dst, size_t ld) {
  if (!b->geom) {
    for (size_t k = 0; k < kc; k++)
      memcpy(dst + k * ld, b->data + (pc + k) * b->ldb + jc, nc * sizeof(float));
    return;
  }
  const qi_conv2d_geom *g = b->geom;
  const size_t ow = g->out_w, sw = g->stride_w;
  const size_t oy_start = jc / ow, ox_start = jc % ow;
  for (size_t k = 0; k < kc; k++) {
    const size_t r = pc + k;
    const size_t kx = r % g->k_w, ky = (r / g->k_w) % g->k_h, ci = r / (g->k_w * g->k_h);
    const float *xc = b->data + ci * g->in_h * g->in_w;
    /* valid output columns [ox0, ox1): 0 <= ox*sw + offx < in_w */
    const ptrdiff_t offx = (ptrdiff_t)(kx * g->dil_w) - (ptrdiff_t)g->pad_left;
    const ptrdiff_t offy = (ptrdiff_t)(ky * g->dil_h) - (ptrdiff_t)g->pad_top;
    size_t ox0 = offx >= 0 ? 0 : (size_t)((-offx + (ptrdiff_t)sw - 1) / (ptrdiff_t)sw);
    ptrdiff_t need = (ptrdiff_t)g->in_w - offx;
    size_t ox1 = need <= 0 ? 0 : (size_t)((need + (ptrdiff_t)sw - 1) / (ptrdiff_t)sw);
    if (ox1 > ow) ox1 = ow;
    if (ox0 > ox1) ox0 = ox1;
    float *d = dst + k * ld;
    size_t q = 0, oy = oy_start, ox = ox_start;
    while (q < nc) {
      size_t len = ow - ox < nc - q ? ow - ox : nc - q; /* this output row's part of the band */
      const ptrdiff_t iy = (ptrdiff_t)(oy * g->stride_h) + offy;
      if (iy < 0 || iy >= (ptrdiff_t)g->in_h) {
        memset(d + q, 0, len * sizeof(float));
      } else {
        const float *src = xc + (size_t)iy * g->in_w;
        size_t a0 = ox0 < ox ? ox : (ox0 > ox + len ? ox + len : ox0);
        size_t a1 = ox1 < a0 ? a0 : (ox1 > ox + len ? ox + len : ox1);
        float *dd = d + q; /* dd[u - ox] is output column u of this row */
        if (a0 > ox) memset(dd, 0, (a0 - ox) * sizeof(float));
        if (sw == 1) {
          memcpy(dd + (a0 - ox), src + ((ptrdiff_t)a0 + offx), (a1 - a0) * sizeof(float));
        } else if (sw == 2) { /* the stride as a constant: the even elements of pairs, which the
                               * compiler gathers with vector permutes */
          const float *QI_RESTRICT s2 = src + ((ptrdiff_t)(a0 * 2) + offx);
          float *QI_RESTRICT o = dd + (a0 - ox);
          for (size_t u = 0, n = a1 - a0; u < n; u++) o[u] = s2[2 * u];
        } else {
          const float *s = src + ((ptrdiff_t)(a0 * sw) + offx);
          for (size_t u = a0; u < a1; u++, s += sw) dd[u - ox] = *s;
        }
        if (ox + len > a1) memset(dd + (a1 - ox), 0, (ox + len - a1) * sizeof(float));
      }
      q += len;
      ox = 0;
      oy++;
    }
  }
}

/* The macro loop: C[m0:m1, n0:n1] of C = act(A @ B + bias) for A [M, K], single-threaded.
 * a_packed: a is packed A (m0 must then be a multiple of QI_GEMM_F32_PANEL). bias: NULL, or
 * bias[M] (bias_axis 0, per row) or bias[N] (bias_axis 1, per column). MR divides
 * QI_GEMM_F32_PANEL; MC is a multiple of it; KC <= KC_MAX, NC <= NC_MAX. */
static inline void qi_gemm_f32_run(size_t m0, size_t m1, size_t n0, size_t n1, size_t K,
                                   const float *a, size_t lda, int a_packed,
                                   const qi_gemm_f32_b *b, float *c, size_t ldc,
                                   const float *bias, int bias_axis, const qi_act *act,
                                   float *scratch, size_t MR, size_t NR, size_t KC, size_t NC,
                                   size_t MC, qi_gemm_f32_tile_fn *tile) {
  const size_t P = QI_GEMM_F32_PANEL;
  if (m0 >= m1 || n0 >= n1) return;
  /* B is always copied band by band, even for M = 1: read in place, a tile walks 2 lines per
   * row down a 4 KiB-strided column strip, which measured 3-5x slower than the copy */
  const int pack_b = 1;
  qi_gemm_f32_tile t;
  t.lda = lda;
  t.a_packed = a_packed;
  t.ldc = ldc;
  t.act = act;
  for (size_t jc = n0; jc < n1; jc += NC) {
    const size_t nc = n1 - jc < NC ? n1 - jc : NC;
    size_t pc = 0;
    do { /* once even when K == 0 (C = act(bias)) */
      const size_t kc = K - pc < KC ? K - pc : KC;
      const float *bb;
      size_t ldbb;
      if (pack_b) {
        ldbb = qi_gemm_f32_band_ld(nc);
        qi_gemm_f32_pack_b(b, pc, kc, jc, nc, scratch, ldbb);
        bb = scratch;
      } else {
        ldbb = b->ldb;
        bb = b->data + pc * b->ldb + jc;
      }
      t.kc = kc;
      t.ldb = ldbb;
      t.flags = (pc == 0 ? QI_GEMM_FIRST : 0) | (pc + kc >= K ? QI_GEMM_LAST : 0);
      for (size_t ic = m0; ic < m1; ic += MC) {
        const size_t me = m1 - ic < MC ? m1 : ic + MC;
        if (nc <= 4 * NR) {
          /* narrow band (small maps): it stays in L1/L2 whole, so the streamed operand is A;
           * each A tile is reused from L1 across the band's few slivers */
          for (size_t ir = ic; ir < me; ir += MR) {
            t.mr = me - ir < MR ? me - ir : MR;
            t.a = a_packed ? a + (ir / P) * P * K + pc * P + ir % P : a + ir * lda + pc;
            t.bias_row = bias && bias_axis == 0 ? bias + ir : NULL;
            for (size_t jr = 0; jr < nc; jr += NR) {
              t.nr = nc - jr < NR ? nc - jr : NR;
              t.b = bb + jr;
              t.bias_col = bias && bias_axis == 1 ? bias + jc + jr : NULL;
              t.c = c + ir * ldc + jc + jr;
              tile(&t);
            }
          }
          continue;
        }
        for (size_t jr = 0; jr < nc; jr += NR) {
          t.nr = nc - jr < NR ? nc - jr : NR;
          t.b = bb + jr;
          t.bias_col = bias && bias_axis == 1 ? bias + jc + jr : NULL;
          for (size_t ir = ic; ir < me; ir += MR) {
            t.mr = me - ir < MR ? me - ir : MR;
            t.a = a_packed ? a + (ir / P) * P * K + pc * P + ir % P : a + ir * lda + pc;
            t.c = c + ir * ldc + jc + jr;
            t.bias_row = bias && bias_axis == 0 ? bias + ir : NULL;
            tile(&t);
          }
        }
      }
      pc += kc;
    } while (pc < K);
  }
}

#endif /* QINFER_GEMM_H */
