"""The IR verifier: structure, dtypes, initializers and quantization parameters."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qinfer.errors import ModelFormatError, QinferError
from qinfer.ir import serialize
from qinfer.ir.graph import Graph, Node, QuantParams, Value
from qinfer.ir.verify import problems, verify


def chain(**kw):
    """x -> Conv(w, b) -> Relu -> y, with optional overrides."""
    args = dict(
        name="chain",
        nodes=[Node("Conv", ("x", "w", "b"), ("c",), {"pads": [1, 1, 1, 1]}, "conv"),
               Node("Relu", ("c",), ("y",), {}, "relu")],
        inputs=[Value("x", "float32", ("batch", 3, "h", "w"))],
        outputs=[Value("y", "float32", ("batch", 8, "h", "w"))],
        initializers={"w": np.zeros((8, 3, 3, 3), np.float32), "b": np.zeros(8, np.float32)},
        value_info={"c": Value("c", "float32", None)},
    )
    args.update(kw)
    return Graph(**args)


def fails(g, *needles):
    with pytest.raises(ModelFormatError) as e:
        verify(g)
    msg = str(e.value)
    for n in needles:
        assert n in msg, msg
    assert "\n" not in msg                 # one line, for the CLI
    assert isinstance(e.value, QinferError)
    return e.value


def test_valid_graph_passes():
    verify(chain())
    verify(Graph("empty"))


def test_omitted_optional_inputs_and_outputs():
    g = chain(nodes=[Node("Conv", ("x", "w", ""), ("c",), {}, "conv"),
                     Node("Dropout", ("c",), ("y", ""), {}, "drop")])
    verify(g)


def test_graph_input_may_also_be_an_initializer():
    g = chain(inputs=[Value("x", "float32"), Value("b", "float32", (8,))])
    verify(g)
    fails(chain(inputs=[Value("x", "float32"), Value("b", "int64", (8,))]), "'b'", "int64")


def test_output_may_be_input_or_initializer():
    verify(Graph("id", [], [Value("x", "float32")], [Value("x", "float32")]))
    verify(Graph("c", [], [], [Value("k")], {"k": np.ones(2, np.int64)}))


def test_dangling_input_names_node_and_value():
    g = chain(nodes=[Node("Conv", ("x", "w", "nope"), ("c",), {}, "conv"),
                     Node("Relu", ("c",), ("y",), {}, "relu")])
    fails(g, "node 'conv' (Conv)", "'nope'")


def test_not_topological_and_cycle():
    n1 = Node("Relu", ("c",), ("y",), {}, "relu")
    n0 = Node("Conv", ("x", "w", "b"), ("c",), {}, "conv")
    fails(chain(nodes=[n1, n0]), "node 'relu'", "produced later", "node 'conv'")
    a = Node("Add", ("x", "q"), ("p",), {}, "a")
    b = Node("Relu", ("p",), ("q",), {}, "b")
    fails(chain(nodes=[a, b], outputs=[Value("q")]), "cycle")


def test_produced_twice():
    g = chain(nodes=[Node("Relu", ("x",), ("y",), {}, "r1"),
                     Node("Relu", ("x",), ("y",), {}, "r2")])
    fails(g, "'r2'", "already produced", "'r1'")
    fails(chain(nodes=[Node("Relu", ("x",), ("w",), {}, "r")], outputs=[Value("w")]),
          "overwrites an initializer")
    fails(chain(nodes=[Node("Relu", ("x",), ("x",), {}, "r")], outputs=[Value("x")]),
          "overwrites a graph input")


def test_outputs_must_be_produced_and_unique():
    fails(chain(outputs=[Value("ghost", "float32")]), "'ghost'", "not produced")
    fails(chain(outputs=[Value("y"), Value("y")]), "listed twice")
    fails(chain(inputs=[Value("x"), Value("x")]), "listed twice")


def test_dtypes_and_shapes():
    fails(chain(inputs=[Value("x", "bfloat16")]), "'x'", "bfloat16")
    fails(chain(inputs=[Value("x", "float32", (-1, 3))]), "dimension -1")
    fails(chain(inputs=[Value("x", "float32", (2.5,))]), "dimension 2.5")
    fails(chain(value_info={"c": Value("c", "string")}), "'c'", "string")
    fails(chain(value_info={"k": Value("c", "float32")}), "key 'k'")


def test_initializers():
    fails(chain(initializers={"w": [1, 2], "b": np.zeros(8, np.float32)}), "'w'", "not a numpy")
    fails(chain(initializers={"w": np.zeros(2, np.complex64), "b": np.zeros(8, np.float32)}),
          "'w'", "complex64")
    fails(chain(initializers={"w": np.array(["a"]), "b": np.zeros(8, np.float32)}), "'w'")
    fails(chain(value_info={"w": Value("w", "float16")}), "'w'", "float32", "float16")
    fails(chain(value_info={"w": Value("w", "float32", (8, 3, 3, 4))}), "'w'", "shape")
    verify(chain(value_info={"w": Value("w", "float32", (8, None, "k", 3))}))


def test_nodes_are_well_formed():
    fails(chain(nodes=[Node("", ("x",), ("y",))]), "op")
    fails(chain(nodes=[Node("Relu", ("x", 3), ("y",))]), "input 3")
    fails(chain(nodes=[Node("Relu", ("x",), ("y",), {1: 2})]), "attrs")
    fails(chain(nodes=["Relu"]), "not a Node")


def test_metadata():
    verify(chain(metadata={"custom_metadata_map": {"a": "b"}, "opset": 17}))
    fails(chain(metadata={"custom_metadata_map": {"a": 1}}), "custom_metadata_map")


def q(value_dtype="uint8", shape=(1, 8), **kw):
    """A graph whose output carries the given quantization parameters."""
    args = dict(scale=0.1, zero_point=128)
    args.update(kw)
    return Graph("q", [], [Value("x", value_dtype, shape, QuantParams(**args))],
                 [Value("x", value_dtype, shape)])


def test_qparams_valid():
    verify(q())
    verify(q("int8", zero_point=np.int8(-3)))
    verify(q("int8", (4, 8), scale=np.full(4, 0.5, np.float32), zero_point=0, axis=0))
    verify(q("int8", (4, 8), scale=np.full(4, 0.5, np.float32), zero_point=np.zeros(4, np.int8),
             axis=-2))
    verify(q("uint8", (16, 128), scale=np.ones((16, 2)), zero_point=8, axis=0, bits=4,
             group_size=64))
    verify(q("float32", zero_point=np.float32(3.0)))     # integral float zero points are fine


@pytest.mark.parametrize("kw,needle", [
    (dict(scale=0.0), "scale"), (dict(scale=-1.0), "scale"), (dict(scale=math.nan), "scale"),
    (dict(scale=math.inf), "scale"), (dict(scale="0.1"), "scale"),
    (dict(scale=np.array([], np.float32)), "scale"),
    (dict(zero_point=256), "zero_point"), (dict(zero_point=-1), "zero_point"),
    (dict(zero_point=1.5), "integral"), (dict(zero_point=None), "zero_point"),
    (dict(bits=0), "bits"), (dict(bits=33), "bits"), (dict(bits=8.0), "bits"),
    (dict(axis=2), "axis"), (dict(axis="0"), "axis"), (dict(group_size=0), "group_size"),
    (dict(scale=np.ones(3)), "per-tensor"),
    (dict(scale=np.ones(3), zero_point=np.zeros(3), axis=1), "per-channel"),
    (dict(scale=np.ones(8), zero_point=np.zeros(3), axis=1), "zero_point has 3"),
])
def test_qparams_invalid(kw, needle):
    fails(q(**kw), "'x'", needle)


def test_qparams_range_follows_dtype():
    verify(q("int8", zero_point=-128))
    fails(q("int8", zero_point=200), "[-128, 127]")
    fails(q("uint8", zero_point=-1), "[0, 255]")
    verify(q("uint8", zero_point=7, bits=4))
    fails(q("uint8", zero_point=16, bits=4), "zero_point")


def test_qparams_on_initializer_use_its_shape():
    w = np.zeros((4, 3), np.int8)
    qp = QuantParams(np.ones(4, np.float32), 0, axis=0)
    g = Graph("w", [], [], [Value("w")], {"w": w}, {"w": Value("w", "int8", None, qp)})
    verify(g)
    qp = QuantParams(np.ones(3, np.float32), 0, axis=0)
    fails(Graph("w", [], [], [Value("w")], {"w": w}, {"w": Value("w", "int8", None, qp)}),
          "per-channel")


def test_every_problem_is_listed():
    g = chain(inputs=[Value("x", "bfloat16")], outputs=[Value("ghost")],
              nodes=[Node("Relu", ("nope",), ("y",), {}, "r")])
    e = fails(g, "bfloat16", "'nope'", "'ghost'")
    assert len(e.problems) == 3
    assert problems(g) == e.problems


def test_save_refuses_an_invalid_graph():
    with pytest.raises(ModelFormatError, match="ghost"):
        serialize.to_bytes(chain(outputs=[Value("ghost")]))


@settings(max_examples=80, deadline=None)
@given(scale=st.floats(1e-30, 1e30), zp=st.integers(0, 255),
       bits=st.sampled_from([8]), n=st.integers(1, 6))
def test_valid_qparams_round_trip(scale, zp, bits, n):
    """Valid quantization parameters verify, and survive save / load exactly."""
    s = np.full(n, scale, np.float32)
    s = np.where(s > 0, s, np.float32(1e-30))
    qp = QuantParams(s, np.full(n, zp, np.uint8), axis=0, bits=bits)
    g = Graph("q", [], [], [Value("w")], {"w": np.zeros((n, 2), np.uint8)},
              {"w": Value("w", "uint8", (n, 2), qp)})
    verify(g)
    g2 = serialize.from_bytes(serialize.to_bytes(g))
    q2 = g2.value_info["w"].qparams
    assert np.array_equal(q2.scale, s) and q2.scale.dtype == np.float32
    assert np.array_equal(q2.zero_point, qp.zero_point) and q2.axis == 0 and q2.bits == bits
