"""Fast float32 implementations of the heavy ops (Conv, ConvTranspose, Gemm, MatMul) and of the
row ops of transformers (Erf -- GELU's --, LayerNormalization, Softmax), for the planner.

Design: NCHW float32, every heavy op on qinfer's own OpenMP kernels (one thread pool: mixing
OpenBLAS's pool with OpenMP's made two threads slower than one on small machines, and BLAS results
change with its thread count, while ours are bit-identical for any count). Constant weights are
packed once, when the plan is built. A conv is one GEMM per (image, group) with the im2col matrix
gathered band by band inside the kernel; depthwise convs run on the channel-vectorized kernel; the
bias and a fused activation are applied while the output tile is in registers.

``make_*`` return ``None`` when a node is outside what these paths cover (3-D convs, float16/64,
ConvTranspose with output_shape, ...): the planner then runs the reference op. A returned function
may also return ``None`` at run time (e.g. an input of another dtype) with the same effect.

An activation is ``(code, a, b)``: 0 none, 1 relu, 2 clip(a, b), 3 hardswish, 4 sigmoid,
5 hardsigmoid(alpha=a, beta=b) -- the codes of the C epilogue.
"""

import math

import numpy as np

from .cpu import _kernels as _k
from ..reference.reduce import REDUCERS
from ..reference.shape import replicate_hw, reshape_target
from ..errors import QinferError

#: at most this many rows, a dense layer runs as a single-threaded BLAS matrix-vector product
SMALL_M = 4

ACT_NONE, ACT_RELU, ACT_CLIP, ACT_HARDSWISH, ACT_SIGMOID, ACT_HARDSIGMOID = range(6)
NO_ACT = (ACT_NONE, 0.0, 0.0)


def is_float32(graph, node):
    """True when ``node``'s weight is a float32 constant (the only case the fast paths take)."""
    w = graph.initializers.get(node.inputs[1]) if len(node.inputs) > 1 else None
    return w is not None and w.dtype == np.float32


def _conv_geometry(attrs, kshape, in_spatial):
    nd = len(kshape)
    strides = list(attrs.get("strides", [1] * nd))
    dil = list(attrs.get("dilations", [1] * nd))
    pads = list(attrs.get("pads", [0] * (2 * nd)))
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * nd)
        for i in range(nd):
            out = -(-in_spatial[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + dil[i] * (kshape[i] - 1) + 1 - in_spatial[i])
            lo = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            pads[i], pads[i + nd] = lo, total - lo
    elif auto_pad == "VALID":
        pads = [0] * (2 * nd)
    return strides, dil, pads


def _as_2d_attrs(attrs):
    """1-D conv attributes as those of a 2-D conv over a height-1 image."""
    a = dict(attrs)
    for k in ("strides", "dilations", "kernel_shape"):
        if k in a:
            a[k] = [1] + list(a[k])
    if "pads" in a:
        p = list(a["pads"])
        a["pads"] = [0, p[0], 0, p[1]]
    return a


def make_conv(attrs, w, b, act, nt, post=(None, None)):
    """A fast Conv for float32 1-D/2-D convs with constant weights, or None. ``post``: (scale,
    shift), scalars or None, applied after the activation in the kernel's epilogue."""
    if w is None or w.dtype != np.float32 or w.ndim not in (3, 4):
        return None
    if b is not None and (b.dtype != np.float32 or b.shape != (w.shape[0],)):
        return None
    one_d = w.ndim == 3
    kattrs = _as_2d_attrs(attrs) if one_d else attrs
    w4 = np.ascontiguousarray(w[:, :, None, :] if one_d else w)
    group = int(attrs.get("group", 1))
    m, cg, kh, kw = w4.shape
    if group < 1 or m % group:
        return None
    packed = _k.pack_conv2d_weights_f32(w4, group)
    bias = None if b is None else np.ascontiguousarray(b)
    code, a, bb = act

    def conv(inputs, _attrs, _n):
        x = inputs[0]
        if x.dtype != np.float32:
            return None
        if one_d:
            x = x[:, :, None, :]
        if x.ndim != 4 or x.shape[1] != cg * group:
            return None
        (sh, sw), (dh, dw), (pt, pl, pb, pr) = _conv_geometry(kattrs, (kh, kw), x.shape[2:])
        if x.shape[2] + pt + pb < dh * (kh - 1) + 1 or x.shape[3] + pl + pr < dw * (kw - 1) + 1:
            return None      # the reference op reports it
        y = _k.conv2d_f32(np.ascontiguousarray(x), packed, bias, None, (sh, sw), (pt, pl, pb, pr),
                          (dh, dw), group, code, a, bb, nt, post[0], post[1])
        return [y[:, :, 0, :] if one_d else y]

    return conv


def make_conv_transpose(attrs, w, b, act, nt):
    """A fast 2-D ConvTranspose (GEMM + col2im) with constant weights, or None."""
    if w is None or w.dtype != np.float32 or w.ndim != 4 or "output_shape" in attrs:
        return None
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    group = int(attrs.get("group", 1))
    cin, cog, kh, kw = w.shape
    if group < 1 or cin % group:
        return None
    if b is not None and (b.dtype != np.float32 or b.shape != (cog * group,)):
        return None
    cig = cin // group
    m = cog * group
    sh, sw = attrs.get("strides", [1, 1])
    dh, dw = attrs.get("dilations", [1, 1])
    pads = attrs.get("pads", [0, 0, 0, 0]) if attrs.get("auto_pad", "NOTSET") == "NOTSET" else [0] * 4
    pt, pl, pb, pr = pads
    oph, opw = attrs.get("output_padding", [0, 0])
    if oph >= sh or opw >= sw:
        return None
    # per group, W_g^T [cog*kh*kw, cig] packed as the left GEMM operand
    wt = [_k.pack_gemm_a_f32(np.ascontiguousarray(w[g * cig:(g + 1) * cig].reshape(cig, cog * kh * kw).T))
          for g in range(group)]
    bias = None if b is None else np.ascontiguousarray(b)
    code, a, bb = act
    # kernel == stride, no padding, dilation or output padding (the 2x2 / stride 2 upsampling of
    # U-Nets, FPNs and DB heads): each input pixel owns one output tile, written once with the
    # bias and activation (col2im_tiles_f32: no zero fill, no accumulation, no separate pass)
    tiles = ((kh, kw) == (sh, sw) and (dh, dw) == (1, 1) and not any(pads) and (oph, opw) == (0, 0))
    gbias = [None if bias is None else bias[g * cog:(g + 1) * cog] for g in range(group)]

    def convt(inputs, _attrs, _n):
        x = inputs[0]
        if x.dtype != np.float32 or x.ndim != 4 or x.shape[1] != cin:
            return None
        n, _, h, wd = x.shape
        oh = sh * (h - 1) + oph + dh * (kh - 1) + 1 - pt - pb
        ow = sw * (wd - 1) + opw + dw * (kw - 1) + 1 - pl - pr
        if oh <= 0 or ow <= 0:
            return None
        x = np.ascontiguousarray(x)
        y = (np.empty if tiles else np.zeros)((n, m, oh, ow), np.float32)
        for i in range(n):
            for g in range(group):
                cols = _k.gemm_f32(wt[g], x[i, g * cig:(g + 1) * cig].reshape(cig, h * wd), num_threads=nt)
                yg = y[i, g * cog:(g + 1) * cog]
                if tiles:
                    _k.col2im_tiles_f32(cols, yg, (kh, kw), gbias[g], code, a, bb, nt)
                else:
                    _k.col2im_f32(cols, yg, (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw), nt)
            if not tiles:
                _k.bias_act_f32(y[i].reshape(m, oh * ow), bias, 0, code, a, bb, nt)
        return [y]

    return convt


def make_matmul(w, bias, act, nt):
    """x[..., K] @ w[K, N] (+ bias[N]) with a constant 2-D float32 weight, or None."""
    if w is None or w.dtype != np.float32 or w.ndim != 2:
        return None
    if bias is not None and (bias.dtype != np.float32 or bias.shape != (w.shape[1],)):
        return None
    k, n_out = w.shape
    wc = np.ascontiguousarray(w)
    code, a, bb = act

    def matmul(inputs, _attrs, _n):
        x = inputs[0]
        if x.dtype != np.float32 or x.ndim < 1 or x.shape[-1] != k:
            return None
        lead = x.shape[:-1]
        x2 = np.ascontiguousarray(x).reshape(-1, k)
        if x2.shape[0] <= SMALL_M:
            # a few rows: memory-bound on the weight, where single-threaded BLAS streams it in place
            # (our GEMM copies B band by band); deterministic since BLAS runs on one thread
            y = x2 @ wc
            if bias is not None or code:
                _k.bias_act_f32(y, bias, 1, code, a, bb, 1)
        else:
            y = _k.gemm_f32(x2, wc, None, bias, 1, code, a, bb, nt)
        return [y.reshape(lead + (n_out,))]

    return matmul


def make_gemm(attrs, b_const, c_const, act, nt):
    """ONNX Gemm with constant B (and constant 1-D / row C), alpha = beta = 1, transA = 0, or None."""
    if attrs.get("transA", 0) or float(attrs.get("alpha", 1.0)) != 1.0:
        return None
    if b_const is None or b_const.ndim != 2:
        return None
    w = b_const.T if attrs.get("transB", 0) else b_const
    bias = None
    if c_const is not None:
        if float(attrs.get("beta", 1.0)) != 1.0:
            return None
        c = np.asarray(c_const)
        if c.size == w.shape[1] and c.ndim in (1, 2) and (c.ndim == 1 or c.shape[0] == 1):
            bias = np.ascontiguousarray(c.reshape(-1))
        elif c.size == 1:
            bias = np.full(w.shape[1], c.reshape(-1)[0], c.dtype)
        else:
            return None
    fn = make_matmul(np.ascontiguousarray(w), bias, act, nt)
    if fn is None:
        return None

    def gemm(inputs, attrs_, n):
        x = inputs[0]
        if x.ndim != 2:
            return None
        return fn(inputs, attrs_, n)

    return gemm


def erf_f32(x, num_threads=1):
    """erf of a float32 array (any shape, 0-d and strided views too), computed in double by the C
    kernel and rounded to float32: within 1 ulp of the float64 reference's value (the reference
    sums 40 series terms per value, ~10x slower). NaN stays NaN, the sign of -0.0 is kept."""
    x = np.asarray(x)
    x = x if x.flags.c_contiguous and x.dtype == np.float32 else np.array(x, np.float32, order="C")
    return _k.erf_f32(x, num_threads=num_threads)


def make_erf(nt=1):
    """The Erf step: ``erf_f32`` for a float32 input; None (the reference op) for other dtypes."""
    def erf(inputs, _attrs, n_out):
        x = inputs[0]
        if n_out != 1 or not isinstance(x, np.ndarray) or x.dtype != np.float32:
            return None
        return [erf_f32(x, nt)]
    return erf


# ----------------------------------------------------------------------------- small ops
# A transformer's run is mostly small steps (Add / Mul / Reshape / Transpose of a few KB), where
# the reference ops' generic work (an errstate context per call, the shape tensor turned into a
# list, the permutation rebuilt) is most of each step. These steps do only the numpy call, with
# the same ufuncs and shapes (the same bits); anything else goes to the reference op.

_F32 = np.dtype(np.float32)
#: float32 binary ops whose fast step is the reference's own ufunc (``QUIET_OPS``: the run loop
#: holds one errstate for them instead of one per call)
BINARY_UFUNCS = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}
QUIET_OPS = frozenset(BINARY_UFUNCS) | {"ReduceSum", "ReduceMean"}


def make_binary(op):
    """Add / Sub / Mul / Div of two float32 arrays (numpy broadcasting); None otherwise. Floating
    point warnings are the caller's to silence (Executor.run: ``Program.quiet``)."""
    uf = BINARY_UFUNCS[op]

    def binary(inputs, _attrs, n_out):
        a, b = inputs[0], inputs[1]
        if (type(a) is not np.ndarray or type(b) is not np.ndarray or a.dtype is not _F32
                or b.dtype is not _F32 or n_out != 1):
            return None
        return [uf(a, b)]
    return binary


def make_reshape(node, consts):
    """Reshape (0 copies the input's dimension unless allowzero) by its shape input: a constant
    read once, or the 1-D int64 array a run computes (a shape-only value of the plan); None for
    anything else (the reference op)."""
    allow = bool(node.attrs.get("allowzero", 0))
    const = None
    if len(node.inputs) > 1 and node.inputs[1] in consts:
        const = [int(d) for d in np.asarray(consts[node.inputs[1]]).reshape(-1)]

    def reshape(inputs, _attrs, n_out):
        x = inputs[0]
        if type(x) is not np.ndarray or len(inputs) < 2:
            return None
        if const is not None:
            t = const
        else:
            s = inputs[1]
            if type(s) is not np.ndarray or s.ndim != 1 or s.dtype.kind != "i":
                return None
            t = s.tolist()
        # (a target that does not fit raises: the checked way then runs the reference op, which
        # names the node)
        return [x.reshape(reshape_target(x.shape, t, allow))]
    return reshape


def make_reduce(node, consts):
    """ReduceSum / ReduceMean of a float32 array over constant axes (the attribute, or a constant
    axes input): the reference's own reducer, without its per-call axis parsing and errstate;
    None otherwise (the reference op)."""
    if len(node.inputs) > 1 and node.inputs[1]:
        if node.inputs[1] not in consts:
            return None
        axes = [int(a) for a in np.asarray(consts[node.inputs[1]]).reshape(-1)]
    else:
        axes = [int(a) for a in node.attrs.get("axes", [])]
    if not axes:                      # all axes, or the identity: the reference op
        return None
    keep = bool(node.attrs.get("keepdims", 1))
    fn = REDUCERS[node.op]

    def reduce(inputs, _attrs, n_out):
        x = inputs[0]
        if type(x) is not np.ndarray or x.dtype is not _F32 or n_out != 1:
            return None
        nd = x.ndim
        if not all(-nd <= a < nd for a in axes):
            return None               # the reference op says what is wrong
        return [np.asarray(fn(x, tuple(sorted({a + nd if a < 0 else a for a in axes})), keep))]
    return reduce


def make_resize(node, consts):
    """A nearest Resize of a 4-D NCHW input by whole-number factors (each pixel replicated into an
    fy x fx block: the FPN / U-Net up-sampling), with constant scales / sizes; None for anything
    else, or per call when the input's shape gives another pattern (the reference op)."""
    from ..reference import qops as rq
    a = node.attrs
    if a.get("mode", "nearest") != "nearest" or int(a.get("antialias", 0)):
        return None
    params = []
    for name in node.inputs[1:4]:
        if name and name not in consts:
            return None       # computed scales / sizes
        params.append(np.asarray(consts[name]) if name else None)
    if len(node.inputs) > 4 or a.get("axes") is not None:
        return None
    from .qops import _per_shape
    factors = {}

    def pattern(shape):
        n, c, h, w = shape
        try:
            _src, f = rq.resize_source_map((n, h, w, c), params, a)
        except QinferError:
            return None
        return f

    def resize(inputs, _attrs, n_out):
        x = inputs[0]
        if type(x) is not np.ndarray or x.ndim != 4 or x.dtype.kind not in "fiub" or 0 in x.shape:
            return None
        f = _per_shape(factors, x.shape, lambda: pattern(x.shape))
        if f is None:
            return None
        n, c, h, w = x.shape
        return [replicate_hw(x.reshape(n * c, h, w), *f).reshape(n, c, h * f[0], w * f[1])]
    return resize


def make_transpose(attrs):
    """Transpose by the node's permutation (reversed axes without one), as a contiguous copy."""
    perm = attrs.get("perm")
    perm = None if perm is None else tuple(int(p) for p in perm)

    def transpose(inputs, _attrs, n_out):
        x = inputs[0]
        if type(x) is not np.ndarray or (perm is not None and len(perm) != x.ndim):
            return None
        return [np.ascontiguousarray(x.transpose(perm))]
    return transpose


def _trailing(x, axis):
    """``axis`` of x normalized to [0, ndim), or None when x is not a float32 array of rank >= 1
    or the axis is out of range (the row ops reduce over x's axes from it on)"""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim == 0:
        return None
    axis = int(axis)
    if axis < 0:
        axis += x.ndim
    if not 0 <= axis < x.ndim:
        return None
    return axis


def _per_col(v, x, axis):
    """LayerNormalization's scale / bias as [cols] float32 when it matches x.shape[axis:]
    element for element (the same shape, or that shape with leading 1s), else None"""
    if not isinstance(v, np.ndarray) or v.dtype != np.float32:
        return None
    tail = x.shape[axis:]
    shp = v.shape[v.ndim - len(tail):] if v.ndim >= len(tail) else None
    if shp != tail or any(d != 1 for d in v.shape[:v.ndim - len(tail)]):
        return None
    return np.ascontiguousarray(v).reshape(-1)


def _is_cols(v, x):
    """v is a C-contiguous float32 [x.shape[-1]]"""
    return (isinstance(v, np.ndarray) and v.ndim == 1 and v.dtype == np.float32
            and v.flags.c_contiguous and v.shape[0] == x.shape[-1])


#: the row kernels are portable C (one lane at a time, libm's expf): they beat the numpy reference
#: ops on small tensors -- where numpy's per-call overhead dominates -- but numpy's SIMD loops win on
#: large ones at 1 thread. The C path is taken up to these many elements per thread (crossovers
#: measured with ``python bench/bench_rows.py``, 1 thread: LayerNormalization 1.19x numpy at
#: 64x256, 1.05x at 128x256, 0.88x at 128x768; Softmax 1.13x at 32x64, 0.87x at 64x64; 2 threads:
#: Softmax 1.24x at 64x64, 0.86x at 64x256). LayerNormalization on 2 or more threads always takes
#: it (1.62-2.14x numpy up to 512x768: the C kernel is threaded, numpy is not); Erf always (3.5-18x).
ROWS_C_MAX = {"LayerNormalization": 32768, "Softmax": 2048}


def make_layernorm(attrs, nt=1):
    """The LayerNormalization step on the C row kernel (float32 X, only the Y output, float32
    scale / bias shaped as X's normalized axes, stash_type 1); None at run time otherwise."""
    if int(attrs.get("stash_type", 1)) != 1:
        return None
    eps = float(attrs.get("epsilon", 1e-5))
    axis_attr = int(attrs.get("axis", -1))

    cap = ROWS_C_MAX["LayerNormalization"] if nt == 1 else float("inf")

    def layernorm(inputs, _attrs, n_out):
        x = inputs[0]
        if getattr(x, "size", 0) > cap:
            return None
        if n_out == 1 and len(inputs) >= 2 and axis_attr in (-1, getattr(x, "ndim", 0) - 1):
            s, b = inputs[1], inputs[2] if len(inputs) > 2 else None
            if (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous
                    and _is_cols(s, x) and (b is None or _is_cols(b, x))):  # the common case
                return [_k.layernorm_f32(x, s, b, eps, num_threads=nt)]
        axis = _trailing(x, axis_attr)
        if n_out != 1 or axis is None or len(inputs) < 2:
            return None
        scale = _per_col(inputs[1], x, axis)
        bias = inputs[2] if len(inputs) > 2 else None
        if bias is not None:
            bias = _per_col(bias, x, axis)
            if bias is None:
                return None
        if scale is None:
            return None
        x = x if x.flags.c_contiguous else np.ascontiguousarray(x)
        cols = math.prod(x.shape[axis:])
        y = _k.layernorm_f32(x.reshape(-1, cols) if cols else x, scale, bias, eps, num_threads=nt)
        return [y.reshape(x.shape)]
    return layernorm


def make_softmax(attrs, nt=1):
    """The Softmax step on the C row kernel: float32, over the last axis (or, with coerce_2d, the
    flattened axes from ``axis`` on); None at run time otherwise (another axis, dtype)."""
    coerce = bool(attrs.get("coerce_2d", 0))
    axis_attr = int(attrs.get("axis", 1 if coerce else -1))

    cap = ROWS_C_MAX["Softmax"] * nt

    def softmax(inputs, _attrs, n_out):
        x = inputs[0]
        if getattr(x, "size", 0) > cap:
            return None
        if (n_out == 1 and isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim
                and x.flags.c_contiguous and axis_attr in (-1, x.ndim - 1)):  # the common case
            return [_k.softmax_f32(x, num_threads=nt)]
        axis = _trailing(x, axis_attr)
        if n_out != 1 or axis is None or (axis != x.ndim - 1 and not coerce):
            return None
        x = x if x.flags.c_contiguous else np.ascontiguousarray(x)
        cols = math.prod(x.shape[axis:])
        y = _k.softmax_f32(x.reshape(-1, cols) if cols else x, num_threads=nt)
        return [y.reshape(x.shape)]
    return softmax


def make_pool(op, attrs):
    """Non-overlapping 2-D max / average pooling (kernel == stride, no padding) on strided views of
    the input, one per window tap, or None. Covers the 2x2 / stride-2 pools of classic CNNs and
    the 3x2 ones of text recognizers without the general sliding-window code."""
    k = list(attrs.get("kernel_shape", []))
    if op not in ("MaxPool", "AveragePool") or len(k) != 2:
        return None
    if list(attrs.get("strides", [1, 1])) != k or any(attrs.get("pads", [0, 0, 0, 0])):
        return None
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or any(d != 1 for d in attrs.get("dilations", [1, 1])):
        return None
    if attrs.get("storage_order", 0):
        return None
    kh, kw = k
    mx = op == "MaxPool"
    inv = np.float32(kh * kw)

    def pool(inputs, _attrs, n_out):
        x = inputs[0]
        if n_out != 1 or x.ndim != 4 or x.dtype != np.float32:
            return None
        n, c, h, w = x.shape
        oh, ow = h // kh, w // kw
        if oh == 0 or ow == 0:
            return None
        if attrs.get("ceil_mode", 0) and (h % kh or w % kw):
            return None
        v = x[:, :, :oh * kh, :ow * kw].reshape(n, c, oh, kh, ow, kw)
        # one element-wise op per window tap over strided views: numpy's reduction over the two
        # small window axes (np.mean(v, axis=(3, 5))) walks them element by element: 0.89 ms
        # against 0.07 ms on PP-OCRv4 rec's [1, 480, 3, 80] 3x2 pool
        y = np.array(v[:, :, :, 0, :, 0], dtype=np.float32)
        for i in range(kh):
            for j in range(kw):
                if i or j:
                    (np.maximum if mx else np.add)(y, v[:, :, :, i, :, j], out=y)
        if not mx:
            y /= inv
        return [y]

    return pool
