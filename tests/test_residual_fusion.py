"""A quantized layer runs the residual QAdd that reads its output in its own step: each block of
the layer's uint8 output is added in place, on the layer's threads, while it is still in cache
(QLayerCall's ``residual``, runtime/planner.py's ``_residual_add``).

The bytes must be those of the two separate ops: the layer, then ``qadd_u8`` (the same streaming
function on the same values), for every layer kind that fuses (dense, sparse and int4 GEMMs and
convs), every ISA tier and 1 / 2 threads; and whole quantized residual networks must equal the
reference executor. Tolerance: none."""
import numpy as np
import pytest

import qinfer
from qinfer._ext import _kernels as K
from qinfer.ir.graph import Graph, Node, Value
from qinfer.reference import executor
from qinfer.reference import int4 as R4
from qinfer.reference import quantized as Q
from qinfer.reference import sparse as S
from test_kernels_int8 import _qparams, isa, nt  # noqa: F401  (the ISA and 1/2-thread fixtures)
from test_kernels_sparse import prune_blocks

KINDS = ("gemm", "conv", "spgemm", "spconv", "q4gemm", "q4conv")
#: (rows or N x H x W, cin, cout, kernel, stride, groups): tile edges of the kernels (rows 1, 7,
#: 17, 65; channels 7, 33, 65), a stride-2 3x3 and a grouped conv
SHAPES = [((1, 1, 1), 7, 33, 1, 1, 1), ((1, 7, 9), 16, 65, 3, 1, 1), ((2, 5, 13), 33, 17, 3, 2, 1),
          ((1, 9, 8), 64, 64, 3, 1, 1), ((1, 6, 7), 12, 18, 3, 1, 3)]
ADD = (0.031, 117, 0.047, 9, 13.0, 101, False)   # a_scale, a_zp, b_scale, b_zp, 1 / y_scale, zp_y, relu


def _layer(kind, shape, rng, density=0.4):
    """(QLayerCall kwargs, packed weights, scale, x) for ``kind`` on ``shape``."""
    (n, h, w), cin, cout, k, stride, groups = shape
    sparse, int4 = kind.startswith("sp"), kind.startswith("q4")
    gemm = kind.endswith("gemm")
    if gemm:
        groups, k = 1, 1
    kk = cin // groups * k * k
    bias, zp, scale = _qparams(rng, cout, kk)
    w_kn = rng.integers(-127, 128, (kk, cout)).astype(np.int8)
    if sparse:
        w_kn = prune_blocks(w_kn, density, rng)
    if int4:   # int4 codes in [-8, 7], one scale per block of 16 along K; the layer's scale 1
        s4 = (rng.uniform(0.5, 2.0, (cout, (kk + 15) // 16)) / (40.0 * np.sqrt(kk))).astype(np.float32)
        b4 = bias.astype(np.float32) * 0.01
        if gemm:
            packed = R4.pack_gemm_qb4w(rng.integers(-8, 8, (kk, cout)), s4, 16, b4, zp)
        else:
            packed = R4.pack_conv_qb4w(rng.integers(-8, 8, (cout, cin // groups, k, k)), s4, 16, b4,
                                       zp, groups)
        scale = np.ones(cout, np.float32)
    elif gemm:
        packed = (S.pack_gemm_sb4w if sparse else Q.pack_gemm_qc8w)(w_kn, bias, zp)
    else:
        wt = w_kn.T.reshape(cout, k, k, cin // groups).transpose(0, 3, 1, 2)
        packed = (S.pack_conv_sb4w(wt, bias, zp, groups) if sparse
                  else Q.pack_conv_qc8w(wt, bias, zp, groups))
    kw = dict(y_inv_scale=40.0, zp_y=100, activation=Q.ACT_RELU)
    if gemm:
        x = rng.integers(0, 256, (n * h * w, cin)).astype(np.uint8)
    else:
        kw.update(strides=(stride, stride), pads=(k // 2,) * 4, dilations=(1, 1))
        x = rng.integers(0, 256, (n, h, w, cin)).astype(np.uint8)
    return kw, packed, scale, x


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[0])) + f"_{s[1]}_{s[2]}")
@pytest.mark.parametrize("relu", [False, True])
def test_fused_add_equals_layer_then_qadd(isa, nt, kind, shape, relu, rng):
    kw, packed, scale, x = _layer(kind, shape, rng)
    plain = K.QLayerCall(kind, packed, scale, num_threads=nt, **kw)
    y = plain([x])[0]
    r = rng.integers(0, 256, y.shape).astype(np.uint8)
    add = ADD[:6] + (relu,)
    want = K.qadd_u8(y, r, *add[:6], relu=relu)
    call = K.QLayerCall(kind, packed, scale, num_threads=nt, residual=(3,) + add, **kw)
    np.testing.assert_array_equal(call([x, packed, scale, r])[0], want)
    # the input after the layer's own three, wherever the planner puts it
    call5 = K.QLayerCall(kind, packed, scale, num_threads=nt, residual=(4,) + add, **kw)
    np.testing.assert_array_equal(call5([x, packed, scale, None, r])[0], want)


@pytest.mark.parametrize("kind", ("conv", "spconv", "q4conv"))
@pytest.mark.parametrize("fill", [(0, 255), (255, 0), (255, 255)], ids=["y0_r255", "y255_r0", "both255"])
def test_fused_add_saturates_like_qadd(isa, nt, kind, fill, rng):
    """Layer outputs and residuals at 0 / 255 with scales that push the sum past both ends."""
    kw, packed, scale, x = _layer(kind, SHAPES[3], rng)
    kw["zp_y"] = 0 if fill[0] == 0 else 255
    kw["activation"] = 0
    y = K.QLayerCall(kind, packed, scale, num_threads=nt, **kw)([x])[0]
    r = np.full(y.shape, fill[1], np.uint8)
    for add in ((0.5, 0, 0.5, 0, 2.0, 0, False), (0.5, 255, 0.25, 0, 4.0, 128, True),
                (1.0, 128, 1.0, 128, 1.0, 128, False)):
        want = K.qadd_u8(y, r, *add[:6], relu=add[6])
        got = K.QLayerCall(kind, packed, scale, num_threads=nt, residual=(3,) + add, **kw)(
            [x, packed, scale, r])[0]
        np.testing.assert_array_equal(got, want)


def test_fused_add_declines_and_refuses(rng):
    kw, packed, scale, x = _layer("conv", SHAPES[1], rng)
    call = K.QLayerCall("conv", packed, scale, residual=(3,) + ADD, **kw)
    y = K.QLayerCall("conv", packed, scale, **kw)([x])[0]
    # another shape (a broadcast), dtype, layout, or no operand: None, the planner's reference way
    for r in (y[:, :1].copy(), y.astype(np.float32), np.asfortranarray(y), y[..., :-1], None):
        assert call([x, packed, scale, r]) is None
    assert call([x, packed, scale]) is None
    # what the kernels cannot fuse is refused when the call is built
    dwp = Q.pack_dwconv_qc8w(rng.integers(-127, 128, (16, 1, 3, 3)).astype(np.int8), None, 0)
    with pytest.raises(ValueError, match="residual"):
        K.QLayerCall("dw", dwp, np.ones(16, np.float32), residual=(3,) + ADD, **kw)
    with pytest.raises(ValueError, match="residual"):
        K.QLayerCall("conv", packed, scale, residual=(3,) + ADD, out_layout="nchw", **kw)
    with pytest.raises(ValueError, match="residual"):
        K.QLayerCall("conv", packed, scale, residual=(3,) + ADD, **dict(kw, out_dtype=np.float32))
    for bad in ((0,) + ADD, (3,) + ADD[:5], (3, -1.0) + ADD[1:], (3, 0.1, 256) + ADD[2:],
                (3,) + ADD[:4] + (float("inf"),) + ADD[5:]):
        with pytest.raises(ValueError, match="residual"):
            K.QLayerCall("conv", packed, scale, residual=bad, **kw)


# ----------------------------------------------------------------------------- whole networks

def _res_net(rng):
    """A ResNet-style network: a stem, a basic block (identity shortcut, the conv as the add's
    second operand), a downsampling block (both operands convs), a depthwise block (its add stays
    a step: the depthwise kernel has no fused add) and a conv whose output also feeds the head
    (two readers: no fusion)."""
    f = np.float32

    def w(o, i, k):
        return (rng.standard_normal((o, i, k, k)) * (1.5 / np.sqrt(i * k * k))).astype(f)

    init = {"w0": w(16, 3, 3), "w1": w(16, 16, 3), "w2": w(16, 16, 3), "w3": w(32, 16, 3),
            "w4": w(32, 32, 3), "wd": w(32, 16, 1), "wdw": w(32, 1, 3), "wp": w(32, 32, 1),
            "b0": (rng.standard_normal(16) * 0.1).astype(f), "wf": (rng.standard_normal((10, 64)) * 0.3).astype(f),
            "bf": np.zeros(10, f)}
    c3 = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "group": 1, "strides": [1, 1]}
    nodes = [Node("Conv", ("x", "w0", "b0"), ("c0",), c3, "stem"), Node("Relu", ("c0",), ("r0",), {}, "relu0"),
             Node("Conv", ("r0", "w1"), ("c1",), c3, "b1_conv1"), Node("Relu", ("c1",), ("r1",), {}, "b1_relu1"),
             Node("Conv", ("r1", "w2"), ("c2",), c3, "b1_conv2"),
             Node("Add", ("r0", "c2"), ("s1",), {}, "b1_add"), Node("Relu", ("s1",), ("o1",), {}, "b1_relu"),
             Node("Conv", ("o1", "w3"), ("c3",), dict(c3, strides=[2, 2]), "b2_conv1"),
             Node("Relu", ("c3",), ("r3",), {}, "b2_relu1"),
             Node("Conv", ("r3", "w4"), ("c4",), c3, "b2_conv2"),
             Node("Conv", ("o1", "wd"), ("cd",), {"kernel_shape": [1, 1], "group": 1, "strides": [2, 2]},
                  "b2_down"),
             Node("Add", ("c4", "cd"), ("s2",), {}, "b2_add"), Node("Relu", ("s2",), ("o2",), {}, "b2_relu"),
             Node("Conv", ("o2", "wdw"), ("cw",), dict(c3, group=32), "b3_dw"),
             Node("Add", ("cw", "o2"), ("s3",), {}, "b3_add"),
             Node("Conv", ("s3", "wp"), ("cp",), {"kernel_shape": [1, 1], "group": 1}, "b4_pw"),
             Node("Add", ("cp", "s3"), ("s4",), {}, "b4_add"),
             Node("GlobalAveragePool", ("s4",), ("p4",), {}, "gap4"),
             Node("GlobalAveragePool", ("cp",), ("pp",), {}, "gapp"),
             Node("Concat", ("p4", "pp"), ("p",), {"axis": 1}, "cat"),
             Node("Flatten", ("p",), ("fl",), {"axis": 1}, "flatten"),
             Node("Gemm", ("fl", "wf", "bf"), ("y",), {"transB": 1}, "fc")]
    g = Graph("res_net", nodes, [Value("x", "float32", ("batch", 3, "h", "w"))],
              [Value("y", "float32", ("batch", 10))], init)
    # the value shapes an importer's shape inference would record (the quantizer reads ranks)
    names = [o for n in nodes for o in n.outputs]
    got = executor.run_graph(g, {"x": np.zeros((1, 3, 16, 16), f)}, outputs=names)
    g.value_info = {k: Value(k, "float32", ("batch", v.shape[1]) + tuple(f"{k}_{i}" for i in range(2, v.ndim)))
                    for k, v in got.items()}
    return qinfer.Model(g)


def _fused_adds(sess):
    return sorted(p[1].name for st in sess._executor.program.steps for p in (st.post or ())
                  if p[1].op == "QAdd")


@pytest.fixture(scope="module")
def quantized_nets():
    rng = np.random.default_rng(7)
    m = _res_net(rng)
    calib = [rng.standard_normal((1, 3, 16, 16)).astype(np.float32) for _ in range(8)]
    out = {"int8": qinfer.quantize(m, calib, progress=False, max_error=1.0)}
    pruned = qinfer.prune(m, 0.7, pattern="block4", progress=False)
    out["sparse"] = qinfer.quantize(pruned, calib, progress=False, max_error=1.0)
    out["int4"] = qinfer.quantize(m, calib, weights="int4", group_size=32, progress=False,
                                  max_error=1.0)
    return out


@pytest.mark.parametrize("which", ["int8", "sparse", "int4"])
def test_residual_networks_equal_the_reference(isa, nt, which, quantized_nets, rng, tmp_path):
    q = quantized_nets[which]
    adds = sorted(n.name for n in q.graph.nodes if n.op == "QAdd")
    assert len(adds) == 4, [n.op for n in q.graph.nodes]
    if which == "sparse":
        assert any(S.is_sparse(v) for v in q.graph.initializers.values())
    p = str(tmp_path / "net.qinf")
    q.save(p)
    sess = qinfer.InferenceSession(qinfer.load(p), num_threads=nt)
    fused = _fused_adds(sess)
    # the blocks' adds after a GEMM-type conv fuse; the depthwise one and the two-reader one do not
    assert len(fused) == 2 and len(fused) < len(adds), (fused, adds)
    for x in (rng.standard_normal((1, 3, 16, 16)).astype(np.float32),
              rng.standard_normal((3, 3, 20, 12)).astype(np.float32)):
        np.testing.assert_array_equal(sess.run(None, {"x": x})[0],
                                      executor.run_graph(q.graph, {"x": x})["y"])


def test_declined_fused_step_replays_the_add(quantized_nets, rng):
    """A fused step whose kernel declines runs the layer's reference op, then the add's."""
    q = quantized_nets["int8"]
    sess = qinfer.InferenceSession(q, num_threads=1)
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    want = executor.run_graph(q.graph, {"x": x})["y"]
    steps = [st for st in sess._executor.program.steps if st.post and st.post[0][1].op == "QAdd"]
    assert steps
    for st in steps:
        st.fn = lambda inputs, attrs, n: None
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], want)
