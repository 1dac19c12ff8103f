"""Reference neural-network ops: normalizations, Softmax family, recurrent layers (LSTM, GRU, RNN),
TopK, CumSum and Einsum.

Design: written as the equations of the ONNX spec, vectorized over the batch (recurrent layers loop
over time steps only). Statistics are computed in float32 for float16/float32 inputs and in float64
for float64 inputs; outputs keep the input dtype. Softmax takes ``coerce_2d=1`` for the pre-opset-13
semantics (flatten to 2-D at ``axis``, normalize the second dimension), which the importer sets.
"""
import math

import numpy as np

from .registry import register
from ..errors import UnsupportedOperatorError


def _compute(x):
    return x.astype(np.float32) if x.dtype == np.float16 else x


def _str(v):
    return v.decode() if isinstance(v, bytes) else v


def _channel_shape(x, c_axis=1):
    shape = [1] * x.ndim
    shape[c_axis] = x.shape[c_axis]
    return shape


# ----------------------------------------------------------------------------- normalizations
@register("BatchNormalization")
def batch_normalization(inputs, attrs, num_outputs):
    x, scale, bias, mean, var = (np.asarray(v) for v in inputs[:5])
    dtype = x.dtype
    eps = attrs.get("epsilon", 1e-5)
    xc = _compute(x)
    cdt = xc.dtype if xc.dtype.kind == "f" else np.float32
    shape = _channel_shape(x) if x.ndim > 1 else [-1]
    mean_c, var_c = mean.astype(cdt), var.astype(cdt)
    outs_extra = []
    if attrs.get("training_mode", 0):
        axes = tuple(a for a in range(x.ndim) if a != 1)
        batch_mean = xc.mean(axis=axes)
        batch_var = xc.var(axis=axes)
        momentum = attrs.get("momentum", 0.9)
        outs_extra = [(mean_c * momentum + batch_mean * (1 - momentum)).astype(mean.dtype),
                      (var_c * momentum + batch_var * (1 - momentum)).astype(var.dtype)]
        mean_c, var_c = batch_mean, batch_var
    inv = (scale.astype(cdt) / np.sqrt(var_c + np.asarray(eps, cdt))).reshape(shape)
    y = xc - mean_c.reshape(shape)     # the same operations in place: one temporary, not four
    y *= inv
    y += bias.astype(cdt).reshape(shape)
    return [y.astype(dtype, copy=False)] + outs_extra[:max(0, num_outputs - 1)]


@register("LayerNormalization")
def layer_normalization(inputs, attrs, num_outputs):
    x = np.asarray(inputs[0])
    scale = np.asarray(inputs[1])
    bias = inputs[2] if len(inputs) > 2 else None
    dtype = x.dtype
    axis = int(attrs.get("axis", -1))
    if axis < 0:
        axis += x.ndim
    eps = attrs.get("epsilon", 1e-5)
    stash = int(attrs.get("stash_type", 1))
    stash_dtype = {1: np.float32, 10: np.float16, 11: np.float64}.get(stash)
    if stash_dtype is None:
        raise UnsupportedOperatorError(f"LayerNormalization: stash_type={stash} is not supported")
    cdt = np.float64 if dtype == np.float64 else np.float32
    xc = x.astype(cdt)
    axes = tuple(range(axis, x.ndim))
    mean = xc.mean(axis=axes, keepdims=True)
    var = np.square(xc - mean).mean(axis=axes, keepdims=True)
    inv_std = 1.0 / np.sqrt(var + np.asarray(eps, cdt))
    y = (xc - mean) * inv_std * scale.astype(cdt)
    if bias is not None:
        y = y + np.asarray(bias).astype(cdt)
    outs = [y.astype(dtype), mean.astype(stash_dtype), inv_std.astype(stash_dtype)]
    return outs[:max(1, num_outputs)]


@register("InstanceNormalization")
def instance_normalization(inputs, attrs, num_outputs):
    x, scale, bias = (np.asarray(v) for v in inputs[:3])
    eps = attrs.get("epsilon", 1e-5)
    xc = _compute(x)
    axes = tuple(range(2, x.ndim))
    mean = xc.mean(axis=axes, keepdims=True)
    var = np.square(xc - mean).mean(axis=axes, keepdims=True)
    shape = _channel_shape(x)
    y = (xc - mean) / np.sqrt(var + np.asarray(eps, xc.dtype)) * _compute(scale).reshape(shape) \
        + _compute(bias).reshape(shape)
    return [y.astype(x.dtype)]


@register("GroupNormalization")
def group_normalization(inputs, attrs, num_outputs):
    x, scale, bias = (np.asarray(v) for v in inputs[:3])
    groups = int(attrs["num_groups"])
    eps = attrs.get("epsilon", 1e-5)
    n, c = x.shape[:2]
    xc = _compute(x)
    xg = xc.reshape((n, groups, -1))
    mean = xg.mean(axis=2, keepdims=True)
    var = np.square(xg - mean).mean(axis=2, keepdims=True)
    y = ((xg - mean) / np.sqrt(var + np.asarray(eps, xc.dtype))).reshape(x.shape)
    if scale.size == groups and groups != c:  # opset 18: one scale/bias per group
        scale, bias = np.repeat(scale, c // groups), np.repeat(bias, c // groups)
    shape = _channel_shape(x)
    y = y * _compute(scale).reshape(shape) + _compute(bias).reshape(shape)
    return [y.astype(x.dtype)]


@register("LpNormalization")
def lp_normalization(inputs, attrs, num_outputs):
    x = np.asarray(inputs[0])
    axis, p = int(attrs.get("axis", -1)), int(attrs.get("p", 2))
    xc = _compute(x)
    if p == 1:
        norm = np.abs(xc).sum(axis=axis, keepdims=True)
    elif p == 2:
        norm = np.sqrt(np.square(xc).sum(axis=axis, keepdims=True))
    else:
        raise UnsupportedOperatorError(f"LpNormalization: p={p} is not supported (1, 2)")
    with np.errstate(all="ignore"):
        y = np.where(norm == 0, 0, xc / norm)
    return [y.astype(x.dtype)]


# ----------------------------------------------------------------------------- softmax family
def _softmax_like(name, fn):
    def op(inputs, attrs, num_outputs):
        x = np.asarray(inputs[0])
        xc = _compute(x)
        with np.errstate(invalid="ignore", over="ignore"):
            y = _normalize_axis(xc, attrs, fn)
        return [y.astype(x.dtype)]
    op.__name__ = name.lower()
    register(name)(op)


def _normalize_axis(xc, attrs, fn):
    """``fn(x, axis)`` over the op's axis, or over the flattened trailing dims for coerce_2d."""
    if attrs.get("coerce_2d", 0):
        axis = int(attrs.get("axis", 1))
        if axis < 0:
            axis += xc.ndim
        flat = xc.reshape(math.prod(xc.shape[:axis]), -1)
        return fn(flat, 1).reshape(xc.shape)
    return fn(xc, int(attrs.get("axis", -1)))


# the reductions as ufunc.reduce (what np.max / np.sum call, without their Python wrapper: half
# the time of a classifier's two-class softmax)
def _softmax(x, axis):
    e = np.exp(x - np.maximum.reduce(x, axis=axis, keepdims=True))
    e /= np.add.reduce(e, axis=axis, keepdims=True)
    return e


def _log_softmax(x, axis):
    shifted = x - np.maximum.reduce(x, axis=axis, keepdims=True)
    return shifted - np.log(np.add.reduce(np.exp(shifted), axis=axis, keepdims=True))


def _hardmax(x, axis):
    idx = np.expand_dims(np.argmax(x, axis=axis), axis)
    y = np.zeros_like(x)
    np.put_along_axis(y, idx, 1, axis=axis)
    return y


_softmax_like("Softmax", _softmax)
_softmax_like("LogSoftmax", _log_softmax)
_softmax_like("Hardmax", _hardmax)


# ----------------------------------------------------------------------------- recurrent layers
def _sigmoid(v):
    e = np.exp(-np.abs(v))  # split by sign so that exp never overflows
    return np.where(v >= 0, 1 / (1 + e), e / (1 + e))


def _activation(op, name, alpha, beta):
    """The recurrent activation ``name`` as a numpy function, with its alpha/beta."""
    name = _str(name)
    key = name.lower()
    if key == "sigmoid":
        return _sigmoid
    if key == "tanh":
        return np.tanh
    if key == "relu":
        return lambda v: np.maximum(v, 0)
    if key == "affine":
        return lambda v: alpha * v + beta
    if key == "leakyrelu":
        return lambda v: np.where(v >= 0, v, alpha * v)
    if key == "thresholdedrelu":
        return lambda v: np.where(v > alpha, v, 0)
    if key == "scaledtanh":
        return lambda v: alpha * np.tanh(beta * v)
    if key == "hardsigmoid":
        return lambda v: np.clip(alpha * v + beta, 0, 1)
    if key == "elu":
        return lambda v: np.where(v >= 0, v, alpha * (np.exp(v) - 1))
    if key == "softsign":
        return lambda v: v / (1 + np.abs(v))
    if key == "softplus":
        return lambda v: np.log1p(np.exp(v))
    raise UnsupportedOperatorError(f"{op}: activation {name!r} is not supported")


#: default (alpha, beta) of the activations that take them, and how many they consume
_ACT_PARAMS = {"affine": (1.0, 0.0, 2), "leakyrelu": (0.01, None, 1), "thresholdedrelu": (1.0, None, 1),
               "scaledtanh": (1.0, 1.0, 2), "hardsigmoid": (0.2, 0.5, 2), "elu": (1.0, None, 1)}


def _activations(op, attrs, defaults, num_dirs):
    """One list of activation functions per direction (alpha/beta consumed in order of use)."""
    names = [_str(a) for a in (attrs.get("activations") or defaults * num_dirs)]
    if len(names) != len(defaults) * num_dirs:
        raise UnsupportedOperatorError(
            f"{op}: activations {names} must list {len(defaults)} functions per direction")
    alphas = list(attrs.get("activation_alpha") or [])
    betas = list(attrs.get("activation_beta") or [])
    funcs = []
    for name in names:
        alpha, beta, used = _ACT_PARAMS.get(name.lower(), (None, None, 0))
        if used >= 1 and alphas:
            alpha = alphas.pop(0)
        if used >= 2 and betas:
            beta = betas.pop(0)
        funcs.append(_activation(op, name, alpha, beta))
    k = len(defaults)
    return [funcs[d * k:(d + 1) * k] for d in range(num_dirs)]


def _recurrent(op, inputs, attrs, num_outputs, gates, defaults, step, with_cell):
    """Shared driver of LSTM/GRU/RNN: layout, directions, sequence_lens and output assembly.

    ``step(d, xw_t, h, c, acts, r_t, rb) -> (h, c)`` computes one time step of direction ``d`` for
    every batch row: ``xw_t`` is X_t W^T + Wb, ``r_t`` is R^T (hidden x gates*hidden), ``rb`` is Rb.
    """
    x = np.asarray(inputs[0])
    dtype = x.dtype
    cdt = np.float64 if dtype == np.float64 else np.float32

    def opt(i):
        return np.asarray(inputs[i]) if len(inputs) > i and inputs[i] is not None else None

    w, r, b, seq_lens = np.asarray(inputs[1]).astype(cdt), np.asarray(inputs[2]).astype(cdt), opt(3), opt(4)
    h0 = opt(5)
    c0 = opt(6) if with_cell else None
    layout = int(attrs.get("layout", 0))
    if layout == 1:
        x = np.swapaxes(x, 0, 1)
        h0 = None if h0 is None else np.swapaxes(h0, 0, 1)
        c0 = None if c0 is None else np.swapaxes(c0, 0, 1)
    x = x.astype(cdt)
    seq, batch = x.shape[:2]
    direction = _str(attrs.get("direction", "forward"))
    if direction not in ("forward", "reverse", "bidirectional"):
        raise UnsupportedOperatorError(f"{op}: direction={direction!r} is not supported")
    num_dirs = 2 if direction == "bidirectional" else 1
    hidden = w.shape[1] // gates
    if b is None:
        b = np.zeros((num_dirs, 2 * gates * hidden), dtype=cdt)
    b = b.astype(cdt)
    lens = (np.full(batch, seq, dtype=np.int64) if seq_lens is None
            else np.asarray(seq_lens).astype(np.int64).reshape(batch))
    acts = _activations(op, attrs, defaults, num_dirs)

    y = np.zeros((seq, num_dirs, batch, hidden), dtype=cdt)
    y_h = np.zeros((num_dirs, batch, hidden), dtype=cdt)
    y_c = np.zeros((num_dirs, batch, hidden), dtype=cdt)
    t_idx = np.arange(seq)[:, None]
    valid = t_idx < lens[None, :]  # (seq, batch)
    for d in range(num_dirs):
        reverse = direction == "reverse" or d == 1
        # per batch row, the time order this direction visits (reverse: len-1 ... 0, then padding)
        order = np.where(valid, lens[None, :] - 1 - t_idx, t_idx) if reverse else np.broadcast_to(
            t_idx, (seq, batch))
        xs = np.take_along_axis(x, order[:, :, None], axis=0)
        # input projection for every step at once, as one 2-D matmul
        xw = (xs.reshape(seq * batch, -1) @ w[d].T).reshape(seq, batch, -1) + b[d, :gates * hidden]
        r_t = np.ascontiguousarray(r[d].T)  # (H, gates*H), so each step is h @ r_t
        h = (np.zeros((batch, hidden), cdt) if h0 is None else h0[d].astype(cdt))
        c = (np.zeros((batch, hidden), cdt) if c0 is None else c0[d].astype(cdt))
        for t in range(seq):
            h_new, c_new = step(d, xw[t], h, c, acts[d], r_t, b[d, gates * hidden:])
            m = valid[t][:, None]
            h = np.where(m, h_new, h)
            c = np.where(m, c_new, c) if with_cell else c
            y[order[t], d, np.arange(batch)] = np.where(m, h_new, 0)
        y_h[d], y_c[d] = h, c
    if layout == 1:
        outs = [np.transpose(y, (2, 0, 1, 3)), np.swapaxes(y_h, 0, 1), np.swapaxes(y_c, 0, 1)]
    else:
        outs = [y, y_h, y_c]
    outs = [np.ascontiguousarray(o).astype(dtype) for o in outs[:3 if with_cell else 2]]
    return outs[:max(1, num_outputs)]


@register("LSTM")
def lstm(inputs, attrs, num_outputs):
    p = inputs[7] if len(inputs) > 7 and inputs[7] is not None else None
    clip = attrs.get("clip")
    input_forget = int(attrs.get("input_forget", 0))

    def step(d, xw, h, c, acts, r_t, rb):
        f_act, g_act, h_act = acts
        hidden = h.shape[1]
        z = xw + h @ r_t + rb
        if clip is not None:
            z = np.clip(z, -clip, clip)
        zi, zo, zf, zc = (z[:, k * hidden:(k + 1) * hidden] for k in range(4))
        if p is not None:
            pd = np.asarray(p)[d].astype(z.dtype)
            pi, po, pf = pd[:hidden], pd[hidden:2 * hidden], pd[2 * hidden:]
            zi = zi + pi * c
            zf = zf + pf * c
        i = f_act(zi)
        f = 1 - i if input_forget else f_act(zf)
        c_new = f * c + i * g_act(zc)
        if p is not None:
            zo = zo + po * c_new
        o = f_act(zo)
        return o * h_act(c_new), c_new

    return _recurrent("LSTM", inputs, attrs, num_outputs, 4, ["Sigmoid", "Tanh", "Tanh"], step, True)


@register("GRU")
def gru(inputs, attrs, num_outputs):
    clip = attrs.get("clip")
    before_reset = int(attrs.get("linear_before_reset", 0))

    def step(d, xw, h, c, acts, r_t, rb):
        f_act, g_act = acts
        hidden = h.shape[1]
        xz, xr, xh = (xw[:, k * hidden:(k + 1) * hidden] for k in range(3))
        rz, rr, rh = (r_t[:, k * hidden:(k + 1) * hidden] for k in range(3))
        bz, br, bh = (rb[k * hidden:(k + 1) * hidden] for k in range(3))
        lim = (lambda v: np.clip(v, -clip, clip)) if clip is not None else (lambda v: v)
        z = f_act(lim(xz + h @ rz + bz))
        rg = f_act(lim(xr + h @ rr + br))
        if before_reset:
            ht = g_act(lim(xh + rg * (h @ rh + bh)))
        else:
            ht = g_act(lim(xh + (rg * h) @ rh + bh))
        return (1 - z) * ht + z * h, c

    return _recurrent("GRU", inputs, attrs, num_outputs, 3, ["Sigmoid", "Tanh"], step, False)


@register("RNN")
def rnn(inputs, attrs, num_outputs):
    clip = attrs.get("clip")

    def step(d, xw, h, c, acts, r_t, rb):
        z = xw + h @ r_t + rb
        if clip is not None:
            z = np.clip(z, -clip, clip)
        return acts[0](z), c

    return _recurrent("RNN", inputs, attrs, num_outputs, 1, ["Tanh"], step, False)


# ----------------------------------------------------------------------------- misc
@register("TopK")
def topk(inputs, attrs, num_outputs):
    x = np.asarray(inputs[0])
    k = int(np.asarray(inputs[1]).reshape(-1)[0]) if len(inputs) > 1 else int(attrs["k"])
    axis = int(attrs.get("axis", -1))
    if axis < 0:
        axis += x.ndim
    dim = x.shape[axis]
    if attrs.get("largest", 1):
        # descending with ties broken by the lower index: stable sort of the flipped axis, reversed
        flipped = np.flip(x, axis=axis)
        order = np.flip(np.argsort(flipped, axis=axis, kind="stable"), axis=axis)
        idx = dim - 1 - order
    else:
        idx = np.argsort(x, axis=axis, kind="stable")
    idx = np.take(idx, np.arange(k), axis=axis).astype(np.int64)
    return [np.take_along_axis(x, idx, axis=axis), idx]


@register("CumSum")
def cumsum(inputs, attrs, num_outputs):
    x = np.asarray(inputs[0])
    axis = int(np.asarray(inputs[1]).reshape(-1)[0])
    if axis < 0:
        axis += x.ndim
    xc = _compute(x)
    if attrs.get("reverse", 0):
        xc = np.flip(xc, axis=axis)
    y = np.cumsum(xc, axis=axis, dtype=xc.dtype)
    if attrs.get("exclusive", 0):
        y = np.concatenate([np.zeros_like(np.take(y, [0], axis=axis)),
                            np.take(y, np.arange(x.shape[axis] - 1), axis=axis)], axis=axis)
    if attrs.get("reverse", 0):
        y = np.flip(y, axis=axis)
    return [np.ascontiguousarray(y).astype(x.dtype)]


@register("Einsum")
def einsum(inputs, attrs, num_outputs):
    eq = _str(attrs["equation"]).replace(" ", "")
    xs = [np.asarray(v) for v in inputs]
    y = np.einsum(eq, *[_compute(v) for v in xs], optimize=len(xs) > 2)
    return [np.asarray(y).astype(xs[0].dtype)]
