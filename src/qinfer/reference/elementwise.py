"""Reference elementwise ops: unary math, activations, binary arithmetic with numpy broadcasting,
comparisons, logic, Cast, Where, Clip and the variadic Sum/Mean/Min/Max.

Design: every op keeps the dtype ONNX gives its output. float16 is computed in float32 and cast back
(numpy would otherwise evaluate transcendental functions in half precision). Erf has its own float64
implementation (series + continued fraction, ~1e-15 relative) so that no compiled dependency is
needed and it is exact enough to be the oracle for float32 kernels.
"""
import functools
import math

import numpy as np

from .registry import register
from ..errors import UnsupportedOperatorError
from ..ir.dtypes import ONNX_TO_NAME, ONNX_UNSUPPORTED


# ----------------------------------------------------------------------------- helpers
def _compute(x):
    """The array in the dtype the math is done in (float16 -> float32; others unchanged)."""
    return x.astype(np.float32) if x.dtype == np.float16 else x


def _unary(*names):
    """Register ``fn(x, attrs) -> array`` as a unary op whose output keeps the input dtype."""
    def deco(fn):
        @functools.wraps(fn)
        def op(inputs, attrs, num_outputs):
            x = np.asarray(inputs[0])
            with np.errstate(all="ignore"):
                y = fn(_compute(x), attrs)
            return [np.asarray(y).astype(x.dtype, copy=False)]
        return register(*names)(op)
    return deco


def _binary(*names):
    """Register ``fn(a, b) -> array`` as a broadcasting binary op whose output has A's dtype."""
    def deco(fn):
        @functools.wraps(fn)
        def op(inputs, attrs, num_outputs):
            a, b = np.asarray(inputs[0]), np.asarray(inputs[1])
            with np.errstate(all="ignore"):
                y = fn(_compute(a), _compute(b).astype(_compute(a).dtype, copy=False))
            return [np.asarray(y).astype(a.dtype, copy=False)]
        return register(*names)(op)
    return deco


def _compare(*names):
    """Register ``fn(a, b) -> bool array`` as a broadcasting comparison."""
    def deco(fn):
        @functools.wraps(fn)
        def op(inputs, attrs, num_outputs):
            a, b = np.asarray(inputs[0]), np.asarray(inputs[1])
            return [np.asarray(fn(a, b), dtype=bool)]
        return register(*names)(op)
    return deco


def onnx_dtype(code, op="Cast", attr="to"):
    """An ONNX TensorProto data type code (or a numpy dtype name) -> numpy dtype."""
    if isinstance(code, (str, np.dtype, type)):
        try:
            return np.dtype(code)
        except TypeError:
            raise UnsupportedOperatorError(f"{op}: {attr}={code!r} is not a supported dtype") from None
    code = int(code)
    if code in ONNX_TO_NAME:
        return np.dtype(ONNX_TO_NAME[code])
    name = ONNX_UNSUPPORTED.get(code, f"type#{code}")
    raise UnsupportedOperatorError(f"{op}: {attr}={name} is out of scope (float8, bfloat16, 4-bit and "
                                   "string tensors are not supported)")


# ----------------------------------------------------------------------------- erf
_SQRT_PI = math.sqrt(math.pi)


def erf(x):
    """erf in float64, vectorized, ~1e-15 relative error.

    |x| < 2.5: erf(x) = 2/sqrt(pi) * exp(-x^2) * sum_n 2^n x^(2n+1) / (2n+1)!!  (all terms positive,
    so no cancellation); |x| >= 2.5: erfc by its continued fraction
    erfc(x) = exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))).
    """
    x = np.asarray(x, dtype=np.float64)
    ax = np.abs(x)
    small = ax < 2.5
    out = np.empty_like(x)

    xs = ax[small]
    term = xs.copy()
    total = xs.copy()
    x2 = 2.0 * xs * xs
    for n in range(40):
        term = term * x2 / (2 * n + 3)
        total += term
    out[small] = 2.0 / _SQRT_PI * np.exp(-xs * xs) * total

    xl = np.minimum(ax[~small], 7.0)  # erfc(7) ~ 4e-23: erf is 1 in float64 beyond
    f = xl.copy()
    for k in range(40, 0, -1):
        f = xl + (k / 2.0) / f
    out[~small] = 1.0 - np.exp(-xl * xl) / (_SQRT_PI * f)
    out = np.where(np.isnan(x), np.nan, out)
    return np.copysign(out, x)


# ----------------------------------------------------------------------------- unary math
@_unary("Identity")
def identity(x, attrs):
    return x.copy()


@_unary("Neg")
def neg(x, attrs):
    return np.negative(x)


@_unary("Abs")
def abs_(x, attrs):
    return np.abs(x)


@_unary("Sign")
def sign(x, attrs):
    return np.sign(x)


@_unary("Sqrt")
def sqrt(x, attrs):
    return np.sqrt(x)


@_unary("Exp")
def exp(x, attrs):
    return np.exp(x)


@_unary("Log")
def log(x, attrs):
    return np.log(x)


@_unary("Reciprocal")
def reciprocal(x, attrs):
    return 1.0 / x


@_unary("Floor")
def floor(x, attrs):
    return np.floor(x)


@_unary("Ceil")
def ceil(x, attrs):
    return np.ceil(x)


@_unary("Round")
def round_(x, attrs):
    return np.round(x)  # half to even, as ONNX


@_unary("Erf")
def erf_op(x, attrs):
    return erf(x)


_TRIG = {"Sin": np.sin, "Cos": np.cos, "Tan": np.tan, "Asin": np.arcsin, "Acos": np.arccos,
         "Atan": np.arctan, "Sinh": np.sinh, "Cosh": np.cosh, "Asinh": np.arcsinh,
         "Acosh": np.arccosh, "Atanh": np.arctanh, "Tanh": np.tanh}
for _name, _fn in _TRIG.items():
    _unary(_name)(lambda x, attrs, _fn=_fn: _fn(x))


# ----------------------------------------------------------------------------- activations
@_unary("Relu")
def relu(x, attrs):
    return np.maximum(x, 0)


@_unary("Sigmoid")
def sigmoid(x, attrs):
    # split by sign so that exp never overflows
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


@_unary("LeakyRelu")
def leaky_relu(x, attrs):
    alpha = attrs.get("alpha", 0.01)
    return np.where(x >= 0, x, x * np.asarray(alpha, x.dtype))


@_unary("HardSigmoid")
def hard_sigmoid(x, attrs):
    alpha = np.asarray(attrs.get("alpha", 0.2), x.dtype)
    beta = np.asarray(attrs.get("beta", 0.5), x.dtype)
    return np.clip(alpha * x + beta, 0, 1)


@_unary("HardSwish")
def hard_swish(x, attrs):
    return x * np.clip(x * np.asarray(1 / 6, x.dtype) + np.asarray(0.5, x.dtype), 0, 1)


@_unary("Gelu")
def gelu(x, attrs):
    approx = attrs.get("approximate", "none")
    if approx == "none":
        return (0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))).astype(x.dtype)
    if approx == "tanh":
        x64 = x.astype(np.float64)
        inner = math.sqrt(2.0 / math.pi) * (x64 + 0.044715 * x64 ** 3)
        return 0.5 * x64 * (1.0 + np.tanh(inner))
    raise UnsupportedOperatorError(f"Gelu: approximate={approx!r} is not supported (none, tanh)")


@_unary("Softplus")
def softplus(x, attrs):
    return np.logaddexp(0, x)


@_unary("Softsign")
def softsign(x, attrs):
    return x / (1 + np.abs(x))


@_unary("Elu")
def elu(x, attrs):
    alpha = attrs.get("alpha", 1.0)
    return np.where(x > 0, x, alpha * np.expm1(x))


@_unary("Celu")
def celu(x, attrs):
    alpha = attrs.get("alpha", 1.0)
    return np.maximum(x, 0) + np.minimum(0, alpha * np.expm1(x / alpha))


@_unary("Selu")
def selu(x, attrs):
    alpha = attrs.get("alpha", 1.67326319217681884765625)
    gamma = attrs.get("gamma", 1.05070102214813232421875)
    return np.where(x > 0, gamma * x, gamma * alpha * np.expm1(x))


@_unary("ThresholdedRelu")
def thresholded_relu(x, attrs):
    return np.where(x > attrs.get("alpha", 1.0), x, 0)


@_unary("Mish")
def mish(x, attrs):
    return x * np.tanh(np.logaddexp(0, x))


@_unary("Shrink")
def shrink(x, attrs):
    bias, lambd = attrs.get("bias", 0.0), attrs.get("lambd", 0.5)
    return np.where(x < -lambd, x + bias, np.where(x > lambd, x - bias, 0))


@register("Clip")
def clip(inputs, attrs, num_outputs):
    x = np.asarray(inputs[0])
    lo = inputs[1] if len(inputs) > 1 else None
    hi = inputs[2] if len(inputs) > 2 else None
    if lo is None and "min" in attrs:  # opset < 11
        lo = attrs["min"]
    if hi is None and "max" in attrs:
        hi = attrs["max"]
    y = x
    if lo is not None:
        y = np.maximum(y, np.asarray(lo).astype(x.dtype))
    if hi is not None:
        y = np.minimum(y, np.asarray(hi).astype(x.dtype))  # min > max gives max, as ONNX says
    return [np.array(y, dtype=x.dtype)]


@register("PRelu")
def prelu(inputs, attrs, num_outputs):
    x, slope = np.asarray(inputs[0]), np.asarray(inputs[1])
    y = np.where(x < 0, _compute(x) * _compute(slope), x)
    return [y.astype(x.dtype)]


# ----------------------------------------------------------------------------- predicates
@register("IsNaN")
def isnan(inputs, attrs, num_outputs):
    return [np.isnan(inputs[0])]


@register("IsInf")
def isinf(inputs, attrs, num_outputs):
    x = inputs[0]
    pos = attrs.get("detect_positive", 1)
    negv = attrs.get("detect_negative", 1)
    return [(np.isposinf(x) & bool(pos)) | (np.isneginf(x) & bool(negv))]


@register("Not")
def not_(inputs, attrs, num_outputs):
    return [np.logical_not(inputs[0])]


# ----------------------------------------------------------------------------- binary arithmetic
@_binary("Add")
def add(a, b):
    return a + b


@_binary("Sub")
def sub(a, b):
    return a - b


@_binary("Mul")
def mul(a, b):
    return a * b


@_binary("Div")
def div(a, b):
    if np.issubdtype(a.dtype, np.integer):
        # C-style division: truncate toward zero
        q = np.floor_divide(a, b)
        adjust = (np.remainder(a, b) != 0) & ((a < 0) ^ (b < 0))
        return q + adjust.astype(q.dtype)
    return a / b


@register("Pow")
def pow_(inputs, attrs, num_outputs):
    x, y = np.asarray(inputs[0]), np.asarray(inputs[1])
    with np.errstate(all="ignore"):
        if np.issubdtype(x.dtype, np.integer) and np.issubdtype(y.dtype, np.integer):
            x64, y64 = x.astype(np.int64), y.astype(np.int64)
            z = np.power(x64, np.maximum(y64, 0))
            if (y64 < 0).any():  # integer x ** -n truncates toward zero, like C
                zf = np.trunc(np.power(x64.astype(np.float64), y64.astype(np.float64)))
                z = np.where(y64 < 0, zf.astype(np.int64), z)
        elif np.issubdtype(x.dtype, np.integer):
            z = np.trunc(np.power(x.astype(np.float64), y.astype(np.float64)))
        else:
            xf = _compute(x)
            z = np.power(xf, _compute(y).astype(xf.dtype))
    return [np.asarray(z).astype(x.dtype)]


@register("Mod")
def mod(inputs, attrs, num_outputs):
    a, b = np.asarray(inputs[0]), np.asarray(inputs[1])
    with np.errstate(all="ignore"):
        if attrs.get("fmod", 0) == 1:
            y = np.fmod(_compute(a), _compute(b))
        else:
            y = np.mod(_compute(a), _compute(b))
    return [y.astype(a.dtype)]


@register("BitShift")
def bitshift(inputs, attrs, num_outputs):
    a, b = inputs
    d = attrs.get("direction")
    if d == "LEFT":
        return [np.left_shift(a, b).astype(a.dtype)]
    if d == "RIGHT":
        return [np.right_shift(a, b).astype(a.dtype)]
    raise UnsupportedOperatorError(f"BitShift: direction={d!r} is not supported (LEFT, RIGHT)")


@_binary("BitwiseAnd")
def bitwise_and(a, b):
    return a & b


@_binary("BitwiseOr")
def bitwise_or(a, b):
    return a | b


@_binary("BitwiseXor")
def bitwise_xor(a, b):
    return a ^ b


@_unary("BitwiseNot")
def bitwise_not(x, attrs):
    return ~x


# ----------------------------------------------------------------------------- comparisons, logic
@_compare("Equal")
def equal(a, b):
    return a == b


@_compare("Greater")
def greater(a, b):
    return a > b


@_compare("GreaterOrEqual")
def greater_equal(a, b):
    return a >= b


@_compare("Less")
def less(a, b):
    return a < b


@_compare("LessOrEqual")
def less_equal(a, b):
    return a <= b


@_compare("And")
def and_(a, b):
    return np.logical_and(a, b)


@_compare("Or")
def or_(a, b):
    return np.logical_or(a, b)


@_compare("Xor")
def xor(a, b):
    return np.logical_xor(a, b)


@register("Where")
def where(inputs, attrs, num_outputs):
    c, x, y = inputs
    return [np.where(np.asarray(c, dtype=bool), x, y).astype(np.asarray(x).dtype, copy=False)]


# ----------------------------------------------------------------------------- variadic
def _variadic(name, fn, mean=False):
    def op(inputs, attrs, num_outputs):
        xs = [np.asarray(x) for x in inputs if x is not None]
        dtype = xs[0].dtype
        with np.errstate(all="ignore"):
            y = functools.reduce(fn, [_compute(x) for x in xs])
            if mean:
                y = y / len(xs)
        return [np.asarray(y).astype(dtype)]
    op.__name__ = name.lower()
    register(name)(op)


_variadic("Sum", np.add)
_variadic("Mean", np.add, mean=True)
_variadic("Max", np.maximum)
_variadic("Min", np.minimum)


# ----------------------------------------------------------------------------- casts
def _cast(x, dtype):
    x = np.asarray(x)
    if x.dtype.kind in "US" or dtype.kind in "US":
        raise UnsupportedOperatorError("Cast: string tensors are out of scope")
    with np.errstate(all="ignore"):
        if dtype == np.bool_:
            return x != 0
        if x.dtype.kind == "f" and dtype.kind in "iu":
            # float -> int truncates toward zero (C semantics); NaN/out of range are undefined
            x = np.trunc(x)
        return x.astype(dtype)


@register("Cast")
def cast(inputs, attrs, num_outputs):
    return [_cast(inputs[0], onnx_dtype(attrs["to"], "Cast", "to"))]


@register("CastLike")
def cast_like(inputs, attrs, num_outputs):
    return [_cast(inputs[0], np.asarray(inputs[1]).dtype)]
