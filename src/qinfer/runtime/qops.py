"""Fast implementations of the quantized IR ops (see reference/qops.py for their definitions).

Design: QConv / QGemm / DynQGemm call the int8 kernels with the packed weights stored in the graph
(packed once at quantize time; loading is a memory map). Quantize / Dequantize / QAdd are numpy
passes over the activation, the same code as their reference (one definition of the rounding).
"""
import numpy as np

from ..reference import qops as ref
from .cpu import _kernels as _k

QOPS = ("QConv", "QGemm", "DynQGemm", "QuantizeU8", "DequantizeU8", "QAdd")


def _epilogue(attrs):
    out_f32 = attrs.get("out_dtype", "uint8") == "float32"
    return dict(out_dtype=np.float32 if out_f32 else np.uint8,
                y_inv_scale=float(attrs.get("y_inv_scale", 1.0)), zp_y=int(attrs.get("zp_y", 0)),
                activation=int(attrs.get("activation", 0)), alpha=float(attrs.get("alpha", 0.0)),
                beta=float(attrs.get("beta", 0.0)))


def _native(arr):
    """The same bytes as a native-byte-order array (arrays loaded from a .qinf file say '<f4',
    whose buffer format the kernels' strict checks do not take)."""
    return None if arr is None else arr.view(arr.dtype.newbyteorder("="))


def make_qop(node, consts, nt):
    """A fast function for a quantized node, or None (the planner then runs the reference op)."""
    a = node.attrs
    consts = {name: _native(consts.get(name)) for name in node.inputs[1:] if name}
    if node.op == "QConv":
        packed, scale = consts.get(node.inputs[1]), consts.get(node.inputs[2])
        if packed is None or scale is None:
            return None
        geo = dict(strides=tuple(a.get("strides", (1, 1))), pads=tuple(a.get("pads", (0, 0, 0, 0))),
                   dilations=tuple(a.get("dilations", (1, 1))))
        kern = _k.qdwconv2d_u8s8_nhwc if a.get("kind") == "dw" else _k.qconv2d_u8s8_nhwc
        ep = _epilogue(a)
        to_nchw = a.get("out_layout") == "nchw"

        def qconv(inputs, _a, _n):
            x = inputs[0]
            if x.dtype != np.uint8 or x.ndim != 4:
                return None
            y = kern(np.ascontiguousarray(x), packed, scale, **geo, **ep, num_threads=nt)
            return [np.ascontiguousarray(y.transpose(0, 3, 1, 2)) if to_nchw else y]
        return qconv
    if node.op in ("QGemm", "DynQGemm"):
        packed, scale = consts.get(node.inputs[1]), consts.get(node.inputs[2])
        if packed is None or scale is None:
            return None
        if node.op == "QGemm":
            ep = _epilogue(a)

            def qgemm(inputs, _a, _n):
                x = inputs[0]
                if x.dtype != np.uint8:
                    return None
                lead = x.shape[:-1]
                y = _k.qgemm_u8s8(np.ascontiguousarray(x).reshape(-1, x.shape[-1]), packed, scale, **ep,
                                  num_threads=nt)
                return [y.reshape(lead + (y.shape[-1],))]
            return qgemm
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
    return None     # QuantizeU8 / DequantizeU8 / QAdd: the numpy definition is the fast path
