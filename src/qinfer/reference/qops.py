"""Reference (numpy) implementations of qinfer's quantized IR ops (domain "qinfer").

The quantizer rewrites Conv / Gemm / MatMul into these ops; the runtime runs them on the int8
kernels (runtime/qops.py) and these definitions are the oracle (and what the reference executor
runs, e.g. to calibrate or evaluate a quantized graph layer by layer).

- QuantizeU8(x f32)            -> u8: q = clamp(rint(x / scale) + zp, 0, 255), optional NCHW -> NHWC;
                                   with ``channel_scales`` (NCHW -> NHWC only) channel c divides by
                                   channel_scales[c]: a conv reading it folds them into its weights
- DequantizeU8(q u8)           -> f32: scale * (q - zp), optional NHWC -> NCHW
- QConv(x u8 NHWC, packed, s)  -> u8 NHWC (requantized) or f32 (NHWC or NCHW); ``kind`` "conv" | "dw"
- QGemm(x u8 [.., K], packed, s) -> u8 or f32 [.., N]
  (QConv "conv" / QGemm weights may be sparse, SB4W of reference/sparse.py: the same int8 weights
  stored as their non-zero 1x4 blocks; the arithmetic, and so this definition, is the dense one)
- QConvTranspose(x u8 NHWC, packed, s) -> u8 NHWC or f32 NCHW: a ConvTranspose whose windows do
                                   not overlap (strides = kernel_shape, no padding): QGemm over the
                                   input pixels with KH*KW*C columns in (ky, kx, c) order, each
                                   pixel's row then written as its KH x KW output block
- QResize(x u8 NHWC, roi, scales, sizes) -> u8 NHWC: nearest Resize (the float op's parameters,
                                   NCHW order); the same scale and zero point
- QConcat(x u8 NHWC, ...)       -> u8 NHWC: Concat along ``axis``, inputs not already in the output's
                                   scale / zero point requantized to it
- QAdd(a u8, b u8)             -> u8: requant((a - za) * sa + (b - zb) * sb), optional ReLU
- DynQGemm(x f32 [.., K], packed, w_scale) -> f32: x quantized per call, symmetric around 128
- QMaxPool(x u8 NHWC)           -> u8 NHWC: MaxPool's attributes; max commutes with quantization,
                                   so the output keeps the input's scale and zero point
- QGlobalAveragePool(x u8 NHWC) -> f32 NCHW [N, C, 1, 1]: (float32(sum) / float32(H*W) - zp) * scale
- QMulChannel(x u8 NHWC, s f32 [N|1, C, 1, 1]) -> u8 NHWC: x times a per-channel factor (the gate
                                   of a squeeze-excitation block), requantized
- Q4Gemm / Q4Conv(x, packed int4, s) -> as QGemm / QConv with int4 weights (reference/int4.py):
                                   s is the per-call scale (s_x per channel), bias folded in the packing
- DynQ4Gemm(x f32 [.., K], packed int4[, bias f32]) -> f32: x quantized per call as DynQGemm's
Attributes carry the epilogue: activation (code), alpha, beta, out_dtype ("uint8"|"float32"),
y_inv_scale (1 / output scale), zp_y, out_layout ("nhwc"|"nchw"). A QGemm fed by a uint8 Flatten
of NHWC data carries k_order_hwc = [C, H, W]: its packed weights' K rows are in (h, w, c) order
(informational: the kernels need nothing; tools that read the weights back map them).
"""
import numpy as np

from . import int4 as q4
from . import quantized as q
from .registry import register
from .shape import replicate_hw, resize
from ..errors import InvalidInputError, UnsupportedOperatorError

_f = np.float32


def quantize_u8(x, scale, zp, to_nhwc=False, channel_scales=None):
    """THE activation rounding rule: float32 division, round half to even, add the zero point,
    NaN -> zero point, saturate to [0, 255]. ``to_nhwc`` also moves channels last (one strided
    pass instead of a transpose copy); ``channel_scales`` (with ``to_nhwc``): channel c of the
    NCHW x is divided by channel_scales[c] instead of ``scale`` (one zero point for all)."""
    x = np.asarray(x, np.float32)
    div = _f(scale)
    if channel_scales is not None:
        div = np.asarray(channel_scales, np.float32)
        if not to_nhwc or x.ndim != 4 or div.shape != (x.shape[1],):
            raise InvalidInputError(f"QuantizeU8: channel_scales of shape {list(div.shape)} needs an "
                                    f"NCHW input with that many channels, got {list(x.shape)}")
    if to_nhwc and x.ndim == 4:
        x = x.transpose(0, 2, 3, 1)
    t = np.empty(x.shape, np.float32)
    np.divide(x, div, out=t)
    np.rint(t, out=t)
    t += _f(zp)
    np.nan_to_num(t, copy=False, nan=float(zp))
    np.clip(t, 0, 255, out=t)
    return t.astype(np.uint8)


def dequantize_u8(x, scale, zp, to_nchw=False):
    """scale * (q - zp) in float32 (q - zp is exact in float32); ``to_nchw`` moves channels first."""
    if to_nchw and x.ndim == 4:
        x = x.transpose(0, 3, 1, 2)
    y = np.empty(x.shape, np.float32)
    np.subtract(x, _f(zp), out=y, dtype=np.float32)
    y *= _f(scale)
    return y


def _to_nchw(x):
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x


@register("QuantizeU8")
def quantize_op(inputs, attrs, n):
    return [quantize_u8(inputs[0], attrs["scale"], attrs["zero_point"],
                        attrs.get("layout") == "nchw_to_nhwc", attrs.get("channel_scales"))]


@register("DequantizeLinear")
def dequantize_linear(inputs, attrs, n):
    """ONNX DequantizeLinear, per tensor or per axis: y = (x - zero_point) * scale in float32.
    (Blocked scales, opset 21's ``block_size``, are not supported.)"""
    x, scale = np.asarray(inputs[0]), np.asarray(inputs[1])
    zp = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
    if x.dtype not in (np.int8, np.uint8, np.int32):
        raise UnsupportedOperatorError(f"DequantizeLinear: x must be int8, uint8 or int32, got {x.dtype}")
    if int(attrs.get("block_size", 0) or 0):
        raise UnsupportedOperatorError("DequantizeLinear: blocked scales (block_size) are not supported")
    if scale.dtype != np.float32 or scale.ndim > 1:
        raise UnsupportedOperatorError(f"DequantizeLinear: x_scale must be a float32 scalar or 1-D, "
                                       f"got {scale.dtype} {list(scale.shape)}")
    shape = [1] * x.ndim
    if scale.ndim == 1:
        axis = int(attrs.get("axis", 1))
        if not -x.ndim <= axis < x.ndim or scale.shape[0] != x.shape[axis]:
            raise InvalidInputError(f"DequantizeLinear: x_scale of shape {list(scale.shape)} does not "
                                    f"match axis {axis} of x {list(x.shape)}")
        shape[axis] = scale.shape[0]
    y = x.astype(np.float32)
    if zp is not None:
        zp = np.asarray(zp)
        if zp.shape != scale.shape or zp.dtype != x.dtype:
            raise InvalidInputError(f"DequantizeLinear: x_zero_point {zp.dtype} {list(zp.shape)} does "
                                    f"not match x_scale {list(scale.shape)} / x {x.dtype}")
        y = y - zp.astype(np.float32).reshape(shape if scale.ndim else ())
    return [y * scale.reshape(shape if scale.ndim else ())]


@register("DequantizeInt4")
def dequantize_int4(inputs, attrs, n):
    """Rows of int4 values in blocks (quant/constants.py): ``packed`` uint8 [rows, ceil(cols / 2)]
    (int4.pack_rows), ``scales`` float32 [rows, ceil(cols / block)] -> float32 [rows, cols],
    ``q * scales[row, col // block]``."""
    packed, scales = inputs[0], inputs[1]
    cols, block = attrs.get("cols"), attrs.get("block")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (cols, block)):
        raise InvalidInputError(f"DequantizeInt4: attributes cols and block must be integers, got "
                                f"{cols!r} and {block!r}")
    cols, block = int(cols), int(block)
    if not (isinstance(packed, np.ndarray) and packed.dtype == np.uint8 and packed.ndim == 2):
        raise InvalidInputError(f"DequantizeInt4: packed must be uint8 [rows, ceil(cols / 2)], got "
                                f"{getattr(packed, 'dtype', type(packed).__name__)} "
                                f"{list(np.shape(packed))}")
    if cols < 1 or block < 1 or packed.shape[1] != (cols + 1) // 2:
        raise InvalidInputError(f"DequantizeInt4: cols {cols} and block {block} do not fit packed "
                                f"rows of {packed.shape[1]} bytes")
    nblk = -(-cols // block)
    if not (isinstance(scales, np.ndarray) and scales.dtype == np.float32
            and scales.shape == (packed.shape[0], nblk)):
        raise InvalidInputError(f"DequantizeInt4: scales must be float32 {[packed.shape[0], nblk]}, "
                                f"got {getattr(scales, 'dtype', None)} {list(np.shape(scales))}")
    q = q4.unpack_rows(packed, cols).astype(np.float32)
    return [q * np.repeat(scales, block, axis=1)[:, :cols]]


@register("PackQC8W")
def pack_qc8w(inputs, attrs, n):
    """Packed int8 weights stored compact (quant/storage.py): ``w`` int8 in the layer's layout
    (kind "gemm": [K, N]; "conv": [Cout, Cin/groups, KH, KW]; "dw": [C, 1, KH, KW]) and ``bias``
    int32 [N | Cout | C] -> the uint8 blob the int8 kernels read (docs/formats.md 2.1), with the
    activation zero point ``zp_x`` folded into the bias."""
    from ..quant import storage
    w, bias = inputs[0], inputs[1]
    kind, groups, zp_x = attrs.get("kind"), attrs.get("groups", 1), attrs.get("zp_x")
    if kind not in ("gemm", "conv", "dw"):
        raise InvalidInputError(f"PackQC8W: kind must be 'gemm', 'conv' or 'dw', got {kind!r}")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (groups, zp_x)):
        raise InvalidInputError(f"PackQC8W: attributes groups and zp_x must be integers, got "
                                f"{groups!r} and {zp_x!r}")
    rank = {"gemm": 2, "conv": 4, "dw": 4}[kind]
    if not (isinstance(w, np.ndarray) and w.dtype == np.int8 and w.ndim == rank and w.size):
        raise InvalidInputError(f"PackQC8W ({kind}): w must be a non-empty int8 array of rank {rank}, "
                                f"got {getattr(w, 'dtype', type(w).__name__)} {list(np.shape(w))}")
    channels = w.shape[1] if kind == "gemm" else w.shape[0]
    if not (isinstance(bias, np.ndarray) and bias.dtype == np.int32 and bias.shape == (channels,)):
        raise InvalidInputError(f"PackQC8W ({kind}): bias must be int32 [{channels}], got "
                                f"{getattr(bias, 'dtype', type(bias).__name__)} {list(np.shape(bias))}")
    if kind == "dw" and w.shape[1] != 1:
        raise InvalidInputError(f"PackQC8W (dw): w must be [C, 1, KH, KW], got {list(w.shape)}")
    from ..ir.verify import MAX_TENSOR_BYTES
    want = storage.packed_bytes(w.shape, kind, int(groups))
    if want > MAX_TENSOR_BYTES:
        raise InvalidInputError(f"PackQC8W ({kind}): w {list(w.shape)} would pack into {want:,} bytes, "
                                f"more than the {MAX_TENSOR_BYTES:,} one value may take")
    try:
        return [storage.pack(w, bias, kind, int(groups), int(zp_x))]
    except ValueError as e:
        raise InvalidInputError(f"PackQC8W ({kind}): {e}") from None


@register("DequantizeU8")
def dequantize_op(inputs, attrs, n):
    return [dequantize_u8(inputs[0], attrs["scale"], attrs["zero_point"],
                          attrs.get("layout") == "nhwc_to_nchw")]


def epilogue_kwargs(attrs):
    return dict(act=int(attrs.get("activation", 0)), alpha=float(attrs.get("alpha", 0.0)),
                beta=float(attrs.get("beta", 0.0)), out_u8=attrs.get("out_dtype", "uint8") == "uint8",
                y_inv_scale=float(attrs.get("y_inv_scale", 1.0)), zp_y=float(attrs.get("zp_y", 0)))


@register("QConv")
def qconv(inputs, attrs, n):
    x, packed, scale = inputs[:3]
    u = q.unpack_qc8w(packed)
    h = u["header"]
    geo = dict(strides=tuple(attrs.get("strides", (1, 1))), pads=tuple(attrs.get("pads", (0, 0, 0, 0))),
               dilations=tuple(attrs.get("dilations", (1, 1))))
    if attrs.get("kind") == "dw":
        y = q.qdwconv2d_nhwc(x, u["w"], scale, u["bias_q"], h["zp_x"], **geo, **epilogue_kwargs(attrs))
    else:
        y = q.qconv2d_nhwc(x, u["w"], scale, u["bias_q"], h["zp_x"], groups=h["groups"], **geo,
                           **epilogue_kwargs(attrs))
    if attrs.get("out_layout") == "nchw":
        y = _to_nchw(y)
    return [y]


@register("QGemm")
def qgemm(inputs, attrs, n):
    x, packed, scale = inputs[:3]
    u = q.unpack_qc8w(packed)
    lead = x.shape[:-1]
    y = q.qgemm(x.reshape(-1, x.shape[-1]), u["w"], scale, u["bias_q"], u["header"]["zp_x"],
                **epilogue_kwargs(attrs))
    return [y.reshape(lead + (y.shape[-1],))]


def deconv_arrange(y, kh, kw, to_nchw=False):
    """A transposed conv's GEMM result [N, H, W, KH * KW * C] (columns in (ky, kx, c) order) as
    its output: NHWC [N, H * KH, W * KW, C], or NCHW [N, C, H * KH, W * KW] (``to_nchw``)."""
    n, h, w, cols = y.shape
    if kh < 1 or kw < 1 or cols % (kh * kw):
        raise InvalidInputError(f"QConvTranspose: {cols} GEMM columns are not a multiple of the "
                                f"{kh}x{kw} kernel")
    y6 = y.reshape(n, h, w, kh, kw, cols // (kh * kw))
    if to_nchw:
        return np.ascontiguousarray(y6.transpose(0, 5, 1, 3, 2, 4)).reshape(n, -1, h * kh, w * kw)
    return np.ascontiguousarray(y6.transpose(0, 1, 3, 2, 4, 5)).reshape(n, h * kh, w * kw, -1)


@register("QConvTranspose")
def qconvtranspose(inputs, attrs, n):
    x = inputs[0]
    if x.ndim != 4:
        raise InvalidInputError(f"QConvTranspose: x must be uint8 NHWC (rank 4), got shape {list(x.shape)}")
    kh, kw = (int(k) for k in attrs["kernel_shape"])
    y = qgemm(inputs, attrs, n)[0]
    return [deconv_arrange(y, kh, kw, attrs.get("out_layout") == "nchw")]


@register("QResize")
def qresize(inputs, attrs, n):
    """Nearest Resize of uint8 NHWC data; roi / scales / sizes are the float op's (NCHW order).
    The source pixel of every output pixel comes from the float op itself, run once on a map of
    pixel indices, so both pick the same pixels by construction."""
    x = inputs[0]
    if x.ndim != 4 or x.dtype != np.uint8:
        raise InvalidInputError(f"QResize: x must be uint8 NHWC (rank 4), got {x.dtype} "
                                f"shape {list(x.shape)}")
    if str(attrs.get("mode", "nearest")) != "nearest":
        raise UnsupportedOperatorError("QResize: only mode='nearest' runs on uint8 data")
    return [nearest_gather(x, resize_source_map(x.shape, inputs[1:], attrs))]


def resize_source_map(nhwc_shape, params, attrs):
    """(src, factors) of a nearest Resize: src int64 [OH, OW], the flat H*W index each output
    pixel reads; factors (fy, fx) when that is a whole-number replication, else None."""
    n, h, w, c = nhwc_shape
    params = list(params) + [None] * (3 - len(params))
    roi, scales, sizes = params[:3]
    if sizes is not None and np.asarray(sizes).size:
        sizes = np.asarray(sizes).astype(np.int64).copy()
        if sizes.size != 4 or list(sizes[:2]) != [n, c]:
            raise UnsupportedOperatorError(f"QResize: sizes {sizes.tolist()} must keep batch "
                                           f"{n} and channels {c}")
        sizes[:2] = 1
    elif scales is not None and np.asarray(scales).size:
        scales = np.asarray(scales)
        if scales.size != 4 or float(scales[0]) != 1.0 or float(scales[1]) != 1.0:
            raise UnsupportedOperatorError(f"QResize: scales {scales.tolist()} must keep batch "
                                           "and channels")
    probe = np.arange(h * w, dtype=np.int64).reshape(1, 1, h, w)
    src = resize([probe, roi, scales, sizes], attrs, 1)[0][0, 0]
    oh, ow = src.shape
    fy, fx = (oh // h if h else 0), (ow // w if w else 0)
    whole = (fy >= 1 and fx >= 1 and oh == fy * h and ow == fx * w and np.array_equal(
        src, (np.arange(oh) // fy)[:, None] * w + (np.arange(ow) // fx)[None, :]))
    return src, ((fy, fx) if whole else None)


def nearest_gather(x, source_map):
    """x uint8 NHWC [N, H, W, C] -> [N, OH, OW, C], output pixel (i, j) = input pixel src[i, j]
    (flat H*W index), for ``source_map`` = resize_source_map(...)."""
    src, factors = source_map
    n, h, w, c = x.shape
    oh, ow = src.shape
    if factors is not None:   # whole-number up-sampling by replication
        if c == 0:
            return np.empty((n, oh, ow, c), np.uint8)
        # each pixel's c bytes as one item (a byte-level broadcast copy runs 1.5-2.3x slower:
        # numpy's inner loop then copies one pixel's c bytes per iteration, 6 axes deep)
        px = np.ascontiguousarray(x).view(np.dtype((np.void, c))).reshape(n, h, w)
        return replicate_hw(px, *factors).view(np.uint8).reshape(n, oh, ow, c)
    return np.ascontiguousarray(np.take(x.reshape(n, h * w, c), src.reshape(-1), axis=1)).reshape(
        n, oh, ow, c)


@register("QConcat")
def qconcat(inputs, attrs, n):
    """Concat of uint8 NHWC values along ``axis`` (3: channels); an input whose ``scales[i]`` /
    ``zero_points[i]`` differ from the output's ``scale`` / ``zero_point`` is requantized
    (dequantize, then the activation rounding rule)."""
    axis = int(attrs["axis"])
    scales, zps = list(attrs["scales"]), list(attrs["zero_points"])
    s_y, zp_y = float(attrs["scale"]), int(attrs["zero_point"])
    if len(scales) != len(inputs) or len(zps) != len(inputs):
        raise InvalidInputError(f"QConcat: {len(inputs)} inputs but {len(scales)} scales and "
                                f"{len(zps)} zero points")
    parts = []
    for x, s, zp in zip(inputs, scales, zps):
        if x.dtype != np.uint8:
            raise InvalidInputError(f"QConcat: inputs must be uint8, got {x.dtype}")
        if np.float32(s) == np.float32(s_y) and int(zp) == zp_y:
            parts.append(x)
        else:
            parts.append(quantize_u8(dequantize_u8(x, s, zp), s_y, zp_y))
    try:
        return [np.concatenate(parts, axis=axis)]
    except (ValueError, np.exceptions.AxisError) as e:
        raise InvalidInputError(f"QConcat: {e}") from None


@register("QAdd")
def qadd(inputs, attrs, n):
    a, b = inputs
    y = dequantize_u8(a, attrs["a_scale"], attrs["a_zp"])
    yb = dequantize_u8(b, attrs["b_scale"], attrs["b_zp"])
    if y.shape == np.broadcast_shapes(y.shape, yb.shape):
        y += yb
    else:
        y = y + yb
    if attrs.get("activation", 0) == q.ACT_RELU:
        np.maximum(y, _f(0), out=y)
    y *= _f(attrs["y_inv_scale"])
    y += _f(attrs["zp_y"])
    np.clip(y, _f(0), _f(255), out=y)
    np.rint(y, out=y)
    return [y.astype(np.uint8)]


#: the fixed zero point of dynamically quantized activations (symmetric range around it), so the
#: zero-point correction can be folded into the packed weights ahead of time
DYNAMIC_ZP = 128


def dynamic_scale(x):
    m = float(np.max(np.abs(x))) if x.size else 0.0
    return _f(m / 127.0) if m > 0 and np.isfinite(m) else _f(1.0)


@register("DynQGemm")
def dynqgemm(inputs, attrs, n):
    """Dynamic int8: x quantized per call with scale max|x| / 127 around zero point 128; the float
    bias (input 4, optional) and the activation are applied after the int8 GEMM."""
    x, packed, w_scale = inputs[:3]
    bias = inputs[3] if len(inputs) > 3 else None
    s_x = dynamic_scale(x)
    xq = quantize_u8(x, s_x, DYNAMIC_ZP)
    u = q.unpack_qc8w(packed)
    lead = x.shape[:-1]
    y = q.qgemm(xq.reshape(-1, x.shape[-1]), u["w"], (w_scale * s_x).astype(np.float32), None,
                DYNAMIC_ZP, out_u8=False)
    if bias is not None:
        y = y + bias
    y = q.activation(y, int(attrs.get("activation", 0)), float(attrs.get("alpha", 0.0)),
                     float(attrs.get("beta", 0.0)))
    return [y.reshape(lead + (y.shape[-1],))]


@register("QMaxPool")
def qmaxpool(inputs, attrs, n):
    from .conv import max_pool
    x = inputs[0]
    y = max_pool([np.ascontiguousarray(x.transpose(0, 3, 1, 2))], attrs, 1)[0]
    return [np.ascontiguousarray(y.transpose(0, 2, 3, 1))]


def gap_u8(x, scale, zp):
    """Global average pool of uint8 NHWC x to float32 [N, C, 1, 1]."""
    n, h, w, c = x.shape
    s = x.sum(axis=(1, 2), dtype=np.int64).astype(np.float32)
    y = s / _f(h * w)
    y -= _f(zp)
    y *= _f(scale)
    return y.reshape(n, c, 1, 1)


@register("QGlobalAveragePool")
def qgap(inputs, attrs, n):
    return [gap_u8(inputs[0], attrs["scale"], attrs["zero_point"])]


def channel_factors(s, x_shape, x_scale, y_inv_scale):
    """m[N, C] = (s * x_scale) * y_inv_scale in float32, s broadcast from [N|1, C|1, 1, 1]."""
    n, _, _, c = x_shape
    s = np.asarray(s, np.float32)
    s4 = s.reshape((1,) * (4 - s.ndim) + s.shape) if s.ndim <= 4 else s
    if s4.ndim != 4 or s4.shape[2:] != (1, 1) or s4.shape[0] not in (1, n) or s4.shape[1] not in (1, c):
        raise ValueError(f"QMulChannel: a factor of shape {s.shape} is not per channel of an "
                         f"NHWC input of shape {tuple(x_shape)}")
    m = np.broadcast_to(s4[:, :, 0, 0], (n, c)) * _f(x_scale)
    m = m * _f(y_inv_scale)
    return np.ascontiguousarray(m, dtype=np.float32)


def qmul_channel(x, m, x_zp, zp_y):
    """requant((x - x_zp) * m[n, c] + zp_y) for uint8 NHWC x and float32 m[N, C]."""
    n, _, _, c = x.shape
    y = np.subtract(x, _f(x_zp), dtype=np.float32)
    y *= m.reshape(n, 1, 1, c)
    y += _f(zp_y)
    np.clip(y, _f(0), _f(255), out=y)
    np.rint(y, out=y)
    return y.astype(np.uint8)


@register("QMulChannel")
def qmul_channel_op(inputs, attrs, n):
    x, s = inputs
    m = channel_factors(s, x.shape, attrs["x_scale"], attrs["y_inv_scale"])
    return [qmul_channel(x, m, attrs["x_zp"], attrs["zp_y"])]


def _q4(packed):
    u = q4.unpack_qb4w(packed)
    return u, dict(q=u["q"], scales=u["scales"], block=u["block"], offset=u["offset"])


@register("Q4Gemm")
def q4gemm(inputs, attrs, n):
    x, packed, scale = inputs[:3]
    _, w = _q4(packed)
    lead = x.shape[:-1]
    y = q4.qgemm(x.reshape(-1, x.shape[-1]), scale=scale, **w, **epilogue_kwargs(attrs))
    return [y.reshape(lead + (y.shape[-1],))]


@register("Q4Conv")
def q4conv(inputs, attrs, n):
    x, packed, scale = inputs[:3]
    u, w = _q4(packed)
    y = q4.qconv2d_nhwc(x, scale=scale, zp_x=u["header"]["zp_x"], groups=u["header"]["groups"],
                        strides=tuple(attrs.get("strides", (1, 1))),
                        pads=tuple(attrs.get("pads", (0, 0, 0, 0))),
                        dilations=tuple(attrs.get("dilations", (1, 1))), **w, **epilogue_kwargs(attrs))
    return [_to_nchw(y) if attrs.get("out_layout") == "nchw" else y]


@register("DynQ4Gemm")
def dynq4gemm(inputs, attrs, n):
    """Dynamic int4: x quantized per call (scale max|x| / 127, zero point 128, as DynQGemm), the
    int4 GEMM with scale s_x per channel, the float bias (input 3) and the activation fused."""
    x, packed = inputs[:2]
    bias = inputs[2] if len(inputs) > 2 else None
    s_x = dynamic_scale(x)
    xq = quantize_u8(x, s_x, DYNAMIC_ZP)
    _, w = _q4(packed)
    lead = x.shape[:-1]
    y = q4.qgemm(xq.reshape(-1, x.shape[-1]), scale=np.full(w["offset"].shape, s_x, np.float32),
                 bias=bias, act=int(attrs.get("activation", 0)), alpha=float(attrs.get("alpha", 0.0)),
                 beta=float(attrs.get("beta", 0.0)), out_u8=False, **w)
    return [y.reshape(lead + (y.shape[-1],))]
