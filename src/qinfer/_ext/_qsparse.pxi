# Sparse int8 drivers, ``include``d into _kernels.pyx after _qkernels.pxi (they share its buffer
# checks, epilogue parser, output allocation and per-thread scratch).
#
# Design: qspmm_u8s8 and qspconv2d_u8s8_nhwc check the arguments before C sees them and raise
# SparseKernelError (a qinfer.QinferError and a ValueError, like the int8 drivers' errors) naming
# the argument, got vs expected: the packed weights' 64-byte header against their byte count (built
# by qinfer.reference.sparse.pack_*), the activations against it, the epilogue as for int8, and the
# int32 bound of the bias. The pointer table and the records are not scanned per call (that is
# O(non-zeros), the loader's job: qinfer.ir.verify rejects unsorted or out-of-range blocks at load):
# the kernels clamp every record range and block index, so no content can move an access out of
# bounds. Then the GIL is released for the whole call; threads take rectangles of 16-row units x
# 16-channel units from a pr x pc grid (one region, static), each output element computed whole by
# one kernel call, so any thread count gives the same bits.

from ..errors import QinferError as _QinferError


class SparseKernelError(_QinferError, ValueError):
    """Bad arguments or packed weights for a sparse int8 kernel."""


cdef extern from "qinfer/qsparse.h":
    enum:
        QI_SB4W_MAGIC
        QI_SB4W_VERSION
        QI_SB4W_NR
        QI_SB4W_SEG
        QI_SPMM_MR

    ctypedef struct qi_sb4w_header:
        uint32_t magic, version, groups, n, k, n_pad, kg, seg, nseg, nnzb
        int32_t zp_x
        uint32_t kh, kw, cin, rec_off

    ctypedef struct qi_sb4w_rec:
        uint32_t kb
        int32_t w

cdef extern from "qinfer/qsparse.h":
    ctypedef struct qi_sp_patches:
        pass

ctypedef void (*qi_spmm_qu8_sb4w_ptr)(size_t m, size_t n_begin, size_t n_end, size_t k,
                                      const uint8_t *a, size_t lda, const qi_sp_patches *pa,
                                      const int32_t *bias, const uint32_t *ptr, size_t nseg, size_t seg,
                                      const qi_sb4w_rec *rec, size_t nnzb, const qi_qepi *ep,
                                      void *scratch) noexcept nogil

cdef extern from "qinfer/qsparse.h":
    ctypedef struct qi_spconv_problem:
        qi_qconv_problem c
        const int32_t *bias
        const uint32_t *ptr
        size_t nseg, seg, nnzb
        const qi_sb4w_rec *rec

    size_t qi_spconv_scratch_bytes(const qi_spconv_problem *p, size_t rows) nogil
    void qi_spconv_run(const qi_spconv_problem *p, qi_spmm_qu8_sb4w_ptr fn, size_t m_begin,
                       size_t m_end, size_t u_begin, size_t u_end, void *scratch) nogil

cdef extern from "qinfer/dispatch.h":
    qi_spmm_qu8_sb4w_ptr qi_kernel_spmm_qu8_sb4w() nogil


def sb4w_layout(h):
    """(ptr offset, entries, rec_off, total bytes) of sparse packed weights with header dict ``h``
    (Python integers: no overflow for any header)."""
    cols = int(h["groups"]) * int(h["n_pad"])
    entries = cols * int(h["nseg"]) + 1
    ptr_off = 64 + 8 * cols
    rec_off = (ptr_off + 4 * entries + 63) // 64 * 64
    return ptr_off, entries, rec_off, rec_off + 8 * int(h["nnzb"])


cdef int _sp_packed(object packed, Py_buffer *pv, qi_sb4w_header *h) except -1:
    """Acquire packed_w, check its header against its size and the int32 bound; fill *h."""
    _qbuf(packed, pv, "packed_w", "B", 1, False,
          "a 1-D C-contiguous uint8 array (from qinfer.reference.sparse.pack_*)")
    cdef size_t nbytes = pv.len
    if nbytes < sizeof(qi_sb4w_header):
        raise SparseKernelError(f"packed_w: {nbytes} bytes is shorter than the 64-byte header")
    memcpy(h, pv.buf, sizeof(qi_sb4w_header))
    if h.magic != QI_SB4W_MAGIC:
        raise SparseKernelError(
            f"packed_w: not sparse int8 packed weights (magic {h.magic:#010x}, expected "
            f"{QI_SB4W_MAGIC:#010x} 'SB4W'); pack them with qinfer.reference.sparse.pack_gemm_sb4w "
            f"/ pack_conv_sb4w")
    if h.version != QI_SB4W_VERSION:
        raise SparseKernelError(f"packed_w: sparse packed format version {h.version}, this build "
                                f"reads {QI_SB4W_VERSION}")
    if (<size_t>pv.buf) % 4:
        raise SparseKernelError("packed_w: the array must be 4-byte aligned (int32 sections)")
    cdef size_t G = h.groups, n = h.n, k = h.k
    if (G < 1 or n < 1 or k < 1 or G > (1 << 20) or n > (1 << 24) or k > (1 << 24)
            or h.n_pad != (n + QI_SB4W_NR - 1) // QI_SB4W_NR * QI_SB4W_NR
            or h.kg != (k + 3) // 4 or h.seg < 1 or h.seg > (1 << 24)
            or h.nseg != (h.kg + h.seg - 1) // h.seg or h.zp_x < 0 or h.zp_x > 255):
        raise SparseKernelError(
            f"packed_w: inconsistent sparse header (groups {G}, n {n}, k {k}, n_pad {h.n_pad}, "
            f"kg {h.kg}, seg {h.seg}, nseg {h.nseg}, zp_x {h.zp_x})")
    if h.kh == 0:
        if h.kw != 0 or h.cin != k or G != 1:
            raise SparseKernelError(f"packed_w: inconsistent GEMM header (kw {h.kw}, cin {h.cin}, "
                                    f"groups {G})")
    elif h.kw < 1 or <size_t>h.kh * h.kw * h.cin != k:
        raise SparseKernelError(f"packed_w: inconsistent conv header (kh {h.kh} x kw {h.kw} x cin "
                                f"{h.cin} != k {k})")
    hd = {"groups": G, "n_pad": h.n_pad, "nseg": h.nseg, "nnzb": h.nnzb}
    _, _, rec_off, want = sb4w_layout(hd)
    if h.rec_off != rec_off or nbytes != want:
        raise SparseKernelError(f"packed_w: {nbytes} bytes with records at {h.rec_off}, the header "
                                f"says {want} with records at {rec_off}")
    if <unsigned long long>h.nnzb > <unsigned long long>G * n * h.kg:
        raise SparseKernelError(f"packed_w: {h.nnzb} non-zero blocks, more than the {G * n * h.kg} "
                                f"the layer has")
    # int32 bound as int8: |bias| + K * 255 * 128 < 2^31 (a branch-free min / max scan)
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
        raise SparseKernelError(f"packed_w: K = {k} with |bias| up to {bmax} can overflow the int32 "
                                f"accumulator (needs K * 255 * 128 + |bias| < 2**31)")
    return 0


cdef struct _SpSplit:
    int nt, pr, pc
    size_t ru, cu


cdef void _sp_split(_SpSplit *s, size_t M, size_t units, size_t work, double pack,
                    int nt) noexcept nogil:
    """pr x pc grid of nt' <= nt threads over (M/16 row units) x (16-channel units) minimizing the
    largest share's cost ct * (rt + 2.5 ceil(rt / 8)) + pack * rt: per channel, each row unit is
    one vpdpbusd per block, and each row block (up to 8 units, the kernel's) costs about 2.5 more
    in record loads and loop overhead; re-packing a row unit costs `pack` channel units, repeated
    by every thread that splits the channels. The re-packing is a fixed cost per K byte while a
    channel unit's work follows the block density d, so pack = 0.2 / d (measured on ResNet-18's
    layers at d = 0.2, 2 threads: 784-row layers run 1.85x 1 thread with their rows split, 1.1-1.4x
    with their channels split). So a batch-1 layer of few rows (ResNet-18's 7x7 layers: 4 row
    units) splits its channels and keeps its 4-group row block (splitting its rows would leave each
    thread two groups per block), a layer of many rows splits its rows."""
    cdef size_t ru = (M + 15) // 16
    cdef size_t by_work = work // _Q_MIN_MACS_PER_THREAD
    cdef int pr, best_pr = 1, best_pc = 1
    cdef size_t rt, ct
    cdef double cost, best = 1e300
    if by_work < <size_t>nt:
        nt = <int>by_work if by_work > 1 else 1
    if nt > 1 and ru * units < <size_t>nt:
        nt = <int>(ru * units) if ru * units > 1 else 1
    for pr in range(nt, 0, -1):
        if nt % pr:
            continue
        rt = (ru + pr - 1) // pr
        ct = (units + nt // pr - 1) // (nt // pr)
        cost = <double>ct * (rt + 2.5 * ((rt + 7) // 8)) + pack * rt
        if cost < best:
            best, best_pr, best_pc = cost, pr, nt // pr
    s.nt, s.pr, s.pc, s.ru, s.cu = nt, best_pr, best_pc, ru, units


cdef inline void _sp_rect(const _SpSplit *s, size_t M, int t, size_t *r0, size_t *r1, size_t *u0,
                          size_t *u1) noexcept nogil:
    cdef size_t tr = <size_t>t // <size_t>s.pc, tc = <size_t>t % <size_t>s.pc
    r0[0] = s.ru * tr // <size_t>s.pr * 16
    r1[0] = s.ru * (tr + 1) // <size_t>s.pr * 16
    if r1[0] > M:
        r1[0] = M
    if r0[0] > M:
        r0[0] = M
    u0[0] = s.cu * tc // <size_t>s.pc
    u1[0] = s.cu * (tc + 1) // <size_t>s.pc


cdef object _sp_run(qi_spconv_problem *pb, object out, int nt_req):
    """Split pb over threads and run it (GIL released for the whole call)."""
    cdef size_t units = pb.c.groups * (pb.c.n_pad // QI_SB4W_NR)
    cdef _SpSplit s
    # work: the useful multiply-adds plus the re-packing (a byte per row per K per thread)
    cdef size_t work = pb.c.m * pb.nnzb * 4 + pb.c.m * pb.c.k * pb.c.groups
    cdef size_t slots = units * QI_SB4W_NR * ((pb.c.k + 3) // 4)  # block slots: density's denominator
    cdef double d = <double>pb.nnzb / <double>slots if slots else 1.0
    _sp_split(&s, pb.c.m, units, work, 0.2 / (d if d > 0.01 else 0.01), nt_req)
    cdef size_t r0, r1, u0, u1, per = 0, need
    cdef int t
    cdef int failed = 0
    cdef char *scratch
    for t in range(s.pr):
        _sp_rect(&s, pb.c.m, t * s.pc, &r0, &r1, &u0, &u1)
        need = qi_spconv_scratch_bytes(pb, r1 - r0) if r1 > r0 else 0
        if need > per:
            per = need
    cdef qi_spmm_qu8_sb4w_ptr fn = qi_kernel_spmm_qu8_sb4w()
    with nogil:
        if s.nt == 1:
            scratch = <char *>qi_qint8_scratch(per)
            if scratch == NULL:
                failed = 1
            else:
                qi_spconv_run(pb, fn, 0, pb.c.m, 0, units, scratch)
        else:
            for t in prange(s.nt, num_threads=s.nt, schedule="static"):
                scratch = <char *>qi_qint8_scratch(per)
                if scratch == NULL:
                    failed += 1  # (a reduction: a plain assignment would be lastprivate)
                else:
                    r0 = r1 = u0 = u1 = 0  # assigned here so Cython makes them thread-private
                    _sp_rect(&s, pb.c.m, t, &r0, &r1, &u0, &u1)
                    qi_spconv_run(pb, fn, r0, r1, u0, u1, scratch)
    if failed:
        raise MemoryError(f"sparse int8 conv: cannot allocate {per} bytes of scratch per thread")
    return out


cdef void _sp_fill(qi_spconv_problem *pb, const qi_sb4w_header *h, const void *packed,
                   const void *x, size_t N, size_t C) noexcept:
    """The problem of a checked call (pb.c.geom, pb.c.direct and pb.c.ep filled): x [N, H, W, C],
    or A [M, K] with N = 1, C = K as a 1x1 conv over M pixels."""
    cdef qi_qconv_problem *c = &pb.c
    cdef size_t G = h.groups
    c.ep.ldo = G * h.n
    c.x = <const uint8_t *>x
    c.batch, c.cin_total, c.lda = N, C, C
    c.m = N * c.geom.out_h * c.geom.out_w
    c.zp_x = h.zp_x
    c.groups, c.n, c.k, c.k_pad, c.n_pad, c.cin = G, h.n, h.k, (h.k + 3) // 4 * 4, h.n_pad, h.cin
    pb.bias = <const int32_t *>(<const char *>packed + 64)
    pb.ptr = <const uint32_t *>(<const char *>packed + 64 + 8 * G * h.n_pad)
    pb.nseg, pb.seg, pb.nnzb = h.nseg, h.seg, h.nnzb
    pb.rec = <const qi_sb4w_rec *>(<const char *>packed + h.rec_off)


cdef object _sp_call(object x, object packed_w, object scale, bint conv, object strides,
                     object pads, object dilations, object out, object out_dtype,
                     object y_inv_scale, object zp_y, object activation, object alpha,
                     object beta, object num_threads):
    """The checks and the problem of both drivers; conv False: x is A[M, K] (a GEMM)."""
    cdef Py_buffer pv, xv, sv, ov
    memset(&pv, 0, sizeof(Py_buffer))
    memset(&xv, 0, sizeof(Py_buffer))
    memset(&sv, 0, sizeof(Py_buffer))
    memset(&ov, 0, sizeof(Py_buffer))
    cdef qi_sb4w_header h
    cdef qi_spconv_problem pb
    cdef qi_qconv_problem *c = &pb.c
    cdef size_t G, N, C
    cdef int nt
    try:
        _sp_packed(packed_w, &pv, &h)
        G = h.groups
        memset(&pb, 0, sizeof(pb))
        if conv:
            if h.kh == 0:
                raise SparseKernelError("packed_w holds GEMM weights; pack conv weights with "
                                        "pack_conv_sb4w")
            _qbuf(x, &xv, "x", "B", 4, False, "a C-contiguous uint8 array of rank 4 (NHWC)")
            N, C = xv.shape[0], xv.shape[3]
            if C != G * h.cin:
                raise SparseKernelError(f"x must have {G * h.cin} channels (groups {G} x {h.cin} "
                                        f"per group, from packed_w), got x of shape {tuple(x.shape)}")
            _geom(&c.geom, xv.shape[1], xv.shape[2], (h.kh, h.kw), strides, pads, dilations)
            shape = (N, c.geom.out_h, c.geom.out_w, G * h.n)
            _q_shape(c, &c.geom, 0)
        else:
            if h.kh != 0:
                raise SparseKernelError("packed_w holds conv weights; use qspconv2d_u8s8_nhwc (or "
                                        "pack with pack_gemm_sb4w)")
            _qbuf(x, &xv, "a", "B", 2, False, "a C-contiguous uint8 array of rank 2")
            if <size_t>xv.shape[1] != h.k:
                raise SparseKernelError(f"a must have K = {h.k} columns (the packed weights' K), "
                                        f"got a of shape {tuple(x.shape)}")
            N, C = 1, h.k
            _q_shape(c, NULL, xv.shape[0])
            shape = (xv.shape[0], h.n)
        _q_epi(&c.ep, scale, &sv, G * h.n, out_dtype, y_inv_scale, zp_y, activation, alpha, beta)
        out = _q_out(out, &ov, shape, &c.ep, "N, OH, OW, Cout" if conv else "M, N")
        if _qoverlap(&ov, &xv) or _qoverlap(&ov, &pv) or _qoverlap(&ov, &sv):
            raise SparseKernelError(f"out must not overlap {'x' if conv else 'a'}, packed_w or scale")
        nt = _threads(num_threads)
        if ov.len == 0:
            return out
        _sp_fill(&pb, &h, pv.buf, xv.buf, N, C)
        return _sp_run(&pb, out, nt)
    except SparseKernelError:
        raise
    except ValueError as e:
        raise SparseKernelError(str(e)) from None
    finally:
        _qrelease(&pv, &xv, &sv, &ov)


def qspmm_u8s8(a, packed_w, scale, out=None, out_dtype=np.uint8, y_inv_scale=1.0, zp_y=0,
               activation=0, alpha=0.0, beta=0.0, num_threads=None):
    """Sparse int8 GEMM with fused epilogue: a uint8 [M, K] (zero point zp_x), packed_w from
    ``qinfer.reference.sparse.pack_gemm_sb4w(w[K, N], bias_q, zp_x)`` (the non-zero 1x4 blocks
    along K of each output channel; bias folded with zp_x), scale float32 [N] -> out [M, N], uint8
    (requantized with y_inv_scale and zp_y) or float32 (``out_dtype``). Epilogue arguments as
    qgemm_u8s8; the result equals qgemm_u8s8 on the same weights, bit for bit, for any
    ``num_threads``. Returns out."""
    return _sp_call(a, packed_w, scale, False, None, None, None, out, out_dtype, y_inv_scale,
                    zp_y, activation, alpha, beta, num_threads)


def qspconv2d_u8s8_nhwc(x, packed_w, scale, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
                        out=None, out_dtype=np.uint8, y_inv_scale=1.0, zp_y=0, activation=0,
                        alpha=0.0, beta=0.0, num_threads=None):
    """Sparse int8 conv, NHWC: x uint8 [N, H, W, Cin] (zero point zp_x, the padding value too),
    packed_w from ``pack_conv_sb4w(w[Cout, Cin/groups, KH, KW], bias_q, zp_x, groups)`` (kernel size
    and groups come from it), scale float32 [Cout] -> out [N, OH, OW, Cout]; ``pads`` = (top, left,
    bottom, right). 1x1 stride-1 unpadded convs read x in place, others go through the int8
    driver's im2col blocks. Epilogue arguments as qgemm_u8s8. Returns out."""
    return _sp_call(x, packed_w, scale, True, strides, pads, dilations, out, out_dtype,
                    y_inv_scale, zp_y, activation, alpha, beta, num_threads)
