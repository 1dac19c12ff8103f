"""Packed int8 weights of narrow layers stored compact in .qinf files and packed again at load
(quant/storage.py, the PackQC8W op)."""
import numpy as np
import pytest

import qinfer
from qinfer.ir import serialize
from qinfer.ir.graph import Graph, Node, Value
from qinfer.quant import storage
from qinfer.reference import get as reference_op
from qinfer.reference import quantized as qref

SIZES = [1, 3, 7, 17, 63, 65]


def _w(rng, shape, saturate):
    w = rng.integers(-127, 128, shape).astype(np.int8)
    if saturate:
        w.reshape(-1)[::3] = -128
        w.reshape(-1)[1::3] = 127
    return w


def _bias(rng, n):
    return rng.integers(-2 ** 20, 2 ** 20, n).astype(np.int32)


@pytest.mark.parametrize("k", SIZES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("zp", [0, 128, 255])
def test_gemm_compact_form_packs_back_byte_for_byte(rng, k, n, zp):
    w = _w(rng, (k, n), saturate=zp == 255)
    blob = qref.pack_gemm_qc8w(w, _bias(rng, n), zp)
    form = storage._compact_form(blob)
    if form is None:      # not worth it: the padding is under MIN_SAVING of the blob
        assert w.nbytes + 4 * n > (1 - storage.MIN_SAVING) * blob.nbytes
        return
    cw, cb, attrs = form
    assert attrs == {"kind": "gemm", "groups": 1, "zp_x": zp}
    np.testing.assert_array_equal(cw, w)
    again = reference_op("PackQC8W")([cw, cb], attrs, 1)[0]
    assert again.dtype == np.uint8 and again.ctypes.data % 4 == 0
    assert storage.packed_bytes(cw.shape, "gemm") == blob.nbytes
    np.testing.assert_array_equal(again, blob)


@pytest.mark.parametrize("cin, cout, groups", [(3, 8, 1), (16, 16, 16 // 4), (7, 17, 1), (6, 9, 3),
                                               (1, 65, 1), (32, 64, 1)])
@pytest.mark.parametrize("kh, kw", [(1, 1), (3, 3), (5, 5), (1, 7)])
def test_conv_compact_form_packs_back_byte_for_byte(rng, cin, cout, groups, kh, kw):
    w = _w(rng, (cout, cin // groups, kh, kw), saturate=True)
    blob = qref.pack_conv_qc8w(w, _bias(rng, cout), 37, groups)
    form = storage._compact_form(blob)
    if form is None:
        assert w.nbytes + 4 * cout > (1 - storage.MIN_SAVING) * blob.nbytes
        return
    cw, cb, attrs = form
    assert attrs == {"kind": "conv", "groups": groups, "zp_x": 37}
    np.testing.assert_array_equal(reference_op("PackQC8W")([cw, cb], attrs, 1)[0], blob)
    assert storage.packed_bytes(cw.shape, "conv", groups) == blob.nbytes


@pytest.mark.parametrize("c", SIZES + [88])
@pytest.mark.parametrize("kh, kw", [(3, 3), (5, 5), (7, 1), (1, 1)])
def test_depthwise_compact_form_packs_back_byte_for_byte(rng, c, kh, kw):
    w = _w(rng, (c, 1, kh, kw), saturate=c % 2 == 1)
    blob = qref.pack_dwconv_qc8w(w, _bias(rng, c), 200)
    form = storage._compact_form(blob)
    assert form is not None      # kernel rows in quads and 16-channel blocks: always worth it here
    cw, cb, attrs = form
    assert attrs["kind"] == "dw" and cw.shape == (c, 1, kh, kw)
    np.testing.assert_array_equal(reference_op("PackQC8W")([cw, cb], attrs, 1)[0], blob)
    assert storage.packed_bytes(cw.shape, "dw") == blob.nbytes


def test_packing_past_the_tensor_bound_is_refused_before_allocating(monkeypatch, rng):
    """A compact form whose panels would pass the bound on one value (a 1-channel layer pads to
    32 channels) is refused before the packer allocates them."""
    from qinfer.ir import verify
    w, b = _w(rng, (4096, 1), False), _bias(rng, 1)
    attrs = {"kind": "gemm", "groups": 1, "zp_x": 0}
    assert reference_op("PackQC8W")([w, b], attrs, 1)[0].nbytes == storage.packed_bytes(w.shape, "gemm")
    monkeypatch.setattr(verify, "MAX_TENSOR_BYTES", 32 * 4096)
    with pytest.raises(qinfer.InvalidInputError, match="would pack into"):
        reference_op("PackQC8W")([w, b], attrs, 1)


def test_wide_layers_stay_packed_and_memory_mapped(rng, tmp_path):
    """A 256-channel GEMM pads nothing: it keeps its panels in the file (read in place); a
    10-channel one is stored compact, and both load back byte for byte."""
    wide = qref.pack_gemm_qc8w(_w(rng, (64, 256), False), _bias(rng, 256), 3)
    narrow = qref.pack_gemm_qc8w(_w(rng, (64, 10), False), _bias(rng, 10), 3)
    assert storage._compact_form(wide) is None and storage._compact_form(narrow) is not None
    g = Graph("two", inputs=[Value("x", "uint8", [4, 64])], outputs=[Value("y", "float32", [4, 10]),
                                                                      Value("z", "float32", [4, 256])])
    g.initializers.update(wn=narrow, ww=wide, sn=np.full(10, 0.01, np.float32),
                          sw=np.full(256, 0.02, np.float32))
    g.nodes = [Node("QGemm", ("x", "wn", "sn"), ("y",), {"out_dtype": "float32"}, "narrow", "qinfer"),
               Node("QGemm", ("x", "ww", "sw"), ("z",), {"out_dtype": "float32"}, "wide", "qinfer")]
    c = storage.compact(g)
    assert [n.op for n in c.nodes] == ["PackQC8W", "QGemm", "QGemm"]
    assert "wn" not in c.initializers and c.initializers["ww"] is wide
    p = tmp_path / "two.qinf"
    qinfer.Model(g).save(p, compress=True)
    recs = {t["name"]: t for t in serialize.read_header(p)["tensors"]}
    assert "wn" not in recs and recs["ww"]["nbytes"] == wide.nbytes and "deflated" not in recs["ww"]
    assert recs["wn__w8"]["shape"] == [64, 10] and recs["wn__bias"]["dtype"] == "int32"
    back = qinfer.load(p).graph
    assert [n.op for n in back.nodes] == ["QGemm", "QGemm"]
    assert set(back.initializers) == set(g.initializers)
    np.testing.assert_array_equal(back.initializers["wn"], narrow)
    np.testing.assert_array_equal(back.initializers["ww"], wide)
    x = rng.integers(0, 256, (4, 64)).astype(np.uint8)
    want = qinfer.InferenceSession(qinfer.Model(g)).run(None, {"x": x})
    for threads in (1, 2):
        got = qinfer.InferenceSession(str(p), num_threads=threads).run(None, {"x": x})
        for a, b in zip(want, got):
            np.testing.assert_array_equal(a, b)


def test_a_raw_graph_with_the_pack_node_runs_in_sessions_and_the_reference(digits_cnn, rng, tmp_path):
    """The file's graph as stored (PackQC8W nodes in it, not expanded at load) runs the same in a
    session (the planner packs once when built) and in the reference executor."""
    from qinfer.reference.executor import run_graph
    from qinfer.runtime.planner import Program
    q = qinfer.quantize(qinfer.convert(digits_cnn.path),
                        [digits_cnn.x_test[i:i + 1] for i in range(16)], progress=False)
    p = tmp_path / "d.qinf"
    q.save(p, compress=True)
    raw = serialize.load(p)
    assert any(n.op == "PackQC8W" for n in raw.nodes)
    prog = Program(raw, 1)
    assert not any(s.node.op == "PackQC8W" for s in prog.steps)
    x = digits_cnn.x_test[:9]
    name = q.graph.input_names[0]
    want = qinfer.InferenceSession(q).run(None, {name: x})[0]
    np.testing.assert_array_equal(qinfer.InferenceSession(qinfer.Model(raw)).run(None, {name: x})[0], want)
    np.testing.assert_array_equal(run_graph(raw, {name: x})[q.graph.output_names[0]], want)


def _saved_digits(digits_cnn, tmp_path):
    q = qinfer.quantize(qinfer.convert(digits_cnn.path),
                        [digits_cnn.x_test[i:i + 1] for i in range(8)], progress=False)
    p = tmp_path / "d.qinf"
    q.save(p, compress=True)
    return serialize.load(p)


@pytest.mark.parametrize("case", ["w dtype", "w rank", "bias shape", "bias dtype", "kind", "zp",
                                  "groups", "dw shape"])
def test_bad_compact_forms_are_refused_at_load(digits_cnn, tmp_path, monkeypatch, case):
    """A file whose compact weights do not fit their PackQC8W node (or whose node's attributes
    are wrong) is refused with ModelFormatError when loaded, before any kernel sees it."""
    g = _saved_digits(digits_cnn, tmp_path)
    i, node = next((i, n) for i, n in enumerate(g.nodes) if n.op == "PackQC8W")
    w, b = node.inputs
    attrs = dict(node.attrs)
    if case == "w dtype":
        g.initializers[w] = g.initializers[w].astype(np.int16)
    elif case == "w rank":
        g.initializers[w] = g.initializers[w].reshape(-1)
    elif case == "bias shape":
        g.initializers[b] = g.initializers[b][:-1].copy()
    elif case == "bias dtype":
        g.initializers[b] = g.initializers[b].astype(np.int64)
    elif case == "kind":
        attrs["kind"] = "dense"
    elif case == "zp":
        attrs["zp_x"] = 300
    elif case == "groups":
        attrs["groups"] = 7
    else:
        attrs["kind"] = "dw"
    g.nodes[i] = node.replace(attrs=attrs)
    with pytest.raises(qinfer.ModelFormatError):
        serialize.save(g, tmp_path / "bad.qinf")
    # written past the checks (as a hostile file would be), it is refused at load
    with monkeypatch.context() as mp:
        from qinfer.ir import verify as verify_module
        mp.setattr(verify_module, "verify", lambda graph: None)
        serialize.save(g, tmp_path / "bad.qinf")
    with pytest.raises(qinfer.ModelFormatError):
        qinfer.load(tmp_path / "bad.qinf")
    with pytest.raises(qinfer.ModelFormatError):
        qinfer.InferenceSession(str(tmp_path / "bad.qinf"))


def test_a_compact_layer_that_packs_to_the_wrong_geometry_is_refused(digits_cnn, tmp_path):
    """Compact weights that pack fine but not into what their layer reads (a QConv's weights
    swapped for the dense layer's) fail the layer's own packed-weight check."""
    g = _saved_digits(digits_cnn, tmp_path)
    packs = [n for n in g.nodes if n.op == "PackQC8W"]
    assert len(packs) == 2
    a, b = packs
    g.initializers[a.inputs[0]], g.initializers[b.inputs[0]] = \
        g.initializers[b.inputs[0]], g.initializers[a.inputs[0]]
    g.initializers[a.inputs[1]], g.initializers[b.inputs[1]] = \
        g.initializers[b.inputs[1]], g.initializers[a.inputs[1]]
    with pytest.raises(qinfer.ModelFormatError):
        serialize.save(g, tmp_path / "bad.qinf")
