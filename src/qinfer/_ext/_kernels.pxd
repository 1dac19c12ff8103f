# cython: language_level=3
"""C declarations of kernels/include/qinfer/*.h for the Cython drivers (no Python objects here).

Kept in a .pxd so a later driver in this same extension (``include``d into _kernels.pyx) can use
them; other extension modules must not link the kernel objects again (they would get a second
dispatch table), they call through this module.
"""

cdef extern from "qinfer/common.h":
    ctypedef struct qi_act:
        int code
        float a
        float b

    ctypedef struct qi_conv2d_geom:
        size_t in_h, in_w
        size_t out_h, out_w
        size_t k_h, k_w
        size_t stride_h, stride_w
        size_t dil_h, dil_w
        size_t pad_top, pad_left, pad_bottom, pad_right

    enum:
        QI_ACT_NONE
        QI_ACT_RELU
        QI_ACT_CLIP
        QI_ACT_HARDSWISH
        QI_ACT_SIGMOID
        QI_ACT_HARDSIGMOID
        QI_ACT_COUNT

cdef extern from "qinfer/cpu.h":
    ctypedef struct qi_cpu_features:
        int sse41, avx, avx2, fma, f16c
        int avx512f, avx512bw, avx512vl, avx512dq, avx512vnni, avx512bf16
        int avxvnni
        int os_ymm, os_zmm

    enum:
        QI_TIER_SCALAR
        QI_TIER_AVX2
        QI_TIER_AVX512VNNI
        QI_TIER_COUNT

    const qi_cpu_features *qi_cpu_get_features() nogil
    int qi_cpu_best_tier() nogil
    int qi_cpu_tier_supported(int tier) nogil
    const char *qi_tier_name(int tier) nogil
    int qi_openmp_enabled() nogil
    int qi_max_threads() nogil

# Pointer types of the slots (must match the qi_<slot>_fn types of kernels/include/qinfer/ukernels.h).
ctypedef void (*qi_im2col_f32_ptr)(const qi_conv2d_geom *g, size_t c_begin, size_t c_end,
                                   const float *x, float *cols) noexcept nogil
ctypedef void (*qi_col2im_f32_ptr)(const qi_conv2d_geom *g, size_t c_begin, size_t c_end,
                                   const float *cols, float *x) noexcept nogil
ctypedef void (*qi_dwconv2d_f32_ptr)(const qi_conv2d_geom *g, size_t c_begin, size_t c_end,
                                     const float *x, const float *w, const float *bias, float *y,
                                     const qi_act *act, float *scratch) noexcept nogil
ctypedef void (*qi_bias_act_f32_ptr)(size_t r_begin, size_t r_end, size_t cols, float *y,
                                     const float *bias, size_t bias_len, int per_row,
                                     const qi_act *act) noexcept nogil

cdef extern from "qinfer/dispatch.h":
    ctypedef struct qi_kernel_info:
        int tier
        int slot
        const char *isa
        const char *name
        const char *slot_name

    enum:
        QI_SLOT_COUNT

    int qi_dispatch_init(int cap) nogil
    int qi_dispatch_tier() nogil
    size_t qi_kernel_count() nogil
    const qi_kernel_info *qi_kernel_at(size_t i) nogil
    const char *qi_slot_name(int slot) nogil
    const char *qi_dispatch_chosen(int slot) nogil

    qi_im2col_f32_ptr qi_kernel_im2col_f32() nogil
    qi_col2im_f32_ptr qi_kernel_col2im_f32() nogil
    qi_dwconv2d_f32_ptr qi_kernel_dwconv2d_f32() nogil
    qi_bias_act_f32_ptr qi_kernel_bias_act_f32() nogil

cdef extern from "qinfer/dwconv.h":
    size_t qi_dwconv2d_f32_scratch_floats(const qi_conv2d_geom *g) nogil
