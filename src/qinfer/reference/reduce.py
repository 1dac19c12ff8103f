"""Reference reductions (Reduce*) and ArgMax/ArgMin.

Design: ``axes`` comes from the second input (opset 13/18 forms) or the attribute (older opsets);
no axes means all axes, unless ``noop_with_empty_axes`` makes the op an identity. Reductions over an
empty set give the identity element of the reduction (0, 1, -inf, +inf), as the ONNX tests expect.
float16 is reduced in float32 and cast back; integer sums stay integers.
"""
import numpy as np

from .registry import register
from ..errors import UnsupportedOperatorError


def _compute(x):
    return x.astype(np.float32) if x.dtype == np.float16 else x


def _axes(inputs, attrs, rank, op):
    """Normalized tuple of axes to reduce, or None for the identity (noop_with_empty_axes)."""
    v = inputs[1] if len(inputs) > 1 and inputs[1] is not None else attrs.get("axes")
    axes = [] if v is None else [int(a) for a in np.asarray(v).reshape(-1)]
    if not axes:
        return None if attrs.get("noop_with_empty_axes", 0) else tuple(range(rank))
    out = []
    for a in axes:
        if not -rank <= a < max(rank, 1):
            raise UnsupportedOperatorError(f"{op}: axis {a} out of range for rank {rank}")
        out.append(a + rank if a < 0 else a)
    return tuple(sorted(set(out)))


def _lowest(dtype):
    if dtype.kind == "f":
        return -np.inf
    if dtype.kind == "b":
        return False
    return np.iinfo(dtype).min


def _highest(dtype):
    if dtype.kind == "f":
        return np.inf
    if dtype.kind == "b":
        return True
    return np.iinfo(dtype).max


def _log_sum_exp(x, axis, keepdims):
    m = np.max(x, axis=axis, keepdims=True, initial=-np.inf)
    m = np.where(np.isfinite(m), m, 0)
    s = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return s if keepdims else np.squeeze(s, axis=axis)


def _mean(x, axis, keepdims):
    """np.mean's arithmetic (a sum in the input's float dtype, then one true division by the count)
    without its Python wrapper: a third of its time on a transformer's small tensors"""
    n = 1
    for a in axis:
        n *= x.shape[a]
    return np.true_divide(np.add.reduce(x, axis=axis, keepdims=keepdims), n)


#: op -> fn(x, axes tuple, keepdims): the ufuncs' reduce (what np.sum / np.max call, without
#: their Python wrappers); the runtime's float32 ReduceSum / ReduceMean steps call these too
REDUCERS = {
    "ReduceSum": lambda x, ax, k: np.add.reduce(x, axis=ax, keepdims=k),
    "ReduceMean": _mean,
    "ReduceMax": lambda x, ax, k: np.maximum.reduce(x, axis=ax, keepdims=k, initial=_lowest(x.dtype)),
    "ReduceMin": lambda x, ax, k: np.minimum.reduce(x, axis=ax, keepdims=k, initial=_highest(x.dtype)),
    "ReduceProd": lambda x, ax, k: np.prod(x, axis=ax, keepdims=k),
    "ReduceL1": lambda x, ax, k: np.sum(np.abs(x), axis=ax, keepdims=k),
    "ReduceL2": lambda x, ax, k: np.sqrt(np.sum(np.square(x), axis=ax, keepdims=k)),
    "ReduceSumSquare": lambda x, ax, k: np.sum(np.square(x), axis=ax, keepdims=k),
    "ReduceLogSum": lambda x, ax, k: np.log(np.sum(x, axis=ax, keepdims=k)),
    "ReduceLogSumExp": _log_sum_exp,
}

#: reductions computed in floating point even for integer inputs (then cast back)
_FLOAT_MATH = {"ReduceMean", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp"}


def _make(op, fn):
    def reduce_op(inputs, attrs, num_outputs):
        x = np.asarray(inputs[0])
        axes = _axes(inputs, attrs, x.ndim, op)
        if axes is None:
            return [x.copy()]
        keepdims = bool(attrs.get("keepdims", 1))
        xc = _compute(x)
        if op in _FLOAT_MATH and xc.dtype.kind != "f":
            xc = xc.astype(np.float64)
        with np.errstate(all="ignore"):
            y = fn(xc, axes, keepdims)
        if x.dtype.kind in "iu" and y.dtype.kind == "f":
            y = np.trunc(y)
        return [np.asarray(y).astype(x.dtype)]
    reduce_op.__name__ = op
    return reduce_op


for _op, _fn in REDUCERS.items():
    register(_op)(_make(_op, _fn))


def _arg(op, pick):
    def arg_op(inputs, attrs, num_outputs):
        x = _compute(np.asarray(inputs[0]))
        axis = int(attrs.get("axis", 0))
        if axis < 0:
            axis += x.ndim
        if attrs.get("select_last_index", 0):
            flipped = np.flip(x, axis=axis)
            idx = x.shape[axis] - 1 - pick(flipped, axis=axis)
        else:
            idx = pick(x, axis=axis)
        if attrs.get("keepdims", 1):
            idx = np.expand_dims(idx, axis)
        return [np.asarray(idx, dtype=np.int64)]
    arg_op.__name__ = op
    return register(op)(arg_op)


_arg("ArgMax", np.argmax)
_arg("ArgMin", np.argmin)
