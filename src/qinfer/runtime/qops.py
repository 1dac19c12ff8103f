"""Fast implementations of the quantized IR ops (see reference/qops.py for their definitions).

Design: QConv / QGemm / DynQGemm / QConvTranspose call the int8 kernels with the packed weights
stored in the graph (packed once at quantize time; loading is a memory map). QConv, QGemm and
QConvTranspose steps are ``_kernels.QLayerCall`` objects, which check the weights, scales, epilogue
and geometry when the session is built rather than on every call. Weights packed sparse (SB4W,
reference/sparse.py: the quantizer chose it for a layer pruned below the break-even density) run
on the sparse int8 kernels, same arguments, same result. Quantize / Dequantize / QAdd / QMaxPool /
QGlobalAveragePool / QMulChannel call the streaming C kernels (bit-identical to their numpy
reference); a case those kernels do not take (a broadcasting QAdd, another dtype) returns None and
the planner runs the reference op.
"""
from types import SimpleNamespace

import numpy as np

from ..reference import int4 as ref4
from ..reference import qops as ref
from ..reference import sparse as refsp
from .cpu import _kernels as _k

QOPS = ("QConv", "QGemm", "DynQGemm", "QuantizeU8", "DequantizeU8", "QAdd", "QMaxPool",
        "QGlobalAveragePool", "QMulChannel", "Q4Gemm", "Q4Conv", "DynQ4Gemm", "QConvTranspose",
        "QResize", "QConcat")


def _epilogue(attrs, nt, geometry=False):
    """The keyword arguments of a layer kernel's call, built once per node (merging them per call
    costs the run loop): the epilogue, the thread count and, for a conv, its geometry."""
    out_f32 = attrs.get("out_dtype", "uint8") == "float32"
    kw = dict(out_dtype=np.float32 if out_f32 else np.uint8,
              y_inv_scale=float(attrs.get("y_inv_scale", 1.0)), zp_y=float(attrs.get("zp_y", 0)),
              activation=int(attrs.get("activation", 0)), alpha=float(attrs.get("alpha", 0.0)),
              beta=float(attrs.get("beta", 0.0)), num_threads=nt)
    if geometry:
        kw.update(strides=tuple(attrs.get("strides", (1, 1))),
                  pads=tuple(attrs.get("pads", (0, 0, 0, 0))),
                  dilations=tuple(attrs.get("dilations", (1, 1))))
    return kw


def _native(arr):
    """The same bytes as a native-byte-order array (arrays loaded from a .qinf file say '<f4',
    whose buffer format the kernels' strict checks do not take)."""
    return None if arr is None else arr.view(arr.dtype.newbyteorder("="))


#: layer ops whose third input is the per-channel epilogue scale (DynQ4Gemm's is its bias)
_LAYER_OPS = ("QConv", "QGemm", "DynQGemm", "QConvTranspose", "Q4Gemm", "Q4Conv")


def _channel_scales(packed, scale):
    """``scale`` with one value per output channel, which the kernels take: a stored single value
    (every channel shares it) repeated groups x n times. Every packed layout (QC8W, QDW8, QB4W,
    SB4W: docs/formats.md 2.1-2.3) holds u32 ``groups`` and ``n`` at bytes 8 and 12, and at least
    4 bytes per channel; weights that break this are left to the kernel's own check."""
    if (scale is None or scale.size != 1 or not isinstance(packed, np.ndarray)
            or packed.dtype != np.uint8 or packed.ndim != 1 or packed.size < 16):
        return scale
    groups, n = (int(v) for v in packed[8:16].view("<u4"))
    if not 0 < groups * n <= packed.size // 4:
        return scale
    return np.full(groups * n, scale.reshape(-1)[0], np.float32)


def _prepared(kind, packed, scale, kw, out_layout="nhwc", residual=None):
    """The layer's kernel call prepared once (_kernels.QLayerCall: the weights, scales, epilogue
    and geometry checked at session build, not per call), or None when they do not pass those
    checks (the planner then runs the reference op, which names what is wrong)."""
    if residual is not None:
        kw = dict(kw, residual=residual)
    try:
        return _k.QLayerCall(kind, packed, scale, out_layout=out_layout, **kw)
    except (ValueError, TypeError):
        return None


#: layer ops whose kernels can fuse a following residual QAdd (``residual_params``)
RESIDUAL_OPS = ("QConv", "QGemm", "Q4Conv", "Q4Gemm")


def _qadd_args(attrs):
    """A QAdd's (a_scale, a_zp, b_scale, b_zp, y_inv_scale, zp_y, relu) as its kernels take them
    (qadd_u8, QLayerCall's ``residual``), or None when its attributes are not theirs (the
    reference op then says what is wrong)."""
    try:
        return (float(attrs["a_scale"]), int(attrs["a_zp"]), float(attrs["b_scale"]),
                int(attrs["b_zp"]), float(attrs["y_inv_scale"]), int(attrs["zp_y"]),
                int(attrs.get("activation", 0)) == 1)
    except (KeyError, TypeError, ValueError):
        return None


def residual_params(layer, add):
    """QLayerCall's ``residual`` tuple, less its input index, for ``layer``'s uint8 output feeding
    QAdd ``add``: the layer's output becomes the add's operand a (IEEE addition commutes, so which
    operand it was changes no byte); None when the add's attributes are not the fast path's."""
    args = _qadd_args(add.attrs)
    if args is None or add.inputs[1] != layer.outputs[0]:
        return args
    return args[2:4] + args[0:2] + args[4:]


def make_qop(node, consts, nt, residual=None):
    """A fast function for a quantized node, or None (the planner then runs the reference op).
    ``residual``: QLayerCall's fused residual add for a RESIDUAL_OPS node (input index and QAdd
    parameters), or None."""
    a = node.attrs
    consts = {name: _native(consts.get(name)) for name in node.inputs[1:] if name}
    if node.op in _LAYER_OPS and len(node.inputs) > 2:
        consts[node.inputs[2]] = _channel_scales(consts.get(node.inputs[1]), consts.get(node.inputs[2]))
    if node.op in ("Q4Gemm", "Q4Conv", "DynQ4Gemm"):
        return _make_q4op(node, consts, nt, residual)
    if node.op == "QConv":
        packed, scale = consts.get(node.inputs[1]), consts.get(node.inputs[2])
        if packed is None or scale is None:
            return None
        kind = "spconv" if refsp.is_sparse(packed) else "dw" if a.get("kind") == "dw" else "conv"
        return _prepared(kind, packed, scale, _epilogue(a, nt, geometry=True),
                         "nchw" if a.get("out_layout") == "nchw" else "nhwc", residual)
    if node.op == "QResize":
        params = [consts.get(i) if i else None for i in node.inputs[1:]]
        if any(i and p is None for i, p in zip(node.inputs[1:], params)):
            return None      # computed scales / sizes: the reference op, per call
        maps = {}

        def qresize(inputs, _a, _n):
            x = inputs[0]
            if x.dtype != np.uint8 or x.ndim != 4:
                return None
            src = _per_shape(maps, x.shape, lambda: ref.resize_source_map(x.shape, params, a))
            return [ref.nearest_gather(x, src)]
        return qresize
    if node.op in ("QGemm", "DynQGemm", "QConvTranspose"):
        packed, scale = consts.get(node.inputs[1]), consts.get(node.inputs[2])
        if packed is None or scale is None:
            return None
        if node.op != "DynQGemm":
            qgemm = _prepared("spgemm" if refsp.is_sparse(packed) else "gemm", packed, scale,
                              _epilogue(a, nt), residual=residual if node.op == "QGemm" else None)
            if node.op == "QGemm" or qgemm is None:
                return qgemm
            # QConvTranspose: the same GEMM over the input pixels, rows written as output blocks
            kernel = [int(k) for k in a.get("kernel_shape", ())]
            if len(kernel) != 2:
                return None
            to_nchw = a.get("out_layout") == "nchw"

            def qdeconv(inputs, _a, _n):
                if inputs[0].ndim != 4:
                    return None
                y = qgemm(inputs, _a, _n)
                return None if y is None else [ref.deconv_arrange(y[0], *kernel, to_nchw)]
            return qdeconv
        bias = consts.get(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else None
        act = (int(a.get("activation", 0)), float(a.get("alpha", 0.0)), float(a.get("beta", 0.0)))
        fuse_act = bias is None

        def dynqgemm(inputs, _a, _n):
            x = inputs[0]
            if x.dtype != np.float32:
                return None
            s_x = ref.dynamic_scale(x)
            xq = ref.quantize_u8(x, s_x, ref.DYNAMIC_ZP)
            lead = x.shape[:-1]
            y = _k.qgemm_u8s8(xq.reshape(-1, x.shape[-1]), packed, (scale * s_x).astype(np.float32),
                              out_dtype=np.float32, activation=act[0] if fuse_act else 0,
                              alpha=act[1], beta=act[2], num_threads=nt)
            if not fuse_act:
                y += bias
                if act[0]:
                    _k.bias_act_f32(y, None, 0, act[0], act[1], act[2], nt)
            return [y.reshape(lead + (y.shape[-1],))]
        return dynqgemm
    return _make_stream_op(node.op, a, nt)


def _make_q4op(node, consts, nt, residual=None):
    """Q4Gemm / Q4Conv / DynQ4Gemm on the int4 kernels (qgemm_u8s4, qconv2d_u8s4_nhwc)."""
    a = node.attrs
    if len(node.inputs) < (2 if node.op == "DynQ4Gemm" else 3):
        return None   # (a malformed node: the reference op says what is missing)
    packed = consts.get(node.inputs[1])
    if packed is None:
        return None
    if node.op == "DynQ4Gemm":
        bias = consts.get(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
        if len(node.inputs) > 2 and node.inputs[2] and bias is None:
            return None
        n = ref4.read_header(packed)["n"]
        act = dict(activation=int(a.get("activation", 0)), alpha=float(a.get("alpha", 0.0)),
                   beta=float(a.get("beta", 0.0)))

        def dynq4gemm(inputs, _a, _n):
            x = inputs[0]
            if x.dtype != np.float32:
                return None
            s_x = ref.dynamic_scale(x)
            xq = _k.quantize_u8(np.ascontiguousarray(x), s_x, ref.DYNAMIC_ZP, False, nt)
            y = _k.qgemm_u8s4(xq.reshape(-1, x.shape[-1]), packed, np.full(n, s_x, np.float32),
                              bias=bias, out_dtype=np.float32, num_threads=nt, **act)
            return [y.reshape(x.shape[:-1] + (n,))]
        return dynq4gemm
    scale = consts.get(node.inputs[2])
    if scale is None:
        return None
    # the int4 kernels' call prepared once, as the int8 layers' (QLayerCall: 3.0 -> 1.4 us a call)
    if node.op == "Q4Gemm":
        return _prepared("q4gemm", packed, scale, _epilogue(a, nt), residual=residual)
    return _prepared("q4conv", packed, scale, _epilogue(a, nt, geometry=True),
                     "nchw" if a.get("out_layout") == "nchw" else "nhwc", residual)


def _make_stream_op(op, a, nt):
    if op in ("QuantizeU8", "DequantizeU8"):
        quant = op == "QuantizeU8"
        kern, dtype = (_k.quantize_u8, np.float32) if quant else (_k.dequantize_u8, np.uint8)
        scale, zp = float(a["scale"]), int(a["zero_point"])
        move = a.get("layout") == ("nchw_to_nhwc" if quant else "nhwc_to_nchw")
        cs = a.get("channel_scales") if quant else None
        extra = () if cs is None else (np.asarray(cs, np.float32),)   # per-channel scales [C]

        def convert(inputs, _a, _n):
            x = inputs[0]
            if (x.dtype != dtype or (move and x.ndim != 4)
                    or (extra and (not move or x.shape[1] != extra[0].shape[0]))):
                return None    # the reference op says what is wrong
            return [kern(np.ascontiguousarray(x), scale, zp, move, nt, *extra)]
        return convert
    if op == "QAdd":
        args = _qadd_args(a)
        if args is None:
            return None

        def qadd(inputs, _a, _n):
            x, y = inputs
            if x.shape != y.shape or x.dtype != np.uint8 or y.dtype != np.uint8:
                return None
            return [_k.qadd_u8(np.ascontiguousarray(x), np.ascontiguousarray(y), *args, num_threads=nt)]
        return qadd
    if op == "QMaxPool":
        return _make_maxpool(a, nt, np.uint8, _k.maxpool2d_u8_nhwc, nhwc=True)
    if op == "QGlobalAveragePool":
        scale, zp = float(a["scale"]), int(a["zero_point"])

        def qgap(inputs, _a, _n):
            x = inputs[0]
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] * x.shape[2] == 0:
                return None
            return [_k.gap_u8_nhwc(np.ascontiguousarray(x), scale, zp, nt)]
        return qgap
    if op == "QMulChannel":
        xs, zx, inv, zy = float(a["x_scale"]), int(a["x_zp"]), float(a["y_inv_scale"]), int(a["zp_y"])
        xs32, inv32 = np.float32(xs), np.float32(inv)

        def qmul(inputs, _a, _n):
            x, s = inputs
            if x.dtype != np.uint8 or x.ndim != 4:
                return None
            n, c = x.shape[0], x.shape[3]
            if s.dtype == np.float32 and s.shape == (n, c, 1, 1):
                # the usual gate [N, C, 1, 1]: channel_factors' float32 products, in its order
                m = s.reshape(n, c) * xs32
                m *= inv32
            else:
                m = ref.channel_factors(s, x.shape, xs, inv)
            return [_k.qmul_channel_u8_nhwc(np.ascontiguousarray(x), m, zx, zy, nt)]
        return qmul
    return None


def _maxpool_geometry(attrs, nchw_shape):
    """(kernel, strides, pads incl. the ceil-mode extra, dilations) of a 2-D max pool for the
    kernels, or None (another rank, auto_pad, storage order)."""
    from ..reference.conv import _pool_geometry
    if len(attrs.get("kernel_shape", ())) != 2 or attrs.get("storage_order", 0):
        return None
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    kernel, strides, dilations, begin, end, extra, _ = _pool_geometry(
        "MaxPool", SimpleNamespace(ndim=4, shape=tuple(nchw_shape)), attrs)
    pads = (begin[0], begin[1], end[0] + extra[0], end[1] + extra[1])
    return tuple(kernel), tuple(strides), pads, tuple(dilations)


def _per_shape(cache, shape, make):
    """``cache[shape]``, made by ``make()`` on first use; the cache is emptied when it holds 64
    shapes (bounded for a service fed ever-new shapes)."""
    v = cache.get(shape, cache)
    if v is cache:
        if len(cache) >= 64:
            cache.clear()
        v = cache[shape] = make()
    return v


def _make_maxpool(attrs, nt, dtype, kern, nhwc):
    """A 2-D MaxPool (one output) on the C kernel, its geometry cached per input shape."""
    if len(attrs.get("kernel_shape", ())) != 2:
        return None
    geos = {}

    def maxpool(inputs, _a, n_out):
        x = inputs[0]
        if x.dtype != dtype or x.ndim != 4 or n_out != 1:
            return None
        geo = _per_shape(geos, x.shape, lambda: _maxpool_geometry(
            attrs, (x.shape[0], x.shape[3], x.shape[1], x.shape[2]) if nhwc else x.shape))
        if geo is None:
            return None
        return [kern(np.ascontiguousarray(x), *geo, num_threads=nt)]
    return maxpool


def make_maxpool_f32(attrs, nt):
    """Fast float32 NCHW 2-D MaxPool (one output), or None."""
    return _make_maxpool(attrs, nt, np.float32, _k.maxpool2d_f32_nchw, nhwc=False)
