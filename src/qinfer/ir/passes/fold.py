"""Constant folding: evaluate every node whose inputs are all known at import time.

Design: "known" means an initializer, or the output of a Shape/Size node whose input shape is fully
static. Folding uses the numpy reference ops (the importer never executes compiled code). Results that
would be large and larger than their inputs (e.g. ConstantOfShape making an image-sized tensor) are not
folded: the file would grow for no speed. Shape-computing subgraphs that depend on symbolic dims are
folded later, per input-shape signature, by the runtime planner.
"""
import numpy as np

from ...errors import ModelFormatError
from ...reference import executor
from ..ops import NONDETERMINISTIC, SHAPE_ONLY
from ..verify import output_bytes

#: outputs above this size are folded only if they are not larger than the node's inputs
FOLD_MAX_BYTES = 1 << 20


def _run(n, inputs):
    """``executor.run_node`` at import: a node that fails on its constant inputs makes the model
    unreadable (the planner's rule at run time, where the same failures are bad feeds)."""
    try:
        return executor.run_node(n, inputs)
    except (ValueError, IndexError, ZeroDivisionError, OverflowError, MemoryError) as e:
        raise ModelFormatError(f"node {n.name!r} ({n.op}) fails on its constant inputs "
                               f"{[None if x is None else np.shape(x) for x in inputs]}: {e}") from None


def constants_to_initializers(graph):
    """Turn Constant nodes into initializers."""
    g = graph.copy()
    nodes = []
    for n in g.nodes:
        if n.op == "Constant" and n.outputs and n.outputs[0]:
            (val,) = _run(n, [])
            g.initializers[n.outputs[0]] = np.asarray(val, order="C")
        else:
            nodes.append(n)
    g.nodes = nodes
    return g


def _static_shape(graph, name):
    v = graph.value(name)
    return v.shape if v.is_static() else None


def fold_constants(graph):
    g = graph.copy()
    consts = g.initializers
    keep = []
    for n in g.nodes:
        if n.op in NONDETERMINISTIC:
            keep.append(n)
            continue
        if n.op in SHAPE_ONLY and n.inputs and n.inputs[0] not in consts:
            shape = _static_shape(g, n.inputs[0])
            if shape is None:
                keep.append(n)
                continue
            try:
                dummy = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape,
                                                        [0] * len(shape))
            except ValueError:     # more elements than numpy can index: left for the run
                keep.append(n)
                continue
            outs = _run(n, [dummy])
        elif all((not i) or i in consts for i in n.inputs):
            ins = [consts[i] if i else None for i in n.inputs]
            in_bytes = sum(consts[i].nbytes for i in n.inputs if i)
            bound = output_bytes(n, ins)
            if bound is not None and bound > FOLD_MAX_BYTES and bound > in_bytes:
                keep.append(n)       # would not be kept: do not even make it (a hostile size)
                continue
            outs = _run(n, ins)
            out_bytes = sum(np.asarray(o).nbytes for o in outs)
            if out_bytes > FOLD_MAX_BYTES and out_bytes > in_bytes:
                keep.append(n)
                continue
        else:
            keep.append(n)
            continue
        for name, val in zip(n.outputs, outs):
            if name:
                consts[name] = np.asarray(val, order="C")
    g.nodes = keep
    return g.remove_unused()


def remove_identity(graph):
    """Drop Identity nodes, renaming their consumers' inputs (not when the output is a graph output)."""
    g = graph.copy()
    outputs = set(g.output_names)
    rename = {}
    keep = []
    for n in g.nodes:
        n = n.replace(inputs=tuple(rename.get(i, i) for i in n.inputs)) if rename else n
        if n.op == "Identity" and n.outputs[0] not in outputs:
            rename[n.outputs[0]] = n.inputs[0]
            continue
        keep.append(n)
    g.nodes = keep
    return g


#: integer constants of at most this many bytes are shared by value (``share_constants``)
SHARE_MAX_BYTES = 256


def share_constants(graph):
    """One initializer for each run of equal small integer constants (the axes, starts and shape
    vectors an exporter writes once per node: a 2-layer transformer holds 62 of 22 distinct
    values): every reader of a duplicate reads the first. Float constants are left alone (the
    weight passes rewrite those in place of their one reader), as are graph inputs and outputs."""
    keep_names = set(graph.input_names) | set(graph.output_names)
    first, rename = {}, {}
    for name, a in graph.initializers.items():
        if (name in keep_names or not isinstance(a, np.ndarray) or a.dtype.kind not in "iub"
                or a.nbytes > SHARE_MAX_BYTES):
            continue
        key = (a.dtype.str, a.shape, a.tobytes())
        if key in first:
            rename[name] = first[key]
        else:
            first[key] = name
    if not rename:
        return graph
    g = graph.copy()
    g.nodes = [n.replace(inputs=tuple(rename.get(i, i) for i in n.inputs))
               if any(i in rename for i in n.inputs) else n for n in g.nodes]
    g.initializers = {k: v for k, v in g.initializers.items() if k not in rename}
    g.value_info = {k: v for k, v in g.value_info.items() if k not in rename}
    return g


__all__ = ["constants_to_initializers", "fold_constants", "remove_identity", "share_constants"]
