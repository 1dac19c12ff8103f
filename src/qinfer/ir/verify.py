"""The IR verifier: structure, dtypes and quantization parameters of a Graph, and each node's op
contract.

Design: one pass over the graph that collects every problem (not only the first), so a broken pass
or a hostile file is explained in one error. ``load`` and ``save`` call it, so a file qinfer writes
is a file qinfer reads; passes call it after themselves when ``QINFER_VERIFY`` is set; the ONNX
importer checks each node's contract before anything runs it. It checks what every consumer of a
Graph relies on: names and wiring, the kinds of the attributes the ops read, the inputs they need,
the parameters and packed weights the int8 kernels take; not op semantics that depend on the
input shapes (the ops check those when they run). ``output_bytes`` bounds, before they run, the
ops whose output size attributes or input values choose, so no file makes qinfer allocate more
than it means to.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ..errors import ModelFormatError
from . import dtypes
from .graph import Graph, Node, QuantParams, Value

_MAX_SHOWN = 20


def _int(x):
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _label(n, i):
    name = getattr(n, "name", "")
    op = getattr(n, "op", "?")
    return f"node {name!r} ({op})" if name else f"node #{i} ({op})"


def _shape_problem(shape):
    if shape is None:
        return None
    if not isinstance(shape, (tuple, list)):
        return f"shape {shape!r} is not a tuple"
    for d in shape:
        if not (d is None or isinstance(d, str) or (_int(d) and d >= 0)):
            return f"shape {tuple(shape)} has dimension {d!r} (expected an int >= 0, a str or None)"
    return None


def _as_array(x):
    """A qparam (Python number, numpy scalar or array) as a numeric numpy array, or None."""
    if isinstance(x, (bool, np.bool_)):
        return None
    if isinstance(x, (int, float, np.integer, np.floating)):
        x = np.asarray(x)          # (a Python int beyond 64 bits becomes an object array)
    if isinstance(x, np.ndarray) and x.dtype.kind in "iuf":
        return x
    return None


def _qparams_problems(q, dtype, shape, where):
    if not isinstance(q, QuantParams):
        return [f"{where}: qparams is a {type(q).__name__}, not QuantParams"]
    out = []
    bits = q.bits
    if not (_int(bits) and 1 <= bits <= 32):
        out.append(f"{where}: qparams bits {bits!r} is not an int in 1..32")
        bits = None
    scale = _as_array(q.scale)
    if scale is None:
        out.append(f"{where}: qparams scale {q.scale!r} is not a number or a numeric array")
    else:
        with np.errstate(invalid="ignore"):
            if scale.size == 0 or not np.all(np.isfinite(scale)) or not np.all(scale > 0):
                out.append(f"{where}: qparams scale must be finite and > 0, got "
                           f"{np.asarray(scale).ravel()[:8].tolist()}")
    zp = _as_array(q.zero_point)
    if zp is None:
        out.append(f"{where}: qparams zero_point {q.zero_point!r} is not a number or a "
                   "numeric array")
    elif zp.size and (not np.all(np.isfinite(zp)) or not np.all(zp == np.round(zp))):
        out.append(f"{where}: qparams zero_point is not integral")
    elif bits is not None and zp.size:
        if dtype in dtypes.SUPPORTED and np.dtype(dtype).kind in "iu" \
                and np.dtype(dtype).itemsize * 8 == bits:
            info = np.iinfo(dtype)
            lo, hi = int(info.min), int(info.max)
        else:   # signed or unsigned: the union of both ranges
            lo, hi = -(1 << (bits - 1)), (1 << bits) - 1
        zmin, zmax = float(np.min(zp)), float(np.max(zp))
        if zmin < lo or zmax > hi:
            out.append(f"{where}: qparams zero_point range [{zmin:g}, {zmax:g}] lies outside "
                       f"[{lo}, {hi}] (bits={bits}, dtype {dtype})")
    if scale is not None and zp is not None and zp.size not in (1, scale.size):
        out.append(f"{where}: qparams zero_point has {zp.size} elements, scale {scale.size}")
    if q.group_size is not None and not (_int(q.group_size) and q.group_size > 0):
        out.append(f"{where}: qparams group_size {q.group_size!r} is not a positive int")
    if q.axis is not None:
        if not _int(q.axis):
            out.append(f"{where}: qparams axis {q.axis!r} is not an int or None")
        elif shape is not None and not -len(shape) <= q.axis < len(shape):
            out.append(f"{where}: qparams axis {q.axis} is out of range for rank {len(shape)}")
        elif shape is not None and q.group_size is None and scale is not None \
                and _int(shape[q.axis]) and scale.size != shape[q.axis]:
            out.append(f"{where}: per-channel scale has {scale.size} elements but axis {q.axis} "
                       f"of shape {tuple(shape)} has {shape[q.axis]}")
    elif q.group_size is None and scale is not None and scale.size != 1:
        out.append(f"{where}: per-tensor qparams (axis None) with {scale.size} scales")
    return out


def _value_problems(v, where, shape_hint=None):
    if not isinstance(v, Value):
        return [f"{where}: {v!r} is not a Value"]
    out = []
    if not isinstance(v.name, str) or not v.name:
        out.append(f"{where}: name {v.name!r} is not a non-empty string")
    where = f"{where} {v.name!r}"
    if v.dtype is not None and v.dtype not in dtypes.SUPPORTED:
        out.append(f"{where}: dtype {v.dtype!r} is not supported "
                   f"(one of {', '.join(sorted(dtypes.SUPPORTED))})")
    p = _shape_problem(v.shape)
    if p:
        out.append(f"{where}: {p}")
    if v.qparams is not None:
        shape = v.shape if v.shape is not None and not p else shape_hint
        out.extend(_qparams_problems(v.qparams, v.dtype, shape, where))
    return out


# ------------------------------------------------------------------------------ op contracts
# What the runtime and the reference ops take for granted of a node of an op they know: the kind of
# each attribute they read, the attributes without a default, the inputs that must be present, and
# for the quantized ops the ranges their kernels' parameters live in. Checked at load (and by the
# importer on every ONNX node before anything folds it), so a hostile file is refused with the node
# named instead of failing deep inside an op.

#: attribute name -> kind: "int", "number" (int or float), "str", "ints", "numbers", "strs",
#: "tensor"; names that none of qinfer's ops reads are not checked
ATTR_KINDS = {
    **dict.fromkeys(["axis", "block_size", "group", "keepdims", "to", "dtype", "transA", "transB", "ceil_mode",
                     "storage_order", "count_include_pad", "allowzero", "blocksize", "upper",
                     "reverse", "exclusive", "fmod", "batch_dims", "largest", "sorted",
                     "detect_positive", "detect_negative", "select_last_index",
                     "noop_with_empty_axes", "stash_type", "training_mode", "exclude_outside",
                     "antialias", "hidden_size", "linear_before_reset", "input_forget", "k", "p",
                     "num_outputs", "num_groups", "start", "end", "coerce_2d", "value_int",
                     "activation", "zero_point", "a_zp", "b_zp", "x_zp", "center_point_box",
                     "new_axis", "cols", "block"], "int"),
    **dict.fromkeys(["alpha", "beta", "gamma", "epsilon", "momentum", "bias", "lambd", "clip",
                     "cubic_coeff_a", "extrapolation_value", "value_float", "min", "max", "scale",
                     "a_scale", "b_scale", "x_scale", "y_inv_scale", "zp_y", "spatial"], "number"),
    **dict.fromkeys(["auto_pad", "mode", "coordinate_transformation_mode", "nearest_mode",
                     "keep_aspect_ratio_policy", "direction", "equation", "approximate",
                     "reduction", "kind", "out_dtype", "out_layout", "layout"], "str"),
    **dict.fromkeys(["axes", "perm", "kernel_shape", "strides", "pads", "dilations",
                     "output_padding", "output_shape", "split", "value_ints", "starts", "ends"],
                    "ints"),
    **dict.fromkeys(["value_floats", "scales", "activation_alpha", "activation_beta",
                     "channel_scales"], "numbers"),
    "activations": "strs",
    "value": "tensor",
}
#: (op, attribute) -> kind, where an op reads a name as another kind than ATTR_KINDS says
OP_ATTR_KINDS = {("LSTM", "layout"): "int", ("GRU", "layout"): "int", ("RNN", "layout"): "int",
                 ("Pad", "value"): "number", ("Dropout", "seed"): "number"}
#: attributes without a default
REQUIRED_ATTRS = {
    "Cast": ("to",), "Concat": ("axis",), "DepthToSpace": ("blocksize",),
    "SpaceToDepth": ("blocksize",), "Einsum": ("equation",), "GroupNormalization": ("num_groups",),
    "QuantizeU8": ("scale", "zero_point"), "DequantizeU8": ("scale", "zero_point"),
    "QGlobalAveragePool": ("scale", "zero_point"),
    "QAdd": ("a_scale", "a_zp", "b_scale", "b_zp", "y_inv_scale", "zp_y"),
    "QMulChannel": ("x_scale", "x_zp", "y_inv_scale", "zp_y"),
    "QConvTranspose": ("kernel_shape",), "DequantizeInt4": ("cols", "block"),
    "PackQC8W": ("kind", "zp_x"),
    "QConcat": ("axis", "scales", "zero_points", "scale", "zero_point"),
}
#: how many leading inputs must be present (named, not ""): 1 for every other op of the default
#: and qinfer domains, 0 for ops without inputs
REQUIRED_INPUTS = {
    **dict.fromkeys(["Constant", "RandomNormal", "RandomUniform"], 0),
    **dict.fromkeys(["Add", "Sub", "Mul", "Div", "Pow", "PRelu", "Equal", "Greater",
                     "GreaterOrEqual", "Less", "LessOrEqual", "And", "Or", "Xor", "Mod",
                     "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "Conv", "ConvTranspose",
                     "MatMul", "MatMulInteger", "Gemm", "Reshape", "Expand", "Tile", "Gather",
                     "GatherElements", "GatherND", "LayerNormalization", "CumSum", "CastLike",
                     "QAdd", "QMulChannel", "DequantizeLinear", "DynQ4Gemm", "DequantizeInt4",
                     "PackQC8W"], 2),
    **dict.fromkeys(["Where", "Range", "OneHot", "ScatterND", "ScatterElements", "Scatter",
                     "InstanceNormalization", "GroupNormalization", "LSTM", "GRU", "RNN", "QConv",
                     "QGemm", "DynQGemm", "Q4Gemm", "Q4Conv", "QConvTranspose"], 3),
    "BatchNormalization": 5,
}
#: inputs that older opsets gave as attributes: (input index, attribute) -- one of them is required
INPUT_OR_ATTR = {"TopK": ((1, "k"),), "Slice": ((1, "starts"), (2, "ends")),
                 "Unsqueeze": ((1, "axes"),), "Pad": ((1, "pads"),), "Upsample": ((1, "scales"),)}
_DEFAULT_DOMAINS = ("", "ai.onnx", "qinfer")
#: quantized ops: parameters their kernels take as scales (finite, > 0), zero points of uint8
#: data (integers 0..255) and output zero points (finite, |zp| <= 2**16)
_Q_SCALES = ("scale", "a_scale", "b_scale", "x_scale", "y_inv_scale")
_Q_ZERO_POINTS = ("zero_point", "a_zp", "b_zp", "x_zp")
#: the int8 kernels' bound on |scale| and on the epilogue's parameters (_ext/_qkernels.pxi)
_Q_PARAM_MAX = 1e20
_QUANTIZED_OPS = frozenset({"QConcat", "QResize", "QConv", "QGemm", "DynQGemm", "QuantizeU8",
                            "DequantizeU8", "QAdd",
                            "QMaxPool", "QGlobalAveragePool", "QMulChannel", "Q4Gemm", "Q4Conv",
                            "DynQ4Gemm", "QConvTranspose"})


def _is_number(x):
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


_KIND_CHECKS = {
    "int": _int,
    "number": _is_number,
    "str": lambda x: isinstance(x, str),
    "ints": lambda x: isinstance(x, (list, tuple)) and all(_int(v) for v in x),
    "numbers": lambda x: isinstance(x, (list, tuple)) and all(_is_number(v) for v in x),
    "strs": lambda x: isinstance(x, (list, tuple)) and all(isinstance(v, str) for v in x),
    "tensor": lambda x: isinstance(x, np.ndarray),
}
_KIND_WORDS = {"int": "an int", "number": "a number", "str": "a string", "ints": "a list of ints",
               "numbers": "a list of numbers", "strs": "a list of strings",
               "tensor": "a tensor"}


def _finite(x):
    with np.errstate(over="ignore", invalid="ignore"):
        return _is_number(x) and bool(np.isfinite(np.float64(x)))


def _within(x, lo, hi):
    return _finite(x) and lo <= x <= hi


def _qop_problems(n, label):
    out = []
    a = n.attrs
    for k in _Q_SCALES:
        if k in a and not (_within(a[k], 0, _Q_PARAM_MAX) and a[k] > 0):
            out.append(f"{label}: attribute {k!r} = {a[k]!r} must be a finite number in "
                       f"(0, {_Q_PARAM_MAX:g}]")
    if isinstance(a.get("channel_scales"), (list, tuple)):
        if not all(_within(v, 0, _Q_PARAM_MAX) and v > 0 for v in a["channel_scales"]):
            out.append(f"{label}: attribute 'channel_scales' must hold finite numbers in "
                       f"(0, {_Q_PARAM_MAX:g}]")
        if a.get("layout") != "nchw_to_nhwc":
            out.append(f"{label}: attribute 'channel_scales' needs layout 'nchw_to_nhwc'")
    for k in _Q_ZERO_POINTS:
        if k in a and not (_int(a[k]) and 0 <= a[k] <= 255):
            out.append(f"{label}: attribute {k!r} = {a[k]!r} must be an int in 0..255 (a uint8 "
                       "zero point)")
    for k, bound in (("zp_y", 1 << 16), ("alpha", _Q_PARAM_MAX), ("beta", _Q_PARAM_MAX)):
        if k in a and not _within(a[k], -bound, bound):
            out.append(f"{label}: attribute {k!r} = {a[k]!r} must be a finite number with "
                       f"|{k}| <= {bound:g}")
    return out


#: ops that slide a window: their geometry attributes take one entry per spatial axis (pads two)
WINDOWED = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "QConv",
                       "QMaxPool", "Q4Conv", "QConvTranspose"})


def _window_problems(n, label):
    a = n.attrs
    out = []
    for k, lo in (("kernel_shape", 1), ("strides", 1), ("dilations", 1), ("pads", 0),
                  ("output_padding", 0)):
        if k in a and any(v < lo for v in a[k]):
            out.append(f"{label}: attribute {k!r} = {list(a[k])} has entries below {lo}")
    lens = {k: len(a[k]) // (2 if k == "pads" else 1) for k in
            ("kernel_shape", "strides", "dilations", "pads") if k in a}
    if len(set(lens.values())) > 1 or ("pads" in a and len(a["pads"]) % 2):
        out.append(f"{label}: window attributes disagree on the number of spatial axes "
                   f"({', '.join(f'{k} {list(a[k])}' for k in lens)})")
    if "group" in a and a["group"] < 1:
        out.append(f"{label}: attribute 'group' = {a['group']} must be >= 1")
    return out


def _is_packed(packed, header_bytes):
    """A packed-weights constant: a 1-D uint8 array holding at least its format's header."""
    return (isinstance(packed, np.ndarray) and packed.dtype == np.uint8 and packed.ndim == 1
            and packed.size >= header_bytes)


def _not_packed(where, header_bytes):
    return f"{where} must be an initializer, a 1-D uint8 array of at least {header_bytes} bytes"


def _packed_problems(n, label, inits):
    """The packed int8 weights and the scales of a QConv / QGemm / DynQGemm: constants whose header
    agrees with the op and with the bytes that follow it (the checks the kernels make before they
    read a byte, in docs/formats.md section 2.1), so a hostile file fails at load."""
    from ..reference import quantized as fmt
    where = f"{label}: packed weights {n.inputs[1]!r}"
    packed, scale = inits.get(n.inputs[1]), inits.get(n.inputs[2])
    if not _is_packed(packed, fmt.HEADER.itemsize):
        return [_not_packed(where, fmt.HEADER.itemsize)]
    from ..reference import sparse as spfmt
    if spfmt.is_sparse(packed):
        return _sparse_packed_problems(n, label, where, packed, scale, spfmt)
    h = fmt.read_header(packed)
    dw = n.op == "QConv" and n.attrs.get("kind") == "dw"
    g, c, k, kh, kw = h["groups"], h["n"], h["k"], h["kh"], h["kw"]
    if h["magic"] != (fmt.MAGIC_DW if dw else fmt.MAGIC_GEMM) or h["version"] != fmt.VERSION:
        return [f"{where}: magic {h['magic']:#010x} version {h['version']} is not the "
                f"{'depthwise' if dw else 'GEMM/conv'} layout version {fmt.VERSION}"]
    nr = fmt.DW_CR if dw else fmt.NR
    if dw:
        shape_ok = 1 <= kh <= 256 and kw >= 1 and kh * kw == k and h["cin"] == 1 and g == 1
    elif kh == 0:
        shape_ok = kw == 0 and h["cin"] == k and g == 1
        if n.op == "QConvTranspose":   # GEMM columns: one per (ky, kx, output channel)
            kernel = n.attrs.get("kernel_shape", ())
            shape_ok = shape_ok and len(kernel) == 2 and c % max(1, _prod(kernel)) == 0
    else:
        shape_ok = n.op == "QConv" and kw >= 1 and kh * kw * h["cin"] == k
    if not (shape_ok and 1 <= g <= 1 << 20 and 1 <= c <= 1 << 24 and 1 <= k <= 1 << 24
            and h["nr"] == nr and h["kr"] == fmt.KR
            and (h["n_pad"], h["k_pad"]) == fmt.padded(c, k, dw, kh, kw) and 0 <= h["zp_x"] <= 255):
        return [f"{where}: inconsistent header {h}"]
    cols = g * h["n_pad"]
    want = fmt.packed_nbytes(g, c, k, dw, kh, kw)
    if packed.size != want:
        return [f"{where}: {packed.size} bytes, its header says {want}"]
    bias = packed[fmt.HEADER.itemsize:fmt.HEADER.itemsize + 4 * cols].view("<i4")
    if int(np.max(np.abs(bias.astype(np.int64)))) + k * 255 * 128 >= 1 << 31:
        return [f"{where}: K = {k} and its biases can overflow the int32 accumulator"]
    return _scale_problems(n, label, scale, g * c)


def _q4_packed_problems(n, label, inits):
    """The int4 weights (QB4W, docs/formats.md 2.2) of a Q4Gemm / Q4Conv / DynQ4Gemm: a header that
    agrees with the op and with the bytes that follow it, and the per-channel scales (or the
    dynamic layer's bias), so a hostile file fails at load, not in a kernel."""
    from ..reference import int4 as fmt
    where = f"{label}: packed int4 weights {n.inputs[1]!r}"
    packed = inits.get(n.inputs[1])
    if not _is_packed(packed, fmt.HEADER.itemsize):
        return [_not_packed(where, fmt.HEADER.itemsize)]
    h = fmt.read_header(packed)
    g, c, k, kh, kw, block = h["groups"], h["n"], h["k"], h["kh"], h["kw"], h["block"]
    if h["magic"] != fmt.MAGIC or h["version"] != fmt.VERSION:
        return [f"{where}: magic {h['magic']:#010x} version {h['version']} is not the int4 "
                f"layout version {fmt.VERSION}"]
    conv = n.op == "Q4Conv"
    shape_ok = (kw >= 1 and kh >= 1 and kh * kw * h["cin"] == k) if conv else \
        (kh == 0 and kw == 0 and h["cin"] == k and g == 1)
    if not (shape_ok and 1 <= g <= 1 << 20 and 1 <= c <= 1 << 24 and 1 <= k <= 1 << 24
            and 4 <= block <= fmt.BLOCK_MAX and block % 4 == 0
            and h["n_pad"] == (c + fmt.NR - 1) // fmt.NR * fmt.NR
            and h["nblk"] == fmt.nblocks(k, block) and h["panel_bytes"] == fmt.panel_bytes(k, block)
            and 0 <= h["zp_x"] <= 255):
        return [f"{where}: inconsistent header {h}"]
    want = fmt.HEADER.itemsize + 4 * g * h["n_pad"] + g * (h["n_pad"] // fmt.NR) * h["panel_bytes"]
    if packed.size != want:
        return [f"{where}: {packed.size} bytes, its header says {want}"]
    if n.op == "DynQ4Gemm":
        bias = inits.get(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] else None
        if len(n.inputs) > 2 and n.inputs[2] and not (
                isinstance(bias, np.ndarray) and bias.dtype == np.float32 and bias.size == c):
            return [f"{label}: bias {n.inputs[2]!r} must be an initializer of {c} float32 values"]
        return []
    return _scale_problems(n, label, inits.get(n.inputs[2]), g * c)


def _scale_problems(n, label, scale, channels):
    if not (isinstance(scale, np.ndarray) and scale.dtype == np.float32
            and scale.size in (1, channels) and np.all(np.abs(scale) <= _Q_PARAM_MAX)):
        return [f"{label}: scales {n.inputs[2]!r} must be an initializer of {channels} float32 "
                f"values (one per output channel) or of 1 (shared) with |scale| <= "
                f"{_Q_PARAM_MAX:g}"]
    return []


def _sparse_packed_problems(n, label, where, packed, scale, spfmt):
    """Sparse int8 weights (SB4W, docs/formats.md 2.3) of a QGemm / non-depthwise QConv: the whole
    block structure is checked here (pointer table, every block index in range and in order, the
    int32 bound), since the kernels check only the header per call."""
    if n.op == "DynQGemm" or (n.op == "QConv" and n.attrs.get("kind") == "dw"):
        return [f"{where}: sparse (SB4W) weights, which only QGemm and non-depthwise QConv take"]
    bad = spfmt.problems(packed)
    if bad:
        return [f"{where}: sparse weights: {bad}"]
    h = spfmt.read_header(packed)
    if (h["kh"] == 0) != (n.op == "QGemm"):
        return [f"{where}: sparse {'GEMM' if h['kh'] == 0 else 'conv'} weights in a {n.op} node"]
    return _scale_problems(n, label, scale, h["groups"] * h["n"])


def _packed_in_place(n, label, inits, out):
    """``inits`` with the blob a PackQC8W node fed by constants packs (quant/storage.py: packed int8
    weights stored compact), so the layers reading it are checked as if it were stored packed; a
    compact form that does not pack is a problem of the node."""
    from ..errors import InvalidInputError
    from ..reference import get
    if not all(i in inits for i in n.inputs if i) or not isinstance(n.outputs[0], str):
        return inits
    try:
        blob = get("PackQC8W")([inits[i] for i in n.inputs], n.attrs, 1)[0]
    except InvalidInputError as e:
        out.append(f"{label}: {e}")
        return inits
    if not isinstance(inits, _Packed):
        inits = _Packed(inits)
    inits[n.outputs[0]] = blob
    return inits


class _Packed(dict):
    """The initializers plus the blobs PackQC8W nodes pack (a copy made once per graph)."""


def _runnable_ops():
    """The ops qinfer runs (a node of another op is refused by the planner, not here)."""
    from ..reference import registry
    return registry.supported_ops()


def node_problems(n, label, inits=None) -> list:
    """What breaks the contract of ``n``'s op (see ``ATTR_KINDS``): attribute kinds, required
    attributes and inputs, quantized parameters and, given the graph's initializers ``inits``,
    packed int8 weights. Ops of other domains are not checked."""
    if n.domain not in _DEFAULT_DOMAINS:
        return []
    out = []
    for k, v in n.attrs.items():
        kind = OP_ATTR_KINDS.get((n.op, k)) or ATTR_KINDS.get(k)
        if kind is not None and not _KIND_CHECKS[kind](v):
            shown = f"a {type(v).__name__}" if isinstance(v, np.ndarray) else repr(v)[:60]
            out.append(f"{label}: attribute {k!r} must be {_KIND_WORDS[kind]}, got {shown}")
    for k in REQUIRED_ATTRS.get(n.op, ()):
        if k not in n.attrs:
            out.append(f"{label}: required attribute {k!r} is missing")
    need = REQUIRED_INPUTS.get(n.op, 1)
    missing = [i for i in range(need) if i >= len(n.inputs) or not n.inputs[i]]
    for i, k in INPUT_OR_ATTR.get(n.op, ()):
        if k not in n.attrs and (i >= len(n.inputs) or not n.inputs[i]):
            missing.append(i)
            need = max(need, i + 1)
    if not any(isinstance(o, str) and o for o in n.outputs):
        out.append(f"{label}: the node has no output (every {n.op} produces one)")
    if missing:
        out.append(f"{label}: input(s) {missing} are required but missing ({n.op} takes at least "
                   f"{need}, got {list(n.inputs)})")
    if n.op in WINDOWED and not out:
        out.extend(_window_problems(n, label))
    if n.op in _QUANTIZED_OPS and not out:
        out.extend(_qop_problems(n, label))
        if n.op in ("QConv", "QGemm", "DynQGemm", "QConvTranspose") and inits is not None:
            out.extend(_packed_problems(n, label, inits))
        if n.op in ("Q4Gemm", "Q4Conv", "DynQ4Gemm") and inits is not None:
            out.extend(_q4_packed_problems(n, label, inits))
    return out


# ------------------------------------------------------------------------------ output bounds
# Ops whose output size is chosen by attributes or input values (pads, repeats, a shape, a depth,
# scales), not bounded by the sizes of their inputs: what they would allocate, computed before they
# run, so the planner (and constant folding) refuse a hostile size instead of reaching for it.

def _ints1(v):
    """A 0-/1-D integer array (a shape, repeats, pads) as Python ints; None if it is not one."""
    a = None if v is None else np.asarray(v)
    if a is None or a.dtype.kind not in "iu" or a.ndim > 1:
        return None
    return [int(d) for d in a.reshape(-1)]


def _prod(dims):
    n = 1
    for d in dims:
        n *= max(int(d), 0)        # Python ints: a hostile shape cannot overflow the product
    return n


def _window_elements(op, x, ins, a):
    """Output elements of a conv / pool / transposed conv, from above (stride 1, full padding)."""
    nhwc = op in ("QConv", "QMaxPool")
    if x.ndim < 3:
        return None
    if op == "QConvTranspose":     # every input pixel writes its KH x KW block of every channel
        scale = ins[2] if len(ins) > 2 else None
        return None if scale is None else _prod(x.shape[:-1]) * int(np.size(scale))
    spatial = x.shape[1:-1] if nhwc else x.shape[2:]
    pads = list(a.get("pads", ())) or [0] * (2 * len(spatial))
    if len(pads) != 2 * len(spatial):
        return None
    out = [s + max(p, 0) + max(q, 0) + 1 for s, p, q in
           zip(spatial, pads[:len(spatial)], pads[len(spatial):])]
    channels = x.shape[-1] if nhwc else x.shape[1]
    w = ins[1] if len(ins) > 1 else None
    if op == "Conv" and w is not None and np.ndim(w) >= 1:
        channels = np.shape(w)[0]
    elif op == "QConv" and len(ins) > 2 and ins[2] is not None:
        channels = np.size(ins[2])
    elif op == "ConvTranspose" and w is not None and np.ndim(w) == len(spatial) + 2:
        channels = np.shape(w)[1] * max(int(a.get("group", 1)), 1)
        if "output_shape" in a:
            out = list(a["output_shape"])[-len(spatial):]
        else:
            strides = list(a.get("strides", ())) or [1] * len(spatial)
            dil = list(a.get("dilations", ())) or [1] * len(spatial)
            extra = list(a.get("output_padding", ())) or [0] * len(spatial)
            out = [st * s + d * k + e for s, st, d, k, e in
                   zip(spatial, strides, dil, np.shape(w)[2:], extra)]
    return x.shape[0] * channels * _prod(out)


def _resize_elements(x, ins):
    scales, sizes = (np.asarray(ins[i]) if len(ins) > i and ins[i] is not None else None
                     for i in (2, 3))
    if sizes is not None and sizes.size:
        dims = _ints1(sizes)
        if dims is None:
            return None
        ratio = max([d / s for d, s in zip(dims, x.shape) if s] + [1.0])
        return max(_prod(dims + list(x.shape[len(dims):])), int(ratio * _prod(x.shape)) + 1)
    if scales is None or not scales.size or scales.dtype.kind != "f":
        return _prod(x.shape)       # nothing to scale by: the op keeps the shape or reports it
    with np.errstate(invalid="ignore", over="ignore"):
        f = scales.astype(np.float64).reshape(-1) * np.asarray(x.shape[:scales.size], np.float64)
    if f.size and not np.all(np.isfinite(f)):
        return float("inf")
    return _prod([int(v) + 1 for v in f] + list(x.shape[f.size:]))


def memory_bytes():
    """This machine's physical memory in bytes (16 GiB where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):   # pragma: no cover - not POSIX
        return 1 << 34


#: the most bytes one value may take: half of this machine's memory. Ops whose output size comes
#: from attributes or input values (pads, repeats, a shape, scales) are checked before they run
#: (runtime/planner.py), and so are the tensors a file inflates at load (serialize.py), so a
#: hostile model or feed gets an error instead of the memory.
MAX_TENSOR_BYTES = memory_bytes() // 2

#: the ops ``output_bytes`` bounds
SIZED_OPS = WINDOWED | frozenset({"ConstantOfShape", "Expand", "Tile", "Pad", "Range", "OneHot",
                                   "Resize", "QResize"})


def output_bytes(n, ins):
    """An upper bound on the bytes of ``n``'s largest output given its inputs ``ins`` (arrays,
    None where omitted), for the ops whose output size attributes or input values choose; None
    for the others and when the inputs do not fit the op (the op itself reports that)."""
    op, a = n.op, n.attrs
    x = ins[0] if ins and ins[0] is not None else None
    item = x.dtype.itemsize if isinstance(x, np.ndarray) else 8
    if op == "ConstantOfShape":
        shape = _ints1(x)
        value = a.get("value")
        return None if shape is None else _prod(shape) * (value.dtype.itemsize if isinstance(
            value, np.ndarray) else 4)
    if x is None or not isinstance(x, np.ndarray):
        return None
    if op in WINDOWED:
        count = _window_elements(op, x, ins, a)
    elif op == "Expand":
        shape = _ints1(ins[1]) if len(ins) > 1 else None
        if shape is None:
            return None
        r = max(x.ndim, len(shape))
        xs, ts = (1,) * (r - x.ndim) + x.shape, [1] * (r - len(shape)) + shape
        count = _prod(max(p, q) for p, q in zip(xs, ts))
    elif op == "Tile":
        reps = _ints1(ins[1]) if len(ins) > 1 else None
        count = None if reps is None else _prod(d * r for d, r in zip(x.shape, reps))
    elif op == "Pad":
        pads = _ints1(ins[1] if len(ins) > 1 and ins[1] is not None else a.get("pads"))
        axes = _ints1(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(x.ndim))
        if pads is None or axes is None or len(pads) != 2 * len(axes):
            return None
        grow = dict.fromkeys(range(x.ndim), 0)
        for i, ax in enumerate(axes):
            if -x.ndim <= ax < x.ndim:
                grow[ax % x.ndim] += max(pads[i], 0) + max(pads[len(axes) + i], 0)
        count = _prod(d + grow[i] for i, d in enumerate(x.shape))
    elif op == "Range":
        try:
            start, limit, delta = (float(np.asarray(v).reshape(-1)[0]) for v in ins[:3])
            count = max(math.ceil((limit - start) / delta), 0) if delta else 0
        except (IndexError, TypeError, ValueError, OverflowError):
            return float("inf")
    elif op == "OneHot":
        depth = _ints1(ins[1]) if len(ins) > 1 else None
        count = None if not depth else x.size * max(depth[0], 0)
    elif op == "Resize":
        count = _resize_elements(x, ins)
    elif op == "QResize":      # NHWC data, NCHW scales / sizes: the NCHW view has the same size
        count = _resize_elements(x.transpose(0, 3, 1, 2), ins) if x.ndim == 4 else None
    else:
        return None
    return None if count is None else count * item


def problems(graph: Graph) -> list:
    """Every structural problem of ``graph``, as messages naming the node or value at fault."""
    out = []
    if not isinstance(graph.name, str):
        out.append(f"graph name {graph.name!r} is not a string")
    if not isinstance(graph.metadata, dict):
        out.append("graph metadata is not a dict")
    else:
        cmm = graph.metadata.get("custom_metadata_map")
        if cmm is not None and not (isinstance(cmm, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in cmm.items())):
            out.append("metadata custom_metadata_map is not a dict of str -> str")

    inits = graph.initializers
    for name, a in inits.items():
        where = f"initializer {name!r}"
        if not isinstance(name, str) or not name:
            out.append(f"{where}: name is not a non-empty string")
        if not isinstance(a, np.ndarray):
            out.append(f"{where}: is a {type(a).__name__}, not a numpy array")
            continue
        if a.dtype.name not in dtypes.SUPPORTED or a.dtype.fields is not None:
            out.append(f"{where}: dtype {a.dtype} is not supported")
        vi = graph.value_info.get(name)
        if isinstance(vi, Value):
            if vi.dtype is not None and vi.dtype != a.dtype.name:
                out.append(f"{where}: dtype {a.dtype.name} but value_info says {vi.dtype}")
            if isinstance(vi.shape, (tuple, list)) and (len(vi.shape) != a.ndim or any(
                    _int(d) and d != s for d, s in zip(vi.shape, a.shape))):
                out.append(f"{where}: shape {a.shape} but value_info says {tuple(vi.shape)}")

    for name, v in graph.value_info.items():
        if isinstance(v, Value) and v.name != name:
            out.append(f"value_info key {name!r} holds a Value named {v.name!r}")
        hint = inits[name].shape if name in inits and isinstance(inits[name], np.ndarray) else None
        out.extend(_value_problems(v, "value_info", hint))

    available = set(inits)
    seen_inputs = set()
    for v in graph.inputs:
        out.extend(_value_problems(v, "graph input"))
        if isinstance(v, Value) and isinstance(v.name, str):
            if v.name in seen_inputs:
                out.append(f"graph input {v.name!r} is listed twice")
            seen_inputs.add(v.name)
            a = inits.get(v.name)
            if isinstance(a, np.ndarray) and v.dtype is not None and v.dtype != a.dtype.name:
                out.append(f"graph input {v.name!r}: dtype {v.dtype} but its initializer "
                           f"(default) is {a.dtype.name}")
    available |= seen_inputs

    consts = inits           # + the blobs of PackQC8W nodes, for the layers that read them
    named = {}               # node name -> index of the first node of that name
    produced = {}            # value name -> node label
    later = {}               # value name -> label of the (first) node producing it
    for i, n in enumerate(graph.nodes):
        outs = getattr(n, "outputs", ())
        for o in outs if isinstance(outs, (tuple, list)) else ():
            if isinstance(o, str) and o:
                later.setdefault(o, _label(n, i))
    for i, n in enumerate(graph.nodes):
        if not isinstance(n, Node):
            out.append(f"node #{i}: {n!r} is not a Node")
            continue
        label = _label(n, i)
        if not isinstance(n.op, str) or not n.op:
            out.append(f"node #{i}: op {n.op!r} is not a non-empty string")
        if not isinstance(n.name, str) or not isinstance(n.domain, str):
            out.append(f"{label}: name and domain must be strings")
        elif n.name and named.setdefault(n.name, i) != i:
            out.append(f"{label}: node #{i} has the name of node #{named[n.name]} (node names "
                       "are unique: reports, fusion and quantization refer to nodes by name)")
        if not isinstance(n.attrs, dict) or not all(isinstance(k, str) for k in n.attrs):
            out.append(f"{label}: attrs must be a dict with string keys")
        if not isinstance(n.inputs, (tuple, list)) or not isinstance(n.outputs, (tuple, list)):
            out.append(f"{label}: inputs and outputs must be tuples of names")
            continue
        if isinstance(n.op, str) and isinstance(n.domain, str) and isinstance(n.attrs, dict) \
                and n.op in _runnable_ops():
            bad = node_problems(n, label, consts)
            out.extend(bad)
            if not bad and n.op == "PackQC8W" and n.domain == "qinfer":
                consts = _packed_in_place(n, label, consts, out)
        for x in n.inputs:
            if not isinstance(x, str):
                out.append(f"{label}: input {x!r} is not a string")
            elif x and x not in available:
                if x in later:
                    out.append(f"{label}: input {x!r} is produced later, by {later[x]} (nodes are "
                               "not in topological order, or the graph has a cycle)")
                else:
                    out.append(f"{label}: input {x!r} is not a graph input, an initializer or "
                               "the output of any node")
        for o in n.outputs:
            if not isinstance(o, str):
                out.append(f"{label}: output {o!r} is not a string")
                continue
            if not o:
                continue
            if o in produced:
                out.append(f"{label}: output {o!r} is already produced by {produced[o]}")
            elif o in seen_inputs:
                out.append(f"{label}: output {o!r} overwrites a graph input")
            elif o in inits:
                out.append(f"{label}: output {o!r} overwrites an initializer")
            produced[o] = label
            available.add(o)

    seen_outputs = set()
    for v in graph.outputs:
        out.extend(_value_problems(v, "graph output"))
        if isinstance(v, Value) and isinstance(v.name, str):
            if v.name in seen_outputs:
                out.append(f"graph output {v.name!r} is listed twice")
            seen_outputs.add(v.name)
            if v.name not in available:
                out.append(f"graph output {v.name!r} is not produced by any node, nor a graph "
                           "input or initializer")
    return out


def verify(graph: Graph) -> None:
    """Raise ``ModelFormatError`` listing every structural problem of ``graph`` (``.problems``
    holds them all); return None when there is none."""
    found = problems(graph)
    if found:
        # one line (the CLI prints errors as one line); .problems holds the full list
        shown = "; ".join(found[:_MAX_SHOWN])
        more = f"; and {len(found) - _MAX_SHOWN} more" if len(found) > _MAX_SHOWN else ""
        name = graph.name if isinstance(getattr(graph, "name", None), str) else "?"
        err = ModelFormatError(f"graph {name!r} is invalid: {shown}{more}")
        err.problems = found
        raise err
