"""fp32 GEMM (gemm_f32, packed A) and the conv driver on it (conv2d_f32), qinfer._ext._kernels.

Every test runs at every ISA tier this machine runs (capped through qinfer.runtime.cpu) and at 1,
2 and 3 threads: results must not depend on the thread count (bit-identical; 3 threads make
uneven splits) and must match a float64 reference. Tolerance (docs/conventions.md):
|got - ref| <= RTOL * S + ATOL, S = the same product on |a|, |b|, |bias| (the size of the terms
summed), with RTOL = 1e-5 loosened by sqrt(K / 64) for sums longer than 64 terms: float32
rounding error of a K-term sum grows about like sqrt(K) (K = 4608 in ResNet's last stage), and
twice that after a fused activation (activations are <= 1.5-Lipschitz).
Shape classes come from the tiles (8 x 32 AVX-512, 4 x 24 AVX2, 4 x 8 scalar; K blocks of 128;
column bands of 480/512): 1, 3, 7, 17, 63, 65, 128, 129 in every dimension, plus conv-sized ones.
"""
import math

import numpy as np
import pytest

from qinfer._ext import _kernels as K
from qinfer.reference import get as ref_op
from qinfer.runtime import cpu

ISAS = cpu.supported_isas()
THREADS = (1, 2, 3)
SIZES = (1, 3, 7, 17, 63, 65, 128, 129)
ACTS = [(K.ACT_NONE, 0.0, 0.0), (K.ACT_RELU, 0.0, 0.0), (K.ACT_CLIP, -0.5, 0.75),
        (K.ACT_HARDSWISH, 0.0, 0.0), (K.ACT_SIGMOID, 0.0, 0.0), (K.ACT_HARDSIGMOID, 0.2, 0.5)]


@pytest.fixture(params=ISAS)
def isa(request):
    with cpu.isa_cap(request.param):
        yield request.param


# ----------------------------------------------------------------------------- references

def ref_act(y, code, a=0.0, b=0.0):
    if code == K.ACT_RELU:
        return np.maximum(y, 0)
    if code == K.ACT_CLIP:
        return np.clip(y, a, b)
    if code == K.ACT_HARDSWISH:
        return y * np.clip(y / 6 + 0.5, 0, 1)
    if code == K.ACT_SIGMOID:
        return 1 / (1 + np.exp(-y))
    if code == K.ACT_HARDSIGMOID:
        return np.clip(a * y + b, 0, 1)
    return y


def rtol(k):
    return 1e-5 * max(1.0, math.sqrt(k / 64))


def ref_gemm(a, b, bias=None, axis=0):
    """float64 a @ b + bias, and S (the same on absolute values)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    y, s = a64 @ b64, np.abs(a64) @ np.abs(b64)
    if bias is not None:
        bb = bias.astype(np.float64)[:, None] if axis == 0 else bias.astype(np.float64)[None, :]
        y, s = y + bb, s + np.abs(bb)
    return y, s


def assert_close(got, ref, scale, k, act=False, what=""):
    tol = (2 if act else 1) * rtol(k) * scale + 1e-6
    err = np.abs(got.astype(np.float64) - ref)
    bad = ~(err <= tol)  # NaN counts as bad
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        raise AssertionError(f"{what}: {bad.sum()} elements out of tolerance; first at {i}: got "
                             f"{got[i]!r}, want {ref[i]!r} (tol {tol[i]:.3g})")


def run_threads(fn):
    """fn(num_threads) for every thread count; asserts bit-identical results; returns one."""
    outs = [fn(t) for t in THREADS]
    for t, o in zip(THREADS[1:], outs[1:]):
        assert np.array_equal(o, outs[0], equal_nan=True), f"{t} threads differ from 1 thread"
    return outs[0]


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------------------- gemm_f32

@pytest.mark.parametrize("m", SIZES, ids=lambda m: f"m{m}")
def test_gemm_shape_classes(isa, rng, m):
    """Every (m, n, k) in SIZES^3: below, at and above the tile and the vector width."""
    for n in SIZES:
        for k in SIZES:
            a, b = rand(rng, m, k), rand(rng, k, n)
            got = run_threads(lambda t: K.gemm_f32(a, b, num_threads=t))
            ref, s = ref_gemm(a, b)
            assert_close(got, ref, s, k, what=f"{isa} m{m} n{n} k{k}")


@pytest.mark.parametrize("m,n,k", [(24, 2000, 864), (64, 3136, 576), (128, 784, 1152),
                                   (256, 196, 2304), (512, 49, 4608), (1, 1024, 1024),
                                   (16, 1100, 1024), (33, 517, 300)],
                         ids=lambda v: str(v))
def test_gemm_big_shapes(isa, rng, m, n, k):
    if isa == "scalar" and m * n * k > 4e7:
        pytest.skip("scalar tier: the big shape classes are covered by the SIMD tiers")
    a, b = rand(rng, m, k), rand(rng, k, n)
    bias = rand(rng, m)
    pa = K.pack_gemm_a_f32(a)
    got = run_threads(lambda t: K.gemm_f32(a, b, bias=bias, num_threads=t))
    assert np.array_equal(K.gemm_f32_packed(pa, b, bias=bias, num_threads=2), got)
    ref, s = ref_gemm(a, b, bias)
    assert_close(got, ref, s, k, what=f"{isa} {m}x{n}x{k}")


@pytest.mark.parametrize("code,alpha,beta", ACTS, ids=lambda v: str(v))
@pytest.mark.parametrize("axis", [0, 1])
def test_gemm_bias_and_activations(isa, rng, code, alpha, beta, axis):
    for m, n, k in [(17, 65, 63), (8, 32, 300), (3, 7, 1), (65, 129, 129)]:
        a, b = rand(rng, m, k), rand(rng, k, n)
        bias = rand(rng, m if axis == 0 else n)
        got = run_threads(lambda t: K.gemm_f32(a, b, bias=bias, bias_axis=axis, activation=code,
                                               alpha=alpha, beta=beta, num_threads=t))
        ref, s = ref_gemm(a, b, bias, axis)
        assert_close(got, ref_act(ref, code, alpha, beta), s, k, act=True,
                     what=f"{isa} act {code} axis {axis} {m}x{n}x{k}")


def test_gemm_packed_a_is_bit_identical(isa, rng):
    for m, n, k in [(1, 5, 3), (9, 33, 17), (63, 65, 129), (130, 40, 260)]:
        a, b, bias = rand(rng, m, k), rand(rng, k, n), rand(rng, n)
        pa = K.pack_gemm_a_f32(a)
        assert (pa.m, pa.k, pa.groups) == (m, k, 1)
        want = K.gemm_f32(a, b, bias=bias, bias_axis=1, activation=K.ACT_RELU)
        got = run_threads(lambda t: K.gemm_f32(pa, b, bias=bias, bias_axis=1,
                                               activation=K.ACT_RELU, num_threads=t))
        assert np.array_equal(got, want)


def test_gemm_strided_operands_and_out_band(isa, rng):
    """a and b with row strides > columns; out a column band of a bigger matrix, whose other
    columns must stay untouched."""
    m, n, k = 19, 70, 45
    abig, bbig = rand(rng, m, k + 11), rand(rng, k, n + 5)
    a, b = abig[:, 3:3 + k], bbig[:, :n]
    y = np.full((m, n + 40), 7.0, np.float32)
    for t in THREADS:
        y[:] = 7.0
        r = K.gemm_f32(a, b, out=y[:, 17:17 + n], activation=K.ACT_RELU, num_threads=t)
        assert r.base is y or np.shares_memory(r, y)
        ref, s = ref_gemm(a, b)
        assert_close(y[:, 17:17 + n], ref_act(ref, K.ACT_RELU), s, k, act=True, what=isa)
        assert (y[:, :17] == 7.0).all() and (y[:, 17 + n:] == 7.0).all()
    # one row (its row stride is meaningless) into a one-row band
    y1 = np.zeros((1, n + 9), np.float32)
    K.gemm_f32(a[:1], b, out=y1[:, 4:4 + n])
    ref1, s1 = ref_gemm(a[:1], b)
    assert_close(y1[:, 4:4 + n], ref1, s1, k, what=isa)
    assert (y1[:, :4] == 0).all() and (y1[:, 4 + n:] == 0).all()


def test_gemm_k_zero_gives_bias_then_activation(isa):
    a, b = np.zeros((5, 0), np.float32), np.zeros((0, 9), np.float32)
    bias = np.linspace(-2, 2, 5).astype(np.float32)
    got = K.gemm_f32(a, b, bias=bias, activation=K.ACT_RELU, num_threads=2)
    assert np.array_equal(got, np.maximum(np.repeat(bias[:, None], 9, 1), 0))
    assert K.gemm_f32(np.zeros((0, 3), np.float32), np.zeros((3, 4), np.float32)).shape == (0, 4)


def test_gemm_nan_propagates(isa):
    a = np.ones((9, 4), np.float32)
    b = np.ones((4, 33), np.float32)
    b[2, 32] = np.nan
    for code, al, be in ACTS:
        got = K.gemm_f32(a, b, activation=code, alpha=al, beta=be)
        assert np.isnan(got[:, 32]).all() and not np.isnan(got[:, :32]).any(), code


def test_gemm_validation_errors(rng):
    a, b = rand(rng, 4, 5), rand(rng, 5, 6)
    with pytest.raises(ValueError, match="b must have 5 rows"):
        K.gemm_f32(a, rand(rng, 4, 6))
    with pytest.raises(ValueError, match="a must be a float32 matrix"):
        K.gemm_f32(a.astype(np.float64), b)
    with pytest.raises(ValueError, match="a must be a float32 matrix"):
        K.gemm_f32(rand(rng, 5, 4).T, b)  # columns not contiguous
    with pytest.raises(ValueError, match="b must be a float32 matrix"):
        K.gemm_f32(a, rand(rng, 5, 12)[:, ::2])
    with pytest.raises(ValueError, match="out must have shape"):
        K.gemm_f32(a, b, out=np.empty((4, 7), np.float32))
    with pytest.raises(ValueError, match="writable"):
        o = np.empty((4, 6), np.float32)
        o.flags.writeable = False
        K.gemm_f32(a, b, out=o)
    with pytest.raises(ValueError, match="out must not overlap a"):
        big = rand(rng, 4, 11)
        K.gemm_f32(big[:, :5], b, out=big[:, 5:])
    with pytest.raises(ValueError, match="bias must have 4 elements"):
        K.gemm_f32(a, b, bias=rand(rng, 6))
    with pytest.raises(ValueError, match="bias must have 6 elements"):
        K.gemm_f32(a, b, bias=rand(rng, 4), bias_axis=1)
    with pytest.raises(ValueError, match="bias_axis"):
        K.gemm_f32(a, b, bias_axis=2)
    with pytest.raises(ValueError, match="activation code"):
        K.gemm_f32(a, b, activation=9)
    with pytest.raises(ValueError, match="num_threads"):
        K.gemm_f32(a, b, num_threads=0)
    with pytest.raises(ValueError, match="PackedGemmA"):
        K.gemm_f32_packed(a, b)
    with pytest.raises(ValueError, match="pack_gemm_a_f32"):
        K.gemm_f32(K.pack_conv2d_weights_f32(rand(rng, 4, 2, 1, 1), group=2), rand(rng, 2, 3))


# ----------------------------------------------------------------------------- conv2d_f32

def ref_conv(x, w, bias, strides, pads, dil, group):
    attrs = {"strides": list(strides), "pads": list(pads[:2]) + list(pads[2:]),
             "dilations": list(dil), "group": group}
    inputs = [x.astype(np.float64), w.astype(np.float64)]
    if bias is not None:
        inputs.append(bias.astype(np.float64))
    y = ref_op("Conv")(inputs, attrs, 1)[0]
    absin = [np.abs(v) for v in inputs]
    s = ref_op("Conv")(absin, attrs, 1)[0]
    return y, s


# (C, H, W, M, KH, KW, strides, pads (t, l, b, r), dilations, group)
CONVS = [
    (3, 9, 11, 8, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),      # pointwise: x read in place
    (5, 7, 6, 17, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1), 1),      # 1x1 stride 2: gathered
    (4, 6, 5, 9, 1, 1, (1, 1), (1, 0, 2, 1), (1, 1), 1),       # 1x1 with padding
    (3, 12, 13, 16, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (7, 15, 14, 33, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1),
    (6, 11, 9, 10, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2), 2),     # dilation 2, groups 2
    (8, 9, 10, 12, 3, 3, (2, 1), (0, 1, 2, 0), (1, 2), 4),     # uneven everything, groups 4
    (3, 17, 16, 8, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 1),
    (5, 13, 12, 7, 5, 5, (2, 2), (1, 2, 3, 0), (1, 1), 1),
    (3, 23, 21, 9, 7, 7, (2, 2), (3, 3, 3, 3), (1, 1), 1),     # the 7x7 stem shape class
    (2, 3, 4, 5, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 1),       # kernel larger than input
    (4, 2, 2, 6, 3, 3, (1, 1), (2, 1, 2, 1), (2, 1), 2),       # dilated kernel > input
    (12, 8, 8, 12, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 12),    # depthwise -> dwconv2d_f32
    (6, 7, 7, 12, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 6),      # channel multiplier 2
    (65, 9, 8, 70, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),     # K = 585: several K blocks
    (16, 40, 30, 24, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),   # 1200 columns: several bands
]


@pytest.mark.parametrize("case", CONVS, ids=lambda c: "c{}_{}x{}_m{}_k{}x{}_s{}_p{}_d{}_g{}".format(
    c[0], c[1], c[2], c[3], c[4], c[5], "".join(map(str, c[6])), "".join(map(str, c[7])),
    "".join(map(str, c[8])), c[9]))
def test_conv2d_matches_reference(isa, rng, case):
    C, H, W, M, KH, KW, st, pads, dil, G = case
    x = rand(rng, 2, C, H, W)
    w = rand(rng, M, C // G, KH, KW)
    bias = rand(rng, M)
    got = run_threads(lambda t: K.conv2d_f32(x, w, bias, strides=st, pads=pads, dilations=dil,
                                             group=G, num_threads=t))
    ref, s = ref_conv(x, w, bias, st, pads, dil, G)
    assert got.shape == ref.shape
    assert_close(got, ref, s, C // G * KH * KW, what=f"{isa} {case}")
    pw = K.pack_conv2d_weights_f32(w, group=G)
    assert np.array_equal(K.conv2d_f32(x, pw, bias, strides=st, pads=pads, dilations=dil,
                                       group=G, num_threads=2), got)
    # rank 3 input, no bias, fused activation
    got3 = K.conv2d_f32(x[1], w, None, strides=st, pads=pads, dilations=dil, group=G,
                        activation=K.ACT_HARDSWISH)
    ref3, s3 = ref_conv(x[1:], w, None, st, pads, dil, G)
    assert_close(got3, ref_act(ref3[0], K.ACT_HARDSWISH), s3[0], C // G * KH * KW, act=True,
                 what=f"{isa} {case} rank 3")


@pytest.mark.parametrize("code,alpha,beta", ACTS, ids=lambda v: str(v))
def test_conv2d_activations_and_out(isa, rng, code, alpha, beta):
    x, w, bias = rand(rng, 1, 5, 10, 9), rand(rng, 11, 5, 3, 3), rand(rng, 11)
    out = np.full((1, 11, 5, 5), 3.0, np.float32)
    r = K.conv2d_f32(x, w, bias, out=out, strides=(2, 2), pads=(1, 1, 1, 1), activation=code,
                     alpha=alpha, beta=beta, num_threads=2)
    assert r is out
    ref, s = ref_conv(x, w, bias, (2, 2), (1, 1, 1, 1), (1, 1), 1)
    assert_close(out, ref_act(ref, code, alpha, beta), s, 45, act=True, what=f"{isa} act {code}")


def test_conv2d_big_map_bands(isa, rng):
    """A map much wider than a band (the im2col matrix is gathered band by band)."""
    if isa == "scalar":
        pytest.skip("scalar tier: same driver, covered by the small cases")
    x, w, bias = rand(rng, 1, 24, 96, 100), rand(rng, 32, 24, 3, 3), rand(rng, 32)
    got = run_threads(lambda t: K.conv2d_f32(x, w, bias, pads=(1, 1, 1, 1), num_threads=t))
    ref, s = ref_conv(x, w, bias, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    assert_close(got, ref, s, 216, what=isa)


def test_conv2d_validation_errors(rng):
    x, w = rand(rng, 1, 4, 5, 5), rand(rng, 6, 4, 3, 3)
    with pytest.raises(ValueError, match="C/group = 2 input channels"):
        K.conv2d_f32(x, w, group=2)
    with pytest.raises(ValueError, match="group must be >= 1 and divide"):
        K.conv2d_f32(x, rand(rng, 6, 1, 3, 3), group=3)
    with pytest.raises(ValueError, match="larger than the padded input"):
        K.conv2d_f32(x, rand(rng, 6, 4, 7, 7))
    with pytest.raises(ValueError, match="bias must have 6 elements"):
        K.conv2d_f32(x, w, rand(rng, 4))
    with pytest.raises(ValueError, match="out must have shape"):
        K.conv2d_f32(x, w, out=np.empty((1, 6, 4, 4), np.float32))
    with pytest.raises(ValueError, match="out must not overlap x"):
        big = rand(rng, 1, 10, 5, 5)
        K.conv2d_f32(big[:, :4].copy(), w, out=big[:, :6, :3, :3].copy())  # fine (copies)
        buf = np.zeros(400, np.float32)
        xx = buf[:100].reshape(1, 4, 5, 5)
        K.conv2d_f32(xx, w, out=buf[50:104].reshape(1, 6, 3, 3))
    with pytest.raises(ValueError, match="packed for group=2"):
        K.conv2d_f32(x, K.pack_conv2d_weights_f32(rand(rng, 6, 2, 3, 3), group=2), group=1)
    with pytest.raises(ValueError, match="x must be a C-contiguous float32"):
        K.conv2d_f32(x.astype(np.float64), w)


@pytest.mark.parametrize("kind", ["gemm", "conv"])
def test_repeated_oversubscribed_calls_are_bit_identical(kind):
    """More threads than cores (threads preempted mid-region), many calls: every result equals the
    1-thread one bit for bit -- a race in a driver shows up as a rare wrong tile."""
    from qinfer.runtime.cpu import _kernels as K
    rng = np.random.default_rng(0)
    if kind == "gemm":
        a = rng.standard_normal((67, 129)).astype(np.float32)
        b = rng.standard_normal((129, 70)).astype(np.float32)
        run = lambda nt: K.gemm_f32(a, b, num_threads=nt)  # noqa: E731
    else:
        x = rng.standard_normal((1, 8, 13, 17)).astype(np.float32)
        w = rng.standard_normal((40, 8, 3, 3)).astype(np.float32)
        run = lambda nt: K.conv2d_f32(x, w, None, None, (1, 1), (1, 1, 1, 1), num_threads=nt)  # noqa: E731
    want = run(1)
    for i in range(1000):
        np.testing.assert_array_equal(run(2 + i % 5), want)
