"""Reference int8 GEMM / conv / depthwise conv (the oracle of the int8 kernels), and the numpy
pack / unpack of their packed weight layout.

Design: the scheme of DESIGN.md "Quantization scheme" in plain numpy, never calling compiled code.
Activations uint8 with a per-tensor zero point zp_x; weights int8 per output channel ([-127, 127]
from the symmetric quantizer; -128 is exact too); acc = bias_q[n] + sum_k (x[m, k] - zp_x) * w[k, n] computed in int64 and checked to fit
int32 (the kernels get the same integer as bias_q - zp_x * colsum[n] + sum_k x * w, folded at
pack time); conv padding reads zp_x, i.e. contributes 0. The epilogue then runs in float32 with the
same IEEE operations in the same order as kernels/include/qinfer/qint8.h (no fused multiply-add;
np.rint is round half to even, as cvtps2dq), so the kernels' outputs must equal these bit for bit:

    y = float32(acc) * scale[n];  y = act(y)
    float32 out: y
    uint8 out:   t = y * y_inv_scale + zp_y (two roundings); t = min(max(t, 0), 255); q = rint(t)

Packing (``pack_gemm_qc8w``, ``pack_conv_qc8w``, ``pack_dwconv_qc8w``) is done here, in numpy, at
quantize time; the kernels take the packed bytes (a 1-D uint8 array) and only check the header.
Layout: docs/formats.md, "int8 packed weights"; ``HEADER`` mirrors struct qi_qc8w_header.
"""
import numpy as np

# activation codes (kernels/include/qinfer/common.h enum qi_act_code, plus QI_QACT_SILU)
ACT_NONE, ACT_RELU, ACT_CLIP, ACT_HARDSWISH, ACT_SIGMOID, ACT_HARDSIGMOID, ACT_SILU = range(7)
ACT_NAMES = ("none", "relu", "clip", "hardswish", "sigmoid", "hardsigmoid", "silu")

MAGIC_GEMM = 0x57384351  # b"QC8W"
MAGIC_DW = 0x38574451    # b"QDW8"
VERSION = 2  # 2: depthwise weights in kernel-row quads (version 1 had taps x channels)
NR, KR = 32, 4           # GEMM / conv panels: 32 output channels, K in groups of 4
DW_CR = 16               # depthwise: channels padded to a multiple of 16, kernel rows in quads
HEADER = np.dtype([("magic", "<u4"), ("version", "<u4"), ("groups", "<u4"), ("n", "<u4"),
                   ("k", "<u4"), ("n_pad", "<u4"), ("k_pad", "<u4"), ("nr", "<u4"), ("kr", "<u4"),
                   ("zp_x", "<i4"), ("kh", "<u4"), ("kw", "<u4"), ("cin", "<u4"),
                   ("reserved", "<u4", (3,))])
assert HEADER.itemsize == 64
INT32_MIN, INT32_MAX = -2**31, 2**31 - 1

_f = np.float32
LOG2E, EXP_C1, EXP_C2 = _f(1.44269504088896341), _f(0.693359375), _f(-2.12194440e-4)
EXP_P = tuple(_f(v) for v in (1.9875691500E-4, 1.3981999507E-3, 8.3334519073E-3, 4.1665795894E-2,
                              1.6666665459E-1, 5.0000001201E-1))
SIXTH = np.array([0x3E2AAAAB], np.uint32).view(np.float32)[0]  # float32(1/6)


def _round_up(v, m):
    return (v + m - 1) // m * m


# ----------------------------------------------------------------------------- epilogue

def exp_f32(x):
    """The kernels' expf (mul and add only, Cephes polynomial), float32 in, float32 out."""
    x = np.asarray(x, np.float32)
    x = np.where(x < _f(-87), _f(-87), x)
    x = np.where(x > _f(87), _f(87), x)
    n = np.rint(x * LOG2E)
    r = x - n * EXP_C1
    r = r - n * EXP_C2
    p = np.full_like(r, EXP_P[0])
    for c in EXP_P[1:]:
        p = p * r + c
    p = p * (r * r) + (r + _f(1))
    e = ((n.astype(np.int32) + 127) << 23).view(np.float32)
    return p * e


def activation(y, code, alpha=0.0, beta=0.0):
    """act(y) on float32 y, operation for operation as qi_q_act."""
    y = np.asarray(y, np.float32)
    a, b = _f(alpha), _f(beta)
    zero, one = _f(0), _f(1)
    if code == ACT_NONE:
        return y
    if code == ACT_RELU:
        return np.where(y < zero, zero, y)
    if code == ACT_CLIP:
        y = np.where(y < a, a, y)
        return np.where(y > b, b, y)
    if code == ACT_HARDSWISH:
        t = y * SIXTH
        t = t + _f(0.5)
        t = np.where(t < zero, zero, t)
        t = np.where(t > one, one, t)
        return y * t
    if code == ACT_SIGMOID:
        return one / (one + exp_f32(zero - y))
    if code == ACT_HARDSIGMOID:
        t = a * y
        t = t + b
        t = np.where(t < zero, zero, t)
        return np.where(t > one, one, t)
    if code == ACT_SILU:
        return y / (one + exp_f32(zero - y))
    raise ValueError(f"activation code must be 0..6 ({', '.join(ACT_NAMES)}), got {code!r}")


def epilogue(acc, scale, act=ACT_NONE, alpha=0.0, beta=0.0, out_u8=True, y_inv_scale=1.0, zp_y=0):
    """int32 acc[..., N] -> uint8 (out_u8) or float32, per-channel scale[N] on the last axis."""
    acc = np.asarray(acc)
    if acc.dtype != np.int32:
        raise ValueError(f"acc must be int32, got {acc.dtype}")
    y = acc.astype(np.float32) * np.asarray(scale, np.float32)
    y = activation(y, act, alpha, beta)
    if not out_u8:
        return y
    t = y * _f(y_inv_scale)
    t = t + _f(zp_y)
    t = np.where(t > _f(0), t, _f(0))
    t = np.where(t < _f(255), t, _f(255))
    return np.rint(t).astype(np.uint8)


def _to_i32(acc):
    if acc.size and (acc.min() < INT32_MIN or acc.max() > INT32_MAX):
        raise ValueError("int32 accumulator overflow: K * 255 * 127 + |bias| must stay below 2**31")
    return acc.astype(np.int32)


def _bias(bias, n):
    if bias is None:
        return np.zeros(n, np.int64)
    bias = np.asarray(bias)
    if bias.shape != (n,) or bias.dtype.kind not in "iu":
        raise ValueError(f"bias must be an integer array of shape ({n},), got {bias.dtype} {bias.shape}")
    return bias.astype(np.int64)


# ----------------------------------------------------------------------------- ops

def qgemm_acc(x, w, bias=None, zp_x=0):
    """int32 acc[M, N] = bias + (x[M, K] - zp_x) @ w[K, N] (x uint8, w int8)."""
    x, w = np.asarray(x), np.asarray(w)
    acc = (x.astype(np.int64) - int(zp_x)) @ w.astype(np.int64) + _bias(bias, w.shape[1])
    return _to_i32(acc)


def qgemm(x, w, scale, bias=None, zp_x=0, act=ACT_NONE, alpha=0.0, beta=0.0, out_u8=True,
          y_inv_scale=1.0, zp_y=0):
    """Quantized GEMM: x uint8 [M, K], w int8 [K, N], bias int32 [N], scale float32 [N]."""
    return epilogue(qgemm_acc(x, w, bias, zp_x), scale, act, alpha, beta, out_u8, y_inv_scale, zp_y)


def _out_size(n, k, s, p0, p1, d):
    return (n + p0 + p1 - d * (k - 1) - 1) // s + 1


def _patches(x, kh, kw, strides, pads, dilations, zp_x):
    """x uint8 [N, H, W, C] -> int64 (x - zp_x) patches [N, OH, OW, KH, KW, C], padding 0."""
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = strides, pads, dilations
    N, H, W, C = x.shape
    OH, OW = _out_size(H, kh, sh, pt, pb, dh), _out_size(W, kw, sw, pl, pr, dw)
    xp = np.pad(x.astype(np.int64) - int(zp_x), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    out = np.empty((N, OH, OW, kh, kw, C), np.int64)
    for ky in range(kh):
        for kx in range(kw):
            out[:, :, :, ky, kx] = xp[:, ky * dh:ky * dh + sh * (OH - 1) + 1:sh,
                                      kx * dw:kx * dw + sw * (OW - 1) + 1:sw]
    return out


def qconv2d_nhwc_acc(x, w, bias=None, zp_x=0, strides=(1, 1), pads=(0, 0, 0, 0),
                     dilations=(1, 1), groups=1):
    """int32 acc [N, OH, OW, Cout]: x uint8 NHWC, w int8 [Cout, Cin/groups, KH, KW] (ONNX),
    pads (top, left, bottom, right) filled with zp_x."""
    x, w = np.asarray(x), np.asarray(w)
    cout, cin_g, kh, kw = w.shape
    ng = cout // groups
    pt = _patches(x, kh, kw, strides, pads, dilations, zp_x)
    N, OH, OW = pt.shape[:3]
    acc = np.empty((N, OH, OW, cout), np.int64)
    for g in range(groups):
        a = pt[..., g * cin_g:(g + 1) * cin_g].reshape(N * OH * OW, kh * kw * cin_g)
        wg = w[g * ng:(g + 1) * ng].transpose(2, 3, 1, 0).reshape(kh * kw * cin_g, ng)
        acc[..., g * ng:(g + 1) * ng] = (a @ wg.astype(np.int64)).reshape(N, OH, OW, ng)
    return _to_i32(acc + _bias(bias, cout))


def qconv2d_nhwc(x, w, scale, bias=None, zp_x=0, strides=(1, 1), pads=(0, 0, 0, 0),
                 dilations=(1, 1), groups=1, act=ACT_NONE, alpha=0.0, beta=0.0, out_u8=True,
                 y_inv_scale=1.0, zp_y=0):
    """Quantized conv, NHWC uint8 in, [N, OH, OW, Cout] uint8 (out_u8) or float32 out."""
    acc = qconv2d_nhwc_acc(x, w, bias, zp_x, strides, pads, dilations, groups)
    return epilogue(acc, scale, act, alpha, beta, out_u8, y_inv_scale, zp_y)


def qdwconv2d_nhwc_acc(x, w, bias=None, zp_x=0, strides=(1, 1), pads=(0, 0, 0, 0),
                       dilations=(1, 1)):
    """int32 acc [N, OH, OW, C] of a depthwise conv: w int8 [C, 1, KH, KW] or [C, KH, KW]."""
    x, w = np.asarray(x), np.asarray(w)
    if w.ndim == 4:
        w = w[:, 0]
    C, kh, kw = w.shape
    pt = _patches(x, kh, kw, strides, pads, dilations, zp_x)
    acc = np.einsum("nyxabc,cab->nyxc", pt, w.astype(np.int64))
    return _to_i32(acc + _bias(bias, C))


def qdwconv2d_nhwc(x, w, scale, bias=None, zp_x=0, strides=(1, 1), pads=(0, 0, 0, 0),
                   dilations=(1, 1), act=ACT_NONE, alpha=0.0, beta=0.0, out_u8=True,
                   y_inv_scale=1.0, zp_y=0):
    """Quantized depthwise conv, NHWC."""
    acc = qdwconv2d_nhwc_acc(x, w, bias, zp_x, strides, pads, dilations)
    return epilogue(acc, scale, act, alpha, beta, out_u8, y_inv_scale, zp_y)


# ----------------------------------------------------------------------------- packing

def _check_w(w, ndim, what):
    w = np.asarray(w)
    if w.dtype != np.int8 or w.ndim != ndim:
        raise ValueError(f"{what} must be an int8 array of rank {ndim}, got {w.dtype} {w.shape}")
    return w


def _header(magic, groups, n, k, n_pad, k_pad, nr, kr, zp_x, kh, kw, cin):
    h = np.zeros((), HEADER)
    for name, v in dict(magic=magic, version=VERSION, groups=groups, n=n, k=k, n_pad=n_pad,
                        k_pad=k_pad, nr=nr, kr=kr, zp_x=zp_x, kh=kh, kw=kw, cin=cin).items():
        h[name] = v
    return h.tobytes()


def _check_zp(zp_x):
    zp_x = int(zp_x)
    if not 0 <= zp_x <= 255:
        raise ValueError(f"zp_x must be in 0..255 (uint8 activations), got {zp_x}")
    return zp_x


def fold_bias(wg, bias, zp_x, n_pad):
    """(folded bias, colsum), int64 [G, n_pad] each (0 in the padding), of weights wg int8
    [G, K, n]: colsum = sum_k w, folded = bias_q - zp_x * colsum (checked to fit int32). Shared by
    the dense and the sparse (reference/sparse.py) packers."""
    G, _, n = wg.shape
    colsum = np.zeros((G, n_pad), np.int64)
    colsum[:, :n] = wg.astype(np.int64).sum(axis=1)
    b = np.zeros((G, n_pad), np.int64)
    b[:, :n] = _bias(bias, G * n).reshape(G, n)
    folded = b - zp_x * colsum
    if folded.size and (folded.min() < INT32_MIN or folded.max() > INT32_MAX):
        raise ValueError("bias - zp_x * sum(w) does not fit int32")
    return folded, colsum


def padded(n, k, dw=False, kh=0, kw=0):
    """(n_pad, k_pad) of packed int8 weights (docs/formats.md 2.1): GEMM / conv, n channels to a
    multiple of NR and k to one of KR; depthwise (k = kh*kw taps), channels to DW_CR and the kernel
    rows to quads, kw * ceil(kh / 4) * 4."""
    if dw:
        return _round_up(max(n, 1), DW_CR), int(kw) * ((int(kh) + 3) // 4) * 4
    return _round_up(max(n, 1), NR), _round_up(max(k, 1), KR)


def packed_nbytes(groups, n, k, dw=False, kh=0, kw=0):
    """Bytes of a packed blob: the header, then per padded channel an int32 bias and an int32
    column sum, then the padded weights."""
    n_pad, k_pad = padded(n, k, dw, kh, kw)
    return HEADER.itemsize + int(groups) * n_pad * (8 + k_pad)


def _pack_panels(wg, bias, zp_x, kh, kw, cin):
    """wg int8 [G, K, n] (K in (ky, kx, c) order) -> packed uint8 bytes."""
    G, K, n = wg.shape
    n_pad, k_pad = padded(n, K)
    folded, colsum = fold_bias(wg, bias, zp_x, n_pad)
    wp = np.zeros((G, k_pad, n_pad), np.int8)
    wp[:, :K, :n] = wg
    # [G, k_pad/4, 4, n_pad/32, 32] -> [G, n_pad/32, k_pad/4, 32, 4]
    panels = wp.reshape(G, k_pad // KR, KR, n_pad // NR, NR).transpose(0, 3, 1, 4, 2)
    return np.frombuffer(
        _header(MAGIC_GEMM, G, n, K, n_pad, k_pad, NR, KR, zp_x, kh, kw, cin)
        + folded.astype("<i4").tobytes() + colsum.astype("<i4").tobytes()
        + np.ascontiguousarray(panels).tobytes(), np.uint8).copy()


def pack_gemm_qc8w(w, bias=None, zp_x=0):
    """Pack GEMM weights w int8 [K, N] (C = A @ w) with bias_q int32 [N] and the activation zero
    point (folded into the bias). Returns a 1-D uint8 array (docs/formats.md)."""
    w = _check_w(w, 2, "w")
    K, N = w.shape
    return _pack_panels(w[None], bias, _check_zp(zp_x), 0, 0, K)


def pack_conv_qc8w(w, bias=None, zp_x=0, groups=1):
    """Pack conv weights w int8 [Cout, Cin/groups, KH, KW] (ONNX layout) for the NHWC conv."""
    w = _check_w(w, 4, "w")
    cout, cin_g, kh, kw = w.shape
    if groups < 1 or cout % groups:
        raise ValueError(f"groups ({groups}) must divide the {cout} output channels")
    ng = cout // groups
    wg = w.reshape(groups, ng, cin_g, kh, kw).transpose(0, 3, 4, 2, 1).reshape(
        groups, kh * kw * cin_g, ng)
    return _pack_panels(wg, bias, _check_zp(zp_x), kh, kw, cin_g)


def pack_dwconv_qc8w(w, bias=None, zp_x=0):
    """Pack depthwise weights w int8 [C, 1, KH, KW] or [C, KH, KW]."""
    w = np.asarray(w)
    if w.ndim == 4 and w.shape[1] == 1:
        w = w[:, 0]
    w = _check_w(w, 3, "depthwise w")
    zp_x = _check_zp(zp_x)
    C, kh, kw = w.shape
    (c_pad, k_pad), T, nq = padded(C, kh * kw, True, kh, kw), kh * kw, (kh + 3) // 4
    colsum = np.zeros(c_pad, np.int64)
    colsum[:C] = w.astype(np.int64).reshape(C, T).sum(axis=1)
    b = np.zeros(c_pad, np.int64)
    b[:C] = _bias(bias, C)
    folded = b - zp_x * colsum
    if folded.min() < INT32_MIN or folded.max() > INT32_MAX:
        raise ValueError("bias - zp_x * sum(w) does not fit int32")
    # quads: wq[kx, q, c, t] = w[c, 4q + t, kx] (kernel rows in groups of 4, one vpdpbusd lane)
    wq = np.zeros((kw, nq * 4, c_pad), np.int8)
    wq[:, :kh, :C] = w.transpose(2, 1, 0)
    wq = wq.reshape(kw, nq, 4, c_pad).transpose(0, 1, 3, 2)
    return np.frombuffer(
        _header(MAGIC_DW, 1, C, T, c_pad, k_pad, DW_CR, 4, zp_x, kh, kw, 1)
        + folded.astype("<i4").tobytes() + colsum.astype("<i4").tobytes()
        + np.ascontiguousarray(wq).tobytes(), np.uint8).copy()


def read_header(packed, header=HEADER):
    """The header of packed weights as a dict (no validation beyond the size); ``header``: the
    structured dtype of the format's 64-byte header (this module's, or reference/sparse.py's)."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 1 or packed.size < header.itemsize:
        raise ValueError("packed weights must be a 1-D uint8 array of at least 64 bytes")
    h = np.frombuffer(packed[:header.itemsize].tobytes(), header)[0]
    return {name: (h[name].tolist()) for name in header.names}


def unpack_qc8w(packed):
    """Inverse of the pack functions: {"header", "w" (original layout: [K, N] GEMM, ONNX
    [Cout, Cin/g, KH, KW] conv, [C, 1, KH, KW] depthwise), "bias" (folded int32, unpadded),
    "colsum", "bias_q" (bias + zp_x * colsum)}. Sparse int8 weights (SB4W, reference/sparse.py: the
    same int8 weights stored as their non-zero 1x4 blocks) unpack too, through sparse.unpack_sb4w
    (whose dict adds "density")."""
    from . import sparse
    if sparse.is_sparse(np.asarray(packed)):
        return sparse.unpack_sb4w(packed)
    h = read_header(packed)
    G, n, k, n_pad, k_pad = h["groups"], h["n"], h["k"], h["n_pad"], h["k_pad"]
    off = HEADER.itemsize
    folded = np.frombuffer(packed[off:off + 4 * G * n_pad].tobytes(), "<i4").reshape(G, n_pad)
    off += 4 * G * n_pad
    colsum = np.frombuffer(packed[off:off + 4 * G * n_pad].tobytes(), "<i4").reshape(G, n_pad)
    off += 4 * G * n_pad
    body = np.frombuffer(packed[off:].tobytes(), np.int8)
    kh, kw, cin = h["kh"], h["kw"], h["cin"]
    if h["magic"] == MAGIC_DW:
        nq = (kh + 3) // 4
        wq = body.reshape(kw, nq, n_pad, 4).transpose(0, 1, 3, 2).reshape(kw, nq * 4, n_pad)
        w = wq[:, :kh, :n].transpose(2, 1, 0).reshape(n, 1, kh, kw).copy()
    elif h["magic"] == MAGIC_GEMM:
        panels = body.reshape(G, n_pad // NR, k_pad // KR, NR, KR)
        wp = panels.transpose(0, 2, 4, 1, 3).reshape(G, k_pad, n_pad)[:, :k, :n]
        if kh == 0:  # GEMM
            w = wp[0].copy()
        else:
            w = wp.reshape(G, kh, kw, cin, n).transpose(0, 4, 3, 1, 2).reshape(G * n, cin, kh, kw)
    else:
        raise ValueError(f"not packed int8 weights (magic {h['magic']:#x})")
    bias = folded[:, :n].reshape(-1).astype(np.int32)
    cs = colsum[:, :n].reshape(-1).astype(np.int32)
    return {"header": h, "w": w, "bias": bias, "colsum": cs,
            "bias_q": (bias.astype(np.int64) + h["zp_x"] * cs.astype(np.int64)).astype(np.int32)}
