"""Float32 conv helper kernels (qinfer._ext._kernels) against plain numpy references written here.

Every test runs at every ISA tier this machine can run (capped through qinfer.runtime.cpu) and at
1 and 2 threads; results must not depend on the thread count (bit-identical) and must match the
float64 reference within float rounding. Tolerance: |got - ref| <= 1e-5 * (the same computation on
|x|, |w|, |b|) + 1e-6, i.e. 1e-5 relative to the size of the terms summed (sums of up to KH*KW
float32 products), so cancellation cannot make a correct result fail.
"""
import numpy as np
import pytest

from qinfer._ext import _kernels as K
from qinfer.runtime import cpu

ISAS = cpu.supported_isas()
THREADS = (1, 2)
RTOL = 1e-5   # float32 rounding over <= 49 products, relative to the sum of |terms|
ATOL = 1e-6


@pytest.fixture(params=ISAS)
def isa(request):
    with cpu.isa_cap(request.param):
        yield request.param


# ----------------------------------------------------------------------------- references

def out_size(n, k, s, p0, p1, d):
    return (n + p0 + p1 - d * (k - 1) - 1) // s + 1


def ref_dwconv(x, w, b, strides, pads, dil):
    """x[N, C, H, W], w[C, KH, KW], b[C] or None -> float64 [N, C, OH, OW]."""
    N, C, H, W = x.shape
    _, KH, KW = w.shape
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = strides, pads, dil
    OH, OW = out_size(H, KH, sh, pt, pb, dh), out_size(W, KW, sw, pl, pr, dw)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    y = np.zeros((N, C, OH, OW))
    for ky in range(KH):
        for kx in range(KW):
            win = xp[:, :, ky * dh:ky * dh + sh * (OH - 1) + 1:sh, kx * dw:kx * dw + sw * (OW - 1) + 1:sw]
            y += win * w[None, :, ky, kx, None, None]
    if b is not None:
        y += b[None, :, None, None]
    return y


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


def ref_im2col(x, k, strides, pads, dil):
    C, H, W = x.shape
    (KH, KW), (sh, sw), (pt, pl, pb, pr), (dh, dw) = k, strides, pads, dil
    OH, OW = out_size(H, KH, sh, pt, pb, dh), out_size(W, KW, sw, pl, pr, dw)
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr)))
    cols = np.empty((C, KH, KW, OH, OW), x.dtype)
    for ky in range(KH):
        for kx in range(KW):
            cols[:, ky, kx] = xp[:, ky * dh:ky * dh + sh * (OH - 1) + 1:sh, kx * dw:kx * dw + sw * (OW - 1) + 1:sw]
    return cols.reshape(C * KH * KW, OH * OW)


def ref_col2im(cols, shape, k, strides, pads, dil):
    C, H, W = shape
    (KH, KW), (sh, sw), (pt, pl, pb, pr), (dh, dw) = k, strides, pads, dil
    OH, OW = out_size(H, KH, sh, pt, pb, dh), out_size(W, KW, sw, pl, pr, dw)
    xp = np.zeros((C, H + pt + pb, W + pl + pr))
    c5 = cols.astype(np.float64).reshape(C, KH, KW, OH, OW)
    for ky in range(KH):
        for kx in range(KW):
            xp[:, ky * dh:ky * dh + sh * (OH - 1) + 1:sh, kx * dw:kx * dw + sw * (OW - 1) + 1:sw] += c5[:, ky, kx]
    return xp[:, pt:pt + H, pl:pl + W]


def assert_close(got, ref, scale, what=""):
    err = np.abs(got.astype(np.float64) - ref)
    tol = RTOL * scale + ATOL
    bad = err > tol
    assert not bad.any(), (f"{what}: {bad.sum()} of {bad.size} elements off; worst "
                           f"{err.max():.3g} (tolerance there {tol.flat[np.argmax(err - tol)]:.3g})")


# ----------------------------------------------------------------------------- dwconv2d_f32

# id: (N, C, H, W, KH, KW, strides, pads (t, l, b, r), dilations)
DW_CASES = {
    "3x3s1p1-c17-w65": (1, 17, 7, 65, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    "3x3s2p1-c7-w63": (1, 7, 17, 63, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1)),
    "3x3s2p1-even-w64": (1, 3, 16, 64, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1)),
    "5x5s1p2-c3-w17": (1, 3, 17, 17, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1)),
    "5x5s2p2-c65-w7": (1, 65, 7, 7, 5, 5, (2, 2), (2, 2, 2, 2), (1, 1)),
    "3x3d2p2": (1, 3, 17, 17, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2)),
    "3x3s1p0-valid": (1, 7, 9, 9, 3, 3, (1, 1), (0, 0, 0, 0), (1, 1)),
    "asym-pads": (1, 5, 11, 13, 3, 3, (1, 1), (0, 1, 2, 0), (1, 1)),
    "1x1-c63": (1, 63, 3, 3, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1)),
    "1x1s2": (1, 4, 7, 9, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1)),
    "pixel-3x3p1": (1, 3, 1, 1, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    "k5-larger-than-3x3-input": (1, 2, 3, 3, 5, 5, (1, 1), (1, 1, 1, 1), (1, 1)),
    "k7-on-w1": (1, 3, 9, 1, 7, 7, (1, 1), (3, 3, 3, 3), (1, 1)),
    "rect-2x7-s3x1-d1x2": (1, 5, 9, 13, 2, 7, (3, 1), (0, 3, 1, 0), (1, 2)),
    "s4-d3": (1, 3, 23, 29, 3, 3, (4, 4), (2, 2, 2, 2), (3, 3)),
    "s3-w17": (1, 2, 17, 17, 3, 3, (3, 3), (1, 1, 1, 1), (1, 1)),
    "big-pad": (1, 2, 3, 4, 3, 3, (1, 1), (4, 5, 4, 5), (1, 1)),
    "wide-w130": (1, 2, 3, 130, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    "mobilenet-7x7": (1, 33, 7, 7, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    "batch3": (3, 5, 6, 7, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    "c1-h1-w1-k1": (1, 1, 1, 1, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1)),
}


def _dw_inputs(rng, N, C, H, W, KH, KW):
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    w = rng.standard_normal((C, KH, KW), dtype=np.float32)
    b = rng.standard_normal(C, dtype=np.float32)
    return x, w, b


@pytest.mark.parametrize("case", list(DW_CASES), ids=list(DW_CASES))
def test_dwconv2d_matches_reference(isa, case, rng):
    N, C, H, W, KH, KW, s, p, d = DW_CASES[case]
    x, w, b = _dw_inputs(rng, N, C, H, W, KH, KW)
    ref = ref_dwconv(x, w, b, s, p, d)
    scale = ref_dwconv(np.abs(x), np.abs(w), np.abs(b), s, p, d)
    outs = []
    for nt in THREADS:
        y = K.dwconv2d_f32(x, w, b, strides=s, pads=p, dilations=d, num_threads=nt)
        assert y.shape == ref.shape and y.dtype == np.float32
        assert_close(y, ref, scale, f"{isa} {case} threads={nt}")
        outs.append(y)
    np.testing.assert_array_equal(outs[0], outs[1], err_msg="1 vs 2 threads not bit-identical")


@pytest.mark.parametrize("code,alpha,beta", [
    (K.ACT_NONE, 0.0, 0.0), (K.ACT_RELU, 0.0, 0.0), (K.ACT_CLIP, 0.0, 6.0), (K.ACT_CLIP, -0.5, 0.25),
    (K.ACT_HARDSWISH, 0.0, 0.0), (K.ACT_SIGMOID, 0.0, 0.0), (K.ACT_HARDSIGMOID, 0.2, 0.5),
], ids=["none", "relu", "relu6", "clip", "hardswish", "sigmoid", "hardsigmoid"])
@pytest.mark.parametrize("geom", ["3x3s1p1", "5x5s2p2", "3x3d2"])
def test_dwconv2d_fused_activation(isa, code, alpha, beta, geom, rng):
    KH, s, p, d = {"3x3s1p1": (3, (1, 1), (1, 1, 1, 1), (1, 1)),
                   "5x5s2p2": (5, (2, 2), (2, 2, 2, 2), (1, 1)),
                   "3x3d2": (3, (1, 1), (2, 2, 2, 2), (2, 2))}[geom]
    x, w, b = _dw_inputs(rng, 2, 17, 9, 21, KH, KH)
    x *= 3  # reach the clip / hardswish / sigmoid knees on both sides
    pre = ref_dwconv(x, w, b, s, p, d)
    scale = ref_dwconv(np.abs(x), np.abs(w), np.abs(b), s, p, d)
    ref = ref_act(pre, code, alpha, beta)
    outs = []
    for nt in THREADS:
        y = K.dwconv2d_f32(x, w, b, strides=s, pads=p, dilations=d, activation=code, alpha=alpha,
                           beta=beta, num_threads=nt)
        # activations are at most 1.5-Lipschitz (hardswish near 3): 2x the conv tolerance
        assert_close(y, ref, 2 * scale, f"{isa} act={code} threads={nt}")
        outs.append(y)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_dwconv2d_isas_agree_with_scalar(rng):
    """Every SIMD variant matches the scalar C variant to float rounding, odd sizes included."""
    x, w, b = _dw_inputs(rng, 1, 65, 17, 63, 3, 3)
    args = dict(strides=(2, 1), pads=(1, 0, 1, 2), dilations=(1, 2), activation=K.ACT_HARDSWISH)
    with cpu.isa_cap("scalar"):
        base = K.dwconv2d_f32(x, w, b, **args)
    scale = np.abs(ref_dwconv(np.abs(x), np.abs(w), np.abs(b), (2, 1), (1, 0, 1, 2), (1, 2)))
    for isa in ISAS:
        with cpu.isa_cap(isa):
            assert cpu.kernel_table()["dwconv2d_f32"].endswith("__" + isa)
            for nt in THREADS:
                got = K.dwconv2d_f32(x, w, b, num_threads=nt, **args)
                assert_close(got, base.astype(np.float64), 2 * scale, f"{isa} vs scalar")


@pytest.mark.parametrize("trial", range(6))
def test_dwconv2d_random_geometry(isa, trial, rng):
    sizes = (1, 3, 7, 17, 63, 65)
    N = int(rng.integers(1, 3))
    C, W = int(rng.choice(sizes)), int(rng.choice(sizes))
    H = int(rng.choice((1, 3, 7, 17)))
    KH, KW = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    s = tuple(int(v) for v in rng.integers(1, 3, 2))
    d = tuple(int(v) for v in rng.integers(1, 3, 2))
    p = [int(v) for v in rng.integers(0, 3, 4)]
    # make it legal: padded input at least the dilated kernel
    p[2] += max(0, d[0] * (KH - 1) + 1 - (H + p[0] + p[2]))
    p[3] += max(0, d[1] * (KW - 1) + 1 - (W + p[1] + p[3]))
    x, w, b = _dw_inputs(rng, N, C, H, W, KH, KW)
    ref = ref_dwconv(x, w, b, s, p, d)
    scale = ref_dwconv(np.abs(x), np.abs(w), np.abs(b), s, p, d)
    y1 = K.dwconv2d_f32(x, w, b, strides=s, pads=p, dilations=d, num_threads=1)
    y2 = K.dwconv2d_f32(x, w, b, strides=s, pads=p, dilations=d, num_threads=2)
    assert_close(y1, ref, scale, f"{isa} N{N} C{C} {H}x{W} k{KH}x{KW} s{s} p{p} d{d}")
    np.testing.assert_array_equal(y1, y2)


def test_dwconv2d_layouts_and_out(isa, rng):
    """3-D x, [C, 1, KH, KW] weights, no bias, a given out, read-only inputs."""
    x, w, _ = _dw_inputs(rng, 1, 6, 8, 10, 3, 3)
    x3 = x[0].copy()
    x3.flags.writeable = False
    w4 = w.reshape(6, 1, 3, 3).copy()
    w4.flags.writeable = False
    ref = ref_dwconv(x, w, None, (1, 1), (1, 1, 1, 1), (1, 1))[0]
    out = np.full((6, 8, 10), np.nan, np.float32)
    got = K.dwconv2d_f32(x3, w4, None, out, pads=(1, 1, 1, 1))
    assert got is out
    assert_close(out, ref, ref_dwconv(np.abs(x), np.abs(w), None, (1, 1), (1, 1, 1, 1), (1, 1))[0])


def test_dwconv2d_empty(isa):
    x = np.zeros((0, 4, 5, 5), np.float32)
    y = K.dwconv2d_f32(x, np.ones((4, 3, 3), np.float32), pads=(1, 1, 1, 1))
    assert y.shape == (0, 4, 5, 5)
    y = K.dwconv2d_f32(np.zeros((1, 0, 5, 5), np.float32), np.ones((0, 3, 3), np.float32))
    assert y.shape == (1, 0, 3, 3)


# ----------------------------------------------------------------------------- im2col / col2im

IM2COL_CASES = {
    "3x3s1p1-c3-w17": (3, 7, 17, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    "3x3s2p1-c1-w65": (1, 17, 65, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    "5x5d2p4-c7": (7, 9, 11, (5, 5), (1, 1), (4, 4, 4, 4), (2, 2)),
    "1x1-c63": (63, 3, 3, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
    "rect-2x7-s3x2-asym": (5, 9, 13, (2, 7), (3, 2), (0, 3, 1, 0), (1, 1)),
    "k-larger-than-input": (2, 2, 3, (5, 5), (1, 1), (2, 1, 2, 1), (1, 1)),
    "big-pad": (2, 3, 4, (3, 3), (2, 1), (4, 5, 4, 5), (1, 2)),
    "s4-w7": (3, 7, 7, (3, 3), (4, 4), (1, 1, 1, 1), (1, 1)),
}


@pytest.mark.parametrize("case", list(IM2COL_CASES), ids=list(IM2COL_CASES))
def test_im2col_exact(isa, case, rng):
    C, H, W, k, s, p, d = IM2COL_CASES[case]
    x = rng.standard_normal((C, H, W), dtype=np.float32)
    ref = ref_im2col(x, k, s, p, d)
    for nt in THREADS:
        out = np.full(ref.shape, np.nan, np.float32)
        got = K.im2col_f32(x, k, s, p, d, out=out, num_threads=nt)
        assert got is out
        np.testing.assert_array_equal(got, ref)  # a pure copy: exact


@pytest.mark.parametrize("case", list(IM2COL_CASES), ids=list(IM2COL_CASES))
def test_col2im_adjoint(isa, case, rng):
    C, H, W, k, s, p, d = IM2COL_CASES[case]
    OH, OW = out_size(H, k[0], s[0], p[0], p[2], d[0]), out_size(W, k[1], s[1], p[1], p[3], d[1])
    cols = rng.standard_normal((C * k[0] * k[1], OH * OW), dtype=np.float32)
    ref = ref_col2im(cols, (C, H, W), k, s, p, d)
    scale = ref_col2im(np.abs(cols), (C, H, W), k, s, p, d)
    bias = rng.standard_normal((C, 1, 1), dtype=np.float32)
    outs = []
    for nt in THREADS:
        out = np.broadcast_to(bias, (C, H, W)).copy()  # accumulates: pre-filled with a bias
        K.col2im_f32(cols, out, k, s, p, d, num_threads=nt)
        assert_close(out, ref + bias, scale + np.abs(bias), f"{isa} col2im threads={nt}")
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    # adjoint identity <im2col(x), cols> == <x, col2im(cols)>
    x = rng.standard_normal((C, H, W), dtype=np.float32)
    lhs = np.vdot(K.im2col_f32(x, k, s, p, d).astype(np.float64), cols.astype(np.float64))
    back = K.col2im_f32(cols, np.zeros((C, H, W), np.float32), k, s, p, d)
    rhs = np.vdot(x.astype(np.float64), back.astype(np.float64))
    assert abs(lhs - rhs) <= 1e-4 * (np.abs(x).sum() * np.abs(cols).max() * k[0] * k[1] + 1)


def test_col2im_threads_deterministic_many_channels(rng):
    C, H, W, k = 65, 9, 9, (3, 3)
    cols = rng.standard_normal((C * 9, 81), dtype=np.float32)
    outs = [K.col2im_f32(cols, np.zeros((C, H, W), np.float32), k, (1, 1), (1, 1, 1, 1),
                         num_threads=nt) for nt in (1, 2, 3, 7)]
    for o in outs[1:]:
        np.testing.assert_array_equal(outs[0], o)



TILE_CASES = {  # id: (C, OH, OW, KH, KW): out is [C, OH*KH, OW*KW]
    "one": (1, 1, 1, 1, 1),
    "2x2": (3, 5, 7, 2, 2),
    "2x2_odd_wide": (7, 3, 65, 2, 2),
    "3x1": (4, 2, 9, 3, 1),
    "1x3": (2, 17, 3, 1, 3),
    "3x3": (5, 4, 4, 3, 3),
    "many_channels": (65, 2, 3, 2, 2),
}
TILE_ACTS = {"none": (K.ACT_NONE, 0.0, 0.0), "relu": (K.ACT_RELU, 0.0, 0.0),
             "hardsigmoid": (K.ACT_HARDSIGMOID, 0.2, 0.5)}


@pytest.mark.parametrize("act", list(TILE_ACTS.values()), ids=list(TILE_ACTS))
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("case", list(TILE_CASES), ids=list(TILE_CASES))
def test_col2im_tiles_is_col2im_then_bias_act(isa, case, with_bias, act, rng):
    """The kernel == stride ConvTranspose path: bit for bit the general col2im into zeros followed
    by bias_act, at every ISA and thread count (negative zeros and saturating values included)."""
    C, OH, OW, kh, kw = TILE_CASES[case]
    cols = 4 * rng.standard_normal((C * kh * kw, OH * OW), dtype=np.float32)
    cols.flat[::5] = -0.0
    cols.flat[1::7] = np.float32(3.0e38)
    bias = rng.standard_normal(C, dtype=np.float32) if with_bias else None
    if bias is not None:
        bias[0] = -0.0
    ref = np.zeros((C, OH * kh, OW * kw), np.float32)
    K.col2im_f32(cols, ref, (kh, kw), (kh, kw))
    K.bias_act_f32(ref.reshape(C, -1), bias, 0, *act)
    for nt in THREADS + (3,):
        out = np.full_like(ref, np.nan)   # every element written
        K.col2im_tiles_f32(cols, out, (kh, kw), bias, *act, num_threads=nt)
        np.testing.assert_array_equal(out.view(np.int32), ref.view(np.int32),
                                      err_msg=f"{isa} threads={nt}")


def test_col2im_tiles_rejects_bad_shapes(rng):
    cols = rng.standard_normal((12, 6), dtype=np.float32)
    with pytest.raises(ValueError, match="multiples of the kernel"):
        K.col2im_tiles_f32(cols, np.empty((3, 5, 6), np.float32), (2, 2))
    with pytest.raises(ValueError, match="cols must have shape"):
        K.col2im_tiles_f32(cols, np.empty((3, 4, 4), np.float32), (2, 2))
    with pytest.raises(ValueError, match="bias must have 3"):
        K.col2im_tiles_f32(cols, np.empty((3, 4, 6), np.float32), (2, 2), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="kernel_shape"):
        K.col2im_tiles_f32(cols, np.empty((3, 4, 6), np.float32), (2.5, 2))
    with pytest.raises(ValueError):
        K.col2im_tiles_f32(cols, cols.reshape(3, 4, 6), (2, 2))   # out overlaps cols
    empty = K.col2im_tiles_f32(np.empty((12, 0), np.float32), np.empty((3, 0, 6), np.float32), (2, 2))
    assert empty.shape == (3, 0, 6)

# ----------------------------------------------------------------------------- bias_act_f32

@pytest.mark.parametrize("code,alpha,beta", [
    (K.ACT_NONE, 0.0, 0.0), (K.ACT_RELU, 0.0, 0.0), (K.ACT_CLIP, 0.0, 6.0),
    (K.ACT_HARDSWISH, 0.0, 0.0), (K.ACT_SIGMOID, 0.0, 0.0), (K.ACT_HARDSIGMOID, 0.2, 0.5),
], ids=["none", "relu", "relu6", "hardswish", "sigmoid", "hardsigmoid"])
@pytest.mark.parametrize("layout", ["CxHW", "NCxHW", "NxC", "no-bias"])
@pytest.mark.parametrize("cols", [1, 7, 17, 65])
def test_bias_act(isa, code, alpha, beta, layout, cols, rng):
    rows = {"CxHW": 17, "NCxHW": 3 * 5, "NxC": 3, "no-bias": 7}[layout]
    if layout == "NxC":
        rows, cols = cols, 17   # [N, C] with N in the odd sizes, C = 17
    y0 = 4 * rng.standard_normal((rows, cols), dtype=np.float32)
    if layout == "CxHW":
        bias, axis, b2 = rng.standard_normal(rows, dtype=np.float32), 0, None
        b2 = bias[:, None]
    elif layout == "NCxHW":
        bias, axis = rng.standard_normal(5, dtype=np.float32), 0
        b2 = np.tile(bias, 3)[:, None]
    elif layout == "NxC":
        bias, axis = rng.standard_normal(cols, dtype=np.float32), 1
        b2 = bias[None, :]
    else:
        bias, axis, b2 = None, 0, 0
    pre = y0.astype(np.float64) + b2
    ref = ref_act(pre, code, alpha, beta)
    outs = []
    for nt in THREADS:
        y = y0.copy()
        assert K.bias_act_f32(y, bias, axis, code, alpha, beta, num_threads=nt) is y
        assert_close(y, ref, 2 * (np.abs(y0) + np.abs(b2)), f"{isa} act={code} {layout}")
        outs.append(y)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_bias_act_large_threaded(isa, rng):
    y0 = rng.standard_normal((64, 4099), dtype=np.float32)
    b = rng.standard_normal(64, dtype=np.float32)
    ys = []
    for nt in (1, 2):
        y = y0.copy()
        K.bias_act_f32(y, b, 0, K.ACT_SIGMOID, num_threads=nt)
        ys.append(y)
    np.testing.assert_array_equal(ys[0], ys[1])
    assert_close(ys[0], ref_act(y0.astype(np.float64) + b[:, None], K.ACT_SIGMOID), np.ones(y0.shape))


def test_activation_special_values(isa):
    """NaN stays NaN in every activation and variant; infinities saturate like the scalar code."""
    v = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 100.0, -100.0, 3.0, -3.0] * 3, np.float32)
    for code, a, b in [(K.ACT_RELU, 0, 0), (K.ACT_CLIP, 0, 6), (K.ACT_HARDSWISH, 0, 0),
                       (K.ACT_SIGMOID, 0, 0), (K.ACT_HARDSIGMOID, 0.2, 0.5)]:
        y = v[None, :].copy()
        K.bias_act_f32(y, None, 0, code, a, b)
        y = y[0]
        assert np.isnan(y[0::9]).all(), f"act {code}: NaN not propagated"
        finite = ~np.isnan(v)
        with np.errstate(all="ignore"):
            ref = ref_act(v.astype(np.float64), code, a, b)
            ref_f = np.where(np.isnan(ref), 0, ref)   # hardswish(-inf) = -inf * 0: no answer
            ok = np.isnan(ref) | (y == ref_f) | (np.abs(y - ref_f) <= 1e-6 + 1e-6 * np.abs(ref_f))
        assert ok[finite].all(), f"act {code}: {y} vs {ref}"


# ----------------------------------------------------------------------------- validation

def _x(*shape):
    return np.zeros(shape, np.float32)


@pytest.mark.parametrize("call,match", [
    (lambda: K.dwconv2d_f32(_x(1, 3, 5, 5).astype(np.float64), _x(3, 3, 3)), "float32"),
    (lambda: K.dwconv2d_f32(np.zeros((1, 3, 5, 10), np.float32)[..., ::2], _x(3, 3, 3)), "C-contiguous"),
    (lambda: K.dwconv2d_f32(_x(3, 5), _x(3, 3, 3)), "rank 4"),
    (lambda: K.dwconv2d_f32(_x(1, 3, 5, 5), _x(4, 3, 3)), "one filter per channel"),
    (lambda: K.dwconv2d_f32(_x(1, 3, 5, 5), _x(3, 3, 3), _x(4)), "bias must have 3"),
    (lambda: K.dwconv2d_f32(_x(1, 3, 2, 2), _x(3, 3, 3)), "larger than the padded input"),
    (lambda: K.dwconv2d_f32(_x(1, 3, 5, 5), _x(3, 3, 3), out=_x(1, 3, 5, 5)), "out must have shape"),
    (lambda: K.dwconv2d_f32(_x(1, 3, 5, 5), _x(3, 3, 3), strides=(0, 1)), "strides"),
    (lambda: K.dwconv2d_f32(_x(1, 3, 5, 5), _x(3, 3, 3), pads=(1, 1, 1)), "pads"),
    (lambda: K.dwconv2d_f32(_x(1, 3, 5, 5), _x(3, 3, 3), pads=(-1, 0, 0, 0)), "pads"),
    (lambda: K.dwconv2d_f32(_x(1, 3, 5, 5), _x(3, 3, 3), dilations=(1, 0)), "dilations"),
    (lambda: K.dwconv2d_f32(_x(1, 3, 5, 5), _x(3, 3, 3), activation=9), "activation code"),
    (lambda: K.dwconv2d_f32(_x(1, 3, 5, 5), _x(3, 3, 3), activation=2, alpha=6, beta=0), "clip"),
    (lambda: K.dwconv2d_f32(_x(1, 3, 5, 5), _x(3, 3, 3), num_threads=0), "num_threads"),
    (lambda: K.dwconv2d_f32(_x(1, 3, 5, 5), _x(3, 3, 3), pads=(2**31, 0, 0, 0)), "too large"),
    (lambda: K.im2col_f32(_x(3, 5, 5), (3, 3), out=_x(27, 10)), "out must have shape"),
    (lambda: K.im2col_f32(_x(3, 5, 5), (3,)), "kernel_shape"),
    (lambda: K.col2im_f32(_x(27, 10), _x(3, 5, 5), (3, 3)), "cols must have shape"),
    (lambda: K.col2im_f32(_x(27, 9), np.zeros((3, 5, 5), np.float32)[::-1], (3, 3)), "C-contiguous"),
    (lambda: K.bias_act_f32(_x(6, 4), _x(4), 0), "dividing"),
    (lambda: K.bias_act_f32(_x(6, 4), _x(6), 1), "bias \\(axis=1\\) must have 4"),
    (lambda: K.bias_act_f32(_x(6, 4), None, 2), "axis"),
    (lambda: K.bias_act_f32(_x(24), None, 0), "rank 2"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_arguments_raise_valueerror(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_out_must_not_overlap_inputs():
    x = _x(1, 3, 5, 5)
    with pytest.raises(ValueError, match="overlap"):
        K.dwconv2d_f32(x, _x(3, 3, 3), pads=(1, 1, 1, 1), out=x)
    ro = _x(3, 4)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        K.bias_act_f32(ro)


@pytest.mark.parametrize("post", [(0.75, -0.125), (-1.5, None), (None, 0.3), (None, None)],
                         ids=["scale+shift", "scale", "shift", "none"])
@pytest.mark.parametrize("conv", ["dw3x3", "dw5x5s2", "1x1", "3x3p1", "3x3s2g2"])
@pytest.mark.parametrize("code", [K.ACT_NONE, K.ACT_HARDSWISH, K.ACT_RELU])
def test_post_affine_is_a_multiply_then_an_add_on_the_activation(isa, post, conv, code, rng):
    """post_scale / post_shift (a model's constant Mul, then Add, after the activation) give, bit
    for bit, numpy's float32 multiply and add on the kernel's own output without them: the same
    two roundings, in the epilogue of every kernel the conv reaches (depthwise, 1x1 in place, the
    banded im2col GEMM), each ISA, 1 and 2 threads."""
    C, M, KH, s, p, g = {"dw3x3": (16, 16, 3, 1, 1, 16), "dw5x5s2": (17, 17, 5, 2, 2, 17),
                         "1x1": (8, 24, 1, 1, 0, 1), "3x3p1": (5, 7, 3, 1, 1, 1),
                         "3x3s2g2": (6, 10, 3, 2, 1, 2)}[conv]
    x = (3 * rng.standard_normal((2, C, 11, 13))).astype(np.float32)
    x[0, 0, 0, :4] = [-0.0, 0.0, 1e-40, -1e-40]
    w = rng.standard_normal((M, C // g, KH, KH)).astype(np.float32)
    b = rng.standard_normal(M).astype(np.float32)
    args = dict(strides=(s, s), pads=(p,) * 4, group=g, activation=code)
    for nt in THREADS:
        y0 = K.conv2d_f32(x, w, b, num_threads=nt, **args)
        y = K.conv2d_f32(x, w, b, num_threads=nt, post_scale=post[0], post_shift=post[1], **args)
        want = y0.copy()
        if post[0] is not None:
            want = want * np.float32(post[0])
        if post[1] is not None:
            want = want + np.float32(post[1])
        np.testing.assert_array_equal(y, want, err_msg=f"{isa} {conv} threads={nt}")
        assert np.array_equal(np.signbit(y), np.signbit(want))
