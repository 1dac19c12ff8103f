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


cdef int _act(qi_act *act, object activation, object alpha, object beta) except -1:
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
    if out is None:
        out = np.empty(shape, np.float32)
    _check_array(out, "out", 2, True)
    if tuple(out.shape) != shape:
        raise ValueError(f"out must have shape {shape} (C*KH*KW, OH*OW), got {tuple(out.shape)}")
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
                 activation=0, alpha=0.0, beta=0.0, num_threads=None):
    """Depthwise conv: x[N, C, H, W] (or [C, H, W]), w[C, KH, KW] (or [C, 1, KH, KW]), bias[C] or
    None -> out[N, C, OH, OW] (rank of x), then the fused activation ``activation`` (ACT_* code;
    clip takes alpha=min, beta=max, hardsigmoid alpha, beta). ``pads`` = (top, left, bottom,
    right). ``out``: optional float32 C-contiguous, must not overlap the inputs. Returns out."""
    if getattr(x, "ndim", None) == 3:
        x4 = x.reshape((1,) + tuple(x.shape))
        o4 = None if out is None else (out.reshape((1,) + tuple(out.shape))
                                       if getattr(out, "ndim", None) == 3 else out)
        if o4 is not None and getattr(o4, "ndim", None) != 4:
            raise ValueError(f"out must have the rank of x (3), got {_describe(out)}")
        r = dwconv2d_f32(x4, w, bias, o4, strides, pads, dilations, activation, alpha, beta,
                         num_threads)
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
    _act(&act, activation, alpha, beta)
    shape = (N, C, g.out_h, g.out_w)
    if out is None:
        out = np.empty(shape, np.float32)
    _check_array(out, "out", 4, True)
    if tuple(out.shape) != shape:
        raise ValueError(f"out must have shape {shape}, got {tuple(out.shape)}")
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


qi_dispatch_init(QI_TIER_COUNT - 1)
