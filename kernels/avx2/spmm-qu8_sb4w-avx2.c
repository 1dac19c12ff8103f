/* Sparse int8 GEMM block, AVX2 without VNNI: per non-zero 1x4 block, its 4 weights (widened to
 * int16) against the same 4 K values of 32 rows, vpmaddwd into 8 row accumulators.
 *
 * Design (qinfer/qsparse.h): no int16 saturation (vpmaddubsw would saturate u8*s8 pair sums above
 * 32767), so the activations of up to 32 rows are re-packed once per call K-group-major and
 * widened to int16, At[kb][R][4] (R = 8, 16, 24 or 32; zeros past k and past the last row): 4 rows
 * x 4 k are one ymm. Per block the 4 weights are sign-extended to int16 and broadcast to the four
 * qwords, and each vpmaddwd gives per row two exact int32 half sums (x0 w0 + x1 w1, x2 w2 + x3 w3)
 * in adjacent lanes, added into R/4 accumulators; one vphaddd + vpermq per 8 rows folds the halves
 * into row order. K in blocks of whole segments whose re-packed rows fit 16 KiB, channels in
 * blocks of 256 with their partial sums parked between K blocks (as the AVX-512 variant); the
 * epilogue gathers 8 channels of a row from the parked sums (qepi-avx2.h); conv patches (a == NULL)
 * are built per row block by the int8 driver's im2col in the scratch. Integer sums are exact:
 * the result equals the scalar and VNNI kernels' bit for bit. Record ranges and kb are clamped.
 */
#include <immintrin.h>
#include "qinfer/ukernels.h"
#include "qepi-avx2.h"

#define QI_MR2 32 /* rows per re-packed block (8 ymm accumulators) */
#define QI_NC QI_SPMM_NC
#define QI_SP_L1 16384

/* rows [0, mr) of A -> int16 At[kb][nz * 8][4], kb < kg (zeros past k and past mr) */
static void qi_sp2_pack(const uint8_t *a, size_t lda, size_t mr, size_t k, size_t nz, int16_t *at) {
  const size_t R = nz * 8, kg = (k + 3) / 4, kf = k / 4;
  for (size_t r = 0; r < R; r++) {
    int16_t *dst = at + r * 4;
    if (r >= mr) {
      for (size_t kb = 0; kb < kg; kb++) memset(dst + kb * R * 4, 0, 8);
      continue;
    }
    const uint8_t *src = a + r * lda;
    for (size_t kb = 0; kb < kf; kb++) {
      const __m128i v = _mm_cvtepu8_epi16(_mm_cvtsi32_si128(qi_q_load_i32(src + 4 * kb)));
      _mm_storel_epi64((__m128i *)(dst + kb * R * 4), v);
    }
    if (kg > kf) {
      const __m128i v = _mm_cvtepu8_epi16(_mm_cvtsi32_si128(qi_q_load_tail(src + 4 * kf, k - 4 * kf)));
      _mm_storel_epi64((__m128i *)(dst + kf * R * 4), v);
    }
  }
}

/* 8 int32 row sums -> (even, odd) half-sum layout [v0, 0, v1, 0 | ...] for rows 0-3 and 4-7 */
QI_INLINE void qi_sp2_split(const int32_t *src, __m256i *lo, __m256i *hi) {
  *lo = _mm256_cvtepu32_epi64(_mm_loadu_si128((const __m128i *)src));
  *hi = _mm256_cvtepu32_epi64(_mm_loadu_si128((const __m128i *)(src + 4)));
}

QI_INLINE void qi_sp2_chan(const int nz, const int16_t *at, const qi_sb4w_rec *p,
                           const qi_sb4w_rec *e, size_t kg, int first, int32_t bias, int32_t *park) {
  const size_t r4 = (size_t)nz * 32; /* int16 per K group */
  __m256i c[8];
  for (int q = 0; q < nz; q++) {
    if (first) {
      int32_t b8[8] = {bias, bias, bias, bias, bias, bias, bias, bias};
      qi_sp2_split(b8, &c[2 * q], &c[2 * q + 1]);
    } else {
      qi_sp2_split(park + 8 * q, &c[2 * q], &c[2 * q + 1]);
    }
  }
  for (; p < e; p++) {
    size_t kb = p->kb;
    kb = kb < kg ? kb : 0;
    const int16_t *ap = at + kb * r4;
    const __m256i w = _mm256_broadcastq_epi64(_mm_cvtepi8_epi16(_mm_cvtsi32_si128(p->w)));
    for (int q = 0; q < 2 * nz; q++)
      c[q] = _mm256_add_epi32(c[q], _mm256_madd_epi16(_mm256_load_si256((const __m256i *)(ap + 16 * q)), w));
  }
  for (int q = 0; q < nz; q++)
    _mm256_store_si256((__m256i *)(park + 8 * q),
                       _mm256_permute4x64_epi64(_mm256_hadd_epi32(c[2 * q], c[2 * q + 1]), 0xD8));
}

QI_INLINE void qi_sp2_kblock(const int nz, const int16_t *at, size_t jc, size_t je, size_t s0,
                             size_t s1, const uint32_t *ptr, size_t nseg, const qi_sb4w_rec *rec,
                             size_t nnzb, size_t kg, const int32_t *bias, int32_t *park) {
  for (size_t j = jc; j < je; j++) {
    size_t b, e;
    qi_sb4w_range(ptr, nseg, j, s0, s1, nnzb, &b, &e);
    qi_sp2_chan(nz, at, rec + b, rec + e, kg, s0 == 0, bias[j], park + (j - jc) * QI_SPMM_MR);
  }
}

void qi_spmm_qu8_sb4w__avx2(size_t m, size_t n_begin, size_t n_end, size_t k, const uint8_t *a,
                            size_t lda, const qi_sp_patches *pa, const int32_t *bias,
                            const uint32_t *ptr, size_t nseg, size_t seg, const qi_sb4w_rec *rec,
                            size_t nnzb, const qi_qepi *ep, void *scratch) {
  const qi_qe8 E = qi_qe8_init(ep);
  const size_t kg = (k + 3) / 4, kg16 = (kg + 15) & ~(size_t)15;
  int16_t *at = (int16_t *)scratch;
  int32_t *park = (int32_t *)((uint8_t *)scratch + (size_t)QI_SPMM_MR * kg16 * 8);
  const size_t es = ep->out_u8 ? 1 : 4;
  for (size_t i0 = 0; i0 < m; i0 += QI_MR2) {
    const size_t mr = m - i0 < QI_MR2 ? m - i0 : QI_MR2, nz = (mr + 7) / 8;
    if (a) {
      qi_sp2_pack(a + i0 * lda, lda, mr, k, nz, at);
    } else { /* conv patches of these rows, built past this variant's half of the At region */
      uint8_t *pbuf = (uint8_t *)scratch + (size_t)QI_SPMM_MR * kg16 * 4;
      qi_qconv_patches(pa->conv, pa->g, pa->r0 + i0, mr, pbuf);
      qi_sp2_pack(pbuf, qi_qconv_patch_stride(pa->conv->k_pad), mr, k, nz, at);
    }
    const size_t nsc = qi_sp_segs_per_block(QI_SP_L1, nz * 64, seg);
    for (size_t jc = n_begin; jc < n_end; jc += QI_NC) {
      const size_t je = n_end - jc < QI_NC ? n_end : jc + QI_NC;
      for (size_t s0 = 0; s0 < nseg; s0 += nsc) {
        const size_t s1 = s0 + nsc < nseg ? s0 + nsc : nseg;
        switch (nz) {
          case 4: qi_sp2_kblock(4, at, jc, je, s0, s1, ptr, nseg, rec, nnzb, kg, bias, park); break;
          case 3: qi_sp2_kblock(3, at, jc, je, s0, s1, ptr, nseg, rec, nnzb, kg, bias, park); break;
          case 2: qi_sp2_kblock(2, at, jc, je, s0, s1, ptr, nseg, rec, nnzb, kg, bias, park); break;
          default: qi_sp2_kblock(1, at, jc, je, s0, s1, ptr, nseg, rec, nnzb, kg, bias, park); break;
        }
      }
      for (size_t r = 0; r < mr; r++) {
        char *o = (char *)ep->out + ((i0 + r) * ep->ldo) * es;
        for (size_t j8 = jc; j8 < je; j8 += 8) {
          const size_t nv = je - j8 < 8 ? je - j8 : 8;
          int32_t t[8] = {0};
          for (size_t c = 0; c < nv; c++) t[c] = park[(j8 - jc + c) * QI_SPMM_MR + r];
          qi_qe8_store(_mm256_loadu_si256((const __m256i *)t), qi_qe8_load_scale(ep->scale + j8, nv),
                       &E, o + j8 * es, nv);
        }
      }
    }
  }
}
