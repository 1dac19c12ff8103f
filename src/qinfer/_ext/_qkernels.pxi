# int8 drivers, ``include``d into _kernels.pyx (they share its module, dispatch table and helpers).
#
# Design: qgemm_u8s8, qconv2d_u8s8_nhwc and qdwconv2d_u8s8_nhwc validate everything in Python
# (ValueError naming the argument, got vs expected), including the header of the packed weights
# (built in numpy by qinfer.reference.quantized.pack_*: the bias with the activation zero point
# folded in lives there, as does the conv kernel size and group count), then release the GIL for
# the whole call. Threads: one OpenMP region, static; thread t owns a rectangle of the output,
# rows (units of 8 output pixels) x panels (units of 32 output channels), from a pr x pc grid that
# minimizes the largest share (a batch-1 layer splits its channels, so both threads get work);
# the depthwise conv splits output pixels. Integer sums are exact and the float epilogue is the
# same per element everywhere, so any split gives bit-identical outputs.

from libc.string cimport memcpy, memset
from libc.math cimport isfinite, fabs

ACT_SILU = QI_QACT_SILU
#: activation codes of the int8 epilogue, by name
QACT_CODES = {"none": 0, "relu": 1, "clip": 2, "hardswish": 3, "sigmoid": 4, "hardsigmoid": 5,
              "silu": QI_QACT_SILU}

# a thread gets at least this many multiply-adds (~2-3 us of VNNI) before another is added
cdef size_t _Q_MIN_MACS_PER_THREAD = 1 << 20
cdef double _Q_SCALE_MAX = 1e20


cdef struct _QSplit:
    int nt, pr, pc
    size_t row_units, panels


cdef void _q_split(_QSplit *s, size_t M, size_t panels, size_t macs, int nt) noexcept nogil:
    """pr x pc grid of nt' <= nt threads over (M/8 row units) x panels minimizing the largest
    share; ties go to splitting rows."""
    cdef size_t ru = (M + 7) // 8
    cdef size_t by_work = macs // _Q_MIN_MACS_PER_THREAD
    cdef int n, pr, best_pr = 1, best_pc = 1
    cdef size_t cost, best = <size_t>-1
    if by_work < <size_t>nt:
        nt = <int>by_work if by_work > 1 else 1
    if nt > 1 and ru * panels < <size_t>nt:
        nt = <int>(ru * panels) if ru * panels > 1 else 1
    for pr in range(nt, 0, -1):
        if nt % pr:
            continue
        n = nt // pr
        cost = ((ru + pr - 1) // pr) * ((panels + n - 1) // n)
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


cdef object _q_packed(object packed, qi_qc8w_header *h, unsigned magic, str what):
    """Check the packed weight array and its header; fill *h; return the array."""
    flags = getattr(packed, "flags", None)
    if (getattr(packed, "dtype", None) != np.uint8 or getattr(packed, "ndim", -1) != 1
            or flags is None or not flags["C_CONTIGUOUS"]):
        raise ValueError(f"{what} must be a 1-D C-contiguous uint8 array (from "
                         f"qinfer.reference.quantized.pack_*), got {_describe(packed)}")
    cdef const unsigned char[::1] pv = packed
    cdef size_t nbytes = pv.shape[0]
    if nbytes < sizeof(qi_qc8w_header):
        raise ValueError(f"{what}: {nbytes} bytes is shorter than the 64-byte header")
    memcpy(h, &pv[0], sizeof(qi_qc8w_header))
    kind = "GEMM/conv (QC8W)" if magic == QI_QC8W_MAGIC_GEMM else "depthwise (QDW8)"
    if h.magic != magic:
        raise ValueError(f"{what}: not {kind} packed weights (magic {h.magic:#010x}, expected "
                         f"{magic:#010x}); pack them with the matching pack_* function")
    if h.version != QI_QC8W_VERSION:
        raise ValueError(f"{what}: packed format version {h.version}, this build reads "
                         f"{QI_QC8W_VERSION}")
    if (<size_t>&pv[0]) % 4:
        raise ValueError(f"{what}: the array must be 4-byte aligned (int32 bias section)")
    nr = QI_QC8W_NR if magic == QI_QC8W_MAGIC_GEMM else QI_QDW_CR
    kr = QI_QC8W_KR if magic == QI_QC8W_MAGIC_GEMM else 1
    G, n, k = h.groups, h.n, h.k
    if (G < 1 or n < 1 or k < 1 or h.nr != nr or h.kr != kr
            or h.n_pad != (n + nr - 1) // nr * nr or h.k_pad != (k + kr - 1) // kr * kr
            or not 0 <= h.zp_x <= 255):
        raise ValueError(f"{what}: inconsistent header (groups {G}, n {n}, k {k}, n_pad {h.n_pad}, "
                         f"k_pad {h.k_pad}, nr {h.nr}, kr {h.kr}, zp_x {h.zp_x})")
    if magic == QI_QC8W_MAGIC_GEMM:
        if h.kh == 0:
            if h.kw != 0 or h.cin != k or G != 1:
                raise ValueError(f"{what}: inconsistent GEMM header (kw {h.kw}, cin {h.cin}, "
                                 f"groups {G})")
        elif h.kw < 1 or h.kh * h.kw * h.cin != k:
            raise ValueError(f"{what}: inconsistent conv header (kh {h.kh} x kw {h.kw} x cin "
                             f"{h.cin} != k {k})")
    elif h.kh < 1 or h.kw < 1 or h.kh * h.kw != k or h.cin != 1 or G != 1:
        raise ValueError(f"{what}: inconsistent depthwise header (kh {h.kh}, kw {h.kw}, taps {k})")
    want = 64 + 8 * G * h.n_pad + G * h.n_pad * h.k_pad
    if nbytes != want:
        raise ValueError(f"{what}: {nbytes} bytes, the header says {want}")
    # int32 bound: |bias| + K * 255 * 128 < 2^31 for every channel (so no partial sum wraps)
    cdef const int *bias = <const int *>(&pv[0] + 64)
    cdef size_t i, nb = G * h.n_pad
    cdef long long bmax = 0, v
    with nogil:
        for i in range(nb):
            v = bias[i]
            if v < 0:
                v = -v
            if v > bmax:
                bmax = v
    if bmax + <long long>k * 255 * 128 >= (1LL << 31):
        raise ValueError(f"{what}: K = {k} with |bias| up to {bmax} can overflow the int32 "
                         f"accumulator (needs K * 255 * 128 + |bias| < 2**31)")
    return packed


cdef int _q_epi(qi_qepi *ep, object scale, size_t n_total, object out_dtype, object y_inv_scale,
                object zp_y, object activation, object alpha, object beta) except -1:
    _check_array(scale, "scale", 1)
    cdef const float[::1] sv = scale
    if <size_t>sv.shape[0] != n_total:
        raise ValueError(f"scale must have {n_total} elements (one per output channel), got "
                         f"{sv.shape[0]}")
    cdef size_t i
    cdef bint bad = False
    with nogil:
        for i in range(n_total):
            if not (isfinite(sv[i]) and fabs(sv[i]) <= _Q_SCALE_MAX):
                bad = True
                break
    if bad:
        raise ValueError(f"scale must be finite with |scale| <= {_Q_SCALE_MAX:g}, got "
                         f"{scale[i]!r} at channel {i}")
    ep.scale = &sv[0]
    dt = np.dtype(out_dtype)
    if dt == np.uint8:
        ep.out_u8 = 1
    elif dt == np.float32:
        ep.out_u8 = 0
    else:
        raise ValueError(f"out_dtype must be uint8 (requantized) or float32, got {dt}")
    inv = float(y_inv_scale)
    if not (isfinite(inv) and inv > 0):
        raise ValueError(f"y_inv_scale must be finite and > 0, got {y_inv_scale!r}")
    z = int(zp_y)
    if not 0 <= z <= 255:
        raise ValueError(f"zp_y must be in 0..255, got {zp_y!r}")
    ep.y_inv_scale = inv
    ep.zp_y = z
    code = int(activation)
    if not 0 <= code < QI_QACT_COUNT:
        raise ValueError(f"activation code must be 0..{QI_QACT_COUNT - 1} ({', '.join(QACT_CODES)}), "
                         f"got {activation!r}")
    a, b = float(alpha), float(beta)
    if not (isfinite(a) and isfinite(b)):
        raise ValueError(f"alpha and beta must be finite, got {alpha!r}, {beta!r}")
    if code == QI_ACT_CLIP and not a <= b:
        raise ValueError(f"clip activation needs alpha (min) <= beta (max), got {alpha!r}, {beta!r}")
    ep.act.code, ep.act.a, ep.act.b = code, a, b
    return 0


cdef object _q_out(object out, tuple shape, const qi_qepi *ep, str what):
    dt = np.uint8 if ep.out_u8 else np.float32
    if out is None:
        return np.empty(shape, dt)
    flags = getattr(out, "flags", None)
    if (getattr(out, "dtype", None) != dt or flags is None or not flags["C_CONTIGUOUS"]
            or not flags["WRITEABLE"] or tuple(getattr(out, "shape", ())) != shape):
        raise ValueError(f"out must be a writable C-contiguous {np.dtype(dt)} array of shape "
                         f"{shape} ({what}), got {_describe(out)}")
    return out


def _q_check_u8(a, str name, int ndim):
    flags = getattr(a, "flags", None)
    if (getattr(a, "dtype", None) != np.uint8 or getattr(a, "ndim", -1) != ndim
            or flags is None or not flags["C_CONTIGUOUS"]):
        raise ValueError(f"{name} must be a C-contiguous uint8 array of rank {ndim}, "
                         f"got {_describe(a)}")


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
    for t in range(s.pr):
        _q_rect(&s, pb.m, t * s.pc, &r0, &r1, &p0, &p1)
        need = qi_qconv_scratch_bytes(pb, r1 - r0) if r1 > r0 else 0
        if need > per:
            per = need
    per = (per + 63) & ~(<size_t>63)
    cdef void *mem = NULL
    cdef char *scratch = NULL
    if per:
        mem = malloc(per * s.nt + 64)
        if mem == NULL:
            raise MemoryError(f"int8 conv: cannot allocate {per * s.nt} bytes of scratch")
        scratch = <char *>((<uintptr_t>mem + 63) & ~(<uintptr_t>63))
    cdef qi_gemm_qu8_qc8w_ptr fn = qi_kernel_gemm_qu8_qc8w()
    try:
        with nogil:
            if s.nt == 1:
                qi_qconv_run(pb, fn, 0, pb.m, 0, panels, scratch)
            else:
                for t in prange(s.nt, num_threads=s.nt, schedule="static"):
                    _q_rect(&s, pb.m, t, &r0, &r1, &p0, &p1)
                    qi_qconv_run(pb, fn, r0, r1, p0, p1, scratch + per * t)
    finally:
        free(mem)
    return out


def qgemm_u8s8(a, packed_w, scale, out=None, out_dtype=np.uint8, y_inv_scale=1.0, zp_y=0,
               activation=0, alpha=0.0, beta=0.0, num_threads=None):
    """int8 GEMM with fused epilogue: a uint8 [M, K] (zero point zp_x), packed_w from
    ``qinfer.reference.quantized.pack_gemm_qc8w(w[K, N], bias_q, zp_x)`` (bias folded with zp_x),
    scale float32 [N] (s_x * s_w[n]) -> out [M, N], uint8 (``out_dtype``; requantized with
    y_inv_scale = 1/s_y and zp_y) or float32. ``activation``: 0 none, 1 relu, 2 clip(alpha, beta),
    3 hardswish, 4 sigmoid, 5 hardsigmoid(alpha, beta), 6 silu, applied to the real value before
    requantization. Bit-identical for any ``num_threads``. Returns out."""
    cdef qi_qc8w_header h
    _q_packed(packed_w, &h, QI_QC8W_MAGIC_GEMM, "packed_w")
    if h.kh != 0:
        raise ValueError("packed_w holds conv weights; use qconv2d_u8s8_nhwc (or pack with "
                         "pack_gemm_qc8w)")
    _q_check_u8(a, "a", 2)
    if a.shape[1] != h.k:
        raise ValueError(f"a must have K = {h.k} columns (the packed weights' K), got a of shape "
                         f"{tuple(a.shape)}")
    cdef qi_qconv_problem pb
    memset(&pb, 0, sizeof(pb))
    _q_epi(&pb.ep, scale, h.n, out_dtype, y_inv_scale, zp_y, activation, alpha, beta)
    cdef size_t M = a.shape[0]
    out = _q_out(out, (M, h.n), &pb.ep, "M, N")
    _no_overlap(out, "out", ("a", a), ("packed_w", packed_w), ("scale", scale))
    cdef int nt = _threads(num_threads)
    if M == 0:
        return out
    cdef const unsigned char[:, ::1] av = a
    cdef const unsigned char[::1] pv = packed_w
    cdef unsigned char[:, ::1] ou
    cdef float[:, ::1] of
    if pb.ep.out_u8:
        ou = out
        pb.ep.out = &ou[0, 0]
    else:
        of = out
        pb.ep.out = &of[0, 0]
    pb.ep.ldo = h.n
    pb.x = &av[0, 0]
    pb.batch, pb.cin_total = 1, h.k
    pb.geom.in_h = pb.geom.out_h = M
    pb.geom.in_w = pb.geom.out_w = 1
    pb.geom.k_h = pb.geom.k_w = pb.geom.stride_h = pb.geom.stride_w = 1
    pb.geom.dil_h = pb.geom.dil_w = 1
    pb.direct, pb.lda, pb.m, pb.zp_x = 1, h.k, M, h.zp_x
    pb.groups, pb.n, pb.k, pb.k_pad, pb.n_pad, pb.cin = 1, h.n, h.k, h.k_pad, h.n_pad, h.k
    pb.bias = <const int32_t *>(&pv[0] + 64)
    pb.w = <const int8_t *>(&pv[0] + 64 + 8 * h.n_pad)
    return _q_run(&pb, out, nt)


def qconv2d_u8s8_nhwc(x, packed_w, scale, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
                      out=None, out_dtype=np.uint8, y_inv_scale=1.0, zp_y=0, activation=0,
                      alpha=0.0, beta=0.0, num_threads=None):
    """int8 conv, NHWC: x uint8 [N, H, W, Cin] (zero point zp_x, also the padding value),
    packed_w from ``pack_conv_qc8w(w[Cout, Cin/groups, KH, KW], bias_q, zp_x, groups)`` (kernel
    size and groups come from it), scale float32 [Cout] -> out [N, OH, OW, Cout]; ``pads`` =
    (top, left, bottom, right). 1x1 stride-1 unpadded convs read x in place (a GEMM), others go
    through im2col blocks. Epilogue arguments as qgemm_u8s8. Returns out."""
    cdef qi_qc8w_header h
    _q_packed(packed_w, &h, QI_QC8W_MAGIC_GEMM, "packed_w")
    if h.kh == 0:
        raise ValueError("packed_w holds GEMM weights; pack conv weights with pack_conv_qc8w")
    _q_check_u8(x, "x", 4)
    cdef size_t G = h.groups, N = x.shape[0], C = x.shape[3]
    if C != G * h.cin:
        raise ValueError(f"x must have {G * h.cin} channels (groups {G} x {h.cin} per group, from "
                         f"packed_w), got x of shape {tuple(x.shape)}")
    cdef qi_qconv_problem pb
    memset(&pb, 0, sizeof(pb))
    _geom(&pb.geom, x.shape[1], x.shape[2], (h.kh, h.kw), strides, pads, dilations)
    _q_epi(&pb.ep, scale, G * h.n, out_dtype, y_inv_scale, zp_y, activation, alpha, beta)
    shape = (N, pb.geom.out_h, pb.geom.out_w, G * h.n)
    out = _q_out(out, shape, &pb.ep, "N, OH, OW, Cout")
    _no_overlap(out, "out", ("x", x), ("packed_w", packed_w), ("scale", scale))
    cdef int nt = _threads(num_threads)
    if out.size == 0:
        return out
    cdef const unsigned char[:, :, :, ::1] xv = x
    cdef const unsigned char[::1] pv = packed_w
    cdef unsigned char[:, :, :, ::1] ou
    cdef float[:, :, :, ::1] of
    if pb.ep.out_u8:
        ou = out
        pb.ep.out = &ou[0, 0, 0, 0]
    else:
        of = out
        pb.ep.out = &of[0, 0, 0, 0]
    pb.ep.ldo = G * h.n
    pb.x = &xv[0, 0, 0, 0]
    pb.batch, pb.cin_total = N, C
    pb.direct = (h.kh == 1 and h.kw == 1 and pb.geom.stride_h == 1 and pb.geom.stride_w == 1
                 and pb.geom.pad_top == 0 and pb.geom.pad_left == 0 and pb.geom.pad_bottom == 0
                 and pb.geom.pad_right == 0)
    pb.lda = C
    pb.m = N * pb.geom.out_h * pb.geom.out_w
    pb.zp_x = h.zp_x
    pb.groups, pb.n, pb.k, pb.k_pad, pb.n_pad, pb.cin = G, h.n, h.k, h.k_pad, h.n_pad, h.cin
    pb.bias = <const int32_t *>(&pv[0] + 64)
    pb.w = <const int8_t *>(&pv[0] + 64 + 8 * G * h.n_pad)
    return _q_run(&pb, out, nt)


cdef void _qdw_chunk(qi_dwconv2d_qu8_qc8w_ptr fn, const qi_conv2d_geom *g, size_t C, size_t b,
                     size_t e, const uint8_t *x, const int32_t *bias, const int8_t *w,
                     size_t c_pad, const uint8_t *zp_row, const qi_qepi *ep0) noexcept nogil:
    """Output pixels [b, e) of N*OH*OW: split at image boundaries, one kernel call per image."""
    cdef size_t ohw = g.out_h * g.out_w, xs = g.in_h * g.in_w * C
    cdef size_t n, p0, p1
    cdef qi_qepi ep = ep0[0]
    cdef size_t es = 1 if ep0.out_u8 else sizeof(float)
    while b < e:
        n = b // ohw
        p0 = b - n * ohw
        p1 = ohw if e - n * ohw > ohw else e - n * ohw
        ep.out = <char *>ep0.out + n * ohw * C * es
        fn(g, C, p0, p1, x + n * xs, bias, w, c_pad, zp_row, &ep)
        b = n * ohw + p1


def qdwconv2d_u8s8_nhwc(x, packed_w, scale, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
                        out=None, out_dtype=np.uint8, y_inv_scale=1.0, zp_y=0, activation=0,
                        alpha=0.0, beta=0.0, num_threads=None):
    """int8 depthwise conv, NHWC: x uint8 [N, H, W, C], packed_w from
    ``pack_dwconv_qc8w(w[C, 1, KH, KW], bias_q, zp_x)``, scale float32 [C] -> out [N, OH, OW, C];
    padding reads zp_x. Epilogue arguments as qgemm_u8s8. Returns out."""
    cdef qi_qc8w_header h
    _q_packed(packed_w, &h, QI_QC8W_MAGIC_DW, "packed_w")
    _q_check_u8(x, "x", 4)
    cdef size_t N = x.shape[0], C = x.shape[3]
    if C != h.n:
        raise ValueError(f"x must have {h.n} channels (from packed_w), got x of shape "
                         f"{tuple(x.shape)}")
    cdef qi_conv2d_geom g
    _geom(&g, x.shape[1], x.shape[2], (h.kh, h.kw), strides, pads, dilations)
    cdef qi_qepi ep
    _q_epi(&ep, scale, C, out_dtype, y_inv_scale, zp_y, activation, alpha, beta)
    out = _q_out(out, (N, g.out_h, g.out_w, C), &ep, "N, OH, OW, C")
    _no_overlap(out, "out", ("x", x), ("packed_w", packed_w), ("scale", scale))
    cdef int nt = _threads(num_threads)
    if out.size == 0:
        return out
    cdef const unsigned char[:, :, :, ::1] xv = x
    cdef const unsigned char[::1] pv = packed_w
    cdef unsigned char[:, :, :, ::1] ou
    cdef float[:, :, :, ::1] of
    if ep.out_u8:
        ou = out
        ep.out = &ou[0, 0, 0, 0]
    else:
        of = out
        ep.out = &of[0, 0, 0, 0]
    ep.ldo = C
    cdef size_t units = N * g.out_h * g.out_w
    cdef size_t macs = units * C * h.k
    if macs // _Q_MIN_MACS_PER_THREAD < <size_t>nt:
        nt = <int>(macs // _Q_MIN_MACS_PER_THREAD) if macs // _Q_MIN_MACS_PER_THREAD > 1 else 1
    if units < <size_t>nt:
        nt = <int>units
    cdef uint8_t *zp_row = <uint8_t *>malloc(h.n_pad)
    if zp_row == NULL:
        raise MemoryError("qdwconv2d_u8s8_nhwc: cannot allocate the padding row")
    memset(zp_row, h.zp_x, h.n_pad)
    cdef const int32_t *bp = <const int32_t *>(&pv[0] + 64)
    cdef const int8_t *wp = <const int8_t *>(&pv[0] + 64 + 8 * h.n_pad)
    cdef const uint8_t *xp = &xv[0, 0, 0, 0]
    cdef qi_dwconv2d_qu8_qc8w_ptr fn = qi_kernel_dwconv2d_qu8_qc8w()
    cdef int t
    cdef size_t b, e
    try:
        with nogil:
            if nt <= 1:
                _qdw_chunk(fn, &g, C, 0, units, xp, bp, wp, h.n_pad, zp_row, &ep)
            else:
                for t in prange(nt, num_threads=nt, schedule="static"):
                    b = _chunk_start(units, nt, t)
                    e = _chunk_start(units, nt, t + 1)
                    _qdw_chunk(fn, &g, C, b, e, xp, bp, wp, h.n_pad, zp_row, &ep)
    finally:
        free(zp_row)
    return out


def qint8_vnni_peak(long long iters):
    """Run the register-only VNNI loop (24 independent zmm vpdpbusd per iteration, 24 * 64 MACs)
    ``iters`` times on this thread; returns a checksum, or -1 when the build lacks AVX-512 VNNI.
    The caller times it (bench/bench_ukernels.py) and must check that the CPU runs the tier."""
    if not qi_cpu_tier_supported(QI_TIER_AVX512VNNI):
        raise ValueError("this CPU (or build) cannot run the AVX-512 VNNI tier")
    cdef long long r
    with nogil:
        r = qi_qint8_vnni_peak(iters)
    return r
