"""Packed int8 weights of narrow layers stored without their padding, packed again at load.

The int8 kernels read weights in panels (docs/formats.md 2.1): 32 output channels by K rounded up
to 4 (depthwise: 16 channels by kernel rows rounded up to 4), after a bias and a column-sum row of
int32 per padded channel. A file stores them as they are, memory-mapped and read in place. For a
wide layer the padding is a few percent; for the narrow layers of small models it is not (an
8-channel conv pads to 32 channels, a 3x3 depthwise stores 12 taps for 9, a 5x5 40 for 25), and in
PP-OCR's direction classifier it is a third of the file.

``compact`` (called by ``Model.save(path, compress=True)``; a plain save keeps every blob packed and
memory-mapped) stores such a blob as what it is made of: the int8 weights
in their ONNX layout (``<name>__w8``), the int32 bias (``<name>__bias``, before the zero point is
folded in) and a ``PackQC8W`` node (domain ``qinfer``) that packs them into ``<name>``. It does
so when that saves at least ``MIN_SAVING`` of the blob's bytes and the packer gives back the blob
byte for byte (anything else stays as it is). ``expand`` (called when a file is loaded) runs those
nodes once, so a loaded graph holds the same packed initializers as the one saved; the sessions
and the reference executor also run ``PackQC8W`` if they meet it. The wide layers keep their
memory-mapped panels; a compacted layer's panels are built in memory at load (in numpy; the checks
at load, ir/verify.py, pack them once more to check the layers that read them).
"""
import numpy as np

from ..ir.graph import Graph, Node
from ..reference import quantized as qref

#: the decode op: PackQC8W(w int8, bias int32) -> packed uint8, attributes kind ("gemm" | "conv" |
#: "dw"), groups, zp_x
PACK_OP = "PackQC8W"
#: a blob is stored compact when that saves at least this fraction of its bytes (the layers below
#: it keep their memory-mapped panels)
MIN_SAVING = 1 / 8


def pack(w, bias, kind, groups, zp_x):
    """The packed blob of int8 weights ``w`` (GEMM [K, N], conv [Cout, Cin/groups, KH, KW],
    depthwise [C, 1, KH, KW]) with int32 bias ``bias`` and activation zero point ``zp_x``."""
    if kind == "gemm":
        return qref.pack_gemm_qc8w(w, bias, zp_x)
    if kind == "conv":
        return qref.pack_conv_qc8w(w, bias, zp_x, groups)
    if kind == "dw":
        return qref.pack_dwconv_qc8w(w, bias, zp_x)
    raise ValueError(f"unknown packed weight kind {kind!r} (gemm, conv or dw)")


def packed_bytes(shape, kind, groups=1):
    """Bytes of the blob ``pack`` makes of weights of ``shape`` (the bound checked before packing a
    file's compact weights: panel padding multiplies a 1-channel layer's bytes by up to 32)."""
    if kind == "gemm":
        k, n = shape
        return qref.packed_nbytes(1, n, k)
    if kind == "conv":
        cout, cin_g, kh, kw = shape
        g = max(int(groups), 1)
        return qref.packed_nbytes(g, -(-int(cout) // g), int(cin_g) * int(kh) * int(kw))
    c, _, kh, kw = shape
    return qref.packed_nbytes(1, c, kh * kw, True, kh, kw)


def _compact_form(blob):
    """(w, bias, attrs) that pack back into ``blob`` byte for byte, or None (not QC8W / QDW8,
    or not worth it, or not reproducible)."""
    if blob.dtype != np.uint8 or blob.ndim != 1 or blob.size < qref.HEADER.itemsize:
        return None
    magic = int(blob[:4].view("<u4")[0])
    if magic not in (qref.MAGIC_GEMM, qref.MAGIC_DW):
        return None
    try:
        u = qref.unpack_qc8w(blob)
    except ValueError:
        return None
    h = u["header"]
    w, bias = u["w"], u["bias_q"]
    if w.nbytes + bias.nbytes > (1 - MIN_SAVING) * blob.nbytes:
        return None
    kind = "dw" if magic == qref.MAGIC_DW else ("gemm" if h["kh"] == 0 else "conv")
    attrs = {"kind": kind, "groups": int(h["groups"]), "zp_x": int(h["zp_x"])}
    try:
        again = pack(w, bias, **attrs)
    except ValueError:
        return None
    if again.nbytes != blob.nbytes or not np.array_equal(again, blob):
        return None
    return np.ascontiguousarray(w), np.ascontiguousarray(bias, np.int32), attrs


def compact(graph: Graph) -> Graph:
    """``graph``, or a copy in which the packed int8 weights worth it are stored compact (see the
    module's docstring). Only initializers read by nodes of the qinfer domain are considered."""
    readers = graph.consumers()
    outputs = set(graph.output_names)
    fresh = graph.namer()
    new, nodes = {}, []

    for name, blob in graph.initializers.items():
        users = readers.get(name, [])
        if name in outputs or not users or not all(n.domain == "qinfer" for n in users):
            continue
        form = _compact_form(np.asarray(blob))
        if form is None:
            continue
        w, bias, attrs = form
        wn, bn = fresh(name + "__w8"), fresh(name + "__bias")
        new[name] = (wn, w, bn, bias)
        nodes.append(Node(PACK_OP, (wn, bn), (name,), attrs, fresh(name + "__pack"), "qinfer"))
    if not new:
        return graph
    g = graph.copy()
    inits = {}
    for name, a in graph.initializers.items():
        if name in new:
            wn, w, bn, bias = new[name]
            inits[wn], inits[bn] = w, bias
        else:
            inits[name] = a
    g.initializers = inits
    g.nodes = nodes + list(graph.nodes)
    return g


def expand(graph: Graph) -> Graph:
    """``graph``, or a copy in which every ``PackQC8W`` node fed by initializers became the
    initializer it packs (the inverse of ``compact``)."""
    from ..reference import get as reference_op
    todo = [n for n in graph.nodes if n.domain == "qinfer" and n.op == PACK_OP
            and all(i in graph.initializers for i in n.inputs if i)]
    if not todo:
        return graph
    g = graph.copy()
    g.initializers = dict(graph.initializers)
    fn = reference_op(PACK_OP)
    for n in todo:
        g.initializers[n.outputs[0]] = fn([g.initializers[i] for i in n.inputs], n.attrs, 1)[0]
    done = {id(n) for n in todo}
    g.nodes = [n for n in graph.nodes if id(n) not in done]
    still = {i for n in g.nodes for i in n.inputs} | set(g.output_names)
    for n in todo:
        for i in n.inputs:
            if i and i not in still:
                g.initializers.pop(i, None)
    return g


__all__ = ["MIN_SAVING", "PACK_OP", "compact", "expand", "pack", "packed_bytes"]
