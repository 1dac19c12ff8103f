"""Calibration (qinfer.quant.calibrate): data forms, feed validation, observers over a real graph.

Models: a hand-built ONNX MLP (with an integer ArgMax output that must not be observed), a
two-input model, and the digits CNN fixture of tests/models.py.
"""
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import qinfer
from qinfer.errors import CalibrationError
from qinfer.quant import MinMaxObserver, calibrate, iter_calibration, prepare_feed
from qinfer.reference.executor import run_graph

METHODS = ["minmax", "percentile", "entropy", "mse"]


def _mlp_onnx(batch="N"):
    r = np.random.default_rng(0)
    w1 = r.standard_normal((4, 8)).astype(np.float32)
    b1 = r.standard_normal(8).astype(np.float32)
    w2 = r.standard_normal((8, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
             numpy_helper.from_array(w2, "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="add"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
             helper.make_node("ArgMax", ["y"], ["cls"], axis=1, keepdims=0, name="argmax")]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3]),
                           helper.make_tensor_value_info("cls", TensorProto.INT64, [batch])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _two_input_onnx():
    nodes = [helper.make_node("Add", ["a", "b"], ["s"], name="add"),
             helper.make_node("Mul", ["s", "a"], ["p"], name="mul")]
    g = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
                                         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 3])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def mlp():
    return qinfer.convert(_mlp_onnx())


@pytest.fixture(scope="module")
def two():
    return qinfer.convert(_two_input_onnx())


# ============================================================================ calibrate on the MLP
def test_minmax_matches_reference_run(mlp, rng):
    batches = [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(7)]
    obs = calibrate(mlp, batches, progress=False)
    g = mlp.graph
    assert list(obs) == ["x", "h", "hb", "r", "y"]        # inputs, then graph order; not the int64 'cls'
    assert all(isinstance(o, MinMaxObserver) and o.name == k for k, o in obs.items())
    full = run_graph(g, {"x": np.concatenate(batches)}, outputs=["h", "hb", "r", "y"])
    full["x"] = np.concatenate(batches)
    for name, o in obs.items():
        assert o.range() == (float(full[name].min()), float(full[name].max())), name
        assert o.count == full[name].size
    assert obs["r"].range()[0] == 0.0


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_valid_qparams(mlp, rng, method):
    data = {"x": rng.standard_normal((40, 4))}               # float64 user data: cast to float32
    obs = calibrate(mlp.graph, data, method=method, progress=False)
    assert set(obs) == {"x", "h", "hb", "r", "y"}
    for name, o in obs.items():
        scale, zp = o.qparams()
        assert isinstance(scale, np.float32) and scale > 0 and 0 <= zp <= 255
        assert o.batches == 40                                # npz-like: one sample at a time
    assert obs["r"].qparams()[1] == 0                         # ReLU output: zero point 0


def test_values_restrict_and_max_samples(mlp, rng):
    batches = [rng.standard_normal((2, 4)).astype(np.float32) for _ in range(10)]
    obs = calibrate(mlp, batches, values=["r", "x"], max_samples=4, progress=False)
    assert list(obs) == ["r", "x"]
    assert obs["x"].count == 4 * 2 * 4
    obs = calibrate(mlp, iter(batches), values="y", progress=False)
    assert list(obs) == ["y"] and obs["y"].batches == 10


def test_values_errors(mlp, rng):
    data = [rng.standard_normal((1, 4)).astype(np.float32)]
    with pytest.raises(CalibrationError, match="unknown value 'nope'"):
        calibrate(mlp, data, values=["nope"], progress=False)
    with pytest.raises(CalibrationError, match="'w1' is a constant weight"):
        calibrate(mlp, data, values=["w1"], progress=False)
    with pytest.raises(CalibrationError, match=r"\['cls'\] are not floating-point"):
        calibrate(mlp, data, values=["y", "cls"], progress=False)


def test_unknown_method_names_valid_ones(mlp):
    with pytest.raises(CalibrationError, match="'kl'.*'minmax', 'percentile', 'entropy', 'mse'"):
        calibrate(mlp, [np.zeros((1, 4), np.float32)], method="kl", progress=False)


def test_feed_validation(mlp, rng):
    good = rng.standard_normal((2, 4))
    with pytest.raises(CalibrationError, match=r"sample 1: input 'x': expected dtype float32, got int64"):
        calibrate(mlp, [good, np.ones((2, 4), np.int64)], progress=False)
    with pytest.raises(CalibrationError, match="input 'x': expected dtype float32, got bool"):
        calibrate(mlp, [np.ones((2, 4), bool)], progress=False)
    with pytest.raises(CalibrationError, match=r"input 'x': expected rank 2 .*got rank 3"):
        calibrate(mlp, [np.ones((1, 2, 4), np.float32)], progress=False)
    with pytest.raises(CalibrationError, match=r"input 'x': dimension 1 must be 4.*got 5"):
        calibrate(mlp, [np.ones((2, 5), np.float32)], progress=False)
    feed = prepare_feed(mlp.graph, {"x": good.astype(np.float16)})
    assert feed["x"].dtype == np.float32
    # static batch dimension: a batch of 3 from an npz-like source is refused, 1 at a time is fine
    static = qinfer.convert(_mlp_onnx(batch=1))
    calibrate(static, {"x": rng.standard_normal((5, 4))}, progress=False)
    with pytest.raises(CalibrationError, match="dimension 0 must be 1"):
        calibrate(static, {"x": rng.standard_normal((5, 4))}, batch_size=3, progress=False)


def test_non_finite_activations_warn_and_are_ignored(mlp):
    x = np.ones((2, 4), np.float32)
    x[0, 0] = np.nan
    with pytest.warns(RuntimeWarning, match="'x'.*non-finite"):
        obs = calibrate(mlp, [x, np.zeros((2, 4), np.float32)], values=["x"], progress=False)
    assert obs["x"].range() == (0.0, 1.0)


def test_progress_bar_on_a_terminal_and_fallback(mlp, rng, monkeypatch):
    data = [rng.standard_normal((1, 4)).astype(np.float32) for _ in range(3)]

    class TTY:
        text = []

        def isatty(self):
            return True

        def write(self, s):
            self.text.append(s)

        def flush(self):
            pass

    tty = TTY()
    monkeypatch.setattr(sys, "stderr", tty)
    obs = calibrate(mlp, data, progress=True)
    assert obs["x"].batches == 3
    assert "calibrating" in "".join(tty.text)
    monkeypatch.setitem(sys.modules, "tqdm", None)          # tqdm not importable: silent fallback
    tty.text.clear()
    obs = calibrate(mlp, data, progress=True)
    assert obs["x"].batches == 3 and "".join(tty.text) == ""


# ============================================================================ iter_calibration
def test_forms_of_calibration_data(tmp_path, rng):
    x = rng.standard_normal((5, 4)).astype(np.float32)
    # iterable of arrays / of dicts / generator: yielded as they are
    assert [f["x"].shape for f in iter_calibration(list(x[:, None]), ["x"])] == [(1, 4)] * 5
    assert len(list(iter_calibration([{"x": x}], ["x"]))) == 1
    assert len(list(iter_calibration((a for a in [x, x]), ["x"]))) == 2
    assert len(list(iter_calibration([x] * 9, ["x"], max_samples=4))) == 4
    # npz: first axis = samples, batch dim kept
    p = tmp_path / "calib.npz"
    np.savez(p, x=x)
    feeds = list(iter_calibration(str(p), ["x"]))
    assert len(feeds) == 5 and all(f["x"].shape == (1, 4) for f in feeds)
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in feeds]), x)
    assert [f["x"].shape[0] for f in iter_calibration(p, ["x"], batch_size=2)] == [2, 2, 1]
    assert [f["x"].shape[0] for f in iter_calibration(p, ["x"], batch_size=2, max_samples=3)] == [2, 1]
    # one unnamed array (np.savez(p, x) / np.save) for a single-input model; a bare array; a mapping
    np.savez(tmp_path / "anon.npz", x)
    np.save(tmp_path / "plain.npy", x)
    for src in (tmp_path / "anon.npz", str(tmp_path / "plain.npy"), x, {"x": x}):
        assert len(list(iter_calibration(src, ["x"]))) == 5
    # multi-input npz
    np.savez(tmp_path / "two.npz", a=x[:, :3], b=x[:, 1:])
    feeds = list(iter_calibration(tmp_path / "two.npz", ["a", "b"], batch_size=5))
    assert len(feeds) == 1 and set(feeds[0]) == {"a", "b"}


def test_calibrate_two_inputs_from_npz(two, tmp_path, rng):
    a, b = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    np.savez(tmp_path / "d.npz", a=a, b=b)
    obs = calibrate(two, str(tmp_path / "d.npz"), progress=False)
    assert list(obs) == ["a", "b", "s", "p"]
    s = a.astype(np.float32) + b.astype(np.float32)          # float64 data are cast, then added
    assert obs["s"].range() == (float(s.min()), float(s.max()))


def _err(calibration, names, match, **kw):
    with pytest.raises(CalibrationError, match=match):
        list(iter_calibration(calibration, names, **kw))


def test_iter_calibration_errors(tmp_path, rng):
    x = rng.standard_normal((4, 3)).astype(np.float32)
    _err(str(tmp_path / "missing.npz"), ["x"], "not found: .*missing.npz")
    _err(tmp_path, ["x"], "is a directory")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    _err(tmp_path / "bad.npz", ["x"], "cannot read calibration file")
    (tmp_path / "text.npz").write_text("hello")
    _err(tmp_path / "text.npz", ["x"], "cannot read calibration file")
    _err(None, ["x"], "no calibration data")
    _err([], ["x"], "empty")
    _err(iter([]), ["x"], "empty")
    np.savez(tmp_path / "empty.npz")
    _err(tmp_path / "empty.npz", ["x"], "empty")
    np.savez(tmp_path / "zero.npz", x=np.zeros((0, 3), np.float32))
    _err(tmp_path / "zero.npz", ["x"], r"empty \(0 samples\)")
    np.savez(tmp_path / "names.npz", input=x)
    _err(tmp_path / "names.npz", ["x"], r"expected \['x'\], got \['input'\].*missing \['x'\].*unknown \['input'\]")
    _err([{"x": x, "y": x}], ["x"], r"sample 0: .*expected \['x'\], got \['x', 'y'\]")
    _err([{"a": x}], ["a", "b"], r"missing \['b'\]")
    _err([x], ["a", "b"], r"inputs \['a', 'b'\]: each calibration sample must be a feed dict")
    _err(x, ["a", "b"], r"inputs \['a', 'b'\].*got an array")
    np.savez(tmp_path / "uneven.npz", a=x, b=x[:3])
    _err(tmp_path / "uneven.npz", ["a", "b"], r"different numbers of samples.*'a': 4, 'b': 3")
    np.savez(tmp_path / "strings.npz", x=np.array([["a", "b"]]))
    _err(tmp_path / "strings.npz", ["x"], "must be numeric, got dtype <U1")
    _err([np.array(["a"])], ["x"], "must be numeric")
    _err([{"x": np.array([object()])}], ["x"], "must be numeric, got dtype object")
    _err([np.zeros(2, complex)], ["x"], "must be numeric")
    _err(["file.npz"], ["x"], "expected a feed dict")
    _err(42, ["x"], "must be a path to an .npz file")
    np.savez(tmp_path / "scalar.npz", x=np.float32(1))
    _err(tmp_path / "scalar.npz", ["x"], "scalar")
    np.save(tmp_path / "plain.npy", x)
    _err(tmp_path / "plain.npy", ["a", "b"], "one unnamed array")
    _err([x], ["x"], "batch_size must be a positive int", batch_size=0)
    _err([x], ["x"], "max_samples", max_samples=-1)
    _err([x], [], "no inputs")


def test_calibrate_raises_calibration_errors_before_running(mlp, tmp_path):
    with pytest.raises(CalibrationError, match="not found"):
        calibrate(mlp, str(tmp_path / "nope.npz"), progress=False)
    with pytest.raises(CalibrationError, match="empty"):
        calibrate(mlp, [], progress=False)
    with pytest.raises(qinfer.QinferError):
        calibrate(mlp, [{"input": np.zeros((1, 4), np.float32)}], progress=False)


# ============================================================================ digits CNN fixture
@pytest.mark.parametrize("method", METHODS)
def test_digits_cnn(digits_cnn, method):
    model = qinfer.convert(digits_cnn.path)
    g = model.graph
    x = digits_cnn.x_test[:32]
    obs = calibrate(model, {"input": x}, method=method, batch_size=8, progress=False)
    produced = [o for n in g.nodes for o in n.outputs if o]
    assert list(obs) == ["input"] + produced                  # every value of this CNN is float
    full = run_graph(g, {"input": x}, outputs=produced)
    full["input"] = x
    for name, o in obs.items():
        lo, hi = o.range()
        ref = full[name]
        assert ref.min() <= lo <= hi <= ref.max(), (name, lo, hi)
        scale, zp = o.qparams()
        assert scale > 0 and 0 <= zp <= 255
        if method == "minmax":
            assert (lo, hi) == (float(ref.min()), float(ref.max()))
        # 8-bit quantization of the calibrated value itself keeps it close (signal above noise)
        q = qinfer.quant.dequantize_activation(qinfer.quant.quantize_activation(ref, scale, zp), scale, zp)
        nmse = float(np.mean((q - ref) ** 2) / max(np.mean(ref ** 2), 1e-30))
        assert nmse < 1e-2, (name, nmse)
    relu = [n.outputs[0] for n in g.nodes if n.op == "Relu"]
    assert relu and all(obs[r].qparams()[1] == 0 for r in relu)


def test_count_calibration_reads_headers_only(tmp_path):
    from qinfer.quant import count_calibration
    np.savez(tmp_path / "a.npz", x=np.zeros((7, 3), np.float32), y=np.zeros((7, 2), np.float32))
    np.save(tmp_path / "b.npy", np.zeros((5, 3), np.float32))
    assert count_calibration(tmp_path / "a.npz", batch_size=2) == 4
    assert count_calibration(str(tmp_path / "b.npy"), max_samples=3) == 3
    assert count_calibration([1, 2, 3]) == 3 and count_calibration({"x": np.zeros((9, 1))}, batch_size=4) == 3
    assert count_calibration(tmp_path / "missing.npz") is None and count_calibration(iter([1])) is None
