/* qinfer kernels: int8 GEMM / conv / depthwise conv (uint8 activations x int8 per-channel weights),
 * the plain-C parts every ISA variant shares (no intrinsics): the packed weight header, the
 * problem descriptors, the slot function types and the scalar epilogue that defines the math.
 *
 * Design (scheme of ../shared/DESIGN.md "Quantization scheme"):
 *   activations uint8, asymmetric per tensor (s_x, zp_x); weights int8 symmetric per output
 *   channel, values in [-127, 127] (-128 is computed exactly too); acc = bias_i32[n] +
 *   sum_k x[m, k] * w[k, n] in int32, where bias_i32 was folded at pack time as
 *   bias_q[n] - zp_x * sum_k w[k, n], so the zero-point correction costs nothing at run time, and
 *   a padded conv tap reads zp_x (the real value 0) exactly. The integer
 *   part is exact in every variant (no int16 saturation anywhere: VNNI vpdpbusd accumulates into
 *   int32, AVX2 widens to int16 and uses vpmaddwd on pairs whose sum fits), so the loop order,
 *   blocking and thread split cannot change it. The Python layer bounds K * 255 * 128 + |bias| below
 *   2^31, so int32 never wraps.
 *
 * Epilogue (per output element, float32 IEEE operations in exactly this order, identical in the
 * scalar C below, the SIMD variants and the numpy reference; no FMA anywhere, the files are built
 * with -ffp-contract=off; default rounding mode, round to nearest even):
 *   y = (float)acc                      int32 -> float32, round to nearest even (exact below 2^24)
 *   y = y * scale[n]                    scale = s_x * s_w[n] (or anything per channel)
 *   y = act(y)                          see qi_q_act below
 *   f32 output: out = y
 *   u8 output:  t = y * y_inv_scale     (1 / s_y, per tensor; 1.0 leaves y unchanged)
 *               t = t + (float)zp_y
 *               t = t > 0 ? t : 0;  t = t < 255 ? t : 255
 *               q = round_half_even(t)  (cvtps2dq / np.rint)  -- THE rounding rule
 * The activation acts on the real value (act(s_x s_w acc)); requantization comes after it, so
 * nonlinear activations (hardswish, sigmoid, silu) are right for any output scale.
 */
#ifndef QINFER_QINT8_H
#define QINFER_QINT8_H

#include <string.h>
#include "qinfer/common.h"
#include "qinfer/qelementwise.h" /* the residual add fused after the epilogue */

/* Activation codes of the int8 epilogue: those of enum qi_act_code, plus SiLU. */
#define QI_QACT_SILU 6 /* x * sigmoid(x), computed as x / (1 + exp(-x)) */
#define QI_QACT_COUNT 7

/* ---- packed weights (docs/formats.md, "int8 packed weights"); little-endian bytes ---- */
#define QI_QC8W_MAGIC_GEMM 0x57384351u /* "QC8W": GEMM / conv panels */
#define QI_QC8W_MAGIC_DW 0x38574451u   /* "QDW8": depthwise taps x channels */
#define QI_QC8W_VERSION 2u /* 2: depthwise weights in kernel-row quads (1: taps x channels) */
#define QI_QC8W_NR 32 /* output channels per panel */
#define QI_QC8W_KR 4  /* K bytes per channel per group (one vpdpbusd lane) */
#define QI_QDW_CR 16  /* depthwise: channels padded to a multiple of this */

typedef struct qi_qc8w_header { /* 64 bytes */
  uint32_t magic;   /* QI_QC8W_MAGIC_GEMM or QI_QC8W_MAGIC_DW */
  uint32_t version; /* QI_QC8W_VERSION */
  uint32_t groups;  /* conv groups G (GEMM, depthwise: 1) */
  uint32_t n;       /* output channels per group (depthwise: channels C) */
  uint32_t k;       /* reduction length per group, kh*kw*cin (depthwise: taps kh*kw) */
  uint32_t n_pad;   /* n rounded up to nr */
  uint32_t k_pad;   /* k rounded up to kr (depthwise: kw * ceil(kh / 4) * 4) */
  uint32_t nr;      /* 32 (depthwise: 16) */
  uint32_t kr;      /* 4 (depthwise: 4, kernel rows per quad) */
  int32_t zp_x;     /* activation zero point folded into bias */
  uint32_t kh, kw;  /* conv kernel the K axis was packed for (GEMM: 0, 0) */
  uint32_t cin;     /* input channels per group (GEMM: k; depthwise: 1) */
  uint32_t reserved[3];
} qi_qc8w_header;
/* Then, at byte 64: int32 bias[G * n_pad] (folded, see above), int32 colsum[G * n_pad]
 * (sum_k w[k, n], for refolding another zp_x), then the weights:
 *   GEMM / conv: G * n_pad / 32 panels of k_pad * 32 bytes; byte
 *     ((g * (n_pad/32) + j/32) * (k_pad/4) + k/4) * 128 + (j%32) * 4 + k%4  holds  w_g[k, j],
 *     with K ordered (ky, kx, c) (NHWC patches), zero in the padding;
 *   depthwise: int8 quads w[((kx * nq + q) * n_pad + c) * 4 + t] = w_c[ky = 4q + t, kx], nq =
 *     ceil(kh / 4), zero for ky >= kh and in the channel padding (k_pad = kw * nq * 4). */

/* ---- epilogue parameters of one call ---- */
typedef struct qi_qepi {
  const float *scale; /* per output channel, indexed like the output columns given to the kernel */
  qi_act act;         /* code: QI_ACT_* or QI_QACT_SILU; a, b: clip min/max, hardsigmoid alpha/beta */
  int out_u8;         /* 1: requantized uint8 out; 0: float32 out */
  float y_inv_scale;  /* u8 only */
  float zp_y;         /* u8 only: the zero point, plus (pb / s_y) of a folded a*act(y) + b */
  void *out;          /* element (row 0, column 0) of the block the call writes */
  size_t ldo;         /* row stride of out, in elements */
} qi_qepi;

/* ---- slot function types ---- */

/* GEMM block, single-threaded: for rows i < m and columns j in [n_begin, n_end) of one weight
 * group (n_begin a multiple of 32, n_end <= that group's n), with A[i, :k] at a + i*lda:
 *   out[i, j] = epilogue(bias[j] + sum_{kk < k} A[i, kk] * W[kk, j]).
 * w: the group's panels (packed layout above, k_pad = round_up(k, 4) of the packing, the caller
 * may pass a k below it when A holds zeros past k); bias: the group's bias[n_pad].
 * Reads exactly k bytes of each A row. m <= QI_QGEMM_MC_MAX. acc: scratch private to the call,
 * acc[i * QI_QGEMM_NC_MAX + j] for i < m (K blocking), needed only when k > QI_QGEMM_KC_MAX. */
#define QI_QGEMM_MC_MAX 256
#define QI_QGEMM_NC_MAX 256
#define QI_QGEMM_KC_MAX 512 /* K bytes per block of any variant: acc is used only when k > this */
#define QI_QGEMM_ACC_INTS ((size_t)QI_QGEMM_MC_MAX * QI_QGEMM_NC_MAX)
typedef void qi_gemm_qu8_qc8w_fn(size_t m, size_t n_begin, size_t n_end, size_t k,
                                 const uint8_t *a, size_t lda, const int32_t *bias,
                                 const int8_t *w, size_t k_pad, const qi_qepi *ep, int32_t *acc);

/* Depthwise conv of one NHWC image, single-threaded over output pixels p = oy*out_w + ox in
 * [p_begin, p_end) and channels [c_begin, c_end) (c_begin a multiple of 16; the driver passes
 * all channels and splits pixels): x[in_h, in_w, c]; w: the packed quads (layout above),
 * w[((kx * nq + q) * c_pad + ch) * 4 + t] = weight (ky = 4q + t, kx) of channel ch, nq =
 * ceil(k_h / 4); bias[c_pad]; taps outside the image read zp_x. ep->out is the image's output
 * [out_h*out_w, c] (ldo = c), ep->scale[c]. scratch: qi_qdw_scratch_bytes(g, c_pad) bytes, 64-byte
 * aligned, private to the call (the SIMD variants' row of input quads). */
typedef void qi_dwconv2d_qu8_qc8w_fn(const qi_conv2d_geom *g, size_t c, size_t c_begin,
                                     size_t c_end, size_t p_begin, size_t p_end, const uint8_t *x, const int32_t *bias,
                                     const int8_t *w, size_t c_pad, uint8_t zp_x,
                                     const qi_qepi *ep, uint8_t *scratch);

/* The output channels [*n0, *n1) of conv group g that a thread's units [u_begin, u_end) cover (upg
 * units of nr channels per group, n real channels per group, as the int8, int4 and sparse drivers
 * cut their work); 0 when they cover none of group g. */
QI_INLINE int qi_group_cols(size_t g, size_t upg, size_t u_begin, size_t u_end, size_t nr, size_t n,
                            size_t *n0, size_t *n1) {
  const size_t q0 = g * upg > u_begin ? g * upg : u_begin;
  const size_t q1 = (g + 1) * upg < u_end ? (g + 1) * upg : u_end;
  *n0 = (q0 - g * upg) * nr;
  *n1 = (q1 - g * upg) * nr;
  if (*n1 > n) *n1 = n;
  return *n0 < *n1;
}

/* Depthwise "quad row": for output row oy, Q[e][q][ch][t] = x[iy, e - pad_left, ch] with
 * iy = oy*stride_h - pad_top + (4q + t)*dil_h, zp_x where that lies outside the image, 0 where
 * 4q + t >= k_h; e over the padded width in_w + pad_left + pad_right. One vpdpbusd of a quad with
 * a weight quad then adds a whole kernel column (up to 4 rows) of one channel. */
QI_INLINE size_t qi_qdw_nq(const qi_conv2d_geom *g) { return (g->k_h + 3) / 4; }
#define QI_QDW_NQ_MAX 64 /* kernel height <= 256 (the Python layer checks) */
QI_INLINE size_t qi_qdw_row_width(const qi_conv2d_geom *g) {
  return g->in_w + g->pad_left + g->pad_right;
}
/* Q, then (AVX-512 kernel) a row of zp_x, a row of zeros (c_pad + 32 bytes each) and a second
 * set of weight quads */
QI_INLINE size_t qi_qdw_scratch_bytes(const qi_conv2d_geom *g, size_t c_pad) {
  return qi_qdw_row_width(g) * qi_qdw_nq(g) * c_pad * 4 + 2 * (c_pad + 32) +
         g->k_w * qi_qdw_nq(g) * c_pad * 4;
}
/* source rows of quad q of output row oy: row pointer (x + iy*in_w*c) or NULL (outside: zp_x),
 * and a flag for taps past k_h (value 0) */
QI_INLINE const uint8_t *qi_qdw_src_row(const qi_conv2d_geom *g, size_t c, const uint8_t *x,
                                        size_t oy, size_t ky, int *beyond) {
  *beyond = ky >= g->k_h;
  if (*beyond) return NULL;
  ptrdiff_t iy = (ptrdiff_t)(oy * g->stride_h + ky * g->dil_h) - (ptrdiff_t)g->pad_top;
  return (iy >= 0 && iy < (ptrdiff_t)g->in_h) ? x + (size_t)iy * g->in_w * c : NULL;
}

/* ---- the conv / GEMM driver (common code, kernels/scalar/qint8-driver.c) ---- */

/* A conv in NHWC (a GEMM is the 1x1 case with in_w = 1): rows m = batch*out_h*out_w output
 * pixels, columns groups*n output channels; A row = the pixel's patch, K ordered (ky, kx, c). */
typedef struct qi_qconv_problem {
  const uint8_t *x;    /* [batch, in_h, in_w, cin_total] */
  size_t batch, cin_total;
  qi_conv2d_geom geom;
  int direct;          /* 1: A row r is x + r*lda (+ g*cin) read in place (1x1, stride 1, no pad) */
  size_t lda;          /* direct only */
  size_t m;            /* batch * out_h * out_w */
  uint8_t zp_x;        /* pad value */
  size_t groups, n, k, k_pad, n_pad, cin; /* per group; k = kh*kw*cin */
  const int32_t *bias; /* [groups * n_pad] */
  const int8_t *w;     /* panels of every group */
  qi_qepi ep;          /* ep.out = out[0, 0], ep.ldo = groups * n, ep.scale[groups * n] */
  /* A residual add fused after the epilogue (uint8 out only): once a call has written a block of
   * out, the driver runs the stream slot's QADD on it in place, out = qadd(out, res), with out as
   * operand a (res_q's a_* are this layer's output parameters). res: [m, groups * n] uint8 laid
   * out like out (row stride ep.ldo); NULL: no add. The block is still in this core's cache, the
   * add runs on the layer's threads, and the bytes are those of the separate QAdd: the same
   * function on the same values (a and b swapped where the layer was the add's b: IEEE addition
   * commutes). */
  const uint8_t *res;
  qi_stream_u8_fn *res_fn;
  qi_qadd_params res_q;
} qi_qconv_problem;

/* The fused residual add of rows [r0, r0 + m) x columns [c0, c1) of out (no-op without res). */
void qi_qconv_residual(const qi_qconv_problem *p, size_t r0, size_t m, size_t c0, size_t c1);

/* Bytes of scratch one thread needs for qi_qconv_run over at most `rows` rows (64-byte aligned by
 * the caller). */
size_t qi_qconv_scratch_bytes(const qi_qconv_problem *p, size_t rows);

/* Rows [m_begin, m_end) x global panels [p_begin, p_end) (panel q = group q / (n_pad/32), local
 * panel q % (n_pad/32)) of the output; m_begin a multiple of 8 unless it is the only chunk. */
void qi_qconv_run(const qi_qconv_problem *p, qi_gemm_qu8_qc8w_fn *fn, size_t m_begin, size_t m_end,
                  size_t p_begin, size_t p_end, void *scratch);

/* This OS thread's scratch buffer of at least `bytes` bytes, 64-byte aligned, kept between calls
 * (contents undefined); NULL when out of memory. For the drivers, not the kernels. */
void *qi_qint8_scratch(size_t bytes);

/* Register-only VNNI loop for the peak measurement: `iters` iterations of 24 independent zmm
 * vpdpbusd (24 * 64 MACs each). Returns a value depending on the result (keep it alive), or -1 when
 * this build has no AVX-512 VNNI kernels (the caller checks the CPU tier first). */
long long qi_qint8_vnni_peak(long long iters);
/* bench: nt threads each load their share of buf's 64-byte lines into vpdpbusd, passes times (the
 * weight-streaming bound of a one-row GEMM); -1 without the AVX-512 VNNI tier */
long long qi_qint8_vnni_stream(const int8_t *buf, size_t bytes, long long passes, int nt);

/* ---- the scalar epilogue: the definition every SIMD variant follows lane by lane ---- */

QI_INLINE float qi_q_bits2f(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* round half to even for |v| < 2^22 (v + 1.5*2^23 - 1.5*2^23 under the default rounding mode) */
QI_INLINE float qi_q_rint(float v) {
  return (v + 12582912.0f) - 12582912.0f; /* not folded: no -ffast-math */
}

/* Cephes-style expf with mul and add only (no FMA): x clamped to [-87, 87], n = rint(x log2 e),
 * r = x - n*C1 - n*C2 (C1 + C2 = ln 2, C1 exact in 9 bits), degree-5 polynomial, times 2^n built
 * from the exponent bits. The SIMD variants run exactly these operations. */
#define QI_Q_EXP_LOG2E 1.44269504088896341f
#define QI_Q_EXP_C1 0.693359375f
#define QI_Q_EXP_C2 (-2.12194440e-4f)
#define QI_Q_EXP_P0 1.9875691500E-4f
#define QI_Q_EXP_P1 1.3981999507E-3f
#define QI_Q_EXP_P2 8.3334519073E-3f
#define QI_Q_EXP_P3 4.1665795894E-2f
#define QI_Q_EXP_P4 1.6666665459E-1f
#define QI_Q_EXP_P5 5.0000001201E-1f
#define QI_Q_SIXTH 0.16666667163372040f /* float32(1/6), bits 0x3e2aaaab */

QI_INLINE float qi_q_exp(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 87.0f ? 87.0f : x;
  float n = qi_q_rint(x * QI_Q_EXP_LOG2E);
  float r = x - n * QI_Q_EXP_C1;
  r = r - n * QI_Q_EXP_C2;
  float p = QI_Q_EXP_P0;
  p = p * r + QI_Q_EXP_P1;
  p = p * r + QI_Q_EXP_P2;
  p = p * r + QI_Q_EXP_P3;
  p = p * r + QI_Q_EXP_P4;
  p = p * r + QI_Q_EXP_P5;
  p = p * (r * r) + (r + 1.0f);
  uint32_t e = (uint32_t)((int32_t)n + 127) << 23;
  return p * qi_q_bits2f(e);
}

/* Activation on the real value y. Comparisons written as the SIMD max/min with the constant
 * first (max_ps(c, y) returns y when y is NaN), although finite scales never produce NaN. */
QI_INLINE float qi_q_act(float y, int code, float a, float b) {
  switch (code) {
    case QI_ACT_RELU: return y < 0.0f ? 0.0f : y;
    case QI_ACT_CLIP: y = y < a ? a : y; return y > b ? b : y;
    case QI_ACT_HARDSWISH: {
      float t = y * QI_Q_SIXTH;
      t = t + 0.5f;
      t = t < 0.0f ? 0.0f : t;
      t = t > 1.0f ? 1.0f : t;
      return y * t;
    }
    case QI_ACT_SIGMOID: return 1.0f / (1.0f + qi_q_exp(0.0f - y));
    case QI_ACT_HARDSIGMOID: {
      float t = a * y;
      t = t + b;
      t = t < 0.0f ? 0.0f : t;
      return t > 1.0f ? 1.0f : t;
    }
    case QI_QACT_SILU: return y / (1.0f + qi_q_exp(0.0f - y));
    default: return y;
  }
}

QI_INLINE uint8_t qi_q_requant(float y, float inv_scale, float zp) {
  float t = y * inv_scale;
  t = t + zp;
  t = t > 0.0f ? t : 0.0f;
  t = t < 255.0f ? t : 255.0f;
  return (uint8_t)(int)qi_q_rint(t);
}

/* out[j] for one element of column j: acc -> epilogue -> store */
QI_INLINE void qi_q_store1(const qi_qepi *ep, size_t row, size_t col, int32_t acc) {
  float y = (float)acc;
  y = y * ep->scale[col];
  y = qi_q_act(y, ep->act.code, ep->act.a, ep->act.b);
  if (ep->out_u8)
    ((uint8_t *)ep->out)[row * ep->ldo + col] = qi_q_requant(y, ep->y_inv_scale, ep->zp_y);
  else
    ((float *)ep->out)[row * ep->ldo + col] = y;
}

QI_INLINE int32_t qi_q_load_i32(const void *p) {
  int32_t v;
  memcpy(&v, p, 4);
  return v;
}

/* the last k % 4 bytes of a row as one little-endian int32, zero above */
QI_INLINE int32_t qi_q_load_tail(const uint8_t *p, size_t nbytes) {
  uint32_t v = 0;
  for (size_t i = 0; i < nbytes; i++) v |= (uint32_t)p[i] << (8 * i);
  return (int32_t)v;
}

#endif /* QINFER_QINT8_H */
