"""Resize (nearest) and Concat on uint8 NHWC data: QResize picks exactly the pixels the float Resize
picks, QConcat copies (or requantizes) bytes; in a quantized FPN-style neck the whole path from the
backbone's convs to the head stays uint8."""
import numpy as np
import pytest

import qinfer
from qinfer.ir.graph import Node
from qinfer.reference import qops
from qinfer.reference.shape import resize
from qinfer.runtime import qops as fast

RESIZES = [  # (attrs, scales [N, C, H, W] or None, sizes or None)
    ({"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
     [1, 1, 2, 2], None),
    ({"mode": "nearest"}, [1, 1, 3, 2], None),                        # half_pixel, round_prefer_floor
    ({"mode": "nearest", "coordinate_transformation_mode": "align_corners"}, [1, 1, 1.5, 0.5], None),
    ({"mode": "nearest", "nearest_mode": "ceil"}, [1, 1, 0.5, 4], None),
    ({"mode": "nearest", "coordinate_transformation_mode": "pytorch_half_pixel"}, None, "sizes"),
    ({"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
     [1, 1, 4, 3], None),                                             # whole factors, fy != fx
]


@pytest.mark.parametrize("case", range(len(RESIZES)))
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 5, 7, 3), (1, 8, 8, 17)])
def test_qresize_picks_the_float_resize_pixels(case, shape, rng):
    attrs, scales, sizes = RESIZES[case]
    n, h, w, c = shape
    x = rng.integers(0, 256, shape).astype(np.uint8)
    sc = None if scales is None else np.array(scales, np.float32)
    sz = None if sizes is None else np.array([n, c, 2 * h + 1, max(1, w - 1)], np.int64)
    params = [np.zeros(0, np.float32), sc, sz]
    # the float op on the dequantized values, quantized again: nearest only moves values
    s, zp = 0.05, 9
    xf = qops.dequantize_u8(x, s, zp, to_nchw=True)
    want = qops.quantize_u8(resize([xf] + params, attrs, 1)[0], s, zp, to_nhwc=True)
    got = qops.qresize([x] + params, attrs, 1)[0]
    np.testing.assert_array_equal(got, want)
    names = ("x", "roi", "sc" if sc is not None else "", "sz" if sz is not None else "")
    node = Node("QResize", names, ("y",), attrs, "up", "qinfer")
    fn = fast.make_qop(node, {"roi": params[0], "sc": sc, "sz": sz}, 1)
    for _ in range(2):   # the second call reads the cached source map
        np.testing.assert_array_equal(fn([x] + params, attrs, 1)[0], want)


def test_qresize_whole_factors_without_channels():
    x = np.zeros((2, 3, 2, 0), np.uint8)
    y = qops.qresize([x, None, np.array([1, 1, 2, 3], np.float32)], RESIZES[0][0], 1)[0]
    assert y.shape == (2, 6, 6, 0) and y.dtype == np.uint8


def test_qresize_refuses_what_it_cannot_do(rng):
    x = rng.integers(0, 256, (1, 4, 4, 3)).astype(np.uint8)
    with pytest.raises(qinfer.QinferError, match="batch and channels"):
        qops.qresize([x, None, np.array([1, 2, 2, 2], np.float32)], {"mode": "nearest"}, 1)
    with pytest.raises(qinfer.QinferError, match="nearest"):
        qops.qresize([x, None, np.array([1, 1, 2, 2], np.float32)], {"mode": "linear"}, 1)
    with pytest.raises(qinfer.QinferError, match="uint8 NHWC"):
        qops.qresize([x[0], None, np.array([1, 1, 2, 2], np.float32)], {"mode": "nearest"}, 1)


def test_qconcat_copies_or_requantizes(rng):
    a = rng.integers(0, 256, (2, 3, 4, 5)).astype(np.uint8)
    b = rng.integers(0, 256, (2, 3, 4, 2)).astype(np.uint8)
    b.reshape(-1)[:2] = (0, 255)
    same = {"axis": 3, "scales": [0.1, 0.1], "zero_points": [7, 7], "scale": 0.1, "zero_point": 7}
    np.testing.assert_array_equal(qops.qconcat([a, b], same, 1)[0], np.concatenate([a, b], 3))
    other = dict(same, scales=[0.1, 0.37], zero_points=[7, 100])
    want_b = qops.quantize_u8((b.astype(np.float32) - 100) * np.float32(0.37), 0.1, 7)
    got = qops.qconcat([a, b], other, 1)[0]
    np.testing.assert_array_equal(got, np.concatenate([a, want_b], 3))
    assert got[..., 5:].min() == 0 and got[..., 5:].max() == 255        # requantization saturates
    with pytest.raises(qinfer.QinferError, match="QConcat"):
        qops.qconcat([a, b[:1]], same, 1)
    with pytest.raises(qinfer.QinferError, match="QConcat"):
        qops.qconcat([a], same, 1)


def _fpn():
    import torch
    nn, F = torch.nn, torch.nn.functional

    class FPN(nn.Module):   # two levels, a top-down nearest up-sampling, a channel concat
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 16, 3, stride=2, padding=1)
            self.c2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
            self.l1, self.l2 = nn.Conv2d(16, 8, 1), nn.Conv2d(32, 8, 1)
            self.p1, self.p2 = nn.Conv2d(8, 4, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)
            self.head = nn.Conv2d(8, 2, 3, padding=1)

        def forward(self, x):
            a = F.relu(self.c1(x))
            b = F.relu(self.c2(a))
            lb = self.l2(b)
            la = self.l1(a) + F.interpolate(lb, scale_factor=2, mode="nearest")
            pb = F.interpolate(self.p2(lb), scale_factor=2, mode="nearest")
            return self.head(torch.cat([pb, self.p1(la)], 1))

    torch.manual_seed(5)
    return FPN().eval()


def test_fpn_neck_stays_uint8(tmp_path, rng):
    torch = pytest.importorskip("torch")
    path = str(tmp_path / "fpn.onnx")
    calib = [rng.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(8)]
    with torch.no_grad():
        torch.onnx.export(_fpn(), (torch.from_numpy(calib[0]),), path, input_names=["x"],
                          output_names=["y"], dynamo=False,
                          dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})
    m = qinfer.convert(path)
    q = qinfer.quantize(m, calib, progress=False, max_error=0.01)
    ops = [n.op for n in q.graph.nodes]
    assert ops.count("QResize") == 2 and ops.count("QConcat") == 1 and "QAdd" in ops, ops
    assert ops.count("QuantizeU8") == 1 and "DequantizeU8" not in ops, ops   # uint8 end to end
    concat = next(n for n in q.graph.nodes if n.op == "QConcat")
    # the producers write the concat's scale and zero point: the concat copies bytes
    assert set(concat.attrs["scales"]) == {concat.attrs["scale"]}
    assert set(concat.attrs["zero_points"]) == {concat.attrs["zero_point"]}
    p = str(tmp_path / "fpn.qinf")
    q.save(p)
    sq, sf = qinfer.InferenceSession(qinfer.load(p), num_threads=2), qinfer.InferenceSession(m)
    from qinfer.reference import executor
    for x in calib[:2] + [rng.standard_normal((2, 3, 40, 24)).astype(np.float32)]:
        got, ref = sq.run(None, {"x": x})[0], sf.run(None, {"x": x})[0]
        cos = float(np.dot(got.ravel(), ref.ravel()) / np.linalg.norm(got) / np.linalg.norm(ref))
        assert cos > 0.995, cos
        np.testing.assert_array_equal(got, executor.run_graph(q.graph, {"x": x})["y"])


FLOAT_RESIZES = {  # id: (attrs, scales or None, sizes or None, whole-number replication)
    "x2_asymmetric": ({"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                       "nearest_mode": "floor"}, [1, 1, 2, 2], None, True),
    "x4x3": ({"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
              "nearest_mode": "floor"}, [1, 1, 4, 3], None, True),
    "x2_half_pixel": ({"mode": "nearest"}, [1, 1, 2, 2], None, True),
    "sizes_x2": ({"mode": "nearest", "coordinate_transformation_mode": "asymmetric"}, None,
                 "double", True),
    "x1.5": ({"mode": "nearest"}, [1, 1, 1.5, 1.5], None, False),
    "down": ({"mode": "nearest"}, [1, 1, 0.5, 0.5], None, False),
    "linear": ({"mode": "linear"}, [1, 1, 2, 2], None, False),
    "channels": ({"mode": "nearest"}, [1, 2, 2, 2], None, False),
}


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
@pytest.mark.parametrize("case", list(FLOAT_RESIZES), ids=list(FLOAT_RESIZES))
def test_float_nearest_resize_fast_path(case, dtype, rng):
    """The session's Resize step: whole-number nearest up-sampling of NCHW by replication, bit for
    bit the reference op; every other pattern declines to it."""
    from qinfer.runtime import float_ops
    attrs, scales, sizes, whole = FLOAT_RESIZES[case]
    for shape in ((1, 3, 5, 7), (2, 1, 1, 4)):
        x = (rng.standard_normal(shape) * 100).astype(dtype)
        sc = None if scales is None else np.array(scales, np.float32)
        sz = None if sizes is None else np.array([*shape[:2], 2 * shape[2], 2 * shape[3]], np.int64)
        params = [np.zeros(0, np.float32), sc, sz]
        want = resize([x] + params, attrs, 1)[0]
        names = ("x", "roi", "sc" if sc is not None else "", "sz" if sz is not None else "")
        node = Node("Resize", names, ("y",), attrs, "up")
        fn = float_ops.make_resize(node, {"roi": params[0], "sc": sc, "sz": sz})
        got = None if fn is None else fn([x] + params, attrs, 1)
        if whole:
            assert got is not None
            assert got[0].dtype == want.dtype
            np.testing.assert_array_equal(got[0], want)
        else:
            assert got is None
    # a rank other than 4, and computed scales, decline too
    node = Node("Resize", ("x", "roi", "sc"), ("y",), FLOAT_RESIZES["x2_asymmetric"][0], "up")
    assert float_ops.make_resize(node, {"roi": np.zeros(0, np.float32)}) is None
    fn = float_ops.make_resize(node, {"roi": np.zeros(0, np.float32),
                                      "sc": np.array([1, 1, 2], np.float32)})
    assert fn([np.zeros((1, 2, 3), np.float32)], {}, 1) is None
