"""Large float constants that are not layer weights, stored int8 in quantized models.

Quantization shrinks the weights of Conv / Gemm / MatMul, but transformers also carry big float
tables that feed other ops: learned positional embeddings added to the activations, token
embedding tables read by Gather, attention biases. Kept float32, they dominate a model whose
layers are int4 (a 64-wide transformer's positional table alone is a quarter of its int4 file).

``compress_constants`` stores each float32 initializer of at least ``min_elements`` values that
only float ops read as int8, symmetric, one float32 scale per row of its last axis, and puts back
the original value with ONNX's ``DequantizeLinear`` (per axis 0 of the 2-D ``[rows, last]`` view)
and, for other ranks, a ``Reshape``. Both run on constants only, so the planner computes them once
per plan: the file holds 1 byte a value (plus 4 a row), the run time is unchanged. Each row keeps
its largest value exactly and every other to within half a step of ``max|row| / 127``.

The caller measures the output error with the constants compressed and keeps them float when the
model's error budget does not allow it (quant/quantize.py).
"""
import numpy as np

from ..ir.graph import Graph, Node

#: initializers with fewer values stay float32 (the scale and the nodes would cost more than int8
#: saves)
MIN_ELEMENTS = 4096


def _weight_inputs(graph):
    """Names of the initializers the quantized layers read (already packed)."""
    return {i for n in graph.nodes if n.domain == "qinfer" for i in n.inputs if i}


def candidates(graph, min_elements=MIN_ELEMENTS):
    """The float32 initializers worth storing int8: big, read only by float ops of the default
    domain, not graph outputs, with at least one row and a last axis of more than one value."""
    readers = graph.consumers()
    packed = _weight_inputs(graph)
    outputs = set(graph.output_names)
    out = []
    for name, a in graph.initializers.items():
        if (a.dtype != np.float32 or a.size < min_elements or a.ndim == 0 or a.shape[-1] < 2
                or name in packed or name in outputs or not np.isfinite(a).all()):
            continue
        nodes = readers.get(name, [])
        if nodes and all(n.domain in ("", "ai.onnx") for n in nodes):
            out.append(name)
    return out


def quantize_rows(a):
    """(int8 [rows, last], float32 scale [rows]) of ``a`` with one symmetric scale per row."""
    rows = np.ascontiguousarray(a, dtype=np.float32).reshape(-1, a.shape[-1])
    peak = np.abs(rows).max(axis=1)
    scale = np.where(peak > 0, peak / np.float32(127), np.float32(1)).astype(np.float32)
    q = np.clip(np.rint(rows / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def compress_constants(graph, names):
    """A new graph in which each initializer of ``names`` is int8 rows + scales, dequantized by
    ``DequantizeLinear`` (+ ``Reshape``) into its original name; returns (graph, report) where the
    report lists each constant with its bytes before and after."""
    g = graph.copy()
    nodes, report = [], []
    taken = set(g.initializers) | {o for n in g.nodes for o in n.outputs} | set(g.input_names)

    def fresh(base):
        name, i = base, 1
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        taken.add(name)
        return name

    for name in names:
        a = g.initializers.pop(name)
        q, scale = quantize_rows(a)
        qn, sn = fresh(name + "__int8"), fresh(name + "__row_scale")
        g.initializers[qn], g.initializers[sn] = q, scale
        if a.ndim == 2:
            nodes.append(Node("DequantizeLinear", (qn, sn), (name,), {"axis": 0},
                              fresh(name + "__dequantize")))
        else:
            flat, shape = fresh(name + "__rows"), fresh(name + "__shape")
            g.initializers[shape] = np.asarray(a.shape, np.int64)
            nodes.append(Node("DequantizeLinear", (qn, sn), (flat,), {"axis": 0},
                              fresh(name + "__dequantize")))
            nodes.append(Node("Reshape", (flat, shape), (name,), {}, fresh(name + "__reshape")))
        report.append({"constant": name, "shape": list(a.shape), "float_bytes": int(a.nbytes),
                       "int8_bytes": int(q.nbytes + scale.nbytes)})
    g.nodes = nodes + list(g.nodes)
    return g, report


__all__ = ["MIN_ELEMENTS", "candidates", "compress_constants", "quantize_rows"]
