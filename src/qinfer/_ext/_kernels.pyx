# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
"""Thin Cython bridge to the C kernels of kernels/ (float32 conv helpers, CPU dispatch).

Design: every driver validates dtypes, ranks, shapes and geometry in Python (ValueError on any
mismatch, so no wrong shape ever reaches C), then releases the GIL for the whole call and splits
the work unit range (channels, rows) into ``num_threads`` contiguous chunks, one per OpenMP
thread (static schedule). A work unit is always computed by the same kernel code in the same
order, so 1 and N threads give bit-identical results. Arithmetic lives in C; the kernel variant is
read from the dispatch table at each call (see kernels/dispatch.c and qinfer.runtime.cpu).

Arrays: numpy (or any buffer) float32, C-contiguous; inputs may be read-only.
"""
from cython.parallel cimport prange
from libc.stdint cimport uintptr_t
from libc.stdlib cimport malloc, free

import operator

import numpy as np

ACT_NONE = QI_ACT_NONE
ACT_RELU = QI_ACT_RELU
ACT_CLIP = QI_ACT_CLIP
ACT_HARDSWISH = QI_ACT_HARDSWISH
ACT_SIGMOID = QI_ACT_SIGMOID
ACT_HARDSIGMOID = QI_ACT_HARDSIGMOID
#: tier number -> name; QINFER_ISA takes these names
TIERS = tuple(qi_tier_name(t).decode() for t in range(QI_TIER_COUNT))

# Threads get at least this much work (elements or multiply-adds) before another is added: a
# fork/join costs ~1-2 us. Does not change results (units are computed the same either way).
cdef size_t _MIN_WORK_PER_THREAD = 32768


# ---------------------------------------------------------------- CPU, dispatch, threads

def set_isa_cap(int tier):
    """Refill the dispatch table with the best kernels of tier <= ``tier`` (0 scalar, 1 avx2,
    2 avx512vnni; clamped to what this CPU and build run). Returns the tier now in effect.
    Not safe while kernels run in other threads (meant for import time and tests)."""
    if tier < 0:
        raise ValueError(f"ISA tier must be >= 0, got {tier}")
    return qi_dispatch_init(tier)


def isa_tier():
    """Tier of the dispatch table now in effect (0 scalar, 1 avx2, 2 avx512vnni)."""
    return qi_dispatch_tier()


def best_tier():
    """Highest tier this CPU + OS + build can run."""
    return qi_cpu_best_tier()


def tier_supported(int tier):
    return bool(qi_cpu_tier_supported(tier))


def cpu_features():
    """{feature: bool}, as detected once by cpuid + xgetbv (OS support of ymm/zmm included)."""
    cdef const qi_cpu_features *f = qi_cpu_get_features()
    return {
        "sse41": bool(f.sse41), "avx": bool(f.avx), "avx2": bool(f.avx2), "fma": bool(f.fma),
        "f16c": bool(f.f16c), "avx512f": bool(f.avx512f), "avx512bw": bool(f.avx512bw),
        "avx512vl": bool(f.avx512vl), "avx512dq": bool(f.avx512dq),
        "avx512vnni": bool(f.avx512vnni), "avx512bf16": bool(f.avx512bf16),
        "avxvnni": bool(f.avxvnni), "os_ymm": bool(f.os_ymm), "os_zmm": bool(f.os_zmm),
    }


def kernel_names():
    """{slot: name of the kernel the dispatch table holds}, e.g. {"dwconv2d_f32": "qi_dwconv2d_f32__avx2"}."""
    return {qi_slot_name(s).decode(): qi_dispatch_chosen(s).decode() for s in range(QI_SLOT_COUNT)}


def kernel_list():
    """Every kernel compiled into this build: list of (isa, name, slot), in ukernels.inc order."""
    cdef const qi_kernel_info *k
    out = []
    for i in range(qi_kernel_count()):
        k = qi_kernel_at(i)
        out.append((k.isa.decode(), k.name.decode(), k.slot_name.decode()))
    return out


def max_threads():
    """omp_get_max_threads() (honours OMP_NUM_THREADS); 1 without OpenMP."""
    return qi_max_threads()


def openmp_enabled():
    return bool(qi_openmp_enabled())


# ---------------------------------------------------------------- validation helpers

cdef int _threads(object num_threads) except -1:
    if num_threads is None:
        return max(1, qi_max_threads())
    n = int(num_threads)
    if n < 1:
        raise ValueError(f"num_threads must be >= 1 or None, got {num_threads!r}")
    return n


cdef inline int _cap_threads(int nt, size_t units, size_t work) noexcept nogil:
    cdef size_t by_work = work // _MIN_WORK_PER_THREAD
    if by_work < <size_t>nt:
        nt = <int>by_work if by_work > 1 else 1
    if units < <size_t>nt:
        nt = <int>units if units > 1 else 1
    return nt


def _describe(a):
    dt = getattr(a, "dtype", type(a).__name__)
    shp = getattr(a, "shape", "?")
    flags = getattr(a, "flags", None)
    contig = "" if flags is None else ("C-contiguous" if flags["C_CONTIGUOUS"] else "not C-contiguous")
    return f"{dt} array of shape {tuple(shp) if shp != '?' else shp} {contig}".rstrip()


def _check_array(a, str name, int ndim, bint writable=False):
    """Raise ValueError unless ``a`` is a float32 C-contiguous array of rank ``ndim``."""
    flags = getattr(a, "flags", None)
    ok = (getattr(a, "dtype", None) == np.float32 and getattr(a, "ndim", -1) == ndim
          and flags is not None and flags["C_CONTIGUOUS"] and (flags["WRITEABLE"] or not writable))
    if not ok:
        want = "writable " if writable else ""
        raise ValueError(f"{name} must be a {want}C-contiguous float32 array of rank {ndim}, "
                         f"got {_describe(a)}")


def _pair(v, str name, int lo):
    t = tuple(int(e) for e in v)
    if len(t) != 2 or min(t) < lo:
        raise ValueError(f"{name} must be 2 integers >= {lo}, got {v!r}")
    return t


def _pads4(v):
    t = tuple(int(e) for e in v)
    if len(t) != 4 or min(t) < 0:
        raise ValueError(f"pads must be 4 integers >= 0 (top, left, bottom, right), got {v!r}")
    return t


def _out_size(n, k, s, p0, p1, d, str axis):
    ext = d * (k - 1) + 1
    span = n + p0 + p1
    if span < ext:
        raise ValueError(f"dilated kernel extent {ext} along {axis} is larger than the padded "
                         f"input ({n} + pads {p0}, {p1} = {span})")
    return (span - ext) // s + 1


cdef int _geom(qi_conv2d_geom *g, Py_ssize_t h, Py_ssize_t w, object kernel_shape, object strides,
               object pads, object dilations) except -1:
    """The 2-D geometry of x [.., h, w] under these window attributes into *g. Sequences of ints
    within bounds take the C path (~0.1 us); anything else goes to _geom_checked, which converts,
    checks and raises the messages (its Python tuple work costs ~1.5 us a call)."""
    cdef long kh, kw, sh, sw, dh, dw, pt, pl, pb, pr
    try:
        if (len(kernel_shape) != 2 or len(strides) != 2 or len(dilations) != 2
                or len(pads) != 4):
            raise TypeError
        kh, kw = kernel_shape[0], kernel_shape[1]
        sh, sw = strides[0], strides[1]
        dh, dw = dilations[0], dilations[1]
        pt, pl, pb, pr = pads[0], pads[1], pads[2], pads[3]
    except (TypeError, ValueError, OverflowError):
        return _geom_checked(g, h, w, kernel_shape, strides, pads, dilations)
    if (h < 0 or w < 0 or kh < 1 or kw < 1 or sh < 1 or sw < 1 or dh < 1 or dw < 1 or pt < 0
            or pl < 0 or pb < 0 or pr < 0 or max(kh, kw, sh, sw, dh, dw, pt, pl, pb, pr) >= (1 << 30)):
        return _geom_checked(g, h, w, kernel_shape, strides, pads, dilations)
    cdef size_t eh = <size_t>dh * <size_t>(kh - 1) + 1, ew = <size_t>dw * <size_t>(kw - 1) + 1
    cdef size_t spanh = <size_t>h + pt + pb, spanw = <size_t>w + pl + pr
    if spanh < eh or spanw < ew or max(spanh, spanw, eh, ew, <size_t>(kh * kw)) >= (1 << 31):
        return _geom_checked(g, h, w, kernel_shape, strides, pads, dilations)
    g.in_h, g.in_w = h, w
    g.out_h, g.out_w = (spanh - eh) // sh + 1, (spanw - ew) // sw + 1
    g.k_h, g.k_w, g.stride_h, g.stride_w = kh, kw, sh, sw
    g.dil_h, g.dil_w = dh, dw
    g.pad_top, g.pad_left, g.pad_bottom, g.pad_right = pt, pl, pb, pr
    return 0


cdef int _geom_checked(qi_conv2d_geom *g, Py_ssize_t h, Py_ssize_t w, object kernel_shape,
                       object strides, object pads, object dilations) except -1:
    kh, kw = _pair(kernel_shape, "kernel_shape", 1)
    sh, sw = _pair(strides, "strides", 1)
    dh, dw = _pair(dilations, "dilations", 1)
    pt, pl, pb, pr = _pads4(pads)
    oh = _out_size(h, kh, sh, pt, pb, dh, "height")
    ow = _out_size(w, kw, sw, pl, pr, dw, "width")
    # keep every index computation far from size_t / ptrdiff_t overflow
    if max(h + pt + pb, w + pl + pr, oh, ow, kh * kw, dh * kh, dw * kw) >= (1 << 31):
        raise ValueError("convolution geometry too large (a size, pad or dilated kernel >= 2**31)")
    g.in_h, g.in_w, g.out_h, g.out_w = h, w, oh, ow
    g.k_h, g.k_w, g.stride_h, g.stride_w = kh, kw, sh, sw
    g.dil_h, g.dil_w = dh, dw
    g.pad_top, g.pad_left, g.pad_bottom, g.pad_right = pt, pl, pb, pr
    return 0


cdef int _act(qi_act *act, object activation, object alpha, object beta, object post_scale=None,
              object post_shift=None) except -1:
    """act from the activation code, its alpha / beta, and the optional affine after it (y * post_scale,
    then + post_shift: each applied only when given)"""
    act.post = 0
    act.post_a, act.post_b = 1.0, 0.0
    if post_scale is not None:
        act.post |= QI_ACT_POST_SCALE
        act.post_a = float(post_scale)
    if post_shift is not None:
        act.post |= QI_ACT_POST_SHIFT
        act.post_b = float(post_shift)
    code = int(activation)
    if code < 0 or code >= QI_ACT_COUNT:
        raise ValueError(f"activation code must be 0..{QI_ACT_COUNT - 1} (none, relu, clip, "
                         f"hardswish, sigmoid, hardsigmoid), got {activation!r}")
    act.code = code
    act.a = float(alpha)
    act.b = float(beta)
    if code == QI_ACT_CLIP and not act.a <= act.b:
        raise ValueError(f"clip activation needs alpha (min) <= beta (max), got {alpha!r}, {beta!r}")
    return 0


def _no_overlap(out, str oname, *others):
    """Raise ValueError if ``out`` shares memory with any named input (the kernels read inputs
    while writing outputs)."""
    for name, a in others:
        if a is not None and np.may_share_memory(out, a):
            raise ValueError(f"{oname} must not overlap {name}")


cdef inline size_t _chunk_start(size_t units, int nt, int t) noexcept nogil:
    """Start of thread t's contiguous chunk of [0, units) (balanced static split)."""
    return units * <size_t>t // <size_t>nt


# ---------------------------------------------------------------- im2col / col2im

def im2col_f32(x, kernel_shape, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), out=None,
               num_threads=None):
    """x[C, H, W] -> cols[C*KH*KW, OH*OW] (zero padding). ``pads`` = (top, left, bottom, right).
    ``out``: optional float32 C-contiguous [C*KH*KW, OH*OW], fully overwritten. Returns cols."""
    _check_array(x, "x", 3)
    cdef const float[:, :, ::1] xv = x
    cdef qi_conv2d_geom g
    _geom(&g, xv.shape[1], xv.shape[2], kernel_shape, strides, pads, dilations)
    cdef size_t C = xv.shape[0]
    shape = (C * g.k_h * g.k_w, g.out_h * g.out_w)
    given = out is not None   # (an array allocated here overlaps nothing)
    if not given:
        out = np.empty(shape, np.float32)
    _check_array(out, "out", 2, True)
    if tuple(out.shape) != shape:
        raise ValueError(f"out must have shape {shape} (C*KH*KW, OH*OW), got {tuple(out.shape)}")
    if given:
        _no_overlap(out, "out", ("x", x))
    if out.size == 0:
        return out
    cdef float[:, ::1] ov = out
    cdef const float *xp = &xv[0, 0, 0] if x.size else NULL
    cdef float *op = &ov[0, 0]
    cdef int nt = _cap_threads(_threads(num_threads), C, out.size)
    cdef qi_im2col_f32_ptr fn = qi_kernel_im2col_f32()
    cdef int t
    cdef size_t b, e
    with nogil:
        if nt == 1:
            fn(&g, 0, C, xp, op)
        else:
            for t in prange(nt, num_threads=nt, schedule="static"):
                b = _chunk_start(C, nt, t)
                e = _chunk_start(C, nt, t + 1)
                fn(&g, b, e, xp, op)
    return out


def col2im_f32(cols, out, kernel_shape, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
               num_threads=None):
    """Adjoint of im2col_f32, accumulating: out[C, H, W] += col2im(cols[C*KH*KW, OH*OW]), where
    OH, OW follow from H, W and the geometry as for a Conv. Zero (or bias-fill) ``out`` first.
    Each thread owns whole channels: deterministic for any thread count. Returns out."""
    _check_array(cols, "cols", 2)
    _check_array(out, "out", 3, True)
    cdef const float[:, ::1] cv = cols
    cdef float[:, :, ::1] ov = out
    cdef qi_conv2d_geom g
    _geom(&g, ov.shape[1], ov.shape[2], kernel_shape, strides, pads, dilations)
    cdef size_t C = ov.shape[0]
    shape = (C * g.k_h * g.k_w, g.out_h * g.out_w)
    if tuple(cols.shape) != shape:
        raise ValueError(f"cols must have shape {shape} (C*KH*KW, OH*OW) for out of shape "
                         f"{tuple(out.shape)}, got {tuple(cols.shape)}")
    _no_overlap(out, "out", ("cols", cols))
    if cols.size == 0 or out.size == 0:
        return out
    cdef const float *cp = &cv[0, 0]
    cdef float *op = &ov[0, 0, 0]
    cdef int nt = _cap_threads(_threads(num_threads), C, cols.size)
    cdef qi_col2im_f32_ptr fn = qi_kernel_col2im_f32()
    cdef int t
    cdef size_t b, e
    with nogil:
        if nt == 1:
            fn(&g, 0, C, cp, op)
        else:
            for t in prange(nt, num_threads=nt, schedule="static"):
                b = _chunk_start(C, nt, t)
                e = _chunk_start(C, nt, t + 1)
                fn(&g, b, e, cp, op)
    return out


def col2im_tiles_f32(cols, out, kernel_shape, bias=None, activation=0, alpha=0.0, beta=0.0,
                     num_threads=None):
    """col2im of a ConvTranspose whose kernel equals its stride (no padding, no dilation), with
    its bias and activation: out[C, OH*KH, OW*KW] = act(col2im(cols[C*KH*KW, OH*OW]) + bias[C])
    (bias None: none), every element written once (no zero fill needed), each channel's
    activation run while it is in cache: the bytes of ``col2im_f32`` into zeros, then
    ``bias_act_f32``. Returns out."""
    _check_array(cols, "cols", 2)
    _check_array(out, "out", 3, True)
    cdef const float[:, ::1] cv = cols
    cdef float[:, :, ::1] ov = out
    try:
        kh, kw = (operator.index(v) for v in kernel_shape)
    except (TypeError, ValueError):
        raise ValueError(f"kernel_shape must be two ints, got {kernel_shape!r}") from None
    if kh < 1 or kw < 1 or ov.shape[1] % kh or ov.shape[2] % kw:
        raise ValueError(f"out's height and width must be multiples of the kernel {kh}x{kw}, "
                         f"got {tuple(out.shape)}")
    cdef size_t C = ov.shape[0]
    shape = (C * kh * kw, (ov.shape[1] // kh) * (ov.shape[2] // kw))
    if tuple(cols.shape) != shape:
        raise ValueError(f"cols must have shape {shape} (C*KH*KW, OH*OW) for out of shape "
                         f"{tuple(out.shape)}, got {tuple(cols.shape)}")
    cdef const float[::1] bv
    cdef const float *bp = NULL
    if bias is not None:
        _check_array(bias, "bias", 1)
        if bias.shape[0] != C:
            raise ValueError(f"bias must have {C} elements (one per channel), got {bias.shape[0]}")
        _no_overlap(out, "out", ("bias", bias))
        bv = bias
        if C:
            bp = &bv[0]
    _no_overlap(out, "out", ("cols", cols))
    cdef qi_act act
    _act(&act, activation, alpha, beta)
    if out.size == 0:
        return out
    cdef qi_conv2d_geom g
    _geom(&g, ov.shape[1], ov.shape[2], (kh, kw), (kh, kw), (0, 0, 0, 0), (1, 1))
    cdef const float *cp = &cv[0, 0]
    cdef float *op = &ov[0, 0, 0]
    cdef int nt = _cap_threads(_threads(num_threads), C, out.size)
    cdef qi_col2im_tiles_f32_ptr fn = qi_kernel_col2im_tiles_f32()
    cdef qi_bias_act_f32_ptr fa = qi_kernel_bias_act_f32() if act.code != QI_ACT_NONE else NULL
    cdef size_t plane = ov.shape[1] * ov.shape[2]
    cdef int t
    with nogil:
        if nt == 1:
            _tiles_chunk(fn, fa, &g, 0, C, cp, bp, &act, op, plane)
        else:
            for t in prange(nt, num_threads=nt, schedule="static"):
                _tiles_chunk(fn, fa, &g, _chunk_start(C, nt, t), _chunk_start(C, nt, t + 1), cp, bp,
                             &act, op, plane)
    return out


cdef void _tiles_chunk(qi_col2im_tiles_f32_ptr fn, qi_bias_act_f32_ptr fa, const qi_conv2d_geom *g,
                       size_t b, size_t e, const float *cols, const float *bias, const qi_act *act,
                       float *out, size_t plane) noexcept nogil:
    """Channels [b, e) of col2im_tiles_f32, each one's activation run while it is in cache."""
    cdef size_t c
    for c in range(b, e):
        fn(g, c, c + 1, cols, bias, out)
        if fa != NULL:
            fa(c, c + 1, plane, out, NULL, 0, 1, act)


# ---------------------------------------------------------------- depthwise conv

cdef void _dw_chunk(qi_dwconv2d_f32_ptr fn, const qi_conv2d_geom *g, size_t C, size_t b, size_t e,
                    const float *x, const float *w, const float *bias, float *y, const qi_act *act,
                    float *scratch) noexcept nogil:
    """Planes [b, e) of N*C: split at image boundaries, one kernel call per image."""
    cdef size_t xs = g.in_h * g.in_w * C, ys = g.out_h * g.out_w * C
    cdef size_t n, c0, c1
    while b < e:
        n = b // C
        c0 = b - n * C
        c1 = C if e - n * C > C else e - n * C
        fn(g, c0, c1, x + n * xs, w, bias, y + n * ys, act, scratch)
        b = n * C + c1


def dwconv2d_f32(x, w, bias=None, out=None, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
                 activation=0, alpha=0.0, beta=0.0, num_threads=None, post_scale=None,
                 post_shift=None):
    """Depthwise conv: x[N, C, H, W] (or [C, H, W]), w[C, KH, KW] (or [C, 1, KH, KW]), bias[C] or
    None -> out[N, C, OH, OW] (rank of x), then the fused activation ``activation`` (ACT_* code;
    clip takes alpha=min, beta=max, hardsigmoid alpha, beta). ``pads`` = (top, left, bottom,
    right). ``post_scale`` / ``post_shift``: a scalar multiply, then add, after the activation (each
    only when given; rounded apart, as Mul and Add nodes). ``out``: optional float32 C-contiguous,
    must not overlap the inputs. Returns out."""
    if getattr(x, "ndim", None) == 3:
        x4 = x.reshape((1,) + tuple(x.shape))
        o4 = None if out is None else (out.reshape((1,) + tuple(out.shape))
                                       if getattr(out, "ndim", None) == 3 else out)
        if o4 is not None and getattr(o4, "ndim", None) != 4:
            raise ValueError(f"out must have the rank of x (3), got {_describe(out)}")
        r = dwconv2d_f32(x4, w, bias, o4, strides, pads, dilations, activation, alpha, beta,
                         num_threads, post_scale, post_shift)
        return r[0] if out is None else out
    _check_array(x, "x", 4)
    if getattr(w, "ndim", None) == 4 and w.shape[1] == 1:
        w = w.reshape((w.shape[0], w.shape[2], w.shape[3]))
    _check_array(w, "w", 3)
    cdef const float[:, :, :, ::1] xv = x
    cdef const float[:, :, ::1] wv = w
    cdef size_t N = xv.shape[0], C = xv.shape[1]
    if <size_t>wv.shape[0] != C:
        raise ValueError(f"w must have one filter per channel: w.shape[0] = {wv.shape[0]}, "
                         f"x has {C} channels")
    cdef qi_conv2d_geom g
    _geom(&g, xv.shape[2], xv.shape[3], (wv.shape[1], wv.shape[2]), strides, pads, dilations)
    cdef const float[::1] bv
    cdef const float *bp = NULL
    if bias is not None:
        _check_array(bias, "bias", 1)
        bv = bias
        if <size_t>bv.shape[0] != C:
            raise ValueError(f"bias must have {C} elements (one per channel), got {bv.shape[0]}")
        if C:
            bp = &bv[0]
    cdef qi_act act
    _act(&act, activation, alpha, beta, post_scale, post_shift)
    shape = (N, C, g.out_h, g.out_w)
    given = out is not None   # (an array allocated here overlaps nothing)
    if not given:
        out = np.empty(shape, np.float32)
    _check_array(out, "out", 4, True)
    if tuple(out.shape) != shape:
        raise ValueError(f"out must have shape {shape}, got {tuple(out.shape)}")
    if given:
        _no_overlap(out, "out", ("x", x), ("w", w), ("bias", bias))
    if out.size == 0:
        return out
    cdef float[:, :, :, ::1] ov = out
    cdef const float *xp = &xv[0, 0, 0, 0] if x.size else NULL
    cdef const float *wp = &wv[0, 0, 0]
    cdef float *op = &ov[0, 0, 0, 0]
    cdef size_t units = N * C
    cdef int nt = _cap_threads(_threads(num_threads), units, out.size * g.k_h * g.k_w)
    cdef size_t per = (qi_dwconv2d_f32_scratch_floats(&g) + 15) & ~(<size_t>15)
    cdef void *mem = malloc(per * nt * sizeof(float) + 64)
    if mem == NULL:
        raise MemoryError(f"dwconv2d_f32: cannot allocate {per * nt * 4} bytes of scratch")
    cdef float *scratch = <float *>((<uintptr_t>mem + 63) & ~(<uintptr_t>63))
    cdef qi_dwconv2d_f32_ptr fn = qi_kernel_dwconv2d_f32()
    cdef int t
    cdef size_t b, e
    try:
        with nogil:
            if nt == 1:
                _dw_chunk(fn, &g, C, 0, units, xp, wp, bp, op, &act, scratch)
            else:
                for t in prange(nt, num_threads=nt, schedule="static"):
                    b = _chunk_start(units, nt, t)
                    e = _chunk_start(units, nt, t + 1)
                    _dw_chunk(fn, &g, C, b, e, xp, wp, bp, op, &act, scratch + per * t)
    finally:
        free(mem)
    return out


# ---------------------------------------------------------------- bias + activation epilogue

def bias_act_f32(y, bias=None, axis=0, activation=0, alpha=0.0, beta=0.0, num_threads=None):
    """In place on y[R, K] (float32, C-contiguous, writable): add a bias, then the activation.
    axis=0: per-row bias, y[r, :] += bias[r % len(bias)] ([C, HW], or [N*C, HW] with R % len == 0);
    axis=1: per-column bias, len(bias) == K ([N, C] Gemm output). bias None: activation only.
    Returns y."""
    _check_array(y, "y", 2, True)
    cdef float[:, ::1] yv = y
    cdef size_t R = yv.shape[0], K = yv.shape[1]
    cdef int per_row
    if axis == 0:
        per_row = 1
    elif axis == 1:
        per_row = 0
    else:
        raise ValueError(f"axis must be 0 (bias per row) or 1 (bias per column), got {axis!r}")
    cdef const float[::1] bv
    cdef const float *bp = NULL
    cdef size_t blen = 0
    if bias is not None:
        _check_array(bias, "bias", 1)
        bv = bias
        blen = bv.shape[0]
        if per_row and (blen == 0 or R % blen != 0):
            raise ValueError(f"bias (axis=0) must have a length dividing the {R} rows, got {blen}")
        if not per_row and blen != K:
            raise ValueError(f"bias (axis=1) must have {K} elements (one per column), got {blen}")
        _no_overlap(y, "y", ("bias", bias))
        if blen:
            bp = &bv[0]
    cdef qi_act act
    _act(&act, activation, alpha, beta)
    if R == 0 or K == 0:
        return y
    cdef float *yp = &yv[0, 0]
    cdef int nt = _cap_threads(_threads(num_threads), R, R * K)
    cdef qi_bias_act_f32_ptr fn = qi_kernel_bias_act_f32()
    cdef int t
    cdef size_t b, e
    with nogil:
        if nt == 1:
            fn(0, R, K, yp, bp, blen, per_row, &act)
        else:
            for t in prange(nt, num_threads=nt, schedule="static"):
                b = _chunk_start(R, nt, t)
                e = _chunk_start(R, nt, t + 1)
                fn(b, e, K, yp, bp, blen, per_row, &act)
    return y


# ---------------------------------------------------------------- fp32 GEMM and conv (gemm_f32)
# Design: one OpenMP parallel region per call. Each thread owns one contiguous range of output
# rows (in units of the 8-row packed-A panel) or of output columns (in units of 32, the widest
# tile), chosen by a cost model in tiles (below); the C kernel computes a range on its own, with
# its own B-band scratch, and never splits K, so every output element is the same FMA chain for
# any thread count (bit-identical). conv2d_f32 runs the GEMM of each (image, group) in that same
# region: the im2col matrix is gathered band by band inside the kernel, never built whole.

cdef size_t _GEMM_MU = QI_GEMM_F32_PANEL  # row split unit
cdef size_t _GEMM_NU = 32                 # column split unit (the AVX-512 tile width)
# a thread gets at least this many multiply-adds (~5 us at 1 thread) before another is added
cdef size_t _GEMM_MIN_MACS_PER_THREAD = 1 << 18


cdef struct _GemmSplit:
    int nt          # threads
    int by_rows     # 1: thread t owns rows; 0: columns
    size_t units    # row units (of _GEMM_MU) or column units (of _GEMM_NU) to share out


cdef void _gemm_split(_GemmSplit *s, size_t M, size_t N, size_t K, size_t batches,
                      int nt) noexcept nogil:
    """Pick the thread count and the split axis. Cost of the busiest thread in 8x32 tiles (x10),
    plus 0.4 tile per 32-column sliver of B it gathers into its band (a row split makes every
    thread gather all of B; a column split only its share). Ties go to the column split."""
    cdef size_t mb = (M + _GEMM_MU - 1) // _GEMM_MU, nb = (N + _GEMM_NU - 1) // _GEMM_NU
    cdef size_t by_work = batches * M * N * (K + 1) // _GEMM_MIN_MACS_PER_THREAD
    cdef size_t cn, cm, most = mb if mb > nb else nb
    if by_work < <size_t>nt:
        nt = <int>by_work if by_work > 1 else 1
    if most < <size_t>nt:
        nt = <int>most if most > 1 else 1
    s.nt = nt
    s.by_rows = 0
    s.units = nb
    if nt == 1:
        return
    if nb < 4 * <size_t>nt and mb >= <size_t>nt:
        # few column tiles: a column split would make every thread stream all of A (big for
        # such layers: 512 x 4608 in ResNet's last stage) through DRAM; split the rows
        s.by_rows = 1
        s.units = mb
        return
    cn = 10 * ((nb + nt - 1) // nt) * mb + 4 * ((nb + nt - 1) // nt)
    cm = 10 * ((mb + nt - 1) // nt) * nb + 4 * nb
    if cm < cn:
        s.by_rows = 1
        s.units = mb


cdef inline void _gemm_part(qi_gemm_f32_ptr fn, const _GemmSplit *s, int t, size_t M, size_t N,
                            size_t K, const float *a, size_t lda, int apk, const qi_gemm_f32_b *bd,
                            float *c, size_t ldc, const float *bias, int axis, const qi_act *act,
                            float *scratch) noexcept nogil:
    """Thread t's part of one GEMM."""
    cdef size_t u0 = _chunk_start(s.units, s.nt, t), u1 = _chunk_start(s.units, s.nt, t + 1)
    cdef size_t e
    if u0 >= u1:
        return
    if s.by_rows:
        e = u1 * _GEMM_MU
        fn(u0 * _GEMM_MU, M if e > M else e, 0, N, K, a, lda, apk, bd, c, ldc, bias, axis, act,
           scratch)
    else:
        e = u1 * _GEMM_NU
        fn(0, M, u0 * _GEMM_NU, N if e > N else e, K, a, lda, apk, bd, c, ldc, bias, axis, act,
           scratch)


cdef size_t _scratch_bytes() noexcept nogil:
    """Bytes of B-band scratch one thread of gemm_f32 / conv2d_f32 needs."""
    return ((qi_gemm_f32_scratch_floats() + 15) & ~(<size_t>15)) * sizeof(float)


cdef int _gemm_task(qi_gemm_f32_ptr fn, const _GemmSplit *s, int t, size_t M, size_t N, size_t K,
                    const float *a, size_t lda, int apk, const qi_gemm_f32_b *bd, float *c,
                    size_t ldc, const float *bias, int axis, const qi_act *act) noexcept nogil:
    """Thread t's part of one GEMM on its own scratch (kept between calls as the int8 drivers
    keep theirs, qi_qint8_scratch, not a malloc per call); 1 if that cannot be allocated."""
    cdef float *scratch = <float *>qi_qint8_scratch(_scratch_bytes())
    if scratch == NULL:
        return 1
    _gemm_part(fn, s, t, M, N, K, a, lda, apk, bd, c, ldc, bias, axis, act, scratch)
    return 0


cdef const float *_data_ptr(object arr) except? NULL:
    cdef const float[::1] v = arr
    return &v[0]


cdef class PackedGemmA:
    """A constant left operand packed once (at plan time) for gemm_f32 / conv2d_f32: panels of 8
    rows, k-major inside a panel (kernels/include/qinfer/gemm.h), one block per group. The same
    layout serves every ISA tier. Make it with pack_gemm_a_f32 or pack_conv2d_weights_f32.

    Attributes: ``shape`` (of the array it was packed from), ``m`` (rows, all groups), ``k`` (the
    reduction length of one group), ``groups``, ``data`` (the float32 buffer) and, for depthwise
    conv weights (one input and one output channel per group), ``depthwise`` (then ``data`` holds
    the weights as [M, KH, KW], for dwconv2d_f32)."""
    cdef readonly object data
    cdef readonly tuple shape
    cdef readonly Py_ssize_t m, k, groups
    cdef readonly bint depthwise
    cdef size_t group_floats

    def __repr__(self):
        return (f"PackedGemmA(shape={self.shape}, m={self.m}, k={self.k}, groups={self.groups}"
                f"{', depthwise' if self.depthwise else ''})")

    @property
    def nbytes(self):
        return self.data.nbytes


cdef object _pack_groups(object a2, Py_ssize_t groups, tuple shape):
    """a2: float32 [M, K] rows contiguous -> PackedGemmA with `groups` blocks of M/groups rows."""
    cdef const float[:, :] av = a2
    cdef size_t M = av.shape[0], K = av.shape[1], mg = M // groups
    cdef size_t lda = av.strides[0] // sizeof(float) if M > 1 else K
    cdef size_t gf = qi_gemm_f32_packed_a_floats(mg, K)
    data = np.empty(max(gf * groups, 1), np.float32)
    cdef float[::1] dv = data
    cdef size_t gi
    if M and K:
        with nogil:
            for gi in range(<size_t>groups):
                qi_gemm_f32_pack_a(mg, K, &av[0, 0] + gi * mg * lda, lda, &dv[0] + gi * gf)
    p = PackedGemmA.__new__(PackedGemmA)
    (<PackedGemmA>p).data = data
    (<PackedGemmA>p).shape = shape
    (<PackedGemmA>p).m = M
    (<PackedGemmA>p).k = K
    (<PackedGemmA>p).groups = groups
    (<PackedGemmA>p).group_floats = gf
    (<PackedGemmA>p).depthwise = False
    return p


def _check_rows(a, str name, bint writable=False):
    """Raise ValueError unless ``a`` is a float32 rank-2 array whose rows are contiguous and do
    not overlap (row stride >= columns; a band a[:, c0:c1] of a bigger matrix qualifies)."""
    flags = getattr(a, "flags", None)
    ok = (getattr(a, "dtype", None) == np.float32 and getattr(a, "ndim", -1) == 2
          and flags is not None and (flags["WRITEABLE"] or not writable))
    if ok:
        r, c = a.shape
        s0, s1 = a.strides
        ok = (r == 0 or c == 0 or
              ((c <= 1 or s1 == 4) and (r <= 1 or (s0 % 4 == 0 and s0 >= 4 * c))))
    if not ok:
        want = "writable " if writable else ""
        raise ValueError(f"{name} must be a {want}float32 matrix with contiguous, non-overlapping "
                         f"rows (C-contiguous, or a column band of one), got {_describe(a)} with "
                         f"strides {getattr(a, 'strides', '?')}")


cdef inline size_t _ld(Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t stride0) noexcept:
    return <size_t>(stride0 // 4) if rows > 1 else <size_t>cols


def pack_gemm_a_f32(a):
    """Pack the constant left operand a[M, K] (float32, contiguous rows) once for gemm_f32 /
    gemm_f32_packed. Returns a PackedGemmA (about the size of a, rows rounded up to 8)."""
    _check_rows(a, "a")
    return _pack_groups(a, 1, tuple(a.shape))


def pack_conv2d_weights_f32(w, group=1):
    """Pack conv weights w[M, C/group, KH, KW] (float32, C-contiguous) once for conv2d_f32: each
    group's [M/group, C/group*KH*KW] matrix in gemm panels. Depthwise weights (C/group == 1 and
    M == group) are kept as [M, KH, KW] for dwconv2d_f32 instead."""
    _check_array(w, "w", 4)
    g = int(group)
    M, cg, kh, kw = (int(d) for d in w.shape)
    if g < 1 or M % g:
        raise ValueError(f"group must be >= 1 and divide the {M} output channels, got {group!r}")
    if cg == 1 and M == g:
        p = PackedGemmA.__new__(PackedGemmA)
        (<PackedGemmA>p).data = np.ascontiguousarray(w.reshape(M, kh, kw))
        (<PackedGemmA>p).shape = tuple(w.shape)
        (<PackedGemmA>p).m = M
        (<PackedGemmA>p).k = kh * kw
        (<PackedGemmA>p).groups = g
        (<PackedGemmA>p).depthwise = True
        return p
    return _pack_groups(w.reshape(M, cg * kh * kw), g, tuple(w.shape))


def _act_bias(bias, size_t n, str what):
    if bias is None:
        return
    _check_array(bias, "bias", 1)
    if <size_t>bias.shape[0] != n:
        raise ValueError(f"bias must have {n} elements ({what}), got {bias.shape[0]}")


def gemm_f32(a, b, out=None, bias=None, bias_axis=0, activation=0, alpha=0.0, beta=0.0,
             num_threads=None):
    """out[M, N] = act(a[M, K] @ b[K, N] + bias), float32, in one pass over out.

    a: float32 [M, K] with contiguous rows (row stride free), or a PackedGemmA from
    pack_gemm_a_f32. b: float32 [K, N] with contiguous rows. out: None (a new C-contiguous array)
    or a writable float32 [M, N] with contiguous rows, e.g. a column band y[:, c0:c1] of a bigger
    matrix; it must not overlap a, b or bias. bias: None, float32 [M] (bias_axis=0: one per row,
    conv layout) or [N] (bias_axis=1: one per column, dense layout). activation: ACT_* code (clip
    takes alpha=min, beta=max; hardsigmoid alpha, beta). Bit-identical for any num_threads.
    Returns out."""
    cdef int apk = 0
    cdef const float[:, :] av
    cdef const float[:, :] bv
    cdef float[:, :] ov
    cdef const float[::1] biv
    cdef const float *ap = NULL
    cdef const float *bp = NULL
    cdef const float *biasp = NULL
    cdef size_t M, K, N, lda = 0, ldb, ldc
    if isinstance(a, PackedGemmA):
        if (<PackedGemmA>a).groups != 1 or (<PackedGemmA>a).depthwise or len(a.shape) != 2:
            raise ValueError(f"a must be packed by pack_gemm_a_f32 (one [M, K] matrix), got {a!r}")
        apk = 1
        M, K = (<PackedGemmA>a).m, (<PackedGemmA>a).k
        a_data = (<PackedGemmA>a).data
    else:
        _check_rows(a, "a")
        M, K = a.shape
        a_data = a
    _check_rows(b, "b")
    if <size_t>b.shape[0] != K:
        raise ValueError(f"b must have {K} rows (the columns of a), got shape {tuple(b.shape)}")
    N = b.shape[1]
    cdef int axis = int(bias_axis) if bias_axis in (0, 1) else -1
    if axis < 0:
        raise ValueError(f"bias_axis must be 0 (bias per row) or 1 (bias per column), got {bias_axis!r}")
    _act_bias(bias, M if axis == 0 else N, "one per row of out" if axis == 0 else "one per column of out")
    cdef qi_act act
    _act(&act, activation, alpha, beta)
    given = out is not None   # (an array allocated here overlaps nothing)
    if not given:
        out = np.empty((M, N), np.float32)
    _check_rows(out, "out", True)
    if tuple(out.shape) != (M, N):
        raise ValueError(f"out must have shape {(M, N)}, got {tuple(out.shape)}")
    if given:
        _no_overlap(out, "out", ("a", a_data), ("b", b), ("bias", bias))
    if M == 0 or N == 0:
        return out
    ov = out
    ldc = _ld(M, N, ov.strides[0])
    if K:
        if apk:
            ap = _data_ptr(a_data)
        else:
            av = a
            ap = &av[0, 0]
            lda = _ld(M, K, av.strides[0])
        bv = b
        bp = &bv[0, 0]
    ldb = _ld(K, N, b.strides[0]) if K else N
    if bias is not None:
        biv = bias
        biasp = &biv[0]
    cdef qi_gemm_f32_b bd
    bd.data = bp
    bd.ldb = ldb
    bd.geom = NULL
    cdef _GemmSplit sp
    _gemm_split(&sp, M, N, K, 1, _threads(num_threads))
    cdef qi_gemm_f32_ptr fn = qi_kernel_gemm_f32()
    cdef float *op = &ov[0, 0]
    cdef int t, failed = 0
    with nogil:
        if sp.nt == 1:
            failed = _gemm_task(fn, &sp, 0, M, N, K, ap, lda, apk, &bd, op, ldc, biasp, axis, &act)
        else:
            for t in prange(sp.nt, num_threads=sp.nt, schedule="static"):
                failed += _gemm_task(fn, &sp, t, M, N, K, ap, lda, apk, &bd, op, ldc, biasp, axis,
                                     &act)
    if failed:
        raise MemoryError(f"gemm_f32: cannot allocate {_scratch_bytes()} bytes of scratch")
    return out


def gemm_f32_packed(a, b, out=None, bias=None, bias_axis=0, activation=0, alpha=0.0, beta=0.0,
                    num_threads=None):
    """gemm_f32 with a PackedGemmA (from pack_gemm_a_f32) as the left operand."""
    if not isinstance(a, PackedGemmA):
        raise ValueError(f"a must be a PackedGemmA (pack_gemm_a_f32(a)), got {_describe(a)}")
    return gemm_f32(a, b, out, bias, bias_axis, activation, alpha, beta, num_threads)


cdef int _conv_part(qi_gemm_f32_ptr fn, const _GemmSplit *s, int t, const qi_conv2d_geom *g,
                     size_t nimg, size_t C, size_t M, size_t groups, const float *x,
                     const float *w, size_t w_group, int apk, const float *bias, float *y,
                     bint pointwise, const qi_act *act) noexcept nogil:
    """Thread t's part of the GEMM of every (image, group) of a conv, on the thread's own scratch
    (as _gemm_task); 1 if that cannot be allocated."""
    cdef float *scratch = <float *>qi_qint8_scratch(_scratch_bytes())
    if scratch == NULL:
        return 1
    cdef size_t hw = g.in_h * g.in_w, P = g.out_h * g.out_w
    cdef size_t cg = C // groups, mg = M // groups, kg = cg * g.k_h * g.k_w
    cdef size_t lda = 0 if apk else kg
    cdef qi_gemm_f32_b bd
    cdef size_t n, gi
    bd.ldb = hw
    bd.geom = NULL if pointwise else g
    for n in range(nimg):
        for gi in range(groups):
            bd.data = x + (n * C + gi * cg) * hw if x != NULL else NULL
            _gemm_part(fn, s, t, mg, P, kg, w + gi * w_group, lda, apk, &bd,
                       y + (n * M + gi * mg) * P, P, bias + gi * mg if bias != NULL else NULL, 0,
                       act, scratch)
    return 0


def conv2d_f32(x, w, bias=None, out=None, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
               group=1, activation=0, alpha=0.0, beta=0.0, num_threads=None, post_scale=None,
               post_shift=None):
    """Conv (NCHW, ONNX semantics): x[N, C, H, W] (or [C, H, W]), w[M, C/group, KH, KW] (or a
    PackedGemmA from pack_conv2d_weights_f32), bias[M] or None -> out[N, M, OH, OW] (rank of x),
    then the fused activation (ACT_* code; clip alpha=min, beta=max; hardsigmoid alpha, beta) and
    the optional scalar ``post_scale`` / ``post_shift`` (as dwconv2d_f32). ``pads`` = (top, left,
    bottom, right). One GEMM per (image, group) on the gemm_f32 kernel: a
    1x1 stride-1 unpadded conv reads x in place; otherwise the im2col matrix is gathered band by
    band inside the kernel (never built whole). Depthwise convs (group == C == M) run on
    dwconv2d_f32. ``out``: optional float32 C-contiguous, must not overlap the inputs.
    Bit-identical for any num_threads. Returns out."""
    if getattr(x, "ndim", None) == 3:
        x4 = x.reshape((1,) + tuple(x.shape))
        o4 = None if out is None else (out.reshape((1,) + tuple(out.shape))
                                       if getattr(out, "ndim", None) == 3 else out)
        if o4 is not None and getattr(o4, "ndim", None) != 4:
            raise ValueError(f"out must have the rank of x (3), got {_describe(out)}")
        r = conv2d_f32(x4, w, bias, o4, strides, pads, dilations, group, activation, alpha, beta,
                       num_threads, post_scale, post_shift)
        return r[0] if out is None else out
    _check_array(x, "x", 4)
    cdef size_t N = x.shape[0], C = x.shape[1]
    cdef size_t G = int(group)
    cdef int apk = 0
    cdef size_t w_group
    if isinstance(w, PackedGemmA):
        pw = <PackedGemmA>w
        if len(pw.shape) != 4:
            raise ValueError(f"w must be packed by pack_conv2d_weights_f32, got {w!r}")
        if <size_t>pw.groups != G:
            raise ValueError(f"w was packed for group={pw.groups}, conv has group={group}")
        wshape = pw.shape
        w_data = pw.data
    else:
        _check_array(w, "w", 4)
        wshape = tuple(w.shape)
        w_data = w
    cdef size_t M = wshape[0], cg = wshape[1]
    if G < 1 or C % G or M % G:
        raise ValueError(f"group must be >= 1 and divide both the {C} input and the {M} output "
                         f"channels, got {group!r}")
    if cg != C // G:
        raise ValueError(f"w must have C/group = {C // G} input channels per filter "
                         f"(w.shape[1]), got w of shape {wshape} for x with {C} channels and "
                         f"group={G}")
    cdef qi_conv2d_geom g
    _geom(&g, x.shape[2], x.shape[3], (wshape[2], wshape[3]), strides, pads, dilations)
    if cg == 1 and M == G:  # depthwise: its own channel-vectorized kernel
        wd = w_data if isinstance(w, PackedGemmA) else w.reshape(M, wshape[2], wshape[3])
        return dwconv2d_f32(x, wd, bias, out, strides, pads, dilations, activation, alpha, beta,
                            num_threads, post_scale, post_shift)
    if isinstance(w, PackedGemmA):
        apk = 1
        w_group = (<PackedGemmA>w).group_floats
    else:
        w_group = (M // G) * cg * g.k_h * g.k_w
    _act_bias(bias, M, "one per output channel")
    cdef qi_act act
    _act(&act, activation, alpha, beta, post_scale, post_shift)
    shape = (N, M, g.out_h, g.out_w)
    given = out is not None   # (an array allocated here overlaps nothing)
    if not given:
        out = np.empty(shape, np.float32)
    _check_array(out, "out", 4, True)
    if tuple(out.shape) != shape:
        raise ValueError(f"out must have shape {shape}, got {tuple(out.shape)}")
    if given:
        _no_overlap(out, "out", ("x", x), ("w", w_data), ("bias", bias))
    if out.size == 0:
        return out
    cdef const float[:, :, :, ::1] xv
    cdef const float *xp = NULL
    if x.size:
        xv = x
        xp = &xv[0, 0, 0, 0]
    cdef const float *wp = _data_ptr(w_data.reshape(-1)) if w_data.size else NULL
    cdef const float[::1] biv
    cdef const float *biasp = NULL
    if bias is not None and M:
        biv = bias
        biasp = &biv[0]
    cdef float[:, :, :, ::1] ov = out
    cdef float *op = &ov[0, 0, 0, 0]
    cdef bint pointwise = (g.k_h == 1 and g.k_w == 1 and g.stride_h == 1 and g.stride_w == 1
                           and g.pad_top == 0 and g.pad_left == 0 and g.pad_bottom == 0
                           and g.pad_right == 0)
    cdef size_t kg = cg * g.k_h * g.k_w
    cdef _GemmSplit sp
    _gemm_split(&sp, M // G, g.out_h * g.out_w, kg, N * G, _threads(num_threads))
    cdef qi_gemm_f32_ptr fn = qi_kernel_gemm_f32()
    cdef int t, failed = 0
    with nogil:
        if sp.nt == 1:
            failed = _conv_part(fn, &sp, 0, &g, N, C, M, G, xp, wp, w_group, apk, biasp, op,
                                pointwise, &act)
        else:
            for t in prange(sp.nt, num_threads=sp.nt, schedule="static"):
                failed += _conv_part(fn, &sp, t, &g, N, C, M, G, xp, wp, w_group, apk, biasp, op,
                                     pointwise, &act)
    if failed:
        raise MemoryError(f"conv2d_f32: cannot allocate {_scratch_bytes()} bytes of scratch")
    return out

# ---------------------------------------------------------------- end fp32 GEMM and conv


include "_qkernels.pxi"  # int8 GEMM / conv / depthwise drivers
include "_q4kernels.pxi"  # int4 GEMM / conv drivers (share the int8 checks)
include "_qsparse.pxi"   # sparse int8 GEMM / conv drivers (share the int8 checks)
include "_qlayer.pxi"     # a layer's kernel call prepared once (the session's steps)
include "_qelem.pxi"     # quantize / dequantize / QAdd / pooling around the int8 convs
include "_rows.pxi"      # LayerNormalization / Softmax / Erf, float32
include "_runloop.pxi"   # the session's run loop

qi_dispatch_init(QI_TIER_COUNT - 1)
