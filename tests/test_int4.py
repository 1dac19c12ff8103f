"""int4 weights end to end: rounding (nearest, GPTQ), the quantizer's int4 / int8 choice, the Q4 ops
(runtime = reference, threads), files, summary, command line and errors."""
import os
import subprocess
import sys

import numpy as np
import pytest

import models
import qinfer
from qinfer.quant import gptq
from qinfer.quant import quantize as QZ
from qinfer.reference import int4 as R
from qinfer.reference.executor import run_graph
from test_quantize import _accuracy, _train_calib as _calib  # digits calibration split, accuracy
from test_quantize import assert_steps_bit_exact


def _cos(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# ----------------------------------------------------------------------------- rounding

def test_block_scale_puts_the_extreme_weight_on_minus_8(rng):
    w = rng.normal(size=(6, 64))
    w[0] = (np.arange(64) % 16 - 8) * 1.125     # on the grid of scale 9/8, extreme -9 at -8
    w[1] = (7 - np.arange(64) % 16) * -0.5      # extreme +4: the scale takes its sign (-0.5)
    s = gptq.block_scales(w)
    q = np.clip(np.rint(w / s[:, None].astype(np.float64)), -8, 7)
    assert s[0] == np.float32(1.125) and s[1] == np.float32(-0.5)
    np.testing.assert_array_equal(q[:2] * s[:2, None], w[:2])
    assert q[0].min() == -8 and q[1][w[1] == 4.0].tolist() == [-8] * 4
    # the shrink search never does worse than the unshrunk scale
    e = w[np.arange(6), np.abs(w).argmax(1)] / -8.0
    q0 = np.clip(np.rint(w / e[:, None]), -8, 7)
    # (1e-6: the scale is rounded to float32 after the search)
    assert np.all(((w - q * s[:, None]) ** 2).sum(1) <= ((w - q0 * e[:, None]) ** 2).sum(1) * (1 + 1e-6))


def test_rtn_and_dequantize_shapes_and_range(rng):
    w = rng.normal(size=(10, 100))
    q, s = gptq.quantize_rtn(w, 32)
    assert q.dtype == np.int8 and q.min() >= -8 and q.max() <= 7 and s.shape == (10, 4)
    d = gptq.dequantize(q, s, 32)
    assert d.shape == w.shape and np.abs(d - w).max() <= np.abs(s).max() * 1.5


def test_gptq_equals_rtn_without_correlation_and_beats_it_with(rng):
    w = rng.normal(size=(16, 96))
    # uncorrelated inputs (H diagonal): nothing to compensate, GPTQ rounds like RTN
    qg, sg = gptq.quantize_gptq(w, np.diag(rng.uniform(0.5, 2.0, 96)), 32)
    qr, sr = gptq.quantize_rtn(w, 32)
    np.testing.assert_array_equal(qg, qr)
    np.testing.assert_array_equal(sg, sr)
    # correlated inputs: GPTQ lowers the layer's output error on them (and on fresh ones)
    mix = rng.normal(size=(96, 96)) + 3 * np.eye(96)
    x, x2 = rng.normal(size=(2000, 96)) @ mix, rng.normal(size=(2000, 96)) @ mix
    H, H2 = x.T @ x, x2.T @ x2
    qg, sg = gptq.quantize_gptq(w, H, 32)
    for G in (H, H2):
        assert gptq.sqnr_db(w, gptq.dequantize(qg, sg, 32), G) > \
            gptq.sqnr_db(w, gptq.dequantize(qr, sr, 32), G) + 1.0


def test_gptq_zeroes_dead_inputs(rng):
    w = rng.normal(size=(4, 32))
    x = rng.normal(size=(500, 32))
    x[:, 3] = 0
    q, s = gptq.quantize_gptq(w, x.T @ x, 32)
    assert np.all(q[:, 3] == 0)


# ----------------------------------------------------------------------------- whole models

@pytest.mark.parametrize("which", ["cnn", "mlp"])
def test_digits_int4_loses_at_most_1_5_points(which, digits_cnn, digits_mlp):
    d = digits_cnn if which == "cnn" else digits_mlp
    m = qinfer.convert(d.path)
    f_acc = _accuracy(m, d.x_test, d.y_test)
    for rounding in ("nearest", "gptq"):
        q = qinfer.quantize(m, _calib(mlp=which == "mlp"), weights="int4", rounding=rounding,
                            progress=False)
        ops = q.graph.op_counts()
        assert ops.get("Q4Gemm", 0) >= 1 and "Gemm" not in ops and "Conv" not in ops, ops
        assert which == "mlp" or ops.get("Q4Conv", 0) >= 1, ops
        q_acc = _accuracy(q, d.x_test, d.y_test)
        print(f"digits {which} int4 {rounding}: float {f_acc:.4f}, int4 {q_acc:.4f}")
        assert f_acc - q_acc <= 0.015


def test_mlp_int4_file_is_under_0_17_of_the_onnx(digits_mlp, tmp_path):
    q = qinfer.quantize(qinfer.convert(digits_mlp.path), _calib(32, mlp=True), weights="int4",
                        progress=False)
    assert q.graph.metadata["quantization"]["int4_layers"] == 3
    p = tmp_path / "mlp4.qinf"
    q.save(p)
    ratio = os.path.getsize(p) / os.path.getsize(digits_mlp.path)
    print(f"784-1024-1024-10 MLP int4 .qinf: {os.path.getsize(p):,} bytes, {ratio:.3f}x the ONNX")
    assert ratio <= 0.17
    x = digits_mlp.x_test[:7]
    np.testing.assert_array_equal(qinfer.InferenceSession(str(p)).run(None, {"input": x})[0],
                                  qinfer.InferenceSession(q).run(None, {"input": x})[0])
    assert qinfer.load(p).graph.metadata["quantization"]["weights"] == "int4"


def test_transformer_int4_file_is_under_0_17_of_the_onnx(transformer_onnx, tmp_path):
    """The small transformer (64 wide: its fixed costs weigh) at the defaults, static int8
    activations as bench/bench_int4.py builds it: int4 layers, the positional table in int4
    blocks, shared scales and small constants in the header; outputs still near float."""
    rng = np.random.default_rng(0)
    calib = [models.transformer_input(rng, 1, 16) for _ in range(32)]
    q = qinfer.quantize(qinfer.convert(transformer_onnx), calib, weights="int4", progress=False)
    info = q.graph.metadata["quantization"]
    assert info["int4_layers"] == 14 and "1 stored int4" in info["constants"], info
    p = tmp_path / "t4.qinf"
    q.save(p)
    ratio = os.path.getsize(p) / os.path.getsize(transformer_onnx)
    print(f"transformer int4 .qinf: {os.path.getsize(p):,} bytes, {ratio:.3f}x the ONNX")
    assert ratio <= 0.17
    x = models.transformer_input(rng, 2, 11)
    got = qinfer.InferenceSession(str(p)).run(None, {"x": x})
    want = qinfer.InferenceSession(transformer_onnx).run(None, {"x": x})
    for a, b in zip(got, want):
        assert float(a.ravel() @ b.ravel() / np.linalg.norm(a) / np.linalg.norm(b)) > 0.99


def _held_out_sqnr(m, q, feeds):
    """Per int4 layer: output SQNR of its dequantized weights on the inputs of ``feeds``."""
    cands = {c.name: c for c in QZ.find_candidates(m.graph)}
    stats = QZ._layer_stats(m.graph, list(cands.values()), feeds, False)
    out = {}
    for n in q.graph.nodes:
        if n.op in ("Q4Gemm", "DynQ4Gemm"):
            u = R.unpack_qb4w(q.graph.initializers[n.inputs[1]])
            wq = gptq.dequantize(u["q"].T, u["scales"], u["block"])
            out[n.name] = gptq.sqnr_db(cands[n.name].weight.T, wq, stats[n.name].gram())
    return out


@pytest.mark.parametrize("activations", ["int8", "dynamic"])
def test_gptq_beats_nearest_on_the_transformer(activations, transformer_onnx):
    """On inputs not used to calibrate: GPTQ's layers have a higher output SQNR than
    round-to-nearest's on >= 90% of the layers, and the model's outputs are never further from
    the float model's (worst and mean cosine over samples and outputs)."""
    m = qinfer.convert(transformer_onnx)
    rng = np.random.default_rng(7)
    calib = [models.transformer_input(rng, 1, 16) for _ in range(32)]
    test = [models.transformer_input(rng, 1, 16) for _ in range(12)]
    qs = {r: qinfer.quantize(m, calib, weights="int4", activations=activations, rounding=r,
                             progress=False) for r in ("nearest", "gptq")}
    sq = {r: _held_out_sqnr(m, q, [{"x": t} for t in test]) for r, q in qs.items()}
    assert len(sq["gptq"]) == 14
    wins = sum(sq["gptq"][k] > sq["nearest"][k] for k in sq["gptq"])
    print(f"GPTQ > nearest on {wins}/14 layers: "
          + ", ".join(f"{sq['nearest'][k]:.1f}->{sq['gptq'][k]:.1f}" for k in sq["gptq"]))
    assert wins >= 0.9 * 14
    ref = [qinfer.InferenceSession(m).run(None, {"x": t}) for t in test]
    cos = {}
    for r, q in qs.items():
        sess = qinfer.InferenceSession(q)
        cos[r] = [_cos(a, b) for t, outs in zip(test, ref) for a, b in zip(outs, sess.run(None, {"x": t}))]
    print(f"worst cosine nearest {min(cos['nearest']):.5f}, gptq {min(cos['gptq']):.5f}")
    assert min(cos["gptq"]) >= min(cos["nearest"]) and np.mean(cos["gptq"]) >= np.mean(cos["nearest"])
    # the dynamic DynQ4Gemm path: the kernels give the reference's bits
    if activations == "dynamic":
        assert assert_steps_bit_exact(qs["gptq"], {"x": test[0]}, {"DynQ4Gemm"}, threads=2) == 14


def test_layers_that_lose_too_much_keep_int8_and_say_why(digits_cnn):
    m = qinfer.convert(digits_cnn.path)
    q = qinfer.quantize(m, _calib(32), weights="int4", max_error=1e-3, progress=False)
    rep = {r["layer"]: r for r in q.graph.metadata["precision_report"]}
    kept = [r for r in rep.values() if r["precision"] == "int8"]
    four = [r for r in rep.values() if r["precision"] == "int4"]
    assert kept and four, rep
    assert all("kept int8: int4 weights would cost" in r["reason"] and "SQNR" in r["reason"] for r in kept)
    assert all("SQNR" in r["reason"] for r in four)
    assert q.graph.metadata["quantization"]["output_error"] <= 1e-3
    ops = q.graph.op_counts()
    assert ops.get("QConv", 0) + ops.get("QGemm", 0) == len(kept)
    text = q.summary()
    assert "kept int8" in text and "int4" in text and "SQNR" in text
    # an int4 layer's epilogue scale is s_x alone (its block scales are in the packed weights):
    # stored once and broadcast, where the int8 layers keep one per channel
    for n in q.graph.nodes:
        if n.op in ("Q4Conv", "Q4Gemm", "QConv", "QGemm"):
            assert (q.graph.initializers[n.inputs[2]].size == 1) == n.op.startswith("Q4"), n.name
    # int8 and int4 convs in one graph: the kernels give the reference's bits at 1 and 2 threads
    x = digits_cnn.x_test[:21]
    ref = run_graph(q.graph, {"input": x})["logits"]
    for nt in (1, 2):
        np.testing.assert_array_equal(qinfer.InferenceSession(q, num_threads=nt).run(None, {"input": x})[0], ref)


def test_dynamic_mode_keeps_int8_where_int4_costs_the_budget(transformer_onnx):
    m = qinfer.convert(transformer_onnx)
    rng = np.random.default_rng(3)
    q = qinfer.quantize(m, [models.transformer_input(rng, 1, 16) for _ in range(16)], weights="int4",
                        activations="dynamic", max_error=2e-3, progress=False)
    info = q.graph.metadata["quantization"]
    rep = q.graph.metadata["precision_report"]
    assert info["int4_layers"] >= 1 and info["int8_layers"] >= 1 and info["output_error"] <= 2e-3
    assert all(r["reason"].startswith("kept int8") for r in rep if r["precision"] == "int8-dynamic")
    ops = q.graph.op_counts()
    assert (ops["DynQ4Gemm"], ops["DynQGemm"]) == (info["int4_layers"], info["int8_layers"])


def test_cli_quantize_int4(digits_cnn, tmp_path):
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=_calib(32))
    out = tmp_path / "q4.qinf"
    cmd = [sys.executable, "-m", "qinfer.cli", "quantize", digits_cnn.path, "--calib", str(calib),
           "-o", str(out), "--weights", "int4", "--group-size", "32", "--rounding", "gptq"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "int4 weights (block 32, gptq)" in r.stdout
    q = qinfer.load(out)
    assert q.graph.metadata["quantization"]["group_size"] == 32
    assert _accuracy(q, digits_cnn.x_test, digits_cnn.y_test) > 0.97
    bad = subprocess.run(cmd[:-4] + ["--group-size", "48"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "group-size" in bad.stderr    # argparse: not a choice
    r = subprocess.run([sys.executable, "-m", "qinfer.cli", "quantize", digits_cnn.path, "-o", str(out),
                        "--activations", "dynamic", "--weights", "int4", "--rounding", "gptq"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "calibration data" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_errors(digits_cnn):
    m = qinfer.convert(digits_cnn.path)
    with pytest.raises(qinfer.QinferError, match="group_size must be one of"):
        qinfer.quantize(m, _calib(4), weights="int4", group_size=48, progress=False)
    with pytest.raises(qinfer.QinferError, match="group_size must be one of"):
        qinfer.quantize(m, _calib(4), weights="int4", group_size=True, progress=False)
    with pytest.raises(qinfer.QinferError, match="rounding='gptq' applies to weights='int4'"):
        qinfer.quantize(m, _calib(4), rounding="gptq", progress=False)
    with pytest.raises(qinfer.QinferError, match="rounding must be"):
        qinfer.quantize(m, _calib(4), weights="int4", rounding="awq", progress=False)
    with pytest.raises(qinfer.CalibrationError, match="needs calibration data"):
        qinfer.quantize(m, weights="int4", activations="dynamic", rounding="gptq", progress=False)


def test_damaged_int4_weights_in_a_graph_raise_qinfer_errors(digits_cnn):
    """A graph whose packed int4 weights are cut, mislabelled or missing: a QinferError naming the
    node, from the kernels' checks or the reference op, never a crash."""
    q = qinfer.quantize(qinfer.convert(digits_cnn.path), _calib(16), weights="int4", progress=False)
    i = next(k for k, n in enumerate(q.graph.nodes) if n.op == "Q4Conv")
    node = q.graph.nodes[i]
    packed = q.graph.initializers[node.inputs[1]]
    for damage in ("cut", "magic", "block", "no inputs", "scales"):
        g = q.graph.copy()
        if damage == "no inputs":
            g.nodes[i] = node.replace(inputs=node.inputs[:1])
        elif damage == "scales":    # neither one shared value nor one per channel
            g.initializers = {**g.initializers, node.inputs[2]: np.ones(2, np.float32)}
        else:
            bad = np.array(packed[:-64] if damage == "cut" else packed)
            if damage == "magic":
                bad[0] ^= 0xFF
            elif damage == "block":
                bad[24] = 6
            g.initializers[node.inputs[1]] = bad
        with pytest.raises(qinfer.QinferError, match=node.name):
            qinfer.InferenceSession(qinfer.Model(g)).run(None, {"input": digits_cnn.x_test[:2]})
