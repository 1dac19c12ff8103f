"""The IR verifier: structure, dtypes and quantization parameters of a Graph.

Design: one pass over the graph that collects every problem (not only the first), so a broken pass
or a hostile file is explained in one error. ``load`` and ``save`` call it, so a file qinfer writes
is a file qinfer reads; passes call it after themselves when ``QINFER_VERIFY`` is set. It checks
what every consumer of a Graph relies on, not op semantics (shape inference checks those).
"""
from __future__ import annotations

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
        if not isinstance(n.attrs, dict) or not all(isinstance(k, str) for k in n.attrs):
            out.append(f"{label}: attrs must be a dict with string keys")
        if not isinstance(n.inputs, (tuple, list)) or not isinstance(n.outputs, (tuple, list)):
            out.append(f"{label}: inputs and outputs must be tuples of names")
            continue
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
