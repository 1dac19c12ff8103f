/* Bias + activation epilogue, float32, portable C (in place). */
#include "qinfer/ukernels.h"

void qi_bias_act_f32__scalar(size_t r_begin, size_t r_end, size_t cols, float *y,
                             const float *bias, size_t bias_len, int per_row, const qi_act *act) {
  for (size_t r = r_begin; r < r_end; r++) {
    float *yr = y + r * cols;
    if (bias && per_row) {
      const float b = bias[r % bias_len];
      for (size_t j = 0; j < cols; j++) yr[j] += b;
    } else if (bias) {
      for (size_t j = 0; j < cols; j++) yr[j] += bias[j];
    }
    if (qi_act_any(act))
      for (size_t j = 0; j < cols; j++) yr[j] = qi_act_scalar(yr[j], act);
  }
}
