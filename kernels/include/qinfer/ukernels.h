/* qinfer kernels: one function type per slot, and a declaration of every kernel in ukernels.inc.
 *
 * Design: each slot has a function *type* (not a pointer type), so ukernels.inc expands into
 * `qi_dwconv2d_f32_fn qi_dwconv2d_f32__avx2;` and the compiler checks that every kernel file
 * defines its kernel with exactly the slot's signature (each kernel file includes this header).
 *
 * Common contract: kernels are single-threaded and work on the half-open range [begin, end) of
 * channels (or rows); pointers are to the whole tensor of one image (not to `begin`), so a driver
 * can hand disjoint ranges to threads. Arrays are C-contiguous float32. No kernel allocates,
 * prints, aborts or reads outside what its shapes say (scratch slack is part of the scratch).
 */
#ifndef QINFER_UKERNELS_H
#define QINFER_UKERNELS_H

#include "qinfer/common.h"
#include "qinfer/gemm.h" /* fp32 GEMM operand descriptors */
#include "qinfer/qint8.h" /* int8 GEMM / conv / depthwise: slot types, packed weights */
#include "qinfer/qint4.h" /* int4 GEMM / conv: slot type, packed weights */
#include "qinfer/qsparse.h" /* sparse int8 GEMM / conv: slot type, packed weights */
#include "qinfer/qelementwise.h" /* the streaming uint8 kernels around the int8 convs */

/* im2col: x[C, H, W] -> cols[C*KH*KW, OH*OW]; row (c*KH + ky)*KW + kx, column oy*OW + ox holds
 * x[c, oy*sh - pt + ky*dh, ox*sw - pl + kx*dw], or 0 in the padding. Writes rows of channels
 * [c_begin, c_end) entirely. */
typedef void qi_im2col_f32_fn(const qi_conv2d_geom *g, size_t c_begin, size_t c_end,
                              const float *x, float *cols);

/* col2im, the adjoint of im2col: x[c, iy, ix] += cols[row, col] for every (row, col) that im2col
 * would have read from (c, iy, ix). Accumulates into x (zero or bias-fill it first). Channels
 * [c_begin, c_end) only, so threads owning disjoint channel ranges never write the same element,
 * and each element is accumulated in a fixed (ky, kx, oy, ox) order: deterministic. */
typedef void qi_col2im_f32_fn(const qi_conv2d_geom *g, size_t c_begin, size_t c_end,
                              const float *cols, float *x);

/* col2im of a ConvTranspose with kernel == stride, no padding, no dilation (each input pixel owns
 * one k_h x k_w tile of the output, g->in_h = out_h * k_h, g->in_w = out_w * k_w): writes
 * x[c, oy*KH + ky, ox*KW + kx] = (0 + cols[(c*KH + ky)*KW + kx, oy*OW + ox]) + bias[c] (bias NULL:
 * 0) for channels [c_begin, c_end), every element once: the bytes of zero fill + col2im + bias. */
typedef void qi_col2im_tiles_f32_fn(const qi_conv2d_geom *g, size_t c_begin, size_t c_end,
                                    const float *cols, const float *bias, float *x);

/* Depthwise conv: y[c] = act(bias[c] + sum_{ky,kx} w[c, ky, kx] * x[c, oy*sh - pt + ky*dh,
 * ox*sw - pl + kx*dw]) for c in [c_begin, c_end). x[C, H, W], w[C, KH, KW], bias[C] or NULL,
 * y[C, OH, OW]. Sum order: bias first, then ky, kx ascending (SIMD variants use FMA, so they match
 * the scalar variant to float rounding, not bit for bit). `scratch` holds
 * qi_dwconv2d_f32_scratch_floats(g) floats, 64-byte aligned, private to the call. */
typedef void qi_dwconv2d_f32_fn(const qi_conv2d_geom *g, size_t c_begin, size_t c_end,
                                const float *x, const float *w, const float *bias, float *y,
                                const qi_act *act, float *scratch);

/* In-place epilogue on y[rows, cols]: y[r, j] = act(y[r, j] + b) for r in [r_begin, r_end), where
 * b = bias[r % bias_len] when per_row (the [C, HW] and [N*C, HW] layouts) and b = bias[j] otherwise
 * (the [N, C] layout, bias_len == cols). bias == NULL: activation only. */
typedef void qi_bias_act_f32_fn(size_t r_begin, size_t r_end, size_t cols, float *y,
                                const float *bias, size_t bias_len, int per_row, const qi_act *act);

/* ---- fp32 GEMM (operand descriptors, packing and blocking: qinfer/gemm.h) ----
 * C[m, j] = act(bias + sum_k A[m, k] * B[k, j]) for m in [m_begin, m_end), j in [n_begin, n_end)
 * of C[M, N] (row stride ldc); A [M, k] row-major (row stride lda) or, when a_packed, packed by
 * qi_gemm_f32_pack_a (then m_begin is a multiple of QI_GEMM_F32_PANEL); B as described by *b
 * (dense [k, N] or the im2col matrix of a conv input). bias: NULL, bias[M] (bias_axis 0, one per
 * row) or bias[N] (bias_axis 1, one per column). The sum runs over k in ascending order (FMA in
 * the SIMD variants), so an element's value does not depend on the range a call covers.
 * `scratch`: qi_gemm_f32_scratch_floats() floats, 64-byte aligned, private to the call. */
typedef void qi_gemm_f32_fn(size_t m_begin, size_t m_end, size_t n_begin, size_t n_end, size_t k,
                            const float *a, size_t lda, int a_packed, const qi_gemm_f32_b *b,
                            float *c, size_t ldc, const float *bias, int bias_axis,
                            const qi_act *act, float *scratch);
/* ---- end fp32 GEMM ---- */

#define QI_UKERNEL(isa, name, op, dtypes) qi_##op##_##dtypes##_fn name;
#include "../../ukernels.inc"

#endif /* QINFER_UKERNELS_H */
