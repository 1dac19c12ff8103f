"""Mutation fuzzing of the ``.qinf`` reader and the ONNX importer (tests/test_fuzz.py and
scripts/fuzz.py share it).

Design: a case is a *plan*, plain JSON: the name of a corpus file and the edits that turn it into
a hostile file. Hypothesis strategies draw the plans; they know each corpus file's structure
(header paths, node, value and tensor names, blob sizes, ONNX nodes and initializers), so most
edits are structured: JSON fields of the header, typed values inside tensor blobs (packed weight
headers, scales), attributes, wiring and initializers of ONNX nodes; the checksums are recomputed
after them, so the cases reach past the reader's integrity checks into ``verify``, the planner and
the kernels. Raw byte edits (truncation, bit flips, overwrites, cuts) come on top.

Cases run in worker subprocesses, one case at a time per worker, each under a deadline: a worker
that dies (segfault, abort) or overruns is reported with the case's plan and replaced, and the
campaign goes on. A plan replays alone (``scripts/fuzz.py --replay``), whatever seed drew it.

Each case loads the mutated file (``.qinf`` from a file, so through the memory map; ONNX from
bytes), and when it loads, plans and runs it on a valid input of the original model. The only
allowed outcomes are success and a ``qinfer.QinferError`` subclass; anything else fails the case:
another exception, a ``MemoryError`` anywhere in the exception chain (a file made qinfer reach for
more memory than the worker's address-space limit), a crash or a hang.
"""
import json
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from typing import NamedTuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

#: prefix of a .qinf file: magic, u32 version, u32 flags, u64 header length, u32 header crc32
_PREFIX = struct.Struct("<8sIIQI")
#: JSON values of the wrong kind, for any field (type confusion)
WEIRD = [None, True, False, 0, -1, 1, 2 ** 31, 2 ** 63, 2 ** 64, -2 ** 63, 1.5, -0.0, 1e308, "",
         "x", "float32", "__blob0__", [], [None], [1, 2], [[1]], [0] * 70, {}, {"a": 1},
         {"__float__": "nan"}, {"__float__": "inf"}, {"__dict__": {}}, {"__tuple__": [1]},
         {"__scalar__": ["int8", 1]}, {"__bytes__": "00ff"}]
SPECIAL_FLOATS = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, -1.0, 1e-45, 3.4e38, 1e30]
SPECIAL_INTS = [0, 1, -1, 2, 3, 7, 64, 255, 256, 65535, 2 ** 31 - 1, 2 ** 31, -2 ** 31, 2 ** 32,
                2 ** 62, 2 ** 63 - 1, -2 ** 63]
#: ONNX ops a node may be turned into (all known to qinfer, so conversion goes on past the op)
ONNX_OPS = ["Relu", "Conv", "Gemm", "MatMul", "Add", "Mul", "Reshape", "Transpose", "Flatten",
            "Concat", "Gather", "Slice", "MaxPool", "AveragePool", "GlobalAveragePool", "Softmax",
            "Resize", "Pad", "Expand", "Tile", "ConstantOfShape", "Range", "Squeeze", "Unsqueeze",
            "Split", "ReduceMean", "Cast", "Where", "LSTM", "ConvTranspose", "TopK", "Einsum",
            "Identity", "Shape", "BatchNormalization", "LayerNormalization", "OneHot", "NonZero",
            "DepthToSpace", "CumSum", "ScatterND", "GatherND", "Trilu", "Upsample", "Dropout"]
ONNX_TYPES = [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 16, 17, 22, 40]


# ================================================================================ the corpus
class Entry(NamedTuple):
    name: str
    kind: str          # "qinf" or "onnx"
    data: bytes
    feeds: dict        # input name -> array: a valid input of the original model


def _smallnet_onnx(rng):
    """conv -> depthwise -> pointwise + residual -> squeeze-excitation -> max pool -> global
    average pool -> dense: after quantization, every int8 op of qinfer (QConv conv and dw, QAdd,
    QGlobalAveragePool, QMulChannel, QMaxPool, QGemm) in a 4 KB file."""
    import onnx
    from onnx import TensorProto as T, helper as H, numpy_helper as NH

    def w(name, *shape):
        return NH.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    inits = [w("c1w", 8, 3, 3, 3), w("c1b", 8), w("dww", 8, 1, 3, 3), w("dwb", 8),
             w("pww", 8, 8, 1, 1), w("pwb", 8), w("se1w", 4, 8, 1, 1), w("se1b", 4),
             w("se2w", 8, 4, 1, 1), w("se2b", 8), w("fcw", 5, 8), w("fcb", 5)]
    n = H.make_node
    nodes = [
        n("Conv", ["x", "c1w", "c1b"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        n("Relu", ["c1"], ["r1"], name="relu1"),
        n("Conv", ["r1", "dww", "dwb"], ["dw"], pads=[1, 1, 1, 1], group=8, name="dw"),
        n("Relu", ["dw"], ["r2"], name="relu2"),
        n("Conv", ["r2", "pww", "pwb"], ["pw"], name="pw"),
        n("Add", ["pw", "r1"], ["res"], name="add"),
        n("Relu", ["res"], ["r3"], name="relu3"),
        n("GlobalAveragePool", ["r3"], ["g1"], name="gap1"),
        n("Conv", ["g1", "se1w", "se1b"], ["s1"], name="se1"),
        n("Relu", ["s1"], ["s1r"], name="se_relu"),
        n("Conv", ["s1r", "se2w", "se2b"], ["s2"], name="se2"),
        n("HardSigmoid", ["s2"], ["gate"], name="gate"),
        n("Mul", ["r3", "gate"], ["se"], name="se_mul"),
        n("MaxPool", ["se"], ["mp"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        n("GlobalAveragePool", ["mp"], ["g2"], name="gap2"),
        n("Flatten", ["g2"], ["f"], name="flatten"),
        n("Gemm", ["f", "fcw", "fcb"], ["y"], transB=1, name="fc"),
    ]
    g = H.make_graph(nodes, "smallnet", [H.make_tensor_value_info("x", T.FLOAT, ["batch", 3, 12, 12])],
                     [H.make_tensor_value_info("y", T.FLOAT, ["batch", 5])], inits)
    m = H.make_model(g, opset_imports=[H.make_opsetid("", 17)], producer_name="qinfer-tests")
    onnx.checker.check_model(m)
    return m.SerializeToString()


def _mlp_onnx(rng):
    """x[batch, 16] -> MatMul + bias -> Relu -> MatMul: quantized with dynamic activations it is
    two DynQGemm nodes."""
    import onnx
    from onnx import TensorProto as T, helper as H, numpy_helper as NH

    def w(name, *shape):
        return NH.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    n = H.make_node
    nodes = [n("MatMul", ["x", "w1"], ["h"], name="mm1"), n("Add", ["h", "b1"], ["hb"], name="bias"),
             n("Relu", ["hb"], ["hr"], name="relu"), n("MatMul", ["hr", "w2"], ["y"], name="mm2")]
    g = H.make_graph(nodes, "mlp", [H.make_tensor_value_info("x", T.FLOAT, ["batch", 16])],
                     [H.make_tensor_value_info("y", T.FLOAT, ["batch", 10])],
                     [w("w1", 16, 32), w("b1", 32), w("w2", 32, 10)])
    m = H.make_model(g, opset_imports=[H.make_opsetid("", 17)], producer_name="qinfer-tests")
    onnx.checker.check_model(m)
    return m.SerializeToString()


def build_corpus(digits_cnn=None, digits_mlp=None, transformer=None, seed=0):
    """The files to mutate: float, int8, int4 and sparse int8 ``.qinf`` files and ONNX files of
    small models.

    ``digits_cnn`` / ``digits_mlp``: ``models.DigitsModel`` (None leaves them out);
    ``transformer``: the path of the transformer ONNX file (None leaves it out)."""
    import qinfer
    from qinfer.ir import serialize
    rng = np.random.default_rng(seed)
    out = {}

    def add(name, kind, data, feeds):
        out[name] = Entry(name, kind, bytes(data), feeds)

    def add_model(name, onnx_bytes, feeds, calib, dynamic=False):
        add(name + "-onnx", "onnx", onnx_bytes, feeds)
        m = qinfer.convert(onnx_bytes)
        add(name + "-float", "qinf", serialize.to_bytes(m.graph), feeds)
        if dynamic:
            q = qinfer.quantize(m, activations="dynamic", progress=False)
        else:
            q = qinfer.quantize(m, calib, progress=False)
        add(name + "-int8", "qinf", serialize.to_bytes(q.graph), feeds)
        if name == "smallnet":   # blobs stored deflated (version 3): the reader's inflate path too
            add(name + "-int8-deflated", "qinf", serialize.to_bytes(q.graph, deflate=True), feeds)

    x = rng.standard_normal((2, 3, 12, 12)).astype(np.float32)
    small = _smallnet_onnx(rng)
    calib = [rng.standard_normal((2, 3, 12, 12)).astype(np.float32) for _ in range(4)]
    add_model("smallnet", small, {"x": x}, calib)
    # the other packed weight formats: int4 (QB4W: Q4Conv / Q4Gemm) and sparse int8 (SB4W: the
    # first conv pruned 80% in 1x4 blocks)
    m = qinfer.convert(small)
    add("smallnet-int4", "qinf", serialize.to_bytes(
        qinfer.quantize(m, calib, weights="int4", progress=False).graph), {"x": x})
    pruned = qinfer.prune(m, sparsity=0.8, pattern="block4", progress=False)
    add("smallnet-sparse", "qinf", serialize.to_bytes(
        qinfer.quantize(pruned, calib, progress=False).graph), {"x": x})
    xm = rng.standard_normal((3, 16)).astype(np.float32)
    mlp = _mlp_onnx(rng)
    add_model("mlp", mlp, {"x": xm}, None, dynamic=True)
    add("mlp-int4", "qinf", serialize.to_bytes(qinfer.quantize(
        qinfer.convert(mlp), activations="dynamic", weights="int4", progress=False).graph), {"x": xm})
    if digits_cnn is not None:
        with open(digits_cnn.path, "rb") as f:
            data = f.read()
        xs = digits_cnn.x_test
        add_model("digits_cnn", data, {"input": xs[:2]}, [xs[i:i + 8] for i in range(0, 32, 8)])
    if digits_mlp is not None:
        xs = digits_mlp.x_test
        m = qinfer.convert(digits_mlp.path)
        q = qinfer.quantize(m, [xs[i:i + 8] for i in range(0, 32, 8)], progress=False)
        add("digits_mlp-int8", "qinf", serialize.to_bytes(q.graph), {"input": xs[:2]})
    if transformer is not None:
        import models
        with open(transformer, "rb") as f:
            add("transformer-onnx", "onnx", f.read(), {"x": models.transformer_input(rng, 1, 8)})
    return out


def save_corpus(corpus, directory):
    for e in corpus.values():
        with open(os.path.join(directory, e.name + "." + e.kind), "wb") as f:
            f.write(e.data)
        np.savez(os.path.join(directory, e.name + ".npz"), **e.feeds)


def load_corpus(directory):
    out = {}
    for fn in sorted(os.listdir(directory)):
        name, ext = os.path.splitext(fn)
        if ext in (".qinf", ".onnx"):
            with open(os.path.join(directory, fn), "rb") as f:
                data = f.read()
            with np.load(os.path.join(directory, name + ".npz")) as z:
                feeds = {k: z[k] for k in z.files}
            out[name] = Entry(name, ext[1:], data, feeds)
    return out


# ================================================================================ .qinf files
def split_qinf(data):
    """A valid ``.qinf`` file -> (version, flags, header dict, data section bytes)."""
    _, version, flags, hlen, _ = _PREFIX.unpack_from(data, 0)
    start = (_PREFIX.size + hlen + 63) // 64 * 64
    head = data[_PREFIX.size:_PREFIX.size + hlen]
    if flags & 1:                                   # deflated header: u64 length, zlib stream
        head = zlib.decompress(head[8:])
    return version, flags, json.loads(head), data[start:]


def pack_qinf(header, blob, version=None, flags=0):
    """A file around ``header`` with a correct header checksum (deflated if ``flags`` says so),
    of format ``version`` (default: the version qinfer writes)."""
    if version is None:
        from qinfer.ir.serialize import FORMAT_VERSION as version
    head = json.dumps(header, separators=(",", ":")).encode()
    if flags & 1:
        head = struct.pack("<Q", len(head)) + zlib.compress(head)
    out = _PREFIX.pack(b"\x89QINF\r\n\x1a", version, flags, len(head), zlib.crc32(head)) + head
    return out + b"\0" * (-len(out) % 64) + bytes(blob)


def _paths(o, p=()):
    yield p
    items = o.items() if isinstance(o, dict) else enumerate(o) if isinstance(o, list) else ()
    for k, v in items:
        yield from _paths(v, p + (k,))


def _get(o, path):
    for k in path:
        o = o[k]
    return o


def _tensor_record(header, name):
    return next(t for t in header["tensors"] if t.get("name") == name)


_BLOB_TYPES = {"float32": "<f4", "int32": "<i4", "int64": "<i8", "uint8": "u1", "int8": "i1"}


def _blob_put(header, blob, name, index, dtype, value):
    """Write ``value`` as ``dtype`` at element ``index`` of tensor ``name``; fix its crc32."""
    t = _tensor_record(header, name)
    size = np.dtype(_BLOB_TYPES[dtype]).itemsize
    inline = bytearray.fromhex(t["data"]) if "data" in t else None   # a tensor in the header
    count = (len(inline) if inline is not None else t["nbytes"]) // size
    if count == 0:
        return
    pos = (index % count) * size
    if isinstance(value, float):
        raw = np.array(value, _BLOB_TYPES[dtype] if dtype == "float32" else "<f4").tobytes()
    else:
        info = np.iinfo(_BLOB_TYPES[dtype])
        raw = np.array(min(max(value, info.min), info.max), _BLOB_TYPES[dtype]).tobytes()
    if inline is not None:
        inline[pos:pos + len(raw)] = raw
        t["data"] = inline.hex()
        return
    if "deflated" in t:   # a zlib stream: edit its bytes, deflate them again, put it after the data
        stored = blob[t["offset"]:t["offset"] + t["deflated"]]
        plain = bytearray(zlib.decompress(bytes(stored)))
        plain[pos:pos + len(raw)] = raw
        z = zlib.compress(bytes(plain), 9)
        blob[t["offset"]:t["offset"] + t["deflated"]] = bytes(t["deflated"])
        blob.extend(b"\0" * (-len(blob) % 64))
        t.update(offset=len(blob), deflated=len(z), crc32=zlib.crc32(z))
        blob.extend(z)
        header["data_nbytes"] = len(blob)
        return
    pos += t["offset"]
    blob[pos:pos + len(raw)] = raw
    t["crc32"] = zlib.crc32(bytes(blob[t["offset"]:t["offset"] + t["nbytes"]]))


def apply_qinf(data, edits, byte_edits):
    """The file ``edits`` (structured, checksums recomputed) then ``byte_edits`` make of ``data``.
    An edit whose target an earlier edit removed is skipped."""
    version, flags, header, blob = split_qinf(data)
    blob = bytearray(blob)
    edits = json.loads(json.dumps(edits))    # the header takes the edits' values: own them
    for e in edits:
        try:
            op = e[0]
            if op == "set":
                _get(header, e[1][:-1])[e[1][-1]] = e[2]
            elif op == "del":
                o = _get(header, e[1][:-1])
                del o[e[1][-1]]
            elif op == "dup":
                o = _get(header, e[1][:-1])
                o.append(json.loads(json.dumps(o[e[1][-1]])))
            elif op == "swap":
                a, b = _get(header, e[1][:-1]), _get(header, e[2][:-1])
                a[e[1][-1]], b[e[2][-1]] = b[e[2][-1]], a[e[1][-1]]
            elif op == "blob":
                _blob_put(header, blob, *e[1:])
            elif op == "version":
                version = e[1]
            elif op == "flags":
                flags = e[1]
        except (KeyError, IndexError, TypeError, AttributeError, StopIteration, ValueError, zlib.error):
            pass
    return apply_bytes(pack_qinf(header, blob, version % 2 ** 32, flags % 2 ** 32), byte_edits)


def apply_bytes(data, byte_edits):
    b = bytearray(data)
    for e in byte_edits:
        op, n = e[0], max(len(b), 1)
        if op == "trunc":
            del b[e[1] % n:]
        elif op == "flip" and b:
            b[e[1] % n] ^= 1 << (e[2] % 8)
        elif op == "put" and b:
            pos = e[1] % n
            raw = bytes.fromhex(e[2])
            b[pos:pos + len(raw)] = raw
        elif op == "cut":
            del b[e[1] % n:e[1] % n + e[2]]
        elif op == "insert":
            b[e[1] % n:e[1] % n] = bytes.fromhex(e[2])
    return bytes(b)


# ================================================================================ ONNX files
def _onnx_attr(name, kind, value):
    from onnx import helper, numpy_helper
    if kind == "int":
        return helper.make_attribute(name, int(value))
    if kind == "float":
        return helper.make_attribute(name, float(value))
    if kind == "ints":
        return helper.make_attribute(name, [int(v) for v in value], attr_type=7)
    if kind == "floats":
        return helper.make_attribute(name, [float(v) for v in value], attr_type=6)
    if kind == "string":
        return helper.make_attribute(name, str(value))
    dtype, shape, fill = value   # "tensor"
    return helper.make_attribute(name, numpy_helper.from_array(np.full(shape, fill, dtype)))


def _repeated_set(field, items):
    del field[:]
    field.extend(items)


def _onnx_edit(m, e):
    from onnx import numpy_helper
    g = m.graph
    op = e[0]
    if op == "attr":
        _, ni, name, kind, value = e
        node = g.node[ni % len(g.node)]
        keep = [a for a in node.attribute if a.name != name]
        _repeated_set(node.attribute, keep + [_onnx_attr(name, kind, value)])
    elif op == "attr_del":
        node = g.node[e[1] % len(g.node)]
        if node.attribute:
            del node.attribute[e[2] % len(node.attribute)]
    elif op in ("input", "output"):
        _, ni, slot, name = e
        node = g.node[ni % len(g.node)]
        field = node.input if op == "input" else node.output
        if slot < len(field):
            field[slot] = name
        else:
            field.append(name)
    elif op == "op":
        g.node[e[1] % len(g.node)].op_type = e[2]
    elif op == "node_del":
        del g.node[e[1] % len(g.node)]
    elif op == "node_dup":
        g.node.append(g.node[e[1] % len(g.node)])
    elif op == "node_swap":
        i, j = e[1] % len(g.node), e[2] % len(g.node)
        a, b = type(g.node[i])(), type(g.node[j])()
        a.CopyFrom(g.node[i])
        b.CopyFrom(g.node[j])
        g.node[i].CopyFrom(b)
        g.node[j].CopyFrom(a)
    elif op.startswith("init_"):
        t = g.initializer[e[1] % len(g.initializer)]
        if op == "init_dims":
            _repeated_set(t.dims, e[2])
        elif op == "init_type":
            t.data_type = e[2]
        elif op == "init_name":
            t.name = e[2]
        elif op == "init_raw":
            raw = t.raw_data if t.raw_data else numpy_helper.to_array(t).tobytes()
            t.raw_data = raw[:e[2]] if e[2] >= 0 else raw + b"\x7f" * -e[2]
        elif op == "init_val":
            a = numpy_helper.to_array(t).copy()
            if a.size:
                flat = a.reshape(-1)
                flat[e[2] % a.size] = np.array(e[3]).astype(a.dtype) if a.dtype.kind == "f" \
                    else np.clip(int(e[3]), np.iinfo(a.dtype).min, np.iinfo(a.dtype).max)
                t.CopyFrom(numpy_helper.from_array(a, t.name))
    elif op in ("vi_dim", "vi_type"):
        vis = g.input if e[1] == "input" else g.output
        vi = vis[e[2] % len(vis)]
        if op == "vi_type":
            vi.type.tensor_type.elem_type = e[3]
        else:
            dims = vi.type.tensor_type.shape.dim
            if dims:
                d = dims[e[3] % len(dims)]
                if isinstance(e[4], str):
                    d.dim_param = e[4]
                else:
                    d.dim_value = e[4]
    elif op == "opset":
        m.opset_import[0].version = e[1]
    elif op == "graph_output":
        g.output[e[1] % len(g.output)].name = e[2]


def apply_onnx(data, edits, byte_edits):
    import onnx
    m = onnx.load_from_string(data)
    for e in edits:
        try:
            _onnx_edit(m, e)
        except (IndexError, KeyError, ValueError, TypeError, OverflowError, ZeroDivisionError):
            pass        # the edit does not fit what earlier edits left (or the protobuf field)
    return apply_bytes(m.SerializeToString(), byte_edits)


def mutate(entry, plan):
    """The bytes of the file ``plan`` makes of ``entry``."""
    if entry.kind == "qinf":
        return apply_qinf(entry.data, plan.get("edits", ()), plan.get("bytes", ()))
    return apply_onnx(entry.data, plan.get("edits", ()), plan.get("bytes", ()))


# ================================================================================ strategies
def _byte_edits(st, size, min_size=0):
    pos = st.integers(0, max(size - 1, 0)) | st.integers(0, 64 * 4)
    hexes = st.binary(min_size=1, max_size=8).map(bytes.hex)
    return st.lists(st.one_of(
        st.tuples(st.just("trunc"), pos), st.tuples(st.just("flip"), pos, st.integers(0, 7)),
        st.tuples(st.just("put"), pos, hexes), st.tuples(st.just("cut"), pos, st.integers(1, 64)),
        st.tuples(st.just("insert"), pos, hexes)).map(list), min_size=min_size, max_size=3)


def _like(st, orig, names):
    """JSON values to put where ``orig`` was: near it, at the edges of its type, or of another
    type."""
    weird = st.sampled_from(WEIRD)
    if isinstance(orig, bool):
        return st.sampled_from([not orig, 0, 1, 2]) | weird
    if isinstance(orig, int):
        near = [orig + 1, orig - 1, -orig, orig * 2, orig * 64 + 1, orig // 2]
        return st.sampled_from(near + SPECIAL_INTS) | st.integers() | weird
    if isinstance(orig, float):
        tags = [{"__float__": s} for s in ("nan", "inf", "-inf")]
        return st.sampled_from(tags + [0.0, -0.0, -orig, orig * 1e6, orig * 1e-6, 1e38, 5e-324]) \
            | st.floats(allow_nan=False, allow_infinity=False) | weird
    if isinstance(orig, str):
        return st.sampled_from(names) | st.text(max_size=6) | weird
    if isinstance(orig, list):
        n = len(orig)
        ints = st.sampled_from(SPECIAL_INTS + [orig[0] if n and isinstance(orig[0], int) else 0])
        return (st.sampled_from([orig[:-1], orig + orig[-1:], [], orig[::-1]] if n else [[], [0]])
                | st.lists(ints, min_size=max(n - 1, 0), max_size=n + 1) | weird)
    if isinstance(orig, dict) and len(orig) == 1:
        (tag, v), = orig.items()
        if tag == "__tensor__":
            return st.sampled_from([{"__tensor__": n} for n in names]) | weird
        if tag == "__float__":
            return st.sampled_from([{"__float__": s} for s in ("nan", "inf", "-inf")]) | weird
    return weird


def qinf_plans(st, corpus):
    """Plans for the ``.qinf`` files of ``corpus``."""
    per_model = []
    for e in corpus.values():
        if e.kind == "qinf":
            per_model.append(_qinf_model_plans(st, e))
    return st.one_of(per_model)


def _qinf_model_plans(st, entry):
    _, _, header, _ = split_qinf(entry.data)
    every = [p for p in _paths(header) if p]
    groups = {"nodes": [], "values": [], "tensors": [], "other": []}
    for p in every:
        key = p[0] if p[0] in ("nodes", "tensors") else \
            "values" if p[0] in ("inputs", "outputs", "value_info") else "other"
        groups[key].append(p)
    names = sorted({x for p in every for x in [_get(header, p)] if isinstance(x, str)})
    tensors = [(t["name"], t["dtype"], t["nbytes"] if "nbytes" in t else len(t["data"]) // 2)
               for t in header["tensors"]]
    lists = [p for p in every if isinstance(_get(header, p[:-1]), list)]

    weights = {"nodes": 6, "values": 3, "tensors": 1, "other": 2}
    in_group = {k: st.sampled_from(v) for k, v in groups.items() if v}
    path_choice = st.sampled_from([k for k, w in weights.items() if k in in_group
                                   for _ in range(w)]).flatmap(in_group.__getitem__)
    values = {}       # path -> strategy of its replacements (built once: Hypothesis validates each)

    @st.composite
    def set_edit(draw):
        path = draw(path_choice)
        if path not in values:
            values[path] = _like(st, _get(header, path), names)
        return ["set", list(path), draw(values[path])]

    @st.composite
    def blob_edit(draw):
        name, dtype, nbytes = draw(st.sampled_from(tensors))
        if dtype in ("float32", "float64", "float16"):
            return ["blob", name, draw(st.integers(0, 1 << 20)), "float32",
                    draw(st.sampled_from(SPECIAL_FLOATS))]
        # packed int8 weights: the 16 int32 header fields first, then bias / colsum / weights
        kind = draw(st.sampled_from(["int32", "int32", "uint8", "int8", "int64"]))
        index = draw(st.integers(0, 15) | st.integers(0, max(nbytes, 1)))
        return ["blob", name, index, kind, draw(st.sampled_from(SPECIAL_INTS) | st.integers(-300, 300))]

    makers = {
        "set": set_edit(), "blob": blob_edit(),
        "del": path_choice.map(lambda p: ["del", list(p)]),
        "dup": st.sampled_from(lists).map(lambda p: ["dup", list(p)]),
        "swap": st.tuples(st.sampled_from(lists), st.sampled_from(lists)).map(
            lambda t: ["swap", list(t[0]), list(t[1])]),
        "prefix": st.tuples(st.sampled_from(["version", "flags"]),
                            st.sampled_from([0, 1, 2, 2 ** 31])).map(list),
    }
    structured = _weighted(st, makers, {"set": 10, "blob": 3, "del": 2, "dup": 1, "swap": 2,
                                        "prefix": 1})
    return _plan(st, entry, structured)


def _weighted(st, makers, weights):
    return st.sampled_from([k for k, w in weights.items() for _ in range(w)]).flatmap(makers.get)


def _plan(st, entry, edits):
    """{"model", "edits" (0..3 structured), "bytes" (raw byte edits, on one plan in five)}, never
    both empty."""
    name = st.just(entry.name)
    structured = st.fixed_dictionaries({"model": name, "edits": st.lists(edits, min_size=1, max_size=3),
                                        "bytes": st.just([])})
    raw = st.fixed_dictionaries({"model": name, "edits": st.lists(edits, max_size=3),
                                 "bytes": _byte_edits(st, len(entry.data), min_size=1)})
    return st.sampled_from([structured] * 4 + [raw]).flatmap(lambda s: s)


def onnx_plans(st, corpus):
    """Plans for the ONNX files of ``corpus``."""
    return st.one_of([_onnx_model_plans(st, e) for e in corpus.values() if e.kind == "onnx"])


def _onnx_model_plans(st, entry):
    import onnx
    m = onnx.load_from_string(entry.data)
    g = m.graph
    names = sorted({x for n in g.node for x in list(n.input) + list(n.output)}
                   | {t.name for t in g.initializer} | {v.name for v in g.input}) + ["", "ghost"]
    attr_names = sorted({a.name for n in g.node for a in n.attribute}
                        | {"axis", "axes", "perm", "to", "group", "kernel_shape", "mode", "value"})
    node_i = st.integers(0, len(g.node) - 1)
    init_i = st.integers(0, max(len(g.initializer) - 1, 0))
    ints = st.sampled_from(SPECIAL_INTS) | st.integers(-8, 8)
    floats = st.sampled_from(SPECIAL_FLOATS) | st.floats(-10, 10)
    attr_value = st.one_of(
        st.tuples(st.just("int"), ints), st.tuples(st.just("float"), floats),
        st.tuples(st.just("ints"), st.lists(ints, max_size=6)),
        st.tuples(st.just("floats"), st.lists(floats, max_size=6)),
        st.tuples(st.just("string"), st.sampled_from(["", "nearest", "linear", "SAME_UPPER", "x"])),
        st.tuples(st.just("tensor"), st.tuples(st.sampled_from(["float32", "int64", "int32"]),
                                               st.lists(st.integers(0, 3), max_size=3), ints)))
    dims = st.lists(st.sampled_from([0, 1, 2, 3, 8, -1, 2 ** 31, 2 ** 40]), max_size=5)
    edits = st.one_of(
        st.tuples(st.just("attr"), node_i, st.sampled_from(attr_names), attr_value).map(
            lambda t: ["attr", t[1], t[2], t[3][0], t[3][1]]),
        st.tuples(st.just("attr_del"), node_i, st.integers(0, 8)),
        st.tuples(st.sampled_from(["input", "output"]), node_i, st.integers(0, 3),
                  st.sampled_from(names)),
        st.tuples(st.just("op"), node_i, st.sampled_from(ONNX_OPS)),
        st.tuples(st.sampled_from(["node_del", "node_dup"]), node_i),
        st.tuples(st.just("node_swap"), node_i, node_i),
        st.tuples(st.just("init_dims"), init_i, dims),
        st.tuples(st.just("init_type"), init_i, st.sampled_from(ONNX_TYPES)),
        st.tuples(st.just("init_name"), init_i, st.sampled_from(names)),
        st.tuples(st.just("init_raw"), init_i, st.integers(-64, 64)),
        st.tuples(st.just("init_val"), init_i, st.integers(0, 1 << 16), floats | ints),
        st.tuples(st.just("vi_dim"), st.sampled_from(["input", "output"]), st.integers(0, 3),
                  st.integers(0, 3), st.sampled_from([0, 1, 2, 7, 2 ** 31, 2 ** 62, -2]) | st.text(max_size=3)),
        st.tuples(st.just("vi_type"), st.sampled_from(["input", "output"]), st.integers(0, 3),
                  st.sampled_from(ONNX_TYPES)),
        st.tuples(st.just("opset"), st.sampled_from([1, 6, 7, 9, 10, 11, 13, 21, 22, 99, -1])),
        st.tuples(st.just("graph_output"), st.integers(0, 3), st.sampled_from(names)),
    ).map(list)
    return _plan(st, entry, edits)


def draw_plans(strategy, cases, seed, sink):
    """Draw ``cases`` plans from ``strategy`` with Hypothesis (seeded, no shrinking, no example
    database) and hand each to ``sink(plan)``."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    from hypothesis import strategies as st

    @st.composite
    def plans(draw):        # (a short repr: Hypothesis shows it, and the corpus' one is huge)
        return draw(strategy)

    @settings(max_examples=cases, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @hseed(seed)
    @given(plans())
    def each(plan):
        sink(plan)

    each()


# ================================================================================ one case
def run_case(entry, plan, tmpdir):
    """Run one case in this process: ``(stage, outcome)`` where stage is how far it got
    ("load", "run", "done") and outcome "ok" or the QinferError class name. Any other exception
    propagates."""
    import qinfer
    data = mutate(entry, plan)
    if entry.kind == "qinf":
        src = os.path.join(tmpdir, "case.qinf")
        with open(src, "wb") as f:
            f.write(data)
    else:
        src = data
    stage = "load"
    try:
        sess = qinfer.InferenceSession(src, num_threads=1)
        stage = "run"
        sess.run(None, entry.feeds)
    except qinfer.QinferError as e:
        chain = e
        while chain is not None:
            if isinstance(chain, MemoryError):
                raise MemoryError(f"{type(e).__name__} hides an allocation failure: {e}") from e
            chain = chain.__context__
        return stage, type(e).__name__
    return "done", "ok"


def _worker(corpus_dir, mem_limit):
    """Worker loop: one JSON plan per line on stdin, one JSON result per line on the protocol
    pipe (the original stdout; prints of the code under test go to stderr)."""
    import resource
    import warnings
    warnings.simplefilter("ignore")
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    corpus = load_corpus(corpus_dir)
    import onnx  # noqa: F401  (imported before the limit: its mappings are not a case's)
    from qinfer.runtime import planner
    if mem_limit:   # a case may reserve this much address space beyond what the worker holds
        resource.setrlimit(resource.RLIMIT_AS, (_vm_size() + mem_limit, resource.RLIM_INFINITY))
        # the corpus' models need a few MB a value: refuse big ones well below the limit, so a
        # value that escapes the planner's checks shows as a MemoryError
        planner.MAX_TENSOR_BYTES = mem_limit // 8
    tmpdir = tempfile.mkdtemp(prefix="qinfer-fuzz-")
    proto.write("ready\n")
    for line in sys.stdin:
        plan = json.loads(line)
        if plan.get("selftest"):       # the campaign's own test: a worker that dies or hangs
            _SELFTESTS[plan["selftest"]]()
        try:
            stage, outcome = run_case(corpus[plan["model"]], plan, tmpdir)
            res = {"stage": stage, "outcome": outcome}
        except BaseException as e:  # noqa: BLE001 - the failure is the finding: report it whole
            res = {"stage": "?", "outcome": "exception", "error": f"{type(e).__name__}: {e}",
                   "traceback": traceback.format_exc(limit=12)}
        proto.write(json.dumps(res) + "\n")


_SELFTESTS = {"crash": lambda: os.kill(os.getpid(), signal.SIGSEGV),
              "hang": lambda: time.sleep(3600)}


def _vm_size():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


# ================================================================================ the pool
class Failure(NamedTuple):
    case: int
    kind: str          # "exception", "crash", "hang"
    detail: str
    plan: dict

    def report(self, seed):
        return (f"case #{self.case} (campaign seed {seed}): {self.kind}: {self.detail}\n"
                f"  plan: {json.dumps(self.plan)}\n"
                f"  replay: python scripts/fuzz.py --replay '{json.dumps(self.plan)}'")


class _Worker:
    def __init__(self, corpus_dir, mem_limit, log_dir, index):
        self.log = open(os.path.join(log_dir, f"worker{index}.log"), "w+b")
        env = dict(os.environ, OMP_NUM_THREADS="1", QINFER_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", corpus_dir, str(mem_limit)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env)
        self.buf = b""
        self.case = None         # (case number, plan, deadline)
        self.ready = False

    def fileno(self):
        return self.proc.stdout.fileno()

    def send(self, number, plan, timeout):
        self.case = (number, plan, time.monotonic() + timeout)
        self.proc.stdin.write((json.dumps(plan) + "\n").encode())
        self.proc.stdin.flush()

    def lines(self):
        """Complete lines read so far; None at end of file (the worker died)."""
        chunk = os.read(self.fileno(), 1 << 16)
        if not chunk:
            return None
        self.buf += chunk
        *done, self.buf = self.buf.split(b"\n")
        return done

    def stderr_tail(self, n=1500):
        self.log.flush()
        self.log.seek(0, os.SEEK_END)
        size = self.log.tell()
        self.log.seek(max(0, size - n))
        return self.log.read().decode("utf-8", "replace")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self.log.close()


class Campaign:
    """Runs plans on ``workers`` subprocesses; ``submit`` blocks while every worker is busy."""

    STARTUP_S = 300.0

    def __init__(self, corpus, workers=2, timeout=30.0, mem_limit=2 << 30):
        self.timeout = timeout
        self.mem_limit = mem_limit
        self.tmp = tempfile.TemporaryDirectory(prefix="qinfer-fuzz-corpus-")
        save_corpus(corpus, self.tmp.name)
        self.workers = [self._spawn(i) for i in range(workers)]
        self.failures = []
        self.stats = {}          # (model kind, stage, outcome) -> count
        self.kinds = {e.name: e.kind for e in corpus.values()}
        self.count = 0

    def _spawn(self, i):
        return _Worker(self.tmp.name, self.mem_limit, self.tmp.name, i)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        for w in self.workers:
            w.kill()
        self.tmp.cleanup()

    def submit(self, plan):
        while True:
            for w in self.workers:
                if w.ready and w.case is None:
                    w.send(self.count, plan, self.timeout)
                    self.count += 1
                    return
            self._poll()

    def finish(self):
        while any(w.case is not None or not w.ready for w in self.workers):
            self._poll()
        return self

    def _poll(self):
        now = time.monotonic()
        deadlines = [w.case[2] for w in self.workers if w.case is not None]
        wait = max(0.0, min(deadlines) - now) if deadlines else self.STARTUP_S
        readable, _, _ = select.select(self.workers, [], [], wait)
        for w in readable:
            lines = w.lines()
            if lines is None:
                self._replace(w, "crash", self._death(w))
                continue
            for line in lines:
                if line == b"ready":
                    w.ready = True
                    continue
                self._done(w, json.loads(line))
        now = time.monotonic()
        for w in list(self.workers):
            if w.case is not None and now > w.case[2]:
                self._replace(w, "hang", f"no answer within {self.timeout:g} s")
            elif w.case is None and not w.ready and w.proc.poll() is not None:
                raise RuntimeError("a fuzz worker died while starting:\n" + w.stderr_tail())

    def _death(self, w):
        rc = w.proc.wait()
        how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
        return f"worker {how}; its stderr ends:\n{w.stderr_tail()}"

    def _done(self, w, res):
        number, plan, _ = w.case
        w.case = None
        key = (self.kinds[plan["model"]], res["stage"], res["outcome"])
        self.stats[key] = self.stats.get(key, 0) + 1
        if res["outcome"] == "exception":
            self.failures.append(Failure(number, "exception", res["error"] + "\n" + res["traceback"],
                                         plan))

    def _replace(self, w, kind, detail):
        if w.case is not None:
            number, plan, _ = w.case
            self.failures.append(Failure(number, kind, detail, plan))
            key = (self.kinds[plan["model"]], "?", kind)
            self.stats[key] = self.stats.get(key, 0) + 1
        w.kill()
        i = self.workers.index(w)
        self.workers[i] = self._spawn(i)

    def summary(self):
        """Counts per file kind: cases, reached run, ran to the end, QinferError classes."""
        out = {}
        for (kind, stage, outcome), n in self.stats.items():
            s = out.setdefault(kind, {"cases": 0, "loaded": 0, "ran": 0, "errors": {}})
            s["cases"] += n
            if stage in ("run", "done"):
                s["loaded"] += n
            if stage == "done":
                s["ran"] += n
            if outcome not in ("ok",):
                s["errors"][outcome] = s["errors"].get(outcome, 0) + n
        return out


if __name__ == "__main__" and len(sys.argv) >= 3 and sys.argv[1] == "--worker":
    _worker(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0)
