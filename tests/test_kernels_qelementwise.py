"""The streaming uint8 kernels (slot stream_u8: kernels/stream-u8-body.inc built per ISA) against
their numpy definitions in qinfer.reference.qops: bit-exact over odd shapes, saturating values,
NaN / inf, every ISA variant and thread count; bad arguments raise ValueError, never crash."""
import numpy as np
import pytest

from qinfer._ext import _kernels as k
from qinfer.runtime import cpu
from qinfer.reference import qops
from qinfer.reference.conv import max_pool

@pytest.fixture(params=cpu.supported_isas(), autouse=True)
def isa(request):
    with cpu.isa_cap(request.param):
        assert k.kernel_names()["stream_u8"].endswith("__" + request.param)
        yield request.param


SHAPES = [(1, 1, 1, 1), (1, 3, 7, 5), (2, 17, 3, 65), (1, 63, 9, 1), (3, 65, 2, 17), (1, 16, 64, 64),
          (2, 48, 16, 8), (2, 3, 13, 11), (1, 24, 37, 41), (2, 33, 45, 30)]
# (2, 48, 16, 8): whole 16-channel x 64-pixel layout tiles only; (2, 3, 13, 11): an RGB image,
# whole 64-pixel tiles and a tail; the last two: more pixels than a 1024-pixel band, a partial
# band with a tile tail, and a partial 16-channel group
THREADS = [1, 2, 3]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("nt", THREADS)
def test_quantize_dequantize(shape, nt, rng):
    x = (rng.standard_normal(shape) * 40).astype(np.float32)
    flat = x.reshape(-1)
    flat[: min(5, flat.size)] = [np.nan, np.inf, -np.inf, 0.25, 1e30][: min(5, flat.size)]
    for s, zp in ((0.5, 7), (0.013, 128), (3.0, 0), (1e-6, 255)):
        for move in (False, True):
            want = qops.quantize_u8(x, s, zp, move)
            got = k.quantize_u8(x, s, zp, move, nt)
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(k.dequantize_u8(got, s, zp, move, nt),
                                          qops.dequantize_u8(got, s, zp, move))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("nt", THREADS)
def test_quantize_per_channel_to_nhwc(shape, nt, rng):
    """channel_scales: channel c of the NCHW input divided by its own scale, one zero point"""
    c = shape[1]
    mag = np.exp(rng.uniform(-6, 6, c)).astype(np.float32)     # channel ranges 1e5 apart
    x = (rng.standard_normal(shape) * mag.reshape(1, c, 1, 1)).astype(np.float32)
    flat = x.reshape(-1)
    flat[: min(5, flat.size)] = [np.nan, np.inf, -np.inf, 0.25, 1e30][: min(5, flat.size)]
    for zp in (0, 77, 255):
        scales = (mag / 40).astype(np.float32)
        scales[0] = 1e-6                                          # saturates both ways
        want = qops.quantize_u8(x, 1.0, zp, True, scales)
        got = k.quantize_u8(x, 1.0, zp, True, nt, scales)
        np.testing.assert_array_equal(got, want)
        # each channel is the per-tensor rule at its own scale
        for ch in {0, c // 2, c - 1}:
            np.testing.assert_array_equal(
                got[..., ch], qops.quantize_u8(x[:, ch:ch + 1], scales[ch], zp, True)[..., 0])


def test_quantize_per_channel_bad_arguments():
    x = np.zeros((1, 3, 2, 2), np.float32)
    with pytest.raises(ValueError, match="needs to_nhwc"):
        k.quantize_u8(x, 1.0, 0, False, 1, np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"float32 \[3\]"):
        k.quantize_u8(x, 1.0, 0, True, 1, np.ones(4, np.float32))
    for bad in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="finite floats > 0"):
            k.quantize_u8(x, 1.0, 0, True, 1, np.array([1, bad, 1], np.float32))
    with pytest.raises(Exception, match="channel_scales"):
        qops.quantize_u8(x, 1.0, 0, True, np.ones(4, np.float32))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("nt", THREADS)
def test_qadd(shape, relu, nt, rng):
    a = rng.integers(0, 256, shape).astype(np.uint8)
    b = rng.integers(0, 256, shape).astype(np.uint8)
    a.reshape(-1)[:1], b.reshape(-1)[:1] = 255, 255          # saturates high
    attrs = {"a_scale": 0.03, "a_zp": 120, "b_scale": 0.05, "b_zp": 3, "y_inv_scale": 12.5,
             "zp_y": 60, "activation": int(relu)}
    want = qops.qadd([a, b], attrs, 1)[0]
    got = k.qadd_u8(a, b, 0.03, 120, 0.05, 3, 12.5, 60, relu, nt)
    np.testing.assert_array_equal(got, want)
    assert want.max() == 255


POOLS = [  # kernel, strides, pads, dilations, ceil_mode
    ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 0),
    ((2, 2), (2, 2), (0, 0, 0, 0), (1, 1), 0),
    ((3, 3), (2, 2), (0, 0, 0, 0), (1, 1), 1),
    ((1, 3), (1, 2), (0, 1, 0, 1), (1, 1), 0),
    ((3, 2), (1, 1), (2, 0, 1, 1), (2, 1), 0),
    ((5, 5), (3, 3), (2, 2, 2, 2), (1, 1), 1),
]


def _attrs(kernel, strides, pads, dil, ceil):
    return {"kernel_shape": list(kernel), "strides": list(strides),
            "pads": [pads[0], pads[1], pads[2], pads[3]], "dilations": list(dil), "ceil_mode": ceil}


@pytest.mark.parametrize("pool", [POOLS[0], POOLS[2], POOLS[-2]])
@pytest.mark.parametrize("nt", [1, 2])
def test_maxpool_u8_rows_wider_than_the_row_buffer(pool, nt, rng):
    """uint8 rows of more than 1 MiB take the kernel rows one by one (no row buffer)."""
    from qinfer.runtime.qops import _maxpool_geometry
    attrs = _attrs(*pool)
    xh = rng.integers(0, 256, (1, 4, 8200, 130)).astype(np.uint8)     # NHWC: 8200 x 130 bytes a row
    geo = _maxpool_geometry(attrs, (1, 130, 4, 8200))
    np.testing.assert_array_equal(k.maxpool2d_u8_nhwc(xh, *geo, num_threads=nt),
                                  qops.qmaxpool([xh], attrs, 1)[0])


@pytest.mark.parametrize("pool", [POOLS[0], POOLS[1], POOLS[-1]])
@pytest.mark.parametrize("nt", [1, 2])
def test_maxpool_f32_rows_wider_than_the_row_buffer(pool, nt, rng):
    """Input rows of more than 2048 floats take the tap-by-tap path of the float kernel."""
    from qinfer.runtime.qops import _maxpool_geometry
    attrs = _attrs(*pool)
    x = (rng.standard_normal((1, 2, 5, 2101)) * 10).astype(np.float32)
    x.reshape(-1)[::37] = np.nan
    geo = _maxpool_geometry(attrs, x.shape)
    np.testing.assert_array_equal(k.maxpool2d_f32_nchw(x, *geo, num_threads=nt),
                                  max_pool([x], attrs, 1)[0])


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("shape", [(1, 3, 7, 5), (2, 17, 9, 13), (1, 64, 12, 12), (1, 96, 10, 9),
                                   (2, 130, 5, 11)])   # channel blocks of 16 / 32 / 64 and tails
@pytest.mark.parametrize("nt", THREADS)
def test_maxpool_u8_and_f32(pool, shape, nt, rng):
    from qinfer.runtime.qops import _maxpool_geometry
    attrs = _attrs(*pool)
    x = (rng.standard_normal(shape) * 10).astype(np.float32)
    x.reshape(-1)[::37] = np.nan
    try:
        want = max_pool([x], attrs, 1)[0]
    except Exception:   # noqa: BLE001 - a geometry the operator itself rejects
        pytest.skip("pool larger than the input")
    geo = _maxpool_geometry(attrs, x.shape)
    got = k.maxpool2d_f32_nchw(x, *geo, num_threads=nt)
    np.testing.assert_array_equal(got, want)      # NaN where the reference has NaN
    xq = rng.integers(0, 256, shape).astype(np.uint8)
    xh = np.ascontiguousarray(xq.transpose(0, 2, 3, 1))
    want_u8 = qops.qmaxpool([xh], attrs, 1)[0]
    got_u8 = k.maxpool2d_u8_nhwc(xh, *geo, num_threads=nt)
    np.testing.assert_array_equal(got_u8, want_u8)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("nt", THREADS)
def test_gap_and_channel_mul(shape, nt, rng):
    n, c, h, w = shape
    x = rng.integers(0, 256, (n, h, w, c)).astype(np.uint8)
    x[0, 0, 0, :] = 255
    np.testing.assert_array_equal(k.gap_u8_nhwc(x, 0.02, 17, nt), qops.gap_u8(x, 0.02, 17))
    for s_shape in ((n, c, 1, 1), (1, c, 1, 1), (c, 1, 1)):
        s = rng.uniform(-0.5, 3.0, s_shape).astype(np.float32)
        s.reshape(s_shape[-3], -1)[0] = 3.0       # channel 0 saturates high at x = 255 ...
        s.reshape(s_shape[-3], -1)[-1] = -0.5      # ... and the last channel low (when c > 1)
        attrs = {"x_scale": 0.05, "x_zp": 30, "y_inv_scale": 9.0, "zp_y": 10}
        want = qops.qmul_channel_op([x, s], attrs, 1)[0]
        m = qops.channel_factors(s, x.shape, 0.05, 9.0)
        np.testing.assert_array_equal(k.qmul_channel_u8_nhwc(x, m, 30, 10, nt), want)
        assert c == 1 or (want.max() == 255 and want.min() == 0)   # saturates both ends


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("c", [1, 7, 16, 17, 33, 63, 65])
@pytest.mark.parametrize("nt", [1, 2])
def test_requantize_edge_values(c, nt, rng):
    """The vector paths (whole runs and tails of QAdd and the channel multiply) round ties to
    even and send NaN to 0 as the scalar rule does: factors of 0.5 hit exact halves, and NaN, +-inf
    and -0.0 factors go through the same clamps."""
    x = rng.integers(0, 256, (2, 3, 5, c)).astype(np.uint8)
    specials = np.array([0.5, np.nan, np.inf, -np.inf, -0.0, 1.5, -0.5, 0.25], np.float32)
    m = np.resize(specials, (2, c)).astype(np.float32)
    s = m.reshape(2, c, 1, 1)
    attrs = {"x_scale": 1.0, "x_zp": 0, "y_inv_scale": 1.0, "zp_y": 0}
    want = qops.qmul_channel_op([x, s], attrs, 1)[0]
    np.testing.assert_array_equal(k.qmul_channel_u8_nhwc(x, m, 0, 0, nt), want)
    np.testing.assert_array_equal(k.qmul_channel_u8_nhwc(x, m, 1, 3, nt),
                                  qops.qmul_channel_op([x, s], dict(attrs, x_zp=1, zp_y=3), 1)[0])
    y = rng.integers(0, 256, x.shape).astype(np.uint8)
    for relu in (False, True):   # halves: (a + b) * 0.5; relu with negative sums
        attrs = {"a_scale": 1.0, "a_zp": 128, "b_scale": 1.0, "b_zp": 0, "y_inv_scale": 0.5,
                 "zp_y": 0, "activation": int(relu)}
        np.testing.assert_array_equal(k.qadd_u8(x, y, 1.0, 128, 1.0, 0, 0.5, 0, relu, nt),
                                      qops.qadd([x, y], attrs, 1)[0])
        np.testing.assert_array_equal(k.qadd_u8(x, y, 1.0, 0, 1.0, 0, 1e6, 0, relu, nt),  # saturates
                                      qops.qadd([x, y], dict(attrs, a_zp=0, y_inv_scale=1e6), 1)[0])


def test_bad_arguments_raise():
    x = np.zeros((1, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        k.quantize_u8(x, 0.1, 0)
    with pytest.raises(ValueError, match="scale"):
        k.quantize_u8(np.zeros(3, np.float32), 0.0, 0)
    with pytest.raises(ValueError, match="zero_point"):
        k.quantize_u8(np.zeros(3, np.float32), 0.1, 300)
    with pytest.raises(ValueError, match="rank-4"):
        k.quantize_u8(np.zeros(3, np.float32), 0.1, 0, True)
    with pytest.raises(ValueError, match="one shape"):
        k.qadd_u8(x, np.zeros((1, 4, 4, 2), np.uint8), 1, 0, 1, 0, 1, 0)
    with pytest.raises(ValueError, match="m must have shape"):
        k.qmul_channel_u8_nhwc(x, np.zeros((1, 4), np.float32), 0, 0)
    with pytest.raises(ValueError, match="larger than the padded"):
        k.maxpool2d_u8_nhwc(x, (5, 5))
    with pytest.raises(ValueError, match="rank 4"):
        k.maxpool2d_u8_nhwc(x[0], (2, 2))
    with pytest.raises(ValueError, match="C-contiguous"):
        k.gap_u8_nhwc(x[:, ::2], 0.1, 0)
    with pytest.raises(ValueError, match="pixels"):
        k.gap_u8_nhwc(np.zeros((1, 0, 4, 3), np.uint8), 0.1, 0)
