"""Real models through qinfer's float path, against onnxruntime on the same feeds.

The foundation acceptance test: ``convert`` -> ``save`` -> ``load`` ->
``InferenceSession.run`` matches onnxruntime's fp32 outputs within
``1e-4 * max(1, max|reference|)`` at two or more input shapes per model
(batch 1 and 2, and other spatial / sequence sizes where the dims are
dynamic). Plus the ONNX Runtime drop-in surface of ``InferenceSession`` and
the accuracy of the digits classifiers.

Tests named ``test_fixture_*`` check the fixtures themselves with
onnxruntime only (they need no qinfer).
"""
import numpy as np
import onnxruntime as ort
import pytest

import models

# Float path vs onnxruntime fp32: errors relative to the output's scale. Both
# engines accumulate fp32 in different orders (and onnxruntime fuses BN / Conv
# differently), so bit equality is not expected; 1e-4 of the output's scale is
# far above that noise and far below any real bug.
RTOL_SCALE = 1e-4

FAST = ["resnet18", "mobilenetv2", "transformer", "digits_cnn", "digits_mlp"]
SLOW = ["ppocr_det", "ppocr_rec", "ppocr_cls"]

# name -> list of input-shape keys; the feed builders below turn a key into arrays.
SHAPES = {
    "ppocr_det": [(1, 320, 320), (2, 480, 640)],       # [N, 3, H, W], H and W multiples of 32
    "ppocr_rec": [(1, 320), (2, 160)],                 # [N, 3, 48, W]
    "ppocr_cls": [(1,), (2,)],                         # [N, 3, 48, 192]
    "resnet18": [(1, 224, 224), (2, 224, 224), (1, 160, 192)],
    "mobilenetv2": [(1, 224, 224), (2, 224, 224), (1, 160, 192)],
    "transformer": [(1, 16), (2, 7)],                  # [N, seq, 16]
    "digits_cnn": [(1,), (2,)],                        # [N, 1, 8, 8]
    "digits_mlp": [(1,), (2,)],                        # [N, 784]
}


def _feed_array(name, shape, rng):
    if name == "ppocr_det":
        return models.det_input(*shape)
    if name == "ppocr_rec":
        return models.rec_input(*shape)
    if name == "ppocr_cls":
        return models.cls_input(*shape)
    if name in ("resnet18", "mobilenetv2"):
        return models.imagenet_input(*shape)
    if name == "transformer":
        return models.transformer_input(rng, *shape)
    if name == "digits_cnn":
        return models.digits_cnn().x_test[: shape[0]]
    if name == "digits_mlp":
        return models.digits_mlp().x_test[: shape[0]]
    raise KeyError(name)


def _shape_id(shape):
    return "b%d" % shape[0] + "".join("x%d" % s for s in shape[1:])


def _param(name, *rest):
    marks = [pytest.mark.slow] if name in SLOW else []
    ident = "-".join([name] + [_shape_id(r) for r in rest])
    return pytest.param(name, *rest, marks=marks, id=ident)


ALL = [_param(n) for n in SLOW + FAST]
SHAPED = [_param(n, s) for n in SLOW + FAST for s in SHAPES[n]]


# ----------------------------------------------------------------------------
# helpers and module-wide caches

@pytest.fixture(scope="module")
def qi():
    """The qinfer package (a missing or broken engine fails these tests, it does not skip them)."""
    import qinfer
    return qinfer


@pytest.fixture(scope="module")
def ort_session(model_path):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = ort.InferenceSession(model_path(name), providers=["CPUExecutionProvider"])
        return cache[name]
    return get


@pytest.fixture(scope="module")
def qinfer_session(qi, model_path, tmp_path_factory):
    """``qinfer_session(name)``: convert -> save -> load -> InferenceSession, once per model."""
    cache = {}

    def get(name):
        if name not in cache:
            d = tmp_path_factory.mktemp(name)
            qi.convert(model_path(name)).save(str(d / "m.qinf"))
            cache[name] = qi.InferenceSession(qi.load(str(d / "m.qinf")))
        return cache[name]
    return get


def feeds_for(name, shape, rng, ort_sess):
    return {ort_sess.get_inputs()[0].name: _feed_array(name, shape, rng)}


def assert_matches(got, ref, names, what=""):
    """qinfer outputs ``got`` vs onnxruntime ``ref``: count, type, shape, dtype, then scaled max error."""
    assert isinstance(got, list), "run() must return a list, got %s" % type(got).__name__
    assert len(got) == len(ref), "%s: %d outputs, onnxruntime gives %d" % (what, len(got), len(ref))
    for g, r, n in zip(got, ref, names):
        assert isinstance(g, np.ndarray), "%s output %r is %s, not ndarray" % (what, n, type(g).__name__)
        assert g.shape == r.shape, "%s output %r: shape %s, onnxruntime %s" % (what, n, g.shape, r.shape)
        assert g.dtype == r.dtype, "%s output %r: dtype %s, onnxruntime %s" % (what, n, g.dtype, r.dtype)
        if g.dtype.kind not in "fc":
            np.testing.assert_array_equal(g, r, err_msg="%s output %r" % (what, n))
            continue
        assert np.isfinite(g).all() == np.isfinite(r).all(), "%s output %r: non-finite values" % (what, n)
        scale = max(1.0, float(np.abs(r).max()))
        err = np.abs(g.astype(np.float64) - r.astype(np.float64))
        worst = np.unravel_index(int(err.argmax()), err.shape)
        assert err.max() <= RTOL_SCALE * scale, (
            "%s output %r: max abs error %.3g > %.1g * %.3g (at %s: qinfer %r, onnxruntime %r)"
            % (what, n, err.max(), RTOL_SCALE, scale, worst, g[worst], r[worst]))


# ----------------------------------------------------------------------------
# the fixtures themselves (onnxruntime only)

@pytest.mark.parametrize("name", ALL)
def test_fixture_runs_in_onnxruntime(name, ort_session, rng):
    sess = ort_session(name)
    for shape in SHAPES[name]:
        outs = sess.run(None, feeds_for(name, shape, rng, sess))
        assert all(o.shape[0] == shape[0] for o in outs)
        assert all(np.isfinite(o).all() for o in outs)


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_fixture_digits_trained(kind, request, ort_session):
    d = request.getfixturevalue("digits_" + kind)
    assert d.float_accuracy > 0.95, "digits %s float accuracy %.4f" % (kind, d.float_accuracy)
    pred = ort_session("digits_" + kind).run(None, {"input": d.x_test})[0].argmax(1)
    assert (pred == d.y_test).mean() == pytest.approx(d.float_accuracy, abs=1.5 / len(d.y_test))


@pytest.mark.slow
def test_fixture_ppocr_inputs_are_real_text(ort_session, model_path):
    rec = ort_session("ppocr_rec").run(None, {"x": models.rec_input(4, 320)})[0]
    text = models.ctc_decode(rec, models.rec_characters(model_path("ppocr_rec")))
    assert text[0].startswith("Region-based") and text[1] == "Let us first determine", text
    cls = ort_session("ppocr_cls").run(None, {"x": models.cls_input(4)})[0]
    assert list(cls.argmax(1)) == [0, 1, 0, 1], cls      # odd crops are rotated by 180 degrees
    det = ort_session("ppocr_det").run(None, {"x": models.det_input(1, 320, 320)})[0]
    assert 0.02 < (det > 0.3).mean() < 0.5                # text regions found, not everywhere


# ----------------------------------------------------------------------------
# foundation acceptance: convert -> save -> load -> run == onnxruntime

@pytest.mark.parametrize("name", ALL)
def test_convert_save_load(name, qi, model_path, tmp_path):
    m = qi.convert(model_path(name))
    assert isinstance(m, qi.Model)
    m.save(str(tmp_path / "m.qinf"))
    assert (tmp_path / "m.qinf").stat().st_size > 0
    m2 = qi.load(str(tmp_path / "m.qinf"))
    sess = qi.InferenceSession(m2)
    ref = ort.InferenceSession(model_path(name), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == [i.name for i in ref.get_inputs()]
    assert [o.name for o in sess.get_outputs()] == [o.name for o in ref.get_outputs()]


@pytest.mark.parametrize("name,shape", SHAPED)
def test_float_matches_onnxruntime(name, shape, qinfer_session, ort_session, rng):
    ref_sess = ort_session(name)
    feeds = feeds_for(name, shape, rng, ref_sess)
    ref = ref_sess.run(None, feeds)
    got = qinfer_session(name).run(None, feeds)
    assert_matches(got, ref, [o.name for o in ref_sess.get_outputs()], "%s %s" % (name, shape))


@pytest.mark.parametrize("name", [_param(n) for n in ["resnet18", "transformer", "digits_mlp", "ppocr_rec"]])
def test_threads_bit_identical(name, qi, model_path, ort_session, rng):
    """SPEC: results are bit-identical for any thread count."""
    feeds = feeds_for(name, SHAPES[name][-1], rng, ort_session(name))
    m = qi.convert(model_path(name))
    one = qi.InferenceSession(m, num_threads=1).run(None, feeds)
    two = qi.InferenceSession(m, num_threads=2).run(None, feeds)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------
# InferenceSession: drop-in for onnxruntime's

def test_session_from_onnx_and_qinf_paths(qi, transformer_onnx, ort_session, rng, tmp_path):
    feeds = feeds_for("transformer", (2, 7), rng, ort_session("transformer"))
    ref = ort_session("transformer").run(None, feeds)
    names = ["hidden", "logits"]
    assert_matches(qi.InferenceSession(transformer_onnx).run(None, feeds), ref, names, ".onnx path")
    qi.convert(transformer_onnx).save(str(tmp_path / "t.qinf"))
    assert_matches(qi.InferenceSession(str(tmp_path / "t.qinf")).run(None, feeds), ref, names, ".qinf path")
    assert_matches(qi.InferenceSession(tmp_path / "t.qinf").run(None, feeds), ref, names, "pathlib .qinf")


def _dims_like(got, ref):
    """Static dims equal; a symbolic onnxruntime dim (str / None) must not be a fixed int in qinfer."""
    if len(got) != len(ref):
        return False
    return all(g == r if isinstance(r, int) and r > 0 else not (isinstance(g, int) and g > 0)
               for g, r in zip(got, ref))


@pytest.mark.parametrize("name", ALL)
def test_inputs_outputs_like_onnxruntime(name, qinfer_session, ort_session):
    sess, ref = qinfer_session(name), ort_session(name)
    for kind, got, want in [("input", sess.get_inputs(), ref.get_inputs()),
                            ("output", sess.get_outputs(), ref.get_outputs())]:
        assert [a.name for a in got] == [b.name for b in want], kind
        assert [a.type for a in got] == [b.type for b in want], kind
        for a, b in zip(got, want):
            assert _dims_like(list(a.shape), list(b.shape)), (kind, a.name, a.shape, b.shape)


@pytest.mark.parametrize("name", [_param(n) for n in ["transformer", "digits_cnn", "ppocr_rec"]])
def test_modelmeta_like_onnxruntime(name, qinfer_session, ort_session):
    got, want = qinfer_session(name).get_modelmeta(), ort_session(name).get_modelmeta()
    assert got.custom_metadata_map == want.custom_metadata_map
    assert got.producer_name == want.producer_name
    assert got.graph_name == want.graph_name


def test_run_output_subset_and_order(qinfer_session, ort_session, rng):
    sess = qinfer_session("transformer")
    feeds = feeds_for("transformer", (2, 7), rng, ort_session("transformer"))
    hidden, logits = ort_session("transformer").run(None, feeds)
    only = sess.run(["logits"], feeds)
    assert_matches(only, [logits], ["logits"], "run(['logits'])")
    swapped = sess.run(["logits", "hidden"], feeds)
    assert_matches(swapped, [logits, hidden], ["logits", "hidden"], "run(['logits', 'hidden'])")


def test_onnxruntime_keywords_accepted(qi, transformer_onnx, ort_session, rng):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = qi.InferenceSession(transformer_onnx, sess_options=so, providers=["CPUExecutionProvider"])
    providers = sess.get_providers()
    assert isinstance(providers, list) and providers and all(isinstance(p, str) for p in providers)
    feeds = feeds_for("transformer", (1, 16), rng, ort_session("transformer"))
    assert_matches(sess.run(None, feeds), ort_session("transformer").run(None, feeds),
                   ["hidden", "logits"], "sess_options/providers")


# ----------------------------------------------------------------------------
# digits classifiers: accuracy through qinfer == onnxruntime's

@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_digits_accuracy_equals_onnxruntime(kind, request, qinfer_session, ort_session):
    d = request.getfixturevalue("digits_" + kind)
    name = "digits_" + kind
    ref = ort_session(name).run(None, {"input": d.x_test})[0]
    got = qinfer_session(name).run(None, {"input": d.x_test})[0]
    acc_ref = float((ref.argmax(1) == d.y_test).mean())
    acc_got = float((got.argmax(1) == d.y_test).mean())
    assert acc_ref > 0.95
    assert acc_got == acc_ref, "qinfer %.4f vs onnxruntime %.4f (%d predictions differ)" % (
        acc_got, acc_ref, int((got.argmax(1) != ref.argmax(1)).sum()))
