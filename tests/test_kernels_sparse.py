"""Sparse int8 kernels (qspmm_u8s8, qspconv2d_u8s8_nhwc) against the numpy integer reference, bit for
bit: the oracle is the dense int8 reference (qinfer.reference.quantized) applied to the same
pruned weights, since the sparse format changes the storage, not the arithmetic.

Every test runs at every ISA tier this machine can run (capped through qinfer.runtime.cpu) and at
1 and 2 threads (the thread threshold lowered so small shapes really split). Tolerance: none --
integer sums are exact and the epilogue is the int8 one. Shape classes come from the tiles: the
AVX-512 kernel re-packs 16-row groups (conv patches straight from the input when the channels per
group are a multiple of 64) into row blocks of up to 128 rows (8 groups) and K into blocks
of whole 64-group pointer segments (64 KiB of re-packed rows: K above 512 at 128 rows takes several,
so the parked sums are used), channels in units of 16 and blocks of 256; the AVX2 kernel works on
32-row blocks. Densities: 0 (every weight zero), 1 (no block pruned), one non-zero block per
channel, random densities; K multiple of 4 and not (a K tail block).
"""
import re

import numpy as np
import pytest

from qinfer import QinferError
from qinfer._ext import _kernels as K
from qinfer.reference import quantized as Q
from qinfer.reference import sparse as S
from qinfer.runtime import cpu
from test_kernels_int8 import isa, nt, out_u8  # noqa: F401  (the ISA, 1/2-thread, u8/f32 fixtures)

ACTS = [(Q.ACT_NONE, 0.0, 0.0), (Q.ACT_RELU, 0.0, 0.0), (Q.ACT_CLIP, -0.5, 2.5),
        (Q.ACT_HARDSWISH, 0.0, 0.0), (Q.ACT_SIGMOID, 0.0, 0.0), (Q.ACT_HARDSIGMOID, 0.2, 0.5),
        (Q.ACT_SILU, 0.0, 0.0)]
ACT_IDS = [Q.ACT_NAMES[a[0]] for a in ACTS]


def prune_blocks(w_kn, density, rng):
    """Zero whole 1x4 blocks along K of w[K, N]: "zero" (all), "dense" (none), "one" (exactly one
    non-zero block per channel), or a float: each block kept with that probability."""
    K_, N = w_kn.shape
    kg = (K_ + 3) // 4
    if density == "zero":
        keep = np.zeros((kg, N), bool)
    elif density == "dense":
        keep = np.ones((kg, N), bool)
    elif density == "one":
        keep = np.zeros((kg, N), bool)
        keep[rng.integers(0, kg, N), np.arange(N)] = True
    else:
        keep = rng.random((kg, N)) < density
    mask = np.repeat(keep, 4, axis=0)[:K_]
    w = np.where(mask, w_kn, 0).astype(np.int8)
    if density == "dense":   # no zero weight anywhere: every block really is non-zero
        w[w == 0] = 1
    if density == "one":
        w[mask & (w == 0)] = -1
    return w


def _qparams(rng, n, k):
    bias = rng.integers(-3000, 3000, n).astype(np.int32)
    zp = int(rng.integers(0, 256))
    scale = (rng.uniform(0.5, 2.0, n) / (40.0 * 127 * np.sqrt(max(k, 1)))).astype(np.float32)
    return bias, zp, scale


def _out_kw(out_u8, act=(0, 0.0, 0.0), y_inv_scale=40.0, zp_y=100):
    kw = dict(activation=act[0], alpha=act[1], beta=act[2], y_inv_scale=y_inv_scale, zp_y=zp_y,
              out_dtype=np.uint8 if out_u8 else np.float32)
    ref = dict(act=act[0], alpha=act[1], beta=act[2], out_u8=out_u8, y_inv_scale=y_inv_scale,
               zp_y=zp_y)
    return kw, ref


def _gemm(nt, out_u8, M, Kd, N, density, rng, act=(0, 0.0, 0.0), x=None, w=None, seg=S.SEG,
          scale_up=1.0):
    if w is None:
        w = prune_blocks(rng.integers(-127, 128, (Kd, N)).astype(np.int8), density, rng)
    x = rng.integers(0, 256, (M, Kd)).astype(np.uint8) if x is None else x
    bias, zp, scale = _qparams(rng, N, Kd)
    scale = (scale * np.float32(scale_up)).astype(np.float32)
    kw, rkw = _out_kw(out_u8, act)
    packed = S.pack_gemm_sb4w(w, bias, zp, seg=seg)
    got = K.qspmm_u8s8(x, packed, scale, num_threads=nt, **kw)
    np.testing.assert_array_equal(got, Q.qgemm(x, w, scale, bias, zp, **rkw))
    # and the dense int8 kernel on the same weights
    dense = K.qgemm_u8s8(x, Q.pack_gemm_qc8w(w, bias, zp), scale, num_threads=nt, **kw)
    np.testing.assert_array_equal(got, dense)
    # the session's prepared call: the same bytes
    np.testing.assert_array_equal(K.QLayerCall("spgemm", packed, scale, num_threads=nt, **kw)([x])[0],
                                  got)
    return got


GEMM_SHAPES = {  # id: (M, K, N)
    "m1_k1_n1": (1, 1, 1),
    "below_tile": (3, 3, 7),
    "at_group": (16, 4, 16),
    "above_group": (17, 5, 17),
    "primes": (7, 63, 65),
    "k_tail": (63, 255, 33),
    "rows_65": (65, 64, 40),
    "rows_above_block": (129, 68, 20),
    "rows_many": (300, 36, 18),
    "m1_wide": (1, 300, 257),
    "k_several_blocks": (130, 1100, 24),
    "n_above_channel_block": (20, 40, 300),
}
DENSITIES = {"zero": "zero", "dense": "dense", "one_per_channel": "one", "d0.1": 0.1, "d0.35": 0.35,
             "d0.7": 0.7}


@pytest.mark.parametrize("density", list(DENSITIES.values()), ids=list(DENSITIES))
@pytest.mark.parametrize("shape", list(GEMM_SHAPES.values()), ids=list(GEMM_SHAPES))
def test_qspmm_shapes_densities(isa, nt, out_u8, shape, density, rng):
    _gemm(nt, out_u8, *shape, density, rng)


@pytest.mark.parametrize("seg", [1, 3, 64, 1000], ids=lambda s: f"seg{s}")
def test_qspmm_other_segment_sizes(isa, nt, seg, rng):
    """Any segment length of the pointer table (the packer writes 64) gives the same result."""
    _gemm(nt, True, 70, 530, 40, 0.3, rng, seg=seg)


@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_qspmm_activations(isa, nt, act, rng):
    _gemm(nt, True, 33, 96, 48, 0.4, rng, act)


@pytest.mark.parametrize("case", ["x255_w127", "x0_wm128", "x255_wm128", "x255_wm128_pruned"])
def test_qspmm_saturating_values(isa, nt, case, rng):
    """Extremes of the u8 x s8 products: exact int32 sums, then a large scale pushes the requantized
    bytes against both clamps."""
    M, Kd, N = 20, 130, 36
    xv, wv = {"x255_w127": (255, 127), "x0_wm128": (0, -128)}.get(case, (255, -128))
    x = np.full((M, Kd), xv, np.uint8)
    w = np.full((Kd, N), wv, np.int8)
    if case.endswith("pruned"):
        w = prune_blocks(w, 0.5, rng)
    for out_u8 in (True, False):
        _gemm(nt, out_u8, M, Kd, N, None, rng, x=x, w=w, scale_up=50.0)


def test_qspmm_big_layer_threads_identical(isa, rng):
    """A layer the drivers split by themselves (default thresholds): 1 thread == 2 threads."""
    w = prune_blocks(rng.integers(-127, 128, (1024, 256)).astype(np.int8), 0.2, rng)
    x = rng.integers(0, 256, (196, 1024)).astype(np.uint8)
    bias, zp, scale = _qparams(rng, 256, 1024)
    p = S.pack_gemm_sb4w(w, bias, zp)
    one = K.qspmm_u8s8(x, p, scale, num_threads=1)
    two = K.qspmm_u8s8(x, p, scale, num_threads=2)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one, Q.qgemm(x, w, scale, bias, zp))


# ----------------------------------------------------------------------------- conv

CONV_CASES = {  # id: (N, H, W, Cin, Cout, KH, KW, strides, pads, dilations, groups)
    "1x1_direct": (1, 5, 7, 20, 40, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "1x1_direct_batch2": (2, 4, 4, 64, 33, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "1x1_stride2": (1, 9, 8, 16, 24, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1), 1),
    "3x3_pad1": (1, 9, 11, 16, 17, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "3x3_stride2_pad": (2, 12, 9, 8, 35, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1),
    "3x3_c13_k_tail": (1, 7, 8, 13, 18, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "3x3_groups2": (1, 8, 8, 16, 12, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 2),
    "3x3_dilation2": (1, 11, 10, 8, 9, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2), 1),
    "7x7_stem_stride2": (1, 30, 30, 3, 64, 7, 7, (2, 2), (3, 3, 3, 3), (1, 1), 1),
    "rows_above_block": (1, 17, 17, 16, 20, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "k_several_blocks": (1, 12, 12, 128, 24, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    # 64 input channels per group: the patches are read in place (no im2col copy)
    "c64_3x3_stride2_pad_batch2": (2, 9, 11, 64, 20, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1),
    "c64_1x1_stride2": (1, 9, 9, 64, 16, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1), 1),
    "c128_groups2_dilation2": (1, 8, 9, 128, 24, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2), 2),
    "c64_rows_across_images": (3, 10, 10, 64, 17, 3, 3, (1, 1), (1, 0, 2, 1), (1, 1), 1),
    # stride 1, wide rows, few channels: the AVX-512 variant runs these from planes (the padded
    # input re-packed once per pixel; blocks of virtual rows across the padded width, the kw - 1
    # columns past out_w dropped); 12 channels keep the dense density on planes too
    "planes_3x3": (1, 5, 40, 64, 12, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "planes_rows_across_images": (3, 5, 40, 64, 13, 3, 3, (1, 1), (1, 0, 2, 1), (1, 1), 1),
    "planes_groups2_dilation2": (1, 7, 66, 128, 24, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2), 2),
    "planes_5x5_c192": (1, 6, 80, 192, 8, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 1),
    "planes_1x3_tall": (2, 21, 33, 64, 15, 1, 3, (1, 1), (0, 1, 0, 1), (1, 1), 1),
}


def _conv(nt, out_u8, case, density, rng, act=(0, 0.0, 0.0), x_fill=None, w_fill=None):
    N, H, W, Cin, Cout, KH, KW, st, pads, dil, G = case
    cg = Cin // G
    x = (rng.integers(0, 256, (N, H, W, Cin)).astype(np.uint8) if x_fill is None
         else np.full((N, H, W, Cin), x_fill, np.uint8))
    w = (rng.integers(-127, 128, (Cout, cg, KH, KW)).astype(np.int8) if w_fill is None
         else np.full((Cout, cg, KH, KW), w_fill, np.int8))
    # prune in the kernels' K order, (ky, kx, c) per group
    ng = Cout // G
    wk = w.reshape(G, ng, cg, KH, KW).transpose(0, 3, 4, 2, 1).reshape(G, KH * KW * cg, ng)
    wk = np.stack([prune_blocks(wk[g], density, rng) for g in range(G)])
    w = wk.reshape(G, KH, KW, cg, ng).transpose(0, 4, 3, 1, 2).reshape(Cout, cg, KH, KW)
    bias, zp, scale = _qparams(rng, Cout, KH * KW * cg)
    kw, rkw = _out_kw(out_u8, act)
    packed = S.pack_conv_sb4w(w, bias, zp, G)
    got = K.qspconv2d_u8s8_nhwc(x, packed, scale, st, pads, dil, num_threads=nt, **kw)
    ref = Q.qconv2d_nhwc(x, w, scale, bias, zp, st, pads, dil, G, **rkw)
    np.testing.assert_array_equal(got, ref)
    dense = K.qconv2d_u8s8_nhwc(x, Q.pack_conv_qc8w(w, bias, zp, G), scale, st, pads, dil,
                                num_threads=nt, **kw)
    np.testing.assert_array_equal(got, dense)
    call = K.QLayerCall("spconv", packed, scale, strides=st, pads=pads, dilations=dil,
                        num_threads=nt, **kw)
    np.testing.assert_array_equal(call([x])[0], got)


@pytest.mark.parametrize("density", [0.25, "one", "dense", "zero"], ids=["d0.25", "one", "dense",
                                                                        "zero"])
@pytest.mark.parametrize("case", list(CONV_CASES.values()), ids=list(CONV_CASES))
def test_qspconv_cases(isa, nt, out_u8, case, density, rng):
    _conv(nt, out_u8, case, density, rng)


@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_qspconv_activations(isa, nt, act, rng):
    _conv(nt, True, CONV_CASES["3x3_stride2_pad"], 0.3, rng, act)


@pytest.mark.parametrize("fill", [(255, 127), (0, -128), (255, -128)],
                         ids=["x255_w127", "x0_wm128", "x255_wm128"])
def test_qspconv_saturating(isa, nt, fill, rng):
    _conv(nt, True, CONV_CASES["3x3_pad1"], 0.5, rng, x_fill=fill[0], w_fill=fill[1])


# ----------------------------------------------------------------------------- format

def test_pack_roundtrip_header_and_density(rng):
    w = prune_blocks(rng.integers(-127, 128, (70, 33)).astype(np.int8), 0.3, rng)
    bias = rng.integers(-100, 100, 33).astype(np.int32)
    p = S.pack_gemm_sb4w(w, bias, 7)
    h = S.read_header(p)
    kg = 18
    assert (h["magic"], h["version"], h["groups"], h["n"], h["k"], h["n_pad"], h["kg"]) == (
        S.MAGIC, 1, 1, 33, 70, 48, kg)
    assert h["nnzb"] == int(S.block_mask(w).sum())
    assert h["rec_off"] % 64 == 0 and p.size == h["rec_off"] + 8 * h["nnzb"]
    assert S.problems(p) is None and S.is_sparse(p)
    u = S.unpack_sb4w(p)
    np.testing.assert_array_equal(u["w"], w)
    np.testing.assert_array_equal(u["bias_q"], bias)
    assert u["density"] == pytest.approx(h["nnzb"] / (33 * kg))
    assert S.density(w) == pytest.approx(u["density"])
    wc = rng.integers(-127, 128, (12, 3, 3, 3)).astype(np.int8)
    wc[:, :2] = 0
    pc = S.pack_conv_sb4w(wc, None, 5, groups=3)
    np.testing.assert_array_equal(S.unpack_sb4w(pc)["w"], wc)
    assert not S.is_sparse(Q.pack_gemm_qc8w(w, bias, 7))


def _corrupt(p, what):
    """A copy of packed weights with one kind of damage the loader must refuse."""
    h = S.read_header(p)
    ptr_off, entries, rec_off, _ = S.layout(h)
    q = p.copy()
    kb = q[rec_off:].view("<u4")[0::2]
    ptr = q[ptr_off:ptr_off + 4 * entries].view("<u4")
    if what == "kb_out_of_range":
        kb[0] = 0xFFFFFFF0
    elif what == "kb_unsorted":
        kb[0], kb[1] = kb[1], kb[0]
    elif what == "ptr_past_end":
        ptr[3] = 0xFFFFFFFF
    elif what == "ptr_decreasing":
        ptr[5] = 0
    elif what == "tail_weight":
        q[rec_off:].view(S.RECORD)[-1]["w"][3] = 5
    return q


@pytest.mark.parametrize("what", ["kb_out_of_range", "kb_unsorted", "ptr_past_end", "ptr_decreasing",
                                  "tail_weight"])
def test_malformed_lists_refused_by_loader_and_harmless_to_kernels(isa, what, rng):
    """problems() (what qinfer.ir.verify runs at load) names the damage; the kernels, which check
    only the header per call, clamp what they read: a wrong result, never a bad access."""
    w = prune_blocks(rng.integers(-127, 128, (66, 20)).astype(np.int8), 0.6, rng)
    w[64:, -1] = 3   # the last channel's tail block (k = 64, 65) is non-zero
    w[64:, :-1] = 0
    p = S.pack_gemm_sb4w(w, None, 9)
    bad = _corrupt(p, what)
    assert S.problems(bad) is not None
    with pytest.raises(ValueError, match="sparse packed weights"):
        S.unpack_sb4w(bad)
    x = rng.integers(0, 256, (40, 66)).astype(np.uint8)
    for nt_ in (1, 2):
        y = K.qspmm_u8s8(x, bad, np.ones(20, np.float32), num_threads=nt_)
        assert y.shape == (40, 20)


def test_validation_errors(rng):
    w = prune_blocks(rng.integers(-127, 128, (10, 6)).astype(np.int8), 0.5, rng)
    p = S.pack_gemm_sb4w(w, None, 3)
    a = rng.integers(0, 256, (4, 10)).astype(np.uint8)
    s = np.ones(6, np.float32)
    err = K.SparseKernelError
    assert issubclass(err, QinferError) and issubclass(err, ValueError)
    with pytest.raises(err, match="K = 10 columns"):
        K.qspmm_u8s8(a[:, :9].copy(), p, s)
    with pytest.raises(err, match="uint8 array of rank 2"):
        K.qspmm_u8s8(a.astype(np.int8), p, s)
    with pytest.raises(err, match="scale must have 6 elements"):
        K.qspmm_u8s8(a, p, np.ones(5, np.float32))
    with pytest.raises(err, match="activation code"):
        K.qspmm_u8s8(a, p, s, activation=9)
    with pytest.raises(err, match="num_threads"):
        K.qspmm_u8s8(a, p, s, num_threads=0)
    with pytest.raises(err, match="magic"):
        K.qspmm_u8s8(a, Q.pack_gemm_qc8w(w, None, 3), s)
    # the session's prepared call raises the same class, at construction or per call
    with pytest.raises(err, match="scale must have 6 elements"):
        K.QLayerCall("spgemm", p, np.ones(5, np.float32))
    with pytest.raises(err, match="magic"):
        K.QLayerCall("spgemm", Q.pack_gemm_qc8w(w, None, 3), s)
    with pytest.raises(err, match="GEMM weights"):
        K.QLayerCall("spconv", p, s)
    call = K.QLayerCall("spgemm", p, s)
    with pytest.raises(err, match="K = 10 columns"):
        call([a[:, :9].copy()])
    assert call([a.astype(np.int8)]) is None
    wc = prune_blocks(rng.integers(-127, 128, (18, 6)).astype(np.int8), 0.5, rng)
    conv = K.QLayerCall("spconv", S.pack_conv_sb4w(wc.T.reshape(6, 2, 3, 3), None, 3), s,
                        pads=(1, 1, 1, 1))
    with pytest.raises(err, match="2 channels"):
        conv([rng.integers(0, 256, (1, 4, 4, 3)).astype(np.uint8)])
    old = p.copy()
    old[4] = 2
    with pytest.raises(err, match="format version 2, this build reads 1"):
        K.qspmm_u8s8(a, old, s)
    with pytest.raises(err, match="the header says"):
        K.qspmm_u8s8(a, p[:-1].copy(), s)
    with pytest.raises(err, match="shorter than the 64-byte header"):
        K.qspmm_u8s8(a, p[:40].copy(), s)
    hdr = p.copy()
    hdr[24] = 99   # kg
    with pytest.raises(err, match="inconsistent sparse header"):
        K.qspmm_u8s8(a, hdr, s)
    with pytest.raises(err, match="packed_w holds GEMM weights"):
        K.qspconv2d_u8s8_nhwc(rng.integers(0, 256, (1, 3, 3, 10)).astype(np.uint8), p, s)
    with pytest.raises(err, match="overflow the int32"):
        big = S.pack_gemm_sb4w(np.ones((65800, 1), np.int8), None, 0)
        K.qspmm_u8s8(np.zeros((1, 65800), np.uint8), big, np.ones(1, np.float32))
    pc = S.pack_conv_sb4w(rng.integers(-127, 128, (8, 2, 3, 3)).astype(np.int8), None, 0, groups=2)
    with pytest.raises(err, match="must have 4 channels"):
        K.qspconv2d_u8s8_nhwc(rng.integers(0, 256, (1, 5, 5, 3)).astype(np.uint8), pc,
                              np.ones(8, np.float32))
    with pytest.raises(err, match="larger than the padded input"):
        K.qspconv2d_u8s8_nhwc(rng.integers(0, 256, (1, 2, 2, 4)).astype(np.uint8), pc,
                              np.ones(8, np.float32))
    with pytest.raises(err, match="packed_w holds conv weights"):
        K.qspmm_u8s8(a, pc, s)


def test_empty_batch_and_slot():
    w = np.ones((8, 5), np.int8)
    p = S.pack_gemm_sb4w(w, None, 0)
    y = K.qspmm_u8s8(np.zeros((0, 8), np.uint8), p, np.ones(5, np.float32))
    assert y.shape == (0, 5)
    assert cpu.kernel_table()["spmm_qu8_sb4w"].startswith("qi_spmm_qu8_sb4w__")


# ----------------------------------------------------------------------------- model level

def _conv_net(rng):
    """x [N, 16, 12, 12] -> conv 3x3 (16 -> 32, pad 1) -> relu -> conv 3x3 stride 2 pad 1 (32 -> 64)
    -> relu -> conv 1x1 (64 -> 64) -> relu -> global average pool -> Gemm (64 -> 10)."""
    import qinfer
    from qinfer.ir.graph import Graph, Node, Value
    f = np.float32
    init = {"w1": (rng.standard_normal((32, 16, 3, 3)) * 0.2).astype(f),
            "b1": rng.standard_normal(32).astype(f) * 0.1,
            "w2": (rng.standard_normal((64, 32, 3, 3)) * 0.1).astype(f),
            "w3": (rng.standard_normal((64, 64, 1, 1)) * 0.2).astype(f),
            "wf": (rng.standard_normal((10, 64)) * 0.3).astype(f), "bf": np.zeros(10, f)}
    c3 = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "group": 1}
    nodes = [Node("Conv", ("x", "w1", "b1"), ("c1",), dict(c3, strides=[1, 1]), "conv1"),
             Node("Relu", ("c1",), ("r1",), {}, "relu1"),
             Node("Conv", ("r1", "w2"), ("c2",), dict(c3, strides=[2, 2]), "conv2"),
             Node("Relu", ("c2",), ("r2",), {}, "relu2"),
             Node("Conv", ("r2", "w3"), ("c3",), {"kernel_shape": [1, 1], "group": 1}, "conv3"),
             Node("Relu", ("c3",), ("r3",), {}, "relu3"),
             Node("GlobalAveragePool", ("r3",), ("p",), {}, "gap"),
             Node("Flatten", ("p",), ("fl",), {"axis": 1}, "flatten"),
             Node("Gemm", ("fl", "wf", "bf"), ("y",), {"transB": 1}, "fc")]
    g = Graph("sparse_net", nodes, [Value("x", "float32", ("batch", 16, 12, 12))],
              [Value("y", "float32", ("batch", 10))], init)
    return qinfer.Model(g)


def test_pruned_int8_net_sparse_equals_forced_dense(rng, monkeypatch, tmp_path):
    """A conv net pruned to 80% block4 and quantized int8: its pruned convs are packed sparse and run
    on the sparse kernels; the outputs are bit-identical to the same model quantized dense (the
    threshold forced to 0), at 1 and 2 threads and through a saved file; summary() says which
    layers are sparse and their density."""
    import qinfer
    from qinfer.quant import quantize as qz
    from qinfer.reference.executor import run_graph
    m = _conv_net(rng)
    p = qinfer.prune(m, 0.8, pattern="block4", progress=False)
    calib = [rng.standard_normal((2, 16, 12, 12)).astype(np.float32) for _ in range(4)]
    sq = qinfer.quantize(p, calib, max_error=1.0, progress=False)
    monkeypatch.setattr(qz, "SPARSE_MAX_DENSITY", 0.0)
    dq = qinfer.quantize(p, calib, max_error=1.0, progress=False)
    sparse_layers = [n.name for n in sq.graph.nodes if n.op in ("QConv", "QGemm")
                     and S.is_sparse(sq.graph.initializers[n.inputs[1]])]
    assert {"conv1", "conv2", "conv3"} <= set(sparse_layers), sparse_layers
    # the classifier head gets one row per sample: 15 of the sparse kernel's 16 row lanes would idle
    assert "fc" not in sparse_layers
    assert not any(S.is_sparse(dq.graph.initializers[n.inputs[1]]) for n in dq.graph.nodes
                   if n.op in ("QConv", "QGemm"))
    for name in sparse_layers:
        n = next(n for n in sq.graph.nodes if n.name == name)
        assert S.unpack_sb4w(sq.graph.initializers[n.inputs[1]])["density"] == pytest.approx(0.2, abs=0.02)
    report = {r["layer"]: r for r in sq.graph.metadata["precision_report"]}
    assert report["conv2"]["sparse"]["pattern"] == "block4"
    assert sq.graph.metadata["quantization"]["sparse_layers"] == len(sparse_layers)
    text = sq.summary()
    assert re.search(r"conv2 +QConv +int8-sparse +block4, density 1\d\.\d%", text), text
    x = rng.standard_normal((3, 16, 12, 12)).astype(np.float32)
    path = tmp_path / "sparse.qinf"
    sq.save(path)
    loaded = qinfer.load(path)
    ref = run_graph(sq.graph, {"x": x})["y"]   # the numpy oracle (dense int8 arithmetic)
    for nt_ in (1, 2):
        want = qinfer.InferenceSession(dq, num_threads=nt_).run(None, {"x": x})[0]
        for model in (sq, loaded):
            got = qinfer.InferenceSession(model, num_threads=nt_).run(None, {"x": x})[0]
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(ref, want)


def test_hostile_sparse_weights_refused_at_load(rng, tmp_path):
    """Sparse block lists damaged (a block index past K): the graph checks that run at load (and
    save) name the weights, so such a file raises ModelFormatError and never reaches a kernel."""
    import qinfer
    from qinfer.ir import serialize, verify
    m = _conv_net(rng)
    p = qinfer.prune(m, 0.8, pattern="block4", progress=False)
    sq = qinfer.quantize(p, [rng.standard_normal((1, 16, 12, 12)).astype(np.float32)],
                         max_error=1.0, progress=False)
    g = sq.graph.copy()
    n = next(n for n in g.nodes if n.name == "conv2")
    bad = g.initializers[n.inputs[1]].copy()
    h = S.read_header(bad)
    bad[h["rec_off"]:].view("<u4")[0] = h["kg"] + 5
    g.initializers[n.inputs[1]] = bad
    assert any("block index" in msg for msg in verify.problems(g))   # what load runs
    with pytest.raises(qinfer.ModelFormatError, match="block index"):
        serialize.save(g, str(tmp_path / "bad.qinf"))                 # (save checks too)
