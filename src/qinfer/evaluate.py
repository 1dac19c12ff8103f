"""``qinfer evaluate``: how far a (quantized) model's answers are from its float reference (SPEC section 7).

Design:

* **Two engines, same feeds.** MODEL (``.qinf`` or ``.onnx``) runs through ``qinfer.InferenceSession``
  (what users run); the reference ONNX file runs through qinfer's float path (``qinfer.convert`` +
  ``InferenceSession``), or through onnxruntime with ``reference_engine="onnxruntime"``. Both see
  the same feeds, read from the data with ``quant.calibrate``'s readers (so a missing file or data
  not matching the inputs is the same ``CalibrationError`` message calibration gives), validated and
  cast once by ``prepare_feed``.
* **Streaming figures.** Per output and per layer only running sums are kept (sum ref^2, sum got^2,
  sum ref*got, sum (ref - got)^2, max |diff|), plus one argmax per sample / position for top-1 and
  labels: the data set is never held twice in memory, whatever its size.
* **Metrics** (float64 sums over every element of every sample):
  ``cosine = sum(r*g) / (|r| |g|)`` (1.0 when both are all zeros, 0.0 when only one is);
  ``SQNR dB = 10 log10(sum r^2 / sum (r - g)^2)``, ``inf`` when identical (``-inf`` when the
  reference is all zeros and the model's is not); top-1 agreement = fraction of samples (or
  positions) where the argmax over the last axis is the same. ``cosine_min`` is the worst
  per-sample cosine.
* **Which outputs are classifiers** (``CLASSIFIER_RULE``): a floating-point output is classifier-like
  when its last axis has >= 2 entries and either (a) it is ``[samples, classes]`` (any dims between
  the first and the last are 1): logits, probabilities or log-probabilities, one class per sample;
  or (b) it has more axes (e.g. ``[samples, time, classes]``) and the reference's values are
  softmax-like along the last axis on every batch (all in [0, 1] and each row summing to 1 within
  1e-3, or log-softmax: each row's logsumexp within 1e-3 of 0): top-1 per position. Anything else
  (feature maps, probability maps, boxes) gets cosine and SQNR only. The report prints which
  metric applies to each output. Labels are compared with the first output of kind (a).
* **Labels metrics** are computed in numpy: accuracy, and macro precision / recall / F1 averaged
  over the classes that occur in the labels or the predictions (scikit-learn's default). A class
  that is never predicted has precision 0 (scikit-learn's ``zero_division=0``); likewise recall 0
  for a class with no samples, and F1 0 when precision + recall is 0.
* **Per layer** (``per_layer=True``): both graphs run in the numpy reference executor (the
  quantized ops have reference definitions bit-exact to the kernels), its observer hook collecting
  every value; values of the model that carry quantization (``Value.qparams``, uint8 / int8) are
  dequantized (``real = scale * (q - zero_point)``), values the model keeps in NHWC
  (``graph.metadata["layouts"][name] == "NHWC"``) are transposed back to NCHW, and every value
  name produced in both graphs is compared; one whose shape still differs is skipped with a note.
  The quantizer's ``graph.metadata["precision_report"]`` (which layers stayed float and why) is
  printed when present.
"""
from __future__ import annotations

import json
import math
import os
import sys
import textwrap
from collections.abc import Mapping

import numpy as np

from .errors import CalibrationError, QinferError

LABEL_KEYS = ("labels", "y")
DEFAULT_BATCH = 16            # samples per run when the model's batch dimension is not fixed
SOFTMAX_TOL = 1e-3
REFERENCE_ENGINES = ("qinfer", "onnxruntime")

CLASSIFIER_RULE = ("classifier-like: a float output [samples, classes >= 2] (logits or probabilities: "
                   "top-1 per sample), or [samples, ..., classes] whose rows are softmax / log-softmax in "
                   "the reference (top-1 per position); any other output: cosine and SQNR only")


class EvaluateError(QinferError):
    """A user error in ``qinfer evaluate`` (bad model pair, labels, option or data)."""


# ============================================================================================ metrics

def cosine(a, b) -> float:
    """Cosine similarity of two arrays of the same size, flattened, in float64.

    1.0 when both are all zeros, 0.0 when exactly one is.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"cosine: arrays of different sizes {a.size} and {b.size}")
    return _cosine_from_sums(float(np.dot(a, b)), float(np.dot(a, a)), float(np.dot(b, b)))


def _cosine_from_sums(ab, aa, bb):
    if aa == 0 and bb == 0:
        return 1.0
    if aa == 0 or bb == 0:
        return 0.0
    return float(max(-1.0, min(1.0, ab / math.sqrt(aa * bb))))


def sqnr_db(ref, got) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10 log10(sum ref^2 / sum (ref - got)^2)``.

    ``inf`` when ``got`` equals ``ref`` exactly; ``-inf`` when ``ref`` is all zeros and ``got`` is not.
    """
    r = np.asarray(ref, dtype=np.float64).ravel()
    g = np.asarray(got, dtype=np.float64).ravel()
    if r.shape != g.shape:
        raise ValueError(f"sqnr_db: arrays of different sizes {r.size} and {g.size}")
    d = r - g
    return _sqnr_from_sums(float(np.dot(r, r)), float(np.dot(d, d)))


def _sqnr_from_sums(signal, noise):
    if math.isnan(signal) or math.isnan(noise):
        return float("nan")
    if noise == 0:
        return float("inf")
    if signal == 0:
        return float("-inf")
    return 10.0 * math.log10(signal / noise)


def top1_agreement(ref_logits, got_logits) -> float:
    """Fraction of rows whose argmax over the last axis is the same (every leading index is a row)."""
    r = np.asarray(ref_logits)
    g = np.asarray(got_logits)
    if r.shape != g.shape:
        raise ValueError(f"top1_agreement: shapes differ: {list(r.shape)} vs {list(g.shape)}")
    if r.ndim == 0 or r.shape[-1] == 0:
        raise ValueError(f"top1_agreement: needs a last axis of classes, got shape {list(r.shape)}")
    if r.size == 0:
        raise ValueError("top1_agreement: no rows to compare")
    return float(np.mean(r.argmax(-1) == g.argmax(-1)))


def classification_metrics(y_true, y_pred, num_classes=None) -> dict:
    """Accuracy and macro precision, recall and F1 of integer class predictions (numpy only).

    Classes: with ``num_classes=None``, those occurring in ``y_true`` or ``y_pred`` (scikit-learn's
    default); with ``num_classes=K``, all of 0..K-1 (scikit-learn's ``labels=range(K)``; labels
    outside it raise ``ValueError``). Per class: precision = TP / predicted, 0 when the class is
    never predicted (scikit-learn's ``zero_division=0``); recall = TP / actual, 0 when the class has
    no samples; F1 = 2PR / (P + R), 0 when P + R = 0. The macro figures are unweighted means over
    the classes. Returns ``{"accuracy", "precision", "recall", "f1"}`` as floats in [0, 1].
    """
    t = np.asarray(y_true).ravel()
    p = np.asarray(y_pred).ravel()
    if t.shape != p.shape:
        raise ValueError(f"classification_metrics: {t.size} labels but {p.size} predictions")
    if t.size == 0:
        raise ValueError("classification_metrics: no samples")
    for what, a in (("y_true", t), ("y_pred", p)):
        if a.dtype.kind not in "biu":
            raise ValueError(f"classification_metrics: {what} must hold integer classes, got {a.dtype}")
    t = t.astype(np.int64)
    p = p.astype(np.int64)
    if num_classes is None:
        classes = np.union1d(t, p)
    else:
        k = int(num_classes)
        bad = np.concatenate([t[(t < 0) | (t >= k)], p[(p < 0) | (p >= k)]])
        if bad.size:
            raise ValueError(f"classification_metrics: class {int(bad[0])} outside 0..{k - 1}")
        classes = np.arange(k)
    k = len(classes)
    ti = np.searchsorted(classes, t)
    pi = np.searchsorted(classes, p)
    tp = np.bincount(ti[t == p], minlength=k).astype(np.float64)
    actual = np.bincount(ti, minlength=k).astype(np.float64)
    predicted = np.bincount(pi, minlength=k).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros(k), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    return {"accuracy": float(np.mean(t == p)), "precision": float(precision.mean()),
            "recall": float(recall.mean()), "f1": float(f1.mean())}


class _ErrorStats:
    """Running sums for cosine / SQNR / max |diff| of ``got`` against ``ref`` over many batches."""

    __slots__ = ("rr", "gg", "rg", "dd", "max_abs", "cos_min", "count")

    def __init__(self):
        self.rr = self.gg = self.rg = self.dd = 0.0
        self.max_abs = 0.0
        self.cos_min = None
        self.count = 0

    def update(self, ref, got, per_sample=False):
        r = np.asarray(ref, dtype=np.float64)
        g = np.asarray(got, dtype=np.float64)
        d = r - g
        self.rr += float(np.vdot(r, r))
        self.gg += float(np.vdot(g, g))
        self.rg += float(np.vdot(r, g))
        self.dd += float(np.vdot(d, d))
        if d.size:
            self.max_abs = max(self.max_abs, float(np.max(np.abs(d))))
        self.count += r.size
        if per_sample and r.ndim >= 1 and r.shape[0] > 0:
            rs, gs = r.reshape(r.shape[0], -1), g.reshape(g.shape[0], -1)
            for ab, aa, bb in zip(np.einsum("ij,ij->i", rs, gs), np.einsum("ij,ij->i", rs, rs),
                                  np.einsum("ij,ij->i", gs, gs)):
                c = _cosine_from_sums(float(ab), float(aa), float(bb))
                self.cos_min = c if self.cos_min is None else min(self.cos_min, c)

    def figures(self):
        out = {"cosine": _cosine_from_sums(self.rg, self.rr, self.gg),
               "sqnr_db": _sqnr_from_sums(self.rr, self.dd),
               "max_abs_diff": self.max_abs}
        if self.cos_min is not None:
            out["cosine_min"] = self.cos_min
        return out


# ============================================================================ classifier-like outputs

def _per_sample_classes(shape):
    """True when ``shape`` is [samples, (1, ...,) classes >= 2]."""
    return len(shape) >= 2 and shape[-1] >= 2 and all(d == 1 for d in shape[1:-1])


def _softmax_like(x):
    """Rows along the last axis are probabilities (in [0, 1], summing to 1) or log-probabilities."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0 or not np.all(np.isfinite(x)):
        return False
    if x.min() >= -SOFTMAX_TOL and x.max() <= 1 + SOFTMAX_TOL:
        return bool(np.all(np.abs(x.sum(-1) - 1.0) <= SOFTMAX_TOL))
    if x.max() <= SOFTMAX_TOL:
        m = x.max(-1, keepdims=True)
        lse = m[..., 0] + np.log(np.exp(x - m).sum(-1))
        return bool(np.all(np.abs(lse) <= SOFTMAX_TOL))
    return False


class _OutputAcc:
    """Everything ``evaluate`` keeps about one output across batches."""

    def __init__(self, name):
        self.name = name
        self.stats = _ErrorStats()
        self.sample_shape = None
        self.kind = None            # "per_sample" | "per_position" | None (decided on the first batch)
        self.agree = 0
        self.rows = 0
        self.ref_pred = []          # per-sample argmax (kind "per_sample"), for labels
        self.got_pred = []

    def update(self, ref, got):
        ref = np.asarray(ref)
        got = np.asarray(got)
        if ref.shape != got.shape:
            raise EvaluateError(f"output {self.name!r}: the model gives shape {list(got.shape)}, the "
                                f"reference {list(ref.shape)}")
        floating = ref.dtype.kind == "f" and got.dtype.kind == "f"
        if self.sample_shape is None:
            self.sample_shape = list(ref.shape[1:])
            if floating and _per_sample_classes(ref.shape):
                self.kind = "per_sample"
            elif floating and ref.ndim >= 3 and ref.shape[-1] >= 2:
                self.kind = "per_position"
        if self.kind == "per_position" and not _softmax_like(ref):
            self.kind = None
        if self.kind == "per_sample":
            r = ref.reshape(ref.shape[0], ref.shape[-1]).argmax(-1)
            g = got.reshape(got.shape[0], got.shape[-1]).argmax(-1)
            self.ref_pred.append(r)
            self.got_pred.append(g)
            self.agree += int(np.sum(r == g))
            self.rows += r.size
        elif self.kind == "per_position":
            r, g = ref.argmax(-1), got.argmax(-1)
            self.agree += int(np.sum(r == g))
            self.rows += r.size
        self.stats.update(ref, got, per_sample=ref.ndim >= 1)

    def result(self):
        res = {"name": self.name, "shape": self.sample_shape}
        if self.kind is not None and self.rows:
            res["metric"] = "top1_agreement"
            res["classifier"] = ("top-1 per sample" if self.kind == "per_sample"
                                 else "top-1 per position, softmax-like last axis")
            res["top1_agreement"] = self.agree / self.rows
        else:
            res["metric"] = "cosine"
            res["classifier"] = None
            res["top1_agreement"] = None
        res.update(self.stats.figures())
        return res


# ============================================================================ per-layer values

def _layouts(graph):
    lay = graph.metadata.get("layouts") or {}
    if isinstance(lay, str):     # tolerate a JSON-encoded dict
        try:
            lay = json.loads(lay)
        except ValueError:
            lay = {}
    return lay if isinstance(lay, Mapping) else {}


def _qparams_of(graph, name, producer):
    """(scale, zero_point, axis) of a quantized value: its ``Value.qparams``, else the producing
    node's output quantization attributes (QuantizeU8 ``scale`` or ``channel_scales`` /
    ``zero_point``; QConv / QGemm /
    QAdd ``y_inv_scale`` / ``zp_y``), else None."""
    qp = graph.value(name).qparams
    if qp is not None:
        return qp.scale, qp.zero_point, qp.axis
    if producer is None:
        return None
    a = producer.attrs
    if producer.op == "QuantizeU8" and a.get("channel_scales") is not None:
        return a["channel_scales"], a.get("zero_point", 0), 3    # NHWC out: channels last
    if producer.op == "QuantizeU8" and "scale" in a:
        return a["scale"], a.get("zero_point", 0), None
    if "y_inv_scale" in a and a.get("out_dtype", "uint8") == "uint8":
        inv = float(a["y_inv_scale"])
        if inv > 0:
            return 1.0 / inv, a.get("zp_y", 0), None
    return None


def _dequantize(q, scale, zero_point, axis):
    scale = np.asarray(scale, dtype=np.float32)
    zp = np.asarray(zero_point, dtype=np.float32)
    if axis is not None and scale.ndim == 1 and q.ndim > 0:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zp = zp.reshape(shape) if zp.ndim == 1 else zp
    return (scale * (q.astype(np.float32) - zp)).astype(np.float32)


def _as_float(graph, name, arr, producer, layouts):
    """(float32 NCHW array, None) for a value of ``graph``, or (None, reason) when it cannot be one."""
    arr = np.asarray(arr)
    v = graph.value(name)
    quantized = v.qparams is not None or arr.dtype in (np.uint8, np.int8)
    if quantized and arr.dtype.kind in "iu":
        qp = _qparams_of(graph, name, producer)
        if qp is None:
            return None, f"{arr.dtype} value without quantization parameters"
        out = _dequantize(arr, *qp)
    elif arr.dtype.kind == "f":
        out = arr.astype(np.float32, copy=False)
    else:
        return None, f"not a float tensor ({arr.dtype})"
    layout = layouts.get(name) or getattr(v, "layout", None)
    if isinstance(layout, str) and layout.upper() == "NHWC":
        if out.ndim >= 3:
            out = np.moveaxis(out, -1, 1)
    return out, None


def _node_values(graph):
    """Names of the values nodes produce, in graph order, with their producing node."""
    return {o: n for n in graph.nodes for o in n.outputs if o}


def _layer_values(graph, feeds, names=None):
    """({name: float32 array}, {name: reason skipped}) of ``graph``'s produced values on ``feeds``."""
    from .reference.executor import run_graph
    producers = _node_values(graph)
    if names is not None:
        unknown = [n for n in names if n not in producers]
        if unknown:
            raise EvaluateError(f"unknown value(s) {unknown[:5]}: no node of graph {graph.name!r} "
                                f"produces them")
        wanted = set(names)
    else:
        wanted = None
    layouts = _layouts(graph)
    values, skipped = {}, {}

    seen = set()

    def observe(name, arr):
        seen.add(name)
        if wanted is not None and name not in wanted:
            return
        if name not in producers:
            return
        out, why = _as_float(graph, name, arr, producers[name], layouts)
        if out is None:
            skipped[name] = why
        else:
            values[name] = out

    try:
        run_graph(graph, feeds, outputs=[], observer=observe)
    except QinferError:
        raise
    except Exception as e:
        # nodes run in order: the failing one is the first with an output not produced yet
        node = next((n for n in graph.nodes if any(o and o not in seen for o in n.outputs)), None)
        where = f"node {node.name!r} ({node.op})" if node is not None else "a node"
        raise EvaluateError(f"per-layer values of graph {graph.name!r}: the numpy reference executor "
                            f"failed at {where}: {type(e).__name__}: {e}") from e
    return values, skipped


def layer_values(model_or_graph, feeds, names=None) -> dict:
    """Every intermediate value of a model on ``feeds``, as float32 arrays in NCHW order.

    ``model_or_graph``: a ``qinfer.Model`` or an IR ``Graph`` (float or quantized); ``feeds``: a feed
    dict for its inputs (already of the inputs' dtypes). The graph runs in the numpy reference
    executor, whose observer hook sees every value a node produces. Quantized values (uint8 / int8
    with ``Value.qparams``, or the output parameters of the producing quantized node) are
    dequantized, ``real = scale * (q - zero_point)``; values marked NHWC in
    ``graph.metadata["layouts"]`` are transposed back to NCHW. ``names`` restricts the result (an
    unknown name raises ``EvaluateError``). Values that are neither float nor quantized (shapes,
    indices, masks) are left out.
    """
    graph = getattr(model_or_graph, "graph", model_or_graph)
    if names is not None:
        names = [names] if isinstance(names, str) else list(names)
    values, _ = _layer_values(graph, feeds, names)
    return values


# ============================================================================ models and data

def _resolve_model(model, what):
    """(qinfer.Model, display name) from a path (.qinf / .onnx), a Model, a Graph, bytes or ModelProto."""
    import qinfer
    from .ir.graph import Graph
    if isinstance(model, qinfer.Model):
        return model, model.path or f"<model {model.graph.name}>"
    if isinstance(model, Graph):
        return qinfer.Model(model), f"<graph {model.name}>"
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.exists(path):
            raise EvaluateError(f"{what} {path}: no such file")
        if os.path.isdir(path):
            raise EvaluateError(f"{what} {path}: is a directory, expected a .qinf or .onnx file")
        from .model import is_qinf_path
        if is_qinf_path(path):
            return qinfer.load(path), path
        return qinfer.convert(path), path
    return qinfer.convert(model), f"<{type(model).__name__}>"


class _OrtReference:
    """onnxruntime fp32 as the reference engine (needs an ONNX path or bytes)."""

    def __init__(self, reference, threads):
        try:
            import onnxruntime as ort
        except ImportError:
            raise EvaluateError("--reference-engine onnxruntime: onnxruntime is not installed "
                                "(pip install onnxruntime)") from None
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
        so.log_severity_level = 3
        src = os.fspath(reference) if isinstance(reference, (str, os.PathLike)) else reference
        if hasattr(src, "SerializeToString"):
            src = src.SerializeToString()
        try:
            self.sess = ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise EvaluateError(f"onnxruntime cannot load the reference: {first}") from None
        self.input_names = [i.name for i in self.sess.get_inputs()]
        self.output_names = [o.name for o in self.sess.get_outputs()]

    def run(self, feeds):
        return dict(zip(self.output_names, self.sess.run(None, feeds)))


class _QinferRunner:
    def __init__(self, model, threads):
        import qinfer
        self.sess = qinfer.InferenceSession(model, num_threads=threads)
        self.input_names = [i.name for i in self.sess.get_inputs()]
        self.output_names = [o.name for o in self.sess.get_outputs()]

    def run(self, feeds):
        return dict(zip(self.output_names, self.sess.run(None, feeds)))


def _read_labels(labels, n_data):
    """Labels given to ``evaluate``: an array, or a path to .npy / .npz (key labels / y, or one array)."""
    source = "labels"
    if isinstance(labels, (str, os.PathLike)):
        path = os.fspath(labels)
        source = path
        if not os.path.exists(path):
            raise EvaluateError(f"--labels {path}: no such file")
        try:
            z = np.load(path, allow_pickle=False)
            if hasattr(z, "files"):
                with z:
                    key = next((k for k in LABEL_KEYS if k in z.files), None)
                    if key is None and len(z.files) == 1:
                        key = z.files[0]
                    if key is None:
                        raise EvaluateError(f"--labels {path}: an .npz with arrays {z.files}; expected one "
                                            f"array or one named 'labels' or 'y'")
                    labels = z[key]
            else:
                labels = np.asarray(z)
        except EvaluateError:
            raise
        except Exception as e:
            raise EvaluateError(f"--labels {path}: not a numpy .npy/.npz file ({type(e).__name__}: "
                                f"{e})") from None
    return _check_labels(np.asarray(labels), n_data, source)


def _check_labels(y, n_data, source):
    if y.ndim == 2 and y.shape[1] > 1:            # one-hot or scores
        y = y.argmax(1)
    elif y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise EvaluateError(f"{source}: labels must be one class per sample (1-D), got shape {list(y.shape)}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise EvaluateError(f"{source}: labels must be integer classes, got non-integral {y.dtype} values")
        y = y.astype(np.int64)
    elif y.dtype.kind not in "biu":
        raise EvaluateError(f"{source}: labels must be integer classes, got dtype {y.dtype}")
    if n_data is not None and y.shape[0] != n_data:
        raise EvaluateError(f"{source}: {y.shape[0]} labels for {n_data} samples in the data (one label "
                            f"per sample expected)")
    return y.astype(np.int64)


def _data_source(data, input_names, batch_size, max_samples):
    """(batch iterator factory, labels found in the data or None, number of samples or None, name)."""
    # the package rebinds ``quant.calibrate`` to the function: import the module's names directly
    from .quant.calibrate import _iter_stacked, _load_npz, iter_calibration
    if isinstance(data, (str, os.PathLike)) or isinstance(data, Mapping):
        if isinstance(data, Mapping):
            arrays, source = dict(data), "data"
        else:
            source = os.fspath(data)
            arrays = _load_npz(source)      # CalibrationError: missing / unreadable file
        label_key = next((k for k in LABEL_KEYS if k in arrays and k not in input_names), None)
        found = arrays.pop(label_key) if label_key else None
        rest = [k for k in arrays if k not in input_names]
        if len(input_names) == 1 and len(arrays) == 1 and rest:
            # one unlabelled array under another name (e.g. the demo's "x") is the single input
            arrays = {input_names[0]: arrays[rest[0]]}
        first = arrays.get(input_names[0]) if arrays else None
        n = int(first.shape[0]) if isinstance(first, np.ndarray) and first.ndim > 0 else None

        def batches():
            return _iter_stacked(arrays, input_names, source, batch_size, max_samples)
        return batches, found, label_key, n, source
    if isinstance(data, np.ndarray):
        n = int(data.shape[0]) if data.ndim else None

        def batches():
            return iter_calibration(data, input_names, batch_size=batch_size, max_samples=max_samples)
        return batches, None, None, n, "data"

    items = list(data) if not isinstance(data, (str, bytes)) and hasattr(data, "__iter__") else data

    def batches():
        return iter_calibration(items, input_names, batch_size=batch_size, max_samples=max_samples)
    return batches, None, None, None, "data"


def _fixed_batch(graph):
    """The static first dimension shared by the graph's inputs, or None when it is symbolic."""
    dims = {v.shape[0] for v in graph.inputs if v.shape and isinstance(v.shape[0], int)}
    return dims.pop() if len(dims) == 1 else None


def _pad(feed, batch):
    """Repeat the last sample so every input has ``batch`` samples; returns (feed, real count)."""
    real = next(iter(feed.values())).shape[0]
    if real >= batch:
        return feed, real
    out = {}
    for k, x in feed.items():
        idx = np.concatenate([np.arange(real), np.full(batch - real, real - 1)])
        out[k] = np.ascontiguousarray(x[idx])
    return out, real


def _trim(x, real, padded):
    return x[:real] if padded and x.ndim and x.shape[0] == padded else x


def _progress(enabled, total):
    if enabled is None:
        try:
            enabled = sys.stderr.isatty()
        except (AttributeError, ValueError):
            enabled = False
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except Exception:
        return None
    return tqdm(total=total, desc="evaluating", unit="batch", leave=False, file=sys.stderr,
                dynamic_ncols=True)


def _check_positive(value, what):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise EvaluateError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


# ============================================================================ evaluate

def evaluate(model, reference, data, labels=None, per_layer=False, num_threads=None, max_samples=None,
             *, batch_size=None, reference_engine="qinfer", progress=None) -> dict:
    """Compare ``model`` with its float ``reference`` on ``data`` (SPEC section 7); returns the figures.

    ``model``: a ``.qinf`` / ``.onnx`` path or a ``qinfer.Model``; ``reference``: the float ONNX
    model (path, bytes, ``onnx.ModelProto``, or a float ``qinfer.Model``), run by qinfer's float path
    or, with ``reference_engine="onnxruntime"``, by onnxruntime. ``data``: an ``.npz`` path or a
    mapping ``{input name: array}`` (first axis = samples; a ``labels`` or ``y`` array that is not an
    input is taken as labels), or what ``quant.calibrate.iter_calibration`` accepts. ``labels``: one
    integer class per sample (array, or .npy / .npz path), overriding labels in the data.
    ``batch_size``: samples per run (default: the model's fixed batch, else ``DEFAULT_BATCH``; a
    short last batch is padded by repeating a sample and the padding dropped from the figures).
    ``progress``: tqdm bar on stderr (None: when stderr is a terminal).

    Returns ``{"model", "reference", "reference_engine", "data", "samples", "batch_size",
    "classifier_rule", "outputs": [{"name", "shape", "metric", "classifier", "top1_agreement",
    "cosine", "cosine_min", "sqnr_db", "max_abs_diff"}], "labels": None | {"source", "output",
    "num_classes", "model": {...}, "reference": {...}}, "layers": None | [{"name", "op", "model_op",
    "model_dtype", "shape", "precision", "cosine", "sqnr_db", "max_abs_diff"}] (worst SQNR first),
    "layers_skipped": [{"name", "reason"}], "layers_not_float": count of non-float values (shapes,
    indices) produced by both graphs and not compared, "precision_report": None | [{"layer", "op",
    "precision", "reason"}] (the quantizer's, from ``graph.metadata``)}``.
    Raises ``CalibrationError`` for missing / mismatched data and ``EvaluateError`` for the rest.
    """
    if reference_engine not in REFERENCE_ENGINES:
        raise EvaluateError(f"reference engine must be one of {list(REFERENCE_ENGINES)}, got "
                            f"{reference_engine!r}")
    max_samples = _check_positive(max_samples, "max_samples")
    batch_size = _check_positive(batch_size, "batch_size")
    qmodel, model_name = _resolve_model(model, "model")
    graph = qmodel.graph
    runner = _QinferRunner(qmodel, num_threads)
    if reference_engine == "onnxruntime":
        if isinstance(reference, (str, os.PathLike)) and not os.path.exists(os.fspath(reference)):
            raise EvaluateError(f"reference {os.fspath(reference)}: no such file")
        ref_runner = _OrtReference(reference, num_threads)
        ref_name = os.fspath(reference) if isinstance(reference, (str, os.PathLike)) else "<onnx model>"
        ref_model = None
    else:
        ref_model, ref_name = _resolve_model(reference, "reference")
        ref_runner = _QinferRunner(ref_model, num_threads)

    # the pair must agree on inputs and outputs
    if sorted(ref_runner.output_names) != sorted(runner.output_names):
        raise EvaluateError(f"reference {ref_name} has outputs {ref_runner.output_names}, the model "
                            f"{model_name} has {runner.output_names}: evaluate compares outputs by name")
    if sorted(ref_runner.input_names) != sorted(runner.input_names):
        raise EvaluateError(f"reference {ref_name} has inputs {ref_runner.input_names}, the model "
                            f"{model_name} has {runner.input_names}")

    fixed = _fixed_batch(graph)
    if ref_model is not None:
        rfixed = _fixed_batch(ref_model.graph)
        if fixed is None:
            fixed = rfixed
        elif rfixed is not None and rfixed != fixed:
            raise EvaluateError(f"the model's batch dimension is fixed at {fixed}, the reference's at "
                                f"{rfixed}")
    if fixed is not None and batch_size is not None and batch_size != fixed:
        raise EvaluateError(f"batch size {batch_size}: the model's batch dimension is fixed at {fixed}")
    batch = fixed or batch_size or DEFAULT_BATCH

    input_names = runner.input_names
    batches, data_labels, label_key, n_data, source = _data_source(data, input_names, batch, max_samples)
    label_source = None
    if labels is not None:
        y = _read_labels(labels, n_data)
        label_source = os.fspath(labels) if isinstance(labels, (str, os.PathLike)) else "labels"
    elif data_labels is not None:
        label_source = f"{source}[{label_key!r}]"
        y = _check_labels(np.asarray(data_labels), n_data, label_source)
    else:
        y = None

    # per-layer: the values produced in both graphs, in the reference's order
    layer_names, probe_ref_graph = None, None
    if per_layer:
        if ref_model is None:
            import qinfer
            ref_model = qinfer.convert(os.fspath(reference) if isinstance(reference, os.PathLike)
                                       else reference)
        probe_ref_graph = ref_model.graph
        model_produced = _node_values(graph)
        layer_names = [n for n in _node_values(probe_ref_graph) if n in model_produced]
        layer_stats = {n: _ErrorStats() for n in layer_names}
        layer_shapes = {}
        layers_skipped = {}
        not_float = set()

    from .quant.calibrate import count_calibration, prepare_feed
    total = None
    if n_data is not None:
        n_eval = min(n_data, max_samples) if max_samples else n_data
        total = -(-n_eval // batch)
    else:
        total = count_calibration(data, input_names, batch, max_samples)
    accs = {name: _OutputAcc(name) for name in runner.output_names}
    samples = 0
    bar = _progress(progress, total)
    try:
        for feed in batches():
            padded = 0
            first = next(iter(feed.values()), None)
            real = first.shape[0] if getattr(first, "ndim", 0) else 1
            if fixed is not None and 0 < real < fixed:
                feed, real = _pad(feed, fixed)
                padded = fixed
            try:
                feed = prepare_feed(graph, feed)
            except CalibrationError as e:
                raise CalibrationError(f"{source}: {e}") from None
            ref_out = ref_runner.run(feed)
            got_out = runner.run(feed)
            for name, acc in accs.items():
                acc.update(_trim(ref_out[name], real, padded), _trim(got_out[name], real, padded))
            if per_layer:
                rv, _ = _layer_values(probe_ref_graph, feed, layer_names)
                gv, gskip = _layer_values(graph, feed, layer_names)
                for name in layer_names:
                    if name in layers_skipped:
                        continue
                    if name not in rv:      # shapes, indices, masks: not a layer's activation
                        not_float.add(name)
                        continue
                    if name not in gv:
                        layers_skipped[name] = gskip.get(name, "not produced by the model")
                        continue
                    r, g = rv[name], gv[name]
                    if r.shape != g.shape:
                        layers_skipped[name] = (f"shapes differ: reference {list(r.shape)}, model "
                                                f"{list(g.shape)}")
                        continue
                    layer_shapes[name] = list(r.shape[1:])
                    layer_stats[name].update(_trim(r, real, padded), _trim(g, real, padded))
                del rv, gv
            samples += real
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    outputs = [accs[name].result() for name in runner.output_names]
    result = {"model": model_name, "reference": ref_name, "reference_engine": reference_engine,
              "data": source, "samples": samples, "batch_size": batch, "classifier_rule": CLASSIFIER_RULE,
              "outputs": outputs, "labels": None, "layers": None, "layers_skipped": [], "layers_not_float": 0,
              "precision_report": _precision_report(graph)}

    if y is not None:
        result["labels"] = _labels_figures(y[:samples], accs, label_source)
    if per_layer:
        result["layers"], result["layers_skipped"] = _layers_figures(
            graph, probe_ref_graph, layer_names, layer_stats, layer_shapes, layers_skipped,
            result["precision_report"], not_float)
        result["layers_not_float"] = len(not_float)
    return result


def _labels_figures(y, accs, source):
    acc = next((a for a in accs.values() if a.kind == "per_sample" and a.ref_pred), None)
    if acc is None:
        raise EvaluateError("labels given, but no output is a classifier [samples, classes]: accuracy "
                            "needs one class score per sample")
    ref_pred = np.concatenate(acc.ref_pred)
    got_pred = np.concatenate(acc.got_pred)
    if len(ref_pred) != len(y):
        raise EvaluateError(f"{source}: {len(y)} labels for {len(ref_pred)} predictions of output "
                            f"{acc.name!r}")
    k = int(acc.sample_shape[-1])
    bad = y[(y < 0) | (y >= k)]
    if bad.size:
        raise EvaluateError(f"{source}: label {int(bad[0])} is not a class of output {acc.name!r} "
                            f"(0..{k - 1})")
    return {"source": source, "output": acc.name, "num_classes": k,
            "model": classification_metrics(y, got_pred),
            "reference": classification_metrics(y, ref_pred)}


def _precision_report(graph):
    rep = graph.metadata.get("precision_report")
    if isinstance(rep, str):
        try:
            rep = json.loads(rep)
        except ValueError:
            return None
    if not isinstance(rep, (list, tuple)):
        return None
    return [dict(r) for r in rep if isinstance(r, Mapping)]


def _layers_figures(graph, ref_graph, names, stats, shapes, skipped, report, not_float=()):
    ref_prod = _node_values(ref_graph)
    model_prod = _node_values(graph)
    by_layer = {}
    for r in report or ():
        if "layer" in r:
            by_layer[str(r["layer"])] = r
    rows = []
    for name in names:
        if name in skipped or name in not_float or stats[name].count == 0:
            continue
        node = model_prod[name]
        rep = by_layer.get(node.name) or by_layer.get(ref_prod[name].name) or by_layer.get(name)
        row = {"name": name, "op": ref_prod[name].op, "model_op": node.op,
               "model_dtype": graph.value(name).dtype, "shape": shapes.get(name),
               "precision": rep.get("precision") if rep else None}
        row.update(stats[name].figures())
        rows.append(row)
    rows.sort(key=lambda r: (r["sqnr_db"] if not math.isnan(r["sqnr_db"]) else -math.inf))
    return rows, [{"name": n, "reason": why} for n, why in skipped.items()]


# ============================================================================ report

def _kept_in_float(entry):
    p = str(entry.get("precision", "")).lower()
    return p.startswith(("float", "fp", "f32", "f16", "bf16"))


def _fmt_db(v):
    if v is None:
        return "-"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.2f}"


def _fmt_cos(v):
    return "-" if v is None else f"{v:.6f}"


def _fmt_shape(s):
    return "-" if s is None else "[" + ", ".join(str(d) for d in s) + "]"


def _table(header, rows, right=()):
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    lines = []
    for r in [header] + rows:
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def format_report(result) -> str:
    """The human-readable report of ``evaluate``'s figures (what ``qinfer evaluate`` prints)."""
    lines = [f"model:     {result['model']}",
             f"reference: {result['reference']} ({result['reference_engine']} float)",
             f"data:      {result['data']}: {result['samples']} samples, batch {result['batch_size']}",
             "", "outputs (model vs reference):"]
    rows = []
    for o in result["outputs"]:
        metric = "top-1 agreement" if o["metric"] == "top1_agreement" else "cosine"
        rows.append([o["name"], _fmt_shape(o["shape"]), metric,
                     "-" if o["top1_agreement"] is None else f"{100 * o['top1_agreement']:.2f}%",
                     _fmt_cos(o["cosine"]), _fmt_cos(o.get("cosine_min")), _fmt_db(o["sqnr_db"]),
                     f"{o['max_abs_diff']:.4g}"])
    lines += _table(["output", "shape", "metric", "top-1 agr", "cosine", "worst cos", "SQNR dB",
                     "max |diff|"], rows, right=(3, 4, 5, 6, 7))
    for o in result["outputs"]:
        why = (f"top-1 agreement applies (classifier, {o['classifier']})" if o["classifier"]
               else "cosine and SQNR apply (not classifier-like)")
        lines.append(f"  {o['name']}: {why}")
    lines += textwrap.wrap(f"rule: {CLASSIFIER_RULE}; worst cos = lowest per-sample cosine", width=100,
                           initial_indent="  ", subsequent_indent="        ")

    lab = result.get("labels")
    if lab:
        lines += ["", f"labels ({lab['source']}, output {lab['output']!r}, {lab['num_classes']} classes; "
                      f"macro averages):"]
        rows = []
        for who in ("model", "reference"):
            m = lab[who]
            rows.append([who] + [f"{100 * m[k]:.2f}%" for k in ("accuracy", "precision", "recall", "f1")])
        d = {k: 100 * (lab["model"][k] - lab["reference"][k]) for k in ("accuracy", "precision", "recall", "f1")}
        rows.append(["difference"] + [f"{v:+.2f} pt" for v in d.values()])
        lines += _table(["", "accuracy", "precision", "recall", "F1"], rows, right=(1, 2, 3, 4))

    layers = result.get("layers")
    if layers is not None:
        lines += ["", f"per layer ({len(layers)} values in both graphs, worst SQNR first; model values "
                      f"dequantized and in NCHW):"]
        has_prec = any(r.get("precision") for r in layers)
        header = ["value", "op", "model op", "model dtype", "shape"] + (["precision"] if has_prec else []) \
            + ["cosine", "SQNR dB", "max |diff|"]
        rows = []
        for r in layers:
            row = [r["name"], r["op"], r["model_op"], r["model_dtype"] or "?", _fmt_shape(r["shape"])]
            if has_prec:
                row.append(r.get("precision") or "-")
            rows.append(row + [_fmt_cos(r["cosine"]), _fmt_db(r["sqnr_db"]), f"{r['max_abs_diff']:.4g}"])
        n = len(header)
        lines += _table(header, rows, right=(n - 3, n - 2, n - 1)) if rows else ["  (no value is "
                                                                                 "produced by both graphs)"]
        for s in result.get("layers_skipped") or ():
            lines.append(f"  skipped {s['name']}: {s['reason']}")
        if result.get("layers_not_float"):
            lines.append(f"  ({result['layers_not_float']} non-float values in both graphs, such as shape "
                         f"computations, are not compared)")

    report = result.get("precision_report")
    if report:
        counts = {}
        for r in report:
            counts[str(r.get("precision", "?"))] = counts.get(str(r.get("precision", "?")), 0) + 1
        kept = [r for r in report if _kept_in_float(r)]
        lines += ["", "precision report (from the quantizer): " + ", ".join(
            f"{n} {p}" for p, n in sorted(counts.items(), key=lambda kv: -kv[1])) + f" of {len(report)} layers"]
        if kept:
            lines.append(f"  {len(kept)} layer(s) kept in float, and why:")
            rows = [[str(r.get("layer", "?")), str(r.get("op", "?")), str(r.get("precision", "?")),
                     str(r.get("reason", ""))] for r in kept]
            lines += _table(["layer", "op", "precision", "reason"], rows)
        else:
            lines.append("  no layer kept in float")
    return "\n".join(lines)


def _json_safe(obj):
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    return obj


def write_json(result, path):
    """Write the figures as JSON (infinite SQNR as the string "inf", NaN as null)."""
    try:
        with open(path, "w") as f:
            json.dump(_json_safe(result), f, indent=1, allow_nan=False)
            f.write("\n")
    except OSError as e:
        raise EvaluateError(f"--json {path}: cannot write ({e.strerror or e})") from None


# ============================================================================ command line

def add_arguments(p):
    """The options of ``qinfer evaluate`` (SPEC sections 2 and 7), added to an argparse (sub)parser."""
    p.add_argument("model", help="the model to evaluate: a .qinf or .onnx file")
    p.add_argument("--reference", required=True, metavar="MODEL.onnx", help="the float reference model")
    p.add_argument("--data", required=True, metavar="DATA.npz",
                   help="inputs: one array per input name, first axis = samples (optional 'labels' / 'y')")
    p.add_argument("--labels", metavar="LABELS.npy", help="one integer class per sample (overrides labels "
                                                         "in --data)")
    p.add_argument("--per-layer", action="store_true", help="also compare every intermediate value present "
                                                            "in both graphs (numpy reference executor: slow)")
    p.add_argument("--threads", type=int, default=None, help="threads per engine (default: physical cores)")
    p.add_argument("--max-samples", type=int, default=None, metavar="N", help="evaluate the first N samples")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help=f"samples per run (default: the model's fixed batch, else {DEFAULT_BATCH})")
    p.add_argument("--reference-engine", choices=REFERENCE_ENGINES, default="qinfer",
                   help="run the reference with qinfer's float path (default) or onnxruntime")
    p.add_argument("--json", metavar="OUT.json", help="write the figures as JSON")
    return p


def run_from_args(args):
    for what, path in (("model", args.model), ("--reference", args.reference), ("--data", args.data),
                       ("--labels", args.labels)):
        if path is not None and not os.path.exists(path):
            raise EvaluateError(f"{what} {path}: no such file")
    if args.threads is not None and args.threads < 1:
        raise EvaluateError(f"--threads must be >= 1, got {args.threads}")
    result = evaluate(args.model, args.reference, args.data, labels=args.labels, per_layer=args.per_layer,
                      num_threads=args.threads, max_samples=args.max_samples, batch_size=args.batch_size,
                      reference_engine=args.reference_engine)
    print(format_report(result))
    if args.json:
        write_json(result, args.json)
        print(f"\nwrote {args.json}")
    return result


__all__ = ["evaluate", "layer_values", "cosine", "sqnr_db", "top1_agreement", "classification_metrics",
           "format_report", "write_json", "EvaluateError"]
