"""ONNX -> qinfer IR.

Design: a table ``{op: {since_opset: builder}}`` (tinygrad's importer habit). For each node the
builder registered for the newest ``since_opset`` not newer than the model's opset rewrites the node
into the IR's canonical form (the semantics of opset 21). Ops whose semantics never changed in the
supported range need no entry: they pass through unchanged. The whole model is scanned first and one
``UnsupportedOperatorError`` lists every node qinfer cannot run, with op type and opset.

``onnx`` is imported lazily (loading a ``.qinf`` never needs it).
"""
from __future__ import annotations

import os

import numpy as np

from .. import reference
from ..errors import ModelFormatError, UnsupportedOperatorError
from ..ir import dtypes, verify
from ..ir.graph import Graph, Node, Value
from ..ir.passes import fold, fuse

MIN_OPSET = 7          # older models are refused with a clear message
SUPPORTED_DOMAINS = ("", "ai.onnx")


def _onnx():
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - onnx is a dependency, but keep the message clear
        raise ModelFormatError("reading ONNX models needs the 'onnx' package: pip install onnx") from e
    return onnx


# ----------------------------------------------------------------------------- reading the file
def load_proto(src):
    """ONNX path, bytes or ModelProto -> ModelProto (ModelFormatError if unreadable)."""
    onnx = _onnx()
    if isinstance(src, onnx.ModelProto):
        return src
    if isinstance(src, (bytes, bytearray, memoryview)):
        what = "ONNX bytes"
        try:
            m = onnx.load_from_string(bytes(src))
        except Exception as e:
            raise ModelFormatError(f"{what}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    elif isinstance(src, (str, os.PathLike)):
        what = os.fspath(src)
        if not os.path.exists(what):
            raise ModelFormatError(f"{what}: no such file")
        if os.path.isdir(what):
            raise ModelFormatError(f"{what}: is a directory, expected an .onnx file")
        try:
            m = onnx.load(what)
        except Exception as e:
            raise ModelFormatError(f"{what}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    else:
        raise TypeError(f"expected an ONNX path, bytes or onnx.ModelProto, got {type(src).__name__}")
    if not m.HasField("graph") or (len(m.graph.node) == 0 and len(m.graph.output) == 0):
        raise ModelFormatError(f"{what}: not an ONNX model (no graph)")
    return m


def model_opset(m):
    for o in m.opset_import:
        if o.domain in SUPPORTED_DOMAINS:
            return int(o.version)
    return 1 if not m.opset_import else MIN_OPSET


# ----------------------------------------------------------------------------- conversions
def _dims(type_proto):
    tt = type_proto.tensor_type
    if not tt.HasField("shape"):
        return None
    out = []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:
            out.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param and d.dim_param != "?":
            out.append(str(d.dim_param))
        else:
            out.append(None)
    return tuple(out)


def _value_from_proto(vi):
    if not vi.type.HasField("tensor_type"):
        return Value(vi.name), f"value {vi.name!r} is not a tensor (sequence/map types are not supported)"
    code = vi.type.tensor_type.elem_type
    if code == 0:
        return Value(vi.name, None, _dims(vi.type)), None
    name = dtypes.ONNX_TO_NAME.get(code)
    if name is None:
        return Value(vi.name), (f"value {vi.name!r} has element type {dtypes.onnx_type_name(code)}, "
                                "which qinfer does not support")
    return Value(vi.name, name, _dims(vi.type)), None


def _tensor_to_array(t):
    onnx = _onnx()
    if t.data_type not in dtypes.ONNX_TO_NAME:
        raise UnsupportedOperatorError(
            f"tensor {t.name!r} has element type {dtypes.onnx_type_name(t.data_type)}, which qinfer does "
            "not support (float8, bfloat16, 4-bit and string tensors are out of scope)")
    if t.data_location == onnx.TensorProto.EXTERNAL:
        # onnx.load(path) reads external data next to the model; anything left names a file
        raise ModelFormatError(f"tensor {t.name!r} keeps its data in an external file "
                               f"({[(e.key, e.value) for e in t.external_data][:2]}): load the "
                               "model from its path, next to its data files")
    try:
        a = onnx.numpy_helper.to_array(t)
    except (ValueError, TypeError) as e:     # dims that do not match the data
        raise ModelFormatError(f"tensor {t.name!r}: unreadable (dims {list(t.dims)}, "
                               f"{onnx.helper.tensor_dtype_to_string(t.data_type)}): {e}") from None
    return np.asarray(a, order="C")   # (ascontiguousarray would turn 0-d into 1-d)


def _attr_value(a):
    """AttributeProto -> plain Python value (or raise UnsupportedOperatorError reason string)."""
    onnx = _onnx()
    AT = onnx.AttributeProto
    if a.type == AT.FLOAT:
        return float(a.f)
    if a.type == AT.INT:
        return int(a.i)
    if a.type == AT.STRING:
        return a.s.decode("utf-8", "replace")
    if a.type == AT.TENSOR:
        return _tensor_to_array(a.t)
    if a.type == AT.FLOATS:
        return [float(x) for x in a.floats]
    if a.type == AT.INTS:
        return [int(x) for x in a.ints]
    if a.type == AT.STRINGS:
        return [s.decode("utf-8", "replace") for s in a.strings]
    if a.type == AT.TENSORS:
        return [_tensor_to_array(t) for t in a.tensors]
    raise _Unsupported(f"attribute {a.name!r} of type {AT.AttributeType.Name(a.type)} is not supported "
                       "(subgraphs, sparse tensors and type protos cannot be imported)")


class _Unsupported(Exception):
    pass


# ----------------------------------------------------------------------------- builders
# A builder gets (ctx, node) and returns a list of Nodes (usually one). ctx lets it add initializers.
class _Ctx:
    def __init__(self, opset):
        self.opset = opset
        self.new_initializers = {}
        self._n = 0

    def const(self, hint, array):
        self._n += 1
        name = f"{hint}__qinfer_const{self._n}"
        self.new_initializers[name] = np.asarray(array, order="C")
        return name


def _softmax_legacy(ctx, n):
    attrs = dict(n.attrs)
    attrs.setdefault("axis", 1)
    attrs["coerce_2d"] = 1
    return [n.replace(attrs=attrs)]


def _dropout(ctx, n):
    # inference: Dropout is the identity; the optional mask output is all True
    outs = [Node("Identity", (n.inputs[0],), (n.outputs[0],), {}, n.name)]
    if len(n.outputs) > 1 and n.outputs[1]:
        raise _Unsupported("Dropout's mask output is not supported")
    return outs


def _clip_legacy(ctx, n):
    a = n.attrs
    lo = ctx.const(n.name + "_min", np.array(a.get("min", -3.4028234663852886e38), np.float32))
    hi = ctx.const(n.name + "_max", np.array(a.get("max", 3.4028234663852886e38), np.float32))
    return [Node("Clip", (n.inputs[0], lo, hi), n.outputs, {}, n.name)]


def _pad_legacy(ctx, n):
    a = n.attrs
    pads = ctx.const(n.name + "_pads", np.array(a["pads"], np.int64))
    val = ctx.const(n.name + "_value", np.array(a.get("value", 0.0), np.float32))
    return [Node("Pad", (n.inputs[0], pads, val), n.outputs, {"mode": a.get("mode", "constant")}, n.name)]


def _slice_legacy(ctx, n):
    a = n.attrs
    ins = [n.inputs[0], ctx.const(n.name + "_starts", np.array(a["starts"], np.int64)),
           ctx.const(n.name + "_ends", np.array(a["ends"], np.int64))]
    if "axes" in a:
        ins.append(ctx.const(n.name + "_axes", np.array(a["axes"], np.int64)))
    return [Node("Slice", tuple(ins), n.outputs, {}, n.name)]


def _resize_10(ctx, n):
    a = dict(n.attrs)
    mode = a.get("mode", "nearest")
    attrs = {"mode": mode, "coordinate_transformation_mode": "asymmetric"}
    if mode == "nearest":
        attrs["nearest_mode"] = "floor"
    return [Node("Resize", (n.inputs[0], "", n.inputs[1]), n.outputs, attrs, n.name)]


def _upsample(ctx, n):
    a = dict(n.attrs)
    mode = a.get("mode", "nearest")
    attrs = {"mode": mode, "coordinate_transformation_mode": "asymmetric"}
    if mode == "nearest":
        attrs["nearest_mode"] = "floor"
    if len(n.inputs) > 1:
        scales = n.inputs[1]
    else:
        scales = ctx.const(n.name + "_scales", np.array(a["scales"], np.float32))
    return [Node("Resize", (n.inputs[0], "", scales), n.outputs, attrs, n.name)]


def _identity(ctx, n):
    return [n]


BUILDERS = {
    "Softmax": {1: _softmax_legacy, 13: _identity},
    "LogSoftmax": {1: _softmax_legacy, 13: _identity},
    "Dropout": {1: _dropout},
    "Clip": {1: _clip_legacy, 11: _identity},
    "Pad": {1: _pad_legacy, 11: _identity},
    "Slice": {1: _slice_legacy, 10: _identity},
    "Resize": {10: _resize_10, 11: _identity},
    "Upsample": {7: _upsample},
}


def _builder(op, opset):
    table = BUILDERS.get(op)
    if not table:
        return _identity
    best = None
    for since in sorted(table):
        if since <= opset:
            best = table[since]
    return best


# ----------------------------------------------------------------------------- the importer
def convert(src, fold_constants=True):
    """ONNX model (path, bytes or ModelProto) -> float IR Graph."""
    onnx = _onnx()
    m = load_proto(src)
    opset = model_opset(m)
    if opset < MIN_OPSET:
        raise UnsupportedOperatorError(
            f"model uses ONNX opset {opset}; qinfer supports opsets {MIN_OPSET} and newer "
            "(re-export the model with a newer opset)")
    try:
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception:
        inferred = m
    g = m.graph
    problems = []

    initializers = {}
    for t in g.initializer:
        try:
            initializers[t.name] = _tensor_to_array(t)
        except UnsupportedOperatorError as e:
            problems.append((t.name, "initializer", opset, str(e)))
        except Exception as e:
            raise ModelFormatError(f"initializer {t.name!r}: unreadable tensor ({e})") from None
    if len(g.sparse_initializer):
        problems.append(("", "sparse_initializer", opset, "sparse initializers are not supported"))

    inputs = []
    for vi in g.input:
        if vi.name in initializers:
            continue
        v, err = _value_from_proto(vi)
        if err:
            problems.append((vi.name, "input", opset, err))
        inputs.append(v)
    outputs = []
    for vi in g.output:
        v, err = _value_from_proto(vi)
        if err:
            problems.append((vi.name, "output", opset, err))
        outputs.append(v)
    value_info = {}
    for vi in list(inferred.graph.value_info) + list(g.value_info):
        v, err = _value_from_proto(vi)
        if err is None and v.dtype is not None:
            value_info[vi.name] = v

    known = reference.supported_ops() | set(BUILDERS)
    ctx = _Ctx(opset)
    nodes = []
    broken = []             # nodes that break their op's contract (ModelFormatError)
    used_names = set()
    for i, p in enumerate(g.node):
        name = p.name or f"{p.op_type}_{i}"
        if name in used_names:
            name = f"{name}_{i}"
        used_names.add(name)
        if p.domain not in SUPPORTED_DOMAINS:
            problems.append((name, p.op_type, opset, f"domain {p.domain!r} is not supported"))
            continue
        if p.op_type not in known:
            problems.append((name, p.op_type, opset, "operator not supported"))
            continue
        try:
            attrs = {a.name: _attr_value(a) for a in p.attribute}
        except (_Unsupported, UnsupportedOperatorError) as e:
            problems.append((name, p.op_type, opset, str(e)))
            continue
        node = Node(p.op_type, tuple(p.input), tuple(p.output), attrs, name)
        wrong = verify.node_problems(node, f"node {name!r} ({p.op_type})")
        if wrong:
            broken.extend(wrong)
            continue
        if p.op_type == "Cast" or p.op_type == "CastLike":
            to = attrs.get("to")
            if to is not None and to not in dtypes.ONNX_TO_NAME:
                problems.append((name, p.op_type, opset,
                                 f"cast to {dtypes.onnx_type_name(to)} is not supported"))
                continue
        build = _builder(p.op_type, opset)
        if build is None:
            problems.append((name, p.op_type, opset, f"{p.op_type} does not exist before opset "
                             f"{min(BUILDERS[p.op_type])}"))
            continue
        try:
            nodes.extend(build(ctx, node))
        except IndexError:     # an input this opset's form of the op requires is missing
            broken.append(f"node {name!r} ({p.op_type}): too few inputs ({len(p.input)}) for its "
                          f"opset {opset} form")
            continue
        except (_Unsupported, KeyError) as e:
            problems.append((name, p.op_type, opset, str(e)))

    if broken:
        raise ModelFormatError(f"the model has {len(broken)} malformed node(s): " + "; ".join(broken))
    if problems:
        lines = [f"  node {n!r}: {op} (opset {ops}): {why}" for n, op, ops, why in problems]
        raise UnsupportedOperatorError(
            f"the model has {len(problems)} unsupported element(s):\n" + "\n".join(lines), problems)
    initializers.update(ctx.new_initializers)

    meta = {
        "producer_name": m.producer_name, "producer_version": m.producer_version,
        "domain": m.domain, "model_version": int(m.model_version), "doc_string": m.doc_string,
        "graph_name": g.name, "graph_doc_string": g.doc_string, "opset": opset,
        "custom_metadata_map": {p.key: p.value for p in m.metadata_props},
    }
    graph = Graph(g.name or "graph", nodes, inputs, outputs, initializers, value_info, meta)
    verify.verify(graph)     # dangling names, cycles, duplicate outputs: before anything runs a node
    graph = fold.constants_to_initializers(graph)
    if fold_constants:
        graph = fold.fold_constants(graph)
        graph = fuse.fold_batchnorm(graph)
        graph = fuse.fold_affine_into_conv(graph)
        graph = fuse.fold_batchnorm(graph)     # a BN after a bias Add the affine fold just took
        graph = fuse.fuse_hardswish(graph)
        graph = fold.remove_identity(graph)
        graph = fold.share_constants(graph)
    graph = graph.remove_unused()
    return graph
