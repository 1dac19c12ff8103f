"""Reference Conv, ConvTranspose and pooling for 1-D, 2-D and 3-D inputs (NCHW layout).

Design: vectorized by looping over *kernel positions* only (kh*kw iterations, never over pixels).
For each kernel offset the strided view of the padded input that this offset sees is one
(N, G, C/G, L) block (L = number of output pixels), and the layer is a sum over offsets of a batched
matmul (G, M/G, C/G) @ (N, G, C/G, L). This is im2col done one column block at a time: the same
arithmetic, without materialising the K-times larger im2col matrix, so it stays usable on 640x640
CNN inputs for constant folding and calibration. ConvTranspose is the adjoint: each offset
scatter-adds a matmul result into a strided slice of the output. Pools use the same offset loop.
"""
import itertools

import numpy as np

from .registry import register
from ..errors import UnsupportedOperatorError


def _compute(x):
    return x.astype(np.float32) if x.dtype == np.float16 else x


def _str(v):
    return v.decode() if isinstance(v, bytes) else v


def _spatial_params(op, attrs, nd, kernel):
    strides = list(attrs.get("strides") or [1] * nd)
    dilations = list(attrs.get("dilations") or [1] * nd)
    if len(strides) != nd or len(dilations) != nd or len(kernel) != nd:
        raise UnsupportedOperatorError(
            f"{op}: strides {strides}, dilations {dilations} and kernel_shape {list(kernel)} "
            f"must have one entry per spatial dimension ({nd})")
    return strides, dilations


def _resolve_pads(op, attrs, spatial, kernel, strides, dilations):
    """Explicit (begin..., end...) pads for a forward window op, after auto_pad."""
    nd = len(spatial)
    auto_pad = _str(attrs.get("auto_pad", "NOTSET"))
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for n, k, s, d in zip(spatial, kernel, strides, dilations):
            out = -(-n // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - n)
            small, big = total // 2, total - total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else big)
            end.append(big if auto_pad == "SAME_UPPER" else small)
        return begin + end
    if auto_pad == "VALID":
        return [0] * (2 * nd)
    if auto_pad != "NOTSET":
        raise UnsupportedOperatorError(f"{op}: auto_pad={auto_pad!r} is not supported")
    pads = list(attrs.get("pads") or [0] * (2 * nd))
    if len(pads) != 2 * nd:
        raise UnsupportedOperatorError(f"{op}: pads {pads} must have 2*{nd} entries")
    return pads


def _pad_spatial(x, begin, end, value):
    width = [(0, 0), (0, 0)] + list(zip(begin, end))
    if not any(begin) and not any(end):
        return x
    return np.pad(x, width, mode="constant", constant_values=value)


def _offset_slices(offset, out_shape, strides, dilations):
    """Slices of the padded input that kernel position ``offset`` reads for every output pixel."""
    return tuple(slice(o * d, o * d + s * (n - 1) + 1, s)
                 for o, n, s, d in zip(offset, out_shape, strides, dilations))


# ----------------------------------------------------------------------------- Conv
@register("Conv")
def conv(inputs, attrs, num_outputs):
    x, w = np.asarray(inputs[0]), np.asarray(inputs[1])
    b = inputs[2] if len(inputs) > 2 else None
    dtype = x.dtype
    if x.ndim < 3:
        raise UnsupportedOperatorError(f"Conv: input must be N x C x D1 ..., got shape {x.shape}")
    nd = x.ndim - 2
    n, c = x.shape[:2]
    m, cg = w.shape[:2]
    kernel = list(attrs.get("kernel_shape") or w.shape[2:])
    group = int(attrs.get("group", 1))
    strides, dilations = _spatial_params("Conv", attrs, nd, kernel)
    if c != cg * group or m % group:
        raise UnsupportedOperatorError(
            f"Conv: input channels {c}, weight {w.shape} and group {group} do not match")
    pads = _resolve_pads("Conv", attrs, x.shape[2:], kernel, strides, dilations)
    xp = _pad_spatial(_compute(x), pads[:nd], pads[nd:], 0)
    out_shape = [(p - ((k - 1) * d + 1)) // s + 1
                 for p, k, s, d in zip(xp.shape[2:], kernel, strides, dilations)]
    if min(out_shape) <= 0:
        raise UnsupportedOperatorError(f"Conv: kernel {kernel} larger than padded input {xp.shape[2:]}")
    mg, length = m // group, int(np.prod(out_shape))
    xg = xp.reshape((n, group, cg) + xp.shape[2:])
    wg = _compute(w).reshape((group, mg, cg) + tuple(kernel)).astype(xp.dtype, copy=False)
    out = np.zeros((n, group, mg, length), dtype=xp.dtype)
    for offset in itertools.product(*[range(k) for k in kernel]):
        cols = xg[(Ellipsis,) + _offset_slices(offset, out_shape, strides, dilations)]
        cols = cols.reshape(n, group, cg, length)
        wk = wg[(Ellipsis,) + offset]  # (G, M/G, C/G)
        if cg == 1:  # depthwise: a broadcast multiply beats G tiny matmuls
            out += wk[None] * cols
        else:
            out += np.matmul(wk, cols)
    out = out.reshape((n, m) + tuple(out_shape))
    if b is not None:
        out += _compute(np.asarray(b)).astype(out.dtype).reshape((1, m) + (1,) * nd)
    return [out.astype(dtype, copy=False)]


@register("ConvTranspose")
def conv_transpose(inputs, attrs, num_outputs):
    x, w = np.asarray(inputs[0]), np.asarray(inputs[1])
    b = inputs[2] if len(inputs) > 2 else None
    dtype = x.dtype
    nd = x.ndim - 2
    n, c = x.shape[:2]
    group = int(attrs.get("group", 1))
    cg, mg = c // group, w.shape[1]
    m = mg * group
    kernel = list(attrs.get("kernel_shape") or w.shape[2:])
    strides, dilations = _spatial_params("ConvTranspose", attrs, nd, kernel)
    if w.shape[0] != c or c % group:
        raise UnsupportedOperatorError(
            f"ConvTranspose: input channels {c}, weight {w.shape} and group {group} do not match")
    out_pad = list(attrs.get("output_padding") or [0] * nd)[-nd:]
    in_sp = x.shape[2:]
    full = [s * (i - 1) + op + (k - 1) * d + 1
            for i, k, s, d, op in zip(in_sp, kernel, strides, dilations, out_pad)]
    auto_pad = _str(attrs.get("auto_pad", "NOTSET"))
    output_shape = attrs.get("output_shape")
    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if output_shape is not None:
            target = list(output_shape)[-nd:]
        else:
            target = [i * s for i, s in zip(in_sp, strides)]
        total = [f - t for f, t in zip(full, target)]
        if auto_pad == "SAME_UPPER":
            begin = [t // 2 for t in total]
        else:
            begin = [t - t // 2 for t in total]
        end = [t - bg for t, bg in zip(total, begin)]
    elif auto_pad in ("NOTSET", "VALID"):
        pads = [0] * (2 * nd) if auto_pad == "VALID" else list(attrs.get("pads") or [0] * (2 * nd))
        begin, end = pads[:nd], pads[nd:]
    else:
        raise UnsupportedOperatorError(f"ConvTranspose: auto_pad={auto_pad!r} is not supported")
    out_sp = [f - bg - e for f, bg, e in zip(full, begin, end)]
    # the un-cropped canvas: large enough for every tap, the output padding and negative pads
    canvas = [max(f, bg + o) + max(0, -bg) for f, bg, o in zip(full, begin, out_sp)]
    shift = [max(0, -bg) for bg in begin]

    xc = _compute(x)
    length = int(np.prod(in_sp))
    xg = xc.reshape(n, group, cg, length)
    wg = _compute(w).astype(xc.dtype, copy=False).reshape((group, cg, mg) + tuple(kernel))
    out = np.zeros((n, group, mg) + tuple(canvas), dtype=xc.dtype)
    for offset in itertools.product(*[range(k) for k in kernel]):
        wk = np.swapaxes(wg[(Ellipsis,) + offset], 1, 2)  # (G, M/G, C/G)
        contrib = np.matmul(wk, xg).reshape((n, group, mg) + tuple(in_sp))
        sl = tuple(slice(sh + o * d, sh + o * d + s * (i - 1) + 1, s)
                   for sh, o, d, s, i in zip(shift, offset, dilations, strides, in_sp))
        out[(Ellipsis,) + sl] += contrib
    crop = tuple(slice(sh + bg, sh + bg + o) for sh, bg, o in zip(shift, begin, out_sp))
    out = out[(Ellipsis,) + crop].reshape((n, m) + tuple(out_sp))
    if b is not None:
        out = out + _compute(np.asarray(b)).astype(out.dtype).reshape((1, m) + (1,) * nd)
    return [np.ascontiguousarray(out).astype(dtype, copy=False)]


# ----------------------------------------------------------------------------- pooling
def _pool_geometry(op, x, attrs):
    """(kernel, strides, dilations, begin pads, end pads incl. ceil-mode extra, out shape, explicit end)"""
    nd = x.ndim - 2
    kernel = list(attrs.get("kernel_shape") or [])
    if len(kernel) != nd:
        raise UnsupportedOperatorError(f"{op}: kernel_shape {kernel} must have {nd} entries")
    strides, dilations = _spatial_params(op, attrs, nd, kernel)
    pads = _resolve_pads(op, attrs, x.shape[2:], kernel, strides, dilations)
    begin, end = pads[:nd], pads[nd:]
    ceil_mode = int(attrs.get("ceil_mode", 0))
    out_shape, extra = [], []
    for i, (size, k, s, d) in enumerate(zip(x.shape[2:], kernel, strides, dilations)):
        span = size + begin[i] + end[i] - ((k - 1) * d + 1)
        if ceil_mode:
            o = -(-span // s) + 1
            if (o - 1) * s >= size + begin[i]:  # last window would start in the end padding
                o -= 1
        else:
            o = span // s + 1
        out_shape.append(o)
        extra.append(max(0, (o - 1) * s + (k - 1) * d + 1 - (size + begin[i] + end[i])))
    return kernel, strides, dilations, begin, end, extra, out_shape


@register("MaxPool")
def max_pool(inputs, attrs, num_outputs):
    x = np.asarray(inputs[0])
    dtype = x.dtype
    kernel, strides, dilations, begin, end, extra, out_shape = _pool_geometry("MaxPool", x, attrs)
    xc = _compute(x)
    low = -np.inf if xc.dtype.kind == "f" else np.iinfo(xc.dtype).min
    xp = _pad_spatial(xc, begin, [e + x_ for e, x_ in zip(end, extra)], low)
    n, c = x.shape[:2]
    best = np.full((n, c) + tuple(out_shape), low, dtype=xc.dtype)
    want_idx = num_outputs > 1
    if want_idx:
        # Indices: flat position in the input, (n*C + c) * prod(spatial) + position in the image,
        # where the image is row-major (storage_order 0) or column-major (storage_order 1).
        best_idx = np.zeros(best.shape, dtype=np.int64)
        spatial = x.shape[2:]
        base = (np.arange(n * c, dtype=np.int64) * int(np.prod(spatial))).reshape(
            (n, c) + (1,) * len(spatial))
        order = list(range(len(spatial)))
        if int(attrs.get("storage_order", 0)) == 0:
            order.reverse()
        elem_strides = [0] * len(spatial)
        acc = 1
        for ax in order:
            elem_strides[ax] = acc
            acc *= spatial[ax]
    for offset in itertools.product(*[range(k) for k in kernel]):
        vals = xp[(Ellipsis,) + _offset_slices(offset, out_shape, strides, dilations)]
        if not want_idx:
            np.maximum(best, vals, out=best)
            continue
        better = vals > best
        pos = base.copy()
        for ax, (o, s, d, bg, st) in enumerate(zip(offset, strides, dilations, begin, elem_strides)):
            coord = np.arange(out_shape[ax], dtype=np.int64) * s + o * d - bg
            shape = [1] * (2 + len(out_shape))
            shape[2 + ax] = out_shape[ax]
            pos = pos + (coord * st).reshape(shape)
        best = np.where(better, vals, best)
        best_idx = np.where(better, pos, best_idx)
    outs = [best.astype(dtype, copy=False)]
    if want_idx:
        outs.append(best_idx)
    return outs


def _window_sum(xp, kernel, out_shape, strides, dilations):
    total = None
    for offset in itertools.product(*[range(k) for k in kernel]):
        vals = xp[(Ellipsis,) + _offset_slices(offset, out_shape, strides, dilations)]
        total = vals.copy() if total is None else total + vals
    return total


@register("AveragePool")
def average_pool(inputs, attrs, num_outputs):
    x = np.asarray(inputs[0])
    dtype = x.dtype
    kernel, strides, dilations, begin, end, extra, out_shape = _pool_geometry("AveragePool", x, attrs)
    nd = x.ndim - 2
    xc = _compute(x)
    end_all = [e + x_ for e, x_ in zip(end, extra)]
    sums = _window_sum(_pad_spatial(xc, begin, end_all, 0), kernel, out_shape, strides, dilations)
    # how many elements each window averages: the input, plus the explicit pads if counted,
    # never the extra end padding that ceil_mode adds
    ones = np.ones((1, 1) + x.shape[2:], dtype=xc.dtype)
    if int(attrs.get("count_include_pad", 0)):
        mask = _pad_spatial(ones, begin, end, 1)
        mask = _pad_spatial(mask, [0] * nd, extra, 0)
    else:
        mask = _pad_spatial(ones, begin, end_all, 0)
    counts = _window_sum(mask, kernel, out_shape, strides, dilations)
    with np.errstate(all="ignore"):
        y = sums / counts
    return [y.astype(dtype, copy=False)]


@register("LpPool")
def lp_pool(inputs, attrs, num_outputs):
    x = np.asarray(inputs[0])
    p = attrs.get("p", 2)
    kernel, strides, dilations, begin, end, extra, out_shape = _pool_geometry("LpPool", x, attrs)
    xc = _compute(x)
    end_all = [e + x_ for e, x_ in zip(end, extra)]
    sums = _window_sum(_pad_spatial(np.abs(xc) ** p, begin, end_all, 0), kernel, out_shape,
                       strides, dilations)
    return [(sums ** (1.0 / p)).astype(x.dtype)]


@register("GlobalAveragePool")
def global_average_pool(inputs, attrs, num_outputs):
    x = np.asarray(inputs[0])
    axes = tuple(range(2, x.ndim))
    return [_compute(x).mean(axis=axes, keepdims=True).astype(x.dtype)]


@register("GlobalMaxPool")
def global_max_pool(inputs, attrs, num_outputs):
    x = np.asarray(inputs[0])
    axes = tuple(range(2, x.ndim))
    return [x.max(axis=axes, keepdims=True)]


@register("GlobalLpPool")
def global_lp_pool(inputs, attrs, num_outputs):
    x = np.asarray(inputs[0])
    p = attrs.get("p", 2)
    axes = tuple(range(2, x.ndim))
    y = (np.abs(_compute(x)) ** p).sum(axis=axes, keepdims=True) ** (1.0 / p)
    return [y.astype(x.dtype)]

