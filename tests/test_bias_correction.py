"""Bias correction of int8 layers: the mean shift that rounding the weights makes is absorbed by
the bias, from the calibration means of each layer's input channels (quant/quantize._pack)."""
import types

import numpy as np
import pytest

import qinfer
from qinfer.quant import gptq
from qinfer.quant import qparams as qp
from qinfer.quant import quantize as Q
from qinfer.quant.calibrate import calibrate
from qinfer.quant.observers import make_observer
from qinfer.reference.executor import run_graph


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_input_means_per_channel_then_last_axis(method, rng):
    """Rank 4: the mean of each channel (axis 1) over batches; other ranks: of the last axis;
    non-finite values left out; a change of rank or of the channel count ends them."""
    x = [rng.standard_normal((2, 5, 3, 4)) + np.arange(5).reshape(1, 5, 1, 1) for _ in range(3)]
    o = make_observer(method)
    for a in x:
        o.update(a.astype(np.float32))
    want = np.concatenate(x).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(o.input_means(), want, rtol=1e-5, atol=1e-6)

    o = make_observer(method)
    rows = rng.standard_normal((7, 6, 9)).astype(np.float32)
    rows[0, 0, 2] = np.nan
    rows[1, 2, 3] = np.inf
    with pytest.warns(RuntimeWarning):
        o.update(rows)
    ok = np.isfinite(rows)
    want = np.where(ok, rows, 0).sum(axis=(0, 1)) / ok.sum(axis=(0, 1))
    np.testing.assert_allclose(o.input_means(), want, rtol=1e-5, atol=1e-6)

    o.update(rng.standard_normal((3, 10)).astype(np.float32))    # another K: no means
    assert o.input_means() is None
    o = make_observer(method)
    o.update(rng.standard_normal((1, 4, 2, 2)).astype(np.float32))
    o.update(rng.standard_normal((1, 4, 2)).astype(np.float32))   # another rank
    assert o.input_means() is None


def _patch_mean(x, w, groups):
    """Mean over rows and outputs of a valid (no padding) stride-1 conv of x by w, per channel."""
    m, cg, kh, kw = w.shape
    per = m // groups
    out = []
    for g in range(groups):
        rows = gptq.patches_nhwc(x[:, g * cg:(g + 1) * cg], kh, kw, (1, 1), (0, 0, 0, 0), (1, 1))
        mat = w[g * per:(g + 1) * per].transpose(0, 2, 3, 1).reshape(per, -1)
        out.append((rows @ mat.T).mean(axis=0))
    return np.concatenate(out)


@pytest.mark.parametrize("kind,shape,groups", [
    ("conv", (6, 5, 1, 1), 1), ("conv", (7, 3, 3, 3), 1), ("conv", (8, 2, 3, 3), 4),
    ("dw", (5, 1, 3, 3), 5), ("dw", (3, 1, 5, 5), 3), ("gemm", (17, 3), 1), ("gemm", (1, 65), 1)])
def test_rounding_shift_is_the_mean_change_of_the_outputs(kind, shape, groups, rng):
    """_rounding_shift equals the mean change of each output channel that the rounded weights
    make on the data whose channel means it is given (a conv without padding, a GEMM's rows)."""
    w = (rng.standard_normal(shape) * rng.uniform(0.1, 10, shape[0] if kind != "gemm" else 1)
         .reshape((-1,) + (1,) * (len(shape) - 1))).astype(np.float32)
    c = types.SimpleNamespace(kind=kind, weight=w,
                              node=types.SimpleNamespace(attrs={"group": groups}))
    axis = 1 if kind == "gemm" else 0
    wq, s_w = qp.quantize_weight_per_channel(w, axis=axis)
    s_w = np.asarray(s_w, np.float32)
    if kind == "gemm":
        x = rng.standard_normal((40, shape[0])) + rng.uniform(-5, 5, shape[0])
        d = wq * s_w.astype(np.float64)[None, :] - w
        want = (x @ d).mean(axis=0)
        mu = x.mean(axis=0)
    else:
        cin = shape[1] * groups
        x = rng.standard_normal((2, cin, 9, 8)) + rng.uniform(-5, 5, cin).reshape(1, cin, 1, 1)
        d = wq * s_w.astype(np.float64).reshape(-1, 1, 1, 1) - w
        want = _patch_mean(x, d, groups)
        mu = x.mean(axis=(0, 2, 3))
    got = Q._rounding_shift(c, wq, s_w, mu)
    assert got.shape == (shape[1] if kind == "gemm" else shape[0],)
    # (the patch mean of a valid conv differs from the channel means at the borders: near only)
    tol = 1e-9 if kind == "gemm" or shape[2:] == (1, 1) else 0.35
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


def _cancelling_model(path, rng, c=6):
    """x [1, c, 12, 12] -> depthwise 3x3 edge filters whose large weights sum to about 0 (as
    re-parameterized convs fold to) -> 1x1 conv -> Relu; no padding."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    k = rng.standard_normal((c, 1, 3, 3)) * 8.0
    k -= k.mean(axis=(1, 2, 3), keepdims=True)              # high-pass: sums to 0
    k += rng.uniform(-0.05, 0.05, (c, 1, 1, 1)) / 9.0        # (nearly)
    pw = rng.standard_normal((c, c, 1, 1)) * 0.5
    inits = [numpy_helper.from_array(k.astype(np.float32), "dw_w"),
             numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "dw_b"),
             numpy_helper.from_array(pw.astype(np.float32), "pw_w"),
             numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "pw_b")]
    nodes = [helper.make_node("Conv", ["x", "dw_w", "dw_b"], ["h"], name="dw", group=c,
                              kernel_shape=[3, 3]),
             helper.make_node("Conv", ["h", "pw_w", "pw_b"], ["z"], name="pw", kernel_shape=[1, 1]),
             helper.make_node("Relu", ["z"], ["y"], name="relu")]
    g = helper.make_graph(nodes, "cancel", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         [1, c, 12, 12])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


def _cancel_feeds(rng, n, c=6):
    # inputs far from 0 (a mean of 3, texture of 0.3): a sum-zero kernel's rounding error times
    # that mean is a constant shift of every output
    return [{"x": (3.0 + 0.3 * rng.standard_normal((1, c, 12, 12))).astype(np.float32)}
            for _ in range(n)]


def test_bias_correction_removes_a_cancelling_kernels_shift(tmp_path, rng):
    """The int8 depthwise layer's per-channel mean error drops >= 5x with the correction and its
    rms error drops; the int8 graph gives the reference executor's bits at 1 and 2 threads
    either way."""
    path = str(tmp_path / "cancel.onnx")
    _cancelling_model(path, rng)
    m = qinfer.convert(path)
    feeds = _cancel_feeds(rng, 8)
    obs = calibrate(m.graph, feeds, progress=False)
    cands = Q.find_candidates(m.graph)
    assert {c.name for c in cands} == {"dw", "pw"}
    ref = [run_graph(m.graph, f, outputs=["h"])["h"] for f in feeds]
    stats = {}
    for bc in (False, True):
        qg, _ = Q.build_quantized(m.graph, cands, obs, {"dw"}, (), bias_correction=bc)
        got = [run_graph(qg, f, outputs=["h"])["h"].astype(np.float64) for f in feeds]
        err = np.concatenate([a - r for a, r in zip(got, ref)])
        stats[bc] = (np.abs(err.mean(axis=(0, 2, 3))).max(), np.sqrt((err ** 2).mean()))
        both, _ = Q.build_quantized(m.graph, cands, obs, {"dw", "pw"}, (), bias_correction=bc)
        for nt in (1, 2):
            s = qinfer.InferenceSession(qinfer.Model(both), num_threads=nt)
            for f in feeds[:2]:
                np.testing.assert_array_equal(s.run(None, f)[0], run_graph(both, f)["y"])
    print(f"depthwise int8, largest channel mean error: {stats[False][0]:.4f} -> "
          f"{stats[True][0]:.4f}, rms {stats[False][1]:.4f} -> {stats[True][1]:.4f}")
    assert stats[True][0] * 5 <= stats[False][0]
    assert stats[True][1] < stats[False][1]


def test_quantize_says_whether_it_corrected_the_biases(tmp_path, rng, monkeypatch):
    """qinfer.quantize applies the correction where the model stays within its budget and says
    so in the model's metadata (and summary); int4 weights take none; switched off
    (BIAS_CORRECTION, for comparisons) the same layers come out with the uncorrected biases."""
    path = str(tmp_path / "cancel.onnx")
    _cancelling_model(path, rng)
    feeds = _cancel_feeds(rng, 8)
    q = qinfer.quantize(path, feeds, progress=False)
    info = q.graph.metadata["quantization"]
    assert info["bias_correction"] == "applied" and info["output_error"] <= 0.01
    assert "bias_correction=applied" in q.summary()
    q4 = qinfer.quantize(path, feeds, weights="int4", group_size=32, progress=False)
    assert "bias_correction" not in q4.graph.metadata["quantization"]
    monkeypatch.setattr(Q, "BIAS_CORRECTION", False)
    off = qinfer.quantize(path, feeds, progress=False)
    assert "bias_correction" not in off.graph.metadata["quantization"]
    assert off.graph.op_counts() == q.graph.op_counts()
    assert off.graph.metadata["quantization"]["output_error"] > info["output_error"]
