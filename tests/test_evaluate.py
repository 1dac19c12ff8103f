"""``qinfer evaluate`` (SPEC section 7): the metrics, the Python API, per-layer values and the command."""
import json
import math
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qinfer
from qinfer.errors import CalibrationError
from qinfer.evaluate import (EvaluateError, classification_metrics, cosine, evaluate, format_report,
                             layer_values, sqnr_db, top1_agreement)
from qinfer.ir.graph import Graph, Node, QuantParams, Value


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "qinfer.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def _one_line_error(r, *needles):
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _save(model, path):
    path.write_bytes(model.SerializeToString())
    return str(path)


# ============================================================================ metrics, by hand

def test_cosine_by_hand():
    assert cosine([1.0, 2.0], [2.0, 4.0]) == pytest.approx(1.0)
    assert cosine([1.0, 0.0], [0.0, 1.0]) == pytest.approx(0.0)
    assert cosine([1.0, 0.0], [-1.0, 0.0]) == pytest.approx(-1.0)
    # (1*1 + 1*0) / (sqrt(2) * 1)
    assert cosine([1.0, 1.0], [1.0, 0.0]) == pytest.approx(1 / math.sqrt(2))
    assert cosine(np.zeros(3), np.zeros(3)) == 1.0       # both silent: identical
    assert cosine(np.zeros(3), np.ones(3)) == 0.0
    # arrays are flattened: shape does not matter, only the elements
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert cosine(a, a.ravel()) == pytest.approx(1.0)


def test_sqnr_by_hand():
    assert sqnr_db([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == math.inf
    # signal 3^2 + 4^2 = 25, noise (4 - 3)^2 = 1 -> 10 log10 25
    assert sqnr_db([3.0, 4.0], [3.0, 3.0]) == pytest.approx(10 * math.log10(25))
    # noise equal to signal -> 0 dB; ten times less noise energy -> 10 dB
    assert sqnr_db([1.0, 1.0], [0.0, 0.0]) == pytest.approx(0.0)
    assert sqnr_db([10.0], [10.0 - math.sqrt(10)]) == pytest.approx(10.0)
    assert sqnr_db([0.0, 0.0], [0.0, 1.0]) == -math.inf
    assert sqnr_db(np.zeros(2), np.zeros(2)) == math.inf


def test_top1_agreement_by_hand():
    ref = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    got = np.array([[0.2, 0.8], [0.4, 0.6], [0.1, 0.9]])     # row 1 flips
    assert top1_agreement(ref, got) == pytest.approx(2 / 3)
    assert top1_agreement(ref, ref) == 1.0
    # every leading index is a row: [2, 2, 3] -> 4 positions, one differs
    r = np.zeros((2, 2, 3))
    r[..., 0] = 1
    g = r.copy()
    g[1, 0] = [0, 0, 1]
    assert top1_agreement(r, g) == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="shapes differ"):
        top1_agreement(ref, ref[:2])


def test_classification_metrics_by_hand():
    # class 0: TP 1, predicted 3, actual 2 -> P 1/3, R 1/2, F1 2(1/6)/(5/6) = 0.4
    # class 1: TP 2, predicted 3, actual 2 -> P 2/3, R 1,   F1 0.8
    # class 2: TP 0, never predicted, actual 2 -> P 0 (zero_division=0), R 0, F1 0
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 0, 0]
    m = classification_metrics(y_true, y_pred)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["precision"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert m["recall"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert m["f1"] == pytest.approx((0.4 + 0.8 + 0) / 3)
    perfect = classification_metrics([3, 1, 2], [3, 1, 2])
    assert perfect == {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    # num_classes: every class 0..K-1 counts, even one absent from labels and predictions
    m5 = classification_metrics(y_true, y_pred, num_classes=5)
    assert m5["precision"] == pytest.approx((1 / 3 + 2 / 3) / 5)
    with pytest.raises(ValueError, match="outside"):
        classification_metrics([0, 7], [0, 1], num_classes=5)
    with pytest.raises(ValueError):
        classification_metrics([0, 1], [0])
    with pytest.raises(ValueError, match="integer"):
        classification_metrics([0.5, 1.0], [0, 1])


@pytest.mark.parametrize("case", ["random", "missing_predictions", "one_class_predicted", "label_gaps"])
def test_classification_metrics_match_sklearn(case, rng):
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support
    n, k = 200, 7
    y_true = rng.integers(0, k, n)
    if case == "random":
        y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, k, n))
    elif case == "missing_predictions":      # classes 5 and 6 are never predicted
        y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, 5, n))
        y_pred = np.where(y_pred >= 5, 0, y_pred)
    elif case == "one_class_predicted":
        y_pred = np.full(n, 3)
    else:                                    # classes not 0..k-1, a predicted class never true
        y_true = rng.choice([2, 5, 11, 40], n)
        y_pred = np.where(rng.random(n) < 0.5, y_true, rng.choice([2, 5, 99], n))
    m = classification_metrics(y_true, y_pred)
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    assert m["precision"] == pytest.approx(p, abs=1e-12)
    assert m["recall"] == pytest.approx(r, abs=1e-12)
    assert m["f1"] == pytest.approx(f, abs=1e-12)
    if case != "label_gaps":
        m10 = classification_metrics(y_true, y_pred, num_classes=10)
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=list(range(10)), average="macro",
                                                     zero_division=0)
        assert (m10["precision"], m10["recall"], m10["f1"]) == pytest.approx((p, r, f), abs=1e-12)


# ============================================================================ evaluate on models

@pytest.fixture(scope="module")
def digits(digits_cnn):
    return digits_cnn


def _round_weights(path, out, bits=3):
    """A copy of an ONNX model whose weight tensors (rank >= 2) are rounded to ``bits`` bits."""
    m = onnx.load(path)
    qmax = 2 ** (bits - 1) - 1
    for init in m.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.ndim >= 2:
            scale = np.abs(w).max() / qmax
            init.CopyFrom(numpy_helper.from_array((np.round(w / scale) * scale).astype(w.dtype), init.name))
    return _save(m, out)


def test_float_model_against_itself(digits):
    x, y = digits.x_test[:100], digits.y_test[:100]
    res = evaluate(digits.path, digits.path, {"input": x}, labels=y, num_threads=1)
    assert res["samples"] == 100
    (o,) = res["outputs"]
    assert o["name"] == "logits" and o["metric"] == "top1_agreement" and o["shape"] == [10]
    assert o["top1_agreement"] == 1.0
    assert o["cosine"] == 1.0 and o["cosine_min"] == 1.0
    assert o["sqnr_db"] == math.inf and o["max_abs_diff"] == 0.0
    lab = res["labels"]
    assert lab["output"] == "logits" and lab["num_classes"] == 10
    assert lab["model"] == lab["reference"]
    assert lab["model"]["accuracy"] > 0.9
    assert res["layers"] is None and res["precision_report"] is None


def test_rounded_weights_lower_sqnr_and_per_layer(digits, tmp_path):
    bad = _round_weights(digits.path, tmp_path / "digits_3bit.onnx", bits=3)
    x = digits.x_test[:64]
    res = evaluate(bad, digits.path, {"input": x, "y": digits.y_test[:64]}, per_layer=True, num_threads=1)
    (o,) = res["outputs"]
    assert math.isfinite(o["sqnr_db"]) and o["sqnr_db"] < 40
    assert o["cosine"] < 1.0
    assert res["labels"]["source"].endswith("['y']")     # labels found in the data under "y"
    layers = res["layers"]
    names = [r["name"] for r in layers]
    float_graph = qinfer.convert(digits.path).graph
    produced = [o for n in float_graph.nodes for o in n.outputs]
    assert sorted(names) == sorted(produced)            # same graph structure: every value compared
    assert {"Conv", "Relu", "Gemm"} <= {r["op"] for r in layers}
    sq = [r["sqnr_db"] for r in layers]
    assert sq == sorted(sq)                               # worst first
    assert all(math.isfinite(s) for s in sq)
    # the first conv's output carries only its own rounding error: better than the logits
    first = next(r for r in layers if r["name"] == produced[0])
    assert first["sqnr_db"] > min(sq)
    assert next(r for r in layers if r["name"] == "logits")["sqnr_db"] == pytest.approx(o["sqnr_db"])


def test_quantized_model_per_layer_dequantizes_nhwc(digits, tmp_path):
    float_model = qinfer.convert(digits.path)
    calib = {"input": digits.x_test[:32]}
    qmodel = qinfer.quantize(float_model, calib, progress=False)
    qpath = tmp_path / "digits_int8.qinf"
    qmodel.save(qpath)
    res = evaluate(str(qpath), digits.path, {"input": digits.x_test[:48]}, per_layer=True, num_threads=1)
    (o,) = res["outputs"]
    assert o["cosine"] > 0.99 and o["top1_agreement"] > 0.9
    g = qmodel.graph
    shape_notes = [s for s in res["layers_skipped"] if "shapes differ" in s["reason"]]
    assert not shape_notes, shape_notes
    assert any(r["model_op"] != r["op"] for r in res["layers"])     # quantized layers are compared
    quantized = [r for r in res["layers"] if r["model_dtype"] in ("uint8", "int8")]
    nhwc = [n for n, lay in (g.metadata.get("layouts") or {}).items() if lay == "NHWC"]
    if quantized:       # a uint8 value, dequantized (and back in NCHW) before the comparison
        assert all(r["cosine"] > 0.99 for r in quantized)
    if nhwc:
        vals = layer_values(qmodel, {"input": digits.x_test[:2]}, names=nhwc[:1])
        ref = layer_values(float_model, {"input": digits.x_test[:2]}, names=nhwc[:1])
        (name,) = vals
        assert vals[name].dtype == np.float32 and vals[name].shape == ref[name].shape
        assert cosine(ref[name], vals[name]) > 0.99
    if res["precision_report"] is not None:
        assert all("layer" in r and "precision" in r for r in res["precision_report"])


def test_precision_report_printed(digits):
    """The quantizer's ``metadata["precision_report"]``: which layers stayed float and why."""
    g = qinfer.convert(digits.path).graph.copy()
    g.metadata["precision_report"] = [
        {"layer": "/body/body.0/Conv", "op": "Conv", "precision": "int8", "reason": "quantized"},
        {"layer": "/fc/Gemm", "op": "Gemm", "precision": "float32", "reason": "sensitive: output cosine 0.93"}]
    res = evaluate(qinfer.Model(g), digits.path, {"input": digits.x_test[:20]}, per_layer=True)
    assert res["precision_report"][1]["reason"].startswith("sensitive")
    by_name = {r["name"]: r for r in res["layers"]}
    assert by_name["logits"]["precision"] == "float32"             # matched by the producing node
    assert by_name["/body/body.0/Conv_output_0"]["precision"] == "int8"
    text = format_report(res)
    assert "1 layer(s) kept in float" in text
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("/fc/Gemm"))
    assert "sensitive: output cosine 0.93" in line and "float32" in line


def test_layer_values_float_graph_matches_outputs(digits):
    g = qinfer.convert(digits.path).graph
    x = digits.x_test[:3]
    vals = layer_values(g, {"input": x})
    assert list(vals) == [o for n in g.nodes for o in n.outputs]
    (logits,) = qinfer.InferenceSession(g, num_threads=1).run(None, {"input": x})
    np.testing.assert_allclose(vals["logits"], logits, rtol=1e-4, atol=1e-4)
    assert set(layer_values(g, {"input": x}, names=["logits"])) == {"logits"}
    with pytest.raises(EvaluateError, match="nope"):
        layer_values(g, {"input": x}, names=["nope"])


def test_layer_values_dequantize_and_nhwc_by_hand(rng):
    """A hand-built quantized graph: uint8 values with qparams, one of them NHWC."""
    scale, zp = 0.05, 7
    x = rng.uniform(-0.3, 5.0, (2, 3, 4, 5)).astype(np.float32)
    g = Graph("q", nodes=[
        Node("QuantizeU8", ("x",), ("q_nhwc",), {"scale": scale, "zero_point": zp, "layout": "nchw_to_nhwc"}),
        Node("DequantizeU8", ("q_nhwc",), ("back",), {"scale": scale, "zero_point": zp,
                                                       "layout": "nhwc_to_nchw"}),
        Node("QuantizeU8", ("back",), ("q_nchw",), {"scale": scale, "zero_point": zp}),
    ], inputs=[Value("x", "float32", (2, 3, 4, 5))], outputs=[Value("q_nchw", "uint8", (2, 3, 4, 5))],
        value_info={"q_nhwc": Value("q_nhwc", "uint8", (2, 4, 5, 3), QuantParams(np.float32(scale), zp)),
                    "back": Value("back", "float32", (2, 3, 4, 5)),
                    "q_nchw": Value("q_nchw", "uint8", (2, 3, 4, 5), QuantParams(np.float32(scale), zp))},
        metadata={"layouts": {"q_nhwc": "NHWC"}})
    vals = layer_values(g, {"x": x})
    want = np.clip(np.rint(x / np.float32(scale)) + zp, 0, 255).astype(np.float32)
    want = np.float32(scale) * (want - zp)
    for name in ("q_nhwc", "back", "q_nchw"):
        assert vals[name].dtype == np.float32 and vals[name].shape == x.shape, name
        np.testing.assert_allclose(vals[name], want, rtol=0, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(vals["q_nhwc"], x, atol=scale / 2 + 1e-6)


# ---------------------------------------------------------------------------- small synthetic models

def _multi_output_onnx(path, batch="batch"):
    """x [b, 4] -> logits [b, 3] (Gemm), seq [b, 2, 3] softmax rows, fmap [b, 2, 2, 3] (no softmax)."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    w2 = rng.standard_normal((4, 12)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"]),
             helper.make_node("MatMul", ["x", "w2"], ["h"]),
             helper.make_node("Reshape", ["h", "s3"], ["h3"]),
             helper.make_node("Softmax", ["h3"], ["seq"], axis=-1),
             helper.make_node("Reshape", ["h", "s4"], ["fmap"])]
    g = helper.make_graph(nodes, "multi", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3]),
                           helper.make_tensor_value_info("seq", TensorProto.FLOAT, [batch, 2, 6]),
                           helper.make_tensor_value_info("fmap", TensorProto.FLOAT, [batch, 2, 2, 3])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w2, "w2"),
                           numpy_helper.from_array(np.array([0, 2, 6], np.int64), "s3"),
                           numpy_helper.from_array(np.array([0, 2, 2, 3], np.int64), "s4")])
    return _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_classifier_rule_per_output(tmp_path, rng):
    p = _multi_output_onnx(tmp_path / "multi.onnx")
    x = rng.standard_normal((10, 4)).astype(np.float32)
    res = evaluate(p, p, {"x": x}, num_threads=1)
    by = {o["name"]: o for o in res["outputs"]}
    assert by["logits"]["metric"] == "top1_agreement" and "per sample" in by["logits"]["classifier"]
    assert by["seq"]["metric"] == "top1_agreement" and "per position" in by["seq"]["classifier"]
    assert by["fmap"]["metric"] == "cosine" and by["fmap"]["top1_agreement"] is None
    assert all(o["sqnr_db"] == math.inf for o in res["outputs"])
    assert "classifier-like" in res["classifier_rule"]


def test_fixed_batch_pads_the_last_batch_and_max_samples(tmp_path, rng):
    p = _multi_output_onnx(tmp_path / "fixed.onnx", batch=4)
    x = rng.standard_normal((10, 4)).astype(np.float32)
    res = evaluate(p, p, {"x": x}, num_threads=1)
    assert res["batch_size"] == 4 and res["samples"] == 10
    assert res["outputs"][0]["top1_agreement"] == 1.0
    res = evaluate(p, p, {"x": x}, max_samples=5, num_threads=1)
    assert res["samples"] == 5
    with pytest.raises(EvaluateError, match="fixed at 4"):
        evaluate(p, p, {"x": x}, batch_size=3)


def test_onnxruntime_reference(digits):
    pytest.importorskip("onnxruntime")
    res = evaluate(digits.path, digits.path, {"input": digits.x_test[:50]}, reference_engine="onnxruntime",
                   num_threads=1)
    (o,) = res["outputs"]
    assert res["reference_engine"] == "onnxruntime"
    assert o["top1_agreement"] == 1.0 and o["cosine"] > 0.99999 and o["sqnr_db"] > 60


def test_api_errors(digits, tmp_path):
    x = {"input": digits.x_test[:8]}
    with pytest.raises(CalibrationError, match="expected \\['input'\\]"):
        evaluate(digits.path, digits.path, {"img": digits.x_test[:8], "other": digits.x_test[:8]})
    with pytest.raises(EvaluateError, match="7 labels for 8 samples"):
        evaluate(digits.path, digits.path, x, labels=np.zeros(7, np.int64))
    with pytest.raises(EvaluateError, match="not a class"):
        evaluate(digits.path, digits.path, x, labels=np.full(8, 12))
    other = _multi_output_onnx(tmp_path / "multi.onnx")
    with pytest.raises(EvaluateError, match="outputs"):
        evaluate(digits.path, other, x)
    with pytest.raises(EvaluateError, match="no such file"):
        evaluate(str(tmp_path / "nope.qinf"), digits.path, x)


# ============================================================================ the command

def test_cli_end_to_end_with_labels(digits, tmp_path):
    data = tmp_path / "data.npz"
    np.savez(data, input=digits.x_test[:80])
    labels = tmp_path / "labels.npy"
    np.save(labels, digits.y_test[:80])
    bad = _round_weights(digits.path, tmp_path / "digits_3bit.onnx", bits=3)
    out = tmp_path / "eval.json"
    r = _cli("evaluate", bad, "--reference", digits.path, "--data", str(data), "--labels", str(labels),
             "--per-layer", "--threads", "1", "--json", str(out))
    assert r.returncode == 0, r.stderr
    text = r.stdout
    for needle in ("outputs (model vs reference)", "top-1 agreement", "SQNR dB", "labels (",
                   "accuracy", "precision", "recall", "F1", "per layer (", "Gemm"):
        assert needle in text, (needle, text)
    assert text.index("outputs (") < text.index("labels (") < text.index("per layer (")
    assert "Traceback" not in r.stderr
    fig = json.loads(out.read_text())
    assert fig["samples"] == 80
    assert set(fig["labels"]["model"]) == {"accuracy", "precision", "recall", "f1"}
    assert isinstance(fig["outputs"][0]["sqnr_db"], float)
    assert len(fig["layers"]) >= 5
    # the same file against itself: SQNR inf is written as the string "inf" (JSON has no infinity)
    r = _cli("evaluate", digits.path, "--reference", digits.path, "--data", str(data), "--max-samples", "10",
             "--json", str(out))
    assert r.returncode == 0, r.stderr
    fig = json.loads(out.read_text())
    assert fig["samples"] == 10 and fig["outputs"][0]["sqnr_db"] == "inf"
    assert "100.00%" in r.stdout


def test_cli_errors_one_line(digits, tmp_path):
    data = tmp_path / "data.npz"
    np.savez(data, input=digits.x_test[:20])
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, pixels=digits.x_test[:20], other=digits.x_test[:20])
    short = tmp_path / "short.npy"
    np.save(short, digits.y_test[:19])
    other = _multi_output_onnx(tmp_path / "multi.onnx")
    m = digits.path
    _one_line_error(_cli("evaluate", str(tmp_path / "nope.qinf"), "--reference", m, "--data", str(data)),
                    "nope.qinf")
    _one_line_error(_cli("evaluate", m, "--reference", m, "--data", str(tmp_path / "missing.npz")),
                    "missing.npz")
    _one_line_error(_cli("evaluate", m, "--reference", m, "--data", str(wrong)), "wrong.npz", "input")
    _one_line_error(_cli("evaluate", m, "--reference", m, "--data", str(data), "--labels", str(short)),
                    "19 labels for 20 samples")
    _one_line_error(_cli("evaluate", m, "--reference", other, "--data", str(data)), "outputs")
