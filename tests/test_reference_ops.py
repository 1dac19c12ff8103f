"""The numpy reference ops (qinfer.reference) against onnxruntime on single-node ONNX models.

Each case builds one node with onnx.helper, feeds seeded random inputs (odd shapes 1, 3, 7, 17,
broadcasting, negative axes, strides, dilations, groups, padding...) to onnxruntime and to the
reference op, and compares dtype, shape and values. Random data come from the ``rng`` fixture of
conftest.py (seeded by --seed / QINFER_TEST_SEED); the tests pass for any seed.
"""
import math

import numpy as np
import pytest

from qinfer.errors import InvalidInputError, UnsupportedOperatorError
from qinfer.reference import registry
from qinfer.reference.elementwise import erf

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import helper  # noqa: E402

F32, F16, F64 = np.float32, np.float16, np.float64


# ----------------------------------------------------------------------------- harness
def run_ort(op, inputs, attrs, num_outputs, opset):
    names = [f"in{i}" if x is not None else "" for i, x in enumerate(inputs)]
    outs = [f"out{i}" for i in range(num_outputs)]
    node = helper.make_node(op, names, outs, **attrs)
    graph_inputs = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)
        for n, x in zip(names, inputs) if x is not None]
    graph = helper.make_graph([node], "g", graph_inputs, [onnx.ValueInfoProto(name=o) for o in outs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10 if opset >= 21 else 8
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    try:
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # no kernel for this dtype: nothing to compare against
        if "NOT_IMPLEMENTED" in str(e) or "Type Error" in str(e):
            pytest.skip(f"onnxruntime has no {op} kernel for these types")
        raise
    feeds = {n: x for n, x in zip(names, inputs) if x is not None}
    return sess.run(None, feeds)


def run_ref(op, inputs, attrs, num_outputs, ref_attrs=None):
    fn = registry.get(op)
    assert fn is not None, f"no reference op {op}"
    a = dict(attrs)
    for k, v in a.items():  # tensor attributes arrive as numpy arrays
        if isinstance(v, onnx.TensorProto):
            a[k] = onnx.numpy_helper.to_array(v)
    a.update(ref_attrs or {})
    return [np.asarray(o) for o in fn(list(inputs), a, num_outputs)]


def check(op, inputs, attrs=None, num_outputs=1, opset=21, rtol=1e-5, atol=1e-6, ref_attrs=None):
    attrs = attrs or {}
    want = run_ort(op, inputs, attrs, num_outputs, opset)
    got = run_ref(op, inputs, attrs, num_outputs, ref_attrs)
    assert len(got) >= len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype, f"output {i}: dtype {g.dtype}, onnxruntime {w.dtype}"
        assert g.shape == w.shape, f"output {i}: shape {g.shape}, onnxruntime {w.shape}"
        if w.dtype.kind == "f":
            if w.dtype == np.float16:
                rtol, atol = max(rtol, 2e-3), max(atol, 2e-3)
            np.testing.assert_allclose(g.astype(F64), w.astype(F64), rtol=rtol, atol=atol,
                                       err_msg=f"{op} output {i}")
        else:
            np.testing.assert_array_equal(g, w, err_msg=f"{op} output {i}")


def randn(rng, *shape, dtype=F32):
    return rng.standard_normal(shape).astype(dtype)


def randint(rng, lo, hi, *shape, dtype=np.int64):
    return rng.integers(lo, hi, size=shape).astype(dtype)


# ----------------------------------------------------------------------------- elementwise
UNARY = [
    ("Relu", {}), ("Sigmoid", {}), ("Tanh", {}), ("Erf", {}), ("Exp", {}), ("Neg", {}), ("Abs", {}),
    ("Floor", {}), ("Ceil", {}), ("Round", {}), ("Sign", {}), ("Softplus", {}), ("Softsign", {}),
    ("Elu", {"alpha": 0.7}), ("Selu", {}), ("Sin", {}), ("Cos", {}), ("Mish", {}), ("Identity", {}),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("HardSwish", {}), ("LeakyRelu", {"alpha": 0.2}),
    ("Gelu", {}), ("Gelu", {"approximate": "tanh"}), ("Celu", {"alpha": 2.0}),
    ("ThresholdedRelu", {"alpha": 0.5}),
]


@pytest.mark.parametrize("dtype", [F32, F16, F64], ids=["f32", "f16", "f64"])
@pytest.mark.parametrize("op,attrs", UNARY, ids=[f"{o}{'-' + '-'.join(map(str, a.values())) if a else ''}"
                                                  for o, a in UNARY])
def test_unary(rng, op, attrs, dtype):
    x = (randn(rng, 3, 7, 17, dtype=F64) * 3).astype(dtype)
    x.flat[:4] = np.array([0.5, -0.5, 2.5, 0.0])  # rounding ties and zero
    check(op, [x], attrs, opset=20 if op == "Gelu" else 21, rtol=1e-5 if dtype != F16 else 2e-3)


@pytest.mark.parametrize("op", ["Sqrt", "Log", "Reciprocal"])
def test_unary_positive(rng, op):
    check(op, [np.abs(randn(rng, 7, 17)) + 0.1])


def test_erf_accuracy():
    x = np.concatenate([np.linspace(-7, 7, 20001), [1e-300, -1e-30, 0.0, 2.5, -2.5, 30.0]])
    want = np.array([math.erf(v) for v in x])
    np.testing.assert_allclose(erf(x), want, rtol=1e-13, atol=1e-300)
    assert np.isnan(erf(np.array([np.nan])))[0]


def test_isnan_not(rng):
    x = randn(rng, 3, 7)
    x[0, 1] = np.nan
    check("IsNaN", [x])
    check("Not", [rng.random((3, 7)) > 0.5])


BROADCAST = [((3, 7, 17), (3, 7, 17)), ((3, 1, 17), (7, 1)), ((1,), (3, 7)), ((), (2, 3)),
             ((1, 3, 1, 1), (2, 1, 5, 7))]
BROADCAST_IDS = ["same", "3x1x17-7x1", "1-3x7", "scalar", "nchw-bias"]


@pytest.mark.parametrize("shapes", BROADCAST, ids=BROADCAST_IDS)
@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean",
                                "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual"])
def test_binary_float(rng, op, shapes):
    a, b = randn(rng, *shapes[0]), randn(rng, *shapes[1])
    if op == "Equal":
        b = np.broadcast_to(a, np.broadcast_shapes(a.shape, b.shape)).copy()
        b.flat[::3] += 1
    check(op, [a, b])


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.int8, np.uint8])
@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Min", "Equal", "Greater", "Less"])
def test_binary_int(rng, op, dtype):
    lo = 0 if dtype == np.uint8 else -50
    a = randint(rng, lo, 50, 3, 7, dtype=dtype)
    b = randint(rng, 1, 9, 7, dtype=dtype)
    if dtype != np.uint8:
        b = b * np.where(rng.random(7) > 0.5, 1, -1).astype(dtype)
    check(op, [a, b])


def test_variadic_three_inputs(rng):
    xs = [randn(rng, 3, 1, 7), randn(rng, 5, 1), randn(rng, 7)]
    for op in ("Sum", "Mean", "Max", "Min"):
        check(op, xs)


def test_pow(rng):
    check("Pow", [np.abs(randn(rng, 3, 7)) + 0.1, randn(rng, 7)])
    check("Pow", [randn(rng, 3, 7), np.array(2.0, F32)])
    check("Pow", [randn(rng, 3, 7), np.array(3, np.int64)])
    check("Pow", [randint(rng, -5, 5, 3, 7), randint(rng, 0, 4, 7)])


def test_mod(rng):
    a, b = randint(rng, -20, 20, 3, 7), randint(rng, 1, 6, 7) * np.array([1, -1] * 3 + [1])
    check("Mod", [a, b])
    check("Mod", [a, b], {"fmod": 1})
    check("Mod", [randn(rng, 3, 7) * 5, randn(rng, 7)], {"fmod": 1})


@pytest.mark.parametrize("op", ["And", "Or", "Xor"])
def test_logic(rng, op):
    check(op, [rng.random((3, 7, 1)) > 0.5, rng.random((7, 17)) > 0.5])


def test_where(rng):
    check("Where", [rng.random((3, 1, 17)) > 0.5, randn(rng, 7, 1), randn(rng, 17)])
    check("Where", [rng.random((7,)) > 0.5, randint(rng, 0, 9, 3, 7), np.array(-1, np.int64)])


def test_clip(rng):
    x = randn(rng, 3, 7, 17)
    check("Clip", [x, np.array(-0.5, F32), np.array(0.7, F32)])
    check("Clip", [x, np.array(-0.5, F32)])
    check("Clip", [x, None, np.array(0.2, F32)])
    check("Clip", [x])
    check("Clip", [randint(rng, -9, 9, 17, dtype=np.int32), np.array(-3, np.int32), np.array(4, np.int32)])
    check("Clip", [x], {"min": -0.1, "max": 0.3}, opset=6)


def test_prelu(rng):
    check("PRelu", [randn(rng, 2, 3, 7, 5), randn(rng, 3, 1, 1)])
    check("PRelu", [randn(rng, 2, 3, 7, 5), randn(rng, 5)])
    check("PRelu", [randn(rng, 17), np.array([0.25], F32)])


CASTS = [(F32, np.int32), (F32, np.int64), (F32, np.int8), (F32, F16), (F32, F64), (F32, np.bool_),
         (F16, F32), (F64, F32), (F64, F16), (np.int64, F32), (np.int32, np.int64), (np.int64, np.int32),
         (np.bool_, F32), (np.uint8, F32), (np.int8, np.int32), (F32, np.uint8)]


@pytest.mark.parametrize("src,dst", CASTS, ids=[f"{np.dtype(a).name}-{np.dtype(b).name}" for a, b in CASTS])
def test_cast(rng, src, dst):
    if src == np.bool_:
        x = rng.random((3, 7)) > 0.5
    elif np.dtype(src).kind in "iu":
        x = randint(rng, 0 if src == np.uint8 else -100, 100, 3, 7, dtype=src)
    else:
        x = (randn(rng, 3, 7, dtype=F64) * 40).astype(src)
        if np.dtype(dst).kind in "iu":
            x = np.clip(x, -100 if np.dtype(dst).kind == "i" else 0, 100).astype(src)
        x.flat[0] = 0
    to = helper.np_dtype_to_tensor_dtype(np.dtype(dst))
    check("Cast", [x], {"to": to})
    assert run_ref("Cast", [x], {"to": np.dtype(dst).name}, 1)[0].dtype == np.dtype(dst)


def test_cast_out_of_scope_dtype(rng):
    with pytest.raises(UnsupportedOperatorError, match="bfloat16"):
        run_ref("Cast", [randn(rng, 3)], {"to": 16}, 1)


# ----------------------------------------------------------------------------- gemm
GEMMS = [
    ((3, 7), (7, 17), (17,), {}),
    ((7, 3), (7, 17), (3, 17), {"transA": 1}),
    ((3, 7), (17, 7), (1,), {"transB": 1, "alpha": 0.5, "beta": 2.0}),
    ((7, 3), (17, 7), (3, 1), {"transA": 1, "transB": 1, "beta": 0.0}),
    ((1, 1), (1, 1), None, {"alpha": 3.0}),
    ((3, 7), (7, 17), (), {}),
]


@pytest.mark.parametrize("a,b,c,attrs", GEMMS, ids=[str(i) for i in range(len(GEMMS))])
def test_gemm(rng, a, b, c, attrs):
    inputs = [randn(rng, *a), randn(rng, *b)] + ([randn(rng, *c)] if c is not None else [])
    check("Gemm", inputs, attrs, rtol=1e-5, atol=1e-5)


MATMULS = [((3,), (3,)), ((7,), (7, 17)), ((3, 7), (7,)), ((3, 7), (7, 17)), ((2, 1, 7, 3), (5, 3, 4)),
           ((1, 17), (17, 1)), ((2, 3, 7, 17), (17, 3))]


@pytest.mark.parametrize("a,b", MATMULS, ids=[f"{a}x{b}" for a, b in MATMULS])
def test_matmul(rng, a, b):
    check("MatMul", [randn(rng, *a), randn(rng, *b)], rtol=1e-5, atol=1e-5)


def test_matmul_f16_int(rng):
    check("MatMul", [randn(rng, 3, 7, dtype=F16), randn(rng, 7, 5, dtype=F16)], rtol=3e-3, atol=3e-3)
    check("MatMul", [randint(rng, -9, 9, 3, 7, dtype=np.int32), randint(rng, -9, 9, 7, 5, dtype=np.int32)])


def test_matmul_integer(rng):
    a, b = randint(rng, 0, 255, 3, 17, dtype=np.uint8), randint(rng, -128, 127, 17, 5, dtype=np.int8)
    check("MatMulInteger", [a, b, np.array(3, np.uint8), np.array(-2, np.int8)])
    check("MatMulInteger", [a, randint(rng, 0, 255, 17, 5, dtype=np.uint8)])


# ----------------------------------------------------------------------------- conv
CONVS = [
    # id, x shape, w shape, attrs
    ("1x1", (1, 3, 7, 7), (5, 3, 1, 1), {}),
    ("3x3-pad1", (2, 3, 17, 7), (4, 3, 3, 3), {"pads": [1, 1, 1, 1]}),
    ("stride2", (1, 3, 17, 17), (4, 3, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("stride2-asym-pad", (1, 3, 16, 17), (4, 3, 3, 3), {"strides": [2, 2], "pads": [0, 1, 1, 2]}),
    ("dilation2", (1, 3, 17, 17), (4, 3, 3, 3), {"dilations": [2, 2], "pads": [2, 2, 2, 2]}),
    ("dilation-stride", (1, 2, 17, 13), (3, 2, 3, 2), {"dilations": [2, 3], "strides": [3, 2]}),
    ("group2", (1, 4, 7, 7), (6, 2, 3, 3), {"group": 2, "pads": [1, 1, 1, 1]}),
    ("depthwise", (2, 6, 17, 7), (6, 1, 3, 3), {"group": 6, "pads": [1, 1, 1, 1]}),
    ("depthwise-mult2", (1, 3, 7, 7), (6, 1, 5, 5), {"group": 3, "strides": [2, 2], "pads": [2, 2, 2, 2]}),
    ("kernel>input", (1, 2, 3, 3), (3, 2, 5, 5), {"pads": [2, 2, 2, 2]}),
    ("same-upper", (1, 3, 17, 16), (4, 3, 4, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ("same-lower", (1, 3, 17, 16), (4, 3, 4, 3), {"auto_pad": "SAME_LOWER", "strides": [2, 3]}),
    ("valid", (1, 3, 17, 16), (4, 3, 3, 3), {"auto_pad": "VALID", "strides": [2, 2]}),
    ("1d", (2, 3, 17), (5, 3, 3), {"pads": [1, 2], "strides": [2]}),
    ("1d-dil-group", (1, 4, 17), (4, 2, 3), {"dilations": [3], "group": 2}),
    ("3d", (1, 2, 7, 5, 6), (3, 2, 3, 3, 2), {"pads": [1, 1, 0, 1, 1, 1], "strides": [2, 1, 2]}),
    ("single-pixel", (1, 1, 1, 1), (1, 1, 1, 1), {}),
]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("cid,xs,ws,attrs", CONVS, ids=[c[0] for c in CONVS])
def test_conv(rng, cid, xs, ws, attrs, bias):
    inputs = [randn(rng, *xs), randn(rng, *ws)] + ([randn(rng, ws[0])] if bias else [])
    check("Conv", inputs, attrs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype,tol", [(F16, 5e-3), (F64, 1e-5)], ids=["f16", "f64"])
def test_conv_f16_f64(rng, dtype, tol):
    # onnxruntime has no float16/float64 Conv on CPU: compare with its float32 result
    x, w = randn(rng, 1, 3, 7, 7, dtype=dtype), randn(rng, 4, 3, 3, 3, dtype=dtype)
    attrs = {"pads": [1, 1, 1, 1], "strides": [2, 1]}
    got = run_ref("Conv", [x, w], attrs, 1)[0]
    want = run_ort("Conv", [x.astype(F32), w.astype(F32)], attrs, 1, 21)[0]
    assert got.dtype == dtype
    np.testing.assert_allclose(got.astype(F32), want, rtol=tol, atol=tol)


def test_conv_large_image_is_vectorized(rng):
    """A 640x640 first layer must run in well under a second (no per-pixel Python loops)."""
    import time
    x, w = randn(rng, 1, 3, 640, 640), randn(rng, 16, 3, 3, 3)
    t = time.perf_counter()
    y = run_ref("Conv", [x, w], {"strides": [2, 2], "pads": [1, 1, 1, 1]}, 1)[0]
    assert y.shape == (1, 16, 320, 320)
    assert time.perf_counter() - t < 3.0
    want = run_ort("Conv", [x, w], {"strides": [2, 2], "pads": [1, 1, 1, 1]}, 1, 21)[0]
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)


CONV_TRANSPOSES = [
    ("s1", (1, 3, 5, 5), (3, 4, 3, 3), {}),
    ("s2", (2, 3, 5, 7), (3, 4, 3, 3), {"strides": [2, 2]}),
    ("s2-pads", (1, 3, 5, 7), (3, 4, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("s2-outpad", (1, 3, 5, 7), (3, 4, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1],
                                                "output_padding": [1, 1]}),
    ("k4s2p1", (1, 4, 7, 7), (4, 2, 4, 4), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("dilation", (1, 2, 5, 5), (2, 3, 3, 3), {"dilations": [2, 2]}),
    ("group2", (1, 4, 5, 5), (4, 3, 3, 3), {"group": 2, "strides": [2, 1]}),
    ("depthwise", (1, 4, 5, 5), (4, 1, 2, 2), {"group": 4, "strides": [2, 2]}),
    ("output-shape", (1, 3, 5, 5), (3, 2, 3, 3), {"strides": [2, 2], "output_shape": [10, 10]}),
    ("same-upper", (1, 3, 5, 6), (3, 2, 3, 3), {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ("1d", (1, 3, 7), (3, 2, 3), {"strides": [3], "pads": [1, 0]}),
    ("3d", (1, 2, 3, 4, 3), (2, 2, 2, 3, 2), {"strides": [2, 1, 2]}),
]


@pytest.mark.parametrize("cid,xs,ws,attrs", CONV_TRANSPOSES, ids=[c[0] for c in CONV_TRANSPOSES])
def test_conv_transpose(rng, cid, xs, ws, attrs):
    m = ws[1] * attrs.get("group", 1)
    check("ConvTranspose", [randn(rng, *xs), randn(rng, *ws), randn(rng, m)], attrs, rtol=1e-4, atol=1e-5)


POOLS = [
    ("k2s2", (1, 3, 8, 8), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ("k3s2p1", (2, 3, 17, 7), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("k3s1-asym", (1, 2, 7, 7), {"kernel_shape": [3, 2], "pads": [0, 1, 1, 0]}),
    ("ceil", (1, 2, 17, 16), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ("ceil-pads", (1, 2, 7, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                                 "ceil_mode": 1}),
    ("same-upper", (1, 2, 17, 16), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ("same-lower", (1, 2, 7, 8), {"kernel_shape": [2, 3], "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    ("1d", (2, 3, 17), {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}),
    ("3d", (1, 2, 5, 6, 7), {"kernel_shape": [2, 3, 3], "strides": [1, 2, 2]}),
    ("global-like", (1, 3, 5, 5), {"kernel_shape": [5, 5]}),
]


@pytest.mark.parametrize("pid,xs,attrs", POOLS, ids=[p[0] for p in POOLS])
def test_max_pool(rng, pid, xs, attrs):
    check("MaxPool", [randn(rng, *xs)], attrs)


def test_max_pool_dilation_indices_int(rng):
    x = randn(rng, 2, 3, 9, 8)
    check("MaxPool", [x], {"kernel_shape": [2, 2], "dilations": [2, 2], "strides": [1, 2]})
    check("MaxPool", [x], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, num_outputs=2)
    check("MaxPool", [x], {"kernel_shape": [3, 2], "strides": [2, 1], "storage_order": 1}, num_outputs=2)
    check("MaxPool", [randint(rng, -128, 127, 1, 2, 7, 7, dtype=np.int8)],
          {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]})
    check("MaxPool", [randint(rng, 0, 255, 1, 2, 7, 7, dtype=np.uint8)], {"kernel_shape": [2, 2]})


@pytest.mark.parametrize("include_pad", [0, 1])
@pytest.mark.parametrize("pid,xs,attrs", POOLS, ids=[p[0] for p in POOLS])
def test_average_pool(rng, pid, xs, attrs, include_pad):
    check("AveragePool", [randn(rng, *xs)], dict(attrs, count_include_pad=include_pad), rtol=1e-5)


def test_average_pool_dilation(rng):
    check("AveragePool", [randn(rng, 1, 2, 9, 8)], {"kernel_shape": [2, 2], "dilations": [2, 2],
                                                     "pads": [1, 1, 1, 1]}, opset=19)


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("shape", [(2, 3, 7, 5), (1, 3, 17), (1, 2, 3, 4, 5), (1, 1, 1, 1)])
def test_global_pool(rng, op, shape):
    check(op, [randn(rng, *shape)])


# ----------------------------------------------------------------------------- shapes
def i64(*v):
    return np.array(v, dtype=np.int64)


def test_shape_size(rng):
    x = randn(rng, 2, 3, 7, 1)
    check("Shape", [x])
    check("Shape", [x], {"start": 1, "end": -1})
    check("Shape", [x], {"start": -10, "end": 10})
    check("Shape", [x], {"start": 3, "end": 1})
    check("Size", [x])


def test_reshape(rng):
    x = randn(rng, 2, 3, 7)
    check("Reshape", [x, i64(0, -1)])
    check("Reshape", [x, i64(-1, 7)])
    check("Reshape", [x, i64(7, 0, 2)])
    check("Reshape", [randn(rng, 0, 3), i64(3, 0)], {"allowzero": 1})
    check("Flatten", [x], {"axis": 0})
    check("Flatten", [x], {"axis": -1})
    check("Flatten", [x], {"axis": 3})


def test_transpose_squeeze_unsqueeze(rng):
    x = randn(rng, 2, 1, 7, 1)
    check("Transpose", [x])
    check("Transpose", [x], {"perm": [2, 0, 3, 1]})
    check("Squeeze", [x])
    check("Squeeze", [x, i64(-1)])
    check("Squeeze", [x, i64(1, 3)])
    check("Unsqueeze", [x, i64(0, -1)])
    check("Unsqueeze", [x, i64(2, 5)])
    check("Unsqueeze", [np.array(3.0, F32), i64(0)])
    check("Squeeze", [x], {"axes": [1]}, opset=11)
    check("Unsqueeze", [x], {"axes": [-1, 0]}, opset=11)


def test_concat_split(rng):
    a, b, c = randn(rng, 2, 3, 7), randn(rng, 2, 1, 7), randn(rng, 2, 0, 7)
    check("Concat", [a, b, c], {"axis": 1})
    check("Concat", [a, a], {"axis": -1})
    x = randn(rng, 3, 17)
    check("Split", [x, i64(5, 2, 10)], {"axis": -1}, num_outputs=3)
    check("Split", [x], {"axis": 1, "num_outputs": 4}, num_outputs=4)
    check("Split", [x], {"axis": 0}, num_outputs=3, opset=13)
    check("Split", [x], {"axis": 1, "split": [7, 10]}, num_outputs=2, opset=11)


SLICES = [
    ((1,), (3,), None, None),
    ((0, 1), (-1, 100), None, None),
    ((-100,), (100,), (1,), None),
    ((5, -1), (0, 0), (1, 2), (-2, -1)),
    ((100,), (-100,), (-1,), (-3,)),
    ((-1,), (-1000,), (0,), (-1,)),
    ((2,), (2,), (0,), None),
    ((0, 0), (7, 5), (-1, -2), (2, 3)),
    ((1,), (-1,), (2,), (-1,)),
    ((-2,), (-8,), (1,), (-1,)),
]


@pytest.mark.parametrize("starts,ends,axes,steps", SLICES, ids=[str(i) for i in range(len(SLICES))])
def test_slice(rng, starts, ends, axes, steps):
    x = randn(rng, 3, 7, 5)
    inputs = [x, i64(*starts), i64(*ends)]
    if axes is not None:
        inputs.append(i64(*axes))
    if steps is not None:
        inputs.append(i64(*steps))
    check("Slice", inputs)


def test_gather(rng):
    x = randn(rng, 3, 7, 5)
    check("Gather", [x, i64(2, -1, 0)], {"axis": 1})
    check("Gather", [x, np.array(-1, np.int64)])
    check("Gather", [x, np.array([[0, 2], [1, -3]], np.int32)], {"axis": -1})
    check("GatherElements", [x, randint(rng, -7, 7, 3, 2, 5)], {"axis": 1})
    check("GatherND", [x, randint(rng, 0, 3, 4, 2)])


def test_expand_tile(rng):
    check("Expand", [randn(rng, 3, 1), i64(2, 1, 7)])
    check("Expand", [randn(rng, 3, 7), i64(1, 1)])
    check("Expand", [np.array(2, np.int64), i64(3, 2)])
    check("Tile", [randn(rng, 2, 3), i64(3, 1)])
    check("Tile", [randint(rng, 0, 9, 1, 3, 1), i64(2, 2, 7)])


PADS = [
    ("constant", [1, 2, 0, 3], None),
    ("constant", [0, -1, 1, 2], None),
    ("reflect", [2, 1, 1, 3], None),
    ("edge", [1, 3, 2, 0], None),
    ("wrap", [2, 1, 3, 2], None),
    ("constant", [1, 2], [-1]),
    ("reflect", [2, 1], [0]),
]


@pytest.mark.parametrize("mode,pads,axes", PADS, ids=[f"{m}{i}" for i, (m, _, _) in enumerate(PADS)])
def test_pad(rng, mode, pads, axes):
    x = randn(rng, 4, 7)
    inputs = [x, i64(*pads), np.array(1.5, F32)]
    if axes is not None:
        inputs.append(i64(*axes))
    check("Pad", inputs, {"mode": mode})


def test_pad_4d_int(rng):
    check("Pad", [randint(rng, 0, 9, 1, 2, 3, 3), i64(0, 0, 1, 1, 0, 0, 1, 1)])
    check("Pad", [randn(rng, 1, 2, 5, 5), i64(0, 0, 2, 2, 0, 0, 2, 2)], {"mode": "reflect"})


RESIZES = [
    # id, x shape, scales, sizes, attrs
    ("nearest-x2-asym-floor", (1, 2, 3, 5), (1, 1, 2, 2), None,
     {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}),
    ("nearest-default", (1, 2, 5, 7), (1, 1, 2.0, 1.5), None, {}),
    ("nearest-down", (1, 2, 17, 7), (1, 1, 0.5, 0.6), None, {"mode": "nearest"}),
    ("nearest-sizes-ceil", (1, 1, 3, 5), None, (1, 1, 7, 8),
     {"nearest_mode": "ceil", "coordinate_transformation_mode": "half_pixel"}),
    ("nearest-round-ceil-align", (1, 1, 4, 5), None, (1, 1, 7, 3),
     {"nearest_mode": "round_prefer_ceil", "coordinate_transformation_mode": "align_corners"}),
    ("linear-x2", (1, 2, 3, 5), (1, 1, 2, 2), None, {"mode": "linear"}),
    ("linear-down", (2, 1, 17, 7), (1, 1, 0.5, 0.4), None, {"mode": "linear"}),
    ("linear-align", (1, 2, 3, 5), None, (1, 2, 7, 9), {"mode": "linear",
                                                        "coordinate_transformation_mode": "align_corners"}),
    ("linear-pytorch", (1, 2, 7, 5), None, (1, 2, 3, 1), {"mode": "linear",
                                                          "coordinate_transformation_mode": "pytorch_half_pixel"}),
    ("linear-asym", (1, 1, 4, 4), (1, 1, 1.5, 2.5), None, {"mode": "linear",
                                                           "coordinate_transformation_mode": "asymmetric"}),
    ("cubic", (1, 2, 5, 7), (1, 1, 2, 1.5), None, {"mode": "cubic"}),
    ("cubic-down-exclude", (1, 1, 9, 8), (1, 1, 0.6, 0.5), None, {"mode": "cubic", "cubic_coeff_a": -0.5,
                                                                  "exclude_outside": 1}),
    ("linear-3d", (1, 1, 3, 4, 5), (1, 1, 2, 1.5, 0.5), None, {"mode": "linear"}),
    ("linear-2d-input", (5, 7), (2, 0.5), None, {"mode": "linear"}),
    ("linear-antialias", (1, 1, 16, 12), (1, 1, 0.3, 0.5), None, {"mode": "linear", "antialias": 1}),
    ("cubic-antialias", (1, 1, 16, 12), None, (1, 1, 5, 4), {"mode": "cubic", "antialias": 1}),
    ("axes", (1, 2, 5, 7), (2.0, 3.0), None, {"mode": "linear", "axes": [3, 2]}),
    ("not-larger", (1, 2, 5, 7), None, (9, 9), {"axes": [2, 3], "keep_aspect_ratio_policy": "not_larger"}),
    ("not-smaller", (1, 2, 5, 7), None, (9, 9), {"axes": [2, 3], "keep_aspect_ratio_policy": "not_smaller",
                                                 "mode": "linear"}),
    ("half-pixel-symmetric", (1, 1, 5, 7), (1, 1, 1.7, 0.6), None, {"mode": "linear",
                                                                    "coordinate_transformation_mode":
                                                                    "half_pixel_symmetric"}),
]


@pytest.mark.parametrize("rid,xs,scales,sizes,attrs", RESIZES, ids=[r[0] for r in RESIZES])
def test_resize(rng, rid, xs, scales, sizes, attrs):
    x = randn(rng, *xs)
    inputs = [x, None, np.array(scales, F32) if scales else None]
    if sizes:
        inputs.append(i64(*sizes))
    check("Resize", inputs, attrs, rtol=1e-4, atol=1e-5)


def test_resize_negative_axes(rng):
    """onnxruntime ignores negative Resize axes (it returns the input): compare with positive ones."""
    x, sizes = randn(rng, 1, 2, 5, 7), i64(9, 9)
    attrs = {"keep_aspect_ratio_policy": "not_smaller", "mode": "linear"}
    want = run_ref("Resize", [x, None, None, sizes], dict(attrs, axes=[2, 3]), 1)[0]
    got = run_ref("Resize", [x, None, None, sizes], dict(attrs, axes=[-2, -1]), 1)[0]
    assert got.shape == (1, 2, 9, 13)
    np.testing.assert_array_equal(got, want)


def test_resize_crop_and_uint8(rng):
    x = randn(rng, 1, 1, 7, 9)
    roi = np.array([0, 0, 0.2, 0.3, 1, 1, 0.9, 1.2], F32)
    check("Resize", [x, roi, None, i64(1, 1, 5, 6)], {"mode": "linear", "extrapolation_value": -3.0,
                                                        "coordinate_transformation_mode": "tf_crop_and_resize"})
    img = randint(rng, 0, 256, 1, 3, 5, 7, dtype=np.uint8)
    check("Resize", [img, None, np.array([1, 1, 2, 2], F32)], {"mode": "nearest"})


def test_resize_antialias_nearest_rejected(rng):
    with pytest.raises(UnsupportedOperatorError, match="antialias"):
        run_ref("Resize", [randn(rng, 1, 1, 4, 4), None, np.array([1, 1, .5, .5], F32)],
                {"mode": "nearest", "antialias": 1}, 1)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_empty_axis(mode):
    """An empty axis resizes to an empty one (as onnxruntime does); to a non-empty size there is
    nothing to sample: a clear InvalidInputError, not a division by zero."""
    x = np.zeros((1, 0, 4, 4), F32)
    y = run_ref("Resize", [x, None, None, i64(1, 0, 8, 6)], {"mode": mode}, 1)[0]
    assert y.shape == (1, 0, 8, 6)
    with pytest.raises(InvalidInputError, match="axis 1 of the input is empty"):
        run_ref("Resize", [x, None, None, i64(1, 3, 8, 8)], {"mode": mode}, 1)
    with pytest.raises(InvalidInputError, match="empty"):
        run_ref("Resize", [x, None, None, i64(3, 8)], {"mode": mode, "axes": [1, 2]}, 1)


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_space(rng, mode):
    check("DepthToSpace", [randn(rng, 2, 12, 3, 5)], {"blocksize": 2, "mode": mode})
    check("SpaceToDepth", [randn(rng, 2, 3, 6, 9)], {"blocksize": 3})


# ----------------------------------------------------------------------------- reductions
REDUCES = ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceSumSquare", "ReduceLogSumExp", "ReduceLogSum"]
AXES = [None, (1,), (-1,), (0, 2), (-3, -1), ()]


@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("axes", AXES, ids=["all", "1", "-1", "0,2", "-3,-1", "empty"])
@pytest.mark.parametrize("op", REDUCES)
def test_reduce(rng, op, axes, keepdims):
    x = randn(rng, 3, 7, 5)
    if op in ("ReduceLogSum", "ReduceProd"):
        x = np.abs(x) + 0.5
    inputs = [x] if axes is None else [x, i64(*axes)]
    check(op, inputs, {"keepdims": keepdims}, opset=18, rtol=1e-5, atol=1e-5)


def test_reduce_noop_and_int(rng):
    x = randn(rng, 3, 7)
    check("ReduceSum", [x, np.zeros(0, np.int64)], {"noop_with_empty_axes": 1})
    check("ReduceMax", [randint(rng, -9, 9, 3, 7, dtype=np.int32), i64(1)], opset=18)
    check("ReduceSum", [randint(rng, -9, 9, 3, 7), i64(0)])
    check("ReduceMean", [x], {"axes": [1], "keepdims": 0}, opset=11)
    check("ReduceMean", [randn(rng, 3, 7, dtype=F16), i64(1)], opset=18, rtol=2e-3)


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("attrs", [{}, {"axis": -1}, {"axis": 1, "keepdims": 0},
                                   {"axis": 1, "select_last_index": 1}, {"axis": 0, "select_last_index": 1,
                                                                         "keepdims": 0}])
def test_arg(rng, op, attrs):
    check(op, [randint(rng, 0, 3, 3, 7, 5, dtype=np.int32)], attrs)  # many ties
    check(op, [randn(rng, 3, 7, 5)], attrs)


# ----------------------------------------------------------------------------- nn
def test_batch_norm(rng):
    x = randn(rng, 2, 3, 7, 5)
    params = [randn(rng, 3), randn(rng, 3), randn(rng, 3), np.abs(randn(rng, 3)) + 0.1]
    check("BatchNormalization", [x] + params, {"epsilon": 1e-3})
    check("BatchNormalization", [randn(rng, 4, 3)] + params)
    check("BatchNormalization", [randn(rng, 2, 3, 17)] + params)


@pytest.mark.parametrize("axis", [-1, 1, -2])
def test_layer_norm(rng, axis):
    x = randn(rng, 2, 7, 17) * 3 + 1
    check("LayerNormalization", [x, randn(rng, *x.shape[axis:]), randn(rng, *x.shape[axis:])],
          {"axis": axis, "epsilon": 1e-3}, num_outputs=3, rtol=1e-4, atol=1e-5)
    check("LayerNormalization", [x, randn(rng, *x.shape[axis:])], {"axis": axis}, rtol=1e-4, atol=1e-5)


def test_instance_norm(rng):
    check("InstanceNormalization", [randn(rng, 2, 3, 7, 5), randn(rng, 3), randn(rng, 3)], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [-1, 0, 1, 2])
def test_softmax(rng, op, axis):
    x = randn(rng, 3, 7, 5) * 4
    check(op, [x], {"axis": axis})


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [None, 0, 2, -1])
def test_softmax_coerce_2d(rng, op, axis):
    """opset < 13: flatten to 2-D at axis; the importer passes coerce_2d=1 to the reference op."""
    x = randn(rng, 3, 7, 5) * 4
    attrs = {} if axis is None else {"axis": axis}
    check(op, [x], attrs, opset=11, ref_attrs={"coerce_2d": 1})


def _rnn_inputs(rng, gates, seq, batch, inp, hidden, dirs, bias=True, lens=None, init=False, peep=False,
                cell=True, layout=0):
    x = randn(rng, seq, batch, inp) if layout == 0 else randn(rng, batch, seq, inp)
    w = randn(rng, dirs, gates * hidden, inp) * 0.5
    r = randn(rng, dirs, gates * hidden, hidden) * 0.5
    inputs = [x, w, r, randn(rng, dirs, 2 * gates * hidden) * 0.3 if bias else None,
              np.array(lens, np.int32) if lens is not None else None]
    state = (dirs, batch, hidden) if layout == 0 else (batch, dirs, hidden)
    if init:
        inputs.append(randn(rng, *state))
        if cell:
            inputs.append(randn(rng, *state))
    if peep:
        while len(inputs) < 7:
            inputs.append(None)
        inputs.append(randn(rng, dirs, 3 * hidden) * 0.3)
    while inputs[-1] is None:
        inputs.pop()
    return inputs


LSTMS = [
    ("forward", {}, {}),
    ("reverse", {"direction": "reverse"}, {}),
    ("bidirectional", {"direction": "bidirectional"}, {"init": True}),
    ("no-bias", {}, {"bias": False}),
    ("seq-lens", {"direction": "bidirectional"}, {"lens": [5, 2, 1], "init": True}),
    ("peepholes", {}, {"peep": True, "init": True}),
    ("clip", {"clip": 0.5}, {}),
    ("activations", {"activations": ["HardSigmoid", "Tanh", "Relu"], "activation_alpha": [0.3],
                     "activation_beta": [0.4]}, {}),
]


@pytest.mark.parametrize("lid,attrs,opts", LSTMS, ids=[c[0] for c in LSTMS])
def test_lstm(rng, lid, attrs, opts):
    dirs = 2 if attrs.get("direction") == "bidirectional" else 1
    inputs = _rnn_inputs(rng, 4, 5, 3, 7, 4, dirs, **opts)
    check("LSTM", inputs, dict(attrs, hidden_size=4), num_outputs=3, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op,gates", [("LSTM", 4), ("GRU", 3), ("RNN", 1)])
def test_recurrent_layout1(rng, op, gates):
    """onnxruntime has no layout=1 kernel: layout 1 must equal layout 0 on transposed tensors."""
    cell = op == "LSTM"
    inputs = _rnn_inputs(rng, gates, 5, 3, 7, 4, 2, init=True, cell=cell, lens=[5, 2, 4], layout=1)
    attrs = {"hidden_size": 4, "direction": "bidirectional"}
    n = 3 if cell else 2
    got = run_ref(op, inputs, dict(attrs, layout=1), n)
    swapped = [np.swapaxes(v, 0, 1) if i in (0, 5, 6) else v for i, v in enumerate(inputs)]
    want = run_ort(op, swapped, attrs, n, 21)
    np.testing.assert_allclose(got[0], np.transpose(want[0], (2, 0, 1, 3)), rtol=1e-4, atol=1e-5)
    for g, w in zip(got[1:], want[1:]):
        np.testing.assert_allclose(g, np.swapaxes(w, 0, 1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op,gates", [("GRU", 3), ("RNN", 1)])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_gru_rnn(rng, op, gates, direction):
    dirs = 2 if direction == "bidirectional" else 1
    inputs = _rnn_inputs(rng, gates, 5, 3, 7, 4, dirs, init=True, cell=False, lens=[5, 3, 1])
    check(op, inputs, {"hidden_size": 4, "direction": direction}, num_outputs=2, rtol=1e-4, atol=1e-5)
    if op == "GRU":
        check(op, inputs, {"hidden_size": 4, "direction": direction, "linear_before_reset": 1},
              num_outputs=2, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attrs", [{}, {"largest": 0}, {"axis": 0}, {"axis": -2, "largest": 0}])
def test_topk(rng, attrs):
    check("TopK", [randint(rng, 0, 4, 3, 7, 5).astype(F32), i64(3)], attrs, num_outputs=2)
    check("TopK", [randn(rng, 3, 7, 5), i64(1)], attrs, num_outputs=2)


@pytest.mark.parametrize("attrs", [{}, {"exclusive": 1}, {"reverse": 1}, {"exclusive": 1, "reverse": 1}])
def test_cumsum(rng, attrs):
    check("CumSum", [randn(rng, 3, 7), np.array(1, np.int64)], attrs)
    check("CumSum", [randint(rng, -9, 9, 3, 7, dtype=np.int32), np.array(-2, np.int32)], attrs)


@pytest.mark.parametrize("eq,shapes", [("ij,jk->ik", [(3, 7), (7, 5)]), ("bhqd,bhkd->bhqk", [(2, 3, 5, 4)] * 2),
                                       ("ii->i", [(5, 5)]), ("ij->", [(3, 7)]), ("i,j->ij", [(3,), (7,)])])
def test_einsum(rng, eq, shapes):
    check("Einsum", [randn(rng, *s) for s in shapes], {"equation": eq}, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- generators
def test_generators(rng):
    check("ConstantOfShape", [i64(2, 3)])
    check("ConstantOfShape", [i64(2, 0, 3)], {"value": helper.make_tensor("v", onnx.TensorProto.INT32, [1], [7])})
    check("Range", [np.array(1, np.int64), np.array(10, np.int64), np.array(3, np.int64)])
    check("Range", [np.array(10, np.int32), np.array(1, np.int32), np.array(-2, np.int32)])
    check("Range", [np.array(0.5, F32), np.array(3.2, F32), np.array(0.3, F32)])
    check("Range", [np.array(5, np.int64), np.array(1, np.int64), np.array(1, np.int64)])
    check("EyeLike", [randn(rng, 3, 5)], {"k": 1})
    check("EyeLike", [randn(rng, 4, 3)], {"k": -1, "dtype": onnx.TensorProto.INT32})


def test_constant():
    check("Constant", [], {"value": helper.make_tensor("v", onnx.TensorProto.FLOAT, [2], [1.5, -2.0])})
    check("Constant", [], {"value_float": 0.25})
    check("Constant", [], {"value_ints": [1, 2, 3]})
    check("Constant", [], {"value_int": 5})


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("op,inputs,attrs", [
    ("Gelu", [np.ones(3, F32)], {"approximate": "erf"}),
    ("Pad", [np.ones((2, 2), F32), i64(1, 1, 1, 1)], {"mode": "mirror"}),
    ("Conv", [np.ones((1, 1, 3, 3), F32), np.ones((1, 1, 2, 2), F32)], {"auto_pad": "FULL"}),
    ("Resize", [np.ones((1, 1, 2, 2), F32), None, np.array([1, 1, 2, 2], F32)], {"mode": "area"}),
    ("LSTM", [np.ones((1, 1, 2), F32), np.ones((1, 4, 2), F32), np.ones((1, 4, 1), F32)],
     {"activations": ["Swish", "Tanh", "Tanh"]}),
])
def test_unsupported_attribute_raises(op, inputs, attrs):
    with pytest.raises(UnsupportedOperatorError, match=op):
        run_ref(op, inputs, attrs, 1)
