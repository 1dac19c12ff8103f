"""Big float constants of quantized models stored int8: tables outside the layers, and the weights
of the layers kept float.

Quantization shrinks the weights of the Conv / Gemm / MatMul layers it runs in int8 or int4, but
two kinds of float32 tensors stay: tables that feed other ops (learned positional embeddings added
to the activations, token embedding tables read by Gather; a 64-wide transformer's positional
table alone is a quarter of its int4 file), and the weights of the layers the precision search
kept float because int8 *activations* hurt them (in PP-OCR recognition they are half the file).
Neither needs float32 storage: weight-only int8 with a scale per row changes them far less than
quantizing the activations does.

``compress_constants`` stores each such float32 initializer of at least ``min_elements`` values
as int8, symmetric, one float32 scale per row, and puts back the original value with ONNX's
``DequantizeLinear`` (per axis 0 of the 2-D rows view) and, for other ranks, a ``Reshape``. A row
is the last axis when it has at least ``ROW_MIN`` values (a table's row, a Gemm weight's output
channel), else everything under the first axis (a conv weight's output channel). The planner
decodes these nodes once when it builds a session (runtime/planner.py), so layers see float32
weights and take their usual fast paths: the file holds 1 byte a value (plus 4 a row), the run
time is unchanged. Each row keeps its largest value exactly and every other to within half a
step of ``max|row| / 127``.

In a model quantized with int4 weights, tables take int4 instead: the int4 layers' blocks (a
float32 scale per ``group_size`` values of a row, codes in [-8, 7] two to a byte, rounded as those
layers' weights), put back by qinfer's ``DequantizeInt4`` -- 4.5 bits a value at blocks of 64. A
table that int4 would move too far takes int8 rows (the budget decides, below).

A layer kept float because it is sensitive is often sensitive to its weights too: in PP-OCR
recognition, int8 weights in those layers kept the output cosine within budget but changed the
text read on 4 lines in 100. Their weights are stored float16 instead (half the bytes for a
relative change of 2**-11, checked by ``fits_float16``); tables take int8 rows. The caller measures
the output error and chooses per constant: that plan for all when the model's error budget allows,
else constant by constant, largest first, what keeps the error within budget (quant/quantize.py).
"""
import numpy as np

from ..ir.graph import Graph, Node
from ..reference import int4

#: initializers with fewer values stay float32 (the scale and the nodes would cost more than int8
#: saves)
MIN_ELEMENTS = 4096
#: the same for the weights of the layers kept float, stored float16 (one Cast node, no scales):
#: the small convs of a small model (a 5x5 depthwise of 88 channels is 2,200 values) add up
LAYER_MIN_ELEMENTS = 1024


#: a last axis of at least this many values is a row of its own; shorter ones (a conv kernel's
#: width) join everything under the first axis
ROW_MIN = 16


def _weight_inputs(graph):
    """Names of the initializers the quantized layers read (already packed)."""
    return {i for n in graph.nodes if n.domain == "qinfer" for i in n.inputs if i}


def rows_shape(shape):
    """(rows, values per row) of a constant of ``shape`` (see the module's docstring)."""
    if len(shape) == 1 or shape[-1] >= ROW_MIN:
        return int(np.prod(shape[:-1], dtype=np.int64)), int(shape[-1])
    return int(shape[0]), int(np.prod(shape[1:], dtype=np.int64))


def layer_weights(graph):
    """Names of the weights of the float Conv / ConvTranspose / Gemm / MatMul layers."""
    return {n.inputs[1] for n in graph.nodes if n.domain in ("", "ai.onnx") and len(n.inputs) > 1
            and n.op in ("Conv", "ConvTranspose", "Gemm", "MatMul") and n.inputs[1]}


def candidates(graph, min_elements=MIN_ELEMENTS):
    """The float32 initializers worth storing int8: big (``min_elements`` values; a float layer's
    weight ``LAYER_MIN_ELEMENTS``, stored float16), finite, read only by float ops of the
    default domain (layers kept float included), not graph outputs, with rows of 2 values or more."""
    readers = graph.consumers()
    packed = _weight_inputs(graph)
    outputs = set(graph.output_names)
    layers = layer_weights(graph)
    out = []
    for name, a in graph.initializers.items():
        least = min(min_elements, LAYER_MIN_ELEMENTS) if name in layers else min_elements
        if (a.dtype != np.float32 or a.size < least or a.ndim == 0
                or rows_shape(a.shape)[1] < 2 or name in packed or name in outputs
                or not np.isfinite(a).all()):
            continue
        nodes = readers.get(name, [])
        if nodes and all(n.domain in ("", "ai.onnx") for n in nodes):
            out.append(name)
    return out


def quantize_rows(a):
    """(int8 [rows, per row], float32 scale [rows]) of ``a``, one symmetric scale per row."""
    rows = np.ascontiguousarray(a, dtype=np.float32).reshape(rows_shape(a.shape))
    peak = np.abs(rows).max(axis=1)
    scale = np.where(peak > 0, peak / np.float32(127), np.float32(1)).astype(np.float32)
    q = np.clip(np.rint(rows / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def quantize_rows4(a, block):
    """(uint8 [rows, ceil(per row / 2)] nibbles, float32 scale [rows, blocks]) of ``a``: int4
    rows, one symmetric scale per ``block`` values of a row, rounded as the int4 layers' weights
    (quant/gptq.quantize_rtn: each block's extreme value at -8, the scale shrunk where that lowers
    the block's squared error)."""
    from .gptq import quantize_rtn
    rows = np.ascontiguousarray(a, dtype=np.float32).reshape(rows_shape(a.shape))
    q, scale = quantize_rtn(rows, block)
    return int4.pack_rows(q), scale


def fits_float16(a):
    """True when float16 keeps ``a`` to float16's own precision: finite, and within 2**-10 of it
    relative to its norm (a tensor of tiny values, such as a weight with a folded normalization,
    falls below float16's normal range and loses far more; int8 rows keep it relative to each
    row)."""
    if not np.isfinite(a).all() or np.abs(a).max(initial=0) >= 65504:
        return False
    h = a.astype(np.float16)
    if not np.isfinite(h).all():
        return False
    norm = float(np.linalg.norm(a.astype(np.float64)))
    return norm == 0 or float(np.linalg.norm(h.astype(np.float64) - a)) <= norm * 2.0 ** -10


def compress_constants(graph, names, block=64):
    """A new graph in which each initializer of ``names`` (a list: all int8; or a dict name ->
    "int8" | "int4" | "float16") is stored smaller: int8 rows + scales, put back by
    ``DequantizeLinear``, int4 rows + a scale per ``block`` values of a row, put back by qinfer's
    ``DequantizeInt4`` (either + ``Reshape``), or float16, put back by ``Cast``, into its original
    name. Returns (graph, report): per constant its storage and bytes before and after."""
    kinds = dict(names) if isinstance(names, dict) else dict.fromkeys(names, "int8")
    g = graph.copy()
    g.initializers = dict(g.initializers)
    nodes, report = [], []
    fresh = g.namer()

    for name, kind in kinds.items():
        a = g.initializers.pop(name)
        if kind == "float16":
            hn = fresh(name + "__f16")
            g.initializers[hn] = a.astype(np.float16)
            nodes.append(Node("Cast", (hn,), (name,), {"to": 1}, fresh(name + "__cast")))
            stored = a.size * 2
        elif kind in ("int8", "int4"):
            if kind == "int8":
                q, scale = quantize_rows(a)
                qn, sn = fresh(name + "__int8"), fresh(name + "__row_scale")
                op, attrs, domain = "DequantizeLinear", {"axis": 0}, ""
            else:
                q, scale = quantize_rows4(a, block)
                qn, sn = fresh(name + "__int4"), fresh(name + "__block_scale")
                op, domain = "DequantizeInt4", "qinfer"
                attrs = {"cols": rows_shape(a.shape)[1], "block": int(block)}
            g.initializers[qn], g.initializers[sn] = q, scale
            rows = name if a.ndim == 2 else fresh(name + "__rows")
            nodes.append(Node(op, (qn, sn), (rows,), attrs, fresh(name + "__dequantize"), domain))
            if a.ndim != 2:
                shape = fresh(name + "__shape")
                g.initializers[shape] = np.asarray(a.shape, np.int64)
                nodes.append(Node("Reshape", (rows, shape), (name,), {}, fresh(name + "__reshape")))
            stored = q.nbytes + scale.nbytes
        else:
            raise ValueError(f"unknown storage {kind!r} for {name!r}")
        report.append({"constant": name, "shape": list(a.shape), "storage": kind,
                       "float_bytes": int(a.nbytes), "stored_bytes": int(stored)})
    g.nodes = nodes + list(g.nodes)
    return g, report


__all__ = ["LAYER_MIN_ELEMENTS", "MIN_ELEMENTS", "candidates", "layer_weights", "compress_constants",
           "fits_float16", "quantize_rows", "quantize_rows4", "rows_shape"]
