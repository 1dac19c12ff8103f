"""Tensor element types qinfer supports, and their ONNX codes.

The IR names dtypes by numpy's names ("float32", "int64", "bool", ...). float8, bfloat16, 4-bit and
string tensors are out of scope (SPEC section 6) and the importer rejects them with a clear error.
"""
import numpy as np

# ONNX TensorProto.DataType code -> numpy dtype name
ONNX_TO_NAME = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
    9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64",
}
NAME_TO_ONNX = {v: k for k, v in ONNX_TO_NAME.items()}
ONNX_UNSUPPORTED = {
    8: "string", 14: "complex64", 15: "complex128", 16: "bfloat16", 17: "float8e4m3fn",
    18: "float8e4m3fnuz", 19: "float8e5m2", 20: "float8e5m2fnuz", 21: "uint4", 22: "int4",
    23: "float4e2m1",
}
SUPPORTED = frozenset(ONNX_TO_NAME.values())
FLOATS = frozenset({"float16", "float32", "float64"})


def to_numpy(name):
    return np.dtype(name)


def name_of(dtype):
    """numpy dtype (or anything np.dtype accepts) -> IR dtype name."""
    n = np.dtype(dtype).name
    return n


def onnx_type_name(code):
    return ONNX_TO_NAME.get(code) or ONNX_UNSUPPORTED.get(code, f"type#{code}")
