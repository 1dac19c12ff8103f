"""Reference Gemm, MatMul and MatMulInteger.

Design: the math is numpy's matmul in the input dtype (float16 computed in float32), which is what
the float kernels are compared against. MatMulInteger accumulates in int32 after subtracting the
zero points, as the quantized kernels do.
"""
import numpy as np

from .registry import register
from ..errors import UnsupportedOperatorError


def _compute(x):
    return x.astype(np.float32) if x.dtype == np.float16 else x


@register("Gemm")
def gemm(inputs, attrs, num_outputs):
    a, b = np.asarray(inputs[0]), np.asarray(inputs[1])
    c = inputs[2] if len(inputs) > 2 else None
    alpha = attrs.get("alpha", 1.0)
    beta = attrs.get("beta", 1.0)
    if a.ndim != 2 or b.ndim != 2:
        raise UnsupportedOperatorError(f"Gemm: inputs must be 2-D, got A{a.shape} B{b.shape}")
    if attrs.get("transA", 0):
        a = a.T
    if attrs.get("transB", 0):
        b = b.T
    dtype = a.dtype
    y = _compute(a) @ _compute(b)
    if alpha != 1.0:
        y = y * np.asarray(alpha, y.dtype)
    if c is not None and beta != 0.0:
        c = _compute(np.asarray(c)).astype(y.dtype, copy=False)
        y = y + (c * np.asarray(beta, y.dtype) if beta != 1.0 else c)
    return [y.astype(dtype, copy=False)]


@register("MatMul")
def matmul(inputs, attrs, num_outputs):
    a, b = np.asarray(inputs[0]), np.asarray(inputs[1])
    if a.ndim > 2 and b.ndim == 2:
        # one (rows x K) @ (K x N) BLAS call instead of numpy's loop over the stacked matrices
        y = (_compute(a).reshape(-1, a.shape[-1]) @ _compute(b)).reshape(a.shape[:-1] + b.shape[-1:])
    else:
        y = np.matmul(_compute(a), _compute(b))
    return [y.astype(a.dtype, copy=False)]


def _zero_point_shaped(zp, x, axis_from_end):
    """Reshape a per-row (A) or per-column (B) zero point so that it broadcasts against ``x``."""
    zp = np.asarray(zp).astype(np.int32)
    if zp.ndim == 0 or zp.size == 1:
        return zp.reshape(())
    if zp.ndim == 1:
        # 1-D: per row of A (axis -2) or per column of B (axis -1)
        return zp.reshape((-1, 1)) if axis_from_end == 2 else zp.reshape((1, -1))
    return zp


@register("MatMulInteger")
def matmul_integer(inputs, attrs, num_outputs):
    a, b = np.asarray(inputs[0]), np.asarray(inputs[1])
    a_zp = inputs[2] if len(inputs) > 2 else None
    b_zp = inputs[3] if len(inputs) > 3 else None
    a32 = a.astype(np.int32)
    b32 = b.astype(np.int32)
    if a_zp is not None:
        a32 = a32 - _zero_point_shaped(a_zp, a, 2)
    if b_zp is not None:
        b32 = b32 - _zero_point_shaped(b_zp, b, 1)
    return [np.matmul(a32, b32).astype(np.int32)]
