"""Quantization parameter math: scales, zero points, (de)quantization and requantization (numpy).

Design: the "compute" step of observe / compute / pack (STYLE.md). Pure functions of numbers and
arrays, no graph, no observers, no packing; the kernels and the numpy integer reference that tests
them are both written against the rules below (DESIGN.md "Quantization scheme").

The scheme:

- Activations: uint8, asymmetric, per tensor. ``real = scale * (q - zero_point)``, ``q`` in
  [0, 255]. The range always contains 0 and 0 is exactly representable (``q == zero_point``), so
  zero padding, ReLU and max-pool are exact in the integer domain.
- Weights: int8 symmetric (zero point 0) per output channel, narrow range [-127, 127] by default;
  int4 symmetric per (output channel, group of ``group_size`` along the reduction axis), narrow
  range [-7, 7] by default.

Why the narrow range (-127..127, not -128..127):

- ``-q`` is representable for every weight ``q``, so the sign trick of VNNI kernels (ggml style:
  ``|a| * sign(a, b)``) cannot overflow (``sign(-128)`` is -128 again in int8).
- The narrow range does NOT by itself make AVX2 ``vpmaddubsw`` safe: it multiplies u8 x s8 and adds
  adjacent pairs with int16 *saturation*, and 2 * 255 * 127 = 64770 > 32767 (also 2 * 255 * 128 =
  65280 for the full range). AVX2 kernels therefore must not use ``vpmaddubsw`` on full-range uint8
  activations: they widen both operands to int16 and use ``vpmaddwd`` (int16 x int16, pairs summed
  into int32, exact: 2 * 255 * 127 fits easily), or they would have to restrict activations to 7 bits
  (2 * 127 * 127 = 32258 <= 32767). AVX-512 VNNI ``vpdpbusd`` sums four u8 x s8 products straight
  into int32 and does not saturate. Either way the int32 accumulator is exact (bit-exact across
  ISAs) as long as K * 255 * 127 < 2**31, i.e. K < 66,000 per dot product.

THE rounding rules (the kernels must be bit-exact to these):

- Quantize (float -> uint8): ``q = clamp(rint(float32(x) / float32(scale)) + zero_point, 0, 255)``,
  the division done in float32 (IEEE, one rounding), ``rint`` = round half to even (the default
  MXCSR mode of ``cvtps2dq``; never the truncating ``cvttps2dq``), clamped in float before the
  conversion to int so that +-inf saturate; NaN quantizes to the zero point (real 0). This is ONNX
  ``QuantizeLinear``.
- Requantize (int32 accumulator -> uint8), see ``requantize``: ``q = clamp(rint(float32(acc) *
  M[c]) + out_zero_point, 0, 255)`` with ``M[c] = float32(in_scale * w_scale[c] / out_scale)``
  computed in float64 and rounded to float32 once (``requant_multiplier``); ``float32(acc)`` is the
  round-to-nearest-even int32 -> float32 conversion; one float32 multiply (no FMA with anything
  else); ``rint`` half to even; the zero point added in int32 after rounding; then saturate.
- Weight quantization: ``q = clamp(rint(w / scale), -qmax, qmax)`` in float64 (done once, offline:
  any exact rule works, this one is it).
- Bias: ``int32 = clamp(rint(bias / (in_scale * w_scale[c])), int32)`` in float64 (``quantize_bias``).
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import CalibrationError

#: Smallest scale ever produced (2**-40 ~ 9.1e-13): tiny but non-degenerate ranges get this scale,
#: so that 1 / scale, products of two scales and requantization multipliers stay finite, normal
#: float32 numbers. Much smaller than torch.ao's ``eps`` (float32 epsilon, 1.2e-7), which would
#: crush legitimate weight channels of magnitude 1e-5; ranges above ~1e-10 get their exact scale.
SCALE_MIN = 2.0 ** -40

#: Scale used when the observed range is exactly [0, 0] (ONNX Runtime's convention): any scale
#: represents zeros exactly, and 1.0 keeps unseen non-zero values from saturating immediately.
DEGENERATE_SCALE = 1.0

INT32_MIN = -(2 ** 31)
INT32_MAX = 2 ** 31 - 1


# ------------------------------------------------------------------------------ helpers
def _check_bits(bits, lo=2, hi=16):
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not lo <= bits <= hi:
        raise ValueError(f"bits must be an int in {lo}..{hi}, got {bits!r}")
    return int(bits)


def _finite_float(v, what):
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise CalibrationError(f"{what} must be a real number, got {v!r}") from None
    if not math.isfinite(f):
        raise CalibrationError(
            f"{what} is {f} (NaN or infinite): the observed data contained only non-finite values "
            f"or the range overflowed; quantization parameters cannot be chosen")
    return f


def uint_range(bits=8):
    """(qmin, qmax) of unsigned ``bits``-bit activations: (0, 2**bits - 1)."""
    bits = _check_bits(bits)
    return 0, 2 ** bits - 1


def int_range(bits=8, narrow=True):
    """(qmin, qmax) of signed ``bits``-bit weights: narrow (-2**(b-1)+1, 2**(b-1)-1), else full."""
    bits = _check_bits(bits)
    qmax = 2 ** (bits - 1) - 1
    return (-qmax if narrow else -qmax - 1), qmax


# ------------------------------------------------------------------------------ activations
def choose_qparams_asymmetric(lo, hi, bits=8):
    """Scale and zero point of unsigned ``bits``-bit asymmetric quantization covering [lo, hi].

    Returns ``(scale: np.float32, zero_point: int)``. The range is first widened to contain 0
    (``lo = min(lo, 0)``, ``hi = max(hi, 0)``), so 0 is exactly representable (``q == zero_point``).
    ``zero_point = rint(qmin - lo / scale)`` (gemmlowp / TFLite nudging): every value of [lo, hi]
    round-trips with an error of at most ``scale / 2`` (up to float32 rounding). The scale is
    ``float32((hi - lo) / (qmax - qmin))`` (computed in float64, rounded once), at least
    ``SCALE_MIN``; a range of exactly [0, 0] (all-zero tensor) gets scale ``DEGENERATE_SCALE``
    and zero point 0. NaN or infinite bounds raise ``CalibrationError``; so does ``lo > hi``.
    """
    qmin, qmax = uint_range(bits)
    lo = _finite_float(lo, "range minimum")
    hi = _finite_float(hi, "range maximum")
    if lo > hi:
        raise CalibrationError(f"range minimum {lo!r} is greater than the maximum {hi!r}")
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi == lo:                       # both 0: an all-zero tensor
        return np.float32(DEGENERATE_SCALE), 0
    span = hi - lo
    if not math.isfinite(span):
        raise CalibrationError(f"range [{lo!r}, {hi!r}] is too wide to quantize (its width overflows)")
    exact = span / (qmax - qmin)
    if exact > float(np.finfo(np.float32).max):
        raise CalibrationError(f"range [{lo!r}, {hi!r}] is too wide for a float32 scale")
    scale = max(np.float32(exact), np.float32(SCALE_MIN))
    zp = int(np.clip(np.rint(qmin - lo / float(scale)), qmin, qmax))
    return np.float32(scale), zp


def quantize_activation(x, scale, zero_point, bits=8):
    """float -> uint8 (``bits`` <= 8), ``clamp(rint(x / scale) + zero_point, 0, 2**bits - 1)``.

    Division in float32, round half to even, saturation; NaN -> ``zero_point``. This is THE rule
    (ONNX QuantizeLinear), see the module docstring.
    """
    qmin, qmax = uint_range(bits)
    if bits > 8:
        raise ValueError("quantize_activation produces uint8: bits must be <= 8")
    zp = int(zero_point)
    if not qmin <= zp <= qmax:
        raise ValueError(f"zero point {zp} outside [{qmin}, {qmax}]")
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        v = np.asarray(x, dtype=np.float32) / np.float32(scale)
        v = np.rint(v)
    v = np.where(np.isnan(v), np.float32(0), v)
    v = np.clip(v, np.float32(qmin - zp), np.float32(qmax - zp))
    return (v.astype(np.int32) + zp).astype(np.uint8)


def dequantize_activation(q, scale, zero_point):
    """uint8 -> float32: ``float32(scale) * (q - zero_point)`` (exact for 8-bit q and a float32 scale)."""
    return (np.asarray(q).astype(np.int32) - int(zero_point)).astype(np.float32) * np.float32(scale)


# ------------------------------------------------------------------------------ weights
def choose_qparams_symmetric(absmax, bits=8, narrow=True):
    """Scale of signed symmetric quantization (zero point 0) for ``absmax`` (scalar or per channel).

    ``narrow=True`` (default): q in [-qmax, qmax], ``scale = absmax / qmax`` (qmax = 127 for 8
    bits, 7 for 4 bits), see the module docstring for why. ``narrow=False``: q in [-qmax-1, qmax],
    ``scale = absmax / (qmax + 0.5)`` (torch.ao's symmetric full range; +absmax rounds to qmax+1
    and saturates with an error of scale / 2). Returns float32 (scalar for a scalar input, else an
    array of the input's shape). Channels with absmax 0 get ``DEGENERATE_SCALE``; tiny ones
    ``SCALE_MIN``. NaN, infinite or negative absmax raise ``CalibrationError``.
    """
    qmin, qmax = int_range(bits, narrow)
    a = np.asarray(absmax, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise CalibrationError("absolute maximum contains NaN or infinite values: cannot choose a scale")
    if np.any(a < 0):
        raise CalibrationError(f"absolute maximum must be >= 0, got {a.min()!r}")
    denom = qmax if narrow else (qmax - qmin) / 2.0
    if np.any(a / denom > float(np.finfo(np.float32).max)):
        raise CalibrationError("absolute maximum is too large for a float32 scale")
    scale = (a / denom).astype(np.float32)
    scale = np.where(a == 0, np.float32(DEGENERATE_SCALE), np.maximum(scale, np.float32(SCALE_MIN)))
    scale = scale.astype(np.float32)
    return np.float32(scale) if scale.ndim == 0 else scale


def _quantize_symmetric(w, scale, qmin, qmax):
    with np.errstate(over="ignore"):
        q = np.rint(w / scale)
    return np.clip(q, qmin, qmax).astype(np.int8)


def _check_weight(w):
    w = np.asarray(w)
    if w.dtype.kind not in "fiu":
        raise CalibrationError(f"weights must be numeric, got dtype {w.dtype}")
    w = w.astype(np.float64)
    if not np.all(np.isfinite(w)):
        raise CalibrationError("weights contain NaN or infinite values: cannot quantize them")
    return w


def quantize_weight_per_channel(w, axis=0, bits=8, narrow=True):
    """Symmetric per-channel quantization along ``axis`` (the output channel).

    Returns ``(q: int8 array of w's shape, scales: float32[C])``; ``w ~= q * scales`` broadcast along
    ``axis``, with ``|w - q * scale| <= scale / 2`` per element. ``bits`` <= 8 (int4 values are
    returned in int8 containers; packing two per byte is the pack step's job).
    """
    bits = _check_bits(bits, 2, 8)
    w = _check_weight(w)
    if w.ndim == 0:
        raise ValueError("per-channel quantization needs at least one axis")
    axis = axis % w.ndim
    qmin, qmax = int_range(bits, narrow)
    other = tuple(i for i in range(w.ndim) if i != axis)
    absmax = np.max(np.abs(w), axis=other) if w.size else np.zeros(w.shape[axis])
    scales = np.atleast_1d(choose_qparams_symmetric(absmax, bits, narrow))
    shape = [1] * w.ndim
    shape[axis] = -1
    q = _quantize_symmetric(w, scales.astype(np.float64).reshape(shape), qmin, qmax)
    return q, scales


def quantize_weight_grouped(w2d, group_size, bits=4, narrow=True):
    """Symmetric quantization per (row, group of ``group_size`` columns) of ``w2d [N, K]``.

    ``N`` is the output channel and ``K`` the reduction axis (transpose a ``[K, N]`` MatMul weight
    first). Returns ``(q: int8 [N, K], scales: float32 [N, ceil(K / group_size)])``; q is in
    [-7, 7] for 4 bits narrow (default) or [-8, 7] with ``narrow=False``.

    K not divisible by ``group_size``: the last group is short, holding the last
    ``K % group_size`` columns, and its scale comes from those real columns only. ``q`` is returned
    unpadded ``[N, K]``; the pack step pads the last group to ``group_size`` with ``q = 0``, which
    dequantizes to exactly 0 and adds nothing to a dot product (the activations' padding lanes
    hold the zero point, whose contribution the zero-point correction cancels, or zeros).
    """
    bits = _check_bits(bits, 2, 8)
    w = _check_weight(w2d)
    if w.ndim != 2:
        raise ValueError(f"grouped quantization takes a 2-D [N, K] weight, got shape {w.shape}")
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    n, k = w.shape
    groups = -(-k // group_size)
    qmin, qmax = int_range(bits, narrow)
    pad = groups * group_size - k
    wp = np.pad(w, ((0, 0), (0, pad))) if pad else w
    absmax = np.abs(wp.reshape(n, groups, group_size)).max(axis=2) if wp.size else np.zeros((n, groups))
    scales = np.asarray(choose_qparams_symmetric(absmax, bits, narrow), np.float32).reshape(n, groups)
    per_col = np.repeat(scales.astype(np.float64), group_size, axis=1)[:, :k]
    q = _quantize_symmetric(w, per_col, qmin, qmax)
    return q, scales


def dequantize(q, scale, zero_point=0, axis=None, group_size=None):
    """Integer -> float32: ``(q - zero_point) * scale``, in float32.

    - per tensor (``axis=None``, ``group_size=None``): scalar scale / zero point;
    - per channel: ``scale`` (and ``zero_point`` if not scalar) has ``q.shape[axis]`` entries;
    - grouped: ``q [N, K]``, ``scale [N, ceil(K / group_size)]`` (``quantize_weight_grouped``).
    """
    q = np.asarray(q).astype(np.int32)
    s = np.asarray(scale, dtype=np.float32)
    zp = np.asarray(zero_point).astype(np.int32)
    if group_size is not None:
        if q.ndim != 2 or s.ndim != 2 or s.shape[0] != q.shape[0] \
                or s.shape[1] != -(-q.shape[1] // group_size):
            raise ValueError(f"grouped dequantize: q {q.shape} does not match scales {s.shape} "
                             f"with group_size {group_size}")
        s = np.repeat(s, group_size, axis=1)[:, :q.shape[1]]
        if zp.ndim == 2:
            zp = np.repeat(zp, group_size, axis=1)[:, :q.shape[1]]
    elif axis is not None:
        shape = [1] * q.ndim
        shape[axis] = -1
        s = s.reshape(shape)
        if zp.size > 1:
            zp = zp.reshape(shape)
    return (q - zp).astype(np.float32) * s


# ------------------------------------------------------------------------------ requantization
def requant_multiplier(in_scale, w_scales, out_scale):
    """Per-channel requantization multipliers ``M[c] = float32(in_scale * w_scale[c] / out_scale)``.

    Computed in float64, rounded to float32 once. The kernels' epilogue (and ``requantize``, their
    numpy reference) maps an int32 accumulator ``acc`` of output channel ``c`` to
    ``clamp(rint(float32(acc) * M[c]) + out_zero_point, 0, 255)``: int32 -> float32 round to nearest
    even, one float32 multiply (not fused with anything), round half to even, add the zero point
    in int32, saturate. That is THE rounding rule; integer kernels are bit-exact to it.
    For a float output use ``out_scale = 1`` (then ``out = float32(acc) * M[c]``, no rounding).
    """
    s_in = _finite_float(in_scale, "input scale")
    s_out = _finite_float(out_scale, "output scale")
    w = np.atleast_1d(np.asarray(w_scales, dtype=np.float64))
    if s_in <= 0 or s_out <= 0 or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise CalibrationError(
            f"scales must be finite and > 0 (input {s_in!r}, output {s_out!r}, weights min "
            f"{float(w.min()) if w.size else None!r})")
    m = (s_in * w / s_out).astype(np.float32)
    if not np.all(np.isfinite(m)) or np.any(m == 0):
        raise CalibrationError("requantization multiplier overflows or underflows float32")
    return m


def requantize(acc, multiplier, zero_point, axis=-1, bits=8):
    """Numpy reference of the kernels' requantization epilogue (see ``requant_multiplier``).

    ``acc``: int32 accumulators; ``multiplier``: float32 scalar or per channel along ``axis``.
    Returns uint8 ``clamp(rint(float32(acc) * M) + zero_point, 0, 2**bits - 1)``.
    """
    qmin, qmax = uint_range(bits)
    acc = np.asarray(acc)
    if acc.dtype != np.int32:
        raise TypeError(f"accumulators must be int32, got {acc.dtype}")
    m = np.asarray(multiplier, dtype=np.float32)
    if m.ndim == 1 and m.size > 1:
        shape = [1] * acc.ndim
        shape[axis] = -1
        m = m.reshape(shape)
    with np.errstate(over="ignore"):
        v = np.rint(acc.astype(np.float32) * m)
    zp = int(zero_point)
    v = np.clip(v, np.float32(qmin - zp), np.float32(qmax - zp))
    return (v.astype(np.int32) + zp).astype(np.uint8 if bits <= 8 else np.uint16)


def quantize_bias(bias, in_scale, w_scales):
    """Float bias -> int32 in the accumulator's units: ``rint(bias / (in_scale * w_scale[c]))``.

    Computed in float64, round half to even, saturated to int32 (a saturated bias means the scales
    are absurdly small for this bias; the kernels add it to the int32 accumulator as is).
    """
    b = np.asarray(bias, dtype=np.float64)
    s = float(in_scale) * np.asarray(w_scales, dtype=np.float64)
    if not np.all(np.isfinite(b)):
        raise CalibrationError("bias contains NaN or infinite values: cannot quantize it")
    with np.errstate(over="ignore", divide="ignore"):
        q = np.rint(b / s)
    return np.clip(q, INT32_MIN, INT32_MAX).astype(np.int32)


__all__ = ["SCALE_MIN", "DEGENERATE_SCALE", "uint_range", "int_range", "choose_qparams_asymmetric",
           "choose_qparams_symmetric", "quantize_activation", "dequantize_activation",
           "quantize_weight_per_channel", "quantize_weight_grouped", "dequantize",
           "requant_multiplier", "requantize", "quantize_bias"]
