"""ConvTranspose on the int8 kernels: QConvTranspose (a QGemm over the input pixels whose rows are
written as KH x KW output blocks) against the plain transposed convolution of the same integers,
on every ISA and thread count; its folding (bias Add, BatchNorm) and its place in quantized models."""
import numpy as np
import pytest

import qinfer
from qinfer.ir.graph import Node
from qinfer.reference import qops, quantized as qref
from qinfer.reference.conv import conv_transpose
from qinfer.runtime import cpu, qops as fast

CASES = [  # (cin, cout, kernel, h, w)
    (1, 1, (1, 1), 1, 1), (3, 17, (2, 2), 5, 7), (17, 3, (2, 2), 3, 1), (65, 2, (3, 2), 2, 3),
    (8, 33, (4, 4), 1, 2), (32, 24, (2, 2), 9, 9),
]


def _layer(rng, cin, cout, kernel, zp_x):
    kh, kw = kernel
    w = rng.integers(-128, 128, (cin, cout, kh, kw)).astype(np.int8)   # ONNX [Cin, Cout, KH, KW]
    w.reshape(-1)[:2] = (-128, 127)[:w.size]
    bias = rng.integers(-5000, 5000, cout).astype(np.int32)
    wg = np.ascontiguousarray(w.transpose(0, 2, 3, 1).reshape(cin, -1))   # columns (ky, kx, c)
    packed = qref.pack_gemm_qc8w(wg, np.tile(bias, kh * kw), zp_x)
    scale = np.tile((rng.random(cout) * 1e-3 + 1e-4).astype(np.float32), kh * kw)
    return w, bias, packed, scale


def _plain(x, w, bias, zp_x, scale, kernel, attrs):
    """ConvTranspose of the zero-point-corrected integers (exact in float64), then the epilogue."""
    kh, kw = kernel
    xc = (x.astype(np.int64) - zp_x).astype(np.float64).transpose(0, 3, 1, 2)
    acc = conv_transpose([xc, w.astype(np.float64)], {"strides": [kh, kw]}, 1)[0]
    acc = np.rint(acc).astype(np.int64) + bias.reshape(1, -1, 1, 1)
    acc = acc.transpose(0, 2, 3, 1).astype(np.int32)                    # NHWC
    y = qref.epilogue(acc, scale[:w.shape[1]], **qops.epilogue_kwargs(attrs))
    return y.transpose(0, 3, 1, 2) if attrs.get("out_layout") == "nchw" else y


@pytest.mark.parametrize("isa", cpu.supported_isas())
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("out", ["uint8", "float32"])
@pytest.mark.parametrize("nt", [1, 2])
def test_qconvtranspose_matches_plain_transposed_conv(isa, case, out, nt, rng):
    cin, cout, kernel, h, w_ = case
    zp_x = int(rng.integers(0, 256))
    w, bias, packed, scale = _layer(rng, cin, cout, kernel, zp_x)
    x = rng.integers(0, 256, (2, h, w_, cin)).astype(np.uint8)
    x.reshape(-1)[:2] = (0, 255)
    attrs = {"kernel_shape": list(kernel), "activation": qref.ACT_RELU if out == "uint8" else
             qref.ACT_SIGMOID, "out_dtype": out, "y_inv_scale": 40.0, "zp_y": 3}
    if out == "float32":
        attrs["out_layout"] = "nchw"
    want = _plain(x, w, bias, zp_x, scale, kernel, attrs)
    ref = qops.qconvtranspose([x, packed, scale], attrs, 1)[0]
    np.testing.assert_array_equal(ref, want)
    node = Node("QConvTranspose", ("x", "p", "s"), ("y",), attrs, "up", "qinfer")
    with cpu.isa_cap(isa):
        fn = fast.make_qop(node, {"p": packed, "s": scale}, nt)
        got = fn([x, packed, scale], attrs, 1)[0]
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.dtype(out) and got.flags.c_contiguous
    if out == "uint8":
        assert got.shape == (2, h * kernel[0], w_ * kernel[1], cout)
        if got.size > 100:
            assert got.max() == 255    # the rescale saturates somewhere


def test_qconvtranspose_wrong_input_is_a_clear_error(rng):
    _, _, packed, scale = _layer(rng, 4, 3, (2, 2), 10)
    attrs = {"kernel_shape": [2, 2]}
    with pytest.raises(qinfer.QinferError, match="QConvTranspose"):
        qops.qconvtranspose([np.zeros((3, 4), np.uint8), packed, scale], attrs, 1)


def _export(tmp_path, module, x, name):
    torch = pytest.importorskip("torch")
    path = str(tmp_path / f"{name}.onnx")
    with torch.no_grad():
        torch.onnx.export(module.eval(), (torch.from_numpy(x),), path, input_names=["x"],
                          output_names=["y"], dynamo=False,
                          dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n", 2: "h", 3: "w"}})
        want = module(torch.from_numpy(x)).numpy()
    return path, want


def _decoder():
    import torch
    nn = torch.nn

    class Decoder(nn.Module):   # a DB / U-Net style head: stride-2 conv, then 2x2 stride-2 up-sampling
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 16, 3, padding=1)
            self.c2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
            self.up = nn.ConvTranspose2d(32, 16, 2, stride=2, bias=False)
            self.bias = nn.Parameter(torch.randn(1, 16, 1, 1) * 0.1)   # a separate bias Add (Paddle)
            self.bn = nn.BatchNorm2d(16)
            self.up2 = nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1)   # overlapping windows
            self.up3 = nn.ConvTranspose2d(8, 1, 2, stride=2)

        def forward(self, x):
            y = torch.relu(self.c2(torch.relu(self.c1(x))))
            y = torch.relu(self.bn(self.up(y) + self.bias))
            return torch.sigmoid(self.up3(torch.relu(self.up2(y))))

    torch.manual_seed(3)
    m = Decoder()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.3, 0.3)
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.weight.uniform_(0.5, 1.5)
    return m


def test_convtranspose_bias_and_batchnorm_fold(tmp_path, rng):
    x = rng.standard_normal((1, 3, 16, 20)).astype(np.float32)
    path, want = _export(tmp_path, _decoder(), x, "decoder")
    m = qinfer.convert(path)
    ops = [n.op for n in m.graph.nodes]
    assert "BatchNormalization" not in ops and "Add" not in ops, ops   # both in the ConvTranspose
    got = qinfer.InferenceSession(m).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_quantized_decoder_runs_convtranspose_int8(tmp_path, rng):
    calib = [rng.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(8)]
    path, _ = _export(tmp_path, _decoder(), calib[0], "decoder")
    m = qinfer.convert(path)
    q = qinfer.quantize(m, calib, progress=False, max_error=0.02)
    ops = [n.op for n in q.graph.nodes]
    # the two non-overlapping up-samplings on the int8 kernels, the overlapping one float
    assert ops.count("QConvTranspose") == 2 and ops.count("ConvTranspose") == 1, ops
    report = {r["layer"]: r["precision"] for r in q.graph.metadata["precision_report"]}
    assert report["/up/ConvTranspose"] == "int8" and report["/up3/ConvTranspose"] == "int8"
    path_q = str(tmp_path / "decoder.qinf")
    q.save(path_q)
    sq = qinfer.InferenceSession(qinfer.load(path_q), num_threads=2)
    sf = qinfer.InferenceSession(m)
    from qinfer.reference import executor
    for x in calib[:3] + [rng.standard_normal((2, 3, 24, 40)).astype(np.float32)]:
        got = sq.run(None, {"x": x})[0]
        ref = sf.run(None, {"x": x})[0]
        assert got.shape == ref.shape
        cos = float(np.dot(got.ravel(), ref.ravel()) / np.linalg.norm(got) / np.linalg.norm(ref))
        assert cos > 0.99, cos
        assert np.abs(got - ref).max() < 0.05
        # the fast ops are the reference ops, bit for bit
        np.testing.assert_array_equal(got, executor.run_graph(q.graph, {"x": x})["y"])
    assert "QConvTranspose" in q.summary()


FLOAT_CASES = {  # id: (cin, cout, group, kernel, strides, pads, output_padding, dilations, batch, hw)
    "2x2_s2_tiles": (24, 16, 1, (2, 2), (2, 2), (0, 0, 0, 0), (0, 0), (1, 1), 1, (5, 7)),
    "3x1_s3x1_tiles": (5, 3, 1, (3, 1), (3, 1), (0, 0, 0, 0), (0, 0), (1, 1), 2, (4, 3)),
    "grouped_tiles": (8, 6, 2, (2, 2), (2, 2), (0, 0, 0, 0), (0, 0), (1, 1), 1, (3, 3)),
    "1x1_tiles": (7, 9, 1, (1, 1), (1, 1), (0, 0, 0, 0), (0, 0), (1, 1), 1, (17, 1)),
    "output_padding": (4, 4, 1, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), (1, 1), 1, (3, 4)),
    "padded": (4, 4, 1, (2, 2), (2, 2), (1, 0, 0, 1), (0, 0), (1, 1), 1, (3, 4)),
    "overlapping": (4, 5, 1, (4, 4), (2, 2), (1, 1, 1, 1), (0, 0), (1, 1), 1, (3, 4)),
    "dilated": (3, 2, 1, (2, 2), (2, 2), (0, 0, 0, 0), (0, 0), (2, 1), 1, (3, 3)),
}


@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
@pytest.mark.parametrize("case", list(FLOAT_CASES), ids=list(FLOAT_CASES))
@pytest.mark.parametrize("nt", [1, 2])
def test_float_convtranspose_session_matches_reference(case, relu, nt, rng):
    """The float32 ConvTranspose step (GEMM + col2im; kernel == stride without padding: each input
    pixel's output tile written once with the bias and activation) against the reference executor."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from qinfer.reference.executor import run_graph
    cin, cout, group, k, s, pads, opad, dil, batch, (h, w_) = FLOAT_CASES[case]
    w = rng.standard_normal((cin, cout // group, *k)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["t" if relu else "y"], group=group,
                              kernel_shape=list(k), strides=list(s), pads=list(pads),
                              output_padding=list(opad), dilations=list(dil))]
    if relu:
        nodes.append(helper.make_node("Relu", ["t"], ["y"]))
    g = helper.make_graph(nodes, "ct", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                      [batch, cin, h, w_])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m = qinfer.convert(model.SerializeToString())
    x = rng.standard_normal((batch, cin, h, w_)).astype(np.float32)
    got = qinfer.InferenceSession(m, num_threads=nt).run(None, {"x": x})[0]
    want = run_graph(m.graph, {"x": x}, outputs=["y"])["y"]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
