/* qinfer kernels: scratch layout of the SIMD depthwise conv kernels (plain C, no intrinsics).
 *
 * Design: per channel, the zero-padded input is split into stride_h * stride_w "phase planes",
 * plane[ph][pw][r][c] = xpad[r*sh + ph][c*sw + pw]. Tap (ky, kx) of output (oy, ox) then reads
 * plane[(ky*dh) % sh][(kx*dw) % sw][oy + (ky*dh)/sh][ox + (kx*dw)/sw]: every stride and dilation
 * becomes a stride-1 problem with one constant offset per tap, contiguous along the output width,
 * and no bounds checks in the inner loop. Rows are wq floats apart, so an output vector may also
 * run across rows ("flat" mode, for narrow maps): the lanes that land in the wq - out_w garbage
 * columns are computed into out scratch and dropped when rows are compacted into y.
 * Each plane has one spare row plus QI_DW_SLACK floats, zeroed, so full-width vector reads of
 * garbage lanes stay inside the scratch. The scratch ends with the per-tap offsets.
 */
#ifndef QINFER_DWCONV_H
#define QINFER_DWCONV_H

#include <string.h>
#include "qinfer/common.h"

/* >= 4 * 16 - 1: the last 4-vector AVX-512 step of a row or map may read that far past it */
#define QI_DW_SLACK 64

typedef struct qi_dw_layout {
  size_t hq, wq;          /* rows / columns of one phase plane */
  size_t plane;           /* floats between phase planes (multiple of 16) */
  size_t nplanes;         /* stride_h * stride_w */
  size_t out_off;         /* out scratch starts here (floats) */
  size_t out_len;         /* floats of out scratch: out_h * wq rounded up, + slack */
  size_t taps_off;        /* k_h * k_w size_t tap offsets start here (floats; 64-byte aligned) */
  size_t total;           /* floats of scratch in all */
} qi_dw_layout;

static inline size_t qi_round_up16(size_t n) { return (n + 15) & ~(size_t)15; }

static inline qi_dw_layout qi_dw_layout_of(const qi_conv2d_geom *g) {
  qi_dw_layout L;
  size_t hp = g->in_h + g->pad_top + g->pad_bottom;
  size_t wp = g->in_w + g->pad_left + g->pad_right;
  L.hq = (hp + g->stride_h - 1) / g->stride_h;
  L.wq = (wp + g->stride_w - 1) / g->stride_w;
  L.plane = qi_round_up16((L.hq + 1) * L.wq + QI_DW_SLACK);
  L.nplanes = g->stride_h * g->stride_w;
  L.out_off = L.plane * L.nplanes;
  L.out_len = qi_round_up16(g->out_h * L.wq) + QI_DW_SLACK;
  L.taps_off = L.out_off + L.out_len;
  L.total = L.taps_off + qi_round_up16(g->k_h * g->k_w * (sizeof(size_t) / sizeof(float)) + 1);
  return L;
}

/* Floats of scratch one dwconv2d_f32 call needs (all variants; the scalar one needs none but
 * takes the same buffer). */
static inline size_t qi_dwconv2d_f32_scratch_floats(const qi_conv2d_geom *g) {
  return qi_dw_layout_of(g).total;
}

/* Zero the spare row + slack after each plane (once per call: the copy never writes there). */
static inline void qi_dw_zero_slack(const qi_dw_layout *L, float *scratch) {
  size_t used = L->hq * L->wq;
  for (size_t p = 0; p < L->nplanes; p++)
    memset(scratch + p * L->plane + used, 0, (L->plane - used) * sizeof(float));
}

/* Fill the phase planes of one channel xc[H, W] (zero padding included). */
static inline void qi_dw_fill_planes(const qi_conv2d_geom *g, const qi_dw_layout *L,
                                     const float *QI_RESTRICT xc, float *QI_RESTRICT scratch) {
  const size_t sh = g->stride_h, sw = g->stride_w, wq = L->wq;
  for (size_t ph = 0; ph < sh; ph++) {
    for (size_t pw = 0; pw < sw; pw++) {
      float *plane = scratch + (ph * sw + pw) * L->plane;
      /* columns c with 0 <= c*sw + pw - pad_left < in_w */
      size_t c0 = g->pad_left > pw ? (g->pad_left - pw + sw - 1) / sw : 0;
      size_t c1 = (g->in_w + g->pad_left > pw) ? (g->in_w + g->pad_left - pw + sw - 1) / sw : 0;
      if (c1 > wq) c1 = wq;
      if (c0 > c1) c0 = c1;
      for (size_t r = 0; r < L->hq; r++) {
        float *dst = plane + r * wq;
        size_t row = r * sh + ph; /* row of the padded input */
        if (row < g->pad_top || row - g->pad_top >= g->in_h || c0 == c1) {
          memset(dst, 0, wq * sizeof(float));
          continue;
        }
        const float *src = xc + (row - g->pad_top) * g->in_w;
        memset(dst, 0, c0 * sizeof(float));
        if (sw == 1) {
          memcpy(dst + c0, src + (c0 - g->pad_left), (c1 - c0) * sizeof(float));
        } else {
          const float *s = src + (c0 * sw + pw - g->pad_left);
          for (size_t c = c0; c < c1; c++, s += sw) dst[c] = *s;
        }
        memset(dst + c1, 0, (wq - c1) * sizeof(float));
      }
    }
  }
}

/* Offset (floats from scratch) of tap (ky, kx) for output (0, 0). */
static inline size_t qi_dw_tap_offset(const qi_conv2d_geom *g, const qi_dw_layout *L, size_t ky,
                                      size_t kx) {
  size_t dy = ky * g->dil_h, dx = kx * g->dil_w;
  size_t plane = (dy % g->stride_h) * g->stride_w + (dx % g->stride_w);
  return plane * L->plane + (dy / g->stride_h) * L->wq + dx / g->stride_w;
}

#endif /* QINFER_DWCONV_H */
