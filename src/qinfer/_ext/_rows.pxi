# Row-wise float32 ops of float graphs (LayerNormalization, Softmax) and Erf, ``include``d into
# _kernels.pyx.
#
# Design: each function takes C-contiguous float32 arrays (ValueError naming the argument
# otherwise), allocates or checks ``out``, and splits rows (elements) over threads with the GIL
# released, only when the work is large enough to pay for a thread (every row is computed alone:
# any thread count gives the same bits).

cdef extern from "qinfer/rows.h":
    void qi_layernorm_f32(size_t r_begin, size_t r_end, size_t cols, const float *x,
                          const float *scale, const float *bias, float eps, float *y) nogil
    void qi_softmax_f32(size_t r_begin, size_t r_end, size_t cols, const float *x, float *y) nogil
    void qi_erf_f32(size_t begin, size_t end, const float *x, float *y) nogil


cdef object _rows_out(object x, object out, str name):
    """A new float32 array shaped like x, or ``out`` checked against it (no overlap with x)."""
    if out is None:
        return np.empty(x.shape, np.float32)
    if (not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != x.shape
            or not out.flags.c_contiguous or not out.flags.writeable):
        raise ValueError(f"out must be a writable C-contiguous float32 array of shape {x.shape}, "
                         f"got {_describe(out)}")
    _no_overlap(out, "out", (name, x))
    return out


cdef int _rows_of(object x, size_t *rows, size_t *cols) except -1:
    """Check x (C-contiguous float32, rank >= 1) and count its rows of x.shape[-1] values."""
    _e_check(x, "x", np.float32)
    if x.ndim < 1:
        raise ValueError("x must have at least one axis (the normalized one)")
    cols[0] = <size_t>x.shape[x.ndim - 1]  # (not shape[-1]: this module compiles with wraparound=False)
    rows[0] = <size_t>x.size // cols[0] if cols[0] else 0
    return 0


def layernorm_f32(x, scale, bias=None, float eps=1e-5, out=None, num_threads=None):
    """LayerNormalization over the last axis of x (float32, C-contiguous, any rank >= 1): each row
    of x.shape[-1] values normalized by its mean and biased variance, times scale, plus bias
    (float32 [x.shape[-1]], or None). Returns out (new if None)."""
    cdef size_t rows, cols
    _rows_of(x, &rows, &cols)
    _check_array(scale, "scale", 1)
    if <size_t>scale.shape[0] != cols:
        raise ValueError(f"scale must have {cols} elements (x's last axis), got {scale.shape[0]}")
    if bias is not None:
        _check_array(bias, "bias", 1)
        if <size_t>bias.shape[0] != cols:
            raise ValueError(f"bias must have {cols} elements (x's last axis), got {bias.shape[0]}")
    if out is not None:
        _no_overlap(out, "out", ("scale", scale), ("bias", bias))
    out = _rows_out(x, out, "x")
    if rows == 0 or cols == 0:
        return out
    # raw data pointers of the checked arrays (typed memoryviews cost ~0.4 us each: most of a
    # small transformer's call)
    cdef const float *xp = <const float *>_e_ptr(x)
    cdef const float *sp = <const float *>_e_ptr(scale)
    cdef const float *bp = <const float *>_e_ptr(bias) if bias is not None else NULL
    cdef float *op = <float *>_e_ptr(out)
    cdef int nt = _cap_threads(_threads(num_threads), rows, rows * cols * 8)
    cdef int t
    cdef size_t b, e
    with nogil:
        if nt == 1:
            qi_layernorm_f32(0, rows, cols, xp, sp, bp, eps, op)
        else:
            for t in prange(nt, num_threads=nt, schedule="static"):
                b = _chunk_start(rows, nt, t)
                e = _chunk_start(rows, nt, t + 1)
                qi_layernorm_f32(b, e, cols, xp, sp, bp, eps, op)
    return out


def softmax_f32(x, out=None, num_threads=None):
    """Softmax over the last axis of x (float32, C-contiguous, any rank >= 1). Returns out."""
    cdef size_t rows, cols
    _rows_of(x, &rows, &cols)
    out = _rows_out(x, out, "x")
    if rows == 0 or cols == 0:
        return out
    cdef const float *xp = <const float *>_e_ptr(x)
    cdef float *op = <float *>_e_ptr(out)
    cdef int nt = _cap_threads(_threads(num_threads), rows, rows * cols * 16)
    cdef int t
    cdef size_t b, e
    with nogil:
        if nt == 1:
            qi_softmax_f32(0, rows, cols, xp, op)
        else:
            for t in prange(nt, num_threads=nt, schedule="static"):
                b = _chunk_start(rows, nt, t)
                e = _chunk_start(rows, nt, t + 1)
                qi_softmax_f32(b, e, cols, xp, op)
    return out


def erf_f32(x, out=None, num_threads=None):
    """erf of every element of x (float32, C-contiguous, any shape), computed in double and
    rounded to float32. Returns out."""
    _e_check(x, "x", np.float32)
    out = _rows_out(x, out, "x")
    cdef size_t n = x.size
    if n == 0:
        return out
    cdef const float *xp = <const float *>_e_ptr(x)
    cdef float *op = <float *>_e_ptr(out)
    cdef int nt = _cap_threads(_threads(num_threads), n, n * 16)
    cdef int t
    cdef size_t b, e
    with nogil:
        if nt == 1:
            qi_erf_f32(0, n, xp, op)
        else:
            for t in prange(nt, num_threads=nt, schedule="static"):
                b = _chunk_start(n, nt, t)
                e = _chunk_start(n, nt, t + 1)
                qi_erf_f32(b, e, xp, op)
    return out
