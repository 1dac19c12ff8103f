"""Quantization parameter math (qinfer.quant.qparams) and activation observers (qinfer.quant.observers).

Properties (hypothesis): zero exactly representable, zero point in range, round trip within
scale / 2 for activations, per-channel int8 and grouped int4 weights. Observers on known
distributions: outliers clipped by percentile / entropy / mse but not minmax, bounded histogram
memory, degenerate and non-finite data, determinism.
"""
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from qinfer.errors import CalibrationError
from qinfer.quant import (DEGENERATE_SCALE, SCALE_MIN, EntropyObserver, Histogram, MinMaxObserver,
                          MSEObserver, PercentileObserver, choose_qparams_asymmetric,
                          choose_qparams_symmetric, dequantize, dequantize_activation, make_observer,
                          quantize_activation, quantize_bias, quantize_weight_grouped,
                          quantize_weight_per_channel, requant_multiplier, requantize)

PROPS = settings(max_examples=150, deadline=None)
METHODS = ["minmax", "percentile", "entropy", "mse"]

# Tolerances (one table, STYLE.md): round trips are within scale / 2 up to float32 rounding of the
# division x / scale (relative 2**-24 of at most 2**bits levels) and of the dequantizing multiply.
REL = 2.0 ** -22


def _bound(scale, x):
    return np.asarray(scale, np.float64) * (0.5 + 256 * REL) + np.abs(x) * REL


finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)
tiny_or_normal = st.one_of(finite, st.floats(-2.0 ** -66, 2.0 ** -66, width=32))


# ============================================================================ qparams: activations
@PROPS
@given(st.tuples(tiny_or_normal, tiny_or_normal).map(sorted), st.integers(0, 2 ** 16), st.sampled_from([8, 4]))
def test_asymmetric_zero_exact_zero_point_in_range_round_trip(bounds, seed, bits):
    lo, hi = bounds
    scale, zp = choose_qparams_asymmetric(lo, hi, bits)
    qmax = 2 ** bits - 1
    assert isinstance(scale, np.float32) and np.isfinite(scale) and scale >= np.float32(SCALE_MIN)
    assert isinstance(zp, int) and 0 <= zp <= qmax
    # zero is exactly representable
    q0 = quantize_activation(np.float32(0.0), scale, zp, bits)
    assert int(q0) == zp and dequantize_activation(q0, scale, zp) == 0.0
    # the grid covers [min(lo, 0), max(hi, 0)] within half a step
    lo0, hi0 = min(lo, 0.0), max(hi, 0.0)
    assert float(scale) * (0 - zp) <= lo0 + float(scale) * 0.5 * (1 + 1e-5)
    assert float(scale) * (qmax - zp) >= hi0 - float(scale) * 0.5 * (1 + 1e-5)
    # round trip of in-range values
    r = np.random.default_rng(seed)
    inside = r.uniform(lo0, hi0, 64) if hi0 > lo0 else np.zeros(1)
    x = np.concatenate([[lo, hi, lo0, hi0], inside]).astype(np.float32)
    back = dequantize_activation(quantize_activation(x, scale, zp, bits), scale, zp)
    assert np.all(np.abs(back.astype(np.float64) - x) <= _bound(scale, x))


def test_asymmetric_known_values():
    s, zp = choose_qparams_asymmetric(-1.0, 3.0)
    assert s == np.float32(4.0 / 255) and zp == 64            # rint(255 / 4) = 64
    s, zp = choose_qparams_asymmetric(0.5, 2.0)                # widened to include 0
    assert s == np.float32(2.0 / 255) and zp == 0
    s, zp = choose_qparams_asymmetric(-2.0, -0.5)
    assert s == np.float32(2.0 / 255) and zp == 255
    assert choose_qparams_asymmetric(0.0, 0.0) == (np.float32(DEGENERATE_SCALE), 0)
    s, zp = choose_qparams_asymmetric(0.0, 1e-30)              # tiny: clamped, still covers
    assert s == np.float32(SCALE_MIN) and zp == 0
    s, zp = choose_qparams_asymmetric(-1.0, 1.0, bits=4)
    assert s == np.float32(2.0 / 15) and zp in (7, 8)


@pytest.mark.parametrize("lo,hi", [(math.nan, 1.0), (0.0, math.inf), (-math.inf, 0.0), (math.nan, math.nan),
                                   (2.0, 1.0), ("a", 1.0)])
def test_asymmetric_rejects_bad_ranges(lo, hi):
    with pytest.raises(CalibrationError):
        choose_qparams_asymmetric(lo, hi)


def test_asymmetric_rejects_float32_overflowing_range():
    with pytest.raises(CalibrationError, match="too wide"):
        choose_qparams_asymmetric(-1e300, 1e300)


def test_quantize_activation_rounds_half_to_even_and_saturates():
    scale, zp = np.float32(0.5), 10
    x = np.array([0.25, 0.75, 1.25, -0.25, -0.75], np.float32)      # x / scale = .5, 1.5, 2.5, -.5, -1.5
    assert quantize_activation(x, scale, zp).tolist() == [10, 12, 12, 10, 8]
    big = np.array([1e30, -1e30, np.inf, -np.inf, np.nan, 1000.0], np.float32)
    q = quantize_activation(big, scale, zp)
    assert q.dtype == np.uint8 and q.tolist() == [255, 0, 255, 0, zp, 255]
    with pytest.raises(ValueError):
        quantize_activation(x, scale, 256)


# ============================================================================ qparams: weights
@PROPS
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 12)),
                  elements=st.floats(-100, 100, width=32)),
       st.booleans())
def test_per_channel_int8_round_trip(w, narrow):
    q, scales = quantize_weight_per_channel(w, axis=0, bits=8, narrow=narrow)
    assert q.dtype == np.int8 and q.shape == w.shape
    assert scales.dtype == np.float32 and scales.shape == (w.shape[0],) and np.all(scales > 0)
    assert q.min() >= (-127 if narrow else -128) and q.max() <= 127
    back = dequantize(q, scales, axis=0)
    err = np.abs(back.astype(np.float64) - w)
    assert np.all(err <= _bound(scales[:, None], w))
    # a channel's largest |w| uses the full range (narrow: +-127 exactly)
    if narrow:
        absmax = np.abs(w).max(axis=1)
        nz = absmax > 1e-6
        assert np.all(np.abs(q).max(axis=1)[nz] == 127)


def test_per_channel_other_axis_and_zero_channel():
    w = np.zeros((3, 4, 2), np.float32)
    w[:, 1, :] = [[1.0, -2.0]] * 3
    q, s = quantize_weight_per_channel(w, axis=1)
    assert s.shape == (4,) and s[0] == np.float32(DEGENERATE_SCALE) and s[1] == np.float32(2.0 / 127)
    assert np.all(q[:, 0] == 0) and q[0, 1].tolist() == [64, -127]     # rint(63.5) = 64 (half even)
    np.testing.assert_array_equal(dequantize(q, s, axis=1)[:, 0], 0.0)


@PROPS
@given(st.integers(1, 5), st.integers(1, 40), st.integers(1, 16), st.booleans(), st.integers(0, 2 ** 16))
def test_grouped_int4_round_trip(n, k, group, narrow, seed):
    r = np.random.default_rng(seed)
    w = (r.standard_normal((n, k)) * r.uniform(0.01, 10)).astype(np.float32)
    if seed % 5 == 0:
        w[0] = 0.0                                               # an all-zero row
    q, scales = quantize_weight_grouped(w, group, bits=4, narrow=narrow)
    groups = -(-k // group)
    assert q.shape == (n, k) and q.dtype == np.int8
    assert scales.shape == (n, groups) and scales.dtype == np.float32 and np.all(scales > 0)
    assert q.min() >= (-7 if narrow else -8) and q.max() <= 7
    back = dequantize(q, scales, group_size=group)
    per_col = np.repeat(scales, group, axis=1)[:, :k]
    assert np.all(np.abs(back.astype(np.float64) - w) <= _bound(per_col, w))
    # each group's scale comes from its own (real, unpadded) columns
    for g in range(groups):
        cols = w[:, g * group:(g + 1) * group]
        absmax = np.abs(cols).max(axis=1)
        expect = choose_qparams_symmetric(absmax, 4, narrow)
        np.testing.assert_array_equal(scales[:, g], expect)


def test_symmetric_scales():
    assert choose_qparams_symmetric(127.0) == np.float32(1.0)
    assert choose_qparams_symmetric(7.0, bits=4) == np.float32(1.0)
    assert choose_qparams_symmetric(127.5, narrow=False) == np.float32(1.0)
    s = choose_qparams_symmetric(np.array([0.0, 1e-30, 254.0]))
    assert s.dtype == np.float32 and s.tolist() == [DEGENERATE_SCALE, np.float32(SCALE_MIN), 2.0]
    for bad in (np.nan, np.inf, -1.0):
        with pytest.raises(CalibrationError):
            choose_qparams_symmetric(bad)


def test_weight_errors():
    with pytest.raises(CalibrationError, match="non-finite|NaN"):
        quantize_weight_per_channel(np.array([[1.0, np.nan]], np.float32))
    with pytest.raises(CalibrationError, match="NaN"):
        quantize_weight_grouped(np.array([[np.inf, 1.0]], np.float32), 2)
    with pytest.raises(ValueError):
        quantize_weight_grouped(np.ones((2, 3, 4), np.float32), 2)
    with pytest.raises(ValueError):
        quantize_weight_grouped(np.ones((2, 4), np.float32), 0)


# ============================================================================ requantization
def test_requant_multiplier_and_rounding_rule():
    m = requant_multiplier(0.02, np.array([0.01, 0.5], np.float32), 0.1)
    assert m.dtype == np.float32
    w64 = np.array([0.01, 0.5], np.float32).astype(np.float64)      # float64 math, one rounding
    np.testing.assert_array_equal(m, (0.02 * w64 / 0.1).astype(np.float32))
    # THE rule: rint(float32(acc) * M) + zp, half to even, then saturate
    acc = np.array([[1, 1], [3, 3], [5, -5], [10 ** 6, -(10 ** 6)], [-7, 7]], np.int32)
    mult = np.array([0.5, 0.25], np.float32)
    got = requantize(acc, mult, 100, axis=1)
    want = [[100, 100], [102, 101], [102, 99], [255, 0], [96, 102]]   # .5->0, 1.5->2, 2.5->2, -1.25->-1
    assert got.dtype == np.uint8 and got.tolist() == want
    r = np.random.default_rng(1)
    acc = r.integers(-2 ** 31, 2 ** 31 - 1, size=(64, 3), dtype=np.int64).astype(np.int32)
    mult = r.uniform(1e-9, 1e-4, 3).astype(np.float32)
    manual = np.clip(np.rint(acc.astype(np.float32) * mult) + 7, 0, 255)
    np.testing.assert_array_equal(requantize(acc, mult, 7, axis=1), manual.astype(np.uint8))
    with pytest.raises(CalibrationError):
        requant_multiplier(0.0, [1.0], 1.0)
    with pytest.raises(CalibrationError):
        requant_multiplier(1.0, [1.0, -1.0], 1.0)
    with pytest.raises(TypeError):
        requantize(acc.astype(np.int64), mult, 0)


def test_quantize_bias():
    b = quantize_bias(np.array([1.0, -0.5, 1e12]), 0.5, np.array([0.1, 0.25, 1e-3]))
    assert b.dtype == np.int32 and b.tolist() == [20, -4, 2 ** 31 - 1]
    with pytest.raises(CalibrationError):
        quantize_bias(np.array([np.nan]), 1.0, [1.0])


# ============================================================================ observers
def _gauss_with_outliers(rng, batches=10, n=100_000):
    out = [rng.standard_normal(n).astype(np.float32) for _ in range(batches)]
    out[3][17] = 30.0          # one outlier each side, 30 sigma out
    out[7][5] = -25.0
    return out


def test_outliers_clipped_except_by_minmax(rng):
    data = _gauss_with_outliers(rng)
    ranges = {}
    for m in METHODS:
        obs = make_observer(m)
        for x in data:
            obs.update(x)
        ranges[m] = obs.range()
        scale, zp = obs.qparams()
        assert 0 <= zp <= 255 and scale > 0
    assert ranges["minmax"] == (-25.0, 30.0)
    for m in ("percentile", "entropy", "mse"):
        lo, hi = ranges[m]
        assert -25.0 * 0.6 < lo < -2.0 and 2.0 < hi < 30.0 * 0.6, (m, ranges[m])
    lo, hi = ranges["percentile"]                     # 99.99 %: N(0, 1) quantile 3.719
    assert abs(lo + 3.719) < 0.15 and abs(hi - 3.719) < 0.15


def test_no_outliers_little_clipping(rng):
    x = rng.standard_normal(200_000).astype(np.float32)
    mm = MinMaxObserver().update(x).range()
    for m in ("percentile", "entropy", "mse"):
        lo, hi = make_observer(m).update(x).range()
        assert 0.6 * mm[1] < hi <= mm[1] and mm[0] <= lo < 0.6 * mm[0], (m, lo, hi)


@pytest.mark.parametrize("method", METHODS)
def test_relu_data_stays_non_negative(method, rng):
    x = np.maximum(rng.standard_normal((50, 1000)).astype(np.float32), 0)
    lo, hi = make_observer(method).update(x).range()
    # percentile interpolates inside the bin [0, w) that holds the zeros: lo may be a hair above 0
    assert 0.0 <= lo <= 1e-5 * hi and 0 < hi <= x.max()
    scale, zp = make_observer(method).update(x).qparams()
    assert zp == 0


def test_histogram_bounded_and_exact(rng):
    h = PercentileObserver(bins=256)
    seen = []
    for i in range(200):       # ranges grow, shrink, shift sides: the histogram re-bins, never grows
        x = (rng.standard_normal(500) * 1.05 ** i + (i % 7 - 3) * 1.02 ** i).astype(np.float32)
        h.update(x)
        seen.append(x)
        assert h.hist.counts.shape == (256,)
    allx = np.concatenate(seen).astype(np.float64)
    assert h.hist.total == allx.size == h.hist.counts.sum() == h.count
    # exact 2:1 merging: the histogram equals one over all data on its final grid
    want, _ = np.histogram(allx, bins=h.hist.edges())
    moved = np.abs(np.cumsum(want) - np.cumsum(h.hist.counts)).max()
    assert moved <= 2                                   # edge values may fall either side
    assert h.hist.edges()[0] <= allx.min() and h.hist.edges()[-1] >= allx.max()
    # the window uses at least half its bins after widening
    occ = np.flatnonzero(h.hist.counts)
    assert occ[-1] - occ[0] >= 256 // 2 - 2
    assert not hasattr(h, "samples")


def test_histogram_first_batch_full_resolution_and_zero_edge():
    h = Histogram(2048)
    h.add(np.linspace(-1.0, 3.0, 10_001))
    assert h.width == pytest.approx(4.0 / 2045)
    e = h.edges()
    assert np.any(e == 0.0)                             # zero is a bin edge
    h2 = Histogram(64)
    h2.add(np.zeros(10))                                # zeros before any non-zero value
    assert h2.width is None and h2.zeros == 10
    h2.add(np.array([2.0]))
    assert h2.counts.sum() == 11 and h2.zeros == 0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("value", [3.0, -2.0, 0.0])
def test_constant_and_zero_tensors(method, value):
    obs = make_observer(method)
    for _ in range(3):
        obs.update(np.full((4, 5), value, np.float32))
    lo, hi = obs.range()
    assert lo == hi == value
    scale, zp = obs.qparams()
    if value == 0.0:
        assert (scale, zp) == (np.float32(DEGENERATE_SCALE), 0)
    q = quantize_activation(np.float32(value), scale, zp)
    assert abs(float(dequantize_activation(q, scale, zp)) - value) <= float(scale) / 2 * (1 + 1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_non_finite_ignored_with_one_warning(method, rng):
    obs = make_observer(method, name="act")
    x = rng.standard_normal(1000).astype(np.float32)
    x[:3] = [np.nan, np.inf, -np.inf]
    with pytest.warns(RuntimeWarning, match="'act'.*non-finite") as rec:
        obs.update(x)
        obs.update(x)
    assert len([w for w in rec if issubclass(w.category, RuntimeWarning)]) == 1
    lo, hi = obs.range()
    assert np.isfinite(lo) and np.isfinite(hi) and obs.nonfinite == 6
    ref = make_observer(method).update(x[3:])
    ref.update(x[3:])
    assert (lo, hi) == ref.range()


@pytest.mark.parametrize("method", METHODS)
def test_all_non_finite_or_no_float_data_raises(method):
    obs = make_observer(method, name="v")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        obs.update(np.array([np.nan, np.inf], np.float32))
    with pytest.raises(CalibrationError, match="'v'.*non-finite"):
        obs.qparams()
    obs2 = make_observer(method, name="ids")
    obs2.update(np.arange(10, dtype=np.int64))          # integer tensors are skipped
    obs2.update(np.array([True, False]))
    obs2.update(np.zeros((0, 3), np.float32))           # empty: nothing to see
    assert obs2.count == 0
    with pytest.raises(CalibrationError, match="'ids'.*no float data"):
        obs2.range()


@pytest.mark.parametrize("method", METHODS)
def test_deterministic_and_dtype_agnostic(method, rng):
    data = [rng.standard_normal((8, 33)).astype(np.float32) * (i + 1) for i in range(6)]
    a, b, c = make_observer(method), make_observer(method), make_observer(method)
    for x in data:
        a.update(x)
        b.update(x.copy())
        c.update(x.astype(np.float16).astype(np.float32))
    assert a.range() == b.range() and a.qparams() == b.qparams()
    h = make_observer(method).update(np.float16(1.5) * np.ones(4, np.float16))
    assert h.range() == (1.5, 1.5)


def test_percentile_100_is_minmax_and_bits(rng):
    x = rng.standard_normal(5000).astype(np.float32)
    assert PercentileObserver(100).update(x).range() == MinMaxObserver().update(x).range()
    ent = EntropyObserver().update(x)
    for bits in (4, 8):                                 # ranges depend on the levels, are cached per bits
        lo, hi = ent.range(bits=bits)
        assert x.min() <= lo < 0 < hi <= x.max()
        assert ent.range(bits=bits) == (lo, hi)
    s, zp = MSEObserver().update(x).qparams(bits=4)
    assert 0 <= zp <= 15
    with pytest.raises(ValueError):
        PercentileObserver(30)


def test_make_observer():
    assert isinstance(make_observer("minmax"), MinMaxObserver)
    assert make_observer("percentile", percentile=99.9).percentile == 99.9
    assert isinstance(make_observer("entropy"), EntropyObserver)
    assert isinstance(make_observer("mse", bins=512), MSEObserver)
    for bad in ("kl", "", None, 3):
        with pytest.raises(CalibrationError, match="'minmax', 'percentile', 'entropy', 'mse'"):
            make_observer(bad)


# ----------------------------------------------------------------------------- per channel
@pytest.mark.parametrize("method", METHODS)
def test_channel_qparams_cover_each_channel_with_one_zero_point(method, rng):
    """Per-channel ranges of NCHW data (axis 1), one zero point: on data without outliers every
    value round-trips within its channel's scale / 2 (minmax: exactly its range, nothing clipped),
    and a channel 1000x narrower than the others gets a scale near 1000x finer."""
    mag = np.array([1e-3, 1.0, 2.0, 5.0, 1.0], np.float32)
    shift = np.array([0.0, 0.0, 0.5, -1.0, 3.0], np.float32)    # channel 4 is positive only
    obs = make_observer(method)
    batches = [(rng.uniform(-1, 1, (2, 5, 6, 7)) * mag.reshape(1, 5, 1, 1)
                + shift.reshape(1, 5, 1, 1) * mag.reshape(1, 5, 1, 1)).astype(np.float32)
               for _ in range(3)]
    for x in batches:
        obs.update(x)
    scales, zp = obs.channel_qparams()
    assert scales.dtype == np.float32 and scales.shape == (5,) and isinstance(zp, int) and 0 <= zp <= 255
    s_t, _ = obs.qparams()
    assert scales[0] < s_t / 200
    if method == "minmax":
        x = np.concatenate(batches)
        q = np.clip(np.rint(x / scales.reshape(1, 5, 1, 1)) + zp, 0, 255)
        err = np.abs((q - zp) * scales.reshape(1, 5, 1, 1) - x)
        assert np.all(err <= scales.reshape(1, 5, 1, 1) * (0.5 + REL * 256))
        np.testing.assert_allclose(obs.ch_min, x.min(axis=(0, 2, 3)))
        np.testing.assert_allclose(obs.ch_max, x.max(axis=(0, 2, 3)))


@pytest.mark.parametrize("method,kw", [("percentile", {"percentile": 99.0}), ("entropy", {}),
                                       ("mse", {})])
def test_channel_qparams_clip_only_channels_beyond_the_tensor_range(method, kw, rng):
    """A method that clips the tensor's outliers clips the channel that holds them, not the
    others: a channel inside the tensor's range keeps its whole range."""
    obs = make_observer(method, **kw)
    x = rng.uniform(-1, 1, (4, 3, 32, 32)).astype(np.float32)
    x[:, 2] *= 0.5
    x[0, 0, 0, :64] = 1000.0                 # outliers, in channel 0 only
    obs.update(x)
    lo_t, hi_t = obs.range()
    if method == "percentile":
        assert hi_t < 100                    # this one clips them
    scales, zp = obs.channel_qparams()
    for c in (1, 2):
        covered = (255 - zp) * scales[c]
        assert covered >= x[:, c].max() * 0.999, (c, covered, x[:, c].max())
        assert covered <= x[:, c].max() * 1.05 + 1e-6 or zp == 255   # its own, not the tensor's
    assert (255 - zp) * scales[0] <= hi_t * 1.01


def test_channel_qparams_none_unless_rank4_with_one_channel_count(rng):
    obs = MinMaxObserver()
    obs.update(rng.standard_normal((3, 4)).astype(np.float32))
    assert obs.channel_qparams() is None
    obs = MinMaxObserver()
    obs.update(rng.standard_normal((1, 4, 2, 2)).astype(np.float32))
    assert obs.channel_qparams() is not None
    obs.update(rng.standard_normal((1, 5, 2, 2)).astype(np.float32))   # the channel count changed
    assert obs.channel_qparams() is None
    obs.update(rng.standard_normal((1, 4, 2, 2)).astype(np.float32))   # and stays off
    assert obs.channel_qparams() is None


def test_channel_qparams_ignore_non_finite_and_dead_channels(rng):
    x = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    x[0, 1] = 0.0                       # a dead channel: a finite scale, not 0
    x[0, 0, 0, 0], x[0, 2, 1, 1] = np.nan, np.inf
    obs = MinMaxObserver()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        obs.update(x)
    scales, zp = obs.channel_qparams()
    assert np.all(np.isfinite(scales)) and np.all(scales > 0)
    assert obs.ch_max[2] == np.nanmax(np.where(np.isfinite(x[0, 2]), x[0, 2], np.nan))
    s_t, _ = obs.qparams()
    assert scales[1] >= s_t / 4096 * 0.99     # the floor: at most 4096x finer than the tensor's
