"""``qinfer.Model``: a graph plus what users do with it (save, summary)."""
import os

from .ir.graph import Graph
from .errors import ModelFormatError
from .ir import serialize
from .quant import storage
from .reference import sparse as _sparse


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

    def save(self, path, compress=False):
        """Write the model as a ``.qinf`` file (atomically: a crash mid-save keeps the old file).
        ``compress=True`` makes a smaller file whose smaller weights are built (copied) at load
        rather than memory-mapped: the packed int8 weights of narrow layers are stored without
        their panel padding (quant/storage.py) and packed again at load, and the blobs that
        deflate well are stored as zlib streams and inflated at load."""
        g = storage.compact(self.graph) if compress else self.graph
        serialize.save(g, os.fspath(path), deflate=compress)

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
        q = g.metadata.get("quantization")
        if q:
            lines.append("  quantization: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                                     for k, v in q.items()))
        lines.append(f"  {'layer':<40} {'op':<14} {'precision':<12} {'weight shape':<20} {'bytes':>10}")
        for n in g.nodes:
            w = g.initializers.get(n.inputs[1]) if len(n.inputs) > 1 else None
            if w is None or n.op not in ("Conv", "ConvTranspose", "Gemm", "MatMul", "QConv", "QGemm",
                                         "DynQGemm", "Q4Conv", "Q4Gemm", "DynQ4Gemm",
                                         "QConvTranspose"):
                continue
            prec = {"QConv": "int8", "QGemm": "int8", "DynQGemm": "int8-dyn", "Q4Conv": "int4",
                    "QConvTranspose": "int8",
                    "Q4Gemm": "int4", "DynQ4Gemm": "int4-dyn"}.get(n.op, w.dtype.name)
            shape = "packed" if n.op.startswith(("Q", "Dyn")) else str(list(w.shape))
            if n.op in ("QConv", "QGemm") and _sparse.is_sparse(w):   # block4 sparse int8 weights
                h = _sparse.read_header(w)
                prec = "int8-sparse"
                shape = f"block4, density {h['nnzb'] / max(1, h['groups'] * h['n'] * h['kg']):.1%}"
            lines.append(f"  {n.name[:40]:<40} {n.op:<14} {prec:<12} {shape:<20} {w.nbytes:>10,}")
        lines.extend(_sparsity_lines(g.metadata.get("sparsity")))
        kept = [r for r in g.metadata.get("precision_report", []) if r.get("precision") == "float32"]
        for r in kept:
            lines.append(f"  kept float: {r['layer']} ({r['op']}): {r['reason']}")
        if (q or {}).get("weights") == "int4":   # the int4 layers' SQNR, and why others kept int8
            for r in g.metadata.get("precision_report", []):
                if r.get("precision") != "float32":
                    lines.append(f"  {r['precision']}: {r['layer']} ({r['op']}): {r['reason']}")
        return "\n".join(lines)

    def __repr__(self):
        return f"<qinfer.Model {self.graph.name!r}: {len(self.graph.nodes)} nodes>"


def _sparsity_lines(info):
    """summary() lines of ``metadata["sparsity"]`` (quant/prune.py): the pruning, then each pruned
    layer's sparsity, pattern and output error, and why the others stayed dense."""
    if not isinstance(info, dict):
        return []
    out = [f"  sparsity: {info.get('sparsity', 0.0):.1%} of {info.get('prunable_weights', 0):,} prunable "
           f"weights ({info.get('pattern')}, scope {info.get('scope')}, target {info.get('target', 0.0):g}, "
           f"{info.get('method')}"
           + (f" on {info['calibration_samples']} calibration samples" if info.get("calibration_samples") else "")
           + ")"]
    for r in info.get("layers", []):
        text = f"  pruned: {r.get('layer')} ({r.get('op')}): {r.get('sparsity', 0.0):.1%} zero, {r.get('pattern')}"
        if r.get("output_error") is not None:
            text += (f", output error {r['output_error']:.3g} (||WX - W'X|| / ||WX||; magnitude pruning "
                     f"{r.get('output_error_magnitude', float('nan')):.3g})")
        out.append(text)
    for r in info.get("dense", []):
        out.append(f"  dense: {r.get('layer')} ({r.get('op')}): {r.get('reason')}")
    return out


def check_model_path(path):
    """ModelFormatError unless ``path`` is an existing regular file."""
    if not os.path.exists(path):
        raise ModelFormatError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ModelFormatError(f"{path}: is a directory, expected a .qinf or .onnx file")


def is_qinf_path(path):
    """True for a ``.qinf`` name or a file starting with the ``.qinf`` magic bytes."""
    if path.lower().endswith(".qinf"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(len(serialize.MAGIC)) == serialize.MAGIC
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot read ({e.strerror})") from None


def open_graph(src) -> Graph:
    """Any model source -> Graph: a Graph, a ``Model``, a ``.qinf`` path (memory-mapped), or ONNX
    (path, bytes, ModelProto; only then is the importer, and with it ``onnx``, imported)."""
    if isinstance(src, Graph):
        return src
    if isinstance(src, Model):
        return src.graph
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        check_model_path(path)
        if is_qinf_path(path):
            return storage.expand(serialize.load(path))
    from .importers import onnx as onnx_importer
    return onnx_importer.convert(src)


def open_model(src) -> Model:
    """``open_graph`` as a ``Model`` (keeping the path of a file)."""
    if isinstance(src, Model):
        return src
    path = os.fspath(src) if isinstance(src, (str, os.PathLike)) else None
    return Model(open_graph(src), path)


def load(path) -> Model:
    """Load a ``.qinf`` file (memory-mapped; compact int8 weights of a compressed file are packed
    into memory, quant/storage.py)."""
    return Model(storage.expand(serialize.load(os.fspath(path))), os.fspath(path))
