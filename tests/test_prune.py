"""qinfer.prune: patterns and their layout, scopes, exclude, files, quantize keeping the zeros,
SparseGPT against magnitude pruning, the digits accuracy of issue 7, errors and the CLI."""
import subprocess
import sys

import numpy as np
import pytest

import models
import qinfer
from qinfer.ir.graph import Graph, Node, Value
from qinfer.quant import gptq
from qinfer.quant import prune as qprune
from qinfer.reference import int4 as r4
from qinfer.reference import quantized as r8
from qinfer.reference.executor import run_graph
from test_quantize import _accuracy, _train_calib


# ----------------------------------------------------------------------------- a small model
def _small_model(rng, scale_fc=1.0):
    """x [N, 8, 8, 8] -> conv 3x3 (8 -> 16, K = 72) -> relu -> conv 1x1 (K = 16) -> grouped conv
    3x3 (4 groups of 3 channels, K = 27: blocks run across kernel positions) -> depthwise conv (left
    dense) -> maxpool -> Gemm transB=1 (K = 192) -> relu -> MatMul [K = 24, N = 10]."""
    f = np.float32
    init = {
        "w1": rng.standard_normal((16, 8, 3, 3)).astype(f), "b1": rng.standard_normal(16).astype(f),
        "w2": rng.standard_normal((12, 16, 1, 1)).astype(f),
        "w3": rng.standard_normal((12, 3, 3, 3)).astype(f),           # groups=4: I/g = 3, K = 27
        "w4": rng.standard_normal((12, 1, 3, 3)).astype(f),           # depthwise
        "wg": (scale_fc * rng.standard_normal((24, 12 * 4 * 4))).astype(f),  # Gemm transB=1, K = 192
        "bg": rng.standard_normal(24).astype(f),
        "wm": rng.standard_normal((24, 10)).astype(f),                # MatMul [K=24, N=10]
    }
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1], "dilations": [1, 1]}
    nodes = [
        Node("Conv", ("x", "w1", "b1"), ("c1",), dict(conv, group=1), "conv1"),
        Node("Relu", ("c1",), ("r1",), {}, "relu1"),
        Node("Conv", ("r1", "w2"), ("c2",), {"kernel_shape": [1, 1], "group": 1}, "conv2"),
        Node("Conv", ("c2", "w3"), ("c3",), dict(conv, group=4), "conv3"),
        Node("Conv", ("c3", "w4"), ("c4",), dict(conv, group=12), "dw4"),
        Node("MaxPool", ("c4",), ("p",), {"kernel_shape": [2, 2], "strides": [2, 2]}, "pool"),
        Node("Flatten", ("p",), ("fl",), {"axis": 1}, "flatten"),
        Node("Gemm", ("fl", "wg", "bg"), ("g",), {"transB": 1}, "fc"),
        Node("Relu", ("g",), ("rg",), {}, "relu2"),
        Node("MatMul", ("rg", "wm"), ("y",), {}, "head"),
    ]
    g = Graph("small", nodes, [Value("x", "float32", ("batch", 8, 8, 8))],
              [Value("y", "float32", ("batch", 10))], init)
    return qinfer.Model(g)


def _matrix(node_op, w, attrs=None):
    """The weight as [N, K] in the documented reduction order, written out independently."""
    if node_op == "Conv":
        return w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1)       # (ky, kx, c), c fastest
    return w if (attrs or {}).get("transB", 0) else w.T


def _rows(model, name):
    """([N, K] rows of layer ``name``, K): conv groups stacked, each row within its own group."""
    n = next(n for n in model.graph.nodes if n.name == name)
    m = _matrix(n.op, model.graph.initializers[n.inputs[1]], n.attrs)
    return m, m.shape[1]


PRUNED = ("conv1", "conv2", "conv3", "fc", "head")


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.7, 0.9])
def test_block4_blocks_along_the_reduction_axis(rng, sparsity):
    m = _small_model(rng)
    p = qinfer.prune(m, sparsity, pattern="block4", progress=False)
    info = qprune.pruned_layers(p.graph)
    assert sorted(info) == sorted(PRUNED)
    for name in PRUNED:
        rows, k = _rows(p, name)
        nb = -(-k // 4)
        pad = np.ones((rows.shape[0], nb * 4))
        pad[:, :k] = rows
        blocks = pad.reshape(rows.shape[0], nb, 4)
        # every block all zero or all kept (a padded tail counts its real weights only)
        real = np.arange(nb * 4).reshape(nb, 4) < k
        zero = ((blocks == 0) | ~real).all(axis=2)
        nz_in_block = ((blocks != 0) & real).sum(axis=2)
        assert np.all((nz_in_block == 0) | (nz_in_block == real.sum(axis=1))), name
        # every row prunes round(s * blocks), at most all but one
        want = min(int(np.floor(sparsity * nb + 0.5)), nb - 1)
        assert np.all(zero.sum(axis=1) == want), (name, zero.sum(axis=1), want)
        # the blocks pruned are the smallest of their row (mean square over the real weights)
        src, _ = _rows(m, name)
        sq = np.full((rows.shape[0], nb * 4), np.nan)
        sq[:, :k] = src.astype(np.float64) ** 2
        score = np.nanmean(sq.reshape(-1, nb, 4), axis=2)
        if 0 < want < nb:
            assert np.all(np.where(zero, score, -np.inf).max(axis=1)
                          <= np.where(zero, np.inf, score).min(axis=1)), name
        assert info[name]["pattern"] == "block4"
        w = p.graph.initializers[next(n for n in p.graph.nodes if n.name == name).inputs[1]]
        assert info[name]["sparsity"] == pytest.approx(np.mean(w == 0))
    # depthwise and too-short layers stay dense, with a reason; their weights untouched
    dense = {r["layer"]: r["reason"] for r in p.graph.metadata["sparsity"]["dense"]}
    assert "depthwise" in dense["dw4"]
    assert np.array_equal(p.graph.initializers["w4"], m.graph.initializers["w4"])


def test_block4_on_three_channel_conv_runs_across_kernel_positions(rng):
    """I/g = 3: block j holds k = 4j..4j+3 of (ky, kx, c), e.g. block 0 = (0,0,c0..c2), (0,1,c0)."""
    p = qinfer.prune(_small_model(rng), 0.5, pattern="block4", progress=False)
    w = p.graph.initializers["w3"]            # [12, 3, 3, 3]
    for o in range(w.shape[0]):
        b0 = [w[o, 0, 0, 0], w[o, 1, 0, 0], w[o, 2, 0, 0], w[o, 0, 0, 1]]
        assert all(v == 0 for v in b0) or all(v != 0 for v in b0)


def test_unstructured_and_2_4_exact(rng):
    m = _small_model(rng)
    p = qinfer.prune(m, 0.7, pattern="unstructured", progress=False)
    for name in PRUNED:
        rows, k = _rows(p, name)
        assert np.all((rows == 0).sum(axis=1) == min(int(np.floor(0.7 * k + 0.5)), k - 1))
    p = qinfer.prune(m, pattern="2:4", progress=False)
    assert p.graph.metadata["sparsity"]["target"] == 0.5
    for name in PRUNED:
        rows, k = _rows(p, name)
        full = (k // 4) * 4
        groups = (rows[:, :full] == 0).reshape(rows.shape[0], -1, 4).sum(axis=2)
        assert np.all(groups == 2), name
        tail = (rows[:, full:] == 0).sum(axis=1)
        assert np.all(tail == {0: 0, 1: 0, 2: 0, 3: 1}[k % 4]), name
        # the 2 kept are the larger ones of their group
        src, _ = _rows(m, name)
        a = np.abs(src[:, :full]).reshape(rows.shape[0], -1, 4)
        z = (rows[:, :full] == 0).reshape(rows.shape[0], -1, 4)
        assert np.all(np.where(z, a, -np.inf).max(axis=2) <= np.where(z, np.inf, a).min(axis=2))


def test_global_scope_normalizes_layer_scales(rng):
    m = _small_model(rng, scale_fc=100.0)      # fc 100x larger than the rest
    lay = qinfer.prune(m, 0.6, pattern="unstructured", scope="layer", progress=False)
    glo = qinfer.prune(m, 0.6, pattern="unstructured", scope="global", progress=False)
    sl = {k: v["sparsity"] for k, v in qprune.pruned_layers(lay.graph).items()}
    sg = {k: v["sparsity"] for k, v in qprune.pruned_layers(glo.graph).items()}
    print("layer", sl, "\nglobal", sg)
    info = glo.graph.metadata["sparsity"]
    assert info["scope"] == "global"
    assert info["sparsity"] == pytest.approx(0.6, abs=0.02)
    # a scale factor alone does not make fc keep everything (as raw magnitudes would)
    assert 0.4 < sg["fc"] < 0.8
    # but the layers do get different sparsities (gaussian weights, different shapes, rounding)
    assert len({round(v, 3) for v in sg.values()}) > 1
    # a layer whose weights have a heavy tail keeps fewer of its small weights than a flat one
    g = m.graph.copy()
    g.initializers = dict(g.initializers)
    g.initializers["wg"] = (rng.standard_t(1.5, size=(24, 192))).astype(np.float32)
    g.initializers["w1"] = rng.uniform(-1, 1, size=(16, 8, 3, 3)).astype(np.float32)
    sg2 = {k: v["sparsity"] for k, v in qprune.pruned_layers(
        qinfer.prune(qinfer.Model(g), 0.6, pattern="unstructured", scope="global",
                     progress=False).graph).items()}
    assert sg2["fc"] > 0.6 > sg2["conv1"]


def test_exclude_and_input_untouched(rng):
    m = _small_model(rng)
    before = {k: v.copy() for k, v in m.graph.initializers.items()}
    meta = dict(m.graph.metadata)
    p = qinfer.prune(m, 0.8, exclude=["fc", "conv1"], progress=False)
    for k, v in m.graph.initializers.items():
        assert np.array_equal(v, before[k]), k
    assert m.graph.metadata == meta and "sparsity" not in m.graph.metadata
    assert np.array_equal(p.graph.initializers["wg"], before["wg"])
    assert np.array_equal(p.graph.initializers["w1"], before["w1"])
    assert np.mean(p.graph.initializers["w2"] == 0) > 0.7
    dense = {r["layer"]: r["reason"] for r in p.graph.metadata["sparsity"]["dense"]}
    assert dense["fc"] == dense["conv1"] == "excluded by the user"
    assert p is not m and p.graph is not m.graph


def test_errors(rng):
    m = _small_model(rng)
    for bad in (1.0, -0.1, 1.5, float("nan"), "0.5", True):
        with pytest.raises(qinfer.QinferError, match="sparsity"):
            qinfer.prune(m, bad, progress=False)
    with pytest.raises(qinfer.QinferError, match="pattern"):
        qinfer.prune(m, 0.5, pattern="block8", progress=False)
    with pytest.raises(qinfer.QinferError, match="2:4"):
        qinfer.prune(m, 0.8, pattern="2:4", progress=False)
    with pytest.raises(qinfer.QinferError, match="scope"):
        qinfer.prune(m, 0.5, scope="model", progress=False)
    with pytest.raises(qinfer.QinferError, match="nope"):
        qinfer.prune(m, 0.5, exclude=["nope"], progress=False)
    with pytest.raises(qinfer.CalibrationError):
        qinfer.prune(m, 0.5, calibration=[], progress=False)
    with pytest.raises(qinfer.CalibrationError, match="input"):
        qinfer.prune(m, 0.5, calibration=[{"wrong": np.zeros((1, 8, 8, 8), np.float32)}],
                     progress=False)


# ----------------------------------------------------------------------------- digits
def _layer_ints(q, name):
    """The integer weights of quantized layer ``name`` in its ONNX layout (int8 or int4 codes)."""
    n = next(n for n in q.graph.nodes if n.name == name)
    packed = q.graph.initializers[n.inputs[1]]
    if n.op in ("QConv", "QGemm"):
        w = r8.unpack_qc8w(packed)["w"]
        if "k_order_hwc" in n.attrs:    # a Gemm after a uint8 Flatten: K rows in (h, w, c) order
            ch, hh, ww = n.attrs["k_order_hwc"]
            w = w.reshape(hh, ww, ch, -1).transpose(2, 0, 1, 3).reshape(w.shape)
        return w
    if n.op in ("Q4Conv", "Q4Gemm"):
        return r4.unpack_qb4w(packed)["q"]
    raise AssertionError(f"test_prune: teach _layer_ints to read {n.op} weights")


def _onnx_layout(p, name):
    n = next(n for n in p.graph.nodes if n.name == name)
    w = p.graph.initializers[n.inputs[1]]
    return w.T if n.op == "Gemm" and n.attrs.get("transB", 0) else w   # GEMM packers take [K, N]


@pytest.mark.parametrize("weights,rounding", [("int8", "nearest"), ("int4", "nearest"), ("int4", "gptq")])
def test_quantize_keeps_the_zeros_exactly(digits_cnn, weights, rounding):
    m = qinfer.convert(digits_cnn.path)
    p = qinfer.prune(m, 0.7, pattern="block4", progress=False)
    q = qinfer.quantize(p, _train_calib(32), weights=weights, rounding=rounding, group_size=32,
                        max_error=1.0, progress=False)
    assert "sparsity" in q.graph.metadata          # quantize carries the record
    checked = 0
    for name in qprune.pruned_layers(p.graph):
        w = _onnx_layout(p, name)
        ints = _layer_ints(q, name)
        assert ints.shape == w.shape
        assert np.all(ints[w == 0] == 0), name      # every pruned weight is still 0
        checked += 1
    assert checked == 2


def test_digits_cnn_70_block4_int8_sparsegpt_loses_at_most_one_point(digits_cnn):
    """Issue 7, point 3: 70% block4 then int8 against float, with and without SparseGPT."""
    m = qinfer.convert(digits_cnn.path)
    calib = _train_calib(128)
    x, y = digits_cnn.x_test, digits_cnn.y_test
    f_acc = _accuracy(m, x, y)
    acc = {}
    for name, cal in (("magnitude", None), ("sparsegpt", calib)):
        p = qinfer.prune(m, 0.7, pattern="block4", calibration=cal, progress=False)
        q = qinfer.quantize(p, calib, progress=False)
        for r in qprune.pruned_layers(p.graph).values():
            assert r["sparsity"] >= 0.69
        acc[name] = (_accuracy(p, x, y), _accuracy(q, x, y))
    loss = {k: 100 * (f_acc - v[1]) for k, v in acc.items()}
    print(f"\ndigits cnn, 70% block4: float {f_acc:.4f}; "
          + "; ".join(f"{k}: pruned float {v[0]:.4f}, int8 {v[1]:.4f} (loses {loss[k]:.2f} pt)"
                      for k, v in acc.items()))
    assert loss["sparsegpt"] <= 1.0
    assert loss["sparsegpt"] <= loss["magnitude"]


def test_sparsegpt_beats_magnitude_on_one_layer(digits_cnn):
    """The fc layer's output error on its calibration inputs, both ways, every pattern."""
    m = qinfer.convert(digits_cnn.path)
    g = m.graph
    fc = next(n for n in g.nodes if n.op == "Gemm")
    feeds = _train_calib(64)
    x = np.concatenate([run_graph(g, {"input": feeds[i:i + 16]}, outputs=[fc.inputs[0]])[fc.inputs[0]]
                        for i in range(0, 64, 16)]).astype(np.float64)
    W = g.initializers[fc.inputs[1]].astype(np.float64)        # [N, K]
    ref = x @ W.T
    for pattern in ("unstructured", "block4", "2:4"):
        s = 0.5 if pattern == "2:4" else 0.7
        mag = np.where(qprune.magnitude_mask(W, pattern, s), 0.0, W)
        sgpt, mask = qprune.sparsegpt(W, x.T @ x, pattern, s)
        assert np.array_equal(sgpt == 0, mask | (W == 0))
        assert (sgpt == 0).sum() == (mag == 0).sum()            # same number of zeros
        e_mag = np.linalg.norm(ref - x @ mag.T) / np.linalg.norm(ref)
        e_gpt = np.linalg.norm(ref - x @ sgpt.T) / np.linalg.norm(ref)
        print(f"{pattern}: output error magnitude {e_mag:.4f}, sparsegpt {e_gpt:.4f}")
        assert e_gpt < e_mag
        assert qprune.relative_error(W, sgpt, x.T @ x) == pytest.approx(e_gpt, rel=1e-6)


def test_calibrated_prune_records_errors_and_round_trips(digits_cnn, tmp_path):
    m = qinfer.convert(digits_cnn.path)
    p = qinfer.prune(m, 0.6, pattern="block4", calibration=_train_calib(16), progress=False)
    info = p.graph.metadata["sparsity"]
    assert info["method"] == "sparsegpt" and info["calibration_samples"] == 16
    for r in info["layers"]:
        assert 0 <= r["output_error"] < r["output_error_magnitude"]
    path = tmp_path / "p.qinf"
    p.save(path)
    back = qinfer.load(path)
    assert back.graph.metadata["sparsity"] == info
    for k, v in p.graph.initializers.items():
        assert np.array_equal(np.asarray(back.graph.initializers[k]), v)
    text = back.summary()
    assert text == p.summary()
    assert "pruned: /fc/Gemm (Gemm)" in text and "output error" in text and "block4" in text
    assert "dense: /body/body.0/Conv" in text
    # a pruned model runs, and loads from a .qinf path into prune and quantize
    qinfer.InferenceSession(back).run(None, {"input": digits_cnn.x_test[:3]})
    again = qinfer.prune(str(path), 0.8, pattern="unstructured", progress=False)
    assert again.graph.metadata["sparsity"]["pattern"] == "unstructured"


def test_prune_refuses_a_quantized_model(digits_cnn):
    q = qinfer.quantize(qinfer.convert(digits_cnn.path), _train_calib(16), progress=False)
    with pytest.raises(qinfer.QinferError, match="float model"):
        qinfer.prune(q, 0.5)


# ----------------------------------------------------------------------------- CLI
def _cli(*args):
    return subprocess.run([sys.executable, "-m", "qinfer.cli", *args], capture_output=True, text=True)


def test_cli_prune_and_quantize(digits_cnn, tmp_path):
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=_train_calib(16))
    out = tmp_path / "p.qinf"
    r = _cli("prune", digits_cnn.path, "-o", str(out), "--sparsity", "0.7", "--pattern", "block4",
             "--scope", "global", "--exclude", "/fc/Gemm", "--calib", str(calib))
    assert r.returncode == 0, r.stderr
    assert "pruned 1 layers" in r.stdout and "excluded" in r.stdout
    p = qinfer.load(out)
    info = p.graph.metadata["sparsity"]
    assert (info["scope"], info["method"], info["target"]) == ("global", "sparsegpt", 0.7)
    r = _cli("inspect", str(out))
    assert r.returncode == 0 and "sparsity:" in r.stdout and "pruned: /body/body.3/Conv" in r.stdout
    q_out = tmp_path / "q.qinf"
    r = _cli("quantize", digits_cnn.path, "-o", str(q_out), "--calib", str(calib),
             "--sparsity", "0.8", "--pattern", "block4")
    assert r.returncode == 0, r.stderr
    q = qinfer.load(q_out)
    assert q.graph.metadata["sparsity"]["target"] == 0.8
    assert q.graph.metadata["sparsity"]["method"] == "sparsegpt"    # --calib feeds the pruning too
    for bad, msg in ((["--sparsity", "1.2"], "sparsity"), (["--exclude", "nope"], "nope"),
                     (["--pattern", "2:4", "--sparsity", "0.7"], "2:4")):
        r = _cli("prune", digits_cnn.path, "-o", str(tmp_path / "x.qinf"), *bad)
        assert r.returncode == 1
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("qinfer prune: error:") and msg in lines[0]
        assert "Traceback" not in r.stderr
    r = _cli("prune", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "x.qinf"))
    assert r.returncode == 1 and "missing.onnx" in r.stderr
