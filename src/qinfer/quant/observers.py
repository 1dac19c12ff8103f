"""Activation observers: watch tensors during calibration, then choose a clipping range.

Design: the "observe" step of observe / compute / pack (STYLE.md), after torch.ao's observers and
ONNX Runtime's calibrators. An observer sees float tensors through ``update(x)``; ``range(bits)``
returns the clipping range it chose and ``qparams(bits)`` the uint8 asymmetric ``(scale,
zero_point)`` of that range (``qparams.choose_qparams_asymmetric``, which also widens the range to
contain 0).

- ``MinMaxObserver``: running min / max.
- ``PercentileObserver``: the ``100 - p`` and ``p`` percentiles, from a histogram.
- ``EntropyObserver``: TensorRT-style KL-divergence calibration (variant below).
- ``MSEObserver``: the range minimising the mean squared quantization error over the histogram.

Histograms have bounded memory: ``Histogram`` keeps a fixed number of bins (2048 by default) on
a grid anchored at 0 (every bin edge is a multiple of the bin width ``w``, so 0 is always an edge).
The first non-zero batch sets ``w`` so that its range [min(x, 0), max(x, 0)] spans all the bins;
when later data fall outside the window, ``w`` doubles (pairs of bins merge exactly, no
interpolation) until everything fits, and the window is re-anchored. Samples are never kept.

Entropy variant: the candidate clipping ranges are ``[max(lo, -t), min(hi, t)]`` for thresholds
``t`` on bin edges (one parameter, as in TensorRT, whose histogram of ``|x|`` gives the same
family); for each candidate spanning ``n >= levels`` bins (``levels = 2**bits - 1 = 255``, the
uint8 grid over that range) the reference distribution P is the in-range histogram with each
side's outlier mass added to its edge bin, and Q merges the in-range bins (without outliers) into
``levels`` groups (bin ``j`` -> group ``floor(j * levels / n)``), spreading each group's mass
uniformly over the group's bins where P is non-zero. Zero entries of Q where P > 0 are smoothed to
1e-4 of the mean (MXNet / TensorRT ``_smooth_distribution``), and the candidate with the smallest
``KL(P || Q)`` wins, the widest on ties. Thresholds that cut the range below ``levels`` bins are not
tried, so the finest clip is bounded by the histogram's resolution (raise ``bins`` for heavier
outliers).

MSE variant: candidates ``[lo * a, hi * b]`` on a 48 x 48 grid of shrink factors ``a, b`` in
(0, 1] (one axis when a side is 0), refined by a 17 x 17 grid around the best; each candidate's
error is the histogram-weighted squared error of quantizing the bin centres with that range's
actual uint8 scale and zero point.

Exact zeros (ReLU outputs, padding) are left out of the KL and MSE searches: 0 is exactly
representable, so they carry no quantization error whatever the range, and a spike of zeros in the
first bin otherwise dominates the KL and drives the threshold down (pytorch-quantization's
entropy calibrator sets ``bins[0] = bins[1]`` for the same reason). Percentiles count them.

Non-finite data: NaN and +-inf are ignored, with one ``RuntimeWarning`` per observer (a stray
inf would otherwise destroy the whole range); an observer that never saw a finite float value
raises ``CalibrationError`` from ``range`` / ``qparams``. Integer and bool tensors are skipped
(they are not quantized as activations). Everything is deterministic.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from ..errors import CalibrationError
from .qparams import choose_qparams_asymmetric, uint_range

DEFAULT_BINS = 2048


# ------------------------------------------------------------------------------ histogram
class Histogram:
    """Fixed-size histogram on a zero-anchored grid that widens by exact 2:1 re-binning.

    Bin ``i`` of the window covers ``[(k0 + i) * width, (k0 + i + 1) * width)``. The window always
    contains the bin starting at 0. ``zeros`` counts exact zeros seen before the grid existed (all
    data 0 so far); they live in the bin starting at 0 once it does.
    """

    def __init__(self, bins=DEFAULT_BINS):
        if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 16:
            raise ValueError(f"bins must be an int >= 16, got {bins!r}")
        self.bins = int(bins)
        self.counts = np.zeros(self.bins, dtype=np.int64)
        self.width = None          # bin width (float64); None until a non-zero value is seen
        self.k0 = 0                # absolute index of the window's first bin
        self.zeros = 0             # exact zeros seen while width is None
        self.exact_zeros = 0       # exact zeros seen in all (they are also counted in the bins)
        self.total = 0

    # absolute bin index of values (float64 array)
    def _index(self, x):
        return np.floor(x / self.width).astype(np.int64)

    def _needed(self, lo, hi, width):
        """Absolute bin span [a, b] that [lo, hi] (with 0) needs at ``width``."""
        a = math.floor(min(lo, 0.0) / width)
        b = math.floor(max(hi, 0.0) / width)
        return a, max(b, 0)

    def add(self, x):
        """Add finite float64 values ``x`` (1-D)."""
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        self.total += x.size
        self.exact_zeros += int(x.size - np.count_nonzero(x))
        if self.width is None:
            if lo == 0.0 and hi == 0.0:
                self.zeros += x.size
                return
            span = max(hi, 0.0) - min(lo, 0.0)
            if not math.isfinite(span):
                raise CalibrationError(f"calibration: values span [{lo!r}, {hi!r}], too wide to histogram")
            # bins - 3: the span plus the misalignment of its ends with the zero-anchored grid
            # fits in the window, so the first batch gets the full resolution
            self.width = max(span / (self.bins - 3), 5e-324)
            a, _ = self._needed(lo, hi, self.width)
            self.k0 = a
            if self.zeros:
                self.counts[-self.k0] += self.zeros
                self.zeros = 0
        self._fit(lo, hi)
        idx = self._index(x) - self.k0
        np.clip(idx, 0, self.bins - 1, out=idx)      # guards float edge cases at the window ends
        self.counts += np.bincount(idx, minlength=self.bins)

    def _fit(self, lo, hi):
        """Widen (double the width) and re-anchor the window until [lo, hi] and the data fit."""
        occ = np.flatnonzero(self.counts)
        old_a = self.k0 + (int(occ[0]) if occ.size else -self.k0)
        old_b = self.k0 + (int(occ[-1]) if occ.size else -self.k0)
        factor = 1
        while True:
            w = self.width * factor
            a, b = self._needed(lo, hi, w)
            a = min(a, old_a // factor, 0)
            b = max(b, old_b // factor, 0)
            if b - a + 1 <= self.bins:
                break
            factor *= 2
        if factor == 1 and a >= self.k0 and b < self.k0 + self.bins:
            return
        # re-bin: old absolute bin k -> k // factor; new window starts at a
        new = np.zeros(self.bins, dtype=np.int64)
        if occ.size:
            k = (self.k0 + occ) // factor - a
            np.add.at(new, k, self.counts[occ])
        self.counts = new
        self.width = self.width * factor
        self.k0 = a

    # ---------------------------------------------------------------- views
    def edges(self):
        """Bin edges of the window (bins + 1 floats)."""
        return (self.k0 + np.arange(self.bins + 1)) * self.width

    def occupied(self, without_zeros=False):
        """(counts, left edges) of the occupied span of the window (first to last non-empty bin).

        ``without_zeros``: leave exact zeros out of the bin starting at 0 (the span is then that of
        the non-zero values; empty if all values were zeros).
        """
        if self.width is None:
            if without_zeros:
                return np.zeros(0, np.int64), np.zeros(0)
            return np.array([self.zeros], np.int64), np.array([0.0])
        counts = self.counts
        if without_zeros and self.exact_zeros:
            counts = counts.copy()
            counts[-self.k0] -= self.exact_zeros
        nz = np.flatnonzero(counts)
        if nz.size == 0:
            return np.zeros(0, np.int64), np.zeros(0)
        i, j = int(nz[0]), int(nz[-1]) + 1
        return counts[i:j], (self.k0 + np.arange(i, j)) * self.width


# ------------------------------------------------------------------------------ observers
class Observer:
    """Base class: filtering of non-float / non-finite data, min / max, caching of ranges.

    Subclasses implement ``_update(x)`` (x: finite float64 1-D, non-empty) and ``_range(bits)``.
    """

    method = None

    def __init__(self, name=None):
        self.name = name
        self.min = math.inf
        self.max = -math.inf
        self.count = 0              # finite values seen
        self.nonfinite = 0          # NaN / inf values ignored
        self.batches = 0
        self.ch_min = self.ch_max = None   # per channel (axis 1) of rank-4 data: channel_qparams
        self._ch_off = False
        # sums and counts of finite values per input channel of the layer reading the value
        # (axis 1 of rank-4 data, the last axis of other ranks): input_means()
        self._in_sum = self._in_count = None
        self._in_off = False
        self._warned = False
        self._cache = {}

    def _label(self):
        return f"value {self.name!r}" if self.name else "observer"

    def update(self, x):
        """Observe a tensor. Integer / bool tensors are skipped; NaN and inf are ignored (warned once)."""
        x = np.asarray(x)
        if x.dtype.kind != "f" or x.size == 0:
            return self
        finite = np.isfinite(x)
        all_finite = bool(finite.all())
        self._update_channels(x, None if all_finite else finite)
        self._update_means(x, None if all_finite else finite)
        x, finite = x.reshape(-1), finite.reshape(-1)
        if not all_finite:
            bad = int(x.size - np.count_nonzero(finite))
            self.nonfinite += bad
            if not self._warned:
                self._warned = True
                warnings.warn(f"calibration: {self._label()} contains {bad} non-finite value(s) "
                              f"(NaN/inf); they are ignored", RuntimeWarning, stacklevel=2)
            x = x[finite]
            if x.size == 0:
                return self
        x = x.astype(np.float64, copy=False)
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        self.count += x.size
        self.batches += 1
        self._cache.clear()
        self._update(x)
        return self

    def _update(self, x):
        pass

    def _update_channels(self, x, finite):
        """Running min / max per channel (axis 1) of rank-4 (NCHW) data, non-finite values
        (``finite``: x's mask, None when all are) left out. Data of another rank, or a channel
        count that changes, ends them for good."""
        if self._ch_off:
            return
        if x.ndim != 4 or (self.ch_min is not None and self.ch_min.shape != (x.shape[1],)):
            self.ch_min = self.ch_max = None
            self._ch_off = True
            return
        if finite is None:
            lo = x.min(axis=(0, 2, 3)).astype(np.float64)
            hi = x.max(axis=(0, 2, 3)).astype(np.float64)
        else:
            v = np.where(finite, x, np.nan)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)   # an all-NaN channel: NaN, left out
                lo = np.nanmin(v, axis=(0, 2, 3)).astype(np.float64)
                hi = np.nanmax(v, axis=(0, 2, 3)).astype(np.float64)
        if self.ch_min is None:
            self.ch_min, self.ch_max = lo, hi
        else:
            self.ch_min, self.ch_max = np.fmin(self.ch_min, lo), np.fmax(self.ch_max, hi)

    def _update_means(self, x, finite):
        """Running sums per channel: axis 1 of rank-4 data (a conv's input channels), the last
        axis of rank 1-3 data (a GEMM's reduction axis). Another rank or axis length ends them."""
        if self._in_off:
            return
        axis = 1 if x.ndim == 4 else x.ndim - 1
        if x.ndim == 0 or x.ndim > 4 or (self._in_sum is not None
                                          and self._in_sum.shape != (x.shape[axis],)):
            self._in_sum = self._in_count = None
            self._in_off = True
            return
        other = tuple(a for a in range(x.ndim) if a != axis)
        if finite is None:
            tot = x.sum(axis=other, dtype=np.float64)
            cnt = np.full(x.shape[axis], x.size // x.shape[axis], np.float64)
        else:
            tot = np.where(finite, x, 0).sum(axis=other, dtype=np.float64)
            cnt = finite.sum(axis=other).astype(np.float64)
        if self._in_sum is None:
            self._in_sum, self._in_count = tot, cnt
        else:
            self._in_sum, self._in_count = self._in_sum + tot, self._in_count + cnt

    def input_means(self):
        """float64 mean per channel as a layer reading this value sees its inputs (axis 1 of
        rank-4 data, the last axis otherwise; 0 for a channel with no finite value), or None
        when the value's rank or channel count changed during calibration."""
        if self._in_sum is None:
            return None
        return np.where(self._in_count > 0, self._in_sum / np.maximum(self._in_count, 1), 0.0)

    def channel_qparams(self, bits=8):
        """Per-channel uint8 quantization of rank-4 NCHW data that shares one zero point:
        ``(scales float32 [C], zero_point int)``, or None when the data was not rank 4 (or
        changed its channel count). Each channel's range is its own min / max, clipped to the
        range the observer's method chose for the whole tensor (a channel inside it keeps its
        own, an outlier channel is clipped where the tensor is); the zero point is the
        one that minimizes the sum of the channels' log step sizes (the channels' resolution
        taken together), and each channel's scale then covers its range on both sides of it."""
        self._check_seen()
        if self.ch_min is None:
            return None
        lo_t, hi_t = self.range(bits)
        lo = np.where(np.isfinite(self.ch_min), self.ch_min, 0.0)
        hi = np.where(np.isfinite(self.ch_max), self.ch_max, 0.0)
        lo = np.minimum(np.maximum(lo, min(lo_t, 0.0)), 0.0)   # clipped where the tensor's is
        hi = np.maximum(np.minimum(hi, max(hi_t, 0.0)), 0.0)
        qmax = float((1 << bits) - 1)
        z = np.arange(int(qmax) + 1, dtype=np.float64)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            need = np.maximum(np.where(hi > 0, hi / (qmax - z), 0.0),
                              np.where(lo < 0, -lo / z, 0.0))
        # dead (or 4096x narrower) channels: a scale, not a zero (int8 weights 4096x the
        # others' could not carry such a channel's share anyway)
        floor = max(hi_t - lo_t, 1e-30) / qmax / 4096.0
        steps = np.maximum(need, floor)
        zp = int(np.argmin(np.log(steps).sum(axis=1)))
        return steps[zp].astype(np.float32), zp

    def _check_seen(self):
        if self.count == 0:
            if self.nonfinite:
                raise CalibrationError(
                    f"calibration: {self._label()} held only non-finite values ({self.nonfinite} "
                    f"NaN/inf): cannot choose a quantization range")
            raise CalibrationError(f"calibration: {self._label()} observed no float data: "
                                   f"cannot choose a quantization range")

    def range(self, bits=8):
        """The clipping range ``(lo, hi)`` (floats) chosen for ``bits``-bit activations."""
        self._check_seen()
        key = int(bits)
        if key not in self._cache:
            lo, hi = self._range(key)
            self._cache[key] = (float(lo), float(hi))
        return self._cache[key]

    def _range(self, bits):
        return self.min, self.max

    def qparams(self, bits=8):
        """``(scale: np.float32, zero_point: int)`` of uint8 asymmetric quantization of ``range``."""
        lo, hi = self.range(bits)
        return choose_qparams_asymmetric(lo, hi, bits)

    def __repr__(self):
        if self.count == 0:
            return f"<{type(self).__name__} {self.name or ''} (no data)>"
        return (f"<{type(self).__name__} {self.name or ''} min={self.min:.6g} max={self.max:.6g} "
                f"n={self.count}>")


class MinMaxObserver(Observer):
    """Running min / max of everything observed (torch.ao ``MinMaxObserver``, ORT ``MinMax``)."""
    method = "minmax"


class _HistogramObserver(Observer):
    def __init__(self, bins=DEFAULT_BINS, name=None):
        super().__init__(name)
        self.hist = Histogram(bins)

    def _update(self, x):
        self.hist.add(x)


class PercentileObserver(_HistogramObserver):
    """Range ``[P(100 - p), P(p)]`` of the data, percentiles read off the histogram.

    Percentiles interpolate linearly within a bin and are clamped to the observed min / max, so
    ``percentile=100`` is min / max. Resolution: one bin (range / ``bins``).
    """
    method = "percentile"

    def __init__(self, percentile=99.99, bins=DEFAULT_BINS, name=None):
        super().__init__(bins, name)
        p = float(percentile)
        if not 50.0 < p <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile!r}")
        self.percentile = p

    def _range(self, bits):
        counts, left = self.hist.occupied()
        if self.hist.width is None:
            return self.min, self.max
        w = self.hist.width
        cdf = np.cumsum(counts)
        n = cdf[-1]
        tail = n * (100.0 - self.percentile) / 100.0

        def quantile(t, side):
            j = int(np.searchsorted(cdf, t, side=side))
            j = min(j, len(cdf) - 1)
            before = cdf[j - 1] if j else 0
            frac = (t - before) / counts[j] if counts[j] else 0.0
            return left[j] + min(max(frac, 0.0), 1.0) * w

        lo = quantile(tail, "right")
        hi = quantile(n - tail, "left")
        lo = min(max(lo, self.min), self.max)
        hi = min(max(hi, lo), self.max)
        return lo, hi


class EntropyObserver(_HistogramObserver):
    """KL-divergence calibration (TensorRT style, asymmetric variant: see the module docstring)."""
    method = "entropy"

    def _range(self, bits):
        if self.hist.width is None:
            return self.min, self.max
        _, qmax = uint_range(bits)
        levels = qmax
        counts, left = self.hist.occupied(without_zeros=True)
        if counts.size == 0:
            return self.min, self.max
        w = self.hist.width
        k_lo = int(round(left[0] / w))             # absolute bin index of the first occupied bin
        k_hi = k_lo + len(counts)                   # one past the last
        hist = counts.astype(np.float64)
        total = hist.sum()
        m_max = max(-k_lo, k_hi, 1)
        best_kl, best_m = math.inf, m_max
        eps = 1e-4
        for m in range(m_max, 0, -1):               # widest first: ties keep the wider range
            a = max(k_lo, -m) - k_lo                # in-range bins [a, b) of ``counts``
            b = min(k_hi, m) - k_lo
            n = b - a
            if n <= 0 or (n < levels and m != m_max):
                break                               # narrower thresholds only shrink n further
            sliced = hist[a:b]
            p = sliced.copy()
            p[0] += hist[:a].sum()
            p[-1] += hist[b:].sum()
            nonzero = p > 0
            group = (np.arange(n) * levels) // n if n >= levels else np.arange(n)
            sums = np.bincount(group, weights=sliced)
            norms = np.bincount(group, weights=nonzero)
            per_bin = np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0)
            q = per_bin[group] * nonzero
            p /= total
            qs = q.sum()
            if qs <= 0:
                continue
            q /= qs
            # smoothing: zero q where p > 0 gets eps of the mean bin mass
            zero_q = nonzero & (q <= 0)
            if zero_q.any():
                q[zero_q] = eps / n
                q /= q.sum()
            pp, qq = p[nonzero], q[nonzero]
            kl = float(np.sum(pp * np.log(pp / qq)))
            if kl < best_kl - 1e-12:
                best_kl, best_m = kl, m
        t = best_m * w
        lo = max(self.min, -t)
        hi = min(self.max, t)
        return lo, hi


class MSEObserver(_HistogramObserver):
    """Range minimising the histogram's mean squared uint8 quantization error (see module docstring)."""
    method = "mse"
    GRID = 48
    REFINE = 17

    def _errors(self, los, his, centres, counts, qmax):
        """Squared error sum for each candidate (los[i], his[i])."""
        out = np.empty(len(los))
        chunk = max(1, (1 << 19) // max(1, len(centres)))
        for s in range(0, len(los), chunk):
            lo = np.minimum(los[s:s + chunk], 0.0)[:, None]
            hi = np.maximum(his[s:s + chunk], 0.0)[:, None]
            scale = np.maximum((hi - lo) / qmax, 1e-30)
            zp = np.clip(np.rint(-lo / scale), 0, qmax)
            q = np.clip(np.rint(centres[None, :] / scale) + zp, 0, qmax)
            err = (centres[None, :] - (q - zp) * scale) ** 2
            out[s:s + chunk] = err @ counts
        return out

    def _range(self, bits):
        if self.hist.width is None:
            return self.min, self.max
        _, qmax = uint_range(bits)
        counts, left = self.hist.occupied(without_zeros=True)
        if counts.size == 0:
            return self.min, self.max
        keep = counts > 0
        w = self.hist.width
        centres = np.clip((left + 0.5 * w)[keep], self.min, self.max)
        weights = counts[keep].astype(np.float64)
        lo0, hi0 = min(self.min, 0.0), max(self.max, 0.0)

        def search(fa, fb):
            ga, gb = np.meshgrid(fa, fb, indexing="ij")
            ga, gb = ga.ravel(), gb.ravel()
            err = self._errors(lo0 * ga, hi0 * gb, centres, weights, qmax)
            # ties: prefer the widest range (largest factors), deterministic
            order = np.lexsort((-gb, -ga, err))
            i = order[0]
            return ga[i], gb[i]

        def axis(f_best, step, n):
            f = f_best + step * np.linspace(-1.0, 1.0, n)
            return np.unique(np.clip(f, step / 4, 1.0))

        coarse = np.linspace(1.0 / self.GRID, 1.0, self.GRID)
        fa = coarse if lo0 < 0 else np.ones(1)
        fb = coarse if hi0 > 0 else np.ones(1)
        a, b = search(fa, fb)
        step = 1.0 / self.GRID
        fa = axis(a, step, self.REFINE) if lo0 < 0 else np.ones(1)
        fb = axis(b, step, self.REFINE) if hi0 > 0 else np.ones(1)
        a, b = search(fa, fb)
        return max(self.min, lo0 * a), min(self.max, hi0 * b)


OBSERVERS = {"minmax": MinMaxObserver, "percentile": PercentileObserver,
             "entropy": EntropyObserver, "mse": MSEObserver}


def make_observer(method="minmax", name=None, **kwargs):
    """A new observer for ``method``: "minmax" | "percentile" | "entropy" | "mse".

    ``kwargs`` go to the observer's constructor (``percentile=``, ``bins=``).
    """
    cls = OBSERVERS.get(method) if isinstance(method, str) else None
    if cls is None:
        raise CalibrationError(f"unknown calibration method {method!r}; valid methods are "
                               + ", ".join(repr(m) for m in OBSERVERS))
    return cls(name=name, **kwargs)


__all__ = ["Histogram", "Observer", "MinMaxObserver", "PercentileObserver", "EntropyObserver",
           "MSEObserver", "OBSERVERS", "make_observer", "DEFAULT_BINS"]
