"""Reference generator ops: Constant, ConstantOfShape, Range, EyeLike.

Design: tensor attributes arrive as numpy arrays (the importer decodes them); ``dtype``/``to``
attributes may be an ONNX TensorProto code or a numpy dtype name.
"""
import numpy as np

from .registry import register
from .elementwise import onnx_dtype
from ..errors import UnsupportedOperatorError


@register("Constant")
def constant(inputs, attrs, num_outputs):
    if "value" in attrs:
        return [np.array(attrs["value"])]
    if "value_float" in attrs:
        return [np.array(attrs["value_float"], dtype=np.float32)]
    if "value_floats" in attrs:
        return [np.array(attrs["value_floats"], dtype=np.float32).reshape(-1)]
    if "value_int" in attrs:
        return [np.array(attrs["value_int"], dtype=np.int64)]
    if "value_ints" in attrs:
        return [np.array(attrs["value_ints"], dtype=np.int64).reshape(-1)]
    present = sorted(attrs) or ["none"]
    raise UnsupportedOperatorError(
        f"Constant: attribute {present[0]!r} is not supported (value, value_float(s), value_int(s))")


@register("ConstantOfShape")
def constant_of_shape(inputs, attrs, num_outputs):
    shape = [int(d) for d in np.asarray(inputs[0]).reshape(-1)]
    value = attrs.get("value")
    value = np.zeros(1, dtype=np.float32) if value is None else np.asarray(value).reshape(-1)
    return [np.full(shape, value[0], dtype=value.dtype)]


@register("Range")
def range_(inputs, attrs, num_outputs):
    start, limit, delta = (np.asarray(v).reshape(()) for v in inputs[:3])
    dtype = start.dtype
    if dtype.kind in "iu":
        n = max(-(-(int(limit) - int(start)) // int(delta)), 0)
    else:
        n = max(int(np.ceil((float(limit) - float(start)) / float(delta))), 0)
    return [(start + np.arange(n, dtype=dtype) * delta).astype(dtype)]


@register("EyeLike")
def eye_like(inputs, attrs, num_outputs):
    x = np.asarray(inputs[0])
    if x.ndim != 2:
        raise UnsupportedOperatorError(f"EyeLike: input must be 2-D, got shape {x.shape}")
    dtype = x.dtype if attrs.get("dtype") is None else onnx_dtype(attrs["dtype"], "EyeLike", "dtype")
    return [np.eye(x.shape[0], x.shape[1], k=int(attrs.get("k", 0)), dtype=dtype)]
