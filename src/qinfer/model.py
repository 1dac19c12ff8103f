"""``qinfer.Model``: a graph plus what users do with it (save, summary)."""
import os

from .ir.graph import Graph
from .ir import serialize


class Model:
    """A qinfer model: float, quantized or sparse. Wraps an IR ``Graph``."""

    def __init__(self, graph: Graph, path=None):
        if not isinstance(graph, Graph):
            raise TypeError(f"Model wraps a qinfer Graph, got {type(graph).__name__}")
        self.graph = graph
        self.path = path

    @property
    def inputs(self):
        return list(self.graph.inputs)

    @property
    def outputs(self):
        return list(self.graph.outputs)

    def save(self, path):
        """Write the model as a ``.qinf`` file (atomically: a crash mid-save keeps the old file)."""
        serialize.save(self.graph, os.fspath(path))

    def summary(self) -> str:
        g = self.graph
        lines = [f"qinfer model {g.name!r}: {len(g.nodes)} nodes, {len(g.initializers)} weight tensors, "
                 f"{g.weight_bytes():,} weight bytes"]
        for v in g.inputs:
            lines.append(f"  input  {v.name}: {v.dtype} {list(v.shape) if v.shape is not None else '?'}")
        for v in g.outputs:
            lines.append(f"  output {v.name}: {v.dtype} {list(v.shape) if v.shape is not None else '?'}")
        counts = g.op_counts()
        lines.append("  ops: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])))
        lines.append(f"  {'layer':<40} {'op':<16} {'dtype':<8} {'weight shape':<20} {'bytes':>10}")
        for n in g.nodes:
            w = g.initializers.get(n.inputs[1]) if len(n.inputs) > 1 else None
            if n.op in ("Conv", "ConvTranspose", "Gemm", "MatMul") and w is not None:
                lines.append(f"  {n.name[:40]:<40} {n.op:<16} {w.dtype.name:<8} {str(list(w.shape)):<20} "
                             f"{w.nbytes:>10,}")
        return "\n".join(lines)

    def __repr__(self):
        return f"<qinfer.Model {self.graph.name!r}: {len(self.graph.nodes)} nodes>"


def load(path) -> Model:
    """Load a ``.qinf`` file (memory-mapped)."""
    return Model(serialize.load(os.fspath(path)), os.fspath(path))
