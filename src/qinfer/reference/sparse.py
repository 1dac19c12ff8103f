"""Sparse int8 weights pruned in 1x4 blocks along K ("block4", format SB4W): the numpy pack / unpack
of the sparse kernels' layout, its validation, and the block density.

Design: the arithmetic is the int8 scheme unchanged (reference/quantized.py): acc = bias_q[n] +
sum_k (x[m, k] - zp_x) * w[k, n] over the same int8 weights, so the oracle of the sparse kernels is
the dense int8 reference applied to the unpacked (zero-filled) weights, and a sparse QGemm / QConv
computes exactly what the dense one computes on the same weights. What changes is the storage:
per output channel only the blocks of 4 consecutive k (k = 4 kb .. 4 kb + 3, the K order of the
int8 kernels: (ky, kx, c) for a conv) that hold a non-zero weight, as (kb, 4 int8) records sorted
by kb, with a pointer table that cuts each channel's list into K segments of ``SEG`` groups.

Layout (docs/formats.md, "sparse int8 packed weights"; C mirror struct qi_sb4w_header in
kernels/include/qinfer/qsparse.h): 64-byte header, int32 bias[G n_pad] (folded: bias_q - zp_x *
colsum), int32 colsum[G n_pad], uint32 ptr[G n_pad nseg + 1], zeros to the 64-byte aligned
``rec_off``, then nnzb records {uint32 kb; int8 w[4]}.

``problems(packed)`` is the full check a loader makes (the kernels check only the header per call
and clamp what they read, so a malformed list gives wrong numbers, never a bad access; it must be
refused at load): sizes, a monotone pointer table that ends at nnzb, every kb in its segment and
below ceil(k / 4), strictly ascending within a channel, no block for a padding channel, zero
weights past k, and the int32 bound of the int8 scheme.
"""
import numpy as np

from .quantized import _check_w, _check_zp, _round_up, fold_bias
from .quantized import read_header as _read_header

MAGIC = 0x57344253  # b"SB4W"
VERSION = 1
NR = 16    # channels padded to a multiple of 16
SEG = 64   # K groups per pointer segment (256 K bytes: the AVX-512 kernel's K block at 64 rows)
HEADER = np.dtype([("magic", "<u4"), ("version", "<u4"), ("groups", "<u4"), ("n", "<u4"),
                   ("k", "<u4"), ("n_pad", "<u4"), ("kg", "<u4"), ("seg", "<u4"), ("nseg", "<u4"),
                   ("nnzb", "<u4"), ("zp_x", "<i4"), ("kh", "<u4"), ("kw", "<u4"), ("cin", "<u4"),
                   ("rec_off", "<u4"), ("reserved", "<u4")])
assert HEADER.itemsize == 64
RECORD = np.dtype([("kb", "<u4"), ("w", "i1", (4,))])
assert RECORD.itemsize == 8


def is_sparse(packed):
    """True when ``packed`` (a 1-D uint8 array) starts with the SB4W magic."""
    return (isinstance(packed, np.ndarray) and packed.dtype == np.uint8 and packed.ndim == 1
            and packed.size >= 4 and int(packed[:4].view("<u4")[0]) == MAGIC)


def layout(h):
    """(ptr offset, pointer entries, rec_off, total bytes) of a header dict (Python integers)."""
    cols = int(h["groups"]) * int(h["n_pad"])
    entries = cols * int(h["nseg"]) + 1
    ptr_off = HEADER.itemsize + 8 * cols
    rec_off = _round_up(ptr_off + 4 * entries, 64)
    return ptr_off, entries, rec_off, rec_off + RECORD.itemsize * int(h["nnzb"])


def read_header(packed):
    """The header as a dict (no validation beyond the size)."""
    return _read_header(packed, HEADER)


def block_mask(w_kn):
    """[kg, N] bool: which 1x4 blocks along K of w[K, N] hold a non-zero weight."""
    w_kn = np.asarray(w_kn)
    K, N = w_kn.shape
    kg = (K + 3) // 4
    wp = np.zeros((kg * 4, N), bool)
    wp[:K] = w_kn != 0
    return wp.reshape(kg, 4, N).any(axis=1)


def density(w_kn):
    """Fraction of the 1x4 blocks along K of w[K, N] that hold a non-zero weight (1.0 if empty)."""
    m = block_mask(w_kn)
    return float(m.mean()) if m.size else 1.0


def _pack(wg, bias, zp_x, kh, kw, cin, seg=SEG):
    """wg int8 [G, K, n] (K in (ky, kx, c) order) -> packed uint8 bytes."""
    G, K, n = wg.shape
    n_pad, kg = _round_up(max(n, 1), NR), (max(K, 1) + 3) // 4
    nseg = (kg + seg - 1) // seg
    folded, colsum = fold_bias(wg, bias, zp_x, n_pad)
    wp = np.zeros((G, kg * 4, n_pad), np.int8)
    wp[:, :K, :n] = wg
    blocks = wp.reshape(G, kg, 4, n_pad).transpose(0, 3, 1, 2)   # [G, n_pad, kg, 4]
    gi, ji, kbi = np.nonzero(blocks.any(axis=3))                 # C order: channel, then kb
    rec = np.zeros(gi.size, RECORD)
    rec["kb"] = kbi
    rec["w"] = blocks[gi, ji, kbi]
    counts = np.bincount((gi * n_pad + ji) * nseg + kbi // seg, minlength=G * n_pad * nseg)
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype("<u4")
    h = np.zeros((), HEADER)
    fields = dict(magic=MAGIC, version=VERSION, groups=G, n=n, k=K, n_pad=n_pad, kg=kg, seg=seg,
                  nseg=nseg, nnzb=gi.size, zp_x=zp_x, kh=kh, kw=kw, cin=cin)
    ptr_off, entries, rec_off, total = layout(fields)
    fields["rec_off"] = rec_off
    for name, v in fields.items():
        h[name] = v
    head = (h.tobytes() + folded.astype("<i4").tobytes() + colsum.astype("<i4").tobytes()
            + ptr.tobytes())
    out = np.zeros(total, np.uint8)
    out[:len(head)] = np.frombuffer(head, np.uint8)
    out[rec_off:] = rec.view(np.uint8)
    return out


def pack_gemm_sb4w(w, bias=None, zp_x=0, seg=SEG):
    """Pack GEMM weights w int8 [K, N] (C = A @ w) with bias_q int32 [N] and the activation zero
    point (folded into the bias), keeping the non-zero 1x4 blocks along K. Returns a 1-D uint8
    array (docs/formats.md)."""
    w = _check_w(w, 2, "w")
    K, N = w.shape
    return _pack(w[None], bias, _check_zp(zp_x), 0, 0, K, _check_seg(seg))


def conv_matrices(w, groups=1):
    """[G, K, Cout/G] per-group reduction matrices of a conv weight [Cout, Cin/G, KH, KW] (ONNX), K
    in the kernels' (ky, kx, c) order: the matrices whose 1x4 blocks the sparse layout stores."""
    cout, cin_g, kh, kw = w.shape
    if groups < 1 or cout % groups:
        raise ValueError(f"groups ({groups}) must divide the {cout} output channels")
    ng = cout // groups
    return w.reshape(groups, ng, cin_g, kh, kw).transpose(0, 3, 4, 2, 1).reshape(
        groups, kh * kw * cin_g, ng)


def pack_conv_sb4w(w, bias=None, zp_x=0, groups=1, seg=SEG):
    """Pack conv weights w int8 [Cout, Cin/groups, KH, KW] (ONNX layout) for the NHWC sparse conv
    (K in (ky, kx, c) order, as the dense int8 conv)."""
    w = _check_w(w, 4, "w")
    _, cin_g, kh, kw = w.shape
    return _pack(conv_matrices(w, groups), bias, _check_zp(zp_x), kh, kw, cin_g, _check_seg(seg))


def layer_density(w, groups=1):
    """Block density of a layer's int8 weights: GEMM w [K, N], or conv w [Cout, Cin/G, KH, KW]."""
    w = np.asarray(w)
    if w.ndim == 2:
        return density(w)
    masks = [block_mask(m) for m in conv_matrices(w, groups)]
    total = sum(m.size for m in masks)
    return float(sum(int(m.sum()) for m in masks) / total) if total else 1.0


def _check_seg(seg):
    seg = int(seg)
    if not 1 <= seg <= 1 << 24:
        raise ValueError(f"seg must be in 1..2**24, got {seg}")
    return seg


def problems(packed):
    """What is wrong with sparse packed weights (a string), or None: every check of the module
    docstring, vectorized (O(non-zero blocks))."""
    if not (isinstance(packed, np.ndarray) and packed.dtype == np.uint8 and packed.ndim == 1):
        return "must be a 1-D uint8 array"
    if packed.size < HEADER.itemsize:
        return f"{packed.size} bytes is shorter than the 64-byte header"
    h = read_header(packed)
    if h["magic"] != MAGIC or h["version"] != VERSION:
        return (f"magic {h['magic']:#010x} version {h['version']} is not the sparse block4 layout "
                f"(SB4W) version {VERSION}")
    G, n, k, kh, kw, cin = h["groups"], h["n"], h["k"], h["kh"], h["kw"], h["cin"]
    kg, seg = h["kg"], h["seg"]
    if not (1 <= G <= 1 << 20 and 1 <= n <= 1 << 24 and 1 <= k <= 1 << 24
            and h["n_pad"] == _round_up(n, NR) and kg == (k + 3) // 4 and 1 <= seg <= 1 << 24
            and h["nseg"] == (kg + seg - 1) // seg and 0 <= h["zp_x"] <= 255):
        return f"inconsistent header {h}"
    if kh == 0:
        shape_ok = kw == 0 and cin == k and G == 1
    else:
        shape_ok = kw >= 1 and kh * kw * cin == k
    if not shape_ok:
        return f"inconsistent kernel shape in header {h}"
    if h["nnzb"] > G * n * kg:
        return f"{h['nnzb']} non-zero blocks, more than the {G * n * kg} the layer has"
    ptr_off, entries, rec_off, total = layout(h)
    if h["rec_off"] != rec_off or packed.size != total:
        return (f"{packed.size} bytes with records at {h['rec_off']}, the header says {total} with "
                f"records at {rec_off}")
    cols = G * h["n_pad"]
    bias = packed[64:64 + 4 * cols].view("<i4")
    if cols and int(np.max(np.abs(bias.astype(np.int64)))) + k * 255 * 128 >= 1 << 31:
        return f"K = {k} and its biases can overflow the int32 accumulator"
    ptr = packed[ptr_off:ptr_off + 4 * entries].view("<u4").astype(np.int64)
    counts = np.diff(ptr)
    if ptr[0] != 0 or ptr[-1] != h["nnzb"] or np.any(counts < 0):
        return "the pointer table is not monotone from 0 to the number of blocks"
    nseg = h["nseg"]
    per = counts.reshape(G, h["n_pad"], nseg)
    if np.any(per[:, n:]):
        return "a padding channel has blocks"
    rec = packed[rec_off:].view(RECORD)
    kb = rec["kb"].astype(np.int64)
    if kb.size and kb.max() >= kg:
        return f"a block index {int(kb.max())} is out of range (K has {kg} groups of 4)"
    owner = np.repeat(np.arange(entries - 1), counts)            # (channel, segment) of each record
    if np.any(kb // seg != owner % nseg):
        return "a block lies outside its K segment"
    same = owner[1:] == owner[:-1]
    if np.any(same & (kb[1:] <= kb[:-1])):
        return "a channel's blocks are not in strictly ascending K order"
    if k % 4 and kb.size:
        tail = rec["w"][kb == kg - 1][:, k % 4:]
        if np.any(tail):
            return f"a weight past K = {k} is not zero"
    return None


def unpack_sb4w(packed):
    """Inverse of the pack functions (after checking the bytes): {"header", "w" (original layout:
    [K, N] GEMM, ONNX [Cout, Cin/g, KH, KW] conv), "bias" (folded int32), "colsum", "bias_q"
    (bias + zp_x * colsum), "density" (non-zero blocks / all blocks)} -- the keys of
    quantized.unpack_qc8w, so the dense int8 reference runs the sparse weights."""
    bad = problems(packed)
    if bad:
        raise ValueError(f"sparse packed weights: {bad}")
    h = read_header(packed)
    G, n, k, n_pad, kg, nseg = h["groups"], h["n"], h["k"], h["n_pad"], h["kg"], h["nseg"]
    ptr_off, entries, rec_off, _ = layout(h)
    folded = packed[64:64 + 4 * G * n_pad].view("<i4").reshape(G, n_pad)
    colsum = packed[64 + 4 * G * n_pad:ptr_off].view("<i4").reshape(G, n_pad)
    ptr = packed[ptr_off:ptr_off + 4 * entries].view("<u4").astype(np.int64)
    rec = packed[rec_off:].view(RECORD)
    owner = np.repeat(np.arange(entries - 1), np.diff(ptr)) // nseg   # global channel g*n_pad + j
    blocks = np.zeros((G * n_pad, kg, 4), np.int8)
    blocks[owner, rec["kb"].astype(np.int64)] = rec["w"]
    wp = blocks.reshape(G, n_pad, kg * 4)[:, :n, :k].transpose(0, 2, 1)   # [G, K, n]
    kh, kw, cin = h["kh"], h["kw"], h["cin"]
    if kh == 0:
        w = np.ascontiguousarray(wp[0])
    else:
        w = wp.reshape(G, kh, kw, cin, n).transpose(0, 4, 3, 1, 2).reshape(G * n, cin, kh, kw).copy()
    bias = folded[:, :n].reshape(-1).astype(np.int32)
    cs = colsum[:, :n].reshape(-1).astype(np.int32)
    return {"header": h, "w": w, "bias": bias, "colsum": cs,
            "bias_q": (bias.astype(np.int64) + h["zp_x"] * cs.astype(np.int64)).astype(np.int32),
            "density": h["nnzb"] / float(G * n * kg)}

