"""Big float constants of quantized models stored int8 per row or int4 per block of a row
(quant/constants.py), and the ops that put them back (ONNX DequantizeLinear, qinfer's
DequantizeInt4)."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import qinfer
from qinfer.errors import InvalidInputError, UnsupportedOperatorError
from qinfer.ir.graph import Graph, Node, Value
from qinfer.quant import constants
from qinfer.reference import registry


def _model(nodes, inputs, outputs, inits=(), opset=21):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()


@pytest.mark.parametrize("dtype,axis,zp", [(np.int8, None, False), (np.uint8, None, True),
                                           (np.int8, 0, True), (np.uint8, 1, False), (np.int8, -1, True),
                                           (np.int32, None, False)])
def test_dequantize_linear_matches_onnxruntime(rng, dtype, axis, zp):
    ort = pytest.importorskip("onnxruntime")
    shape = (3, 5, 4)
    info = np.iinfo(dtype)
    x = rng.integers(max(info.min, -1000), min(info.max, 1000) + 1, shape).astype(dtype)
    n = 1 if axis is None else shape[axis]
    scale = (rng.random(n) + 0.01).astype(np.float32)
    if axis is None:
        scale = scale.reshape(())
    inits = [numpy_helper.from_array(scale, "s")]
    ins = ["x", "s"]
    if zp and dtype != np.int32:
        inits.append(numpy_helper.from_array(
            rng.integers(info.min, info.max + 1, scale.shape).astype(dtype), "z"))
        ins.append("z")
    attrs = {} if axis is None else {"axis": axis}
    tt = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    data = _model([helper.make_node("DequantizeLinear", ins, ["y"], **attrs)],
                  [helper.make_tensor_value_info("x", tt, shape)],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    want = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = qinfer.InferenceSession(qinfer.convert(data)).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)


def test_dequantize_linear_refuses_what_it_does_not_do():
    op = registry.get("DequantizeLinear")
    x = np.zeros((2, 3), np.int8)
    with pytest.raises(InvalidInputError, match="axis"):
        op([x, np.ones(2, np.float32)], {"axis": 1}, 1)
    with pytest.raises(UnsupportedOperatorError, match="block_size"):
        op([x, np.ones((2, 1), np.float32)], {"axis": 1, "block_size": 3}, 1)
    with pytest.raises(UnsupportedOperatorError, match="int8"):
        op([x.astype(np.float32), np.ones((), np.float32)], {}, 1)
    with pytest.raises(InvalidInputError, match="zero_point"):
        op([x, np.ones(3, np.float32), np.zeros(3, np.uint8)], {"axis": 1}, 1)


@pytest.mark.parametrize("shape", [(64, 64), (1, 128, 64), (3, 7, 17, 65), (4096, 2), (96, 48, 3, 3),
                                   (64, 128, 1, 1), (5000,)])
def test_rows_keep_their_values_within_half_a_step(rng, shape):
    a = (rng.standard_normal(shape) * rng.random(shape[:-1] + (1,)) * 10).astype(np.float32)
    a.reshape(constants.rows_shape(shape))[0] = 0                 # an all-zero row
    q, scale = constants.quantize_rows(a)
    rows = a.reshape(constants.rows_shape(shape))
    assert rows.shape[0] == (shape[0] if shape[-1] < constants.ROW_MIN else a.size // shape[-1])
    back = q.astype(np.float32) * scale[:, None]
    step = np.abs(rows).max(axis=1) / 127
    assert (np.abs(back - rows) <= step[:, None] / 2 * (1 + 1e-6) + 1e-30).all()
    assert (back[0] == 0).all() and q.min() >= -127


def _graph_with_table(table):
    """y = MatMul(x + table, w): the table feeds a float Add."""
    n, k = table.shape[-2:]
    w = np.ones((k, 3), np.float32)
    return Graph("t", [Node("Add", ("x", "table"), ("t",), {}, "add"),
                       Node("MatMul", ("t", "w"), ("y",), {}, "mm")],
                 [Value("x", "float32", table.shape)], [Value("y", "float32", None)],
                 {"table": table, "w": w})


def test_compress_constants_rewrites_and_runs(rng):
    table = rng.standard_normal((1, 128, 64)).astype(np.float32)
    g = _graph_with_table(table)
    assert constants.candidates(g) == ["table"]
    assert constants.candidates(g, min_elements=table.size + 1) == []
    g2, rep = constants.compress_constants(g, ["table"])
    assert "table" in g.initializers and "table" not in g2.initializers     # input untouched
    assert rep == [{"constant": "table", "shape": [1, 128, 64], "storage": "int8", "float_bytes": 32768,
                    "stored_bytes": 128 * 64 + 128 * 4}]
    assert [n.op for n in g2.nodes] == ["DequantizeLinear", "Reshape", "Add", "MatMul"]
    x = rng.standard_normal(table.shape).astype(np.float32)
    q, scale = constants.quantize_rows(table)
    want = (x + (q.astype(np.float32) * scale[:, None]).reshape(table.shape)) @ g.initializers["w"]
    got = qinfer.InferenceSession(g2).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_quantize_stores_the_transformers_position_table_int8(transformer_onnx, rng, tmp_path):
    import models
    m = qinfer.convert(transformer_onnx)
    big = {k for k, v in m.graph.initializers.items() if v.dtype == np.float32 and v.size >= 4096
           and not any(n.op in ("MatMul", "Gemm") and n.inputs[1] == k for n in m.graph.nodes)}
    assert big, "the transformer fixture has a float table outside its layers"
    calib = [models.transformer_input(rng, 1, 16) for _ in range(16)]
    for kw in ({"weights": "int4"}, {"weights": "int4", "activations": "dynamic"}, {}):
        q = qinfer.quantize(m, calib, progress=False, **kw)
        info = q.graph.metadata["quantization"]
        # int4 weights: the table takes int4 blocks too where the budget allows it (it does here)
        stored = "1 stored int4 per block of 64" if kw else "1 stored int8 per row"
        assert stored in info["constants"], (kw, info)
        assert not big & set(q.graph.initializers), kw
        assert info["output_error"] <= info["max_error"]
        p = tmp_path / "q.qinf"
        q.save(p)
        x = models.transformer_input(rng, 2, 9)
        a = qinfer.InferenceSession(q).run(None, {"x": x})[0]
        b = qinfer.InferenceSession(str(p)).run(None, {"x": x})[0]
        np.testing.assert_array_equal(a, b)
        ref = qinfer.InferenceSession(m).run(None, {"x": x})[0]
        cos = float(a.ravel() @ ref.ravel() / np.linalg.norm(a) / np.linalg.norm(ref))
        assert cos > 0.99, (kw, cos)


@pytest.mark.parametrize("small, storage", [(1e-3, "float16"), (1e-9, "float32")])
def test_constants_stay_wider_when_the_budget_says_so(rng, small, storage):
    """A table whose rows mix one huge value with the small ones the output depends on: int8 rows
    would flush the small ones to 0, so quantize stores it float16 where that keeps them (1e-3)
    and float32 where float16 flushes them too (1e-9), and says so."""
    table = small * rng.standard_normal((64, 128)).astype(np.float32)
    table[:, 0] = 1e4
    g = _graph_with_table(table)
    g.nodes = [g.nodes[0], Node("Slice", ("t", "s0", "s1", "ax"), ("ts",), {}, "cut"),
               Node("MatMul", ("ts", "w"), ("y",), {}, "mm")]
    g.initializers.update(s0=np.array([1], np.int64), s1=np.array([128], np.int64),
                          ax=np.array([1], np.int64), w=rng.standard_normal((127, 8)).astype(np.float32))
    x = [{"x": (small * rng.standard_normal(table.shape)).astype(np.float32)} for _ in range(4)]
    q = qinfer.quantize(qinfer.Model(g), x, progress=False)
    info = q.graph.metadata["quantization"]
    assert "0 stored int8" in info["constants"], info
    if storage == "float16":
        assert "1 float16" in info["constants"] and q.graph.initializers["table__f16"].dtype == np.float16
        assert "table" not in q.graph.initializers
    else:
        assert "1 kept float32" in info["constants"] and q.graph.initializers["table"].dtype == np.float32
    assert info["output_error"] <= info["max_error"]


def test_float16_constants_are_decoded_once(rng):
    g = _graph_with_table(rng.standard_normal((64, 64)).astype(np.float32))
    g2, rep = constants.compress_constants(g, {"table": "float16"})
    assert rep[0]["stored_bytes"] == 64 * 64 * 2 and [n.op for n in g2.nodes][:1] == ["Cast"]
    from qinfer.runtime.planner import Program
    prog = Program(g2, 1)
    np.testing.assert_array_equal(prog.graph.initializers["table"],
                                  g.initializers["table"].astype(np.float16).astype(np.float32))
    assert [s.node.op for s in prog.steps] == ["Add", "MatMul"]


def test_weights_of_layers_kept_float_are_stored_smaller_and_decoded_once(resnet18_onnx, rng, tmp_path):
    """A conv excluded from quantization keeps float32 arithmetic but float16 storage; the session
    decodes it when built, so the conv runs on its float fast path with the decoded weight."""
    from qinfer.runtime.planner import Program
    m = qinfer.convert(resnet18_onnx)
    conv = next(n for n in m.graph.nodes if n.op == "Conv" and m.graph.initializers[n.inputs[1]].size >= 36864)
    w = m.graph.initializers[conv.inputs[1]]
    x = [rng.standard_normal((1, 3, 64, 64)).astype(np.float32) for _ in range(4)]
    q = qinfer.quantize(m, x, exclude=[conv.name], progress=False)
    assert conv.inputs[1] not in q.graph.initializers
    assert "1 float16" in q.graph.metadata["quantization"]["constants"]
    stored = q.graph.initializers[conv.inputs[1] + "__f16"]
    assert stored.dtype == np.float16 and stored.shape == w.shape
    p = tmp_path / "q.qinf"
    q.save(p)
    prog = Program(qinfer.load(p).graph, 1)
    step = next(s for s in prog.steps if s.node.name == conv.name)
    assert step.fn is not None, "the conv lost its fast path"
    decoded = prog.graph.initializers[conv.inputs[1]]
    np.testing.assert_array_equal(decoded, w.astype(np.float16).astype(np.float32))
    assert not any(n.op == "Cast" for n in prog.graph.nodes)
    a = qinfer.InferenceSession(q).run(None, {"input": x[0]})[0]
    b = qinfer.InferenceSession(str(p), num_threads=2).run(None, {"input": x[0]})[0]
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cols", [1, 2, 3, 7, 17, 63, 64, 65, 130])
def test_nibbles_round_trip_every_code(rng, cols):
    from qinfer.reference import int4
    q = rng.integers(-8, 8, (5, cols)).astype(np.int8)
    q[0, :] = -8
    q[1, :] = 7
    p = int4.pack_rows(q)
    assert p.dtype == np.uint8 and p.shape == (5, (cols + 1) // 2)
    np.testing.assert_array_equal(int4.unpack_rows(p, cols), q)
    assert p[0, 0] == (0x88 if cols > 1 else 0x08) and p[1, 0] == (0x77 if cols > 1 else 0x07)


@pytest.mark.parametrize("shape, block", [((64, 64), 64), ((1, 128, 64), 32), ((3, 7, 17, 65), 64),
                                          ((96, 48, 3, 3), 128), ((5000,), 64), ((33, 130), 32)])
def test_int4_rows_decode_to_their_blocks(rng, shape, block):
    """DequantizeInt4 puts back q * scale of the block each value falls in; every value is within
    half a step of its block's scale, or clipped at the block's extreme (the shrunk scale)."""
    a = (rng.standard_normal(shape) * 3).astype(np.float32)
    packed, scale = constants.quantize_rows4(a, block)
    rows = a.reshape(constants.rows_shape(shape))
    cols = rows.shape[1]
    assert scale.shape == (rows.shape[0], -(-cols // block)) and packed.shape[1] == (cols + 1) // 2
    got = registry.get("DequantizeInt4")([packed, scale], {"cols": cols, "block": block}, 1)[0]
    q = np.clip(np.rint(rows / np.repeat(scale, block, axis=1)[:, :cols]), -8, 7)
    np.testing.assert_array_equal(got, (q * np.repeat(scale, block, axis=1)[:, :cols]).astype(np.float32))
    # 4 bits: a block keeps its values to within a sixteenth of its range (rms), not a 255th
    err = np.sqrt(np.mean((got - rows) ** 2)) / np.abs(rows).max()
    assert 0 < err < 1 / 16


def test_dequantize_int4_refuses_what_does_not_fit():
    op = registry.get("DequantizeInt4")
    p, s = np.zeros((4, 3), np.uint8), np.ones((4, 1), np.float32)
    assert op([p, s], {"cols": 6, "block": 64}, 1)[0].shape == (4, 6)
    with pytest.raises(InvalidInputError, match="cols 7"):
        op([p, s], {"cols": 7, "block": 64}, 1)
    with pytest.raises(InvalidInputError, match="scales must be float32"):
        op([p, s], {"cols": 6, "block": 2}, 1)
    with pytest.raises(InvalidInputError, match="packed must be uint8"):
        op([p.astype(np.int8), s], {"cols": 6, "block": 64}, 1)


def test_int4_tables_are_decoded_once_and_checked(rng, tmp_path):
    table = rng.standard_normal((1, 128, 64)).astype(np.float32)
    g = _graph_with_table(table)
    g2, rep = constants.compress_constants(g, {"table": "int4"}, block=32)
    assert rep[0]["storage"] == "int4" and rep[0]["stored_bytes"] == 128 * 32 + 128 * 2 * 4
    assert [(n.op, n.domain) for n in g2.nodes][:2] == [("DequantizeInt4", "qinfer"), ("Reshape", "")]
    from qinfer.runtime.planner import Program
    prog = Program(g2, 1)
    assert [s.node.op for s in prog.steps] == ["Add", "MatMul"]
    packed, scale = constants.quantize_rows4(table, 32)
    want = registry.get("DequantizeInt4")([packed, scale], {"cols": 64, "block": 32}, 1)[0]
    np.testing.assert_array_equal(prog.graph.initializers["table"], want.reshape(table.shape))
    p = tmp_path / "t.qinf"
    qinfer.Model(g2).save(p)
    x = rng.standard_normal(table.shape).astype(np.float32)
    np.testing.assert_array_equal(qinfer.InferenceSession(str(p)).run(None, {"x": x})[0],
                                  qinfer.InferenceSession(qinfer.Model(g2)).run(None, {"x": x})[0])
    bad = g2.copy()
    bad.initializers = {**g2.initializers, "table__block_scale": np.ones((128, 3), np.float32)}
    with pytest.raises(InvalidInputError, match="table__dequantize"):
        qinfer.InferenceSession(bad)
    bad.nodes = [g2.nodes[0].replace(attrs={"cols": 64})] + list(g2.nodes[1:])
    with pytest.raises(qinfer.QinferError, match="block"):
        qinfer.InferenceSession(bad)


def test_bad_stored_constants_are_refused_when_the_session_is_built(rng):
    g = _graph_with_table(rng.standard_normal((64, 64)).astype(np.float32))
    g2, _ = constants.compress_constants(g, ["table"])
    g2.initializers["table__row_scale"] = np.ones(3, np.float32)       # 3 scales for 64 rows
    with pytest.raises(InvalidInputError, match="table__dequantize"):
        qinfer.InferenceSession(g2)


def test_float16_only_where_it_keeps_the_values(rng):
    a = rng.standard_normal((64, 64)).astype(np.float32)
    assert constants.fits_float16(a) and constants.fits_float16(np.zeros((4, 4), np.float32))
    assert not constants.fits_float16(a * 1e5)          # beyond float16's range
    assert not constants.fits_float16(a * 1e-6)         # below its normal range: subnormal steps
    q, scale = constants.quantize_rows(a * 1e-6)        # int8 rows keep such a tensor relative to its rows
    back = q * scale[:, None]
    assert np.linalg.norm(back - a * 1e-6) <= np.linalg.norm(a * 1e-6) * 0.01


@pytest.mark.parametrize("cout, storage", [(16, "float16"), (8, "float32")])
def test_small_layers_kept_float_store_float16_from_1024_values(rng, cout, storage):
    """The weights of a layer kept float go float16 from LAYER_MIN_ELEMENTS values (a 16x8x3x3
    conv, 1,152), well under the 4,096 of tables: small models' float layers add up. Below it
    (8x8x3x3, 576) they stay float32."""
    w1 = (0.1 * rng.standard_normal((cout, 8, 3, 3))).astype(np.float32)
    w2 = (0.1 * rng.standard_normal((8, cout, 3, 3))).astype(np.float32)
    g = Graph("small", inputs=[Value("x", "float32", [1, 8, 10, 10])],
              outputs=[Value("y", "float32", [1, 8, 6, 6])])
    g.initializers.update(w1=w1, w2=w2)
    g.nodes = [Node("Conv", ("x", "w1"), ("h",), {"kernel_shape": [3, 3]}, "first"),
               Node("Relu", ("h",), ("r",), {}, "relu"),
               Node("Conv", ("r", "w2"), ("y",), {"kernel_shape": [3, 3]}, "second")]
    assert constants.LAYER_MIN_ELEMENTS <= 16 * 8 * 9 and 8 * 8 * 9 < constants.LAYER_MIN_ELEMENTS
    x = [{"x": rng.standard_normal((1, 8, 10, 10)).astype(np.float32)} for _ in range(4)]
    q = qinfer.quantize(qinfer.Model(g), x, exclude=["first"], progress=False)
    info = q.graph.metadata["quantization"]
    if storage == "float16":
        assert "1 float16" in info["constants"], info
        np.testing.assert_array_equal(q.graph.initializers["w1__f16"], w1.astype(np.float16))
    else:
        assert "w1" in q.graph.initializers and q.graph.initializers["w1"].dtype == np.float32
    y = qinfer.InferenceSession(q).run(None, x[0])[0]
    ref = qinfer.InferenceSession(qinfer.Model(g)).run(None, x[0])[0]
    assert float(y.ravel() @ ref.ravel() / np.linalg.norm(y) / np.linalg.norm(ref)) > 0.99
