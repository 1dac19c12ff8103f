"""qinfer: small, fast CPU inference for ONNX models (SPEC section 1 is the public API)."""
__version__ = "0.1.0"

from .errors import (CalibrationError, InvalidInputError, ModelFormatError,  # noqa: F401
                     QinferError, UnsupportedOperatorError)
from .model import Model, load  # noqa: F401
from .runtime.session import InferenceSession  # noqa: F401


def convert(model) -> Model:
    """ONNX model (path, bytes or ``onnx.ModelProto``) -> float ``qinfer.Model``."""
    from .importers import onnx as _onnx_importer   # onnx is imported only here
    return Model(_onnx_importer.convert(model))


def quantize(model, calibration=None, weights="int8", activations="int8", method="minmax",
             rounding="nearest", per_channel=True, group_size=64, max_error=None, exclude=(),
             progress=True) -> Model:
    """Quantize a float model (SPEC section 1); returns a new ``Model``, the input is untouched.

    ``calibration``: feed dicts, arrays (single-input models) or an ``.npz`` path; not needed with
    ``activations="dynamic"``. ``max_error``: output budget as 1 - cosine similarity per output
    (default 0.01); the most sensitive layers stay float until it holds.
    """
    from .quant.quantize import quantize_graph
    graph = model.graph if isinstance(model, Model) else convert(model).graph
    if calibration is None and activations not in ("dynamic", "float") and weights != "float":
        raise CalibrationError("quantize needs calibration data for activations='int8' "
                               "(or use activations='dynamic')")
    q = quantize_graph(graph, calibration, weights=weights, activations=activations, method=method,
                       rounding=rounding, per_channel=per_channel, group_size=group_size,
                       max_error=max_error, exclude=tuple(exclude), progress=progress)
    return Model(q)


def prune(model, sparsity=None, pattern="block4", scope="layer", exclude=(), calibration=None,
          sequential=True, progress=True) -> Model:
    """Prune a float model (SPEC section 1): a new ``Model`` whose Conv / Gemm / MatMul weights have
    zeros; the input is untouched. ``model``: a ``Model``, a ``.qinf`` or ONNX path, bytes or
    ``onnx.ModelProto``.

    ``sparsity``: the fraction of each layer's weights set to zero, in [0, 1) (default 0.8; the
    pattern ``"2:4"`` is 0.5 by construction). ``pattern``: ``"unstructured"``, ``"block4"`` (blocks
    of 4 consecutive weights along the reduction axis, all zero or all kept; the layout is
    documented in ``qinfer/quant/prune.py``) or ``"2:4"`` (2 zeros in every such group of 4).
    ``scope``: ``"layer"`` (every layer to ``sparsity``) or ``"global"`` (one threshold on weight
    magnitudes, each relative to its layer's RMS, over all layers). ``exclude``: node names left
    dense. ``calibration`` (the forms ``quantize`` takes): compensate the pruned weights from each
    layer's inputs (SparseGPT), layer after layer on the already pruned model (``sequential``).
    ``summary()`` lists each layer's sparsity (and its output error with calibration).
    """
    from .model import open_graph
    from .quant.prune import prune_graph
    return Model(prune_graph(open_graph(model), sparsity, pattern, scope, exclude, calibration,
                             sequential=sequential, progress=progress))


def show_runtime() -> str:
    """Print (and return) CPU features, the ISA tier and kernel chosen per slot, and threads."""
    from .runtime import cpu
    text = cpu.runtime_info()
    print(text)
    return text


__all__ = ["convert", "quantize", "prune", "load", "Model", "InferenceSession", "show_runtime", "QinferError",
           "UnsupportedOperatorError", "ModelFormatError", "InvalidInputError", "CalibrationError",
           "__version__"]
