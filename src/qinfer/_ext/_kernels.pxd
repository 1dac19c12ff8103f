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
        int post
        float post_a
        float post_b
    enum:
        QI_ACT_POST_SCALE
        QI_ACT_POST_SHIFT

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
ctypedef void (*qi_col2im_tiles_f32_ptr)(const qi_conv2d_geom *g, size_t c_begin, size_t c_end,
                                        const float *cols, const float *bias, float *x) noexcept nogil
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
    qi_col2im_tiles_f32_ptr qi_kernel_col2im_tiles_f32() nogil
    qi_dwconv2d_f32_ptr qi_kernel_dwconv2d_f32() nogil
    qi_bias_act_f32_ptr qi_kernel_bias_act_f32() nogil

cdef extern from "qinfer/dwconv.h":
    size_t qi_dwconv2d_f32_scratch_floats(const qi_conv2d_geom *g) nogil

# ---- fp32 GEMM with fused bias + activation (kernels/include/qinfer/gemm.h) ----
cdef extern from "qinfer/gemm.h":
    enum:
        QI_GEMM_F32_PANEL

    ctypedef struct qi_gemm_f32_b:
        const float *data
        size_t ldb
        const qi_conv2d_geom *geom

    size_t qi_gemm_f32_packed_a_floats(size_t m, size_t k) nogil
    void qi_gemm_f32_pack_a(size_t m, size_t k, const float *a, size_t lda, float *pa) nogil
    size_t qi_gemm_f32_scratch_floats() nogil

ctypedef void (*qi_gemm_f32_ptr)(size_t m_begin, size_t m_end, size_t n_begin, size_t n_end,
                                 size_t k, const float *a, size_t lda, int a_packed,
                                 const qi_gemm_f32_b *b, float *c, size_t ldc, const float *bias,
                                 int bias_axis, const qi_act *act, float *scratch) noexcept nogil

cdef extern from "qinfer/dispatch.h":
    qi_gemm_f32_ptr qi_kernel_gemm_f32() nogil
# ---- end fp32 GEMM ----

# ---- int8 GEMM / conv / depthwise (kernels/include/qinfer/qint8.h; drivers: _qkernels.pxi) ----
from libc.stdint cimport uint8_t, int8_t, int32_t, uint32_t

cdef extern from "qinfer/qint8.h":
    enum:
        QI_QACT_SILU
        QI_QACT_COUNT
        QI_QC8W_MAGIC_GEMM
        QI_QC8W_MAGIC_DW
        QI_QC8W_VERSION
        QI_QC8W_NR
        QI_QC8W_KR
        QI_QDW_CR
        QI_QGEMM_MC_MAX

    ctypedef struct qi_qc8w_header:
        uint32_t magic, version, groups, n, k, n_pad, k_pad, nr, kr
        int32_t zp_x
        uint32_t kh, kw, cin

    ctypedef struct qi_qepi:
        const float *scale
        qi_act act
        int out_u8
        float y_inv_scale
        float zp_y
        void *out
        size_t ldo

ctypedef void (*qi_gemm_qu8_qc8w_ptr)(size_t m, size_t n_begin, size_t n_end, size_t k,
                                      const uint8_t *a, size_t lda, const int32_t *bias,
                                      const int8_t *w, size_t k_pad, const qi_qepi *ep,
                                      int32_t *acc) noexcept nogil
ctypedef void (*qi_dwconv2d_qu8_qc8w_ptr)(const qi_conv2d_geom *g, size_t c, size_t c_begin,
                                          size_t c_end, size_t p_begin, size_t p_end, const uint8_t *x, const int32_t *bias,
                                          const int8_t *w, size_t c_pad, uint8_t zp_x,
                                          const qi_qepi *ep, uint8_t *scratch) noexcept nogil

cdef extern from "qinfer/qelementwise.h":
    ctypedef struct qi_qadd_params:
        float a_scale, a_zp, b_scale, b_zp, y_inv_scale, zp_y
        int relu

    enum:
        QI_STREAM_QUANTIZE
        QI_STREAM_QUANTIZE_CHW_HWC
        QI_STREAM_DEQUANTIZE
        QI_STREAM_DEQUANTIZE_HWC_CHW
        QI_STREAM_QADD
        QI_STREAM_MAXPOOL_U8_HWC
        QI_STREAM_MAXPOOL_F32_CHW
        QI_STREAM_GAP_U8_HWC
        QI_STREAM_QMUL_CHANNEL

    ctypedef struct qi_stream_args:
        int op
        const void *x
        const void *x2
        void *y
        const float *m
        const qi_conv2d_geom *g
        size_t c, hw
        float scale, zp, zp2
        qi_qadd_params qadd

ctypedef void (*qi_stream_u8_ptr)(const qi_stream_args *a, size_t begin, size_t end) noexcept nogil

cdef extern from "qinfer/dispatch.h":
    qi_stream_u8_ptr qi_kernel_stream_u8() nogil

cdef extern from "qinfer/qint8.h":
    ctypedef struct qi_qconv_problem:
        const uint8_t *x
        size_t batch, cin_total
        qi_conv2d_geom geom
        int direct
        size_t lda, m
        uint8_t zp_x
        size_t groups, n, k, k_pad, n_pad, cin
        const int32_t *bias
        const int8_t *w
        qi_qepi ep
        const uint8_t *res
        qi_stream_u8_ptr res_fn
        qi_qadd_params res_q

    size_t qi_qconv_scratch_bytes(const qi_qconv_problem *p, size_t rows) nogil
    void qi_qconv_run(const qi_qconv_problem *p, qi_gemm_qu8_qc8w_ptr fn, size_t m_begin,
                      size_t m_end, size_t p_begin, size_t p_end, void *scratch) nogil
    long long qi_qint8_vnni_peak(long long iters) nogil
    long long qi_qint8_vnni_stream(const int8_t *buf, size_t nbytes, long long passes, int nt) nogil
    size_t qi_qdw_scratch_bytes(const qi_conv2d_geom *g, size_t c_pad) nogil
    void *qi_qint8_scratch(size_t bytes) nogil

cdef extern from "qinfer/dispatch.h":
    qi_gemm_qu8_qc8w_ptr qi_kernel_gemm_qu8_qc8w() nogil
    qi_dwconv2d_qu8_qc8w_ptr qi_kernel_dwconv2d_qu8_qc8w() nogil
# ---- end int8 ----
