"""The quantized IR ops' numpy definitions (reference/qops.py) against the rule written out plainly."""
import numpy as np
import pytest

from qinfer.reference import qops


def _rule(x, s, zp):
    t = np.rint(x.astype(np.float32) / np.float32(s)) + np.float32(zp)
    t = np.where(np.isnan(t), np.float32(zp), t)
    return np.clip(t, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape", [(1, 3, 7, 5), (2, 1, 1, 2), (1, 17, 3, 65), (5, 9)])
def test_quantize_rule_and_layouts(shape, rng):
    x = (rng.standard_normal(shape) * 50).astype(np.float32)
    flat = x.reshape(-1)
    flat[:4] = [np.nan, np.inf, -np.inf, 0.25]          # 0.25 / 0.5 = 0.5: half-way rounds to even
    s, zp = 0.5, 7
    want = _rule(x, s, zp)
    np.testing.assert_array_equal(qops.quantize_u8(x, s, zp), want)
    assert want.reshape(-1)[3] == zp and want.reshape(-1)[1] == 255 and want.reshape(-1)[2] == 0
    if x.ndim == 4:
        got = qops.quantize_op([x], {"scale": s, "zero_point": zp, "layout": "nchw_to_nhwc"}, 1)[0]
        np.testing.assert_array_equal(got, want.transpose(0, 2, 3, 1))
        assert got.flags.c_contiguous
        back = qops.dequantize_op([got], {"scale": s, "zero_point": zp, "layout": "nhwc_to_nchw"}, 1)[0]
        np.testing.assert_array_equal(back, (want.astype(np.int32) - zp).astype(np.float32) * np.float32(s))


@pytest.mark.parametrize("broadcast", [False, True])
@pytest.mark.parametrize("relu", [0, 1])
def test_qadd_rule(broadcast, relu, rng):
    a = rng.integers(0, 256, (2, 5, 4, 6)).astype(np.uint8)
    b = rng.integers(0, 256, (2, 1, 1, 6) if broadcast else (2, 5, 4, 6)).astype(np.uint8)
    at = {"a_scale": 0.03, "a_zp": 120, "b_scale": 0.05, "b_zp": 3, "y_inv_scale": 12.5, "zp_y": 60,
          "activation": relu}
    f = np.float32
    y = (a.astype(np.int32) - 120).astype(f) * f(0.03) + (b.astype(np.int32) - 3).astype(f) * f(0.05)
    if relu:
        y = np.maximum(y, f(0))
    want = np.rint(np.clip(y * f(12.5) + f(60), 0, 255)).astype(np.uint8)
    np.testing.assert_array_equal(qops.qadd([a, b], at, 1)[0], want)
    swapped = {"a_scale": 0.05, "a_zp": 3, "b_scale": 0.03, "b_zp": 120, "y_inv_scale": 12.5, "zp_y": 60,
               "activation": relu}
    y2 = (b.astype(np.int32) - 3).astype(f) * f(0.05) + (a.astype(np.int32) - 120).astype(f) * f(0.03)
    if relu:
        y2 = np.maximum(y2, f(0))
    want2 = np.rint(np.clip(y2 * f(12.5) + f(60), 0, 255)).astype(np.uint8)
    np.testing.assert_array_equal(qops.qadd([b, a], swapped, 1)[0], want2)
