/* qinfer kernels: int4 GEMM / conv (uint8 activations x int4 weights in blocks along K), the
 * plain-C parts every ISA variant shares (no intrinsics): the packed weight header, the slot
 * function type, the conv problem and the scalar definition of the arithmetic.
 *
 * Design (DESIGN.md "Quantization scheme", int4): weights q in [-8, 7], two per byte, symmetric,
 * one float32 scale per (output channel n, block b of `block` consecutive k; the last block may
 * be short). Activations uint8 with a per-tensor zero point zp_x that is NOT subtracted in the
 * integer part: a block's dot product of raw bytes is exact in int32 and the zero point comes
 * back as one float per channel folded at pack time (offset[n] = bias / s_x - zp_x * sum_b
 * s[b, n] * sum_{k in b} q[k, n]). So the packed weights carry no per-block integer
 * correction (4 bits + 32 / block bits per weight), and a conv's padding taps, which read zp_x,
 * are cancelled by the same offset.
 *
 * The arithmetic of one output element (row i, column n), float32 IEEE operations in exactly this
 * order in the scalar C below, every SIMD variant and the numpy reference
 * (qinfer.reference.int4); no FMA (the files are built with -ffp-contract=off), default rounding:
 *   acc = 0.0f
 *   for b = 0, 1, ..., nblk - 1:                 blocks in ascending order
 *     d = sum_{k in block b} a[i, k] * q[k, n]   int32, exact (|16 d| <= 16 * 255 * 8 * 256 < 2^24)
 *     s16 = s[b, n] * 0.0625f                    exact unless s16 is subnormal
 *     t = (float)(16 * d) * s16                  one rounding: float(d) * s for any normal s16
 *     acc = acc + t                              one rounding
 *   y = acc + offset[n]
 *   y = y * scale[n]                             scale: the call's, per channel (s_x, or s_x / s_y)
 *   y = y + bias[n]                              only when the call passes a float bias
 *   then the int8 epilogue from the activation on (qinfer/qint8.h): act(y), float32 out or
 *   uint8 clamp(rint(y * y_inv_scale + zp_y), 0, 255).
 * d is exact in any order, so the tiles, the threads and the ISA cannot change a bit of it; the
 * float steps are per element and fixed. Why 16 d and s / 16: the SIMD variants read the weights
 * as 16 q (a nibble moved to the high half of a byte is 16 q as a signed byte, no sign fix-up), so
 * their integer sums are 16 d, and s / 16 is computed once per block for every row; written so,
 * t is one product in every variant (and float(d) * s itself whenever s / 16 is a normal float).
 */
#ifndef QINFER_QINT4_H
#define QINFER_QINT4_H

#include "qinfer/common.h"
#include "qinfer/qint8.h" /* qi_qepi and the scalar epilogue (activation, requantization) */

/* ---- packed weights (docs/formats.md, "int4 packed weights"); little-endian bytes ---- */
#define QI_QB4W_MAGIC 0x57344251u /* "QB4W" */
#define QI_QB4W_VERSION 1u
#define QI_QB4W_NR 32         /* output channels per panel: low nibbles 0-15, high nibbles 16-31 */
#define QI_QB4W_KR 4          /* k per step: 64 bytes = 32 channels x 4 k, one vpdpbusd lane */
#define QI_QB4W_BLOCK_MAX 256 /* |16 d| <= 16 * 8 * 255 * 256 < 2^24: exact in int32 and float */

typedef struct qi_qb4w_header { /* 64 bytes */
  uint32_t magic;       /* QI_QB4W_MAGIC */
  uint32_t version;     /* QI_QB4W_VERSION */
  uint32_t groups;      /* conv groups G (GEMM: 1) */
  uint32_t n;           /* output channels per group */
  uint32_t k;           /* reduction length per group, kh*kw*cin */
  uint32_t n_pad;       /* n rounded up to 32 */
  uint32_t block;       /* k per scale block: a multiple of 4 in [4, 256] (quantizer: 32, 64, 128) */
  uint32_t nblk;        /* ceil(k / block) */
  uint32_t panel_bytes; /* round_up(k, 4) * 16 + 128 * nblk */
  int32_t zp_x;         /* activation zero point folded into offset */
  uint32_t kh, kw;      /* conv kernel the K axis was packed for (GEMM: 0, 0) */
  uint32_t cin;         /* input channels per group (GEMM: k) */
  uint32_t reserved[3];
} qi_qb4w_header;
_Static_assert(sizeof(qi_qb4w_header) == 64, "qi_qb4w_header is 64 bytes (docs/formats.md)");
_Static_assert(QI_QB4W_NR == 32 && QI_QB4W_KR == 4, "a step is 64 bytes of nibbles");
/* Then, at byte 64: float32 offset[G * n_pad] (folded, see above; 0 in the padding), then
 * G * n_pad / 32 panels of panel_bytes each. Panel p (group p / (n_pad/32)) is its blocks in
 * order; block b (k0 = b * block, len = min(block, k - k0), len4 = round_up(len, 4)) starts at
 * byte b * (block * 16 + 128) of the panel and holds len4 / 4 steps of 64 bytes, byte j of step t
 * holding q[k0 + 4t + j % 4, channel j / 4] in its low nibble and q[k0 + 4t + j % 4, channel
 * 16 + j / 4] in its high nibble (two's complement; 0 past len and past n), then float32
 * s[b, channel] for the panel's 32 channels (0 past n). */

/* ---- slot function type ---- */

/* GEMM block, single-threaded: for rows i < m and columns j in [n_begin, n_end) of one weight
 * group (n_begin a multiple of 32, n_end <= that group's n), with A[i, :k] at a + i*lda:
 *   out[i, j] = the arithmetic above.
 * w: the group's panels (panel_bytes each, block as in the header); offset: the group's
 * offset[n_pad]; bias: NULL or the group's float bias, indexed like ep->scale. Reads exactly k
 * bytes of each A row; any m. */
typedef void qi_gemm_qu8_qb4w_fn(size_t m, size_t n_begin, size_t n_end, size_t k,
                                 const uint8_t *a, size_t lda, const uint8_t *w,
                                 size_t panel_bytes, size_t block, const float *offset,
                                 const float *bias, const qi_qepi *ep);

/* ---- the conv / GEMM driver (common code, kernels/scalar/qint4-driver.c) ---- */

/* A conv in NHWC: the int8 driver's problem (qinfer/qint8.h: input, geometry, rows m, zp_x, groups,
 * n, n_pad, cin, the epilogue; its k_pad, bias and w unused) plus the int4 weights. */
typedef struct qi_q4conv_problem {
  qi_qconv_problem c;
  size_t block, panel_bytes; /* from the header; c.k = kh*kw*cin per group */
  const float *offset;       /* [groups * n_pad] */
  const float *bias;         /* NULL or [groups * n] */
  const uint8_t *w;          /* panels of every group */
} qi_q4conv_problem;

/* Bytes of scratch one thread needs for qi_q4conv_run over at most `rows` rows (0 for a direct
 * problem). */
size_t qi_q4conv_scratch_bytes(const qi_q4conv_problem *p, size_t rows);

/* Rows [m_begin, m_end) x global panels [p_begin, p_end) (panel q = group q / (n_pad/32)). */
void qi_q4conv_run(const qi_q4conv_problem *p, qi_gemm_qu8_qb4w_fn *fn, size_t m_begin,
                   size_t m_end, size_t p_begin, size_t p_end, void *scratch);

/* ---- the scalar definition ---- */

/* the int4 value of nibble `hi` (0 low, 1 high) of byte v */
QI_INLINE int32_t qi_q4_nibble(uint8_t v, int hi) {
  return hi ? (int32_t)((int8_t)v >> 4) : (int32_t)((int8_t)(uint8_t)(v << 4) >> 4);
}

/* y = acc + offset, times the call's scale, plus its bias, then the int8 epilogue's activation
 * and store (qi_q_act, qi_q_requant): out[row, col] */
QI_INLINE void qi_q4_store1(const qi_qepi *ep, const float *offset, const float *bias, size_t row,
                            size_t col, float acc) {
  float y = (acc + offset[col]) * ep->scale[col]; /* two roundings (-ffp-contract=off) */
  if (bias) y = y + bias[col];
  y = qi_q_act(y, ep->act.code, ep->act.a, ep->act.b);
  char *o = (char *)ep->out + (row * ep->ldo + col) * (ep->out_u8 ? 1 : sizeof(float));
  if (ep->out_u8) *(uint8_t *)o = qi_q_requant(y, ep->y_inv_scale, ep->zp_y);
  else memcpy(o, &y, sizeof y);
}

#endif /* QINFER_QINT4_H */
