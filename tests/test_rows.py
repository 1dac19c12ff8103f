"""The float32 row kernels of transformers (LayerNormalization, Softmax, Erf: kernels/scalar/
rows-f32-scalar.c) against float64 equations and the numpy reference ops, over edge row widths,
hostile values and 1 / 2 threads; and the session steps that use them, against the reference
executor, with the cases they hand back to it."""
import numpy as np
import pytest
from onnx import TensorProto, helper

import qinfer
from qinfer._ext import _kernels as K
from qinfer.reference import get as ref_op

COLS = [1, 3, 7, 16, 17, 63, 65, 768]
ROWS = [1, 5, 33]


def _ln64(x, scale, bias, eps):
    x = x.astype(np.float64)
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    y = (x - m) / np.sqrt(v + eps) * scale.astype(np.float64)
    return y + (0.0 if bias is None else bias.astype(np.float64))


def _sm64(x):
    x = x.astype(np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("cols", COLS)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_layernorm_kernel_matches_the_equations(rng, rows, cols, with_bias):
    # an offset far larger than the spread: a one-pass variance in float32 would lose it
    x = (rng.standard_normal((rows, cols)) * 0.5 + 300.0).astype(np.float32)
    x[0] = 7.0                                   # a constant row: variance 0, the output is bias
    scale = rng.standard_normal(cols).astype(np.float32)
    bias = rng.standard_normal(cols).astype(np.float32) if with_bias else None
    want = _ln64(x, scale, bias, 1e-5)
    y1 = K.layernorm_f32(x, scale, bias, 1e-5, num_threads=1)
    y2 = K.layernorm_f32(x, scale, bias, 1e-5, num_threads=2)
    np.testing.assert_array_equal(y1, y2)        # rows are computed alone: any thread count
    np.testing.assert_allclose(y1, want, rtol=2e-6, atol=2e-6)
    # the numpy reference sums in float32: against it, data of mean 0 (with the offset above its
    # mean's rounding moves the float32 statistics by ~1e-4 of the spread)
    xz = x - np.float32(300.0)
    ref = ref_op("LayerNormalization")([xz, scale] + ([bias] if with_bias else []), {"axis": -1}, 1)[0]
    np.testing.assert_allclose(K.layernorm_f32(xz, scale, bias, 1e-5), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cols", COLS)
@pytest.mark.parametrize("rows", ROWS)
def test_softmax_kernel_matches_the_equations(rng, rows, cols):
    x = (rng.standard_normal((rows, cols)) * 30).astype(np.float32)
    x[0, 0] = 1e4                                # exp would overflow without the max shift
    if cols > 1:
        x[-1, 1:] = -np.inf                      # a masked row (attention): one live entry
    want = _sm64(x)
    y1 = K.softmax_f32(x, num_threads=1)
    np.testing.assert_array_equal(y1, K.softmax_f32(x, num_threads=2))
    # x - max is rounded to float32 first (as the reference does): exp's relative error grows with
    # |x - max|, so tiny probabilities get an absolute bound
    np.testing.assert_allclose(y1, want, rtol=2e-6, atol=1e-7)
    ref = ref_op("Softmax")([x], {"axis": -1}, 1)[0]
    np.testing.assert_allclose(y1, ref, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(y1.sum(-1), 1.0, rtol=1e-5)


def test_softmax_kernel_nan_and_inf_rows_as_the_reference():
    x = np.array([[0.0, np.nan, 1.0], [-np.inf] * 3, [np.inf, 0.0, 1.0], [1.0, 2.0, 3.0]],
                 np.float32)
    with np.errstate(invalid="ignore"):
        ref = ref_op("Softmax")([x], {"axis": -1}, 1)[0]
    y = K.softmax_f32(x)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    np.testing.assert_allclose(y[3], ref[3], rtol=2e-6)
    assert np.isnan(y[:3]).all()


def test_erf_kernel_threads_and_shapes(rng):
    x = (3 * rng.standard_normal((3, 70001))).astype(np.float32)
    y1 = K.erf_f32(x, num_threads=1)
    np.testing.assert_array_equal(y1, K.erf_f32(x, num_threads=2))
    from math import erf
    np.testing.assert_array_equal(y1[0, :50], np.float32([erf(float(v)) for v in x[0, :50]]))
    assert K.erf_f32(np.float32([])).shape == (0,)
    assert K.erf_f32(np.zeros((), np.float32)).shape == ()


@pytest.mark.parametrize("call, match", [
    (lambda: K.layernorm_f32(np.zeros((2, 3)), np.ones(3, np.float32)), "float32"),
    (lambda: K.layernorm_f32(np.zeros((2, 6), np.float32)[:, ::2], np.ones(3, np.float32)),
     "C-contiguous"),
    (lambda: K.layernorm_f32(np.zeros((2, 3), np.float32), np.ones(4, np.float32)), "scale"),
    (lambda: K.layernorm_f32(np.zeros((2, 3), np.float32), np.ones(3, np.float32),
                             np.ones(2, np.float32)), "bias"),
    (lambda: K.layernorm_f32(np.zeros((), np.float32), np.ones(1, np.float32)), "axis"),
    (lambda: K.softmax_f32(np.zeros((), np.float32)), "axis"),
    (lambda: K.softmax_f32(np.zeros((2, 3), np.float32), out=np.zeros((3, 2), np.float32)), "out"),
    (lambda: K.erf_f32(np.zeros(3, np.float16)), "float32"),
])
def test_row_kernels_refuse_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_row_kernels_refuse_overlapping_out():
    x = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match="overlap"):
        K.softmax_f32(x, out=x)
    s = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="overlap"):
        K.layernorm_f32(x, s, out=x)


# ---------------------------------------------------------------------------- the session steps
def _model(node, x_shape, inits=(), opset=17):
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))
    g = helper.make_graph([node], "rows", [x], [y], initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return qinfer.convert(m)


def _init(name, a):
    return helper.make_tensor(name, TensorProto.FLOAT, a.shape, a.ravel())


def _steps_fast(model):
    from qinfer.runtime.planner import Program
    return [s.fn is not None for s in Program(model.graph, 1).steps]


def _ref(model, x):
    from qinfer.reference.executor import run_graph
    out = run_graph(model.graph, {"x": x})
    return out["y"] if isinstance(out, dict) else out[0]


LN_CASES = [  # (x shape, axis, scale shape, bias)
    ((2, 5, 16), -1, (16,), True),
    ((2, 5, 16), 2, (1, 16), False),
    ((2, 5, 16), -2, (5, 16), True),       # two normalized axes
    ((3, 17), -1, (17,), True),
    ((4, 6, 7), 1, (6, 7), True),
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape, axis, sshape, with_bias", LN_CASES)
def test_layernorm_step_matches_the_reference(rng, threads, shape, axis, sshape, with_bias):
    scale = rng.standard_normal(sshape).astype(np.float32)
    bias = rng.standard_normal(sshape).astype(np.float32)
    ins = ["x", "scale"] + (["bias"] if with_bias else [])
    node = helper.make_node("LayerNormalization", ins, ["y"], axis=axis, epsilon=1e-5)
    inits = [_init("scale", scale)] + ([_init("bias", bias)] if with_bias else [])
    m = _model(node, shape, inits)
    assert _steps_fast(m) == [True]
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    got = qinfer.InferenceSession(m, num_threads=threads).run(None, {"x": x})[0]
    want = _ref(m, x)
    assert got.shape == x.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


SM_CASES = [  # (x shape, axis, opset): the last axis, or coerce_2d flattening from axis (opset 11)
    ((2, 4, 16, 16), -1, 17),
    ((3, 10), 1, 13),
    ((2, 3, 4), 1, 11),
    ((2, 3, 4), 1, 17),                    # a middle axis: handed back to the reference
]


@pytest.mark.parametrize("shape, axis, opset", SM_CASES)
def test_softmax_step_matches_the_reference(rng, shape, axis, opset):
    m = _model(helper.make_node("Softmax", ["x"], ["y"], axis=axis), shape, opset=opset)
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    got = qinfer.InferenceSession(m, num_threads=1).run(None, {"x": x})[0]
    want = _ref(m, x)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-30)
    ax = axis % len(shape)
    s = got.reshape(int(np.prod(shape[:ax])), -1).sum(-1) if opset < 13 else got.sum(ax)
    np.testing.assert_allclose(s, 1.0, rtol=1e-5)


def test_row_steps_hand_other_dtypes_to_the_reference(rng):
    from qinfer.ir.graph import Graph, Node, Value
    g = Graph("sm", nodes=[Node("Softmax", ("x",), ("y",), {"axis": -1}, "sm")],
              inputs=[Value("x", "float64", [None, 4])], outputs=[Value("y", "float64", [None, 4])])
    x = rng.standard_normal((3, 4))
    y = qinfer.InferenceSession(qinfer.Model(g)).run(None, {"x": x})[0]
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, ref_op("Softmax")([x], {"axis": -1}, 1)[0])


@pytest.mark.parametrize("op", ["LayerNormalization", "Softmax"])
def test_row_steps_leave_large_tensors_to_numpy(rng, op):
    """Past ROWS_C_MAX elements per thread numpy's SIMD loops are faster than the portable C
    kernel (bench/bench_rows.py): the step declines and the reference op runs, bit for bit."""
    from qinfer.runtime import float_ops
    cols = 256
    rows = float_ops.ROWS_C_MAX[op] // cols + 1
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    s = rng.standard_normal(cols).astype(np.float32)
    attrs = {"axis": -1}
    step = (float_ops.make_layernorm if op == "LayerNormalization" else float_ops.make_softmax)(attrs, 1)
    ins = [x, s] if op == "LayerNormalization" else [x]
    assert step(ins, attrs, 1) is None
    small = x[:rows - 2]
    got = step([small] + ins[1:], attrs, 1)
    assert got is not None
    np.testing.assert_allclose(got[0], ref_op(op)([small] + ins[1:], attrs, 1)[0], rtol=1e-4, atol=1e-5)
    m = _model(helper.make_node(op, ["x"] + (["scale"] if op == "LayerNormalization" else []), ["y"],
                                axis=-1), (rows, cols),
               [_init("scale", s)] if op == "LayerNormalization" else [])
    y = qinfer.InferenceSession(m, num_threads=1).run(None, {"x": x})[0]
    np.testing.assert_array_equal(y, _ref(m, x))
