"""The IR: ``Value``, ``Node`` and ``Graph``.

Design: a small IR in the spirit of tinygrad's. Nodes are frozen; a ``Graph`` keeps nodes in
topological order, named values with (possibly symbolic) shapes, and initializers as numpy arrays
(views of the memory map when the graph was loaded from a ``.qinf`` file). Producer and consumer maps
are derived on demand, never stored, so they cannot go stale. Passes never mutate a graph: they call
``graph.copy()`` and edit the copy.

Shapes: a tuple whose entries are ints (static), strings (symbolic, e.g. "batch") or None (unknown).
An omitted optional input of a node is the empty string "" (as in ONNX).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np


@dataclass(frozen=True)
class QuantParams:
    """Quantization of a value: real = scale * (q - zero_point).

    ``axis`` is the channel axis for per-channel parameters (None: per tensor); ``group_size`` the
    group length along the reduction axis for grouped (int4) weights.
    """
    scale: Any
    zero_point: Any
    axis: Optional[int] = None
    bits: int = 8
    group_size: Optional[int] = None


@dataclass(frozen=True)
class Value:
    name: str
    dtype: Optional[str] = None
    shape: Optional[tuple] = None
    qparams: Optional[QuantParams] = None

    @property
    def rank(self):
        return None if self.shape is None else len(self.shape)

    def is_static(self):
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)


@dataclass(frozen=True)
class Node:
    op: str
    inputs: tuple
    outputs: tuple
    attrs: dict = field(default_factory=dict, compare=False, hash=False)
    name: str = ""
    domain: str = ""

    def replace(self, **kw) -> "Node":
        return dataclasses.replace(self, **kw)

    def __repr__(self):
        return f"Node({self.op} {self.name!r}: {list(self.inputs)} -> {list(self.outputs)})"


class Graph:
    def __init__(self, name="graph", nodes=(), inputs=(), outputs=(), initializers=None,
                 value_info=None, metadata=None):
        self.name = name
        self.nodes: list[Node] = list(nodes)
        self.inputs: list[Value] = list(inputs)
        self.outputs: list[Value] = list(outputs)
        self.initializers: dict[str, np.ndarray] = dict(initializers or {})
        self.value_info: dict[str, Value] = dict(value_info or {})
        # producer_name, producer_version, domain, model_version, doc_string, opset,
        # custom_metadata_map (dict str->str), graph_name
        self.metadata: dict = dict(metadata or {})

    # ----------------------------------------------------------------- derived views
    def copy(self) -> "Graph":
        g = Graph(self.name, self.nodes, self.inputs, self.outputs, self.initializers,
                  self.value_info, dict(self.metadata))
        if "custom_metadata_map" in g.metadata:
            g.metadata["custom_metadata_map"] = dict(g.metadata["custom_metadata_map"])
        return g

    def producers(self) -> dict:
        """value name -> node producing it"""
        return {o: n for n in self.nodes for o in n.outputs if o}

    def namer(self):
        """A function ``base -> name`` giving names no value of the graph has (initializers, node
        outputs, graph inputs) nor any it gave before: ``base``, else ``base_1``, ``base_2``..."""
        taken = set(self.initializers) | {o for n in self.nodes for o in n.outputs} | set(self.input_names)

        def fresh(base):
            name, i = base, 1
            while name in taken:
                name, i = f"{base}_{i}", i + 1
            taken.add(name)
            return name
        return fresh

    def consumers(self) -> dict:
        """value name -> list of nodes reading it (graph outputs are not counted)"""
        out: dict = {}
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    out.setdefault(i, []).append(n)
        return out

    @property
    def input_names(self):
        return [v.name for v in self.inputs]

    @property
    def output_names(self):
        return [v.name for v in self.outputs]

    def value(self, name) -> Value:
        """What the graph knows of a value (dtype, shape), from inputs, outputs, value_info or initializers."""
        for v in self.inputs:
            if v.name == name:
                return v
        if name in self.initializers:
            a = self.initializers[name]
            return Value(name, a.dtype.name, tuple(a.shape))
        if name in self.value_info:
            return self.value_info[name]
        for v in self.outputs:
            if v.name == name:
                return v
        return Value(name)

    def is_constant(self, name) -> bool:
        return name in self.initializers

    def op_counts(self) -> dict:
        counts: dict = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return counts

    def weight_bytes(self) -> int:
        return int(sum(a.nbytes for a in self.initializers.values()))

    def remove_unused(self) -> "Graph":
        """Drop nodes and initializers that no graph output depends on (returns a new graph)."""
        g = self.copy()
        needed = set(g.output_names)
        keep = []
        for n in reversed(g.nodes):
            if any(o in needed for o in n.outputs):
                keep.append(n)
                needed.update(i for i in n.inputs if i)
        g.nodes = list(reversed(keep))
        g.initializers = {k: v for k, v in g.initializers.items() if k in needed}
        # initializers are authoritative for their own dtype and shape
        g.value_info = {k: v for k, v in g.value_info.items() if k in needed and k not in g.initializers}
        return g

    def __repr__(self):
        return (f"Graph({self.name!r}: {len(self.nodes)} nodes, {len(self.initializers)} initializers, "
                f"inputs={self.input_names}, outputs={self.output_names})")
