"""qinfer.quantize: whole-model int8 (static and dynamic), accuracy, bit-exactness, files, errors."""
import os
import subprocess
import sys

import numpy as np
import pytest

import models
import qinfer
from qinfer.reference.executor import run_graph


def _train_calib(n=128, mlp=False):
    x_train = models.digits_split()[0][:n]
    return models.digits_28(x_train) if mlp else x_train


def _accuracy(model, x, y):
    sess = qinfer.InferenceSession(model, num_threads=1)
    (logits,) = sess.run(None, {sess.get_inputs()[0].name: x})
    return float((logits.argmax(1) == y).mean())


@pytest.mark.parametrize("which", ["cnn", "mlp"])
def test_digits_int8_loses_at_most_half_a_point(which, digits_cnn, digits_mlp):
    d = digits_cnn if which == "cnn" else digits_mlp
    m = qinfer.convert(d.path)
    q = qinfer.quantize(m, _train_calib(mlp=which == "mlp"), progress=False)
    ops = q.graph.op_counts()
    assert "Conv" not in ops and "Gemm" not in ops and "MatMul" not in ops, ops
    f_acc, q_acc = _accuracy(m, d.x_test, d.y_test), _accuracy(q, d.x_test, d.y_test)
    print(f"digits {which}: float {f_acc:.4f}, int8 {q_acc:.4f}")
    assert f_acc - q_acc <= 0.005
    assert m.graph.op_counts() != ops   # the input model is untouched


def test_quantized_graph_runtime_equals_reference_and_threads(digits_cnn, rng):
    q = qinfer.quantize(qinfer.convert(digits_cnn.path), _train_calib(64), progress=False)
    x = digits_cnn.x_test[:33]
    ref = run_graph(q.graph, {"input": x})["logits"]
    one = qinfer.InferenceSession(q, num_threads=1).run(None, {"input": x})[0]
    two = qinfer.InferenceSession(q, num_threads=2).run(None, {"input": x})[0]
    np.testing.assert_array_equal(one, ref)
    np.testing.assert_array_equal(one, two)


def test_resnet_residual_adds_stay_uint8(resnet18_onnx, rng):
    m = qinfer.convert(resnet18_onnx)
    x = [rng.standard_normal((1, 3, 64, 64)).astype(np.float32) for _ in range(4)]
    q = qinfer.quantize(m, x, progress=False)
    ops = q.graph.op_counts()
    assert ops.get("QAdd", 0) >= 6 and ops.get("QConv") == 20, ops
    assert ops.get("QuantizeU8", 0) <= 4, ops
    a = qinfer.InferenceSession(m).run(None, {"input": x[0]})[0]
    b = qinfer.InferenceSession(q).run(None, {"input": x[0]})[0]
    ref = run_graph(q.graph, {"input": x[0]})["logits"]
    np.testing.assert_array_equal(b, ref)
    cos = float(a.ravel() @ b.ravel() / np.linalg.norm(a) / np.linalg.norm(b))
    assert cos > 0.98


def test_save_load_round_trip(digits_cnn, tmp_path):
    q = qinfer.quantize(qinfer.convert(digits_cnn.path), _train_calib(32), progress=False)
    p = tmp_path / "q.qinf"
    q.save(p)
    q2 = qinfer.load(p)
    x = digits_cnn.x_test[:10]
    a = qinfer.InferenceSession(q).run(None, {"input": x})[0]
    b = qinfer.InferenceSession(str(p)).run(None, {"input": x})[0]
    np.testing.assert_array_equal(a, b)
    assert q2.graph.metadata["quantization"]["weights"] == "int8"
    assert "int8" in q2.summary()


def assert_steps_bit_exact(q, feeds, ops, threads=1):
    """Every session step of ``q`` whose op is in ``ops`` gives the reference op's bits on the
    inputs the reference executor feeds it (what a bit-exact comparison of whole outputs checks,
    without the float row ops -- LayerNormalization, Softmax, Erf -- that sessions run in C and
    round apart from numpy's by an ulp, which a dynamic layer re-quantizes). Returns how many
    steps were checked."""
    from qinfer.runtime.planner import Program
    steps = [st for st in Program(q.graph, threads).steps if st.node.op in ops]
    assert steps and all(st.fn is not None for st in steps), "no fast step to check"
    env = run_graph(q.graph, feeds, outputs=sorted({i for st in steps for i in st.node.inputs if i}))
    env.update(q.graph.initializers)
    for st in steps:
        ins = [env[i] if i else None for i in st.node.inputs]
        n = len(st.node.outputs)
        for g, w in zip(st.fn(ins, st.node.attrs, n), st.ref(ins, st.node.attrs, n)):
            np.testing.assert_array_equal(w, g)
    return len(steps)


def test_transformer_dynamic_mode_keeps_cosine(transformer_onnx, rng):
    m = qinfer.convert(transformer_onnx)
    q = qinfer.quantize(m, activations="dynamic")
    assert q.graph.op_counts().get("DynQGemm", 0) >= 4
    x = rng.standard_normal((2, 16, 16)).astype(np.float32)
    for a, b in zip(qinfer.InferenceSession(m).run(None, {"x": x}), qinfer.InferenceSession(q).run(None, {"x": x})):
        cos = float(a.ravel() @ b.ravel() / np.linalg.norm(a) / np.linalg.norm(b))
        assert cos >= 0.99
    assert_steps_bit_exact(q, {"x": x}, {"DynQGemm"}, threads=2) >= 4
    ref = run_graph(q.graph, {"x": x})
    got = qinfer.InferenceSession(q).run(None, {"x": x})
    for name, g in zip(q.graph.output_names, got):   # float row ops round apart from numpy's
        np.testing.assert_allclose(g, ref[name], rtol=1e-4, atol=1e-4)


def test_tight_budget_keeps_sensitive_layers_float(digits_cnn):
    m = qinfer.convert(digits_cnn.path)
    q = qinfer.quantize(m, _train_calib(16), max_error=1e-12, progress=False)
    report = q.graph.metadata["precision_report"]
    kept = [r for r in report if r["precision"] == "float32"]
    assert kept and all("sensitive" in r["reason"] for r in kept)
    assert q.graph.metadata["quantization"]["output_error"] <= 1e-12
    assert "kept float" in q.summary()


def test_exclude_keeps_layer_float(digits_cnn):
    m = qinfer.convert(digits_cnn.path)
    first_conv = next(n.name for n in m.graph.nodes if n.op == "Conv")
    q = qinfer.quantize(m, _train_calib(16), exclude=[first_conv], progress=False)
    assert any(n.op == "Conv" and n.name == first_conv for n in q.graph.nodes)
    assert any(r["layer"] == first_conv and "excluded" in r["reason"]
               for r in q.graph.metadata["precision_report"])


def test_errors(digits_cnn):
    m = qinfer.convert(digits_cnn.path)
    with pytest.raises(qinfer.CalibrationError, match="calibration data"):
        qinfer.quantize(m)
    with pytest.raises(qinfer.CalibrationError):
        qinfer.quantize(m, [{"wrong_name": digits_cnn.x_test[:1]}])
    with pytest.raises(qinfer.CalibrationError):
        qinfer.quantize(m, [])
    with pytest.raises(qinfer.QinferError, match="int4"):
        qinfer.quantize(m, _train_calib(4), weights="int4", group_size=48)
    with pytest.raises(qinfer.QinferError, match="unknown node"):
        qinfer.quantize(m, _train_calib(4), exclude=["nope"])
    with pytest.raises(qinfer.QinferError, match="method"):
        qinfer.quantize(m, _train_calib(4), method="bogus")


def test_cli_quantize(digits_cnn, tmp_path):
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=_train_calib(32))
    out = tmp_path / "q.qinf"
    r = subprocess.run([sys.executable, "-m", "qinfer.cli", "quantize", digits_cnn.path, "--calib", str(calib),
                        "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert out.exists() and "layers quantized" in r.stdout
    assert _accuracy(qinfer.load(out), digits_cnn.x_test, digits_cnn.y_test) > 0.97
    # --compress: the narrow layers of this small CNN (a 16-channel conv, the 10-way dense layer)
    # store their packed weights compact (no panel padding, quant/storage.py)
    from qinfer.ir import serialize
    small = tmp_path / "small.qinf"
    r = subprocess.run([sys.executable, "-m", "qinfer.cli", "quantize", digits_cnn.path, "--calib", str(calib),
                        "-o", str(small), "--compress"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert small.stat().st_size < out.stat().st_size
    ops = [n["op"] for n in serialize.read_header(small)["nodes"]]
    assert ops.count("PackQC8W") == 2, ops
    assert "PackQC8W" not in [n["op"] for n in serialize.read_header(out)["nodes"]]
    x = digits_cnn.x_test[:64]
    np.testing.assert_array_equal(qinfer.InferenceSession(str(small)).run(None, {"input": x})[0],
                                  qinfer.InferenceSession(str(out)).run(None, {"input": x})[0])
    r = subprocess.run([sys.executable, "-m", "qinfer.cli", "quantize", digits_cnn.path, "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "--calib" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_squeeze_excitation_and_maxpool_run_on_uint8(ppocr_cls_onnx):
    """PP-OCRv4's direction classifier (PP-LCNet: SE blocks, a 3x3 max pool): with a loose budget
    every SE gate, pool and max pool runs on uint8 (QMulChannel / QGlobalAveragePool / QMaxPool),
    bit-identical to the reference ops at 1 and 2 threads; with the default budget the answers
    (top-1 direction) are the float model's, calibrated with minmax or mse ranges."""
    m = qinfer.convert(ppocr_cls_onnx)
    x = models.cls_input(20).astype(np.float32)
    calib = [x[i:i + 1] for i in range(16)]
    loose = qinfer.quantize(m, calib, max_error=1.0, progress=False)
    ops = loose.graph.op_counts()
    assert ops.get("QMulChannel", 0) >= 8 and ops.get("QGlobalAveragePool", 0) >= 8, ops
    assert ops.get("QMaxPool") == 1 and "Mul" not in ops and "MaxPool" not in ops, ops
    name = m.graph.input_names[0]
    for threads in (1, 2):
        assert assert_steps_bit_exact(loose, {name: x[16:]},
                                      {"QMulChannel", "QGlobalAveragePool", "QMaxPool"}, threads) >= 17
    ref = run_graph(loose.graph, {name: x[16:]})
    one = qinfer.InferenceSession(loose, num_threads=1).run(None, {name: x[16:]})[0]
    two = qinfer.InferenceSession(loose, num_threads=2).run(None, {name: x[16:]})[0]
    # the closing Softmax runs on the C row kernel: an ulp from numpy's
    np.testing.assert_allclose(one, ref[loose.graph.output_names[0]], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(one, two)
    f = qinfer.InferenceSession(m).run(None, {name: x})[0]
    for method in ("minmax", "mse"):   # the default, and the observer bench_models times it with
        q = qinfer.quantize(m, calib, method=method, progress=False)
        got = qinfer.InferenceSession(q).run(None, {name: x})[0]
        assert (f.argmax(1) == got.argmax(1)).all(), method
        assert q.graph.metadata["quantization"]["output_error"] <= 0.01, method


@pytest.mark.slow
def test_ppocr_cls_int8_file_is_under_0_3_of_the_onnx(ppocr_cls_onnx, tmp_path):
    """The direction classifier's int8 file (mse ranges, as bench_models times it) saved with
    ``compress=True`` is at most 0.3x its ONNX: the packed weights of its 8- to 50-channel layers,
    whose panels pad them to 32-channel multiples, are stored compact (quant/storage.py) and
    packed again at load, and what deflates well is deflated; loaded back it answers bit for bit
    as before saving, as does the default (every blob memory-mapped) file, which is larger."""
    from qinfer.ir import serialize
    m = qinfer.convert(ppocr_cls_onnx)
    x = models.cls_input(20).astype(np.float32)
    q = qinfer.quantize(m, [x[i:i + 1] for i in range(16)], method="mse", progress=False)
    p, plain = tmp_path / "cls.qinf", tmp_path / "cls-plain.qinf"
    q.save(p, compress=True)
    q.save(plain)
    ratio = os.path.getsize(p) / os.path.getsize(ppocr_cls_onnx)
    plain_ratio = os.path.getsize(plain) / os.path.getsize(ppocr_cls_onnx)
    print(f"PP-OCRv4 cls int8 .qinf: {os.path.getsize(plain):,} B, {plain_ratio:.3f}x the ONNX "
          f"({os.path.getsize(p):,} B, {ratio:.3f}x, with compress=True)")
    assert ratio <= 0.3
    assert os.path.getsize(plain) > os.path.getsize(p)
    ops = [n["op"] for n in serialize.read_header(p)["nodes"]]
    assert ops.count("PackQC8W") >= ops.count("QConv") // 2, ops
    deflated = [t for t in serialize.read_header(p)["tensors"] if "deflated" in t]
    assert all(t["deflated"] <= 7 / 8 * t["nbytes"] for t in deflated)
    name = m.graph.input_names[0]
    want = qinfer.InferenceSession(q).run(None, {name: x})[0]
    for f in (p, plain):
        np.testing.assert_array_equal(qinfer.InferenceSession(str(f)).run(None, {name: x})[0], want)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["minmax", "percentile"])   # the default; bench_models' figure
def test_ppocr_rec_int8_keeps_the_read_text(ppocr_rec_onnx, method):
    """PP-OCRv4 recognition in int8 reads >= 90% of 100 rendered text lines exactly as the float
    model does (greedy CTC), calibrated on 16 other lines."""
    m = qinfer.convert(ppocr_rec_onnx)
    xc, _ = models.rendered_rec_input(16, seed=100)
    x, _ = models.rendered_rec_input(100, seed=1)
    q = qinfer.quantize(m, [xc[i:i + 1] for i in range(16)], method=method, progress=False)
    chars = models.rec_characters(ppocr_rec_onnx)
    name = m.graph.input_names[0]
    f = models.ctc_decode(qinfer.InferenceSession(m).run(None, {name: x})[0], chars)
    g = models.ctc_decode(qinfer.InferenceSession(q).run(None, {name: x})[0], chars)
    same = float(np.mean([a == b for a, b in zip(f, g)]))
    print(f"PP-OCRv4 rec int8 ({method}): {same:.2%} of sequences identical to float")
    assert same >= 0.90
    assert q.graph.op_counts().get("QConv", 0) >= 15   # most of the backbone runs int8


@pytest.mark.slow
def test_ppocr_det_int8_keeps_the_text_map(ppocr_det_onnx):
    """PP-OCRv4 detection in int8 (default settings), on pictures and page scans with text drawn
    on them: per image, probability-map cosine >= 0.99 and binarized (0.3) map IoU >= 0.95
    against float; calibrated on other images (the shipped page, text and photos, and other
    text scenes)."""
    m = qinfer.convert(ppocr_det_onnx)
    calib = np.concatenate([models.det_input(4, 320, 320), models.text_scenes(4, 320, 320, seed=1)])
    q = qinfer.quantize(m, [calib[i:i + 1] for i in range(len(calib))], progress=False)
    x = models.text_scenes(6, 320, 320, seed=100)
    name = m.graph.input_names[0]
    sf, sq = qinfer.InferenceSession(m, num_threads=2), qinfer.InferenceSession(q, num_threads=2)
    cosines, ious = [], []
    for i in range(len(x)):
        f = sf.run(None, {name: x[i:i + 1]})[0].astype(np.float64).ravel()
        g = sq.run(None, {name: x[i:i + 1]})[0].astype(np.float64).ravel()
        assert (f > 0.3).any()                          # every image has text
        cosines.append(f @ g / np.linalg.norm(f) / np.linalg.norm(g))
        a, b = f > 0.3, g > 0.3
        ious.append((a & b).sum() / (a | b).sum())
    print(f"PP-OCRv4 det int8: map cosine min {min(cosines):.4f}, binarized IoU min {min(ious):.4f} "
          f"mean {np.mean(ious):.4f} over {len(x)} text images")
    assert min(cosines) >= 0.99 and min(ious) >= 0.95
    assert q.graph.op_counts().get("QConv", 0) >= 20    # most of the network runs int8


# ----------------------------------------------------------------------------- per-channel inputs
def _channel_range_model(path, rng, mag):
    """x [1, 8, 12, 12] -> depthwise 3x3, grouped (2 groups) 3x3 stride 2, and 1x1 convs, each an
    output; the weights favour the narrow channels, so they matter as much as the wide ones."""
    import onnx
    from onnx import helper, numpy_helper, TensorProto
    c = mag.size
    inv = (1.0 / mag).astype(np.float32)
    w_dw = rng.standard_normal((c, 1, 3, 3)).astype(np.float32) * inv.reshape(c, 1, 1, 1)
    w_g = rng.standard_normal((4, c // 2, 3, 3)).astype(np.float32) * inv.reshape(2, c // 2)[
        [0, 0, 1, 1]].reshape(4, c // 2, 1, 1)
    w_pw = rng.standard_normal((6, c, 1, 1)).astype(np.float32) * inv.reshape(1, c, 1, 1)
    inits = [numpy_helper.from_array(w_dw, "w_dw"), numpy_helper.from_array(w_g, "w_g"),
             numpy_helper.from_array(w_pw, "w_pw"),
             numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "b_dw")]
    nodes = [helper.make_node("Conv", ["x", "w_dw", "b_dw"], ["dw"], group=c, pads=[1, 1, 1, 1], name="dw"),
             helper.make_node("Conv", ["x", "w_g"], ["grouped"], group=2, pads=[1, 1, 1, 1],
                              strides=[2, 2], name="grouped"),
             helper.make_node("Conv", ["x", "w_pw"], ["pw"], name="pw")]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("dw", "grouped", "pw")]
    g = helper.make_graph(nodes, "channels", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         [1, c, 12, 12])], outs, inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)


#: channel magnitudes 1e4 apart
_CH_MAG = np.array([1e-2, 1e-1, 1.0, 10.0, 100.0, 3e-2, 0.3, 30.0], np.float32)


def _channel_setup(tmp_path, rng, samples):
    """(float model, calibration feeds, candidates, their names) of _channel_range_model"""
    from qinfer.quant import quantize as Q
    path = str(tmp_path / "ch.onnx")
    _channel_range_model(path, rng, _CH_MAG)
    m = qinfer.convert(path)
    feeds = [{"x": (rng.standard_normal((1, 8, 12, 12)) * _CH_MAG.reshape(1, 8, 1, 1)).astype(np.float32)}
             for _ in range(samples)]
    cands = Q.find_candidates(m.graph)
    return m, feeds, cands, {c.name for c in cands}


def test_per_channel_inputs_fold_into_the_weights(tmp_path, rng):
    """A float input whose channels span 1e4 in range: read per channel (QuantizeU8
    channel_scales, the scales folded into the depthwise / grouped / 1x1 weights) each output
    keeps cosine >= 0.999, where one scale for the tensor loses the narrow channels; the session
    gives the reference executor's bits at 1 and 2 threads, and a saved file runs the same."""
    from qinfer.quant import quantize as Q
    from qinfer.quant.calibrate import calibrate
    m, feeds, cands, names = _channel_setup(tmp_path, rng, 6)
    obs = calibrate(m.graph, feeds, progress=False)
    assert names == {"dw", "grouped", "pw"}
    ref = Q._outputs(m.graph, feeds)

    def worst(g):
        return Q.output_error(ref, Q._outputs(g, feeds))

    tensor_g, _ = Q.build_quantized(m.graph, cands, obs, names)
    chan_g, report = Q.build_quantized(m.graph, cands, obs, names, names)
    e_t, e_c = worst(tensor_g), worst(chan_g)
    print(f"worst 1 - cosine: per tensor {e_t:.2e}, per channel {e_c:.2e}")
    assert e_c <= 1e-3 and e_t >= 20 * e_c
    quant = [n for n in chan_g.nodes if n.op == "QuantizeU8"]
    assert len(quant) == 1 and len(quant[0].attrs["channel_scales"]) == 8   # one, shared
    assert chan_g.op_counts().get("QConv") == 3
    assert all("input per channel" in r["reason"] for r in report)
    from qinfer.model import Model
    p = tmp_path / "ch.qinf"
    Model(chan_g).save(p)
    x = feeds[0]
    want = run_graph(chan_g, x)
    for nt in (1, 2):
        got = qinfer.InferenceSession(str(p), num_threads=nt).run(None, x)
        for name, g in zip(chan_g.output_names, got):
            np.testing.assert_array_equal(g, want[name])


def test_quantize_reads_a_wide_ranged_float_input_per_channel(tmp_path, rng):
    """qinfer.quantize takes the per-channel reading by itself and keeps the budget."""
    m, feeds, _, _ = _channel_setup(tmp_path, rng, 6)
    q = qinfer.quantize(m, feeds, progress=False)
    assert q.graph.op_counts().get("QConv") == 3, q.summary()
    assert q.graph.metadata["quantization"]["output_error"] <= 0.01
    report = q.graph.metadata["precision_report"]
    assert len(report) == 3 and all("input per channel" in r["reason"] for r in report), report


def test_evaluate_dequantizes_a_per_channel_value_per_channel(tmp_path, rng):
    """qinfer evaluate's per-layer view reads a per-channel uint8 value with its channel scales:
    back within each channel's scale / 2 of the float input."""
    from qinfer import evaluate as ev
    from qinfer.quant import quantize as Q
    from qinfer.quant.calibrate import calibrate
    m, feeds, cands, names = _channel_setup(tmp_path, rng, 3)
    g, _ = Q.build_quantized(m.graph, cands, calibrate(m.graph, feeds, progress=False), names, names)
    quant = next(n for n in g.nodes if n.op == "QuantizeU8")
    u8 = run_graph(g, feeds[0], outputs=[quant.outputs[0]])[quant.outputs[0]]
    back, why = ev._as_float(g, quant.outputs[0], u8, quant, {quant.outputs[0]: "NHWC"})
    assert why is None and back.shape == feeds[0]["x"].shape
    scales = np.asarray(quant.attrs["channel_scales"], np.float32).reshape(1, 8, 1, 1)
    assert np.all(np.abs(back - feeds[0]["x"]) <= scales * 0.5001)


def test_flatten_before_a_quantized_gemm_runs_on_uint8(tmp_path, rng):
    """conv -> Flatten -> Gemm: the Flatten takes the conv's uint8 NHWC bytes as they are and
    the Gemm's weight rows follow them in (h, w, c) order -- no dequantize / float Flatten /
    quantize between them -- and the answers stay the float model's (H != W, so a wrong row
    order would scramble them)."""
    import onnx
    from onnx import helper, numpy_helper, TensorProto
    w_c = rng.standard_normal((6, 2, 1, 1)).astype(np.float32)
    w_g = rng.standard_normal((4, 6 * 3 * 5)).astype(np.float32) * 0.2
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "wc"], ["c"], name="conv"),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("Flatten", ["r"], ["f"], axis=1, name="flat"),
         helper.make_node("Gemm", ["f", "wg"], ["y"], transB=1, name="fc")],
        "flat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w_c, "wc"), numpy_helper.from_array(w_g, "wg")])
    path = str(tmp_path / "flat.onnx")
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)
    m = qinfer.convert(path)
    xs = rng.standard_normal((16, 2, 3, 5)).astype(np.float32)
    q = qinfer.quantize(m, [xs[i:i + 1] for i in range(16)], progress=False)
    ops = q.graph.op_counts()
    assert ops.get("QConv") == 1 and ops.get("QGemm") == 1 and "DequantizeU8" not in ops, ops
    assert ops.get("QuantizeU8") == 1, ops          # the model input only
    (fc,) = [n for n in q.graph.nodes if n.op == "QGemm"]
    assert fc.attrs["k_order_hwc"] == [6, 3, 5]
    x = rng.standard_normal((3, 2, 3, 5)).astype(np.float32)
    want = qinfer.InferenceSession(m).run(None, {"x": x})[0]
    got = qinfer.InferenceSession(q, num_threads=2).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, run_graph(q.graph, {"x": x})["y"])
    cos = float(want.ravel() @ got.ravel() / np.linalg.norm(want) / np.linalg.norm(got))
    assert cos > 0.999, cos
