"""Reference data-movement and shape ops: Shape, Size, Reshape, Transpose, Squeeze, Unsqueeze,
Flatten, Concat, Split, Slice, Gather*, Scatter*, Expand, Tile, Pad, Resize, DepthToSpace,
SpaceToDepth, Trilu, OneHot, NonZero.

Design: these ops never do arithmetic (Resize aside), so they are exact in every dtype. Arguments
that moved from attributes to inputs across opsets (axes, split, pads, starts/ends...) are taken
from the input when present and from the attribute otherwise. Resize is separable: it resamples one
axis at a time with a small table of (input index, weight) taps per output index, which covers
nearest, linear, cubic, exclude_outside and antialias with the same code (as ONNX's reference does).
"""
import math

import numpy as np

from .registry import register
from ..errors import InvalidInputError, UnsupportedOperatorError


def _str(v):
    return v.decode() if isinstance(v, bytes) else v


def _ints(v):
    """An int list from an input tensor or attribute (None stays None)."""
    if v is None:
        return None
    return [int(i) for i in np.asarray(v).reshape(-1)]


def _arg(inputs, i, attrs=None, name=None):
    """Optional input ``i``; falls back to attribute ``name`` (older opsets)."""
    if len(inputs) > i and inputs[i] is not None:
        return inputs[i]
    if attrs is not None and name is not None:
        return attrs.get(name)
    return None


def _axis(a, rank, op="op"):
    a = int(a)
    if not -rank <= a < max(rank, 1):
        raise UnsupportedOperatorError(f"{op}: axis {a} out of range for rank {rank}")
    return a + rank if a < 0 else a


# ----------------------------------------------------------------------------- shapes
@register("Shape")
def shape(inputs, attrs, num_outputs):
    dims = np.asarray(inputs[0]).shape
    r = len(dims)
    start = int(attrs.get("start", 0))
    end = attrs.get("end")
    end = r if end is None else int(end)
    start = min(max(start + r if start < 0 else start, 0), r)
    end = min(max(end + r if end < 0 else end, 0), r)
    return [np.array(dims[start:end], dtype=np.int64)]


@register("Size")
def size(inputs, attrs, num_outputs):
    return [np.array(np.asarray(inputs[0]).size, dtype=np.int64)]


def reshape_target(shape, target, allowzero):
    """Reshape's target for an input of ``shape``: a 0 copies the input's dimension unless
    ``allowzero`` (a 0 past the input's rank raises IndexError)"""
    if allowzero or 0 not in target:
        return target
    return [shape[i] if d == 0 else d for i, d in enumerate(target)]


@register("Reshape")
def reshape(inputs, attrs, num_outputs):
    x = np.asarray(inputs[0])
    target = _ints(_arg(inputs, 1, attrs, "shape"))
    return [x.reshape(reshape_target(x.shape, target, attrs.get("allowzero", 0)))]


@register("Flatten")
def flatten(inputs, attrs, num_outputs):
    x = np.asarray(inputs[0])
    axis = int(attrs.get("axis", 1))
    if axis < 0:
        axis += x.ndim
    # math.prod of the shape's ints: exact, and ~50x cheaper than np.prod on a tuple (a
    # Flatten before a classifier's Gemm is on every run's path)
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


@register("Transpose")
def transpose(inputs, attrs, num_outputs):
    x = np.asarray(inputs[0])
    perm = attrs.get("perm")
    perm = list(reversed(range(x.ndim))) if perm is None else list(perm)
    return [np.ascontiguousarray(np.transpose(x, perm))]


@register("Squeeze")
def squeeze(inputs, attrs, num_outputs):
    x = np.asarray(inputs[0])
    axes = _ints(_arg(inputs, 1, attrs, "axes"))
    if axes is None:
        return [x.reshape([d for d in x.shape if d != 1])]
    axes = tuple(_axis(a, x.ndim, "Squeeze") for a in axes)
    return [np.squeeze(x, axis=axes)]


@register("Unsqueeze")
def unsqueeze(inputs, attrs, num_outputs):
    x = np.asarray(inputs[0])
    axes = _ints(_arg(inputs, 1, attrs, "axes"))
    rank = x.ndim + len(axes)
    axes = sorted(_axis(a, rank, "Unsqueeze") for a in axes)
    shape = list(x.shape)
    for a in axes:
        shape.insert(a, 1)
    return [x.reshape(shape)]


@register("Concat")
def concat(inputs, attrs, num_outputs):
    xs = [np.asarray(x) for x in inputs if x is not None]
    axis = _axis(attrs.get("axis", 0), xs[0].ndim, "Concat")
    return [np.concatenate(xs, axis=axis)]


@register("Split")
def split(inputs, attrs, num_outputs):
    x = np.asarray(inputs[0])
    axis = _axis(attrs.get("axis", 0), x.ndim, "Split")
    sizes = _ints(_arg(inputs, 1, attrs, "split"))
    dim = x.shape[axis]
    if sizes is None:
        n = int(attrs.get("num_outputs", num_outputs))
        chunk = -(-dim // n)  # ceil: the last chunk is the smaller one
        sizes = [chunk] * (n - 1) + [dim - chunk * (n - 1)]
    if sum(sizes) != dim or any(s < 0 for s in sizes):
        raise UnsupportedOperatorError(f"Split: split sizes {sizes} do not add up to dim {dim}")
    bounds = np.cumsum([0] + sizes)
    return [np.take(x, np.arange(bounds[i], bounds[i + 1]), axis=axis) for i in range(len(sizes))]


@register("Slice")
def slice_(inputs, attrs, num_outputs):
    x = np.asarray(inputs[0])
    starts = _ints(_arg(inputs, 1, attrs, "starts"))
    ends = _ints(_arg(inputs, 2, attrs, "ends"))
    axes = _ints(_arg(inputs, 3, attrs, "axes"))
    steps = _ints(_arg(inputs, 4))
    if axes is None:
        axes = list(range(len(starts)))
    if steps is None:
        steps = [1] * len(starts)
    index = [slice(None)] * x.ndim
    for start, end, a, step in zip(starts, ends, axes, steps):
        a = _axis(a, x.ndim, "Slice")
        dim = x.shape[a]
        if step == 0:
            raise UnsupportedOperatorError("Slice: steps must not be 0")
        if start < 0:
            start += dim
        if end < 0:
            end += dim
        if step > 0:
            start = min(max(start, 0), dim)
            end = min(max(end, 0), dim)
            index[a] = slice(start, end, step)
        else:
            if dim == 0:
                index[a] = slice(0, 0)
                continue
            start = min(max(start, 0), dim - 1)
            end = min(max(end, -1), dim - 1)
            # end == -1 means "through index 0", which a Python slice spells None
            index[a] = slice(start, None if end < 0 else end, step)
    return [np.array(x[tuple(index)])]


# ----------------------------------------------------------------------------- gather / scatter
def _fix_indices(idx, dim):
    idx = np.asarray(idx).astype(np.int64)
    idx = np.where(idx < 0, idx + dim, idx)
    if idx.size and (idx.min() < 0 or idx.max() >= dim):
        raise IndexError(f"index out of range [-{dim}, {dim - 1}]")
    return idx


@register("Gather")
def gather(inputs, attrs, num_outputs):
    x = np.asarray(inputs[0])
    axis = _axis(attrs.get("axis", 0), x.ndim, "Gather")
    return [np.take(x, _fix_indices(inputs[1], x.shape[axis]), axis=axis)]


@register("GatherElements")
def gather_elements(inputs, attrs, num_outputs):
    x = np.asarray(inputs[0])
    axis = _axis(attrs.get("axis", 0), x.ndim, "GatherElements")
    return [np.take_along_axis(x, _fix_indices(inputs[1], x.shape[axis]), axis=axis)]


@register("GatherND")
def gather_nd(inputs, attrs, num_outputs):
    x, idx = np.asarray(inputs[0]), np.asarray(inputs[1]).astype(np.int64)
    b = int(attrs.get("batch_dims", 0))
    k = idx.shape[-1]
    batch = x.shape[:b]
    nb = math.prod(batch)
    xb = x.reshape((nb,) + x.shape[b:])
    ib = idx.reshape((nb, -1, k))
    dims = np.array(x.shape[b:b + k])
    ib = np.where(ib < 0, ib + dims, ib)
    out = np.stack([xb[i][tuple(ib[i].T)] for i in range(nb)]) if nb else np.empty(0, x.dtype)
    return [out.reshape(idx.shape[:-1] + x.shape[b + k:])]


def _reduce_into(data, where, updates, reduction):
    if reduction == "none":
        data[where] = updates
    elif reduction == "add":
        np.add.at(data, where, updates)
    elif reduction == "mul":
        np.multiply.at(data, where, updates)
    elif reduction == "max":
        np.maximum.at(data, where, updates)
    elif reduction == "min":
        np.minimum.at(data, where, updates)
    else:
        raise UnsupportedOperatorError(f"Scatter: reduction={reduction!r} is not supported")


@register("ScatterND")
def scatter_nd(inputs, attrs, num_outputs):
    data = np.array(inputs[0])
    idx, updates = np.asarray(inputs[1]).astype(np.int64), np.asarray(inputs[2])
    k = idx.shape[-1]
    idx = idx.reshape(-1, k)
    idx = np.where(idx < 0, idx + np.array(data.shape[:k]), idx)
    updates = updates.reshape((idx.shape[0],) + data.shape[k:])
    reduction = _str(attrs.get("reduction", "none"))
    if reduction == "none":
        for i in range(idx.shape[0]):
            data[tuple(idx[i])] = updates[i]
    else:
        _reduce_into(data, tuple(idx.T), updates, reduction)
    return [data]


@register("ScatterElements", "Scatter")
def scatter_elements(inputs, attrs, num_outputs):
    data = np.array(inputs[0])
    axis = _axis(attrs.get("axis", 0), data.ndim, "ScatterElements")
    idx = _fix_indices(inputs[1], data.shape[axis])
    updates = np.asarray(inputs[2])
    where = list(np.indices(idx.shape, sparse=True))
    where[axis] = idx
    _reduce_into(data, tuple(where), updates, _str(attrs.get("reduction", "none")))
    return [data]


@register("NonZero")
def nonzero(inputs, attrs, num_outputs):
    x = np.asarray(inputs[0])
    if x.ndim == 0:
        return [np.zeros((0, int(x != 0)), dtype=np.int64)]
    return [np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)]


# ----------------------------------------------------------------------------- broadcast, tile, pad
_MAX_BROADCAST_RANK = 32
@register("Expand")
def expand(inputs, attrs, num_outputs):
    x = np.asarray(inputs[0])
    shape = tuple(_ints(inputs[1]))
    if len(shape) > _MAX_BROADCAST_RANK:   # numpy's broadcasting raises RuntimeError beyond it
        raise ValueError(f"Expand: target shape of rank {len(shape)}, more than "
                         f"{_MAX_BROADCAST_RANK}")
    target = np.broadcast_shapes(x.shape, shape)
    return [np.array(np.broadcast_to(x, target))]


@register("Tile")
def tile(inputs, attrs, num_outputs):
    return [np.tile(np.asarray(inputs[0]), _ints(inputs[1]))]


@register("Pad")
def pad(inputs, attrs, num_outputs):
    x = np.asarray(inputs[0])
    pads = _ints(_arg(inputs, 1, attrs, "pads"))
    value = _arg(inputs, 2)
    if value is None:
        value = attrs.get("value", 0)
    value = np.asarray(value).reshape(-1)[0] if np.asarray(value).size else 0
    axes = _ints(_arg(inputs, 3))
    mode = _str(attrs.get("mode", "constant"))
    r = x.ndim
    axes = list(range(r)) if axes is None else [_axis(a, r, "Pad") for a in axes]
    n = len(axes)
    begin, end = [0] * r, [0] * r
    for i, a in enumerate(axes):
        begin[a], end[a] = pads[i], pads[n + i]
    # negative pads crop
    crop = tuple(slice(max(0, -b), x.shape[i] - max(0, -e)) for i, (b, e) in enumerate(zip(begin, end)))
    x = x[crop]
    width = [(max(0, b), max(0, e)) for b, e in zip(begin, end)]
    if mode == "constant":
        return [np.pad(x, width, mode="constant", constant_values=np.asarray(value).astype(x.dtype))]
    if mode in ("reflect", "edge", "wrap"):
        return [np.pad(x, width, mode=mode)]
    raise UnsupportedOperatorError(f"Pad: mode={mode!r} is not supported (constant, reflect, edge, wrap)")


# ----------------------------------------------------------------------------- depth / space
@register("DepthToSpace")
def depth_to_space(inputs, attrs, num_outputs):
    x = np.asarray(inputs[0])
    bs = int(attrs["blocksize"])
    mode = _str(attrs.get("mode", "DCR"))
    b, c, h, w = x.shape
    if mode == "DCR":
        t = x.reshape(b, bs, bs, c // (bs * bs), h, w).transpose(0, 3, 4, 1, 5, 2)
    elif mode == "CRD":
        t = x.reshape(b, c // (bs * bs), bs, bs, h, w).transpose(0, 1, 4, 2, 5, 3)
    else:
        raise UnsupportedOperatorError(f"DepthToSpace: mode={mode!r} is not supported (DCR, CRD)")
    return [t.reshape(b, c // (bs * bs), h * bs, w * bs)]


@register("SpaceToDepth")
def space_to_depth(inputs, attrs, num_outputs):
    x = np.asarray(inputs[0])
    bs = int(attrs["blocksize"])
    mode = _str(attrs.get("mode", "DCR"))
    b, c, h, w = x.shape
    t = x.reshape(b, c, h // bs, bs, w // bs, bs)
    if mode == "DCR":
        t = t.transpose(0, 3, 5, 1, 2, 4)
    elif mode == "CRD":
        t = t.transpose(0, 1, 3, 5, 2, 4)
    else:
        raise UnsupportedOperatorError(f"SpaceToDepth: mode={mode!r} is not supported (DCR, CRD)")
    return [t.reshape(b, c * bs * bs, h // bs, w // bs)]


@register("Trilu")
def trilu(inputs, attrs, num_outputs):
    x = np.asarray(inputs[0])
    if x.ndim < 2:
        raise InvalidInputError(f"Trilu: the input must have rank >= 2, got shape {list(x.shape)}")
    k = int(np.asarray(inputs[1]).reshape(-1)[0]) if len(inputs) > 1 and inputs[1] is not None else 0
    if attrs.get("upper", 1):
        return [np.triu(x, k)]
    return [np.tril(x, k)]


@register("OneHot")
def one_hot(inputs, attrs, num_outputs):
    idx = np.asarray(inputs[0])
    depth = int(np.asarray(inputs[1]).reshape(-1)[0])
    values = np.asarray(inputs[2])
    r = idx.ndim + 1
    axis = _axis(attrs.get("axis", -1), r, "OneHot")
    idx = np.asarray(idx).astype(np.int64)
    idx = np.where(idx < 0, idx + depth, idx)
    hot = np.arange(depth).reshape((-1,) + (1,) * (r - 1 - axis)) == np.expand_dims(idx, axis)
    return [np.where(hot, values[1], values[0]).astype(values.dtype)]


# ----------------------------------------------------------------------------- Resize
def _source_coords(mode, out_len, in_len, scale, roi):
    """x_original for every output index along one axis (float64), and the out-of-roi mask."""
    y = np.arange(out_len, dtype=np.float64)
    out_w = scale * in_len  # fractional when it comes from a scale
    extrap = None
    if mode == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif mode == "half_pixel_symmetric":
        adjustment = out_len / out_w
        offset = in_len / 2 * (1 - adjustment)
        x = offset + (y + 0.5) / scale - 0.5
    elif mode == "pytorch_half_pixel":
        x = (y + 0.5) / scale - 0.5 if out_len > 1 else np.zeros(out_len)
    elif mode == "align_corners":
        x = y * (in_len - 1) / (out_w - 1) if out_w != 1 else np.zeros(out_len)
    elif mode == "asymmetric":
        x = y / scale
    elif mode == "tf_crop_and_resize":
        start, end = roi
        if out_w == 1:
            x = np.full(out_len, (end - start) * (in_len - 1) / 2)
        else:
            x = y * (end - start) * (in_len - 1) / (out_w - 1)
        x = x + start * (in_len - 1)
        extrap = (x < 0) | (x > in_len - 1)
    else:
        raise UnsupportedOperatorError(
            f"Resize: coordinate_transformation_mode={mode!r} is not supported")
    return x, extrap


def _cubic_kernel(t, a):
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _taps(x, in_len, scale, attrs):
    """(indices, weights) of shape (out_len, taps) for source coordinates ``x``."""
    mode = _str(attrs.get("mode", "nearest"))
    if mode == "nearest":
        nearest = _str(attrs.get("nearest_mode", "round_prefer_floor"))
        if nearest == "round_prefer_floor":
            idx = np.ceil(x - 0.5)
        elif nearest == "round_prefer_ceil":
            idx = np.floor(x + 0.5)
        elif nearest == "floor":
            idx = np.floor(x)
        elif nearest == "ceil":
            idx = np.ceil(x)
        else:
            raise UnsupportedOperatorError(f"Resize: nearest_mode={nearest!r} is not supported")
        idx = np.clip(idx.astype(np.int64), 0, in_len - 1)
        return idx[:, None], np.ones((len(x), 1))
    if mode == "linear":
        radius = 1
        a = None
    elif mode == "cubic":
        radius = 2
        a = float(attrs.get("cubic_coeff_a", -0.75))
    else:
        raise UnsupportedOperatorError(f"Resize: mode={mode!r} is not supported (nearest, linear, cubic)")
    antialias = int(attrs.get("antialias", 0)) and scale < 1
    s = scale if antialias else 1.0  # antialias stretches the filter by 1/scale when downscaling
    start = int(math.floor(-radius / s)) + 1
    n = 2 - 2 * start
    x0 = np.floor(x)
    ratio = x - x0
    j = np.arange(start, start + n, dtype=np.float64)
    dist = (j[None, :] - ratio[:, None]) * s
    if mode == "linear":
        w = np.clip(1 - np.abs(dist), 0, 1)
    else:
        w = _cubic_kernel(dist, a)
    if antialias:
        w = w / w.sum(axis=1, keepdims=True)
    idx = x0.astype(np.int64)[:, None] + j.astype(np.int64)[None, :]
    if int(attrs.get("exclude_outside", 0)):
        w = np.where((idx < 0) | (idx >= in_len), 0.0, w)
        total = w.sum(axis=1, keepdims=True)
        w = w / np.where(total == 0, 1.0, total)
    return np.clip(idx, 0, in_len - 1), w


def replicate_hw(a, fy, fx):
    """``a [B, H, W]`` (any dtype, void items included) up-sampled by whole factors, each element
    copied into an fy x fx block: [B, H * fy, W * fx]. Each row is repeated along its length once,
    then whole rows are broadcast fy times (the nearest Resize's replication; far fewer, longer
    copies than an element-level broadcast over five axes)."""
    b, h, w = a.shape
    rows = np.repeat(a, fx, axis=2) if fx > 1 else a
    y = np.empty((b, h, fy, w * fx), a.dtype)
    y[...] = rows[:, :, None, :]
    return y.reshape(b, h * fy, w * fx)


@register("Resize")
def resize(inputs, attrs, num_outputs):
    x = np.asarray(inputs[0])
    r = x.ndim

    def opt(i):
        v = inputs[i] if len(inputs) > i else None
        return None if v is None or np.asarray(v).size == 0 else np.asarray(v)

    roi, scales, sizes = opt(1), opt(2), opt(3)
    axes = attrs.get("axes")
    axes = list(range(r)) if axes is None else [_axis(a, r, "Resize") for a in axes]
    ctm = _str(attrs.get("coordinate_transformation_mode", "half_pixel"))
    mode = _str(attrs.get("mode", "nearest"))
    if mode == "nearest" and int(attrs.get("antialias", 0)):
        raise UnsupportedOperatorError("Resize: antialias=1 is not supported with mode='nearest'")
    if scales is None and sizes is None:
        raise UnsupportedOperatorError("Resize: one of scales or sizes must be given")

    scale = {a: 1.0 for a in range(r)}
    out = {a: x.shape[a] for a in range(r)}
    if sizes is not None:
        sizes = [int(v) for v in sizes.reshape(-1)]
        for a, s in zip(axes, sizes):
            if x.shape[a] == 0 and s != 0:
                raise InvalidInputError(f"Resize: axis {a} of the input is empty and cannot be "
                                        f"resized to {s}")
            scale[a] = s / x.shape[a] if x.shape[a] else 1.0
            out[a] = s
        policy = _str(attrs.get("keep_aspect_ratio_policy", "stretch"))
        if policy in ("not_larger", "not_smaller"):
            pick = min if policy == "not_larger" else max
            common = pick(scale[a] for a in axes)
            for a in axes:
                scale[a] = common
                out[a] = int(common * x.shape[a] + 0.5)  # round half up
        elif policy != "stretch":
            raise UnsupportedOperatorError(f"Resize: keep_aspect_ratio_policy={policy!r} is not supported")
    else:
        for a, s in zip(axes, scales.reshape(-1).tolist()):
            scale[a] = float(s)
            out[a] = int(math.floor(float(s) * x.shape[a]))
    roi_of = {a: (0.0, 1.0) for a in range(r)}
    if roi is not None and ctm == "tf_crop_and_resize":
        roi = roi.reshape(-1).astype(np.float64)
        for i, a in enumerate(axes):
            roi_of[a] = (roi[i], roi[len(axes) + i])

    dtype = x.dtype
    if mode == "nearest":
        y = x
    else:
        y = x.astype(np.float32 if dtype in (np.float16, np.float32) else np.float64)
    extrapolation = float(attrs.get("extrapolation_value", 0.0))
    for a in axes:
        trivial_roi = roi_of[a] == (0.0, 1.0) or ctm != "tf_crop_and_resize"
        if out[a] == y.shape[a] and math.isclose(scale[a], 1.0) and trivial_roi:
            continue
        coords, extrap = _source_coords(ctm, out[a], y.shape[a], scale[a], roi_of[a])
        idx, w = _taps(coords, y.shape[a], scale[a], attrs)
        if mode == "nearest":
            y = np.take(y, idx[:, 0], axis=a)
        else:
            # sum over taps of (input rows at the tap's index) * (the tap's weight per output row)
            wshape = (1,) * a + (out[a],) + (1,) * (y.ndim - a - 1)
            acc = None
            for k in range(idx.shape[1]):
                term = np.take(y, idx[:, k], axis=a) * w[:, k].astype(y.dtype).reshape(wshape)
                acc = term if acc is None else acc + term
            y = acc
        if extrap is not None and extrap.any():
            mshape = (1,) * a + (out[a],) + (1,) * (y.ndim - a - 1)
            y = np.where(extrap.reshape(mshape), np.asarray(extrapolation, y.dtype), y)
    if y.dtype != dtype:
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            y = np.clip(np.round(y), info.min, info.max)
        y = y.astype(dtype)
    return [np.ascontiguousarray(y)]
