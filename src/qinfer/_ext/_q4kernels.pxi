# int4 drivers, ``include``d into _kernels.pyx after _qkernels.pxi (they share its buffer checks,
# epilogue parser, output allocation and thread split).
#
# Design: qgemm_u8s4 and qconv2d_u8s4_nhwc check everything before C sees it (ValueError naming
# the argument, got vs expected): the packed weights' header against their byte count (built by
# qinfer.reference.int4.pack_*), the activations against it, the epilogue as for int8, and the
# optional float bias. Only the layout is checked, never the values: any scale or offset gives
# some float output (inf or NaN at worst), and no value can make a kernel read or write out of
# bounds or an int32 block sum wrap (block <= 256, so |16 d| < 2^24). Then the GIL is released
# for the whole call; threads take rectangles of rows x 32-channel panels from _q_split's grid,
# each output element computed whole by one kernel call, so any thread count gives the same bits.

cdef extern from "qinfer/qint4.h":
    enum:
        QI_QB4W_MAGIC
        QI_QB4W_VERSION
        QI_QB4W_NR
        QI_QB4W_BLOCK_MAX

    ctypedef struct qi_qb4w_header:
        uint32_t magic, version, groups, n, k, n_pad, block, nblk, panel_bytes
        int32_t zp_x
        uint32_t kh, kw, cin

ctypedef void (*qi_gemm_qu8_qb4w_ptr)(size_t m, size_t n_begin, size_t n_end, size_t k,
                                      const uint8_t *a, size_t lda, const uint8_t *w,
                                      size_t panel_bytes, size_t block, const float *offset,
                                      const float *bias, const qi_qepi *ep) noexcept nogil

cdef extern from "qinfer/qint4.h":
    ctypedef struct qi_q4conv_problem:
        qi_qconv_problem c
        size_t block, panel_bytes
        const float *offset
        const float *bias
        const uint8_t *w

    size_t qi_q4conv_scratch_bytes(const qi_q4conv_problem *p, size_t rows) nogil
    void qi_q4conv_run(const qi_q4conv_problem *p, qi_gemm_qu8_qb4w_ptr fn, size_t m_begin,
                       size_t m_end, size_t p_begin, size_t p_end, void *scratch) nogil

cdef extern from "qinfer/dispatch.h":
    qi_gemm_qu8_qb4w_ptr qi_kernel_gemm_qu8_qb4w() nogil


cdef int _q4_packed(object packed, Py_buffer *pv, qi_qb4w_header *h) except -1:
    """Acquire packed_w, check its header against its size; fill *h."""
    _qbuf(packed, pv, "packed_w", "B", 1, False,
          "a 1-D C-contiguous uint8 array (from qinfer.reference.int4.pack_*)")
    cdef size_t nbytes = pv.len
    if nbytes < sizeof(qi_qb4w_header):
        raise ValueError(f"packed_w: {nbytes} bytes is shorter than the 64-byte header")
    memcpy(h, pv.buf, sizeof(qi_qb4w_header))
    if h.magic != QI_QB4W_MAGIC:
        raise ValueError(f"packed_w: not int4 packed weights (magic {h.magic:#010x}, expected "
                         f"{QI_QB4W_MAGIC:#010x} 'QB4W'); pack them with "
                         f"qinfer.reference.int4.pack_gemm_qb4w / pack_conv_qb4w")
    if h.version != QI_QB4W_VERSION:
        raise ValueError(f"packed_w: int4 packed format version {h.version}, this build reads "
                         f"{QI_QB4W_VERSION}")
    if (<size_t>pv.buf) % 4:
        raise ValueError("packed_w: the array must be 4-byte aligned (float32 sections)")
    cdef size_t G = h.groups, n = h.n, k = h.k, bs = h.block
    if (G < 1 or n < 1 or k < 1 or G > (1 << 20) or n > (1 << 24) or k > (1 << 24) or bs < 4
            or bs > QI_QB4W_BLOCK_MAX or bs % 4 or h.nblk != (k + bs - 1) // bs
            or h.n_pad != (n + QI_QB4W_NR - 1) // QI_QB4W_NR * QI_QB4W_NR
            or h.panel_bytes != (k + 3) // 4 * 64 + 128 * h.nblk
            or h.zp_x < 0 or h.zp_x > 255):
        raise ValueError(f"packed_w: inconsistent int4 header (groups {G}, n {n}, k {k}, n_pad "
                         f"{h.n_pad}, block {bs}, nblk {h.nblk}, panel_bytes {h.panel_bytes}, "
                         f"zp_x {h.zp_x})")
    if h.kh == 0:
        if h.kw != 0 or h.cin != k or G != 1:
            raise ValueError(f"packed_w: inconsistent GEMM header (kw {h.kw}, cin {h.cin}, "
                             f"groups {G})")
    elif h.kw < 1 or <size_t>h.kh * h.kw * h.cin != k:
        raise ValueError(f"packed_w: inconsistent conv header (kh {h.kh} x kw {h.kw} x cin "
                         f"{h.cin} != k {k})")
    cdef size_t want = 64 + 4 * G * h.n_pad + G * (h.n_pad // QI_QB4W_NR) * h.panel_bytes
    if nbytes != want:
        raise ValueError(f"packed_w: {nbytes} bytes, the header says {want}")
    return 0


cdef object _q4_run(qi_q4conv_problem *pb, object out, int nt_req):
    """Split pb over threads and run it (GIL released for the whole call)."""
    cdef size_t panels = pb.c.groups * (pb.c.n_pad // QI_QB4W_NR)
    cdef _QSplit s
    # work: the multiply-adds, or the weight bytes streamed (x16, as for int8: ~16 B per cycle)
    cdef size_t wbytes = pb.c.groups * pb.c.n * pb.c.k // 2 * 16
    cdef size_t macs = pb.c.m * pb.c.groups * pb.c.n * pb.c.k
    _q_split(&s, pb.c.m, panels, macs if macs > wbytes else wbytes, nt_req)
    cdef size_t r0, r1, p0, p1, per = 0, need
    cdef int t
    cdef int failed = 0
    cdef char *scratch = NULL
    for t in range(s.pr):
        _q_rect(&s, pb.c.m, t * s.pc, &r0, &r1, &p0, &p1)
        need = qi_q4conv_scratch_bytes(pb, r1 - r0) if r1 > r0 else 0
        if need > per:
            per = need
    cdef qi_gemm_qu8_qb4w_ptr fn = qi_kernel_gemm_qu8_qb4w()
    with nogil:
        if s.nt == 1:
            if per:
                scratch = <char *>qi_qint8_scratch(per)
            if per and scratch == NULL:
                failed = 1
            else:
                qi_q4conv_run(pb, fn, 0, pb.c.m, 0, panels, scratch)
        else:
            for t in prange(s.nt, num_threads=s.nt, schedule="static"):
                scratch = <char *>qi_qint8_scratch(per) if per else NULL
                if per and scratch == NULL:
                    failed += 1  # (a reduction: a plain assignment would be lastprivate)
                else:
                    r0 = r1 = p0 = p1 = 0  # assigned here so Cython makes them thread-private
                    _q_rect(&s, pb.c.m, t, &r0, &r1, &p0, &p1)
                    qi_q4conv_run(pb, fn, r0, r1, p0, p1, scratch)
    if failed:
        raise MemoryError(f"int4 conv: cannot allocate {per} bytes of scratch per thread")
    return out


cdef object _q4_call(object x, object packed_w, object scale, object bias, bint conv,
                     object strides, object pads, object dilations, object out, object out_dtype,
                     object y_inv_scale, object zp_y, object activation, object alpha,
                     object beta, object num_threads):
    """The checks and the problem of both drivers; conv False: x is A[M, K] (a GEMM)."""
    cdef Py_buffer pv, xv, sv, ov, bv
    memset(&pv, 0, sizeof(Py_buffer))
    memset(&xv, 0, sizeof(Py_buffer))
    memset(&sv, 0, sizeof(Py_buffer))
    memset(&ov, 0, sizeof(Py_buffer))
    memset(&bv, 0, sizeof(Py_buffer))
    cdef qi_qb4w_header h
    cdef qi_q4conv_problem pb
    cdef qi_qconv_problem *c = &pb.c
    cdef size_t G, N, C
    cdef int nt
    try:
        _q4_packed(packed_w, &pv, &h)
        G = h.groups
        memset(&pb, 0, sizeof(pb))
        if conv:
            if h.kh == 0:
                raise ValueError("packed_w holds GEMM weights; pack conv weights with "
                                 "pack_conv_qb4w")
            _qbuf(x, &xv, "x", "B", 4, False, "a C-contiguous uint8 array of rank 4 (NHWC)")
            N, C = xv.shape[0], xv.shape[3]
            if C != G * h.cin:
                raise ValueError(f"x must have {G * h.cin} channels (groups {G} x {h.cin} per "
                                 f"group, from packed_w), got x of shape {tuple(x.shape)}")
            _geom(&c.geom, xv.shape[1], xv.shape[2], (h.kh, h.kw), strides, pads, dilations)
            shape = (N, c.geom.out_h, c.geom.out_w, G * h.n)
            c.direct = (h.kh == 1 and h.kw == 1 and c.geom.stride_h == 1 and c.geom.stride_w == 1
                        and c.geom.pad_top == 0 and c.geom.pad_left == 0
                        and c.geom.pad_bottom == 0 and c.geom.pad_right == 0)
        else:
            if h.kh != 0:
                raise ValueError("packed_w holds conv weights; use qconv2d_u8s4_nhwc (or pack "
                                 "with pack_gemm_qb4w)")
            _qbuf(x, &xv, "a", "B", 2, False, "a C-contiguous uint8 array of rank 2")
            if <size_t>xv.shape[1] != h.k:
                raise ValueError(f"a must have K = {h.k} columns (the packed weights' K), got a "
                                 f"of shape {tuple(x.shape)}")
            N, C = 1, h.k
            c.geom.in_h = c.geom.out_h = xv.shape[0]
            c.geom.in_w = c.geom.out_w = 1
            c.geom.k_h = c.geom.k_w = c.geom.stride_h = c.geom.stride_w = 1
            c.geom.dil_h = c.geom.dil_w = 1
            c.direct = 1
            shape = (xv.shape[0], h.n)
        _q_epi(&c.ep, scale, &sv, G * h.n, out_dtype, y_inv_scale, zp_y, activation, alpha, beta)
        if bias is not None:
            _qbuf(bias, &bv, "bias", "f", 1, False, "None or a 1-D C-contiguous float32 array")
            if <size_t>bv.shape[0] != G * h.n:
                raise ValueError(f"bias must have {G * h.n} elements (one per output channel), "
                                 f"got {bv.shape[0]}")
            pb.bias = <const float *>bv.buf
        out = _q_out(out, &ov, shape, &c.ep, "N, OH, OW, Cout" if conv else "M, N")
        if (_qoverlap(&ov, &xv) or _qoverlap(&ov, &pv) or _qoverlap(&ov, &sv)
                or _qoverlap(&ov, &bv)):
            raise ValueError(f"out must not overlap {'x' if conv else 'a'}, packed_w, scale or "
                             f"bias")
        nt = _threads(num_threads)
        if ov.len == 0:
            return out
        c.ep.ldo = G * h.n
        c.x = <const uint8_t *>xv.buf
        c.batch, c.cin_total, c.lda = N, C, C
        c.m = N * c.geom.out_h * c.geom.out_w
        c.zp_x = h.zp_x
        c.groups, c.n, c.k, c.n_pad, c.cin = G, h.n, h.k, h.n_pad, h.cin
        pb.block, pb.panel_bytes = h.block, h.panel_bytes
        pb.offset = <const float *>(<char *>pv.buf + 64)
        pb.w = <const uint8_t *>(<char *>pv.buf + 64 + 4 * G * h.n_pad)
        return _q4_run(&pb, out, nt)
    finally:
        _qrelease(&pv, &xv, &sv, &ov)
        PyBuffer_Release(&bv)


def qgemm_u8s4(a, packed_w, scale, bias=None, out=None, out_dtype=np.uint8, y_inv_scale=1.0,
               zp_y=0, activation=0, alpha=0.0, beta=0.0, num_threads=None):
    """int4 GEMM with fused epilogue: a uint8 [M, K] (zero point zp_x), packed_w from
    ``qinfer.reference.int4.pack_gemm_qb4w(q[K, N], s[N, nblk], block, offset_bias, zp_x)``,
    scale float32 [N] (multiplies the block-scaled sum plus the folded offset: s_x, or s_x / s_y),
    bias None or float32 [N] added after the scale -> out [M, N], uint8 (requantized with
    y_inv_scale and zp_y) or float32 (``out_dtype``). ``activation`` as qgemm_u8s8, applied after
    the bias. Bit-identical to qinfer.reference.int4.qgemm for any ``num_threads``."""
    return _q4_call(a, packed_w, scale, bias, False, None, None, None, out, out_dtype,
                    y_inv_scale, zp_y, activation, alpha, beta, num_threads)


def qconv2d_u8s4_nhwc(x, packed_w, scale, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
                      bias=None, out=None, out_dtype=np.uint8, y_inv_scale=1.0, zp_y=0,
                      activation=0, alpha=0.0, beta=0.0, num_threads=None):
    """int4 conv, NHWC: x uint8 [N, H, W, Cin] (zero point zp_x, the padding value too),
    packed_w from ``pack_conv_qb4w(q[Cout, Cin/groups, KH, KW], s[Cout, nblk], block, ...)``
    (kernel size and groups come from it), scale float32 [Cout] -> out [N, OH, OW, Cout];
    ``pads`` = (top, left, bottom, right). Epilogue arguments as qgemm_u8s4. Returns out."""
    return _q4_call(x, packed_w, scale, bias, True, strides, pads, dilations, out, out_dtype,
                    y_inv_scale, zp_y, activation, alpha, beta, num_threads)
