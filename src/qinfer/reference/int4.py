"""Reference int4 GEMM / conv (the oracle of the int4 kernels), and the numpy pack / unpack of
their packed weight layout ("QB4W").

Design: the arithmetic of kernels/include/qinfer/qint4.h in plain numpy, never calling compiled
code. Weights q in [-8, 7] (two's complement nibbles, two per byte), one float32 scale per
(output channel, block of ``block`` consecutive k; the last block may be short). Activations
uint8 with a zero point zp_x that the integer part does not subtract: per block the dot product of
the raw bytes is an exact integer d, and per output element, in float32, in this order (no fused
multiply-add; np.rint rounds half to even as cvtps2dq does):

    acc = 0;  for each block b in order:  acc = acc + float32(16 d_b) * (s[n, b] * 0.0625)
              (= float32(d_b) * s[n, b] rounded once, for any scale whose sixteenth is normal)
    y = (acc + offset[n]) * scale[n];  y = y + bias[n] (when a float bias is given);  y = act(y)
    float32 out: y;  uint8 out: clamp(rint(y * y_inv_scale + zp_y), 0, 255)  (as for int8)

``offset`` is folded at pack time: bias / s_x - zp_x * sum_b s[n, b] * sum_{k in b} q[k, n], in
units of the accumulator (so y = s_x * acc + bias is the layer's real output for scale = s_x). It
is stored in the packed weights and returned by ``unpack_qb4w``; the reference ops take it as is.
Layout: docs/formats.md, "int4 packed weights"; ``HEADER`` mirrors struct qi_qb4w_header.
"""
import numpy as np

from . import quantized as q8

MAGIC = 0x57344251  # b"QB4W"
VERSION = 1
NR, KR = 32, 4      # panels of 32 output channels; steps of 4 k (64 bytes)
BLOCK_MAX = 256     # |16 d| < 2^24: exact in int32 and in float32
QMIN, QMAX = -8, 7
HEADER = np.dtype([("magic", "<u4"), ("version", "<u4"), ("groups", "<u4"), ("n", "<u4"),
                   ("k", "<u4"), ("n_pad", "<u4"), ("block", "<u4"), ("nblk", "<u4"),
                   ("panel_bytes", "<u4"), ("zp_x", "<i4"), ("kh", "<u4"), ("kw", "<u4"),
                   ("cin", "<u4"), ("reserved", "<u4", (3,))])
assert HEADER.itemsize == 64

_f = np.float32


def to_nibbles(lo, hi):
    """uint8 bytes holding ``lo`` in the low nibble and ``hi`` in the high one (integers in
    [-8, 7], 4-bit two's complement)."""
    return (np.asarray(lo).astype(np.uint8) & 0x0F) | ((np.asarray(hi).astype(np.uint8) & 0x0F) << 4)


def from_nibbles(byte):
    """(low, high) int8 nibbles of uint8 ``byte``, sign-extended: ``to_nibbles``' inverse."""
    byte = np.asarray(byte, np.uint8)
    return (byte << 4).astype(np.int8) >> 4, byte.astype(np.int8) >> 4


def pack_rows(q):
    """int [rows, cols] in [-8, 7] -> uint8 [rows, ceil(cols / 2)]: column 2j in the low nibble of
    byte j, 2j + 1 in the high one (a missing last column is 0). The stored form of int4 tables
    (docs/formats.md 2.4)."""
    q = np.asarray(q)
    if q.shape[1] % 2:
        q = np.concatenate([q, np.zeros((q.shape[0], 1), q.dtype)], axis=1)
    return np.ascontiguousarray(to_nibbles(q[:, 0::2], q[:, 1::2]))


def unpack_rows(packed, cols):
    """uint8 [rows, ceil(cols / 2)] -> int8 [rows, cols] (``pack_rows``' inverse)."""
    lo, hi = from_nibbles(packed)
    return np.stack([lo, hi], axis=2).reshape(lo.shape[0], -1)[:, :cols]


def _round_up(v, m):
    return (v + m - 1) // m * m


def nblocks(k, block):
    return -(-int(k) // int(block))


def panel_bytes(k, block):
    """Bytes of one 32-channel panel: the nibbles of round_up(k, 4) k, 32 scales per block."""
    return _round_up(k, KR) * 16 + 128 * nblocks(k, block)


def check_block(block):
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) \
            or not 4 <= block <= BLOCK_MAX or block % 4:
        raise ValueError(f"block (group size) must be a multiple of 4 in 4..{BLOCK_MAX}, got {block!r}")
    return int(block)


# ----------------------------------------------------------------------------- arithmetic

def qgemm_acc(x, q, scales, block):
    """float32 acc[M, N] = sum over blocks, in order, of float32(16 d_b) * (s[n, b] * 0.0625):
    x uint8 [M, K] (raw bytes, zero point not subtracted), q int [K, N] in [-8, 7], scales
    float32 [N, nblk]."""
    x, q = np.asarray(x), np.asarray(q)
    s = np.asarray(scales, np.float32)
    K = x.shape[-1]
    acc = np.zeros((x.shape[0], q.shape[1]), np.float32)
    for b in range(nblocks(K, block)):
        k0, k1 = b * block, min(K, (b + 1) * block)
        d = x[:, k0:k1].astype(np.int64) @ q[k0:k1].astype(np.int64)
        s16 = s[:, b] * np.float32(0.0625)           # exact unless subnormal
        acc = acc + (16 * d).astype(np.float32) * s16   # two roundings: the product, the sum
    return acc


def epilogue(acc, offset, scale, bias=None, act=q8.ACT_NONE, alpha=0.0, beta=0.0, out_u8=True,
             y_inv_scale=1.0, zp_y=0):
    """float32 acc[..., N] -> y = (acc + offset) * scale (+ bias), act, uint8 or float32 out."""
    y = np.asarray(acc, np.float32) + np.asarray(offset, np.float32)
    y = y * np.asarray(scale, np.float32)
    if bias is not None:
        y = y + np.asarray(bias, np.float32)
    y = q8.activation(y, act, alpha, beta)
    if not out_u8:
        return y
    t = y * _f(y_inv_scale) + _f(zp_y)   # (numpy float32: two roundings, as the kernels)
    t = np.where(t > _f(0), t, _f(0))
    return np.rint(np.where(t < _f(255), t, _f(255))).astype(np.uint8)


def qgemm(x, q, scales, block, offset, scale, bias=None, act=q8.ACT_NONE, alpha=0.0, beta=0.0,
          out_u8=True, y_inv_scale=1.0, zp_y=0):
    """int4 GEMM: x uint8 [M, K], q [K, N], scales [N, nblk], offset / scale / bias [N]."""
    return epilogue(qgemm_acc(x, q, scales, block), offset, scale, bias, act, alpha, beta, out_u8,
                    y_inv_scale, zp_y)


def conv_matrix(q):
    """ONNX conv weight [Cout, Cin/g, KH, KW] -> [Cout, K] with K in (ky, kx, c) order: the
    reduction order of the NHWC patches, along which the blocks run."""
    q = np.asarray(q)
    return q.transpose(0, 2, 3, 1).reshape(q.shape[0], -1)


def qconv2d_nhwc(x, q, scales, block, offset, scale, zp_x=0, strides=(1, 1), pads=(0, 0, 0, 0),
                 dilations=(1, 1), groups=1, bias=None, act=q8.ACT_NONE, alpha=0.0, beta=0.0,
                 out_u8=True, y_inv_scale=1.0, zp_y=0):
    """int4 conv, NHWC uint8 x (padding reads zp_x), q [Cout, Cin/g, KH, KW], scales
    [Cout, nblk] along each group's (ky, kx, c) order -> [N, OH, OW, Cout]."""
    x = np.asarray(x)
    cout, cin_g, kh, kw = np.shape(q)
    ng = cout // groups
    # raw patches: _patches gives x - zp_x with 0 in the padding, i.e. zp_x raw there
    pt = q8._patches(x, kh, kw, strides, pads, dilations, zp_x) + int(zp_x)
    N, OH, OW = pt.shape[:3]
    qm = conv_matrix(q)
    s = np.asarray(scales, np.float32)
    acc = np.empty((N, OH, OW, cout), np.float32)
    for g in range(groups):
        a = pt[..., g * cin_g:(g + 1) * cin_g].reshape(N * OH * OW, kh * kw * cin_g)
        sl = slice(g * ng, (g + 1) * ng)
        acc[..., sl] = qgemm_acc(a, qm[sl].T, s[sl], block).reshape(N, OH, OW, ng)
    return epilogue(acc, offset, scale, bias, act, alpha, beta, out_u8, y_inv_scale, zp_y)


# ----------------------------------------------------------------------------- packing

def fold_offset(q_kn, scales, block, bias=None, zp_x=0):
    """offset[n] = bias[n] - zp_x * sum_b s[n, b] * sum_{k in b} q[k, n] (float64, then float32):
    q_kn int [K, N], scales [N, nblk], bias in accumulator units (real bias / s_x) or None."""
    q_kn = np.asarray(q_kn, np.int64)
    K, N = q_kn.shape
    nb = nblocks(K, block)
    pad = nb * block - K
    colsum = np.pad(q_kn, ((0, pad), (0, 0))).reshape(nb, block, N).sum(axis=1)   # [nblk, N]
    z = (np.asarray(scales, np.float64) * colsum.T).sum(axis=1)
    b = np.zeros(N) if bias is None else np.asarray(bias, np.float64).reshape(N)
    return (b - int(zp_x) * z).astype(np.float32)


def _check_q(q, ndim):
    q = np.asarray(q)
    if q.dtype.kind not in "iu" or q.ndim != ndim:
        raise ValueError(f"q must be an integer array of rank {ndim}, got {q.dtype} {q.shape}")
    if q.size and (q.min() < QMIN or q.max() > QMAX):
        raise ValueError(f"int4 weights must be in [{QMIN}, {QMAX}], got {q.min()}..{q.max()}")
    return q.astype(np.int8)


def _check_scales(scales, n, nb):
    s = np.asarray(scales)
    if s.shape != (n, nb) or s.dtype.kind != "f":
        raise ValueError(f"scales must be a float array of shape ({n}, {nb}) (channel, block), "
                         f"got {s.dtype} {s.shape}")
    return s.astype(np.float32)


def _pack(qg, sg, block, offset, zp_x, kh, kw, cin):
    """qg int8 [G, K, n], sg float32 [G, n, nblk], offset float32 [G * n] -> packed bytes."""
    G, K, n = qg.shape
    nb, n_pad, k4 = nblocks(K, block), _round_up(n, NR), _round_up(K, KR)
    pb = panel_bytes(K, block)
    off = np.zeros((G, n_pad), np.float32)
    off[:, :n] = offset.reshape(G, n)
    qp = np.zeros((G, nb * block + KR, n_pad), np.int8)   # room for the last block's round-up
    qp[:, :K, :n] = qg
    sp = np.zeros((G, n_pad, nb), np.float32)
    sp[:, :n] = sg
    panels = np.zeros((G, n_pad // NR, pb), np.uint8)
    for b in range(nb):
        k0 = b * block
        len4 = min(block, k4 - k0)
        # [G, len4/4 steps, 4 k, n_pad/32 panels, 2 halves, 16 channels] -> [G, panel, step, 16, 4]
        blk = qp[:, k0:k0 + len4].reshape(G, len4 // KR, KR, n_pad // NR, 2, 16)
        byte = to_nibbles(blk[:, :, :, :, 0], blk[:, :, :, :, 1])       # [G, steps, 4, P, 16]
        byte = byte.transpose(0, 3, 1, 4, 2).reshape(G, n_pad // NR, len4 * 16)
        at = b * (block * 16 + 128)
        panels[:, :, at:at + len4 * 16] = byte
        scl = sp[:, :, b].reshape(G, n_pad // NR, NR).astype("<f4")
        panels[:, :, at + len4 * 16:at + len4 * 16 + 128] = scl.view(np.uint8).reshape(G, n_pad // NR, 128)
    h = np.zeros((), HEADER)
    for name, v in dict(magic=MAGIC, version=VERSION, groups=G, n=n, k=K, n_pad=n_pad, block=block,
                        nblk=nb, panel_bytes=pb, zp_x=zp_x, kh=kh, kw=kw, cin=cin).items():
        h[name] = v
    return np.frombuffer(h.tobytes() + off.astype("<f4").tobytes() + panels.tobytes(),
                         np.uint8).copy()


def pack_gemm_qb4w(q, scales, block, bias=None, zp_x=0):
    """Pack GEMM weights q int [K, N] in [-8, 7] (C = A @ (q * s)) with scales float [N, nblk],
    the block size, a bias in accumulator units (real bias / s_x; None: 0) and the activation zero
    point, both folded into the stored offset. Returns a 1-D uint8 array (docs/formats.md)."""
    block = check_block(block)
    q = _check_q(q, 2)
    K, N = q.shape
    s = _check_scales(scales, N, nblocks(K, block))
    zp_x = q8._check_zp(zp_x)
    return _pack(q[None], s[None], block, fold_offset(q, s, block, bias, zp_x), zp_x, 0, 0, K)


def pack_conv_qb4w(q, scales, block, bias=None, zp_x=0, groups=1):
    """Pack conv weights q int [Cout, Cin/groups, KH, KW] (ONNX layout) with scales
    [Cout, nblk] whose blocks run along each group's (ky, kx, c) reduction order."""
    block = check_block(block)
    q = _check_q(q, 4)
    cout, cin_g, kh, kw = q.shape
    if groups < 1 or cout % groups:
        raise ValueError(f"groups ({groups}) must divide the {cout} output channels")
    ng, K = cout // groups, kh * kw * cin_g
    s = _check_scales(scales, cout, nblocks(K, block))
    zp_x = q8._check_zp(zp_x)
    qg = conv_matrix(q).reshape(groups, ng, K).transpose(0, 2, 1)        # [G, K, n]
    b = None if bias is None else np.asarray(bias, np.float64).reshape(groups, ng)
    off = np.concatenate([fold_offset(qg[g], s[g * ng:(g + 1) * ng], block,
                                      None if b is None else b[g], zp_x) for g in range(groups)])
    return _pack(qg, s.reshape(groups, ng, -1), block, off, zp_x, kh, kw, cin_g)


def read_header(packed):
    """The header of int4 packed weights as a dict (no validation beyond the size)."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 1 or packed.size < HEADER.itemsize:
        raise ValueError("packed weights must be a 1-D uint8 array of at least 64 bytes")
    h = np.frombuffer(packed[:HEADER.itemsize].tobytes(), HEADER)[0]
    return {name: h[name].tolist() for name in HEADER.names}


def unpack_qb4w(packed):
    """Inverse of the pack functions: {"header", "q" (int8, [K, N] GEMM or ONNX [Cout, Cin/g, KH,
    KW] conv), "scales" float32 [Cout, nblk], "offset" float32 [Cout] (folded, as stored),
    "block"}."""
    h = read_header(packed)
    if h["magic"] != MAGIC:
        raise ValueError(f"not int4 packed weights (magic {h['magic']:#x})")
    G, n, K, n_pad, block = h["groups"], h["n"], h["k"], h["n_pad"], h["block"]
    nb, pb, k4 = h["nblk"], h["panel_bytes"], _round_up(K, KR)
    off = np.frombuffer(packed[64:64 + 4 * G * n_pad].tobytes(), "<f4").reshape(G, n_pad)
    panels = np.asarray(packed[64 + 4 * G * n_pad:]).reshape(G, n_pad // NR, pb)
    qg = np.zeros((G, k4, n_pad), np.int8)
    sg = np.zeros((G, n_pad, nb), np.float32)
    for b in range(nb):
        k0, at = b * block, b * (block * 16 + 128)
        len4 = min(block, k4 - k0)
        byte = panels[:, :, at:at + len4 * 16].reshape(G, n_pad // NR, len4 // KR, 16, KR)
        both = np.stack(from_nibbles(byte), axis=3)                      # [G, P, steps, 2, 16, 4]
        qg[:, k0:k0 + len4] = both.transpose(0, 2, 5, 1, 3, 4).reshape(G, len4, n_pad)
        sc = panels[:, :, at + len4 * 16:at + len4 * 16 + 128].copy().view("<f4")
        sg[:, :, b] = sc.reshape(G, n_pad)
    qg = qg[:, :K, :n]
    scales = sg[:, :n].reshape(G * n, nb)
    kh, kw, cin = h["kh"], h["kw"], h["cin"]
    if kh == 0:
        qw = qg[0].copy()
    else:
        qw = qg.transpose(0, 2, 1).reshape(G * n, kh, kw, cin).transpose(0, 3, 1, 2).copy()
    return {"header": h, "q": qw, "scales": scales, "offset": off[:, :n].reshape(-1).copy(),
            "block": block}
