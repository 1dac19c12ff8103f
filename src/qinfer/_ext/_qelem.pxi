# Memory-bound uint8 / float32 kernels around the int8 convs, ``include``d into _kernels.pyx.
#
# Design: each function checks dtype, rank, contiguity and shapes (ValueError naming the
# argument), allocates its output, then splits the outer units (elements, pixels, channels,
# planes or rows) over threads with the GIL released. The results are bit-identical to the numpy
# definitions in qinfer.reference.qops for any thread count (every element is computed alone).

# (the qelementwise.h declarations and the stream slot are in _kernels.pxd: the int8 layer
# drivers' fused residual add uses them too)


cdef void _stream_chunk(qi_stream_u8_ptr fn, const qi_stream_args *a, size_t per_img, size_t xs,
                        size_t ys, size_t ms, size_t b, size_t e) noexcept nogil:
    """Units [b, e) of n images of ``per_img`` units each: one call per image touched, with x, x2,
    y and m moved to that image (byte strides xs, ys; m stride ms floats)."""
    cdef qi_stream_args la = a[0]
    cdef size_t u = b, i, stop
    while u < e:
        i = u // per_img
        stop = (i + 1) * per_img
        if stop > e:
            stop = e
        la.x = <const char *>a.x + i * xs
        la.x2 = (<const char *>a.x2 + i * xs) if a.x2 != NULL else NULL
        la.y = <char *>a.y + i * ys
        la.m = (a.m + i * ms) if a.m != NULL else NULL
        fn(&la, u - i * per_img, stop - i * per_img)
        u = stop


cdef void _stream(qi_stream_args *a, size_t n_img, size_t per_img, size_t xs, size_t ys, size_t ms,
                  int nt) noexcept nogil:
    cdef qi_stream_u8_ptr fn = qi_kernel_stream_u8()
    cdef size_t units = n_img * per_img
    cdef int t
    if nt <= 1:
        _stream_chunk(fn, a, per_img, xs, ys, ms, 0, units)
        return
    for t in prange(nt, num_threads=nt, schedule="static"):
        _stream_chunk(fn, a, per_img, xs, ys, ms, _chunk_start(units, nt, t),
                      _chunk_start(units, nt, t + 1))


cdef void *_e_ptr(object a) except NULL:
    """Data pointer of a C-contiguous array already checked by _e_check (the caller keeps
    a reference to it for the whole call, so the memory stays put after the view is released)."""
    cdef Py_buffer v
    PyObject_GetBuffer(a, &v, PyBUF_C_CONTIGUOUS)
    cdef void *p = v.buf
    PyBuffer_Release(&v)
    if p == NULL:
        raise ValueError("array without data")
    return p


# elements (or pixel-channels) a thread gets at least, for these streaming kernels
cdef size_t _E_MIN_PER_THREAD = 1 << 16


def _e_check(a, str name, dtype, ndim=None):
    flags = getattr(a, "flags", None)
    ok = (getattr(a, "dtype", None) == dtype and flags is not None and flags["C_CONTIGUOUS"]
          and (ndim is None or a.ndim == ndim))
    if not ok:
        rank = "" if ndim is None else f" of rank {ndim}"
        raise ValueError(f"{name} must be a C-contiguous {np.dtype(dtype).name} array{rank}, "
                         f"got {_describe(a)}")


def _e_scale(scale, str name="scale"):
    s = float(scale)
    if not (isfinite(s) and s > 0.0 and s < _Q_SCALE_MAX):
        raise ValueError(f"{name} must be a finite float > 0, got {scale!r}")
    return s


def _e_zp(zp, str name="zero_point"):
    z = int(zp)
    if z != zp or not 0 <= z <= 255:
        raise ValueError(f"{name} must be an integer in 0..255, got {zp!r}")
    return z


cdef inline int _e_threads(object num_threads, size_t units, size_t work) except -1:
    cdef int nt = _threads(num_threads)
    cdef size_t by_work = work // _E_MIN_PER_THREAD
    if by_work < <size_t>nt:
        nt = <int>by_work if by_work > 1 else 1
    if units < <size_t>nt:
        nt = <int>units if units > 1 else 1
    return nt


def quantize_u8(x, scale, zero_point, to_nhwc=False, num_threads=None, channel_scales=None):
    """uint8 q = clamp(rint(x / scale) + zero_point, 0, 255), NaN -> zero_point, of a float32
    C-contiguous array; ``to_nhwc``: x is [N, C, H, W] and q comes out [N, H, W, C], channel c
    divided by ``channel_scales[c]`` when given (float32 [C], each finite > 0)."""
    _e_check(x, "x", np.float32)
    cdef float s = _e_scale(scale)
    cdef float z = _e_zp(zero_point)
    cdef bint move = bool(to_nhwc)
    if move and x.ndim != 4:
        raise ValueError(f"to_nhwc needs a rank-4 NCHW x, got {_describe(x)}")
    cs = None
    if channel_scales is not None:
        if not move:
            raise ValueError("channel_scales needs to_nhwc (per-channel scales of an NCHW x)")
        cs = np.ascontiguousarray(channel_scales, np.float32)
        if cs.ndim != 1 or cs.shape[0] != x.shape[1]:
            raise ValueError(f"channel_scales must be float32 [{x.shape[1]}] (one per channel of x "
                             f"{_describe(x)}), got shape {tuple(cs.shape)}")
        if not (np.all(np.isfinite(cs)) and np.all(cs > 0) and np.all(cs < _Q_SCALE_MAX)):
            raise ValueError("channel_scales must be finite floats > 0")
    out = np.empty((x.shape[0], x.shape[2], x.shape[3], x.shape[1]) if move else x.shape, np.uint8)
    if x.size == 0:
        return out
    cdef qi_stream_args a
    memset(&a, 0, sizeof(a))
    a.x, a.y = _e_ptr(x), _e_ptr(out)
    a.scale, a.zp = s, z
    if cs is not None:
        a.m = <const float *>_e_ptr(cs)
    cdef size_t total = x.size, n_img = 1, C, HW
    cdef int nt
    if move:
        n_img, C = x.shape[0], x.shape[1]
        HW = total // (n_img * C)
        a.op, a.c, a.hw = QI_STREAM_QUANTIZE_CHW_HWC, C, HW
        nt = _e_threads(num_threads, n_img * HW, total)
        with nogil:
            _stream(&a, n_img, HW, C * HW * 4, C * HW, 0, nt)
    else:
        a.op = QI_STREAM_QUANTIZE
        nt = _e_threads(num_threads, total, total)
        with nogil:
            _stream(&a, 1, total, 0, 0, 0, nt)
    return out


def dequantize_u8(x, scale, zero_point, to_nchw=False, num_threads=None):
    """float32 scale * (x - zero_point) of a uint8 C-contiguous array; ``to_nchw``: x is
    [N, H, W, C] and the result comes out [N, C, H, W]."""
    _e_check(x, "x", np.uint8)
    cdef float s = float(scale)
    cdef float z = _e_zp(zero_point)
    cdef bint move = bool(to_nchw)
    if move and x.ndim != 4:
        raise ValueError(f"to_nchw needs a rank-4 NHWC x, got {_describe(x)}")
    out = np.empty((x.shape[0], x.shape[3], x.shape[1], x.shape[2]) if move else x.shape, np.float32)
    if x.size == 0:
        return out
    cdef qi_stream_args a
    memset(&a, 0, sizeof(a))
    a.x, a.y = _e_ptr(x), _e_ptr(out)
    a.scale, a.zp = s, z
    cdef size_t total = x.size, n_img = 1, C, HW
    cdef int nt
    if move:
        n_img, C = x.shape[0], x.shape[3]
        HW = total // (n_img * C)
        a.op, a.c, a.hw = QI_STREAM_DEQUANTIZE_HWC_CHW, C, HW
        nt = _e_threads(num_threads, n_img * C, total)
        with nogil:
            _stream(&a, n_img, C, C * HW, C * HW * 4, 0, nt)
    else:
        a.op = QI_STREAM_DEQUANTIZE
        nt = _e_threads(num_threads, total, total)
        with nogil:
            _stream(&a, 1, total, 0, 0, 0, nt)
    return out


def qadd_u8(a, b, a_scale, a_zp, b_scale, b_zp, y_inv_scale, zp_y, relu=False, num_threads=None):
    """uint8 requant((a - a_zp) * a_scale + (b - b_zp) * b_scale) (then ReLU if ``relu``) with
    1 / output scale ``y_inv_scale`` and zero point ``zp_y``; a and b of one shape."""
    _e_check(a, "a", np.uint8)
    _e_check(b, "b", np.uint8)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    cdef qi_qadd_params p
    p.a_scale = _e_scale(a_scale, "a_scale")
    p.b_scale = _e_scale(b_scale, "b_scale")
    p.y_inv_scale = _e_scale(y_inv_scale, "y_inv_scale")
    p.a_zp = _e_zp(a_zp, "a_zp")
    p.b_zp = _e_zp(b_zp, "b_zp")
    p.zp_y = _e_zp(zp_y, "zp_y")
    p.relu = 1 if relu else 0
    out = np.empty(a.shape, np.uint8)
    if a.size == 0:
        return out
    cdef qi_stream_args args
    memset(&args, 0, sizeof(args))
    args.op, args.qadd = QI_STREAM_QADD, p
    args.x, args.x2, args.y = _e_ptr(a), _e_ptr(b), _e_ptr(out)
    cdef size_t total = a.size
    cdef int nt = _e_threads(num_threads, total, total)
    with nogil:
        _stream(&args, 1, total, 0, 0, 0, nt)
    return out


def maxpool2d_u8_nhwc(x, kernel_shape, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
                      num_threads=None):
    """Max pooling of uint8 x[N, H, W, C] -> [N, OH, OW, C]; pads (top, left, bottom, right) only
    shape the output (taps outside the image are skipped: a ceil-mode extra row or column is an
    extra end pad)."""
    _e_check(x, "x", np.uint8, 4)
    cdef qi_conv2d_geom g
    _geom(&g, x.shape[1], x.shape[2], kernel_shape, strides, pads, dilations)
    cdef size_t N = x.shape[0], C = x.shape[3]
    out = np.empty((N, g.out_h, g.out_w, C), np.uint8)
    if out.size == 0:
        return out
    if x.size == 0:
        raise ValueError(f"x must not be empty when the output is not, got {_describe(x)}")
    cdef qi_stream_args a
    memset(&a, 0, sizeof(a))
    a.op, a.g, a.c = QI_STREAM_MAXPOOL_U8_HWC, &g, C
    a.x, a.y = _e_ptr(x), _e_ptr(out)
    cdef int nt = _e_threads(num_threads, N * g.out_h, out.size * g.k_h * g.k_w)
    with nogil:
        _stream(&a, N, g.out_h, g.in_h * g.in_w * C, g.out_h * g.out_w * C, 0, nt)
    return out


def maxpool2d_f32_nchw(x, kernel_shape, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
                       num_threads=None):
    """Max pooling of float32 x[N, C, H, W] -> [N, C, OH, OW] (NaN propagates; taps outside the
    image are skipped, a window with none gives -inf)."""
    _check_array(x, "x", 4)
    cdef qi_conv2d_geom g
    _geom(&g, x.shape[2], x.shape[3], kernel_shape, strides, pads, dilations)
    cdef size_t planes = x.shape[0] * x.shape[1]
    out = np.empty((x.shape[0], x.shape[1], g.out_h, g.out_w), np.float32)
    if out.size == 0:
        return out
    if x.size == 0:
        raise ValueError(f"x must not be empty when the output is not, got {_describe(x)}")
    cdef qi_stream_args a
    memset(&a, 0, sizeof(a))
    a.op, a.g = QI_STREAM_MAXPOOL_F32_CHW, &g
    a.x, a.y = _e_ptr(x), _e_ptr(out)
    cdef int nt = _e_threads(num_threads, planes, out.size * g.k_h * g.k_w)
    with nogil:
        _stream(&a, 1, planes, 0, 0, 0, nt)
    return out


def gap_u8_nhwc(x, scale, zero_point, num_threads=None):
    """Global average pool of uint8 x[N, H, W, C] to float32 [N, C, 1, 1]:
    (float32(sum) / float32(H*W) - zero_point) * scale."""
    _e_check(x, "x", np.uint8, 4)
    cdef float s = float(scale)
    cdef float z = _e_zp(zero_point)
    cdef size_t N = x.shape[0], C = x.shape[3], HW = x.shape[1] * x.shape[2]
    if HW == 0 or HW >= (1 << 24):
        raise ValueError(f"x must have 1 .. 2**24 - 1 pixels per image, got {_describe(x)}")
    out = np.empty((N, C, 1, 1), np.float32)
    if out.size == 0:
        return out
    cdef qi_stream_args a
    memset(&a, 0, sizeof(a))
    a.op, a.c, a.hw, a.scale, a.zp = QI_STREAM_GAP_U8_HWC, C, HW, s, z
    a.x, a.y = _e_ptr(x), _e_ptr(out)
    cdef int nt = _e_threads(num_threads, N * C, x.size)
    with nogil:
        _stream(&a, N, C, HW * C, C * 4, 0, nt)
    return out


def qmul_channel_u8_nhwc(x, m, x_zp, zp_y, num_threads=None):
    """Per-channel multiply of uint8 x[N, H, W, C] by float32 m[N, C] (the input scale, the
    channel factor and 1 / output scale folded): requant((x - x_zp) * m[n, c] + zp_y)."""
    _e_check(x, "x", np.uint8, 4)
    _e_check(m, "m", np.float32, 2)
    cdef size_t N = x.shape[0], C = x.shape[3], HW = x.shape[1] * x.shape[2]
    if tuple(m.shape) != (N, C):
        raise ValueError(f"m must have shape {(N, C)} (batch, channels), got {tuple(m.shape)}")
    cdef float zx = _e_zp(x_zp, "x_zp")
    cdef float zy = _e_zp(zp_y, "zp_y")
    out = np.empty(x.shape, np.uint8)
    if x.size == 0:
        return out
    cdef qi_stream_args a
    memset(&a, 0, sizeof(a))
    a.op, a.c, a.hw, a.zp, a.zp2 = QI_STREAM_QMUL_CHANNEL, C, HW, zx, zy
    a.x, a.y, a.m = _e_ptr(x), _e_ptr(out), <const float *>_e_ptr(m)
    cdef int nt = _e_threads(num_threads, N * HW, x.size)
    with nogil:
        _stream(&a, N, HW, HW * C, HW * C, C, nt)
    return out

