# A quantized layer's kernel call prepared once, ``include``d into _kernels.pyx after the int8 and
# sparse drivers (it calls their checks and their runners).
#
# Design: qgemm_u8s8 / qconv2d_u8s8_nhwc / qdwconv2d_u8s8_nhwc / qspmm_u8s8 / qspconv2d_u8s8_nhwc
# (and the int4 qgemm_u8s4 / qconv2d_u8s4_nhwc) check every argument on every call -- keyword parsing, the packed header and its bias bound, the
# scales, the geometry tuples -- and a small CNN runs 50 such layers of 20-50 us. On a 64x64 1x1 conv
# of one pixel (the kernel's own work a few ns) a call takes 1.31 us, QLayerCall's 0.69 us (0.2 of
# which is the output's np.empty). A session's layers have constant weights, so QLayerCall runs those checks
# once, when the session is built, holds the buffers of the weights and scales (and the arrays), keeps
# the conv geometry per input size, and per call checks only its input, allocates the output and runs
# the same problem through the same runner: the same bytes as the functions. One object serves the
# threads that share a session: a call reads the kept geometry into its own copy, and replaces it
# only with a complete one, in C statements the GIL keeps whole.

cdef object _NDARRAY = np.ndarray

#: QLayerCall kinds: dense GEMM, dense conv, depthwise conv, sparse GEMM, sparse conv, int4 GEMM,
#: int4 conv
cdef enum:
    _QL_GEMM, _QL_CONV, _QL_DW, _QL_SPGEMM, _QL_SPCONV, _QL_Q4GEMM, _QL_Q4CONV


cdef class QLayerCall:
    """A quantized layer's int8 kernel call with its weights, scales and epilogue checked once.

    ``kind``: "gemm" (x uint8 [..., K] -> [..., N], ``pack_gemm_qc8w``), "conv" (NHWC,
    ``pack_conv_qc8w``), "dw" (NHWC, ``pack_dwconv_qc8w``), "spgemm" / "spconv" (the same on
    ``pack_*_sb4w`` weights), "q4gemm" / "q4conv" (int4 ``pack_*_qb4w`` weights, no bias input);
    the other arguments as the functions take them, ``out_layout="nchw"``
    returning a conv's output NCHW. Called as a planner step: ``call(inputs, attrs, n_outputs)`` ->
    [y], or None when ``inputs[0]`` is not uint8 of the kind's rank (the planner then runs the
    reference op); a wrong size raises ValueError (SparseKernelError for the sparse kinds) as the
    functions do. A failed check at construction raises the function's error.

    ``residual=(index, a_scale, a_zp, b_scale, b_zp, y_inv_scale, zp_y, relu)`` fuses a residual
    QAdd after the epilogue (uint8 NHWC output, every kind but "dw"): ``inputs[index]`` is the
    add's other operand b, this layer's requantized output its operand a, and the call returns
    ``qadd_u8(layer(x), inputs[index], ...)``, the same bytes, each block added in place while it is
    still in cache, on the layer's threads. A b that is not a C-contiguous uint8 array of the
    output's shape makes the call return None (the planner then runs the two reference ops)."""
    cdef object packed, scale, out_dtype, strides, pads, dilations
    cdef Py_buffer pv, sv
    cdef qi_qc8w_header h
    cdef qi_sb4w_header sh
    cdef qi_qb4w_header h4
    cdef qi_qepi ep
    cdef int kind, nt
    cdef bint nchw, ready, has_res
    cdef size_t res_index
    cdef qi_qadd_params res_q
    cdef size_t groups, n, k, kh, kw, cin, in_h, in_w
    cdef qi_conv2d_geom g

    def __cinit__(self):
        memset(&self.pv, 0, sizeof(Py_buffer))
        memset(&self.sv, 0, sizeof(Py_buffer))
        self.in_h = self.in_w = <size_t>-1

    def __init__(self, kind, packed_w, scale, out_dtype=np.uint8, y_inv_scale=1.0, zp_y=0,
                 activation=0, alpha=0.0, beta=0.0, num_threads=None, strides=(1, 1),
                 pads=(0, 0, 0, 0), dilations=(1, 1), out_layout="nhwc", residual=None):
        if self.ready or self.packed is not None:
            raise TypeError("QLayerCall is initialized once")
        codes = {"gemm": _QL_GEMM, "conv": _QL_CONV, "dw": _QL_DW, "spgemm": _QL_SPGEMM,
                 "spconv": _QL_SPCONV, "q4gemm": _QL_Q4GEMM, "q4conv": _QL_Q4CONV}
        if kind not in codes:
            raise ValueError(f"kind must be one of {', '.join(codes)}; got {kind!r}")
        gemm = kind in ("gemm", "spgemm", "q4gemm")
        sparse = kind in ("spgemm", "spconv")
        if out_layout not in ("nhwc", "nchw") or (out_layout == "nchw" and gemm):
            raise ValueError(f"out_layout must be 'nhwc' or, for a conv, 'nchw'; got {out_layout!r}")
        self.kind = codes[kind]
        if sparse:
            _sp_packed(packed_w, &self.pv, &self.sh)
            self.groups, self.n, self.k = self.sh.groups, self.sh.n, self.sh.k
            self.kh, self.kw, self.cin = self.sh.kh, self.sh.kw, self.sh.cin
        elif self.kind >= _QL_Q4GEMM:
            _q4_packed(packed_w, &self.pv, &self.h4)
            self.groups, self.n, self.k = self.h4.groups, self.h4.n, self.h4.k
            self.kh, self.kw, self.cin = self.h4.kh, self.h4.kw, self.h4.cin
        else:
            _q_packed(packed_w, &self.pv, &self.h,
                      QI_QC8W_MAGIC_DW if self.kind == _QL_DW else QI_QC8W_MAGIC_GEMM)
            self.groups, self.n, self.k = self.h.groups, self.h.n, self.h.k
            self.kh, self.kw, self.cin = self.h.kh, self.h.kw, self.h.cin
        err = SparseKernelError if sparse else ValueError
        if gemm and self.kh != 0:
            raise err("packed_w holds conv weights; pack GEMM weights with pack_gemm_*")
        if not gemm and self.kh == 0:
            raise err("packed_w holds GEMM weights; pack conv weights with pack_conv_*")
        memset(&self.ep, 0, sizeof(self.ep))
        try:
            _q_epi(&self.ep, scale, &self.sv, self.groups * self.n, out_dtype, y_inv_scale, zp_y,
                   activation, alpha, beta)
            self.nt = _threads(num_threads)
            self.strides, self.pads, self.dilations = tuple(strides), tuple(pads), tuple(dilations)
            if not gemm:   # the geometry's own checks, on an input size its kernel fits
                _geom(&self.g, (self.kh - 1) * 65536 + 1, (self.kw - 1) * 65536 + 1,
                      (self.kh, self.kw), self.strides, self.pads, self.dilations)
        except ValueError as e:
            raise err(str(e)) from None
        self.out_dtype = np.uint8 if self.ep.out_u8 else np.float32
        self.nchw = out_layout == "nchw"
        if residual is not None:
            if self.kind == _QL_DW or not self.ep.out_u8 or self.nchw:
                raise err("a fused residual add needs uint8 NHWC output and a GEMM or conv kind "
                          f"(not 'dw'); got kind {kind!r}, out_dtype {np.dtype(self.out_dtype).name}, "
                          f"out_layout {out_layout!r}")
            if len(residual) != 8:
                raise err("residual must be (index, a_scale, a_zp, b_scale, b_zp, y_inv_scale, "
                          f"zp_y, relu), got {residual!r}")
            index = int(residual[0])
            if index < 1:
                raise err(f"residual's input index must be >= 1 (input 0 is x), got {index}")
            try:
                self.res_q.a_scale = _e_scale(residual[1], "a_scale")
                self.res_q.a_zp = _e_zp(residual[2], "a_zp")
                self.res_q.b_scale = _e_scale(residual[3], "b_scale")
                self.res_q.b_zp = _e_zp(residual[4], "b_zp")
                self.res_q.y_inv_scale = _e_scale(residual[5], "y_inv_scale")
                self.res_q.zp_y = _e_zp(residual[6], "zp_y")
            except ValueError as e:
                raise err(f"residual: {e}") from None
            self.res_q.relu = 1 if residual[7] else 0
            self.res_index = index
            self.has_res = True
        self.packed, self.scale = packed_w, scale
        self.ready = True

    def __dealloc__(self):
        PyBuffer_Release(&self.pv)
        PyBuffer_Release(&self.sv)

    cdef void _q4_fill(self, qi_q4conv_problem *p4, void *out, const void *x,
                       const qi_conv2d_geom *g, size_t N, size_t C, size_t M, bint gemm) noexcept:
        """The int4 problem of one call, as _q4_call builds it (a GEMM is a 1x1 conv over M
        pixels)."""
        cdef qi_qconv_problem *c = &p4.c
        cdef size_t G = self.h4.groups
        memset(p4, 0, sizeof(qi_q4conv_problem))
        c.ep = self.ep
        c.ep.out = out
        c.ep.ldo = G * self.h4.n
        if gemm:
            c.geom.in_h = c.geom.out_h = M
            c.geom.in_w = c.geom.out_w = 1
            c.geom.k_h = c.geom.k_w = c.geom.stride_h = c.geom.stride_w = 1
            c.geom.dil_h = c.geom.dil_w = 1
            c.direct = 1
        else:
            c.geom = g[0]
            c.direct = (self.h4.kh == 1 and self.h4.kw == 1 and g.stride_h == 1 and g.stride_w == 1
                        and g.pad_top == 0 and g.pad_left == 0 and g.pad_bottom == 0
                        and g.pad_right == 0)
        c.x = <const uint8_t *>x
        c.batch, c.cin_total, c.lda = N, C, C
        c.m = N * c.geom.out_h * c.geom.out_w
        c.zp_x = self.h4.zp_x
        c.groups, c.n, c.k, c.n_pad, c.cin = G, self.h4.n, self.h4.k, self.h4.n_pad, self.h4.cin
        p4.block, p4.panel_bytes = self.h4.block, self.h4.panel_bytes
        p4.offset = <const float *>(<char *>self.pv.buf + 64)
        p4.w = <const uint8_t *>(<char *>self.pv.buf + 64 + 4 * G * self.h4.n_pad)

    cdef void _res_fill(self, qi_qconv_problem *c, const uint8_t *res) noexcept:
        """The fused residual add of one call (res NULL: none)."""
        c.res = res
        if res != NULL:
            c.res_fn = qi_kernel_stream_u8()
            c.res_q = self.res_q

    def __call__(self, inputs, attrs=None, n_outputs=1):
        if not self.ready:
            raise ValueError("QLayerCall was not initialized")
        cdef Py_buffer xv, ov, rv
        memset(&xv, 0, sizeof(Py_buffer))
        memset(&ov, 0, sizeof(Py_buffer))
        memset(&rv, 0, sizeof(Py_buffer))
        cdef const uint8_t *res = NULL
        cdef qi_qconv_problem pb
        cdef qi_spconv_problem spb
        cdef qi_q4conv_problem p4
        cdef qi_qepi ep
        cdef qi_conv2d_geom g
        cdef size_t N = 0, C = 0, M = 0, i, cout = self.groups * self.n
        cdef size_t want_c = cout if self.kind == _QL_DW else self.groups * self.cin
        cdef bint gemm = (self.kind == _QL_GEMM or self.kind == _QL_SPGEMM
                          or self.kind == _QL_Q4GEMM)
        cdef bint sparse = self.kind == _QL_SPGEMM or self.kind == _QL_SPCONV
        cdef int nd
        cdef const char *f
        x = inputs[0]
        if type(x) is not _NDARRAY or not x.flags.c_contiguous:
            if getattr(x, "dtype", None) != np.uint8:
                return None
            x = np.ascontiguousarray(x)
        PyObject_GetBuffer(x, &xv, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
        try:
            f = xv.format
            nd = xv.ndim
            if f == NULL or f[0] != b'B' or f[1] != 0 or nd < 1 or (not gemm and nd != 4):
                return None
            err = SparseKernelError if sparse else ValueError
            if gemm:
                if <size_t>xv.shape[nd - 1] != self.k:
                    raise err(f"a must have K = {self.k} columns (the packed weights' K), got a "
                              f"of shape {tuple(x.shape)}")
                M = 1
                for i in range(<size_t>(nd - 1)):
                    M *= <size_t>xv.shape[i]
                N, C = 1, self.k
                out = np.empty(x.shape[:nd - 1] + (self.n,), self.out_dtype)  # (no negative
                # index: this module compiles with wraparound=False)
            else:
                N, C = xv.shape[0], xv.shape[3]
                if C != want_c:
                    raise err(f"x must have {want_c} channels (from packed_w), got x of shape "
                              f"{tuple(x.shape)}")
                # the geometry kept for the last input size, copied while the GIL is held and no
                # Python code runs (threads share this object: each call works on its own copy)
                if <size_t>xv.shape[1] == self.in_h and <size_t>xv.shape[2] == self.in_w:
                    g = self.g
                else:
                    try:
                        _geom(&g, xv.shape[1], xv.shape[2], (self.kh, self.kw), self.strides,
                                self.pads, self.dilations)
                    except ValueError as e:
                        raise err(str(e)) from None
                    self.g = g
                    self.in_h, self.in_w = xv.shape[1], xv.shape[2]
                out = np.empty((N, g.out_h, g.out_w, cout), self.out_dtype)
            PyObject_GetBuffer(out, &ov, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)
            if self.has_res:   # the add's other operand: exactly the output's shape, uint8
                r = inputs[self.res_index] if self.res_index < <size_t>len(inputs) else None
                if (type(r) is not _NDARRAY or r.dtype != np.uint8 or r.shape != out.shape
                        or not r.flags.c_contiguous):
                    return None
                PyObject_GetBuffer(r, &rv, PyBUF_C_CONTIGUOUS)
                res = <const uint8_t *>rv.buf
            if ov.len:
                if self.kind == _QL_DW:
                    ep = self.ep
                    ep.out = ov.buf
                    _qdw_exec(&g, &ep, &self.h, self.pv.buf, <const uint8_t *>xv.buf, N,
                              self.nt)
                elif self.kind >= _QL_Q4GEMM:
                    self._q4_fill(&p4, ov.buf, xv.buf, &g, N, C, M, gemm)
                    self._res_fill(&p4.c, res)
                    _q4_run(&p4, out, self.nt)
                elif sparse:
                    memset(&spb, 0, sizeof(spb))
                    _q_shape(&spb.c, NULL if gemm else &g, M)
                    spb.c.ep = self.ep
                    spb.c.ep.out = ov.buf
                    _sp_fill(&spb, &self.sh, self.pv.buf, xv.buf, N, C)
                    self._res_fill(&spb.c, res)
                    _sp_run(&spb, out, self.nt)
                else:
                    memset(&pb, 0, sizeof(pb))
                    pb.ep = self.ep
                    pb.ep.out = ov.buf
                    if gemm:
                        _qgemm_fill(&pb, &self.h, self.pv.buf, xv.buf, M)
                    else:
                        pb.geom = g
                        _qconv_fill(&pb, &self.h, self.pv.buf, xv.buf, N)
                    self._res_fill(&pb, res)
                    _q_run(&pb, out, self.nt)
        finally:
            PyBuffer_Release(&xv)
            PyBuffer_Release(&ov)
            PyBuffer_Release(&rv)
        if self.nchw:
            return [np.ascontiguousarray(out.transpose(0, 3, 1, 2))]
        return [out]
