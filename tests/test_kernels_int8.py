"""int8 kernels (qgemm_u8s8, qconv2d_u8s8_nhwc, qdwconv2d_u8s8_nhwc) against the numpy integer
reference qinfer.reference.quantized, bit for bit.

Every test runs at every ISA tier this machine can run (capped through qinfer.runtime.cpu) and at
1 and 2 threads. Tolerance: none. The integer part is exact and the float epilogue performs the
same IEEE operations in the same order as the reference (docs: kernels/include/qinfer/qint8.h),
so requantized uint8 and float32 outputs must be equal (np.testing.assert_array_equal).
Shape classes come from the tiles: the AVX-512 tile is 8 rows x 32 channels (AVX2 6 x 8), K in
groups of 4, K blocks of 512 bytes, N blocks of 256, row blocks of up to 256; depthwise works on
16 (AVX-512) / 8 (AVX2) channels at a time.
"""
import numpy as np
import pytest

from qinfer._ext import _kernels as K
from qinfer.reference import quantized as Q
from qinfer.runtime import cpu

ISAS = cpu.supported_isas()
THREADS = (1, 2)
ACTS = [(Q.ACT_NONE, 0.0, 0.0), (Q.ACT_RELU, 0.0, 0.0), (Q.ACT_CLIP, -0.5, 2.5),
        (Q.ACT_HARDSWISH, 0.0, 0.0), (Q.ACT_SIGMOID, 0.0, 0.0), (Q.ACT_HARDSIGMOID, 0.2, 0.5),
        (Q.ACT_SILU, 0.0, 0.0)]
ACT_IDS = [Q.ACT_NAMES[a[0]] for a in ACTS]


@pytest.fixture(params=ISAS)
def isa(request):
    with cpu.isa_cap(request.param):
        yield request.param


@pytest.fixture(params=THREADS, ids=lambda t: f"{t}thr")
def nt(request):
    # test shapes are small: without this the drivers would run most of them on one thread
    prev = K.qint8_set_min_work(1)
    try:
        yield request.param
    finally:
        K.qint8_set_min_work(prev)


@pytest.fixture(params=[True, False], ids=["u8", "f32"])
def out_u8(request):
    return request.param


def _data(rng, shape, lo=0, hi=255, dtype=np.uint8):
    return rng.integers(lo, hi + 1, shape).astype(dtype)


def _qparams(rng, n, k):
    """bias_q int32 [n], zp_x, scale [n] sized so outputs span the u8 range (y ~ O(1..10))."""
    bias = rng.integers(-3000, 3000, n).astype(np.int32)
    zp = int(rng.integers(0, 256))
    scale = (rng.uniform(0.5, 2.0, n) / (40.0 * 127 * np.sqrt(max(k, 1)))).astype(np.float32)
    return bias, zp, scale


def _out_kw(out_u8, act=(0, 0.0, 0.0), y_inv_scale=40.0, zp_y=100):
    """y ~ +-2 (std) -> t = 40 y + 100: the bytes span 0..255 and both clamps are hit."""
    kw = dict(activation=act[0], alpha=act[1], beta=act[2], y_inv_scale=y_inv_scale, zp_y=zp_y)
    ref = dict(act=act[0], alpha=act[1], beta=act[2], out_u8=out_u8, y_inv_scale=y_inv_scale,
               zp_y=zp_y)
    kw["out_dtype"] = np.uint8 if out_u8 else np.float32
    return kw, ref


# ----------------------------------------------------------------------------- GEMM

GEMM_SHAPES = {  # id: (M, K, N)
    "m1_k1_n1": (1, 1, 1),
    "below_tile": (3, 3, 7),
    "at_tile": (8, 4, 32),
    "above_tile": (9, 5, 33),
    "primes": (17, 63, 65),
    "k_tail": (7, 255, 63),
    "m1_wide": (1, 300, 257),
    "rows_above_mc": (261, 64, 40),
    "k_above_kc": (20, 1031, 70),
    "n_above_nc": (16, 64, 289),
    "big": (131, 600, 300),
    "k1024_stride_copy": (21, 1024, 40),
    "n24_half_panel": (29, 96, 24),      # a panel's second half of 8 channels: 256-bit
    "n48_empty_half": (19, 40, 48),      # a second panel of 16 channels: one half
    "n56_k_tail": (10, 17, 56),
}


@pytest.mark.parametrize("shape", list(GEMM_SHAPES.values()), ids=list(GEMM_SHAPES))
def test_qgemm_shapes(isa, nt, out_u8, shape, rng):
    M, Kd, N = shape
    a, w = _data(rng, (M, Kd)), _data(rng, (Kd, N), -127, 127, np.int8)
    bias, zp, scale = _qparams(rng, N, Kd)
    kw, rkw = _out_kw(out_u8)
    packed = Q.pack_gemm_qc8w(w, bias, zp)
    got = K.qgemm_u8s8(a, packed, scale, num_threads=nt, **kw)
    np.testing.assert_array_equal(got, Q.qgemm(a, w, scale, bias, zp, **rkw))
    # the session's prepared call: the same bytes
    np.testing.assert_array_equal(K.QLayerCall("gemm", packed, scale, num_threads=nt, **kw)([a])[0], got)


@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_qgemm_activations(isa, nt, out_u8, act, rng):
    M, Kd, N = 37, 70, 45
    a, w = _data(rng, (M, Kd)), _data(rng, (Kd, N), -127, 127, np.int8)
    bias, zp, scale = _qparams(rng, N, Kd)
    scale *= 4  # y spans about [-10, 10]: every activation's bends are crossed
    packed = Q.pack_gemm_qc8w(w, bias, zp)
    # y_inv_scale 1 and zp_y 0 take the kernels' shortcuts (no multiply; no max for >= 0 acts);
    # a fractional or negative zp_y carries an affine map folded after the activation
    for inv, zp_y in ((40.0, 100), (1.0, 0), (12.0, 0), (7.5, -3.25), (0.3, 17.6)):
        kw, rkw = _out_kw(out_u8, act, inv, zp_y)
        got = K.qgemm_u8s8(a, packed, scale, num_threads=nt, **kw)
        np.testing.assert_array_equal(got, Q.qgemm(a, w, scale, bias, zp, **rkw))


@pytest.mark.parametrize("case", ["a255_w127", "a255_wm128", "a0_w127", "alternating",
                                  "k_near_int32_limit"])
def test_qgemm_saturating_values(isa, nt, case, rng):
    M, Kd, N = 9, 4099, 40
    if case == "k_near_int32_limit":
        M, Kd, N = 2, 65000, 33  # 65000 * 255 * 128 = 2.12e9 < 2^31
    a = np.full((M, Kd), 255 if case != "a0_w127" else 0, np.uint8)
    w = np.full((Kd, N), -128 if case == "a255_wm128" else 127, np.int8)
    if case == "alternating":
        a[:, ::2] = 0
        w[1::2] = -128
    if case == "k_near_int32_limit":
        w[:, ::2] = -128
    bias = np.zeros(N, np.int32)
    scale = np.full(N, 1e-7, np.float32)
    packed = Q.pack_gemm_qc8w(w, bias, 0)
    # y_inv_scale 1e20: t far beyond int32 (cvtps2dq's 0x80000000 must still give 255 / 0)
    for out_u8, inv in ((True, 1.0), (False, 1.0), (True, 1e20)):
        kw, rkw = _out_kw(out_u8, y_inv_scale=inv, zp_y=100)
        got = K.qgemm_u8s8(a, packed, scale, num_threads=nt, **kw)
        ref = Q.qgemm(a, w, scale, bias, 0, **rkw)
        np.testing.assert_array_equal(got, ref)
    acc = Q.qgemm_acc(a, w, bias, 0)
    assert np.abs(acc.astype(np.int64)).max() <= 2**31 - 1


def test_qgemm_requant_rounding_is_half_even(isa, nt):
    """acc * scale lands exactly on .5: rint rounds to even; saturates at 0 and 255."""
    acc_targets = np.array([1, 3, 5, -1, 7, 509, 600, -600], np.int32)  # y = acc / 2
    N = acc_targets.size
    a = np.ones((1, 1), np.uint8)
    w = np.zeros((1, N), np.int8)
    packed = Q.pack_gemm_qc8w(w, acc_targets, 0)  # acc = bias
    scale = np.full(N, 0.5, np.float32)
    got = K.qgemm_u8s8(a, packed, scale, y_inv_scale=1.0, zp_y=0, num_threads=nt)
    np.testing.assert_array_equal(got[0], [0, 2, 2, 0, 4, 254, 255, 0])


def test_pack_roundtrip_and_header(rng):
    w = _data(rng, (70, 45), -128, 127, np.int8)
    bias = rng.integers(-1000, 1000, 45).astype(np.int32)
    p = Q.pack_gemm_qc8w(w, bias, 17)
    h = Q.read_header(p)
    assert (h["magic"], h["n"], h["k"], h["n_pad"], h["k_pad"], h["nr"], h["kr"], h["zp_x"]) == \
        (Q.MAGIC_GEMM, 45, 70, 64, 72, 32, 4, 17)
    assert p.size == 64 + 8 * 64 + 64 * 72 and bytes(p[:4]) == b"QC8W"
    u = Q.unpack_qc8w(p)
    np.testing.assert_array_equal(u["w"], w)
    np.testing.assert_array_equal(u["bias_q"], bias)
    np.testing.assert_array_equal(u["colsum"], w.astype(np.int64).sum(0))
    # byte (panel, k group, lane, k % 4) of the documented layout
    body = p[64 + 8 * 64:].view(np.int8)
    k, j = 41, 37
    assert body[((j // 32) * (72 // 4) + k // 4) * 128 + (j % 32) * 4 + k % 4] == w[k, j]
    wc = _data(rng, (12, 3, 3, 5), -128, 127, np.int8)
    pc = Q.pack_conv_qc8w(wc, None, 3, groups=2)
    np.testing.assert_array_equal(Q.unpack_qc8w(pc)["w"], wc)
    wd = _data(rng, (19, 1, 5, 5), -128, 127, np.int8)
    pd = Q.pack_dwconv_qc8w(wd, np.arange(19, dtype=np.int32), 200)
    assert bytes(pd[:4]) == b"QDW8"
    ud = Q.unpack_qc8w(pd)
    np.testing.assert_array_equal(ud["w"], wd)
    np.testing.assert_array_equal(ud["bias_q"], np.arange(19))


# ----------------------------------------------------------------------------- conv

CONV_CASES = {  # id: (N, H, W, Cin, Cout, KH, KW, strides, pads, dilations, groups)
    "1x1_direct": (1, 5, 7, 19, 40, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "1x1_direct_batch2": (2, 4, 4, 64, 33, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "1x1_stride2": (1, 9, 8, 16, 24, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1), 1),
    "1x1_groups4": (1, 6, 6, 12, 20, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 4),
    "3x3_pad1": (1, 9, 11, 13, 17, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "3x3_stride2": (2, 12, 9, 8, 35, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1),
    "3x3_dilation2": (1, 11, 10, 6, 9, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2), 1),
    "3x3_groups2": (1, 8, 8, 10, 6, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 2),
    "3x3_groups3_wide": (1, 7, 7, 48, 96, 3, 3, (1, 1), (1, 0, 1, 2), (1, 1), 3),
    "asym_pads_stride21": (1, 10, 9, 5, 7, 3, 2, (2, 1), (0, 2, 1, 0), (1, 1), 1),
    "7x7_stem_stride2": (1, 30, 30, 3, 64, 7, 7, (2, 2), (3, 3, 3, 3), (1, 1), 1),
    "3x3_stem_c3_stride2_batch2": (2, 15, 13, 3, 16, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1),
    "3x3_one_channel_pad2": (1, 9, 10, 1, 8, 3, 3, (1, 1), (2, 1, 2, 1), (1, 1), 1),
    "3x5_c3_row_dilation2": (2, 13, 12, 3, 8, 3, 5, (1, 2), (2, 2, 2, 2), (2, 1), 1),
    "2x2_c16_two_moves": (1, 7, 9, 16, 20, 2, 2, (1, 1), (0, 0, 1, 1), (1, 1), 1),
    "1x7_c7_k_pad_tail": (1, 4, 12, 7, 9, 1, 7, (1, 1), (0, 3, 0, 3), (1, 1), 1),
    "kernel_larger_than_input": (1, 3, 2, 4, 5, 5, 5, (1, 1), (2, 2, 2, 3), (1, 1), 1),
    "k_above_kc": (1, 6, 6, 96, 40, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "rows_above_mc": (1, 17, 17, 16, 20, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
}


def _conv(isa, nt, out_u8, case, rng, act=(0, 0.0, 0.0), x_fill=None, w_fill=None):
    N, H, W, Cin, Cout, KH, KW, st, pads, dil, G = case
    x = _data(rng, (N, H, W, Cin)) if x_fill is None else np.full((N, H, W, Cin), x_fill, np.uint8)
    w = (_data(rng, (Cout, Cin // G, KH, KW), -127, 127, np.int8) if w_fill is None
         else np.full((Cout, Cin // G, KH, KW), w_fill, np.int8))
    bias, zp, scale = _qparams(rng, Cout, KH * KW * Cin // G)
    kw, rkw = _out_kw(out_u8, act)
    packed = Q.pack_conv_qc8w(w, bias, zp, G)
    got = K.qconv2d_u8s8_nhwc(x, packed, scale, st, pads, dil, num_threads=nt, **kw)
    ref = Q.qconv2d_nhwc(x, w, scale, bias, zp, st, pads, dil, G, **rkw)
    np.testing.assert_array_equal(got, ref)
    call = K.QLayerCall("conv", packed, scale, strides=st, pads=pads, dilations=dil, num_threads=nt,
                        **kw)
    np.testing.assert_array_equal(call([x])[0], ref)


@pytest.mark.parametrize("case", list(CONV_CASES.values()), ids=list(CONV_CASES))
def test_qconv_cases(isa, nt, out_u8, case, rng):
    _conv(isa, nt, out_u8, case, rng)


@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_qconv_activations(isa, nt, act, rng):
    _conv(isa, nt, True, CONV_CASES["3x3_stride2"], rng, act)


@pytest.mark.parametrize("fill", [(255, 127), (0, -128), (255, -128)], ids=["x255_w127", "x0_wm128",
                                                                           "x255_wm128"])
def test_qconv_saturating(isa, nt, fill, rng):
    _conv(isa, nt, True, CONV_CASES["3x3_pad1"], rng, x_fill=fill[0], w_fill=fill[1])


# ----------------------------------------------------------------------------- depthwise

DW_CASES = {  # id: (N, H, W, C, KH, KW, strides, pads, dilations)
    "3x3_s1_c1": (1, 6, 7, 1, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    "3x3_s1_c7": (1, 9, 8, 7, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    "3x3_s1_c16": (1, 8, 8, 16, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    "3x3_s1_c17": (2, 7, 9, 17, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    "3x3_s2_c33": (1, 11, 10, 33, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1)),
    "3x3_s2_c96_nopad": (1, 12, 12, 96, 3, 3, (2, 2), (0, 0, 1, 1), (1, 1)),
    "5x5_s1_c40": (1, 9, 9, 40, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1)),
    "5x5_s2_c65": (1, 13, 12, 65, 5, 5, (2, 2), (2, 2, 2, 2), (1, 1)),
    "3x3_dilation2": (1, 10, 10, 24, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2)),
    "asym_pads": (1, 8, 9, 20, 3, 3, (1, 2), (0, 2, 1, 0), (1, 1)),
    "kernel_larger_than_input": (1, 2, 3, 18, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1)),
    "9x9_two_quads_plus": (1, 10, 11, 21, 9, 9, (1, 1), (4, 4, 4, 4), (1, 1)),
    "2x3_row_pairs": (1, 7, 8, 35, 2, 3, (1, 1), (1, 1, 0, 1), (1, 1)),
    "1x3_row_pairs": (2, 5, 6, 48, 1, 3, (1, 1), (0, 1, 0, 1), (1, 1)),
    "3x3_c64_odd_rows": (1, 9, 6, 64, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    "7x7_c200_rows_split_mid_row": (1, 7, 7, 200, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    "5x5_s2_c72_batch2": (2, 9, 9, 72, 5, 5, (2, 2), (2, 2, 2, 2), (1, 1)),
    "5x5_rows_of_2_c200": (1, 2, 11, 200, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1)),
    "1x65_more_taps_than_blocked": (1, 2, 70, 17, 1, 65, (1, 1), (0, 0, 0, 0), (1, 1)),
}


def _dw(nt, out_u8, case, rng, act=(0, 0.0, 0.0), x_fill=None, w_fill=None, inv_zp=(40.0, 100)):
    N, H, W, C, KH, KW, st, pads, dil = case
    x = _data(rng, (N, H, W, C)) if x_fill is None else np.full((N, H, W, C), x_fill, np.uint8)
    w = (_data(rng, (C, 1, KH, KW), -127, 127, np.int8) if w_fill is None
         else np.full((C, 1, KH, KW), w_fill, np.int8))
    bias, zp, scale = _qparams(rng, C, KH * KW)
    scale *= 4
    kw, rkw = _out_kw(out_u8, act, *inv_zp)
    packed = Q.pack_dwconv_qc8w(w, bias, zp)
    got = K.qdwconv2d_u8s8_nhwc(x, packed, scale, st, pads, dil, num_threads=nt, **kw)
    ref = Q.qdwconv2d_nhwc(x, w, scale, bias, zp, st, pads, dil, **rkw)
    np.testing.assert_array_equal(got, ref)
    call = K.QLayerCall("dw", packed, scale, strides=st, pads=pads, dilations=dil, num_threads=nt,
                        **kw)
    np.testing.assert_array_equal(call([x])[0], ref)


@pytest.mark.parametrize("case", list(DW_CASES.values()), ids=list(DW_CASES))
def test_qdwconv_cases(isa, nt, out_u8, case, rng):
    _dw(nt, out_u8, case, rng)


@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_qdwconv_activations(isa, nt, act, rng):
    _dw(nt, True, DW_CASES["3x3_s1_c17"], rng, act)
    _dw(nt, True, DW_CASES["3x3_c64_odd_rows"], rng, act, inv_zp=(1.0, 0))
    _dw(nt, True, DW_CASES["3x3_c64_odd_rows"], rng, act, inv_zp=(7.5, -3.25))  # folded offset
    _dw(nt, False, DW_CASES["3x3_s2_c33"], rng, act)


@pytest.mark.parametrize("fill", [(255, 127), (0, -128), (255, -128)],
                         ids=["x255_w127", "x0_wm128", "x255_wm128"])
def test_qdwconv_saturating(isa, nt, fill, rng):
    _dw(nt, True, DW_CASES["5x5_s2_c65"], rng, x_fill=fill[0], w_fill=fill[1])


def test_qdwconv_big_layer_threads_identical(isa, rng):
    """A MobileNetV2-sized layer: 1 and 2 threads bit-identical and equal to the reference."""
    case = (1, 28, 28, 144, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1))
    _dw(1, True, case, rng)
    _dw(2, True, case, rng)


# ----------------------------------------------------------------------------- plumbing

def test_slots_in_kernel_table():
    table = cpu.kernel_table()
    assert table["gemm_qu8_qc8w"].startswith("qi_gemm_qu8_qc8w__")
    assert table["dwconv2d_qu8_qc8w"].startswith("qi_dwconv2d_qu8_qc8w__")
    info = cpu.runtime_info()
    assert "gemm_qu8_qc8w" in info and "dwconv2d_qu8_qc8w" in info


def test_explicit_little_endian_arrays_accepted(rng):
    """Arrays read from files often spell the byte order ('<f4'); the checks take them."""
    w = _data(rng, (10, 6), -127, 127, np.int8)
    p = Q.pack_gemm_qc8w(w, None, 3)
    a = _data(rng, (4, 10))
    s = np.ones(6, np.float32)
    ref = K.qgemm_u8s8(a, p, s, out_dtype=np.float32)
    got = K.qgemm_u8s8(a, p, s.astype("<f4").view(np.dtype("<f4")), out_dtype=np.float32)
    np.testing.assert_array_equal(got, ref)


def test_validation_errors(rng):
    w = _data(rng, (10, 6), -127, 127, np.int8)
    p = Q.pack_gemm_qc8w(w, None, 3)
    a = _data(rng, (4, 10))
    s = np.ones(6, np.float32)
    with pytest.raises(ValueError, match="K = 10 columns"):
        K.qgemm_u8s8(_data(rng, (4, 9)), p, s)
    with pytest.raises(ValueError, match="uint8 array of rank 2"):
        K.qgemm_u8s8(a.astype(np.int8), p, s)
    with pytest.raises(ValueError, match="scale must have 6 elements"):
        K.qgemm_u8s8(a, p, np.ones(5, np.float32))
    with pytest.raises(ValueError, match="scale must be finite"):
        K.qgemm_u8s8(a, p, np.full(6, np.inf, np.float32))
    with pytest.raises(ValueError, match="activation code"):
        K.qgemm_u8s8(a, p, s, activation=9)
    with pytest.raises(ValueError, match="alpha .min. <= beta"):
        K.qgemm_u8s8(a, p, s, activation=2, alpha=1.0, beta=0.0)
    with pytest.raises(ValueError, match="out_dtype"):
        K.qgemm_u8s8(a, p, s, out_dtype=np.int32)
    with pytest.raises(ValueError, match="out must be a writable"):
        K.qgemm_u8s8(a, p, s, out=np.empty((4, 6), np.float32))
    with pytest.raises(ValueError, match="zp_y"):
        K.qgemm_u8s8(a, p, s, zp_y=1e6)
    with pytest.raises(ValueError, match="zp_y"):
        K.qgemm_u8s8(a, p, s, zp_y=float("nan"))
    with pytest.raises(ValueError, match="num_threads"):
        K.qgemm_u8s8(a, p, s, num_threads=0)
    bad = p.copy()
    bad[0] = 0
    with pytest.raises(ValueError, match="magic"):
        K.qgemm_u8s8(a, bad, s)
    old = p.copy()
    old[4] = 1  # version 1 (depthwise taps x channels): refused, never misread
    with pytest.raises(ValueError, match="format version 1, this build reads 2"):
        K.qgemm_u8s8(a, old, s)
    with pytest.raises(ValueError, match="bytes, the header says"):
        K.qgemm_u8s8(a, p[:-1].copy(), s)
    with pytest.raises(ValueError, match="packed_w holds GEMM weights"):
        K.qconv2d_u8s8_nhwc(_data(rng, (1, 3, 3, 10)), p, s)
    with pytest.raises(ValueError, match="overflow the int32"):
        big = Q.pack_gemm_qc8w(np.zeros((65800, 1), np.int8), None, 0)
        K.qgemm_u8s8(np.zeros((1, 65800), np.uint8), big, np.ones(1, np.float32))
    pc = Q.pack_conv_qc8w(_data(rng, (8, 2, 3, 3), -127, 127, np.int8), None, 0, groups=2)
    with pytest.raises(ValueError, match="must have 4 channels"):
        K.qconv2d_u8s8_nhwc(_data(rng, (1, 5, 5, 3)), pc, np.ones(8, np.float32))
    with pytest.raises(ValueError, match="larger than the padded input"):
        K.qconv2d_u8s8_nhwc(_data(rng, (1, 2, 2, 4)), pc, np.ones(8, np.float32))
    with pytest.raises(ValueError, match="depthwise"):
        K.qdwconv2d_u8s8_nhwc(_data(rng, (1, 5, 5, 4)), pc, np.ones(8, np.float32))
    pd = Q.pack_dwconv_qc8w(_data(rng, (5, 1, 3, 3), -127, 127, np.int8), None, 0)
    with pytest.raises(ValueError, match="must have 5 channels"):
        K.qdwconv2d_u8s8_nhwc(_data(rng, (1, 5, 5, 4)), pd, np.ones(5, np.float32))


@pytest.mark.parametrize("kind", ["gemm", "conv", "dw"])
def test_repeated_two_thread_calls_are_stable(kind, rng):
    """Races show up as rare wrong tiles: run the same call many times with more threads than this
    machine has cores (so threads get preempted mid-region), every result must equal the reference
    (a per-thread rectangle once shared between threads made ~1% of calls wrong)."""
    prev = K.qint8_set_min_work(1)
    try:
        if kind == "gemm":
            x, w = _data(rng, (37, 70)), _data(rng, (70, 65), -127, 127, np.int8)
            bias, zp, scale = _qparams(rng, 65, 70)
            packed = Q.pack_gemm_qc8w(w, bias, zp)
            ref = Q.qgemm(x, w, scale, bias, zp, out_u8=False)
            run = lambda: K.qgemm_u8s8(x, packed, scale, out_dtype=np.float32, num_threads=nthr)  # noqa: E731
        elif kind == "conv":
            x, w = _data(rng, (1, 9, 11, 8)), _data(rng, (33, 8, 3, 3), -127, 127, np.int8)
            bias, zp, scale = _qparams(rng, 33, 72)
            packed = Q.pack_conv_qc8w(w, bias, zp, 1)
            ref = Q.qconv2d_nhwc(x, w, scale, bias, zp, (1, 1), (1, 1, 1, 1), (1, 1), 1, out_u8=False)
            run = lambda: K.qconv2d_u8s8_nhwc(x, packed, scale, (1, 1), (1, 1, 1, 1), (1, 1),  # noqa: E731
                                              out_dtype=np.float32, num_threads=nthr)
        else:
            x, w = _data(rng, (2, 9, 11, 40)), _data(rng, (40, 1, 3, 3), -127, 127, np.int8)
            bias, zp, scale = _qparams(rng, 40, 9)
            packed = Q.pack_dwconv_qc8w(w, bias, zp)
            ref = Q.qdwconv2d_nhwc(x, w, scale, bias, zp, (1, 1), (1, 1, 1, 1), (1, 1), out_u8=False)
            run = lambda: K.qdwconv2d_u8s8_nhwc(x, packed, scale, (1, 1), (1, 1, 1, 1), (1, 1),  # noqa: E731
                                                out_dtype=np.float32, num_threads=nthr)
        for i in range(2000):
            nthr = 2 + i % 5
            np.testing.assert_array_equal(run(), ref)
    finally:
        K.qint8_set_min_work(prev)


# ----------------------------------------------------------------------------- prepared calls

def _layer(kind, rng, cin=13, cout=21, k=3):
    """(QLayerCall, packed, scale, kw) for a small layer of ``kind`` with pads 1."""
    bias, zp, scale = _qparams(rng, cout if kind != "dw" else cin, k * k * cin)
    kw, _ = _out_kw(True, (Q.ACT_RELU, 0.0, 0.0))
    if kind == "gemm":
        packed = Q.pack_gemm_qc8w(_data(rng, (cin, cout), -127, 127, np.int8), bias, zp)
        return K.QLayerCall(kind, packed, scale, num_threads=1, **kw), packed, scale, kw
    if kind == "dw":
        packed = Q.pack_dwconv_qc8w(_data(rng, (cin, 1, k, k), -127, 127, np.int8), bias, zp)
    else:
        packed = Q.pack_conv_qc8w(_data(rng, (cout, cin, k, k), -127, 127, np.int8), bias, zp)
    geo = dict(strides=(1, 2), pads=(1, 1, 1, 1), dilations=(1, 1))
    return K.QLayerCall(kind, packed, scale, num_threads=1, **geo, **kw), packed, scale, {**kw, **geo}


@pytest.mark.parametrize("kind", ["conv", "dw"])
def test_prepared_call_follows_the_input_size(kind, rng):
    """The geometry kept per input size is remade when the size changes (and back again); each
    answer equals the checked function's."""
    call, packed, scale, kw = _layer(kind, rng)
    fn = K.qconv2d_u8s8_nhwc if kind == "conv" else K.qdwconv2d_u8s8_nhwc
    for shape in [(1, 7, 9, 13), (2, 5, 4, 13), (1, 7, 9, 13), (1, 1, 1, 13), (0, 3, 3, 13)]:
        x = _data(rng, shape)
        y = call([x], None, 1)[0]
        np.testing.assert_array_equal(y, fn(x, packed, scale, num_threads=1, **kw))


def test_prepared_call_takes_any_leading_shape_and_strided_inputs(rng):
    call, packed, scale, kw = _layer("gemm", rng)
    x = _data(rng, (2, 3, 5, 13))
    want = K.qgemm_u8s8(x.reshape(-1, 13), packed, scale, num_threads=1, **kw).reshape(2, 3, 5, 21)
    np.testing.assert_array_equal(call([x])[0], want)
    wide = _data(rng, (30, 26))[:, ::2]           # not C-contiguous: copied, same answer
    np.testing.assert_array_equal(call([wide])[0], K.qgemm_u8s8(np.ascontiguousarray(wide), packed,
                                                                scale, num_threads=1, **kw))
    conv, cpacked, cscale, ckw = _layer("conv", rng)
    xt = _data(rng, (1, 13, 6, 5)).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(conv([xt])[0], K.qconv2d_u8s8_nhwc(
        np.ascontiguousarray(xt), cpacked, cscale, num_threads=1, **ckw))


def test_prepared_call_nchw_output(rng):
    bias, zp, scale = _qparams(rng, 9, 27)
    kw, _ = _out_kw(False)
    packed = Q.pack_conv_qc8w(_data(rng, (9, 3, 3, 3), -127, 127, np.int8), bias, zp)
    x = _data(rng, (1, 6, 5, 3))
    call = K.QLayerCall("conv", packed, scale, pads=(1, 1, 1, 1), out_layout="nchw", **kw)
    y = call([x])[0]
    assert y.flags.c_contiguous and y.shape == (1, 9, 6, 5)
    np.testing.assert_array_equal(y, K.qconv2d_u8s8_nhwc(x, packed, scale, pads=(1, 1, 1, 1),
                                                         **kw).transpose(0, 3, 1, 2))


def test_prepared_call_declines_and_refuses(rng):
    """Another dtype or rank: None (the planner's reference op takes it); a wrong size: the
    function's ValueError; bad weights, scales or geometry: refused when the call is made."""
    conv, packed, scale, kw = _layer("conv", rng)
    assert conv([_data(rng, (1, 5, 5, 13)).astype(np.int8)]) is None
    assert conv([_data(rng, (5, 5, 13))]) is None
    assert conv([np.zeros((1, 5, 5, 13), np.float32)]) is None
    assert conv([[1, 2, 3]]) is None
    with pytest.raises(ValueError, match="13 channels"):
        conv([_data(rng, (1, 5, 5, 12))])
    with pytest.raises(ValueError, match="kernel"):
        K.QLayerCall("conv", packed, scale, pads=(0, 0, 0, 0), **{k: v for k, v in kw.items()
                                                                  if k != "pads"})([_data(rng, (1, 2, 2, 13))])
    gemm, gpacked, gscale, gkw = _layer("gemm", rng)
    with pytest.raises(ValueError, match="K = 13"):
        gemm([_data(rng, (4, 12))])
    with pytest.raises(ValueError, match="conv weights"):
        K.QLayerCall("gemm", packed, scale)
    with pytest.raises(ValueError, match="GEMM weights"):
        K.QLayerCall("conv", gpacked, gscale)
    with pytest.raises(ValueError, match="depthwise"):
        K.QLayerCall("dw", packed, scale)
    with pytest.raises(ValueError, match="scale must have 21"):
        K.QLayerCall("conv", packed, scale[:5])
    with pytest.raises(ValueError, match="strides|stride"):
        K.QLayerCall("conv", packed, scale, strides=(0, 1))
    with pytest.raises(ValueError, match="kind"):
        K.QLayerCall("pool", packed, scale)
    with pytest.raises(ValueError, match="out_layout"):
        K.QLayerCall("gemm", gpacked, gscale, out_layout="nchw")
    with pytest.raises(TypeError, match="once"):
        conv.__init__("conv", packed, scale)
    with pytest.raises(ValueError, match="not initialized"):
        K.QLayerCall.__new__(K.QLayerCall)([_data(rng, (1, 5, 5, 13))])


@pytest.mark.skipif("avx512vnni" not in ISAS, reason="the streaming bound runs the AVX-512 VNNI tier")
@pytest.mark.parametrize("nbytes", [64, 65, 511, 512, 4160, 100_000])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_vnni_stream_reads_every_whole_line(nbytes, threads):
    """bench_ukernels' M = 1 bound: each whole 64-byte line of the buffer (a tail is not read)
    goes through one vpdpbusd per pass, whatever the thread split -- so its time is the time to
    stream exactly those bytes."""
    rng = np.random.default_rng(nbytes)
    buf = rng.integers(0, 256, nbytes, dtype=np.uint8)
    whole = buf[:nbytes // 64 * 64].view(np.int8).astype(np.int64).sum()
    assert K.qint8_vnni_stream(buf, 3, threads) == 3 * whole
    with pytest.raises(ValueError, match="64 bytes"):
        K.qint8_vnni_stream(buf[:63], 1)
    with pytest.raises(ValueError, match="passes"):
        K.qint8_vnni_stream(buf, 0)
