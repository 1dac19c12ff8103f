"""Calibration: run the float graph on sample inputs and observe every float value.

Design: calibration data come in the three forms SPEC section 1 names (an iterable of feed dicts,
an iterable of arrays for single-input models, or an ``.npz`` path); ``iter_calibration`` turns
each into feed dicts, checking names and dtypes with ``CalibrationError`` messages that say
expected vs got. ``calibrate`` runs the numpy reference executor (the engine for calibration,
STYLE.md) with its observer hook, one observer per float value, and returns the observers; choosing
qparams from them and rewriting the graph is the quantizer's job.
"""
from __future__ import annotations

import os
import sys
import zipfile
from collections.abc import Mapping

import numpy as np

from ..errors import CalibrationError
from .observers import make_observer

_NUMERIC_KINDS = "biuf"     # bool, int, uint, float (complex, object, str, bytes, datetime are not)


def _check_numeric(name, x, where):
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception as e:   # ragged lists and the like
            raise CalibrationError(f"{where}input {name!r}: cannot convert to an array ({e})") from None
    if x.dtype.kind not in _NUMERIC_KINDS:
        raise CalibrationError(f"{where}input {name!r}: calibration data must be numeric, got dtype "
                               f"{x.dtype} ({x.dtype.kind!r} kind)")
    return x


def _check_names(got, input_names, where):
    got = list(got)
    if sorted(got) != sorted(input_names):
        missing = [n for n in input_names if n not in got]
        unknown = [n for n in got if n not in input_names]
        detail = []
        if missing:
            detail.append(f"missing {missing}")
        if unknown:
            detail.append(f"unknown {unknown}")
        raise CalibrationError(f"{where}calibration input names do not match the model: expected "
                               f"{list(input_names)}, got {got} ({', '.join(detail)})")


def _check_limit(value, what):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise CalibrationError(f"{what} must be a positive int or None, got {value!r}")
    return int(value)


def _load_npz(path):
    if not os.path.exists(path):
        raise CalibrationError(f"calibration file not found: {path}")
    if os.path.isdir(path):
        raise CalibrationError(f"calibration path is a directory, not an .npz file: {path}")
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                arrays = {k: data[k] for k in data.files}
        else:
            arrays = {None: data}   # a plain .npy: one array, for single-input models
    except CalibrationError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise CalibrationError(f"cannot read calibration file {path}: {e}") from None
    return arrays


def _arrays_by_input(arrays, input_names, source):
    """Map an npz-like {name: [samples, ...]} onto the model's inputs (checks names)."""
    if not arrays:
        raise CalibrationError(f"calibration data {source} is empty (no arrays)")
    keys = list(arrays)
    if len(input_names) == 1 and len(keys) == 1 and keys[0] in (None, "arr_0"):
        # np.save(path, x) / np.savez(path, x): one unnamed array for a single-input model
        return {input_names[0]: arrays[keys[0]]}
    if None in arrays:
        raise CalibrationError(f"calibration data {source} holds one unnamed array, but the model has "
                               f"inputs {list(input_names)}: save an .npz with one array per input name")
    _check_names(keys, input_names, f"{source}: ")
    return {n: arrays[n] for n in input_names}


def _iter_stacked(arrays, input_names, source, batch_size, max_samples):
    """Yield feeds from {name: array with first axis = samples}, ``batch_size`` samples at a time."""
    by_input = _arrays_by_input(arrays, input_names, source)
    counts = {}
    for name, x in by_input.items():
        x = _check_numeric(name, x, f"{source}: ")
        if x.ndim == 0:
            raise CalibrationError(f"{source}: input {name!r} is a scalar; calibration arrays need a "
                                   f"first axis of samples")
        by_input[name] = x
        counts[name] = x.shape[0]
    if len(set(counts.values())) > 1:
        raise CalibrationError(f"{source}: inputs have different numbers of samples (first axis): "
                               + ", ".join(f"{k!r}: {v}" for k, v in counts.items()))
    n = next(iter(counts.values()))
    if n == 0:
        raise CalibrationError(f"calibration data {source} is empty (0 samples)")
    if max_samples is not None:
        n = min(n, max_samples)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        yield {name: x[start:stop] for name, x in by_input.items()}


def _file_sample_count(path):
    """First-axis length of the first array of an .npz / .npy file, from its header only."""
    fmt = np.lib.format
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            members = [m for m in z.namelist() if m.endswith(".npy")]
            with z.open(members[0]) as f:
                version = fmt.read_magic(f)
                read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape = read(f)[0]
    else:
        shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
    return shape[0]


def count_calibration(calibration, input_names=None, batch_size=1, max_samples=None):
    """Number of feeds ``iter_calibration`` will yield, when known without consuming data, else None."""
    try:
        if isinstance(calibration, (str, os.PathLike)):
            n = _file_sample_count(os.fspath(calibration))
        elif isinstance(calibration, np.ndarray):
            n = calibration.shape[0]
        elif isinstance(calibration, Mapping):
            n = len(next(iter(calibration.values())))
        else:
            n = len(calibration)
            return min(n, max_samples) if max_samples else n
    except Exception:
        return None
    n = min(n, max_samples) if max_samples else n
    return -(-n // batch_size)


def iter_calibration(calibration, input_names, batch_size=1, max_samples=None):
    """Yield feed dicts ``{input_name: ndarray}`` from calibration data in any accepted form.

    - a path (str / ``os.PathLike``) to an ``.npz`` file with one array per input name, first axis
      = samples (for a single-input model, an ``.npy`` file or an ``.npz`` holding one unnamed
      array ``arr_0`` also works); a mapping ``{name: array}`` is read the same way, and so is a
      bare ndarray for a single-input model. These yield ``batch_size`` samples at a time, keeping
      the batch axis (``batch_size=1``: shape ``[1, ...]``); ``max_samples`` caps the samples read.
    - an iterable of feed dicts ``{input_name: array}``, yielded as they are (each is one model run;
      ``max_samples`` caps the number of dicts);
    - an iterable of arrays, for single-input models only (same).

    Raises ``CalibrationError`` for a missing / unreadable file, empty data, names that do not
    match ``input_names`` (expected vs got), arrays for a multi-input model, inconsistent sample
    counts across an npz's inputs, and non-numeric arrays. Dtypes and shapes are checked against
    the model by ``calibrate``; here only that the data are numeric.
    """
    input_names = list(input_names)
    batch_size = _check_limit(batch_size, "batch_size")
    max_samples = _check_limit(max_samples, "max_samples")
    if not input_names:
        raise CalibrationError("the model has no inputs to calibrate")
    if calibration is None:
        raise CalibrationError(f"no calibration data given (the model's inputs are {input_names})")
    if isinstance(calibration, (str, os.PathLike)):
        path = os.fspath(calibration)
        yield from _iter_stacked(_load_npz(path), input_names, path, batch_size, max_samples)
        return
    if isinstance(calibration, (bytes, bytearray)):
        raise CalibrationError("calibration data must be a path, an iterable of feed dicts or of "
                               "arrays, not bytes")
    if isinstance(calibration, Mapping):
        yield from _iter_stacked(dict(calibration), input_names, "mapping", batch_size, max_samples)
        return
    if isinstance(calibration, np.ndarray):
        if len(input_names) != 1:
            raise CalibrationError(f"the model has inputs {input_names}: calibration data must be feed "
                                   f"dicts {{name: array}} or an .npz with one array per input, got "
                                   f"an array")
        yield from _iter_stacked({None: calibration}, input_names, "array", batch_size, max_samples)
        return
    try:
        items = iter(calibration)
    except TypeError:
        raise CalibrationError(f"calibration data must be a path to an .npz file, an iterable of feed "
                               f"dicts or an iterable of arrays, got {type(calibration).__name__}") from None
    n = 0
    for i, item in enumerate(items):
        if max_samples is not None and n >= max_samples:
            break
        where = f"calibration sample {i}: "
        if isinstance(item, Mapping):
            _check_names(item.keys(), input_names, where)
            feed = {name: _check_numeric(name, item[name], where) for name in input_names}
        elif isinstance(item, (str, bytes)) or item is None:
            raise CalibrationError(f"{where}expected a feed dict {{name: array}} or an array, got "
                                   f"{type(item).__name__}")
        else:
            if len(input_names) != 1:
                raise CalibrationError(
                    f"{where}the model has inputs {input_names}: each calibration sample must be a "
                    f"feed dict {{name: array}}, got {type(item).__name__}")
            feed = {input_names[0]: _check_numeric(input_names[0], item, where)}
        n += 1
        yield feed
    if n == 0:
        raise CalibrationError(f"calibration data is empty (no samples; the model's inputs are "
                               f"{input_names})")


# ------------------------------------------------------------------------------ feeds vs the model
def prepare_feed(graph, feed, index=None):
    """Validate and cast one feed dict for ``graph`` the way ``InferenceSession`` validates feeds.

    Float data for a float input is cast to the input's dtype (float64 -> float32 is expected for
    user data); integer or bool data for a float input, float data for an integer input, and
    unsafe integer casts raise ``CalibrationError`` naming the input, as do a wrong rank or a wrong
    static dimension.
    """
    where = f"calibration sample {index}: " if index is not None else ""
    out = {}
    for v in graph.inputs:
        x = feed[v.name]
        if v.dtype is not None and x.dtype.name != v.dtype:
            want = np.dtype(v.dtype)
            ok = (want.kind == "f" and x.dtype.kind == "f") or \
                 (want.kind in "iu" and x.dtype.kind in "iu" and np.can_cast(x.dtype, want, "safe"))
            if not ok:
                raise CalibrationError(
                    f"{where}input {v.name!r}: expected dtype {v.dtype}, got {x.dtype.name}"
                    + (" (integer data is not cast to float silently: convert it with "
                       f"x.astype(np.{v.dtype}) if that is what you mean)"
                       if want.kind == "f" and x.dtype.kind in "biu" else ""))
            x = x.astype(want)
        if v.shape is not None:
            if x.ndim != len(v.shape):
                raise CalibrationError(
                    f"{where}input {v.name!r}: expected rank {len(v.shape)} with shape "
                    f"{_fmt(v.shape)}, got rank {x.ndim} with shape {list(x.shape)}")
            for axis, (want_d, got_d) in enumerate(zip(v.shape, x.shape)):
                if isinstance(want_d, int) and want_d != got_d:
                    raise CalibrationError(
                        f"{where}input {v.name!r}: dimension {axis} must be {want_d} (shape "
                        f"{_fmt(v.shape)}), got {got_d} (shape {list(x.shape)})")
        out[v.name] = np.ascontiguousarray(x)
    return out


def _fmt(shape):
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _progress_bar(iterable, enabled, total):
    if not enabled:
        return iterable
    try:
        if not sys.stderr.isatty():
            return iterable
    except (AttributeError, ValueError):
        return iterable
    try:
        from tqdm import tqdm
    except Exception:
        return iterable
    return tqdm(iterable, total=total, desc="calibrating", unit="batch", leave=False)


def calibrate(graph, calibration, method="minmax", values=None, progress=True, max_samples=None,
              batch_size=1, **observer_kwargs):
    """Run ``graph`` (a ``Graph`` or ``qinfer.Model``) on calibration data; observe float values.

    Returns ``{value name: Observer}``: by default one observer for every floating-point graph
    input and every floating-point value a node produces (float16 / 32 / 64; initializers are
    weights, not observed), in graph order; ``values`` restricts the set (unknown names, weights
    and values that turn out not to be float raise ``CalibrationError``). ``method`` is
    "minmax" | "percentile" | "entropy" | "mse" (``observer_kwargs`` such as ``percentile=`` or
    ``bins=`` go to each observer). ``max_samples`` and ``batch_size`` as in ``iter_calibration``.
    A tqdm progress bar shows when ``progress`` and stderr is a terminal.
    """
    from ..reference.executor import run_graph

    graph = getattr(graph, "graph", graph)
    # an unknown method (CalibrationError naming the valid ones) or bad observer arguments fail
    # here, before any data is read
    make_observer(method, **observer_kwargs)
    input_names = graph.input_names
    if values is not None:
        values = [values] if isinstance(values, str) else list(values)
        produced = {o for n in graph.nodes for o in n.outputs if o}
        for name in values:
            if name in graph.initializers and name not in produced:
                raise CalibrationError(f"value {name!r} is a constant weight, not an activation: "
                                       f"there is nothing to calibrate")
            if name not in produced and name not in input_names:
                raise CalibrationError(f"unknown value {name!r}: no node produces it and it is not a "
                                       f"graph input")
        wanted = set(values)
    else:
        wanted = None
    observers = {}

    def observe(name, arr):
        if wanted is not None and name not in wanted:
            return
        if arr.dtype.kind != "f":
            return
        obs = observers.get(name)
        if obs is None:
            obs = observers[name] = make_observer(method, name=name, **observer_kwargs)
        obs.update(arr)

    total = count_calibration(calibration, input_names, batch_size, max_samples)
    feeds = iter_calibration(calibration, input_names, batch_size=batch_size, max_samples=max_samples)
    bar = _progress_bar(feeds, progress, total)
    try:
        for i, feed in enumerate(bar):
            feed = prepare_feed(graph, feed, i)
            for name in input_names:
                observe(name, feed[name])
            run_graph(graph, feed, outputs=[], observer=observe)
    finally:
        close = getattr(bar, "close", None)
        if close is not None and bar is not feeds:
            close()
    if wanted is not None:
        missing = [n for n in values if n not in observers]
        if missing:
            raise CalibrationError(f"value(s) {missing} are not floating-point tensors: they cannot be "
                                   f"calibrated")
        observers = {n: observers[n] for n in values}
    return observers


__all__ = ["iter_calibration", "count_calibration", "prepare_feed", "calibrate"]
