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


def show_runtime() -> str:
    """Print (and return) CPU features, the ISA tier and kernel chosen per slot, and threads."""
    from .runtime import cpu
    text = cpu.runtime_info()
    print(text)
    return text


__all__ = ["convert", "load", "Model", "InferenceSession", "show_runtime", "QinferError",
           "UnsupportedOperatorError", "ModelFormatError", "InvalidInputError", "CalibrationError",
           "__version__"]
