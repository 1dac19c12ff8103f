"""int4 kernels (qgemm_u8s4, qconv2d_u8s4_nhwc) against the numpy reference qinfer.reference.int4,
bit for bit.

Every test runs at every ISA tier this machine can run (capped through qinfer.runtime.cpu) and at
1 and 2 threads. Tolerance: none. Block sums are exact integers and the float steps (per block
t = float(d) * s, acc = acc + t; then offset, scale, bias, activation, requantization) are the
same IEEE operations in the same order everywhere (kernels/include/qinfer/qint4.h), so uint8 and
float32 outputs must be equal. Shape classes come from the tiles: AVX-512 4 rows x 32 channels,
AVX2 4 rows x 8 channels, K in steps of 4, blocks of 32 / 64 / 128 (any multiple of 4 to 256),
the last block short when the block does not divide K.
"""
import numpy as np
import pytest

from qinfer._ext import _kernels as K
from qinfer.reference import int4 as R
from qinfer.reference import quantized as Q
from qinfer.runtime import cpu
from test_kernels_int8 import isa, nt, out_u8  # noqa: F401  (the ISA, 1/2-thread, u8/f32 fixtures)

ACTS = [(Q.ACT_NONE, 0.0, 0.0), (Q.ACT_RELU, 0.0, 0.0), (Q.ACT_CLIP, -0.5, 2.5),
        (Q.ACT_HARDSWISH, 0.0, 0.0), (Q.ACT_SIGMOID, 0.0, 0.0), (Q.ACT_HARDSIGMOID, 0.2, 0.5),
        (Q.ACT_SILU, 0.0, 0.0)]


def _layer(rng, k, n, block, conv=None):
    """Random int4 weights (q in [-8, 7]), scales, an accumulator-units bias and zp_x, packed."""
    shape = (k, n) if conv is None else conv
    q = rng.integers(-8, 8, shape).astype(np.int8)
    s = (rng.uniform(0.5, 2.0, (n, R.nblocks(k, block))) / (8.0 * np.sqrt(k))).astype(np.float32)
    zp = int(rng.integers(0, 256))
    bias = rng.normal(0, 50.0, n)
    return q, s, zp, bias


def _epi(rng, n, out_u8, act=(0, 0.0, 0.0), with_bias=False, inv=40.0, zp_y=100):
    """kernel kwargs and reference kwargs: scale ~ s_x, t = 40 y + 100 crosses both clamps."""
    scale = rng.uniform(0.01, 0.03, n).astype(np.float32)
    bias = rng.normal(0, 1.0, n).astype(np.float32) if with_bias else None
    kw = dict(bias=bias, out_dtype=np.uint8 if out_u8 else np.float32, y_inv_scale=inv, zp_y=zp_y,
              activation=act[0], alpha=act[1], beta=act[2])
    ref = dict(bias=bias, act=act[0], alpha=act[1], beta=act[2], out_u8=out_u8, y_inv_scale=inv,
               zp_y=zp_y)
    return scale, kw, ref


def _gemm(rng, nt, out_u8, M, Kd, N, block, act=(0, 0.0, 0.0), with_bias=False, inv=40.0, zp_y=100,
          x=None, q=None):
    q0, s, zp, bias = _layer(rng, Kd, N, block)
    q = q0 if q is None else q
    x = rng.integers(0, 256, (M, Kd)).astype(np.uint8) if x is None else x
    packed = R.pack_gemm_qb4w(q, s, block, bias, zp)
    off = R.unpack_qb4w(packed)["offset"]
    scale, kw, rkw = _epi(rng, N, out_u8, act, with_bias, inv, zp_y)
    got = K.qgemm_u8s4(x, packed, scale, num_threads=nt, **kw)
    np.testing.assert_array_equal(got, R.qgemm(x, q, s, block, off, scale, **rkw))
    # the session's prepared call (QLayerCall "q4gemm", no bias input): the function's bytes, for
    # the rows as given and stacked under a leading axis
    nob = {k: v for k, v in kw.items() if k != "bias"}
    want = K.qgemm_u8s4(x, packed, scale, num_threads=nt, **nob)
    call = K.QLayerCall("q4gemm", packed, scale, num_threads=nt, **nob)
    np.testing.assert_array_equal(call([x])[0], want)
    np.testing.assert_array_equal(call([x[None]])[0], want[None])
    return got


GEMM_SHAPES = {  # id: (M, K, N, block)
    "m1_k1_n1": (1, 1, 1, 32),
    "below_tile": (3, 3, 7, 32),
    "at_tile": (4, 64, 32, 64),
    "above_tile": (5, 68, 33, 64),
    "primes": (17, 67, 61, 32),
    "k_not_multiple_of_block": (7, 130, 40, 64),
    "k_tail_short_last_block": (6, 255, 63, 128),
    "m1_wide": (1, 300, 257, 128),
    "m1_block4": (1, 37, 70, 4),
    "block256": (3, 513, 35, 256),
    "rows_many": (70, 96, 24, 32),
}


@pytest.mark.parametrize("shape", list(GEMM_SHAPES.values()), ids=list(GEMM_SHAPES))
def test_qgemm_u8s4_shapes(isa, nt, out_u8, shape, rng):
    _gemm(rng, nt, out_u8, *shape)
    _gemm(rng, nt, out_u8, *shape, with_bias=True)


@pytest.mark.parametrize("act", ACTS, ids=[Q.ACT_NAMES[a[0]] for a in ACTS])
def test_qgemm_u8s4_activations(isa, nt, act, rng):
    for out_u8, inv, zp_y in ((True, 40.0, 100), (True, 7.5, -3.25), (False, 1.0, 0)):
        _gemm(rng, nt, out_u8, 9, 70, 45, 32, act, with_bias=True, inv=inv, zp_y=zp_y)


@pytest.mark.parametrize("case", ["x255_q7", "x255_qm8", "x0_q7", "alternating"])
def test_qgemm_u8s4_saturating(isa, nt, case, rng):
    """Extreme bytes and nibbles (0x7, 0x8) at the largest block: |16 d| = 16*255*8*256 is the
    bound the int32 and float conversions are sized for."""
    M, Kd, N, block = 5, 1030, 40, 256
    x = np.full((M, Kd), 0 if case == "x0_q7" else 255, np.uint8)
    q = np.full((Kd, N), -8 if case == "x255_qm8" else 7, np.int8)
    if case == "alternating":
        x[:, ::2] = 0
        q[1::2] = -8
    for out_u8 in (True, False):
        _gemm(rng, nt, out_u8, M, Kd, N, block, x=x, q=q)
    # the largest block sum is exact: d = 255 * -8 * 256 per full block
    s = np.ones((N, R.nblocks(Kd, block)), np.float32)
    acc = R.qgemm_acc(x, q, s, block)
    ref = (x.astype(np.int64) @ q.astype(np.int64)).astype(np.float64)
    np.testing.assert_array_equal(acc.astype(np.float64), ref)


def test_extreme_block_scales(isa, nt, rng):
    """Scales whose sixteenth is subnormal (or that are subnormal, zero, negative, huge): the
    arithmetic defines t = float(16 d) * (s * 0.0625), so every tier still gives the same bits."""
    M, Kd, N, block = 5, 200, 40, 32
    x = rng.integers(0, 256, (M, Kd)).astype(np.uint8)
    q = rng.integers(-8, 8, (Kd, N)).astype(np.int8)
    pool = np.array([1e-39, 2.0 ** -124 * 3, 3e-36, 1e30, -2.5, 0.0, 1e-3], np.float32)
    s = rng.choice(pool, (N, R.nblocks(Kd, block))).astype(np.float32)
    packed = R.pack_gemm_qb4w(q, s, block, None, 7)
    off = R.unpack_qb4w(packed)["offset"]
    scale = np.full(N, 1e-3, np.float32)
    got = K.qgemm_u8s4(x, packed, scale, out_dtype=np.float32, num_threads=nt)
    np.testing.assert_array_equal(got, R.qgemm(x, q, s, block, off, scale, out_u8=False))


def test_threads_bit_identical_on_a_batch_one_layer(isa, rng):
    """A 1 x 1024 x 1024 layer splits its panels between threads: same bits as 1 thread."""
    q, s, zp, bias = _layer(rng, 1024, 1024, 64)
    packed = R.pack_gemm_qb4w(q, s, 64, bias, zp)
    x = rng.integers(0, 256, (1, 1024)).astype(np.uint8)
    scale = np.full(1024, 0.02, np.float32)
    one = K.qgemm_u8s4(x, packed, scale, out_dtype=np.float32, num_threads=1)
    two = K.qgemm_u8s4(x, packed, scale, out_dtype=np.float32, num_threads=2)
    np.testing.assert_array_equal(one, two)
    off = R.unpack_qb4w(packed)["offset"]
    np.testing.assert_array_equal(one, R.qgemm(x, q, s, 64, off, scale, out_u8=False))


# ----------------------------------------------------------------------------- conv

CONV_CASES = {  # id: (N, H, W, Cin, Cout, KH, KW, strides, pads, dilations, groups, block)
    "1x1_direct": (1, 5, 7, 19, 40, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1, 32),
    "1x1_stride2_batch2": (2, 9, 8, 16, 24, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1), 1, 64),
    "3x3_pad1": (1, 9, 11, 13, 17, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, 32),
    "3x3_stride2": (2, 12, 9, 8, 35, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1, 64),
    "3x3_dilation2": (1, 11, 10, 6, 9, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2), 1, 32),
    "3x3_groups3_wide": (1, 7, 7, 48, 96, 3, 3, (1, 1), (1, 0, 1, 2), (1, 1), 3, 64),
    "3x3_one_channel": (1, 8, 8, 1, 16, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, 32),
    "kernel_larger_than_input": (1, 3, 2, 4, 5, 5, 5, (1, 1), (2, 2, 2, 3), (1, 1), 1, 32),
    "rows_above_block": (1, 11, 13, 16, 20, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, 128),
}


def _conv(rng, nt, out_u8, case, act=(0, 0.0, 0.0), x_fill=None, q_fill=None):
    N, H, W, Cin, Cout, KH, KW, st, pads, dil, G, block = case
    Kd = KH * KW * Cin // G
    q, s, zp, bias = _layer(rng, Kd, Cout, block, conv=(Cout, Cin // G, KH, KW))
    if q_fill is not None:
        q[:] = q_fill
    x = (rng.integers(0, 256, (N, H, W, Cin)) if x_fill is None
         else np.full((N, H, W, Cin), x_fill)).astype(np.uint8)
    packed = R.pack_conv_qb4w(q, s, block, bias, zp, G)
    off = R.unpack_qb4w(packed)["offset"]
    scale, kw, rkw = _epi(rng, Cout, out_u8, act, with_bias=True)
    got = K.qconv2d_u8s4_nhwc(x, packed, scale, st, pads, dil, num_threads=nt, **kw)
    ref = R.qconv2d_nhwc(x, q, s, block, off, scale, zp, st, pads, dil, G, **rkw)
    np.testing.assert_array_equal(got, ref)
    # the session's prepared call (QLayerCall "q4conv", no bias input), NHWC and NCHW out
    nob = {k: v for k, v in kw.items() if k != "bias"}
    want = K.qconv2d_u8s4_nhwc(x, packed, scale, st, pads, dil, num_threads=nt, **nob)
    for layout in ("nhwc", "nchw"):
        call = K.QLayerCall("q4conv", packed, scale, strides=st, pads=pads, dilations=dil,
                            num_threads=nt, out_layout=layout, **nob)
        y = call([x])[0]
        np.testing.assert_array_equal(y, want if layout == "nhwc" else want.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("case", list(CONV_CASES.values()), ids=list(CONV_CASES))
def test_qconv2d_u8s4_cases(isa, nt, out_u8, case, rng):
    _conv(rng, nt, out_u8, case)


def test_qconv2d_u8s4_activations_and_saturation(isa, nt, rng):
    for act in ACTS:
        _conv(rng, nt, True, CONV_CASES["3x3_stride2"], act)
    for x_fill, q_fill in ((255, 7), (0, -8), (255, -8)):
        _conv(rng, nt, True, CONV_CASES["3x3_pad1"], x_fill=x_fill, q_fill=q_fill)


# ----------------------------------------------------------------------------- format

def test_pack_layout_roundtrip_and_header(rng):
    K_, N_, block = 70, 45, 32
    q, s, zp, bias = _layer(rng, K_, N_, block)
    p = R.pack_gemm_qb4w(q, s, block, bias, zp)
    h = R.read_header(p)
    assert bytes(p[:4]) == b"QB4W"
    assert (h["n"], h["k"], h["n_pad"], h["block"], h["nblk"], h["zp_x"]) == (45, 70, 64, 32, 3, zp)
    assert h["panel_bytes"] == 72 * 16 + 128 * 3 == R.panel_bytes(K_, block)
    assert p.size == 64 + 4 * 64 + 2 * h["panel_bytes"]
    u = R.unpack_qb4w(p)
    np.testing.assert_array_equal(u["q"], q)
    np.testing.assert_array_equal(u["scales"], s)
    # the documented byte: step t of block b, byte 4 (c % 16) + k % 4, nibble c // 16
    body = p[64 + 4 * 64:]
    for k, c in ((41, 37), (69, 63 - 32 + 13), (0, 0), (67, 44)):
        panel, cc = divmod(c, 32)
        b, kk = divmod(k, block)
        byte = body[panel * h["panel_bytes"] + b * (block * 16 + 128) + (kk // 4) * 64
                    + (cc % 16) * 4 + kk % 4]
        nib = int(byte >> 4) if cc >= 16 else int(byte & 0x0F)
        assert (nib ^ 8) - 8 == q[k, c]
    # offset = bias - zp_x * sum_b s * colsum_b
    z = sum(s[:, b].astype(np.float64) * q[b * 32:(b + 1) * 32].astype(np.int64).sum(0) for b in range(3))
    np.testing.assert_allclose(u["offset"], bias - zp * z, rtol=1e-6, atol=1e-4)
    qc = rng.integers(-8, 8, (12, 3, 3, 5)).astype(np.int8)
    sc = np.ones((12, R.nblocks(45, 32)), np.float32)
    np.testing.assert_array_equal(R.unpack_qb4w(R.pack_conv_qb4w(qc, sc, 32, None, 3, 2))["q"], qc)


def test_slot_in_kernel_table():
    assert cpu.kernel_table()["gemm_qu8_qb4w"].startswith("qi_gemm_qu8_qb4w__")
    assert "gemm_qu8_qb4w" in cpu.runtime_info()
    names = {name for _, name, slot in K.kernel_list() if slot == "gemm_qu8_qb4w"}
    assert f"qi_gemm_qu8_qb4w__{cpu.best_isa()}" in names


def test_prepared_call_checks(rng):
    """QLayerCall's int4 kinds: wrong weights fail at construction, a wrong input per call, a
    non-uint8 input is handed back (None: the reference op runs)."""
    q, s, zp, bias = _layer(rng, 10, 6, 32)
    p = R.pack_gemm_qb4w(q, s, 32, bias, zp)
    sc = np.ones(6, np.float32)
    with pytest.raises(ValueError, match="holds GEMM weights"):
        K.QLayerCall("q4conv", p, sc)
    with pytest.raises(ValueError, match="not int4 packed weights"):
        K.QLayerCall("q4gemm", Q.pack_gemm_qc8w(np.zeros((10, 6), np.int8)), sc)
    with pytest.raises(ValueError, match="scale"):
        K.QLayerCall("q4gemm", p, np.ones(5, np.float32))
    call = K.QLayerCall("q4gemm", p, sc)
    with pytest.raises(ValueError, match="K = 10"):
        call([rng.integers(0, 256, (4, 9)).astype(np.uint8)])
    assert call([np.zeros((4, 10), np.float32)]) is None


def test_validation_errors(rng):
    q, s, zp, bias = _layer(rng, 10, 6, 4)
    p = R.pack_gemm_qb4w(q, s, 4, bias, zp)
    a = rng.integers(0, 256, (4, 10)).astype(np.uint8)
    sc = np.ones(6, np.float32)
    with pytest.raises(ValueError, match="K = 10 columns"):
        K.qgemm_u8s4(a[:, :9].copy(), p, sc)
    with pytest.raises(ValueError, match="uint8 array of rank 2"):
        K.qgemm_u8s4(a.astype(np.int8), p, sc)
    with pytest.raises(ValueError, match="scale must have 6 elements"):
        K.qgemm_u8s4(a, p, np.ones(5, np.float32))
    with pytest.raises(ValueError, match="bias must have 6 elements"):
        K.qgemm_u8s4(a, p, sc, bias=np.ones(7, np.float32))
    with pytest.raises(ValueError, match="bias"):
        K.qgemm_u8s4(a, p, sc, bias=np.ones(6, np.float64))
    with pytest.raises(ValueError, match="activation code"):
        K.qgemm_u8s4(a, p, sc, activation=9)
    with pytest.raises(ValueError, match="num_threads"):
        K.qgemm_u8s4(a, p, sc, num_threads=0)
    with pytest.raises(ValueError, match="out must not overlap"):
        buf = np.zeros(100, np.uint8)
        K.qgemm_u8s4(buf[:40].reshape(4, 10), p, sc, out=buf[:24].reshape(4, 6))
    with pytest.raises(ValueError, match="not int4 packed weights"):
        K.qgemm_u8s4(a, Q.pack_gemm_qc8w(np.zeros((10, 6), np.int8)), sc)
    old = p.copy()
    old[4] = 9
    with pytest.raises(ValueError, match="format version 9"):
        K.qgemm_u8s4(a, old, sc)
    with pytest.raises(ValueError, match="bytes, the header says"):
        K.qgemm_u8s4(a, p[:-1].copy(), sc)
    for field, value in (("block", 6), ("block", 512), ("nblk", 9), ("panel_bytes", 1), ("n_pad", 64)):
        bad = p.copy()
        off = R.HEADER.fields[field][1]
        bad[off:off + 4] = np.frombuffer(np.uint32(value).tobytes(), np.uint8)
        with pytest.raises(ValueError, match="inconsistent int4 header"):
            K.qgemm_u8s4(a, bad, sc)
    with pytest.raises(ValueError, match="shorter than the 64-byte header"):
        K.qgemm_u8s4(a, p[:10].copy(), sc)
    with pytest.raises(ValueError, match="packed_w holds GEMM weights"):
        K.qconv2d_u8s4_nhwc(rng.integers(0, 256, (1, 3, 3, 10)).astype(np.uint8), p, sc)
    qc = rng.integers(-8, 8, (8, 2, 3, 3)).astype(np.int8)
    pc = R.pack_conv_qb4w(qc, np.ones((8, 1), np.float32), 32, None, 0, groups=2)
    with pytest.raises(ValueError, match="must have 4 channels"):
        K.qconv2d_u8s4_nhwc(np.zeros((1, 5, 5, 3), np.uint8), pc, np.ones(8, np.float32))
    with pytest.raises(ValueError, match="larger than the padded input"):
        K.qconv2d_u8s4_nhwc(np.zeros((1, 2, 2, 4), np.uint8), pc, np.ones(8, np.float32))
    with pytest.raises(ValueError, match="packed_w holds conv weights"):
        K.qgemm_u8s4(np.zeros((1, 18), np.uint8), pc, np.ones(8, np.float32))
    # the numpy packers refuse what the format cannot hold
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        R.pack_gemm_qb4w(np.full((4, 2), 8), np.ones((2, 1), np.float32), 4)
    with pytest.raises(ValueError, match="multiple of 4"):
        R.pack_gemm_qb4w(np.zeros((4, 2), np.int8), np.ones((2, 1), np.float32), 6)
    with pytest.raises(ValueError, match="scales must be"):
        R.pack_gemm_qb4w(np.zeros((8, 2), np.int8), np.ones((2, 1), np.float32), 4)


@pytest.mark.parametrize("kind", ["gemm", "conv"])
def test_oversubscribed_threads_are_stable(kind, rng):
    """More threads than cores, so threads get preempted mid-region: every one of many calls gives
    the reference's bits (a per-thread rectangle shared between threads would show up here)."""
    prev = K.qint8_set_min_work(1)
    try:
        if kind == "gemm":
            q, s, zp, bias = _layer(rng, 70, 65, 32)
            x = rng.integers(0, 256, (37, 70)).astype(np.uint8)
            packed = R.pack_gemm_qb4w(q, s, 32, bias, zp)
            off = R.unpack_qb4w(packed)["offset"]
            scale = np.full(65, 0.02, np.float32)
            ref = R.qgemm(x, q, s, 32, off, scale, out_u8=False)
            run = lambda n: K.qgemm_u8s4(x, packed, scale, out_dtype=np.float32, num_threads=n)  # noqa: E731
        else:
            q, s, zp, bias = _layer(rng, 72, 33, 32, conv=(33, 8, 3, 3))
            x = rng.integers(0, 256, (1, 9, 11, 8)).astype(np.uint8)
            packed = R.pack_conv_qb4w(q, s, 32, bias, zp)
            off = R.unpack_qb4w(packed)["offset"]
            scale = np.full(33, 0.02, np.float32)
            geo = ((1, 1), (1, 1, 1, 1), (1, 1))
            ref = R.qconv2d_nhwc(x, q, s, 32, off, scale, zp, *geo, out_u8=False)
            run = lambda n: K.qconv2d_u8s4_nhwc(x, packed, scale, *geo, out_dtype=np.float32,  # noqa: E731
                                                num_threads=n)
        for i in range(400):
            np.testing.assert_array_equal(run(2 + i % 5), ref)
    finally:
        K.qint8_set_min_work(prev)
