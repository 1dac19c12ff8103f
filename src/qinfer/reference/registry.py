"""The table of numpy reference implementations, one per op type.

Every reference op has the signature ``fn(inputs, attrs, num_outputs) -> list[np.ndarray]``:

- ``inputs``: list of numpy arrays, ``None`` where an optional input is omitted;
- ``attrs``: the node's attributes as plain Python values (int, float, str, lists of those,
  numpy arrays for tensor attributes); absent attributes take their ONNX defaults inside the op;
- ``num_outputs``: how many outputs the node declares (Split, LSTM and TopK need it);
- returns a list of arrays, one per declared output (trailing optional ones may be left out).

Semantics are those of the newest ONNX opset (21). Where older opsets differ only by moving an
argument between attribute and input (``axes`` of Reduce*/Squeeze/Unsqueeze, ``split``), both forms
are accepted. Other opset differences are normalized by the importer (e.g. ``coerce_2d`` on Softmax).
This package never imports compiled code: it is the oracle the kernels are tested against.
"""
OPS = {}


def register(*names):
    def deco(fn):
        for n in names:
            OPS[n] = fn
        return fn
    return deco


def get(op):
    _load_all()
    return OPS.get(op)


def supported_ops():
    _load_all()
    return frozenset(OPS)


_loaded = False


def _load_all():
    global _loaded
    if _loaded:
        return
    from . import elementwise, gemm, conv, shape, reduce, nn, generators, qops  # noqa: F401
    _loaded = True
