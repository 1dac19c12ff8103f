"""InferenceSession: ONNX Runtime surface, input validation, plan caching, threads."""
import numpy as np
import pytest
import onnx
from onnx import TensorProto, helper

import qinfer
from qinfer import InvalidInputError, ModelFormatError, UnsupportedOperatorError


def _conv_model(dynamic=True):
    """x[N,3,H,W] -> Conv3x3 -> BN -> Relu -> Shape-driven Reshape to [N, -1] -> output."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    bn = [rng.uniform(0.5, 1.5, 4), rng.standard_normal(4), rng.standard_normal(4), rng.uniform(0.5, 2, 4)]
    inits = [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel()),
             helper.make_tensor("b", TensorProto.FLOAT, b.shape, b)]
    for nm, arr in zip(["s", "bb", "m", "v"], bn):
        inits.append(helper.make_tensor(nm, TensorProto.FLOAT, [4], arr.astype(np.float32)))
    inits.append(helper.make_tensor("zero", TensorProto.INT64, [1], [0]))
    inits.append(helper.make_tensor("minus1", TensorProto.INT64, [1], [-1]))
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["n"], name="bn"),
        helper.make_node("Relu", ["n"], ["r"], name="relu"),
        helper.make_node("Shape", ["r"], ["shp"], name="shape"),
        helper.make_node("Gather", ["shp", "zero"], ["batch"], axis=0, name="gather"),
        helper.make_node("Concat", ["batch", "minus1"], ["newshape"], axis=0, name="concat"),
        helper.make_node("Reshape", ["r", "newshape"], ["y"], name="reshape"),
    ]
    dims = ["N", 3, "H", "W"] if dynamic else [1, 3, 8, 8]
    g = helper.make_graph(nodes, "convnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="qinfer-tests")
    helper.set_model_props(m, {"author": "qinfer", "purpose": "test"})
    return m


def _ort(model, feeds):
    ort = pytest.importorskip("onnxruntime")
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


@pytest.mark.parametrize("shape", [(1, 3, 8, 8), (2, 3, 7, 5), (1, 3, 1, 1)])
def test_matches_onnxruntime_and_caches_plans(shape, rng):
    m = _conv_model()
    sess = qinfer.InferenceSession(m, num_threads=1)
    x = rng.standard_normal(shape).astype(np.float32)
    (want,) = _ort(m, {"x": x})
    for _ in range(2):          # second call goes through the cached plan
        (got,) = sess.run(None, {"x": x})
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert got.shape == (shape[0], 4 * shape[2] * shape[3])


def test_batchnorm_is_folded_and_shape_chain_precomputed(rng):
    model = qinfer.convert(_conv_model())
    ops = [n.op for n in model.graph.nodes]
    assert "BatchNormalization" not in ops
    sess = qinfer.InferenceSession(model, num_threads=1)
    sess.run(None, {"x": rng.standard_normal((1, 3, 4, 4)).astype(np.float32)})
    plan = next(iter(sess._executor._plans.values()))
    ran = [s.node.op for s in plan.steps]
    assert "Shape" not in ran and "Gather" not in ran and "Concat" not in ran
    assert "Relu" not in ran   # fused into the conv epilogue


def test_equal_integer_constants_are_shared(rng):
    """Exporters write an axes / starts vector once per node: the importer keeps one of each
    value (int64 [0] and [0] merge; int32 [0], int64 [1], float [0] and a graph output stay)."""
    inits = [helper.make_tensor(n, t, [1], [v]) for n, t, v in [
        ("a0", TensorProto.INT64, 0), ("b0", TensorProto.INT64, 0), ("c0", TensorProto.INT32, 0),
        ("d1", TensorProto.INT64, 1), ("f0", TensorProto.FLOAT, 0.0), ("out0", TensorProto.INT64, 0)]]
    nodes = [helper.make_node("Unsqueeze", ["x", "a0"], ["u"], name="u"),
             helper.make_node("Unsqueeze", ["u", "b0"], ["v"], name="v"),
             helper.make_node("Unsqueeze", ["v", "d1"], ["w"], name="w"),
             helper.make_node("Add", ["w", "f0"], ["y"], name="add"),
             helper.make_node("Gather", ["x", "c0"], ["z"], name="gather")]
    g = helper.make_graph(nodes, "share", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
                          [helper.make_tensor_value_info(k, t, None) for k, t in
                           [("y", TensorProto.FLOAT), ("z", TensorProto.FLOAT), ("out0", TensorProto.INT64)]],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model = qinfer.convert(m)
    assert sorted(model.graph.initializers) == ["a0", "c0", "d1", "f0", "out0"]
    assert [n.inputs for n in model.graph.nodes if n.op == "Unsqueeze"][:2] == [("x", "a0"), ("u", "a0")]
    x = rng.standard_normal(5).astype(np.float32)
    got = qinfer.InferenceSession(model).run(None, {"x": x})
    for a, b in zip(got, _ort(m, {"x": x})):
        np.testing.assert_array_equal(a, b)


def test_session_api_surface():
    m = _conv_model()
    sess = qinfer.InferenceSession(m.SerializeToString())
    (i,) = sess.get_inputs()
    assert i.name == "x" and i.type == "tensor(float)" and i.shape == ["N", 3, "H", "W"]
    assert [o.name for o in sess.get_outputs()] == ["y"]
    meta = sess.get_modelmeta()
    assert meta.producer_name == "qinfer-tests"
    assert meta.graph_name == "convnet"
    assert meta.custom_metadata_map == {"author": "qinfer", "purpose": "test"}
    assert isinstance(sess.get_providers(), list) and sess.get_providers()


def test_ort_keyword_arguments_accepted():
    ort = pytest.importorskip("onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = qinfer.InferenceSession(_conv_model().SerializeToString(), sess_options=so,
                                   providers=["CPUExecutionProvider"])
    assert sess.num_threads == 1


def test_output_names_subset_and_unknown(rng):
    sess = qinfer.InferenceSession(_conv_model())
    x = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    (y,) = sess.run(["y"], {"x": x})
    assert y.shape == (1, 64)
    with pytest.raises(InvalidInputError, match="unknown output 'nope'"):
        sess.run(["nope"], {"x": x})


@pytest.mark.parametrize("feeds,match", [
    ({"X": np.zeros((1, 3, 4, 4), np.float32)}, r"unknown input name.*'X'.*inputs are \['x'\]"),
    ({}, r"missing input.*'x'"),
    ({"x": np.zeros((1, 3, 4, 4), np.float64)}, r"input 'x': expected dtype float32, got float64"),
    ({"x": np.zeros((3, 4, 4), np.float32)}, r"input 'x': expected rank 4 .* got rank 3"),
    ({"x": np.zeros((1, 4, 4, 4), np.float32)}, r"input 'x': dimension 1 must be 3 .*got 4"),
    ({"x": np.zeros((1, 3, 0, 4), np.float32)}, r"x|conv"),
])
def test_wrong_feeds_raise_invalid_input(feeds, match):
    sess = qinfer.InferenceSession(_conv_model(), num_threads=1)
    with pytest.raises(InvalidInputError, match=match):
        sess.run(None, feeds)
    # and after valid runs, whose signatures the session then skips the checks for
    x = np.ones((1, 3, 4, 4), np.float32)
    want = sess.run(None, {"x": x})[0]
    np.testing.assert_array_equal(sess.run(None, {"x": x.copy()})[0], want)
    with pytest.raises(InvalidInputError, match=match):
        sess.run(None, feeds)


def test_remembered_signatures_still_take_any_layout(rng):
    """A non-contiguous view of a remembered signature goes the full way (made contiguous) and
    gives the contiguous array's answer; a feed with an extra name is still refused."""
    sess = qinfer.InferenceSession(_conv_model(), num_threads=1)
    x = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    want = sess.run(None, {"x": x})[0]
    wide = np.zeros((1, 3, 4, 8), np.float32)
    wide[..., ::2] = x
    view = wide[..., ::2]
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(sess.run(None, {"x": view})[0], want)
    with pytest.raises(InvalidInputError, match="unknown input"):
        sess.run(None, {"x": x, "extra": x})


def test_num_threads_validation(monkeypatch):
    with pytest.raises(qinfer.QinferError, match="num_threads must be >= 1"):
        qinfer.InferenceSession(_conv_model(), num_threads=0)
    monkeypatch.setenv("QINFER_NUM_THREADS", "1")
    assert qinfer.InferenceSession(_conv_model()).num_threads == 1
    monkeypatch.setenv("QINFER_NUM_THREADS", "many")
    with pytest.raises(qinfer.QinferError, match="QINFER_NUM_THREADS"):
        qinfer.InferenceSession(_conv_model())


def test_thread_counts_agree(rng):
    m = qinfer.convert(_conv_model())
    x = rng.standard_normal((2, 3, 9, 11)).astype(np.float32)
    (a,) = qinfer.InferenceSession(m, num_threads=1).run(None, {"x": x})
    (b,) = qinfer.InferenceSession(m, num_threads=2).run(None, {"x": x})
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_unsupported_ops_all_listed_in_one_error():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="ok"),
             helper.make_node("Foo", ["a"], ["b"], name="foo1", domain="custom"),
             helper.make_node("NonMaxSuppression", ["b", "b"], ["c"], name="nms"),
             helper.make_node("Bar", ["c"], ["y"], name="bar")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)])
    with pytest.raises(UnsupportedOperatorError) as ei:
        qinfer.convert(m)
    msg = str(ei.value)
    for name in ("foo1", "nms", "bar"):
        assert name in msg
    assert "opset 17" in msg
    assert len(ei.value.problems) == 3


def test_unsupported_tensor_types_are_clear():
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOperatorError, match="bfloat16"):
        qinfer.convert(m)


@pytest.mark.parametrize("payload", [b"", b"garbage bytes \x00\x01\x02" * 10, b"\x08" * 50])
def test_garbage_onnx_bytes_raise_model_format_error(payload, tmp_path):
    with pytest.raises(ModelFormatError):
        qinfer.convert(payload)
    p = tmp_path / "bad.onnx"
    p.write_bytes(payload)
    with pytest.raises(ModelFormatError, match="bad.onnx"):
        qinfer.convert(str(p))
    with pytest.raises(ModelFormatError):
        qinfer.InferenceSession(str(p))


def test_missing_path_raises_model_format_error(tmp_path):
    with pytest.raises(ModelFormatError, match="no such file"):
        qinfer.InferenceSession(str(tmp_path / "absent.qinf"))
    with pytest.raises(ModelFormatError, match="directory"):
        qinfer.convert(str(tmp_path))


def test_qinf_round_trip_runs_identically(tmp_path, rng):
    m = qinfer.convert(_conv_model())
    p = tmp_path / "m.qinf"
    m.save(p)
    loaded = qinfer.load(p)
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    (a,) = qinfer.InferenceSession(m).run(None, {"x": x})
    (b,) = qinfer.InferenceSession(str(p)).run(None, {"x": x})
    (c,) = qinfer.InferenceSession(loaded).run(None, {"x": x})
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert "Conv" in loaded.summary()


def test_convert_does_not_mutate_model_proto():
    m = _conv_model()
    before = m.SerializeToString()
    qinfer.convert(m)
    assert m.SerializeToString() == before


def test_plan_cache_is_bounded(rng):
    from qinfer.runtime import planner
    sess = qinfer.InferenceSession(_conv_model(), num_threads=1)
    for w in range(1, planner.MAX_PLANS + 6):
        sess.run(None, {"x": rng.standard_normal((1, 3, 2, w)).astype(np.float32)})
    assert len(sess._executor._plans) == planner.MAX_PLANS


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("shape,k,ceil", [((1, 3, 8, 8), 2, 0), ((2, 5, 7, 9), 2, 0), ((1, 1, 9, 6), 3, 0),
                                          ((1, 2, 7, 7), 2, 1), ((1, 4, 1, 1), 1, 0),
                                          ((1, 6, 9, 16), (3, 2), 0), ((2, 3, 4, 13), (1, 4), 0)])
def test_fast_pooling_matches_reference(op, shape, k, ceil, rng):
    from qinfer.reference import get
    from qinfer.runtime import float_ops
    k = list(k) if isinstance(k, tuple) else [k, k]
    attrs = {"kernel_shape": k, "strides": k, "ceil_mode": ceil}
    x = rng.standard_normal(shape).astype(np.float32)
    x.reshape(-1)[::11] = np.nan if op == "MaxPool" else 0.0   # a NaN in a window stays NaN
    fast = float_ops.make_pool(op, attrs)
    got = fast([x], attrs, 1)
    (want,) = get(op)([x], attrs, 1)
    if got is None:                       # declined (ceil_mode with a remainder): reference runs
        assert ceil and (shape[2] % k[0] or shape[3] % k[1])
        return
    assert got[0].dtype == np.float32 and got[0].flags.c_contiguous
    np.testing.assert_allclose(got[0], want, rtol=1e-6, atol=1e-6)


def _erf_graph(dtype):
    from qinfer.ir.graph import Graph, Node, Value
    return Graph("erf", nodes=[Node("Erf", ("x",), ("y",), {}, "erf")],
                 inputs=[Value("x", dtype, [None])], outputs=[Value("y", dtype, [None])])


@pytest.mark.parametrize("threads", [1, 2])
def test_erf_fast_path_is_within_one_ulp_of_the_reference(threads):
    """Sessions run a float32 Erf (GELU's) on the C row kernel (libm's erf in double), not on the
    float64 reference's series: within 1 ulp of the reference's value rounded to float32 over the
    whole range (0 and -0, subnormals, 0.5, the tails, inf, NaN)."""
    from qinfer.reference.elementwise import erf
    from qinfer.runtime.planner import Program
    g = _erf_graph("float32")
    prog = Program(g, threads)
    assert prog.steps[0].fn is not None, "Erf did not take the fast path"
    x = np.concatenate([np.linspace(-7, 7, 20001), np.geomspace(1e-38, 10, 20001),
                        -np.geomspace(1e-38, 10, 2001), np.nextafter(np.float32(0.5), [0, 1]),
                        [0.0, -0.0, 1e-45, -1e-45, 3.9, 5.99, 6.0, 1e30, -1e30, np.inf, -np.inf,
                         np.nan]]).astype(np.float32)
    y = qinfer.InferenceSession(qinfer.Model(g), num_threads=threads).run(None, {"x": x})[0]
    assert y.dtype == np.float32 and y.shape == x.shape
    want = erf(x.astype(np.float64)).astype(np.float32)
    fin = ~np.isnan(x)
    ulps = np.abs(y[fin].astype(np.float64) - want[fin]) / np.spacing(np.abs(want[fin])).astype(np.float64)
    assert ulps.max() <= 1.0, x[fin][ulps.argmax()]
    assert np.isnan(y[~fin]).all()
    assert np.array_equal(np.signbit(y[fin]), np.signbit(want[fin]))     # -0.0 -> -0.0
    assert y[x == np.inf].item() == 1.0 and y[x == -np.inf].item() == -1.0


@pytest.mark.parametrize("shape", [(), (0, 3), (2, 3, 5)])
def test_erf_fast_path_keeps_shapes(rng, shape):
    from qinfer.reference.elementwise import erf
    from qinfer.runtime.float_ops import erf_f32
    x = (3 * rng.standard_normal(shape)).astype(np.float32)
    y = erf_f32(x)
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, erf(x.astype(np.float64)), rtol=2e-7, atol=1e-30)
    t = rng.standard_normal((4, 6)).astype(np.float32)[:, ::2]     # a strided view
    np.testing.assert_array_equal(erf_f32(t), erf_f32(np.ascontiguousarray(t)))


def test_erf_of_other_dtypes_runs_the_reference():
    g = _erf_graph("float64")
    x = np.linspace(-3, 3, 101)
    y = qinfer.InferenceSession(qinfer.Model(g)).run(None, {"x": x})[0]
    from qinfer.reference.elementwise import erf
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, erf(x))


def _conv_affine_model(rng, scale_shape, shift_shape, mul_first=True, extra_reader=False,
                       upto=None):
    """x -> Conv(3x3, pad 1, 8 -> 6) -> HardSwish -> Mul(const) -> Add(const) -> y (the graph up
    to value ``upto`` only, if given; the constants drawn from a seeded rng either way)"""
    rng = np.random.default_rng(rng)
    w = rng.standard_normal((6, 8, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    a = rng.standard_normal(scale_shape).astype(np.float32)
    c = rng.standard_normal(shift_shape).astype(np.float32)
    inits = [helper.make_tensor(n, TensorProto.FLOAT, v.shape, v.ravel())
             for n, v in (("w", w), ("b", b), ("a", a), ("c", c))]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["t0"], pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["t0"], ["t1"]),
             helper.make_node("Mul", ["a", "t1"] if mul_first else ["t1", "a"], ["t2"]),
             helper.make_node("Add", ["t2", "c"], ["y"])]
    outs = [helper.make_tensor_value_info(upto or "y", TensorProto.FLOAT, None)]
    if upto:
        nodes = nodes[:[n.output[0] for n in nodes].index(upto) + 1]
        inits = inits[:2]
    elif extra_reader:     # t2 read twice: the Add may not be absorbed
        nodes.append(helper.make_node("Neg", ["t2"], ["z"]))
        outs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    g = helper.make_graph(nodes, "conv_affine",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8, 9, 11])],
                          outs, initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return qinfer.convert(m)


@pytest.mark.parametrize("scale_shape, shift_shape, mul_first, extra, absorbed", [
    ((1,), (1,), True, False, ["Conv"]),                 # PP-LCNetV3's learnable affine: scalars
    ((6, 1, 1), (1, 6, 1, 1), False, False, ["Conv"]),   # per channel
    ((), (6, 1, 1), True, False, ["Conv"]),
    ((1,), (1,), True, True, ["Conv", "Add", "Neg"]),    # the Mul's output has two readers
    ((1,), (6, 1, 1), True, False, ["Conv"]),            # a scalar and a per-channel constant
    ((9, 11), (1,), True, False, ["Conv", "Mul", "Add"]),  # a spatial constant: not per channel
    ((1, 1, 1, 1, 1), (1,), True, False, ["Conv", "Mul", "Add"]),  # would widen the output's rank
])
@pytest.mark.parametrize("threads", [1, 2])
def test_conv_absorbs_a_following_constant_affine(rng, scale_shape, shift_shape, mul_first, extra,
                                                  absorbed, threads):
    """A float Conv step applies a following Mul / Add by constants (scalar or per channel) in
    place on its output, with the reference ops' bits on the conv's (fast) output; other shapes
    and shared values stay steps of their own."""
    from qinfer.reference.executor import run_graph
    from qinfer.runtime.planner import Program
    m = _conv_affine_model(5, scale_shape, shift_shape, mul_first, extra)
    prog = Program(m.graph, threads)
    assert [s.node.op for s in prog.steps] == absorbed
    assert next(s for s in prog.steps if s.node.op == "Conv").fn is not None
    x = rng.standard_normal((2, 8, 9, 11)).astype(np.float32)
    got = qinfer.InferenceSession(m, num_threads=threads).run(None, {"x": x})
    ref = run_graph(m.graph, {"x": x})
    t1 = qinfer.InferenceSession(_conv_affine_model(5, scale_shape, shift_shape, upto="t1"),
                                 num_threads=threads).run(None, {"x": x})[0]
    a, c = m.graph.initializers["a"], m.graph.initializers["c"]
    want = (a * t1 if mul_first else t1 * a) + c
    np.testing.assert_array_equal(got[0], want)
    for name, g in zip(m.graph.output_names, got):
        assert g.shape == ref[name].shape
        np.testing.assert_allclose(g, ref[name], rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- small fast steps
def _small_ops_model(op, a_shape, b_shape, dtype=TensorProto.FLOAT):
    g = helper.make_graph(
        [helper.make_node(op, ["a", "b"], ["y"], name="op")], "small",
        [helper.make_tensor_value_info("a", dtype, a_shape),
         helper.make_tensor_value_info("b", dtype, b_shape)],
        [helper.make_tensor_value_info("y", dtype, None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("shapes", [((2, 3, 4), (4,)), ((1, 16, 16), (1, 16, 16)), ((3, 1), (1, 5)),
                                    ((), ()), ((2, 0, 3), (3,))])
def test_binary_fast_steps_match_the_reference_without_warnings(op, shapes, rng):
    """float32 Add / Sub / Mul / Div run as bare ufunc steps: the reference's bits, broadcasting,
    and no floating-point warning (0 / 0, overflow, inf - inf) escapes a run."""
    import warnings
    from qinfer.reference.executor import run_graph
    from qinfer.runtime.planner import Program
    m = qinfer.convert(_small_ops_model(op, list(shapes[0]), list(shapes[1])).SerializeToString())
    assert all(st.fn is not None for st in Program(m.graph, 1).steps)
    a = rng.standard_normal(shapes[0]).astype(np.float32)
    b = rng.standard_normal(shapes[1]).astype(np.float32)
    if a.size and b.size:
        a.reshape(-1)[:3] = [0.0, 3e38, np.inf][: a.size]
        b.reshape(-1)[:3] = [0.0, 3e38, np.inf][: b.size]
    sess = qinfer.InferenceSession(m)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):        # the first run and the planned ones
            got = sess.run(None, {"a": a, "b": b})[0]
    np.testing.assert_array_equal(got, run_graph(m.graph, {"a": a, "b": b})["y"])
    assert got.dtype == np.float32


def test_binary_fast_steps_leave_other_dtypes_to_the_reference(rng):
    m = qinfer.convert(_small_ops_model("Div", [4], [4], TensorProto.INT32).SerializeToString())
    a = np.array([7, -7, 6, -1], np.int32)
    b = np.array([2, 2, -4, 3], np.int32)
    got = qinfer.InferenceSession(m).run(None, {"a": a, "b": b})[0]
    np.testing.assert_array_equal(got, [3, -3, -1, 0])     # C-style truncation, not floor


@pytest.mark.parametrize("shape,target,allowzero,want", [
    ((2, 3, 4), [0, -1], 0, (2, 12)), ((2, 3, 4), [4, 0, 2], 0, (4, 3, 2)),
    ((2, 3, 4), [24], 0, (24,)), ((0, 3), [3, 0], 1, (3, 0)), ((2, 3, 4), [-1, 4], 0, (6, 4))])
@pytest.mark.parametrize("dynamic", [False, True])
def test_reshape_fast_step(shape, target, allowzero, want, dynamic, rng):
    """Reshape by a constant shape or by a shape fed at run time: the reference's result, 0 and
    -1 included; a shape that does not fit is an InvalidInputError."""
    from onnx import numpy_helper
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))]
    inits = []
    if dynamic:
        inputs.append(helper.make_tensor_value_info("s", TensorProto.INT64, [len(target)]))
    else:
        inits.append(numpy_helper.from_array(np.array(target, np.int64), "s"))
    g = helper.make_graph([helper.make_node("Reshape", ["x", "s"], ["y"], allowzero=allowzero)],
                          "r", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          inits)
    m = qinfer.convert(helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)]).SerializeToString())
    sess = qinfer.InferenceSession(m)
    x = rng.standard_normal(shape).astype(np.float32)
    feeds = {"x": x, **({"s": np.array(target, np.int64)} if dynamic else {})}
    for _ in range(2):
        y = sess.run(None, feeds)[0]
        assert y.shape == want
        np.testing.assert_array_equal(y.reshape(-1), x.reshape(-1))
    if dynamic:
        with pytest.raises(InvalidInputError, match="Reshape"):
            sess.run(None, {"x": x, "s": np.array([5] * len(target), np.int64)})


@pytest.mark.parametrize("perm", [None, [0, 2, 1], [2, 0, 1]])
def test_transpose_fast_step(perm, rng):
    attrs = {} if perm is None else {"perm": perm}
    g = helper.make_graph([helper.make_node("Transpose", ["x"], ["y"], **attrs)], "t",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = qinfer.convert(helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)]).SerializeToString())
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    y = qinfer.InferenceSession(m).run(None, {"x": x})[0]
    np.testing.assert_array_equal(y, np.transpose(x, perm))
    assert y.flags.c_contiguous


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceSum"])
@pytest.mark.parametrize("axes,keepdims", [([1], 0), ([-1], 1), ([0, 2], 0), ([2, -3], 1)])
def test_reduce_fast_step_matches_the_reference(op, axes, keepdims, rng):
    """ReduceMean / ReduceSum over constant axes: the reference's bits (ReduceSum's axes as an
    input, ReduceMean's as the opset-13 attribute); an axis out of range is an InvalidInputError."""
    from onnx import numpy_helper
    from qinfer.reference.executor import run_graph
    from qinfer.runtime.planner import Program
    if op == "ReduceSum":
        node = helper.make_node(op, ["x", "axes"], ["y"], keepdims=keepdims)
        inits = [numpy_helper.from_array(np.array(axes, np.int64), "axes")]
    else:
        node = helper.make_node(op, ["x"], ["y"], axes=axes, keepdims=keepdims)
        inits = []
    g = helper.make_graph([node], "red", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = qinfer.convert(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    assert all(st.fn is not None for st in Program(m.graph, 1).steps)
    sess = qinfer.InferenceSession(m)
    x = (rng.standard_normal((3, 5, 7)) * 1e3).astype(np.float32)
    for _ in range(2):
        y = sess.run(None, {"x": x})[0]
    want = run_graph(m.graph, {"x": x})["y"]
    assert y.dtype == np.float32 and y.shape == want.shape
    np.testing.assert_array_equal(y, want)
    if any(a in (2, -3) for a in axes):
        with pytest.raises(InvalidInputError, match="out of range"):
            sess.run(None, {"x": x[0]})     # rank 2: axis 2 / -3 out of range
    else:
        np.testing.assert_array_equal(sess.run(None, {"x": x[0]})[0],
                                      run_graph(m.graph, {"x": x[0]})["y"])


def test_constants_from_a_file_take_the_fast_binary_path(tmp_path, rng):
    """A .qinf file's float32 constants come back as '<f4' arrays (an equal but distinct dtype
    object); the session hands its steps numpy's own float32, so a Mul / Add with such a constant
    runs its fast path instead of declining to the reference op."""
    from qinfer.ir.graph import Graph, Node, Value
    g = Graph("affine", [Node("Mul", ("x", "a"), ("t",), {}, "mul"), Node("Add", ("t", "b"), ("y",), {}, "add")],
              [Value("x", "float32", (2, 3))], [Value("y", "float32", (2, 3))],
              {"a": rng.standard_normal((1, 3)).astype(np.float32),
               "b": rng.standard_normal((2, 1)).astype(np.float32)})
    p = str(tmp_path / "affine.qinf")
    qinfer.Model(g).save(p)
    loaded = qinfer.load(p)
    assert any(v.dtype is not np.dtype(np.float32) for v in loaded.graph.initializers.values())
    sess = qinfer.InferenceSession(loaded, num_threads=1)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    y = sess.run(None, {"x": x})[0]
    np.testing.assert_array_equal(y, x * g.initializers["a"] + g.initializers["b"])
    env = list(next(iter(sess._executor._plans.values())).env_template)
    env[sess._program.input_slots[0]] = x
    for st in sess._executor.program.steps:
        args = [env[i] for i in st.ins]
        out = st.fn(args, st.node.attrs, 1)
        assert out is not None, f"{st.node.op} declined"
        env[st.outs[0]] = out[0]
