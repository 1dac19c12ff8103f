# int8 drivers, ``include``d into _kernels.pyx (they share its module, dispatch table and helpers).
#
# Design: qgemm_u8s8, qconv2d_u8s8_nhwc and qdwconv2d_u8s8_nhwc validate everything in Python
# (ValueError naming the argument, got vs expected), including the header of the packed weights
# (built in numpy by qinfer.reference.quantized.pack_*: the bias with the activation zero point
# folded in lives there, as does the conv kernel size and group count), then release the GIL for
# the whole call. Threads: one OpenMP region, static; thread t owns a rectangle of the output,
# rows (units of 8 output pixels) x panels (units of 32 output channels), from a pr x pc grid that
# minimizes the largest share (a batch-1 layer splits its channels, so both threads get work);
# the depthwise conv splits output pixels. A session's layers go through the same checks once and
# the same runners per call (_qlayer.pxi). Scratch: one buffer per OS thread kept between calls
# (qi_qint8_scratch; a per-call malloc cost batch-1 layers microseconds). Integer sums are
# exact and the float epilogue is the same per element everywhere, so any split gives
# bit-identical outputs.

import sys

from libc.string cimport memcpy, memset, strcmp
from libc.math cimport isfinite, fabs, fabsf
from cpython.buffer cimport (PyObject_GetBuffer, PyBuffer_Release, PyBUF_C_CONTIGUOUS,
                             PyBUF_FORMAT, PyBUF_WRITABLE)

ACT_SILU = QI_QACT_SILU
#: activation codes of the int8 epilogue, by name
QACT_CODES = {"none": 0, "relu": 1, "clip": 2, "hardswish": 3, "sigmoid": 4, "hardsigmoid": 5,
              "silu": QI_QACT_SILU}

# a thread gets at least this many multiply-adds (~2-3 us of VNNI) before another is added
cdef size_t _Q_MIN_MACS_PER_THREAD = 1 << 20
cdef double _Q_SCALE_MAX = 1e20
cdef bint _Q_LITTLE = sys.byteorder == "little"


cdef struct _QSplit:
    int nt, pr, pc
    size_t row_units, panels


cdef void _q_split(_QSplit *s, size_t M, size_t panels, size_t macs, int nt) noexcept nogil:
    """pr x pc grid of nt' <= nt threads over (M/8 row units) x panels minimizing the largest
    share's cost, in units of K cycles: 4 per 8 x 32 tile (the VNNI tile's K/4 groups of 16
    vpdpbusd), 2 per panel of weights the thread streams (32 K bytes at ~16 B per cycle from L2/L3;
    weights are not shared between threads that split columns), and its A rows re-read once per
    256 columns. Batch-1 layers thus split their channels, big-M layers their rows."""
    cdef size_t ru = (M + 7) // 8
    cdef size_t by_work = macs // _Q_MIN_MACS_PER_THREAD
    cdef int n, pr, best_pr = 1, best_pc = 1
    cdef size_t rt, pt
    cdef double cost, best = 1e300
    if by_work < <size_t>nt:
        nt = <int>by_work if by_work > 1 else 1
    if nt > 1 and ru * panels < <size_t>nt:
        nt = <int>(ru * panels) if ru * panels > 1 else 1
    for pr in range(nt, 0, -1):
        if nt % pr:
            continue
        n = nt // pr
        rt = (ru + pr - 1) // pr
        pt = (panels + n - 1) // n
        cost = 4.0 * rt * pt + 2.0 * pt + 0.5 * rt * ((pt + 7) // 8)
        if cost < best:
            best, best_pr, best_pc = cost, pr, n
    s.nt, s.pr, s.pc = nt, best_pr, best_pc
    s.row_units, s.panels = ru, panels


cdef inline void _q_rect(const _QSplit *s, size_t M, int t, size_t *r0, size_t *r1, size_t *p0,
                         size_t *p1) noexcept nogil:
    cdef size_t tr = <size_t>t // <size_t>s.pc, tc = <size_t>t % <size_t>s.pc
    r0[0] = s.row_units * tr // <size_t>s.pr * 8
    r1[0] = s.row_units * (tr + 1) // <size_t>s.pr * 8
    if r1[0] > M:
        r1[0] = M
    p0[0] = s.panels * tc // <size_t>s.pc
    p1[0] = s.panels * (tc + 1) // <size_t>s.pc



# ---- argument checks on raw buffers: a typed memoryview or numpy attribute lookups cost ~0.3-1 us
# each, and a batch-1 layer's whole call should take a few microseconds

cdef int _qbuf(object obj, Py_buffer *v, str name, const char *fmt, int ndim, bint writable,
               str want) except -1:
    """Acquire a C-contiguous buffer of format `fmt` and rank `ndim` (ValueError otherwise)."""
    cdef int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT
    if writable:
        flags |= PyBUF_WRITABLE
    try:
        PyObject_GetBuffer(obj, v, flags)
    except Exception:  # (the failed call left v->obj NULL: nothing to release)
        raise ValueError(f"{name} must be {want}, got {_describe(obj)}") from None
    cdef const char *f = v.format
    if f != NULL and (f[0] == b'@' or f[0] == b'=' or (f[0] == b'<' and _Q_LITTLE)):
        f += 1  # native order spelled out (e.g. a '<f4' array read from a file)
    if v.ndim != ndim or f == NULL or strcmp(f, fmt) != 0:
        PyBuffer_Release(v)
        raise ValueError(f"{name} must be {want}, got {_describe(obj)}")
    return 0


cdef inline bint _qoverlap(const Py_buffer *a, const Py_buffer *b) noexcept:
    cdef char *pa = <char *>a.buf
    cdef char *pb = <char *>b.buf
    return a.len > 0 and b.len > 0 and pa < pb + b.len and pb < pa + a.len


cdef int _q_packed(object packed, Py_buffer *pv, qi_qc8w_header *h, unsigned magic) except -1:
    """Acquire packed_w, check its header; fill *h."""
    _qbuf(packed, pv, "packed_w", "B", 1, False,
          "a 1-D C-contiguous uint8 array (from qinfer.reference.quantized.pack_*)")
    cdef size_t nbytes = pv.len
    if nbytes < sizeof(qi_qc8w_header):
        raise ValueError(f"packed_w: {nbytes} bytes is shorter than the 64-byte header")
    memcpy(h, pv.buf, sizeof(qi_qc8w_header))
    if h.magic != magic:
        kind = "GEMM/conv (QC8W)" if magic == QI_QC8W_MAGIC_GEMM else "depthwise (QDW8)"
        raise ValueError(f"packed_w: not {kind} packed weights (magic {h.magic:#010x}, expected "
                         f"{magic:#010x}); pack them with the matching pack_* function")
    if h.version != QI_QC8W_VERSION:
        raise ValueError(f"packed_w: packed format version {h.version}, this build reads "
                         f"{QI_QC8W_VERSION}")
    if (<size_t>pv.buf) % 4:
        raise ValueError("packed_w: the array must be 4-byte aligned (int32 bias section)")
    cdef size_t G = h.groups, n = h.n, k = h.k, nr, k_pad
    if magic == QI_QC8W_MAGIC_GEMM:
        nr, k_pad = QI_QC8W_NR, (k + 3) // 4 * 4
    else:
        nr, k_pad = QI_QDW_CR, h.kw * ((h.kh + 3) // 4) * 4
    if (G < 1 or n < 1 or k < 1 or h.nr != nr or h.kr != 4 or h.n_pad != (n + nr - 1) // nr * nr
            or h.k_pad != k_pad or h.zp_x < 0 or h.zp_x > 255 or G > (1 << 20) or n > (1 << 24)
            or k > (1 << 24)):
        raise ValueError(f"packed_w: inconsistent header (groups {G}, n {n}, k {k}, n_pad "
                         f"{h.n_pad}, k_pad {h.k_pad}, nr {h.nr}, kr {h.kr}, zp_x {h.zp_x})")
    if magic == QI_QC8W_MAGIC_GEMM:
        if h.kh == 0:
            if h.kw != 0 or h.cin != k or G != 1:
                raise ValueError(f"packed_w: inconsistent GEMM header (kw {h.kw}, cin {h.cin}, "
                                 f"groups {G})")
        elif h.kw < 1 or <size_t>h.kh * h.kw * h.cin != k:
            raise ValueError(f"packed_w: inconsistent conv header (kh {h.kh} x kw {h.kw} x cin "
                             f"{h.cin} != k {k})")
    elif (h.kh < 1 or h.kw < 1 or h.kh > 256 or <size_t>h.kh * h.kw != k or h.cin != 1
          or G != 1):
        raise ValueError(f"packed_w: inconsistent depthwise header (kh {h.kh}, kw {h.kw}, taps {k})")
    cdef size_t want = 64 + 8 * G * h.n_pad + G * h.n_pad * h.k_pad
    if nbytes != want:
        raise ValueError(f"packed_w: {nbytes} bytes, the header says {want}")
    # int32 bound: |bias| + K * 255 * 128 < 2^31 for every channel (so no partial sum wraps)
    # (a branch-free min / max the compiler vectorizes: this runs on every call, and a batch-1 call
    # of a wide layer computes in about the time a branchy scan of its bias takes)
    cdef const int *bias = <const int *>(<char *>pv.buf + 64)
    cdef size_t i, nb = G * h.n_pad
    cdef int lo = 0, hi = 0, v
    with nogil:
        for i in range(nb):
            v = bias[i]
            lo = v if v < lo else lo
            hi = v if v > hi else hi
    cdef long long bmax = -<long long>lo if -<long long>lo > hi else hi
    if bmax + <long long>k * 255 * 128 >= (1LL << 31):
        raise ValueError(f"packed_w: K = {k} with |bias| up to {bmax} can overflow the int32 "
                         f"accumulator (needs K * 255 * 128 + |bias| < 2**31)")
    return 0


cdef int _q_epi(qi_qepi *ep, object scale, Py_buffer *sv, size_t n_total, object out_dtype,
                object y_inv_scale, object zp_y, object activation, object alpha,
                object beta) except -1:
    _qbuf(scale, sv, "scale", "f", 1, False, "a 1-D C-contiguous float32 array")
    if <size_t>sv.shape[0] != n_total:
        raise ValueError(f"scale must have {n_total} elements (one per output channel), got "
                         f"{sv.shape[0]}")
    cdef const float *sp = <const float *>sv.buf
    cdef size_t i, n_ok = 0
    cdef float lim = <float>_Q_SCALE_MAX
    with nogil:   # counted without a branch (vectorizes; NaN compares false, inf exceeds lim)
        for i in range(n_total):
            n_ok += fabsf(sp[i]) <= lim
    if n_ok != n_total:
        i = next(j for j in range(n_total) if not (isfinite(sp[j]) and fabs(sp[j]) <= _Q_SCALE_MAX))
        raise ValueError(f"scale must be finite with |scale| <= {_Q_SCALE_MAX:g}, got "
                         f"{sp[i]!r} at channel {i}")
    ep.scale = sp
    if out_dtype is np.uint8:
        ep.out_u8 = 1
    elif out_dtype is np.float32:
        ep.out_u8 = 0
    else:
        dt = np.dtype(out_dtype)
        if dt == np.uint8:
            ep.out_u8 = 1
        elif dt == np.float32:
            ep.out_u8 = 0
        else:
            raise ValueError(f"out_dtype must be uint8 (requantized) or float32, got {dt}")
    cdef double inv = y_inv_scale
    if not (isfinite(inv) and inv > 0 and inv <= _Q_SCALE_MAX):
        raise ValueError(f"y_inv_scale must be finite and in (0, {_Q_SCALE_MAX:g}], got "
                         f"{y_inv_scale!r}")
    cdef double z = zp_y
    if not (isfinite(z) and -65536.0 <= z <= 65536.0):
        raise ValueError(f"zp_y must be a finite number in [-65536, 65536] (a zero point 0..255, "
                         f"or one with a folded offset), got {zp_y!r}")
    ep.y_inv_scale = <float>inv
    ep.zp_y = <float>z
    cdef long code = activation
    if code < 0 or code >= QI_QACT_COUNT:
        raise ValueError(f"activation code must be 0..{QI_QACT_COUNT - 1} ({', '.join(QACT_CODES)}), "
                         f"got {activation!r}")
    cdef double a = alpha, b = beta
    if not (isfinite(a) and isfinite(b) and fabs(a) <= _Q_SCALE_MAX and fabs(b) <= _Q_SCALE_MAX):
        raise ValueError(f"alpha and beta must be finite (|.| <= {_Q_SCALE_MAX:g}), got "
                         f"{alpha!r}, {beta!r}")
    if code == QI_ACT_CLIP and not a <= b:
        raise ValueError(f"clip activation needs alpha (min) <= beta (max), got {alpha!r}, {beta!r}")
    ep.act.code, ep.act.a, ep.act.b = code, <float>a, <float>b
    return 0


cdef object _q_out(object out, Py_buffer *ov, tuple shape, qi_qepi *ep, str what):
    """Allocate or check out; acquire it writable into *ov; set ep.out."""
    want = (f"a writable C-contiguous {'uint8' if ep.out_u8 else 'float32'} array of shape "
            f"{shape} ({what})") if out is not None else ""
    if out is None:
        out = np.empty(shape, np.uint8 if ep.out_u8 else np.float32)
    _qbuf(out, ov, "out", "B" if ep.out_u8 else "f", len(shape), True, want)
    cdef int i
    for i in range(len(shape)):
        if ov.shape[i] != shape[i]:
            raise ValueError(f"out must be {want}, got {_describe(out)}")
    ep.out = ov.buf
    return out


cdef object _q_run(qi_qconv_problem *pb, object out, int nt_req):
    """Split pb over threads and run it (GIL released for the whole call)."""
    cdef size_t panels = pb.groups * (pb.n_pad // QI_QC8W_NR)
    cdef _QSplit s
    # work: the multiply-adds, or the weight bytes streamed when few rows reuse them (x16: a
    # batch-1 layer is bound by its weights, ~16 B per cycle from L2/L3)
    cdef size_t wbytes = pb.groups * pb.n * pb.k * 16
    cdef size_t macs = pb.m * pb.groups * pb.n * pb.k
    _q_split(&s, pb.m, panels, macs if macs > wbytes else wbytes, nt_req)
    cdef size_t r0, r1, p0, p1, per = 0, need
    cdef int t
    cdef int failed = 0
    cdef char *scratch
    for t in range(s.pr):
        _q_rect(&s, pb.m, t * s.pc, &r0, &r1, &p0, &p1)
        need = qi_qconv_scratch_bytes(pb, r1 - r0) if r1 > r0 else 0
        if need > per:
            per = need
    cdef qi_gemm_qu8_qc8w_ptr fn = qi_kernel_gemm_qu8_qc8w()
    with nogil:
        if s.nt == 1:
            scratch = <char *>qi_qint8_scratch(per)
            if scratch == NULL:
                failed = 1
            else:
                qi_qconv_run(pb, fn, 0, pb.m, 0, panels, scratch)
        else:
            for t in prange(s.nt, num_threads=s.nt, schedule="static"):
                scratch = <char *>qi_qint8_scratch(per)
                if scratch == NULL:
                    failed += 1  # (a reduction: a plain assignment would be lastprivate)
                else:
                    # assigned here so Cython makes them thread-private: written only through
                    # pointers, they were shared between the threads (a race on the rectangle)
                    r0 = r1 = p0 = p1 = 0
                    _q_rect(&s, pb.m, t, &r0, &r1, &p0, &p1)
                    qi_qconv_run(pb, fn, r0, r1, p0, p1, scratch)
    if failed:
        raise MemoryError(f"int8 conv: cannot allocate {per} bytes of scratch per thread")
    return out


cdef void _q_shape(qi_qconv_problem *pb, const qi_conv2d_geom *g, size_t M) noexcept:
    """pb.geom = *g and pb.direct (a 1x1 stride-1 unpadded conv reads x in place), or with g NULL
    a GEMM's: M output pixels of a 1x1 conv, direct."""
    if g == NULL:
        memset(&pb.geom, 0, sizeof(pb.geom))
        pb.geom.in_h = pb.geom.out_h = M
        pb.geom.in_w = pb.geom.out_w = 1
        pb.geom.k_h = pb.geom.k_w = pb.geom.stride_h = pb.geom.stride_w = 1
        pb.geom.dil_h = pb.geom.dil_w = 1
        pb.direct = 1
        return
    if g != &pb.geom:
        pb.geom = g[0]
    pb.direct = (g.k_h == 1 and g.k_w == 1 and g.stride_h == 1 and g.stride_w == 1
                 and g.pad_top == 0 and g.pad_left == 0 and g.pad_bottom == 0 and g.pad_right == 0)


cdef void _qgemm_fill(qi_qconv_problem *pb, const qi_qc8w_header *h, const void *packed,
                      const void *a, size_t M) noexcept:
    """The problem of a checked GEMM call (pb.ep filled): a [M, K] as a 1x1 conv over M pixels."""
    pb.ep.ldo = h.n
    pb.x = <const uint8_t *>a
    pb.batch, pb.cin_total = 1, h.k
    _q_shape(pb, NULL, M)
    pb.lda, pb.m, pb.zp_x = h.k, M, h.zp_x
    pb.groups, pb.n, pb.k, pb.k_pad, pb.n_pad, pb.cin = 1, h.n, h.k, h.k_pad, h.n_pad, h.k
    pb.bias = <const int32_t *>(<const char *>packed + 64)
    pb.w = <const int8_t *>(<const char *>packed + 64 + 8 * h.n_pad)


cdef void _qconv_fill(qi_qconv_problem *pb, const qi_qc8w_header *h, const void *packed,
                      const void *x, size_t N) noexcept:
    """The problem of a checked conv call (pb.geom and pb.ep filled): x [N, H, W, G * cin]."""
    cdef size_t G = h.groups, C = h.groups * h.cin
    pb.ep.ldo = G * h.n
    pb.x = <const uint8_t *>x
    pb.batch, pb.cin_total = N, C
    _q_shape(pb, &pb.geom, 0)
    pb.lda = C
    pb.m = N * pb.geom.out_h * pb.geom.out_w
    pb.zp_x = h.zp_x
    pb.groups, pb.n, pb.k, pb.k_pad, pb.n_pad, pb.cin = G, h.n, h.k, h.k_pad, h.n_pad, h.cin
    pb.bias = <const int32_t *>(<const char *>packed + 64)
    pb.w = <const int8_t *>(<const char *>packed + 64 + 8 * G * h.n_pad)


cdef inline void _qrelease(Py_buffer *a, Py_buffer *b, Py_buffer *c, Py_buffer *d) noexcept:
    PyBuffer_Release(a)
    PyBuffer_Release(b)
    PyBuffer_Release(c)
    PyBuffer_Release(d)


def qgemm_u8s8(a, packed_w, scale, out=None, out_dtype=np.uint8, y_inv_scale=1.0, zp_y=0,
               activation=0, alpha=0.0, beta=0.0, num_threads=None):
    """int8 GEMM with fused epilogue: a uint8 [M, K] (zero point zp_x), packed_w from
    ``qinfer.reference.quantized.pack_gemm_qc8w(w[K, N], bias_q, zp_x)`` (bias folded with zp_x),
    scale float32 [N] (s_x * s_w[n]) -> out [M, N], uint8 (``out_dtype``; requantized with
    y_inv_scale = 1/s_y and zp_y) or float32. ``activation``: 0 none, 1 relu, 2 clip(alpha, beta),
    3 hardswish, 4 sigmoid, 5 hardsigmoid(alpha, beta), 6 silu, applied to the real value before
    requantization. Bit-identical for any ``num_threads``. Returns out."""
    cdef Py_buffer pv, av, sv, ov
    memset(&pv, 0, sizeof(Py_buffer))
    memset(&av, 0, sizeof(Py_buffer))
    memset(&sv, 0, sizeof(Py_buffer))
    memset(&ov, 0, sizeof(Py_buffer))
    cdef qi_qc8w_header h
    cdef qi_qconv_problem pb
    cdef size_t M
    cdef int nt
    try:
        _q_packed(packed_w, &pv, &h, QI_QC8W_MAGIC_GEMM)
        if h.kh != 0:
            raise ValueError("packed_w holds conv weights; use qconv2d_u8s8_nhwc (or pack with "
                             "pack_gemm_qc8w)")
        _qbuf(a, &av, "a", "B", 2, False, "a C-contiguous uint8 array of rank 2")
        if <size_t>av.shape[1] != h.k:
            raise ValueError(f"a must have K = {h.k} columns (the packed weights' K), got a of "
                             f"shape {tuple(a.shape)}")
        memset(&pb, 0, sizeof(pb))
        _q_epi(&pb.ep, scale, &sv, h.n, out_dtype, y_inv_scale, zp_y, activation, alpha, beta)
        M = av.shape[0]
        out = _q_out(out, &ov, (M, h.n), &pb.ep, "M, N")
        if _qoverlap(&ov, &av) or _qoverlap(&ov, &pv) or _qoverlap(&ov, &sv):
            raise ValueError("out must not overlap a, packed_w or scale")
        nt = _threads(num_threads)
        if M == 0:
            return out
        _qgemm_fill(&pb, &h, pv.buf, av.buf, M)
        return _q_run(&pb, out, nt)
    finally:
        _qrelease(&pv, &av, &sv, &ov)


def qconv2d_u8s8_nhwc(x, packed_w, scale, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
                      out=None, out_dtype=np.uint8, y_inv_scale=1.0, zp_y=0, activation=0,
                      alpha=0.0, beta=0.0, num_threads=None):
    """int8 conv, NHWC: x uint8 [N, H, W, Cin] (zero point zp_x, also the padding value),
    packed_w from ``pack_conv_qc8w(w[Cout, Cin/groups, KH, KW], bias_q, zp_x, groups)`` (kernel
    size and groups come from it), scale float32 [Cout] -> out [N, OH, OW, Cout]; ``pads`` =
    (top, left, bottom, right). 1x1 stride-1 unpadded convs read x in place (a GEMM), others go
    through im2col blocks. Epilogue arguments as qgemm_u8s8. Returns out."""
    cdef Py_buffer pv, xv, sv, ov
    memset(&pv, 0, sizeof(Py_buffer))
    memset(&xv, 0, sizeof(Py_buffer))
    memset(&sv, 0, sizeof(Py_buffer))
    memset(&ov, 0, sizeof(Py_buffer))
    cdef qi_qc8w_header h
    cdef qi_qconv_problem pb
    cdef size_t G, N, C
    cdef int nt
    try:
        _q_packed(packed_w, &pv, &h, QI_QC8W_MAGIC_GEMM)
        if h.kh == 0:
            raise ValueError("packed_w holds GEMM weights; pack conv weights with pack_conv_qc8w")
        _qbuf(x, &xv, "x", "B", 4, False, "a C-contiguous uint8 array of rank 4 (NHWC)")
        G, N, C = h.groups, xv.shape[0], xv.shape[3]
        if C != G * h.cin:
            raise ValueError(f"x must have {G * h.cin} channels (groups {G} x {h.cin} per group, "
                             f"from packed_w), got x of shape {tuple(x.shape)}")
        memset(&pb, 0, sizeof(pb))
        _geom(&pb.geom, xv.shape[1], xv.shape[2], (h.kh, h.kw), strides, pads, dilations)
        _q_epi(&pb.ep, scale, &sv, G * h.n, out_dtype, y_inv_scale, zp_y, activation, alpha, beta)
        out = _q_out(out, &ov, (N, pb.geom.out_h, pb.geom.out_w, G * h.n), &pb.ep,
                     "N, OH, OW, Cout")
        if _qoverlap(&ov, &xv) or _qoverlap(&ov, &pv) or _qoverlap(&ov, &sv):
            raise ValueError("out must not overlap x, packed_w or scale")
        nt = _threads(num_threads)
        if ov.len == 0:
            return out
        _qconv_fill(&pb, &h, pv.buf, xv.buf, N)
        return _q_run(&pb, out, nt)
    finally:
        _qrelease(&pv, &xv, &sv, &ov)


cdef void _qdw_chunk(qi_dwconv2d_qu8_qc8w_ptr fn, const qi_conv2d_geom *g, size_t C, size_t c0,
                     size_t c1, size_t b, size_t e, const uint8_t *x, const int32_t *bias,
                     const int8_t *w, size_t c_pad, uint8_t zp_x, const qi_qepi *ep0,
                     uint8_t *scratch) noexcept nogil:
    """Output pixels [b, e) of N*OH*OW, channels [c0, c1): split at image boundaries, one kernel
    call per image."""
    cdef size_t ohw = g.out_h * g.out_w, xs = g.in_h * g.in_w * C
    cdef size_t n, p0, p1
    cdef qi_qepi ep = ep0[0]
    cdef size_t es = 1 if ep0.out_u8 else sizeof(float)
    while b < e:
        n = b // ohw
        p0 = b - n * ohw
        p1 = ohw if e - n * ohw > ohw else e - n * ohw
        ep.out = <char *>ep0.out + n * ohw * C * es
        fn(g, C, c0, c1, p0, p1, x + n * xs, bias, w, c_pad, zp_x, &ep, scratch)
        b = n * ohw + p1


cdef int _qdw_exec(const qi_conv2d_geom *g, qi_qepi *ep, const qi_qc8w_header *h,
                   const void *packed, const uint8_t *xp, size_t N, int nt) except -1:
    """Run a checked depthwise call (ep filled but for ldo) over threads, GIL released."""
    cdef size_t C = h.n, units, macs, per, b, e
    cdef int t
    cdef int failed = 0
    cdef uint8_t *scratch
    ep.ldo = C
    units = N * g.out_h * g.out_w
    # depthwise runs ~16x fewer multiply-adds per second than the GEMM (its epilogue and
    # quad rows dominate): a thread's share is worth it from 1/16 of the GEMM's threshold
    macs = units * C * h.k * 16
    if macs // _Q_MIN_MACS_PER_THREAD < <size_t>nt:
        nt = <int>(macs // _Q_MIN_MACS_PER_THREAD) if macs // _Q_MIN_MACS_PER_THREAD > 1 else 1
    if units < <size_t>nt:
        nt = <int>units
    per = qi_qdw_scratch_bytes(g, h.n_pad)
    cdef const int32_t *bp = <const int32_t *>(<const char *>packed + 64)
    cdef const int8_t *wp = <const int8_t *>(<const char *>packed + 64 + 8 * h.n_pad)
    cdef qi_dwconv2d_qu8_qc8w_ptr fn = qi_kernel_dwconv2d_qu8_qc8w()
    # threads split output pixels (a channel split, tried for batch-1 14x14 and 7x7 layers,
    # ran slower: the threads' output lines interleave within 128-byte prefetch pairs)
    with nogil:
        if nt <= 1:
            scratch = <uint8_t *>qi_qint8_scratch(per)
            if scratch == NULL:
                failed = 1
            else:
                _qdw_chunk(fn, g, C, 0, C, 0, units, xp, bp, wp, h.n_pad, h.zp_x, ep,
                           scratch)
        else:
            for t in prange(nt, num_threads=nt, schedule="static"):
                scratch = <uint8_t *>qi_qint8_scratch(per)
                if scratch == NULL:
                    failed += 1  # (a reduction: a plain assignment would be lastprivate)
                else:
                    b = _chunk_start(units, nt, t)
                    e = _chunk_start(units, nt, t + 1)
                    _qdw_chunk(fn, g, C, 0, C, b, e, xp, bp, wp, h.n_pad, h.zp_x, ep,
                               scratch)
    if failed:
        raise MemoryError(f"qdwconv2d_u8s8_nhwc: cannot allocate {per} bytes of scratch")
    return 0


def qdwconv2d_u8s8_nhwc(x, packed_w, scale, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
                        out=None, out_dtype=np.uint8, y_inv_scale=1.0, zp_y=0, activation=0,
                        alpha=0.0, beta=0.0, num_threads=None):
    """int8 depthwise conv, NHWC: x uint8 [N, H, W, C], packed_w from
    ``pack_dwconv_qc8w(w[C, 1, KH, KW], bias_q, zp_x)``, scale float32 [C] -> out [N, OH, OW, C];
    padding reads zp_x. Threads split output pixels. Epilogue arguments as qgemm_u8s8."""
    cdef Py_buffer pv, xv, sv, ov
    memset(&pv, 0, sizeof(Py_buffer))
    memset(&xv, 0, sizeof(Py_buffer))
    memset(&sv, 0, sizeof(Py_buffer))
    memset(&ov, 0, sizeof(Py_buffer))
    cdef qi_qc8w_header h
    cdef qi_conv2d_geom g
    cdef qi_qepi ep
    cdef size_t N, C
    cdef int nt
    try:
        _q_packed(packed_w, &pv, &h, QI_QC8W_MAGIC_DW)
        _qbuf(x, &xv, "x", "B", 4, False, "a C-contiguous uint8 array of rank 4 (NHWC)")
        N, C = xv.shape[0], xv.shape[3]
        if C != h.n:
            raise ValueError(f"x must have {h.n} channels (from packed_w), got x of shape "
                             f"{tuple(x.shape)}")
        _geom(&g, xv.shape[1], xv.shape[2], (h.kh, h.kw), strides, pads, dilations)
        memset(&ep, 0, sizeof(ep))
        _q_epi(&ep, scale, &sv, C, out_dtype, y_inv_scale, zp_y, activation, alpha, beta)
        out = _q_out(out, &ov, (N, g.out_h, g.out_w, C), &ep, "N, OH, OW, C")
        if _qoverlap(&ov, &xv) or _qoverlap(&ov, &pv) or _qoverlap(&ov, &sv):
            raise ValueError("out must not overlap x, packed_w or scale")
        nt = _threads(num_threads)
        if ov.len == 0:
            return out
        _qdw_exec(&g, &ep, &h, pv.buf, <const uint8_t *>xv.buf, N, nt)
        return out
    finally:
        _qrelease(&pv, &xv, &sv, &ov)


def qint8_set_min_work(size_t macs):
    """Test hook: multiply-adds a thread must get before another is added (default 2**20); 1 makes
    every call with num_threads > 1 really split. Returns the previous value."""
    global _Q_MIN_MACS_PER_THREAD
    if macs < 1:
        raise ValueError(f"macs must be >= 1, got {macs}")
    prev = _Q_MIN_MACS_PER_THREAD
    _Q_MIN_MACS_PER_THREAD = macs
    return prev


def qint8_vnni_peak(long long iters):
    """Run the register-only VNNI loop (24 independent zmm vpdpbusd per iteration, 24 * 64 MACs)
    ``iters`` times on this thread; returns a checksum. For bench/bench_ukernels.py, which times
    it; ValueError when this CPU or build cannot run the AVX-512 VNNI tier."""
    if not qi_cpu_tier_supported(QI_TIER_AVX512VNNI):
        raise ValueError("this CPU (or build) cannot run the AVX-512 VNNI tier")
    cdef long long r
    with nogil:
        r = qi_qint8_vnni_peak(iters)
    return r


def qint8_vnni_stream(const uint8_t[::1] buf not None, long long passes, int num_threads=1):
    """Stream ``buf``'s whole 64-byte lines ``passes`` times through vpdpbusd (``num_threads``
    threads, each its share): the weight-streaming bound of a one-row GEMM over packed weights,
    for bench/bench_ukernels.py, which times it; returns a checksum. ValueError when this CPU or
    build cannot run the AVX-512 VNNI tier, or for fewer than 64 bytes or passes < 1."""
    if not qi_cpu_tier_supported(QI_TIER_AVX512VNNI):
        raise ValueError("this CPU (or build) cannot run the AVX-512 VNNI tier")
    if buf.shape[0] < 64 or passes < 1 or num_threads < 1:
        raise ValueError(f"need >= 64 bytes, passes >= 1 and num_threads >= 1 (got "
                         f"{buf.shape[0]} bytes, {passes}, {num_threads})")
    cdef long long r
    with nogil:
        r = qi_qint8_vnni_stream(<const int8_t *>&buf[0], buf.shape[0], passes, num_threads)
    return r
