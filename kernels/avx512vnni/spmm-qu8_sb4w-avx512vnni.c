/* Sparse int8 GEMM block, AVX-512 VNNI: per non-zero 1x4 block, its 4 weights broadcast against 4
 * K bytes of 16 rows (one 64-byte load), vpdpbusd into 16 rows of one output channel.
 *
 * Design (qinfer/qsparse.h): the activations of up to QI_SPMM_MR = 128 rows are re-packed once per
 * call K-group-major, At[kb][R][4] (R = 16 nz rows, nz <= 8 groups; 16 x 16 int32 transposes in
 * registers, zeros past k and past the last row), so the 4 bytes of K group kb of 16 consecutive
 * rows are one aligned zmm. A channel then costs, per non-zero block, one record (a scalar load of
 * kb and a broadcast load of the 4 weights) and nz activation loads + vpdpbusd into nz
 * accumulators; with nz <= 4, blocks go two at a time into a second accumulator set (enough
 * independent chains for the vpdpbusd latency). The loop is bound by its loads (one zmm per
 * vpdpbusd: no activation vector is shared between channels whose block patterns differ), so rows
 * are blocked as wide as the registers allow (8 groups) to spread the two record loads over as
 * many vpdpbusd as possible, and the row blocks are balanced in whole 16-row groups. K is cut into
 * blocks of whole pointer segments of up to 64 KiB of re-packed activations (QI_SP_L1, measured)
 * and channels into blocks of 256; loops row block > channel block > K block > channel, parking
 * each channel's sums between K blocks (`park`, [channel][128] int32, prefetched a few channels
 * ahead). The epilogue (qepi-avx512vnni.h, the int8 one lane for lane) needs 16 channels of a row
 * per vector while the sums hold 16 rows of a channel: with uint8 output the last K block runs 16
 * channels at a time, each channel's epilogue on its accumulators (scale broadcast; same
 * operations per element, so the same bytes) and the bytes of 16 channels x 16 rows transposed
 * with 64 SSE unpacks (a third of the int32 transpose's cost, and no reload of parked sums; about
 * 15% of the fixed cost per call); with float output 16 x 16 tiles of the parked sums are
 * transposed as int32 first. Record ranges are clamped to nnzb and every kb to [0, kg), so
 * malformed weights cannot move an access out of the re-packed block.
 */
#include <immintrin.h>
#include "qinfer/ukernels.h"
#include "qepi-avx512vnni.h"

#define QI_MR QI_SPMM_MR
#define QI_NC QI_SPMM_NC
/* Bytes of re-packed activations per K block: 64 KiB, the whole K of a 1024-wide layer at 64 rows.
 * Measured (M = 196, K = N = 1024, 80% sparsity, 1 thread): 16 KiB blocks (L1-resident) 420 us,
 * 32 KiB 340 us, 64 KiB 320-330 us -- parking the sums between K blocks costs more than the L1
 * hits gain (the loop is bound by its activation loads either way). */
#ifndef QI_SP_L1
#define QI_SP_L1 65536
#endif
#define QI_SP_PFPARK 4 /* channels ahead whose parked sums are prefetched (K blocks after the first) */
#ifndef QI_SP_PFREC
#define QI_SP_PFREC 4 /* channels ahead whose records are prefetched */
#endif
#define QI_SP_PFLINES 16 /* at most this many lines of a channel's records per K block (measured:
                          * prefetching only the first one or two lines gains nothing) */
#define QI_SP_PF_L2 (512 * 1024) /* record bytes of a call beyond which every row block prefetches */

/* 16 x 16 int32 transpose: r[i] lane c -> r[c] lane i */
QI_INLINE void qi_sp_tr16(__m512i r[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 8; i++) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  /* u[4q + j], 128-bit lane L: column 4L + j of rows 4q .. 4q + 3 */
  for (int q = 0; q < 4; q++) {
    u[4 * q] = _mm512_unpacklo_epi64(t[4 * q], t[4 * q + 2]);
    u[4 * q + 1] = _mm512_unpackhi_epi64(t[4 * q], t[4 * q + 2]);
    u[4 * q + 2] = _mm512_unpacklo_epi64(t[4 * q + 1], t[4 * q + 3]);
    u[4 * q + 3] = _mm512_unpackhi_epi64(t[4 * q + 1], t[4 * q + 3]);
  }
  for (int j = 0; j < 4; j++) {
    const __m512i v = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x88);
    const __m512i w = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xDD);
    const __m512i v2 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x88);
    const __m512i w2 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xDD);
    r[j] = _mm512_shuffle_i32x4(v, v2, 0x88);      /* column j      (lane 0) */
    r[8 + j] = _mm512_shuffle_i32x4(v, v2, 0xDD);  /* column 8 + j  (lane 2) */
    r[4 + j] = _mm512_shuffle_i32x4(w, w2, 0x88);  /* column 4 + j  (lane 1) */
    r[12 + j] = _mm512_shuffle_i32x4(w, w2, 0xDD); /* column 12 + j (lane 3) */
  }
}

/* rows [0, mr) of A (k bytes each) -> At[kb][nz * 16][4] for kb < kg16 (zeros past k, past mr) */
static void qi_sp_pack(const uint8_t *a, size_t lda, size_t mr, size_t k, size_t nz, uint8_t *at) {
  const size_t r4 = nz * 64, kg16 = ((k + 3) / 4 + 15) & ~(size_t)15;
  for (size_t rg = 0; rg < nz; rg++) {
    for (size_t kb0 = 0; kb0 < kg16; kb0 += 16) {
      const size_t left = k > kb0 * 4 ? k - kb0 * 4 : 0;
      const __mmask64 km = left >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << left) - 1);
      __m512i v[16];
      for (size_t i = 0; i < 16; i++) {
        const size_t r = rg * 16 + i;
        v[i] = r < mr ? _mm512_maskz_loadu_epi8(km, a + r * lda + kb0 * 4) : _mm512_setzero_si512();
      }
      qi_sp_tr16(v);
      for (size_t t = 0; t < 16; t++) _mm512_store_si512(at + (kb0 + t) * r4 + rg * 64, v[t]);
    }
  }
}

/* The same re-packing straight from a conv input (qi_sp_patches; cin a multiple of 64): rows
 * [i0, i0 + mr) of the call are output pixels pa->r0 + i0 + r; for each kernel tap, each 64-byte
 * piece of the 16 rows' input channels is one load per row (zp_x where the tap falls in the
 * padding) and one 16 x 16 transpose: no im2col copy. */
static void qi_sp_pack_patches(const qi_sp_patches *pa, size_t i0, size_t mr, size_t nz,
                               uint8_t *at) {
  const qi_qconv_problem *p = pa->conv;
  const qi_conv2d_geom *ge = &p->geom;
  const size_t cin = p->cin, ct = p->cin_total, ohw = ge->out_h * ge->out_w, r4 = nz * 64;
  const __m512i zpv = _mm512_set1_epi8((char)p->zp_x);
  for (size_t rg = 0; rg < nz; rg++) {
    const uint8_t *base[16];
    ptrdiff_t iy0[16], ix0[16];
    for (size_t i = 0; i < 16; i++) {
      const size_t r = rg * 16 + i;
      base[i] = NULL;
      if (r >= mr) continue;
      const size_t row = pa->r0 + i0 + r, img = row / ohw, pix = row - img * ohw;
      const size_t oy = pix / ge->out_w, ox = pix - oy * ge->out_w;
      base[i] = p->x + img * ge->in_h * ge->in_w * ct + pa->g * cin;
      iy0[i] = (ptrdiff_t)(oy * ge->stride_h) - (ptrdiff_t)ge->pad_top;
      ix0[i] = (ptrdiff_t)(ox * ge->stride_w) - (ptrdiff_t)ge->pad_left;
    }
    for (size_t ky = 0, t = 0; ky < ge->k_h; ky++) {
      for (size_t kx = 0; kx < ge->k_w; kx++, t++) {
        const uint8_t *src[16];
        for (size_t i = 0; i < 16; i++) {
          src[i] = NULL;
          if (!base[i]) continue;
          const ptrdiff_t iy = iy0[i] + (ptrdiff_t)(ky * ge->dil_h);
          const ptrdiff_t ix = ix0[i] + (ptrdiff_t)(kx * ge->dil_w);
          if (iy >= 0 && iy < (ptrdiff_t)ge->in_h && ix >= 0 && ix < (ptrdiff_t)ge->in_w)
            src[i] = base[i] + ((size_t)iy * ge->in_w + (size_t)ix) * ct;
        }
        for (size_t c = 0; c < cin; c += 64) {
          __m512i v[16];
          for (size_t i = 0; i < 16; i++)
            v[i] = src[i] ? _mm512_loadu_si512(src[i] + c) : base[i] ? zpv : _mm512_setzero_si512();
          qi_sp_tr16(v);
          const size_t kb0 = (t * cin + c) / 4;
          for (size_t j = 0; j < 16; j++) _mm512_store_si512(at + (kb0 + j) * r4 + rg * 64, v[j]);
        }
      }
    }
  }
}

/* The activations of K group kb: re-packed (kb * r4) or, from planes (pl, a constant per
 * instantiation), at the group's offset */
QI_INLINE const uint8_t *qi_sp_kgroup(const int pl, const uint8_t *at, const uint32_t *tab,
                                      size_t kb, size_t r4) {
  return pl ? at + tab[kb] : at + kb * r4;
}

/* One channel over records [p, e): nz accumulators of 16 rows (named, so gcc keeps them in zmm
 * registers; nz is a constant in each instantiation), from the bias or the parked sums. Up to 4
 * groups, blocks go two at a time into a second set (2 nz chains in flight); from 5 groups on, one
 * set has enough independent chains. */
#define QI_SP_FOR8(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
QI_INLINE void qi_sp_chan(const int nz, const int pl, const uint8_t *at, const uint32_t *tab,
                          const qi_sb4w_rec *p,
                          const qi_sb4w_rec *e, size_t kg, int first, int32_t bias, int32_t *park,
                          uint8_t *t8, float scale, const qi_qe16 *E) {
  const size_t r4 = (size_t)nz * 64;
  const __m512i zero = _mm512_setzero_si512(), b0 = _mm512_set1_epi32(bias);
#define QI_DECL(r) __m512i c##r = zero, d##r = zero;
  QI_SP_FOR8(QI_DECL)
#undef QI_DECL
#define QI_INIT(r) if (nz > r) c##r = first ? b0 : _mm512_load_si512(park + 16 * r);
  QI_SP_FOR8(QI_INIT)
#undef QI_INIT
#define QI_DOT(C, r, A, W) if (nz > r) C##r = _mm512_dpbusd_epi32(C##r, _mm512_loadu_si512((A) + 64 * r), W);
  if (nz <= 4) {
    for (; p + 2 <= e; p += 2) {
      size_t k0 = p[0].kb, k1 = p[1].kb;
      k0 = k0 < kg ? k0 : 0;
      k1 = k1 < kg ? k1 : 0;
      const uint8_t *a0 = qi_sp_kgroup(pl, at, tab, k0, r4), *a1 = qi_sp_kgroup(pl, at, tab, k1, r4);
      const __m512i w0 = _mm512_set1_epi32(p[0].w), w1 = _mm512_set1_epi32(p[1].w);
#define QI_DOT2(r) QI_DOT(c, r, a0, w0) QI_DOT(d, r, a1, w1)
      QI_SP_FOR8(QI_DOT2)
#undef QI_DOT2
    }
  }
  for (; p < e; p++) {
    /* the record in one 64-bit load, its weights broadcast from the register: one load fewer per
     * block than a load of kb and a broadcast load of w (measured, M = 196, K = N = 1024, 1
     * thread: 2-4% faster at 80-90% sparsity) */
    uint64_t rv;
    __builtin_memcpy(&rv, p, sizeof rv);
    __asm__("" : "+r"(rv)); /* keeps gcc from splitting it back into two loads */
    size_t k0 = (uint32_t)rv;
    k0 = k0 < kg ? k0 : 0;
    const uint8_t *a0 = qi_sp_kgroup(pl, at, tab, k0, r4);
    const __m512i w0 = _mm512_set1_epi32((int32_t)(rv >> 32));
#define QI_DOT1(r) QI_DOT(c, r, a0, w0)
    QI_SP_FOR8(QI_DOT1)
#undef QI_DOT1
  }
#undef QI_DOT
#define QI_SUM(r) if (nz > r && nz <= 4) c##r = _mm512_add_epi32(c##r, d##r);
  QI_SP_FOR8(QI_SUM)
#undef QI_SUM
  if (t8) { /* last K block, uint8 out: the epilogue on the channel's rows, 16 bytes per group,
             * the activation a constant in each case and the requantization's skips hoisted */
    const __m512 sc = _mm512_set1_ps(scale), zero_ps = _mm512_setzero_ps();
    const int inv_one = E->inv_one, zp_zero = E->zp_zero, nonneg = E->nonneg;
#define QI_U8(r, CODE)                                                                            \
  if (nz > r) {                                                                                   \
    __m512 y = qi_qe16_act_k(_mm512_mul_ps(_mm512_cvtepi32_ps(c##r), sc), CODE, E->a, E->b);      \
    if (!inv_one) y = _mm512_mul_ps(y, E->inv);                                                   \
    if (!zp_zero) y = _mm512_add_ps(y, E->zp);                                                    \
    if (!nonneg) y = _mm512_max_ps(y, zero_ps);                                                   \
    _mm_store_si128((__m128i *)(t8 + 16 * r), _mm512_cvtusepi32_epi8(_mm512_cvtps_epi32(y)));    \
  }
#define QI_U8_CASE(CODE)                                                                          \
  case CODE: {                                                                                    \
    QI_U8(0, CODE) QI_U8(1, CODE) QI_U8(2, CODE) QI_U8(3, CODE)                                   \
    QI_U8(4, CODE) QI_U8(5, CODE) QI_U8(6, CODE) QI_U8(7, CODE)                                   \
    break;                                                                                        \
  }
    switch (E->code) {
      QI_U8_CASE(QI_ACT_NONE) QI_U8_CASE(QI_ACT_RELU) QI_U8_CASE(QI_ACT_CLIP)
      QI_U8_CASE(QI_ACT_HARDSWISH) QI_U8_CASE(QI_ACT_SIGMOID) QI_U8_CASE(QI_ACT_HARDSIGMOID)
      default: QI_U8(0, QI_QACT_SILU) QI_U8(1, QI_QACT_SILU) QI_U8(2, QI_QACT_SILU)
               QI_U8(3, QI_QACT_SILU) QI_U8(4, QI_QACT_SILU) QI_U8(5, QI_QACT_SILU)
               QI_U8(6, QI_QACT_SILU) QI_U8(7, QI_QACT_SILU)
    }
#undef QI_U8_CASE
#undef QI_U8
    return;
  }
#define QI_PARK(r) if (nz > r) _mm512_store_si512(park + 16 * r, c##r);
  QI_SP_FOR8(QI_PARK)
#undef QI_PARK
}

/* 16 x 16 bytes: a[c] byte r -> a[r] byte c (SSE2 unpacks, 4 stages of 16) */
QI_INLINE void qi_sp_tr16_u8(__m128i a[16]) {
  __m128i t[16];
  for (int i = 0; i < 8; i++) { /* t[i]: channels 2i, 2i+1 of rows 0-7 (16-bit units); t[8+i]: rows 8-15 */
    t[i] = _mm_unpacklo_epi8(a[2 * i], a[2 * i + 1]);
    t[8 + i] = _mm_unpackhi_epi8(a[2 * i], a[2 * i + 1]);
  }
  for (int i = 0; i < 4; i++) { /* a[4h + i]: channels 4i .. 4i+3 of rows 4h .. 4h+3 (32-bit units) */
    a[i] = _mm_unpacklo_epi16(t[2 * i], t[2 * i + 1]);
    a[4 + i] = _mm_unpackhi_epi16(t[2 * i], t[2 * i + 1]);
    a[8 + i] = _mm_unpacklo_epi16(t[8 + 2 * i], t[8 + 2 * i + 1]);
    a[12 + i] = _mm_unpackhi_epi16(t[8 + 2 * i], t[8 + 2 * i + 1]);
  }
  for (int h = 0; h < 4; h++) /* t[4h + 2j]: channels 8j .. 8j+7 of rows 4h, 4h+1; t[4h + 2j + 1]: rows 4h+2, 4h+3 */
    for (int j = 0; j < 2; j++) {
      t[4 * h + 2 * j] = _mm_unpacklo_epi32(a[4 * h + 2 * j], a[4 * h + 2 * j + 1]);
      t[4 * h + 2 * j + 1] = _mm_unpackhi_epi32(a[4 * h + 2 * j], a[4 * h + 2 * j + 1]);
    }
  for (int h = 0; h < 4; h++) {
    a[4 * h] = _mm_unpacklo_epi64(t[4 * h], t[4 * h + 2]);
    a[4 * h + 1] = _mm_unpackhi_epi64(t[4 * h], t[4 * h + 2]);
    a[4 * h + 2] = _mm_unpacklo_epi64(t[4 * h + 1], t[4 * h + 3]);
    a[4 * h + 3] = _mm_unpackhi_epi64(t[4 * h + 1], t[4 * h + 3]);
  }
}

/* uint8 out: t8[c][QI_MR] holds channels j0 + c < j1 (c < 16) of rows [0, mr): transpose 16 x 16
 * byte tiles into the rows of out (ep->out at row row0, column j0) */
static void qi_sp_store_u8(const uint8_t *t8, size_t nv, size_t mr, const qi_qepi *ep, size_t row0,
                           const int32_t *rmap, size_t j0) {
  const __mmask16 mask = nv == 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nv) - 1);
  for (size_t r0 = 0; r0 < mr; r0 += 16) {
    __m128i v[16];
    for (size_t c = 0; c < 16; c++)
      v[c] = c < nv ? _mm_load_si128((const __m128i *)(t8 + c * QI_MR + r0)) : _mm_setzero_si128();
    qi_sp_tr16_u8(v);
    const size_t rows = mr - r0 < 16 ? mr - r0 : 16;
    if (rmap) { /* planes: virtual rows, each to its output row or dropped */
      for (size_t r = 0; r < rows; r++)
        if (rmap[r0 + r] >= 0)
          _mm_mask_storeu_epi8((uint8_t *)ep->out + (size_t)rmap[r0 + r] * ep->ldo + j0, mask, v[r]);
      continue;
    }
    uint8_t *o = (uint8_t *)ep->out + (row0 + r0) * ep->ldo + j0;
    if (nv == 16)
      for (size_t r = 0; r < rows; r++) _mm_storeu_si128((__m128i *)(o + r * ep->ldo), v[r]);
    else
      for (size_t r = 0; r < rows; r++) _mm_mask_storeu_epi8(o + r * ep->ldo, mask, v[r]);
  }
}

/* Channels [jc, je) over K segments [s0, s1); the records of channel j + QI_SP_PFREC < jpf are
 * prefetched while channel j runs (jpf 0: none) */
QI_INLINE void qi_sp_kblock(const int nz, const int pl, const uint8_t *at, const uint32_t *tab,
                            size_t jc, size_t je, size_t s0,
                            size_t s1, const uint32_t *ptr, size_t nseg, const qi_sb4w_rec *rec,
                            size_t nnzb, size_t kg, const int32_t *bias, int32_t *park,
                            uint8_t *t8, const float *scale, const qi_qe16 *E, size_t jpf) {
  for (size_t j = jc; j < je; j++) {
    size_t b, e;
    qi_sb4w_range(ptr, nseg, j, s0, s1, nnzb, &b, &e);
    if (j + QI_SP_PFREC < jpf) { /* the records of a channel ahead (see the driver) */
      size_t pb, pe;
      qi_sb4w_range(ptr, nseg, j + QI_SP_PFREC, s0, s1, nnzb, &pb, &pe);
      const char *q = (const char *)(rec + pb), *qe = (const char *)(rec + pe);
      for (int l = 0; l < QI_SP_PFLINES && q < qe; l++, q += 64) _mm_prefetch(q, _MM_HINT_T0);
    }
    if (s0 && j + QI_SP_PFPARK < je) {
      const char *pp = (const char *)(park + (j + QI_SP_PFPARK - jc) * QI_MR);
      for (int r = 0; r < nz; r++) _mm_prefetch(pp + 64 * r, _MM_HINT_T0);
    }
    qi_sp_chan(nz, pl, at, tab, rec + b, rec + e, kg, s0 == 0, bias[j], park + (j - jc) * QI_MR,
               t8 ? t8 + (j - jc) * QI_MR : NULL, t8 ? scale[j] : 0.0f, E);
  }
}

/* The epilogue of one 16 x 16 tile: v[c] = row c's 16 channels, rows c < rows */
QI_INLINE void qi_sp_epi_rows(const int code, const int u8, const int full, const __m512i *v,
                              size_t rows, __m512 scale, __mmask16 mask, const qi_qe16v vv,
                              char *o, size_t ldo_bytes, const int32_t *rm, char *o0) {
  for (size_t c = 0; c < rows; c++, o += ldo_bytes) {
    if (rm && rm[c] < 0) continue;
    qi_qe16_store_k(v[c], scale, vv, rm ? o0 + (size_t)rm[c] * ldo_bytes : o, mask, code, u8, full);
  }
}

static void qi_sp_epilogue(const int32_t *park, size_t jc, size_t je, size_t mr, size_t nz,
                           const qi_qepi *ep, const qi_qe16 *E, size_t row0, const int32_t *rmap) {
  const qi_qe16v vv = qi_qe16v_of(E);
  const size_t es = E->out_u8 ? 1 : 4, ldo_bytes = ep->ldo * es;
  for (size_t j16 = jc; j16 < je; j16 += 16) {
    const size_t nv = je - j16 < 16 ? je - j16 : 16;
    const __mmask16 mask = nv == 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nv) - 1);
    const __m512 scale = _mm512_maskz_loadu_ps(mask, ep->scale + j16);
    for (size_t rg = 0; rg < nz; rg++) {
      __m512i v[16];
      for (size_t i = 0; i < 16; i++)
        v[i] = i < nv ? _mm512_load_si512(park + (j16 - jc + i) * QI_MR + rg * 16) : _mm512_setzero_si512();
      qi_sp_tr16(v);
      const size_t rows = mr - rg * 16 < 16 ? mr - rg * 16 : 16;
      char *o = (char *)ep->out + ((row0 + rg * 16) * ep->ldo + j16) * es;
      char *o0 = (char *)ep->out + j16 * es;
      const int32_t *rm = rmap ? rmap + rg * 16 : NULL;
#define QI_EPI_CASE(CODE, U8, FULL) qi_sp_epi_rows(CODE, U8, FULL, v, rows, scale, mask, vv, o, ldo_bytes, rm, o0)
      QI_QE16_DISPATCH(E, nv == 16, QI_EPI_CASE)
#undef QI_EPI_CASE
    }
  }
}

/* Everything a row block's channel loops need besides the block itself */
typedef struct qi_sp_call {
  size_t n_begin, n_end, kg, nseg, seg, nnzb;
  const int32_t *bias;
  const uint32_t *ptr;
  const qi_sb4w_rec *rec;
  const qi_qepi *ep;
  const qi_qe16 *E;
  int32_t *park;
  uint8_t *tile8;
  int pf_all;
} qi_sp_call;

/* One row block of nz groups (mr rows) over the call's channels: from the re-packed activations at
 * (pl 0, rows row0 + i of ep->out) or from planes (pl 1: at is the block's first virtual row in
 * the planes, tab the K groups' offsets, rmap each virtual row's output row or -1; one K block:
 * the planes of a block fit in L1/L2 whatever K). */
static void qi_sp_rowblock(const qi_sp_call *c, size_t nz, const int pl, const uint8_t *at,
                           const uint32_t *tab, size_t mr, size_t row0, const int32_t *rmap,
                           int first_block) {
  const qi_qe16 *E = c->E;
  const size_t nsc = pl ? c->nseg : qi_sp_segs_per_block(QI_SP_L1, nz * 64, c->seg);
  const int pfrec = first_block || c->pf_all;
  for (size_t jc = c->n_begin; jc < c->n_end; jc += QI_NC) {
    const size_t je = c->n_end - jc < QI_NC ? c->n_end : jc + QI_NC;
    for (size_t s0 = 0; s0 < c->nseg; s0 += nsc) {
      const size_t s1 = s0 + nsc < c->nseg ? s0 + nsc : c->nseg;
      /* uint8 out: the last K block goes 16 channels at a time, each channel's epilogue run on
       * its accumulators (rows in lanes) and the bytes transposed per 16 x 16 tile; float out:
       * the parked sums are transposed as int32 (qi_sp_epilogue) */
      const int u8last = s1 == c->nseg && E->out_u8;
      const size_t step = u8last ? 16 : je - jc;
      for (size_t j0 = jc; j0 < je; j0 += step) {
        const size_t j1 = je - j0 < step ? je : j0 + step;
        uint8_t *t8 = u8last ? c->tile8 : NULL;
        int32_t *pk = c->park + (j0 - jc) * QI_MR;
#define QI_KB_CALL(Z, PL)                                                                         \
  qi_sp_kblock(Z, PL, at, tab, j0, j1, s0, s1, c->ptr, c->nseg, c->rec, c->nnzb, c->kg, c->bias,   \
               pk, t8, c->ep->scale, E, pfrec ? je : 0)
#define QI_KB_CASE(Z)                                                                             \
  case Z:                                                                                         \
    if (pl)                                                                                       \
      QI_KB_CALL(Z, 1);                                                                           \
    else                                                                                          \
      QI_KB_CALL(Z, 0);                                                                           \
    break;
        switch (nz) {
          QI_KB_CASE(8) QI_KB_CASE(7) QI_KB_CASE(6) QI_KB_CASE(5)
          QI_KB_CASE(4) QI_KB_CASE(3) QI_KB_CASE(2) QI_KB_CASE(1)
        }
#undef QI_KB_CASE
#undef QI_KB_CALL
        if (u8last) qi_sp_store_u8(c->tile8, j1 - j0, mr, c->ep, row0, rmap, j0);
      }
    }
    if (!E->out_u8) qi_sp_epilogue(c->park, jc, je, mr, nz, c->ep, E, row0, rmap);
  }
}

/* Planes of group g, image img: padded input rows [prow0, prow0 + pg->rows) (past the input:
 * zp_x), pl + cg * ps + (r * wp + px) * 4 = channels 4 cg .. 4 cg + 3 of padded pixel (r, px).
 * 16 pixels of 64 channels per 16 x 16 transpose; a group running past wp writes into the next
 * row (rewritten after) or the plane's 64 bytes of slack. */
static void qi_sp_build_planes(const qi_qconv_problem *p, size_t g, size_t img, size_t prow0,
                               const qi_sp_planes_geom *pg, uint8_t *pl) {
  const qi_conv2d_geom *ge = &p->geom;
  const size_t cin = p->cin, ct = p->cin_total, wp = pg->wp, ps = pg->ps;
  const __m512i zpv = _mm512_set1_epi8((char)p->zp_x);
  const uint8_t *xi = p->x + img * ge->in_h * ge->in_w * ct + g * cin;
  for (size_t r = 0; r < pg->rows; r++) {
    const ptrdiff_t iy = (ptrdiff_t)(prow0 + r) - (ptrdiff_t)ge->pad_top;
    const int row_in = iy >= 0 && iy < (ptrdiff_t)ge->in_h;
    for (size_t px = 0; px < wp; px += 16) {
      const uint8_t *src[16];
      for (size_t i = 0; i < 16; i++) {
        const ptrdiff_t ix = (ptrdiff_t)(px + i) - (ptrdiff_t)ge->pad_left;
        src[i] = row_in && px + i < wp && ix >= 0 && ix < (ptrdiff_t)ge->in_w
                     ? xi + ((size_t)iy * ge->in_w + (size_t)ix) * ct : NULL;
      }
      for (size_t c = 0; c < cin; c += 64) {
        const size_t left = cin - c;
        const __mmask64 km = left >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << left) - 1);
        __m512i v[16];
        for (size_t i = 0; i < 16; i++) v[i] = src[i] ? _mm512_maskz_loadu_epi8(km, src[i] + c) : zpv;
        qi_sp_tr16(v);
        const size_t ncg = left >= 64 ? 16 : left / 4;
        uint8_t *d = pl + (c / 4) * ps + (r * wp + px) * 4;
        for (size_t t = 0; t < ncg; t++) _mm512_storeu_si512(d + t * ps, v[t]);
      }
    }
  }
}

/* The call's rows [pa->r0, pa->r0 + m) of a stride-1 conv from planes: per image, the virtual
 * rows of its pixels in blocks of up to QI_MR (whole 16-row groups, balanced), each block's window
 * of planes built, then its channel loops. */
static void qi_sp_run_planes(const qi_sp_call *c, const qi_sp_patches *pa, size_t m,
                             const qi_sp_planes_geom *pg, uint8_t *pl) {
  const qi_qconv_problem *p = pa->conv;
  const qi_conv2d_geom *ge = &p->geom;
  const size_t wp = pg->wp, ow = ge->out_w, ohw = ge->out_h * ge->out_w, cg = p->cin / 4;
  uint32_t *tab = (uint32_t *)(pl + cg * pg->ps);
  int32_t *rmap = (int32_t *)((uint8_t *)tab + ((p->k / 4 * 4 + 63) & ~(size_t)63));
  for (size_t kb = 0; kb < p->k / 4; kb++) {
    const size_t t = kb / cg, ky = t / ge->k_w, kx = t - ky * ge->k_w;
    tab[kb] = (uint32_t)((kb - t * cg) * pg->ps + (ky * ge->dil_h * wp + kx * ge->dil_w) * 4);
  }
  const size_t r_end = pa->r0 + m;
  int first = 1;
  for (size_t r = pa->r0; r < r_end;) {
    const size_t img = r / ohw, a = r - img * ohw;
    const size_t b = r_end - img * ohw < ohw ? r_end - img * ohw : ohw; /* pixels [a, b) */
    const size_t qa = a / ow * wp + a % ow, qb = (b - 1) / ow * wp + (b - 1) % ow + 1;
    const size_t z = (qb - qa + 15) / 16, nblk = (z + QI_MR / 16 - 1) / (QI_MR / 16);
    for (size_t bi = 0, q0 = qa; bi < nblk; bi++) {
      const size_t zb = z * (bi + 1) / nblk - z * bi / nblk;
      const size_t mr = qb - q0 < zb * 16 ? qb - q0 : zb * 16;
      const size_t prow0 = q0 / wp;
      qi_sp_build_planes(p, pa->g, img, prow0, pg, pl);
      for (size_t i = 0; i < zb * 16; i++) {
        const size_t q = q0 + i, oy = q / wp, ox = q - oy * wp;
        rmap[i] = i < mr && ox < ow ? (int32_t)(img * ohw + oy * ow + ox - pa->r0) : -1;
      }
      qi_sp_rowblock(c, zb, 1, pl + (q0 - prow0 * wp) * 4, tab, mr, 0, rmap, first);
      first = 0;
      q0 += mr;
    }
    r = img * ohw + b;
  }
}

void qi_spmm_qu8_sb4w__avx512vnni(size_t m, size_t n_begin, size_t n_end, size_t k,
                                  const uint8_t *a, size_t lda, const qi_sp_patches *pa,
                                  const int32_t *bias, const uint32_t *ptr, size_t nseg, size_t seg,
                                  const qi_sb4w_rec *rec, size_t nnzb, const qi_qepi *ep,
                                  void *scratch) {
  const qi_qe16 E = qi_qe16_init(ep);
  const size_t kg = (k + 3) / 4, kg16 = (kg + 15) & ~(size_t)15;
  uint8_t *at = (uint8_t *)scratch;
  uint8_t tile8[16 * QI_MR] __attribute__((aligned(64))); /* 16 channels x 128 rows of bytes */
  /* Records are prefetched a few channels ahead while the first row block streams them (in a
   * real model they are cold: the other layers evicted them; a channel's range within a K block
   * is a few lines found through its pointers, a pattern the hardware prefetchers miss), and in
   * every row block when the call's records outgrow L2. Measured, 1 thread, caches flushed before
   * each call: ResNet-18's 7x7x512 convs 380-420 -> 290-310 us, its 14x14x256 ones 277 -> 237 us;
   * warm, the 196 x 1024 x 1024 GEMM at 80% sparsity pays about 2%. */
  size_t rb0, rb1; /* the records of channels [n_begin, n_end): entries n_begin * nseg and
                    * n_end * nseg of the pointer table (n_end <= n: within it) */
  qi_sb4w_range(ptr, nseg, n_begin, 0, (n_end - n_begin) * nseg, nnzb, &rb0, &rb1);
  qi_sp_call c = {n_begin, n_end, kg, nseg, seg, nnzb, bias, ptr, rec, ep, &E,
                  (int32_t *)(at + (size_t)QI_MR * kg16 * 8), tile8,
                  (rb1 - rb0) * sizeof(qi_sb4w_rec) > QI_SP_PF_L2};
  /* Planes or re-packed patches (stride-1 convs read in place). Re-packing the patches costs
   * kh kw bytes per input byte, the planes one, but their loads are unaligned (a tap's column
   * shift; about 1.5x the cost of an aligned one here) and the kw - 1 dropped columns are
   * computed: planes pay where few multiply-adds per K group share the re-packing (the call's
   * blocks fewer than 16 per K group, e.g. 64 channels at 20% density) and the dropped columns
   * are few (at most 1/16 of out_w). Measured, 1 thread, 3x3 pad 1, cin = cout, block density d,
   * re-packed / planes: 56x56x64 d 0.1 1.48x, d 0.2 1.26x, d 0.3 1.07x; 28x28x128 d 0.1 1.03x,
   * d 0.2 0.95x; 14x14x256 0.84-0.95x; 7x7x512 0.73x. */
  qi_sp_planes_geom pg;
  const qi_conv2d_geom *ge = a ? NULL : &pa->conv->geom;
  if (ge && rb1 - rb0 < 16 * kg && (ge->k_w - 1) * ge->dil_w * 16 <= ge->out_w &&
      qi_sp_planes_geometry(pa->conv, &pg)) {
    qi_sp_run_planes(&c, pa, m, &pg, at + ((qi_spmm_scratch_bytes(k) + 63) & ~(size_t)63));
    return;
  }
  /* row blocks of whole 16-row groups, balanced (196 rows: 112 and 84 rather than 128 and 68) */
  const size_t z = (m + 15) / 16, nblk = (z + QI_MR / 16 - 1) / (QI_MR / 16);
  for (size_t b = 0, i0 = 0; b < nblk; b++) {
    const size_t zb = z * (b + 1) / nblk - z * b / nblk;
    const size_t mr = m - i0 < zb * 16 ? m - i0 : zb * 16, nz = zb;
    if (a)
      qi_sp_pack(a + i0 * lda, lda, mr, k, nz, at);
    else
      qi_sp_pack_patches(pa, i0, mr, nz, at);
    qi_sp_rowblock(&c, nz, 0, at, NULL, mr, i0, NULL, i0 == 0);
    i0 += mr;
  }
}
