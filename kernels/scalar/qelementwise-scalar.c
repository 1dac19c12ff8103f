/* Memory-bound kernels around the int8 convs (see qinfer/qelementwise.h). */
/* Without trapping math GCC if-converts the clamps and NaN test into vector selects; the
 * results are unchanged (no operation or rounding differs, only FP exception flags could). */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include <math.h>

#include "qinfer/qelementwise.h"
#include "qinfer/qint8.h"

/* the quantize rule for one value: x / scale, NaN -> 0, rint, + zp, saturate. Clamping t to
 * [-512, 767] first changes no result (rint(t) + zp is outside [0, 255] there either way) and
 * keeps qi_q_rint in its exact range. */
QI_INLINE uint8_t qe_quant(float x, float scale, float zp) {
  float t = x / scale;
  if (t != t) t = 0.0f;
  t = t < -512.0f ? -512.0f : t;
  t = t > 767.0f ? 767.0f : t;
  t = qi_q_rint(t) + zp;
  t = t < 0.0f ? 0.0f : t;
  t = t > 255.0f ? 255.0f : t;
  return (uint8_t)(int)t;
}

/* requantize a real value already multiplied by 1/scale and offset by zp: clip, then rint */
QI_INLINE uint8_t qe_sat(float t) {
  t = t > 0.0f ? t : 0.0f;
  t = t < 255.0f ? t : 255.0f;
  return (uint8_t)(int)qi_q_rint(t);
}

void qi_quantize_f32_u8(const float *x, uint8_t *y, size_t begin, size_t end, float scale, float zp) {
  for (size_t i = begin; i < end; i++) y[i] = qe_quant(x[i], scale, zp);
}

#define QE_TP 64 /* pixels per tile of the layout moves */
#define QE_TC 16 /* channels per tile */

void qi_quantize_chw_hwc_f32_u8(const float *x, uint8_t *y, size_t c, size_t hw, size_t p_begin,
                                size_t p_end, float scale, float zp) {
  for (size_t p0 = p_begin; p0 < p_end; p0 += QE_TP) {
    const size_t p1 = p0 + QE_TP < p_end ? p0 + QE_TP : p_end;
    for (size_t c0 = 0; c0 < c; c0 += QE_TC) {
      const size_t c1 = c0 + QE_TC < c ? c0 + QE_TC : c;
      for (size_t p = p0; p < p1; p++)
        for (size_t ch = c0; ch < c1; ch++) y[p * c + ch] = qe_quant(x[ch * hw + p], scale, zp);
    }
  }
}

void qi_dequantize_u8_f32(const uint8_t *x, float *y, size_t begin, size_t end, float scale, float zp) {
  for (size_t i = begin; i < end; i++) y[i] = ((float)x[i] - zp) * scale;
}

void qi_dequantize_hwc_chw_u8_f32(const uint8_t *x, float *y, size_t c, size_t hw, size_t c_begin,
                                  size_t c_end, float scale, float zp) {
  for (size_t c0 = c_begin; c0 < c_end; c0 += QE_TC) {
    const size_t c1 = c0 + QE_TC < c_end ? c0 + QE_TC : c_end;
    for (size_t p0 = 0; p0 < hw; p0 += QE_TP) {
      const size_t p1 = p0 + QE_TP < hw ? p0 + QE_TP : hw;
      for (size_t ch = c0; ch < c1; ch++)
        for (size_t p = p0; p < p1; p++) y[ch * hw + p] = ((float)x[p * c + ch] - zp) * scale;
    }
  }
}

void qi_qadd_u8(const uint8_t *a, const uint8_t *b, uint8_t *y, size_t begin, size_t end,
                const qi_qadd_params *q) {
  const float sa = q->a_scale, za = q->a_zp, sb = q->b_scale, zb = q->b_zp;
  const float inv = q->y_inv_scale, zy = q->zp_y;
  if (q->relu) {
    for (size_t i = begin; i < end; i++) {
      float v = ((float)a[i] - za) * sa + ((float)b[i] - zb) * sb;
      v = v < 0.0f ? 0.0f : v;
      y[i] = qe_sat(v * inv + zy);
    }
  } else {
    for (size_t i = begin; i < end; i++) {
      const float v = ((float)a[i] - za) * sa + ((float)b[i] - zb) * sb;
      y[i] = qe_sat(v * inv + zy);
    }
  }
}

/* first and one-past-last kernel tap k with 0 <= o*s - pad + k*d < n */
QI_INLINE void qe_taps(size_t o, size_t s, size_t pad, size_t d, size_t k, size_t n, size_t *k0,
                       size_t *k1) {
  const ptrdiff_t base = (ptrdiff_t)(o * s) - (ptrdiff_t)pad;
  size_t lo = 0, hi = k;
  while (lo < k && base + (ptrdiff_t)(lo * d) < 0) lo++;
  while (hi > lo && base + (ptrdiff_t)((hi - 1) * d) >= (ptrdiff_t)n) hi--;
  *k0 = lo;
  *k1 = hi;
}

void qi_maxpool2d_u8_hwc(const qi_conv2d_geom *g, size_t c, const uint8_t *x, uint8_t *y,
                         size_t oy_begin, size_t oy_end) {
  for (size_t oy = oy_begin; oy < oy_end; oy++) {
    size_t ky0, ky1;
    qe_taps(oy, g->stride_h, g->pad_top, g->dil_h, g->k_h, g->in_h, &ky0, &ky1);
    for (size_t ox = 0; ox < g->out_w; ox++) {
      size_t kx0, kx1;
      qe_taps(ox, g->stride_w, g->pad_left, g->dil_w, g->k_w, g->in_w, &kx0, &kx1);
      uint8_t *out = y + (oy * g->out_w + ox) * c;
      for (size_t ch = 0; ch < c; ch++) out[ch] = 0;
      for (size_t ky = ky0; ky < ky1; ky++) {
        const size_t iy = oy * g->stride_h + ky * g->dil_h - g->pad_top;
        for (size_t kx = kx0; kx < kx1; kx++) {
          const size_t ix = ox * g->stride_w + kx * g->dil_w - g->pad_left;
          const uint8_t *in = x + (iy * g->in_w + ix) * c;
          for (size_t ch = 0; ch < c; ch++) out[ch] = in[ch] > out[ch] ? in[ch] : out[ch];
        }
      }
    }
  }
}

void qi_maxpool2d_f32_chw(const qi_conv2d_geom *g, const float *x, float *y, size_t p_begin,
                          size_t p_end) {
  const size_t in_plane = g->in_h * g->in_w, out_plane = g->out_h * g->out_w;
  for (size_t pl = p_begin; pl < p_end; pl++) {
    const float *xp = x + pl * in_plane;
    float *yp = y + pl * out_plane;
    for (size_t oy = 0; oy < g->out_h; oy++) {
      size_t ky0, ky1;
      qe_taps(oy, g->stride_h, g->pad_top, g->dil_h, g->k_h, g->in_h, &ky0, &ky1);
      for (size_t ox = 0; ox < g->out_w; ox++) {
        size_t kx0, kx1;
        qe_taps(ox, g->stride_w, g->pad_left, g->dil_w, g->k_w, g->in_w, &kx0, &kx1);
        float m = -INFINITY;
        for (size_t ky = ky0; ky < ky1; ky++) {
          const float *row = xp + (oy * g->stride_h + ky * g->dil_h - g->pad_top) * g->in_w;
          for (size_t kx = kx0; kx < kx1; kx++) {
            const float v = row[ox * g->stride_w + kx * g->dil_w - g->pad_left];
            m = (v > m || v != v) ? v : m; /* np.maximum: once NaN, stays NaN */
          }
        }
        yp[oy * g->out_w + ox] = m;
      }
    }
  }
}

void qi_gap_u8_hwc_f32(const uint8_t *x, float *y, size_t hw, size_t c, size_t c_begin,
                       size_t c_end, float scale, float zp) {
  uint64_t acc[QE_TP];
  for (size_t c0 = c_begin; c0 < c_end; c0 += QE_TP) {
    const size_t c1 = c0 + QE_TP < c_end ? c0 + QE_TP : c_end;
    for (size_t ch = c0; ch < c1; ch++) acc[ch - c0] = 0;
    for (size_t p = 0; p < hw; p++) {
      const uint8_t *row = x + p * c;
      for (size_t ch = c0; ch < c1; ch++) acc[ch - c0] += row[ch];
    }
    for (size_t ch = c0; ch < c1; ch++) {
      const float mean = (float)acc[ch - c0] / (float)hw;
      y[ch] = (mean - zp) * scale;
    }
  }
}

void qi_qmul_channel_u8_hwc(const uint8_t *x, const float *m, uint8_t *y, size_t hw, size_t c,
                            size_t p_begin, size_t p_end, float zx, float zy) {
  (void)hw;
  for (size_t p = p_begin; p < p_end; p++) {
    const uint8_t *in = x + p * c;
    uint8_t *out = y + p * c;
    for (size_t ch = 0; ch < c; ch++) out[ch] = qe_sat(((float)in[ch] - zx) * m[ch] + zy);
  }
}
