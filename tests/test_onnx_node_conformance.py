"""ONNX's own node conformance cases (onnx.backend.test), run through qinfer.

Selection: every case of ``onnx.backend.test.case.node.collect_testcases`` whose nodes all use ops of
SPEC section 6 and whose tensors all have dtypes in scope (float8, bfloat16, 4-bit and string
tensors are out of scope by SPEC section 6 and are not counted). Each selected case is converted with
``qinfer.convert`` and run with ``qinfer.InferenceSession``; outputs must match ONNX's expected ones
(floats within rtol 1e-3 / atol 1e-5 or the case's own tolerance if looser; ints and bools exactly;
dtypes and shapes exactly). Cases qinfer does not pass are listed in EXCLUDED with a reason, and
EXCLUDED may hold at most 5 % of the selection.

``QINFER_CONFORMANCE_DIRECT=1`` runs each model node by node through the numpy reference ops instead
(``qinfer.reference``), with the attribute decoding and old-opset rewrites the importer does; it
tests the reference ops independently of the importer and session.
"""
import os
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402

SPEC_OPS = frozenset("""
Conv ConvTranspose Gemm MatMul BatchNormalization Relu LeakyRelu PRelu Clip Sigmoid HardSigmoid
HardSwish Tanh Erf Gelu Softmax LogSoftmax Add Sub Mul Div Pow Sqrt Exp Log Neg Abs Min Max
ReduceMean ReduceSum ReduceMax LayerNormalization GlobalAveragePool AveragePool MaxPool Concat Split
Slice Reshape Transpose Squeeze Unsqueeze Flatten Gather Shape Cast Constant ConstantOfShape Range
Expand Resize Pad Identity Equal Greater GreaterOrEqual Less LessOrEqual And Or Not IsNaN Where Tile
ArgMax ReduceL2 LSTM
""".split())

#: ONNX TensorProto codes of the dtypes in scope (SPEC section 6 plus the unsigned ints qinfer keeps)
IN_SCOPE_TYPES = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13})

DIRECT = os.environ.get("QINFER_CONFORMANCE_DIRECT", "") == "1"

#: case name -> why qinfer does not pass it (at most 5 % of the selection)
EXCLUDED = {
    "test_not_2d": "opset-1 model: the importer reads opset 7 and newer (SPEC section 6: 11 to 21)",
    "test_not_3d": "opset-1 model: the importer reads opset 7 and newer (SPEC section 6: 11 to 21)",
    "test_not_4d": "opset-1 model: the importer reads opset 7 and newer (SPEC section 6: 11 to 21)",
}

RTOL, ATOL = 1e-3, 1e-5


# ----------------------------------------------------------------------------- selection
def _tensor_types(model):
    """Every element type a model's graph mentions (inputs, outputs, initializers, attributes)."""
    g = model.graph
    types = set()
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.type.HasField("tensor_type"):
            types.add(v.type.tensor_type.elem_type)
        else:
            types.add(-1)  # sequences, maps, optionals: out of scope
    types.update(t.data_type for t in g.initializer)
    for node in g.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                types.add(a.t.data_type)
            if a.name in ("to", "dtype") and a.type == onnx.AttributeProto.INT:
                types.add(a.i)
    return types


def _collect():
    from onnx.backend.test.case.node import collect_testcases
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    selected = []
    for case in cases:
        ops = {n.op_type for n in case.model.graph.node}
        if not ops or not ops <= SPEC_OPS:
            continue
        if any(n.domain not in ("", "ai.onnx") for n in case.model.graph.node):
            continue
        if not _tensor_types(case.model) <= IN_SCOPE_TYPES:
            continue
        selected.append(case)
    return selected


CASES = _collect()


# ----------------------------------------------------------------------------- direct harness
def _attr_value(a):
    v = onnx.helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, onnx.TensorProto):
        return numpy_helper.to_array(v)
    if isinstance(v, list) and v and isinstance(v[0], bytes):
        return [s.decode() for s in v]
    if isinstance(v, list) and v and isinstance(v[0], onnx.TensorProto):
        return [numpy_helper.to_array(t) for t in v]
    return v


def _normalize(op, attrs, inputs, opset):
    """The old-opset rewrites the importer does, so that reference ops see opset-21 semantics."""
    if op in ("Softmax", "LogSoftmax", "Hardmax") and opset < 13:
        attrs["coerce_2d"] = 1
        attrs.setdefault("axis", 1)
    if op == "Resize" and opset < 11:
        inputs = [inputs[0], None, inputs[1]]
        attrs.setdefault("coordinate_transformation_mode", "asymmetric")
        attrs.setdefault("nearest_mode", "floor")
    return attrs, inputs


def run_direct(model, feeds):
    from qinfer.reference import registry
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=21)
    env = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    env.update(feeds)
    for node in model.graph.node:
        fn = registry.get(node.op_type)
        assert fn is not None, f"no reference op {node.op_type}"
        attrs = {a.name: _attr_value(a) for a in node.attribute}
        inputs = [env[i] if i else None for i in node.input]
        attrs, inputs = _normalize(node.op_type, attrs, inputs, opset)
        outs = fn(inputs, attrs, len(node.output))
        for name, val in zip(node.output, outs):
            if name:
                env[name] = np.asarray(val)
    return [env[o.name] for o in model.graph.output]


def run_qinfer(model, feeds):
    import qinfer
    sess = qinfer.InferenceSession(qinfer.convert(model))
    return sess.run(None, feeds)


# ----------------------------------------------------------------------------- tests
def _check(case, got, want, name):
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype}, expected {want.dtype}"
    assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
    if want.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=max(RTOL, case.rtol), atol=max(ATOL, case.atol),
                                   err_msg=name)
    else:
        np.testing.assert_array_equal(got, want, err_msg=name)


def _array(x):
    """Test data arrive as numpy arrays or (some cast cases) as TensorProtos."""
    return numpy_helper.to_array(x) if isinstance(x, onnx.TensorProto) else np.asarray(x)


def _feeds(case, inputs):
    names = [v.name for v in case.model.graph.input]
    return {n: _array(x) for n, x in zip(names, inputs)}


#: case name -> passed, filled by test_node_case for the pass-ratio summary
RESULTS = {}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_node_case(case):
    if case.name in EXCLUDED:
        pytest.skip(EXCLUDED[case.name])
    run = run_direct if DIRECT else run_qinfer
    RESULTS[case.name] = False
    for inputs, outputs in case.data_sets:
        got = run(case.model, _feeds(case, inputs))
        names = [v.name for v in case.model.graph.output]
        assert len(got) == len(outputs)
        for name, g, w in zip(names, got, outputs):
            _check(case, g, _array(w), f"{case.name}:{name}")
    RESULTS[case.name] = True


def test_pass_ratio():
    """Runs after the cases (file order): every non-excluded case passed."""
    wanted = [c.name for c in CASES if c.name not in EXCLUDED]
    if len(RESULTS) < len(wanted):
        pytest.skip(f"only {len(RESULTS)} of {len(wanted)} cases ran in this session")
    failed = sorted(n for n in wanted if not RESULTS.get(n))
    ratio = 1 - len(failed) / len(wanted)
    assert ratio == 1.0, f"pass ratio {ratio:.4f}: {len(failed)} failed: {failed[:20]}"


def test_exclusions_are_few_and_known():
    names = {c.name for c in CASES}
    assert len(CASES) > 500, f"only {len(CASES)} conformance cases selected"
    stale = sorted(set(EXCLUDED) - names)
    assert not stale, f"EXCLUDED lists cases that are not selected: {stale}"
    assert len(EXCLUDED) / len(CASES) <= 0.05, f"{len(EXCLUDED)} of {len(CASES)} cases excluded"
