/* Depthwise conv, float32, AVX2 + FMA (tier avx2), vectorized along the output width.
 *
 * Design: see qinfer/dwconv.h. Per channel the padded input is copied into stride_h*stride_w phase
 * planes (scratch), so every tap is one constant offset and every load is a contiguous unaligned
 * vector with no bounds check. Two modes per call: "row" (one output row at a time, masked tail,
 * stores straight into y) for wide maps, "flat" (vectors run across rows, garbage columns dropped
 * when compacting into y) for narrow maps such as 7x7, where row mode would waste most lanes.
 * Inner loop: 4 vectors per step so 4 independent FMA chains hide FMA latency;
 * 3x3 and 5x5 are instantiated with constant tap counts so weights stay in registers.
 * Sum order per output: bias, then taps in (ky, kx) order, as in the scalar variant.
 */
#include "qinfer/ukernels.h"
#include "qinfer/dwconv.h"
#include "act-avx2.h"

#define VL 8

/* lanes [lo, hi) of a vector (clipped to [0, VL)), as a maskload/maskstore mask */
QI_INLINE __m256i qi_lanes(ptrdiff_t lo, ptrdiff_t hi) {
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  if (lo < 0) lo = 0;
  if (hi > VL) hi = VL;
  if (hi <= lo) return _mm256_setzero_si256();
  return _mm256_and_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)hi), iota),
                          _mm256_cmpgt_epi32(iota, _mm256_set1_epi32((int)lo - 1)));
}

/* even / odd lanes of the 16 floats a:b, in order (stride-2 phase split) */
QI_INLINE __m256 qi_even(__m256 a, __m256 b) {
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88)), 0xD8));
}
QI_INLINE __m256 qi_odd(__m256 a, __m256 b) {
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xDD)), 0xD8));
}

/* Phase planes of one channel, vectorized for stride_w 1 and 2 (the generic C fill in dwconv.h
 * makes one libc call per row, which costs more than the convolution on 7x7 / 14x14 maps).
 * Padding comes from masked loads (masked-off lanes are neither read nor faulted), so one
 * masked load + store per vector covers left pad, data and right pad. For stride_w 2 each pair
 * of input vectors is split into its even and odd lanes (phase planes pw = 0 and 1). */
static void qi_fill_planes(const qi_conv2d_geom *g, const qi_dw_layout *L, const float *xc,
                           float *scratch) {
  const size_t sh = g->stride_h, sw = g->stride_w, wq = L->wq;
  const ptrdiff_t pl = (ptrdiff_t)g->pad_left, W = (ptrdiff_t)g->in_w;
  if (sw > 2) {
    qi_dw_fill_planes(g, L, xc, scratch);
    return;
  }
  for (size_t ph = 0; ph < sh; ph++) {
    for (size_t r = 0; r < L->hq; r++) {
      const size_t row = r * sh + ph;
      const int valid = row >= g->pad_top && row - g->pad_top < g->in_h;
      const float *src = valid ? xc + (row - g->pad_top) * g->in_w : xc;
      float *d0 = scratch + ph * sw * L->plane + r * wq; /* phase pw = 0 */
      float *d1 = d0 + L->plane;                          /* phase pw = 1 (stride_w 2) */
      /* Full-vector stores: the last one of a row runs up to VL - 1 floats into the next row
       * (rewritten next) or the plane's spare row, which only garbage lanes read. Masked stores
       * would be exact but are slower here, and they defeat store-to-load forwarding. */
      for (size_t c = 0; c < wq; c += VL) {
        if (!valid) {
          _mm256_storeu_ps(d0 + c, _mm256_setzero_ps());
          if (sw == 2) _mm256_storeu_ps(d1 + c, _mm256_setzero_ps());
        } else if (sw == 1) {
          const ptrdiff_t base = (ptrdiff_t)c - pl; /* input column of lane 0 */
          _mm256_storeu_ps(d0 + c, _mm256_maskload_ps(src + base, qi_lanes(-base, W - base)));
        } else {
          const ptrdiff_t base = 2 * (ptrdiff_t)c - pl;
          const __m256 a = _mm256_maskload_ps(src + base, qi_lanes(-base, W - base));
          const __m256 b = _mm256_maskload_ps(src + base + VL, qi_lanes(-base - VL, W - base - VL));
          _mm256_storeu_ps(d0 + c, qi_even(a, b));
          _mm256_storeu_ps(d1 + c, qi_odd(a, b));
        }
      }
    }
  }
}

/* dst[0, n) = src[0, n), vectors + masked tail (rows are short: no libc call) */
QI_INLINE void qi_copy_row(float *dst, const float *src, size_t n) {
  size_t j = 0;
  for (; j + VL <= n; j += VL) _mm256_storeu_ps(dst + j, _mm256_loadu_ps(src + j));
  if (j < n) {
    const __m256i m = qi_lanes(0, (ptrdiff_t)(n - j));
    _mm256_maskstore_ps(dst + j, m, _mm256_maskload_ps(src + j, m));
  }
}

/* out[0, left) of the 4 vectors r (left < 4 * VL), through a stack buffer: vmaskmovps stores
 * are microcoded and slow on AMD cores, and this runs once per row */
QI_INLINE void qi_store_tail(float *out, ptrdiff_t left, __m256 r0, __m256 r1, __m256 r2, __m256 r3) {
  float buf[4 * VL];
  _mm256_storeu_ps(buf, r0);
  _mm256_storeu_ps(buf + VL, r1);
  _mm256_storeu_ps(buf + 2 * VL, r2);
  _mm256_storeu_ps(buf + 3 * VL, r3);
  for (ptrdiff_t j = 0; j < left; j++) out[j] = buf[j];
}

/* out[q] = act(b + sum_t w[t] * base[off[t] + q]) for q in [0, n), 4 vectors per step (4
 * independent FMA chains). Loads are never masked: they stay inside the scratch planes (spare row +
 * slack, see dwconv.h), lanes past n are garbage and only the last step's stores are trimmed. */
QI_INLINE void qi_dw_core(const float *QI_RESTRICT base, const size_t *QI_RESTRICT off,
                          const float *QI_RESTRICT w, const size_t nt, size_t n,
                          float *QI_RESTRICT out, __m256 vb, const qi_act8 *act) {
  for (size_t q = 0; q < n; q += 4 * VL) {
    __m256 a0 = vb, a1 = vb, a2 = vb, a3 = vb;
    for (size_t t = 0; t < nt; t++) {
      const float *p = base + off[t] + q;
      const __m256 wv = _mm256_set1_ps(w[t]);
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(p), wv, a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(p + VL), wv, a1);
      a2 = _mm256_fmadd_ps(_mm256_loadu_ps(p + 2 * VL), wv, a2);
      a3 = _mm256_fmadd_ps(_mm256_loadu_ps(p + 3 * VL), wv, a3);
    }
    a0 = qi_act8_apply(a0, act);
    a1 = qi_act8_apply(a1, act);
    a2 = qi_act8_apply(a2, act);
    a3 = qi_act8_apply(a3, act);
    if (q + 4 * VL <= n) {
      _mm256_storeu_ps(out + q, a0);
      _mm256_storeu_ps(out + q + VL, a1);
      _mm256_storeu_ps(out + q + 2 * VL, a2);
      _mm256_storeu_ps(out + q + 3 * VL, a3);
    } else {
      qi_store_tail(out + q, (ptrdiff_t)(n - q), a0, a1, a2, a3);
    }
  }
}

static void qi_dw_core_k9(const float *base, const size_t *off, const float *w, size_t n,
                          float *out, __m256 vb, const qi_act8 *act) {
  qi_dw_core(base, off, w, 9, n, out, vb, act);
}

static void qi_dw_core_k25(const float *base, const size_t *off, const float *w, size_t n,
                           float *out, __m256 vb, const qi_act8 *act) {
  qi_dw_core(base, off, w, 25, n, out, vb, act);
}

static void qi_dw_core_any(const float *base, const size_t *off, const float *w, size_t nt,
                           size_t n, float *out, __m256 vb, const qi_act8 *act) {
  qi_dw_core(base, off, w, nt, n, out, vb, act);
}

static void qi_dw_run(const float *base, const size_t *off, const float *w, size_t nt, size_t n,
                      float *out, __m256 vb, const qi_act8 *act) {
  if (nt == 9)
    qi_dw_core_k9(base, off, w, n, out, vb, act);
  else if (nt == 25)
    qi_dw_core_k25(base, off, w, n, out, vb, act);
  else
    qi_dw_core_any(base, off, w, nt, n, out, vb, act);
}

void qi_dwconv2d_f32__avx2(const qi_conv2d_geom *g, size_t c_begin, size_t c_end,
                                 const float *x, const float *w, const float *bias, float *y,
                                 const qi_act *act, float *scratch) {
  const qi_dw_layout L = qi_dw_layout_of(g);
  const size_t kk = g->k_h * g->k_w, oh = g->out_h, ow = g->out_w, wq = L.wq;
  size_t *off = (size_t *)(scratch + L.taps_off);
  float *oscr = scratch + L.out_off;
  const qi_act8 va = qi_act8_init(act);
  /* flat mode when it needs fewer vector steps, counting the compaction copy as 1/4 vector per
   * vector, a row-mode row as whole 4-vector blocks + 1 vector of call overhead */
  const size_t row_vecs = oh * (((ow + VL - 1) / VL + 3) / 4 * 4 + 1);
  const size_t flat_vecs = (oh * wq + VL - 1) / VL + (oh * ow) / (4 * VL);
  const int flat = flat_vecs < row_vecs;
  /* flat mode computes whole 4-vector steps: out scratch has >= 4 * VL - 1 floats of slack */
  const size_t flat_n = (oh * wq + 4 * VL - 1) / (4 * VL) * (4 * VL);
  if (c_begin >= c_end) return;
  for (size_t ky = 0; ky < g->k_h; ky++)
    for (size_t kx = 0; kx < g->k_w; kx++) off[ky * g->k_w + kx] = qi_dw_tap_offset(g, &L, ky, kx);
  qi_dw_zero_slack(&L, scratch);
  for (size_t c = c_begin; c < c_end; c++) {
    const float *wc = w + c * kk;
    float *yc = y + c * oh * ow;
    const __m256 vb = _mm256_set1_ps(bias ? bias[c] : 0.0f);
    qi_fill_planes(g, &L, x + c * g->in_h * g->in_w, scratch);
    if (flat) {
      qi_dw_run(scratch, off, wc, kk, flat_n, oscr, vb, &va);
      for (size_t oy = 0; oy < oh; oy++) qi_copy_row(yc + oy * ow, oscr + oy * wq, ow);
    } else {
      for (size_t oy = 0; oy < oh; oy++)
        qi_dw_run(scratch + oy * wq, off, wc, kk, ow, yc + oy * ow, vb, &va);
    }
  }
}
