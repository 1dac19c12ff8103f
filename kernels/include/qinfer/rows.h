/* Row-wise float32 ops of float graphs (LayerNormalization, Softmax) and the elementwise Erf:
 * portable C (kernels/scalar/rows-f32-scalar.c), one function each, no ISA slot (they are a few
 * microseconds per call in a transformer; what they replace is numpy's per-call overhead).
 *
 * Contract as the slots': single-threaded, rows (elements) [begin, end) of C-contiguous float32
 * arrays given whole, y may not overlap x. Statistics are summed in double, so the results match
 * the float64 equations to float32 rounding (the numpy reference sums in float32: an ulp or two
 * apart on centred rows, more on rows far from zero, where the reference loses digits). */
#ifndef QINFER_ROWS_H
#define QINFER_ROWS_H

#include <stddef.h>

/* y[r] = (x[r] - mean) / sqrt(var + eps) * scale + bias over the cols of row r (biased variance);
 * scale[cols], bias[cols] or NULL */
void qi_layernorm_f32(size_t r_begin, size_t r_end, size_t cols, const float *x,
                      const float *scale, const float *bias, float eps, float *y);

/* y[r] = exp(x[r] - max) / sum exp(x[r] - max) over the cols of row r (a NaN or +inf in a row, or
 * a row of -inf, gives NaN as the equation does) */
void qi_softmax_f32(size_t r_begin, size_t r_end, size_t cols, const float *x, float *y);

/* y[i] = erf(x[i]) computed in double and rounded to float32 */
void qi_erf_f32(size_t begin, size_t end, const float *x, float *y);

#endif
