"""Fast float32 implementations of the heavy ops (Conv, ConvTranspose), used by the planner.

Design: NCHW float32. A k x k conv is im2col + one BLAS matmul per image; 1x1 stride-1 convs skip
im2col; depthwise convs call the channel-vectorized C kernel; the bias and a fused activation are
applied in one pass over the output (C ``bias_act_f32`` when the extension is built). Anything these
paths do not cover (3-D convs, float16/64, auto_pad with dynamic shapes, output_shape on
ConvTranspose) returns ``None`` from ``make_*`` and the planner uses the reference op instead.

An activation is described as ``(code, a, b)``: 0 none, 1 relu, 2 clip(a, b), 3 hardswish,
4 sigmoid, 5 hardsigmoid(alpha=a, beta=b) -- the codes the C epilogue uses.
"""
import numpy as np

try:  # the compiled kernels (through cpu, which applies the QINFER_ISA cap first)
    from .cpu import _kernels as _k
except ImportError:  # pragma: no cover - a source tree without the built extension
    _k = None

ACT_NONE, ACT_RELU, ACT_CLIP, ACT_HARDSWISH, ACT_SIGMOID, ACT_HARDSIGMOID = range(6)
NO_ACT = (ACT_NONE, 0.0, 0.0)


def _has(name):
    return _k is not None and hasattr(_k, name)


def apply_bias_act(y2d, bias, act, nt):
    """In place on y2d [C, L] (C-contiguous float32): y += bias[:, None]; y = act(y)."""
    code, a, b = act
    if _has("bias_act_f32"):
        _k.bias_act_f32(y2d, bias, 0, code, a, b, 1)
        return y2d
    if bias is not None:
        y2d += bias[:, None]
    if code == ACT_RELU:
        np.maximum(y2d, 0, out=y2d)
    elif code == ACT_CLIP:
        np.clip(y2d, a, b, out=y2d)
    elif code == ACT_HARDSWISH:
        y2d *= np.clip(y2d / 6.0 + 0.5, 0.0, 1.0)
    elif code == ACT_SIGMOID:
        y2d[...] = 1.0 / (1.0 + np.exp(-y2d))
    elif code == ACT_HARDSIGMOID:
        y2d[...] = np.clip(a * y2d + b, 0.0, 1.0)
    return y2d


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


def _im2col_numpy(x, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, oh, ow):
    c = x.shape[0]
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr))) if (pt or pb or pl or pr) else x
    cols = np.empty((c, kh, kw, oh, ow), np.float32)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = xp[:, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
    return cols.reshape(c * kh * kw, oh * ow)


def _im2col(x, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, oh, ow, nt):
    if _has("im2col_f32"):
        return _k.im2col_f32(x, (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw), None, 1)
    return _im2col_numpy(x, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, oh, ow)


def _dwconv_numpy(x, w, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, oh, ow, out):
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr))) if (pt or pb or pl or pr) else x
    out[...] = 0
    for i in range(kh):
        for j in range(kw):
            out += w[:, i, j, None, None] * xp[:, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                                               j * dw: j * dw + sw * (ow - 1) + 1: sw]
    return out


#: im2col works on bands of output rows whose column buffer stays about this size (L2-resident), so
#: a large feature map never materializes its whole (C*KH*KW) x (OH*OW) matrix in DRAM.
IM2COL_CHUNK_BYTES = 1 << 20


def _conv_rows(x, w2, y2, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, oh, ow, nt):
    """y2[M, OH*OW] = w2[M, K] @ im2col(x[C, H, W]), one band of output rows at a time."""
    h = x.shape[1]
    k = w2.shape[1]
    rows = max(1, min(oh, IM2COL_CHUNK_BYTES // max(1, k * ow * 4)))
    ext = dh * (kh - 1) + 1
    for r0 in range(0, oh, rows):
        r1 = min(oh, r0 + rows)
        a = r0 * sh - pt                       # first input row the band reads (may be in the padding)
        b = (r1 - 1) * sh - pt + ext           # one past the last
        top, bottom = max(0, -a), max(0, b - h)
        xs = x[:, max(0, a):min(h, b)]
        if xs.shape[1] == 0:                   # band entirely in the padding
            y2[:, r0 * ow:r1 * ow] = 0
            continue
        cols = _im2col(np.ascontiguousarray(xs), kh, kw, sh, sw, dh, dw, top, pl, bottom, pr, r1 - r0, ow, nt)
        if r0 == 0 and r1 == oh:
            np.matmul(w2, cols, out=y2)
        else:
            y2[:, r0 * ow:r1 * ow] = w2 @ cols


def make_conv(attrs, w, b, act, nt):
    """A fast Conv for float32 1-D/2-D convs with constant weights, or None."""
    if w is None or w.dtype != np.float32 or w.ndim not in (3, 4):
        return None
    if b is not None and b.dtype != np.float32:
        return None
    one_d = w.ndim == 3
    w4 = w[:, :, None, :] if one_d else w
    group = int(attrs.get("group", 1))
    m, cg, kh, kw = w4.shape
    if m % group:
        return None
    kattrs = dict(attrs)
    if one_d:
        for k, fill in (("strides", 1), ("dilations", 1)):
            if k in kattrs:
                kattrs[k] = [fill] + list(kattrs[k])
        if "pads" in kattrs:
            p = list(kattrs["pads"])
            kattrs["pads"] = [0, p[0], 0, p[1]]
        if "kernel_shape" in kattrs:
            kattrs["kernel_shape"] = [1] + list(kattrs["kernel_shape"])
    w4 = np.ascontiguousarray(w4)
    w2 = w4.reshape(m, cg * kh * kw)
    depthwise = group > 1 and cg == 1 and m == group
    wdw = np.ascontiguousarray(w4.reshape(m, kh, kw)) if depthwise else None
    bias = None if b is None else np.ascontiguousarray(b)
    mg = m // group

    def conv(inputs, _attrs, _n):
        x = inputs[0]
        if x.dtype != np.float32:
            return None
        if one_d:
            x = x[:, :, None, :]
        if x.ndim != 4 or x.shape[1] != cg * group:
            return None
        n, c, h, wd = x.shape
        (sh, sw), (dh, dw), (pt, pl, pb, pr) = _conv_geometry(kattrs, (kh, kw), (h, wd))
        oh = (h + pt + pb - (dh * (kh - 1) + 1)) // sh + 1
        ow = (wd + pl + pr - (dw * (kw - 1) + 1)) // sw + 1
        if oh <= 0 or ow <= 0:
            return None
        x = np.ascontiguousarray(x)
        y = np.empty((n, m, oh, ow), np.float32)
        pointwise = kh == kw == 1 and sh == sw == 1 and not (pt or pl or pb or pr)
        for i in range(n):
            yi = y[i].reshape(m, oh * ow)
            if depthwise:
                if _has("dwconv2d_f32"):
                    _k.dwconv2d_f32(x[i], wdw, bias, y[i], (sh, sw), (pt, pl, pb, pr), (dh, dw),
                                    act[0], act[1], act[2], 1)
                    continue
                _dwconv_numpy(x[i], wdw, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, oh, ow, y[i])
            else:
                for gi in range(group):
                    xg = x[i] if group == 1 else np.ascontiguousarray(x[i, gi * cg:(gi + 1) * cg])
                    wg = w2 if group == 1 else w2[gi * mg:(gi + 1) * mg]
                    yg = yi if group == 1 else yi[gi * mg:(gi + 1) * mg]
                    if pointwise:
                        np.matmul(wg, xg.reshape(cg, h * wd), out=yg)
                    else:
                        _conv_rows(xg, wg, yg, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, oh, ow, nt)
            apply_bias_act(yi, bias, act, nt)
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
    if cin % group:
        return None
    cig = cin // group
    m = cog * group
    sh, sw = attrs.get("strides", [1, 1])
    dh, dw = attrs.get("dilations", [1, 1])
    pt, pl, pb, pr = attrs.get("pads", [0, 0, 0, 0]) if attrs.get("auto_pad", "NOTSET") == "NOTSET" else [0] * 4
    oph, opw = attrs.get("output_padding", [0, 0])
    # per group: W_g^T [cog*kh*kw, cig]
    wt = [np.ascontiguousarray(w[g * cig:(g + 1) * cig].reshape(cig, cog * kh * kw).T) for g in range(group)]
    bias = None if b is None else np.ascontiguousarray(b)

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
        y = np.empty((n, m, oh, ow), np.float32)
        for i in range(n):
            for g in range(group):
                cols = wt[g] @ x[i, g * cig:(g + 1) * cig].reshape(cig, h * wd)  # [cog*kh*kw, h*w]
                yg = y[i, g * cog:(g + 1) * cog]
                if _has("col2im_f32") and oph < sh and opw < sw:
                    yg[...] = 0
                    _k.col2im_f32(np.ascontiguousarray(cols), yg, (kh, kw), (sh, sw), (pt, pl, pb, pr),
                                  (dh, dw), nt)
                else:
                    _col2im_numpy(cols.reshape(cog, kh, kw, h, wd), yg, sh, sw, dh, dw, pt, pl)
            apply_bias_act(y[i].reshape(m, oh * ow), bias, act, nt)
        return [y]

    return convt


def _col2im_numpy(cols, out, sh, sw, dh, dw, pt, pl):
    cog, kh, kw, h, wd = cols.shape
    oh, ow = out.shape[1:]
    # scatter into a padded canvas, then crop
    ph = max(oh + pt, sh * (h - 1) + dh * (kh - 1) + 1)
    pw = max(ow + pl, sw * (wd - 1) + dw * (kw - 1) + 1)
    canvas = np.zeros((cog, ph, pw), np.float32)
    for i in range(kh):
        for j in range(kw):
            canvas[:, i * dh: i * dh + sh * (h - 1) + 1: sh, j * dw: j * dw + sw * (wd - 1) + 1: sw] += cols[:, i, j]
    out[...] = canvas[:, pt:pt + oh, pl:pl + ow]
    return out


def is_float32(graph, node):
    """True when ``node``'s weight is a float32 constant (the only case the fast paths take)."""
    w = graph.initializers.get(node.inputs[1]) if len(node.inputs) > 1 else None
    return w is not None and w.dtype == np.float32
