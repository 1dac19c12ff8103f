"""One InferenceSession shared by threads: every output bit-identical to the sequential run.

Per-call state lives in the call (the executor copies its slot list; the int8 drivers keep their
scratch per OS thread), so threads share a session without a lock around the run. These tests hit
that from 8 threads at once, on the first run of a shape (plans built concurrently) and after it,
with inputs of several batch sizes (several plans) and OpenMP teams inside the calls. The speed of
two sessions in two threads is measured, not asserted: bench/bench_concurrency.py.
"""
import threading

import numpy as np
import pytest

import fuzzing
import qinfer
from qinfer.ir import serialize

THREADS = 8
RUNS = 200


def _hammer(sess, feeds_list, threads=THREADS, runs=RUNS):
    """``threads`` threads each run ``runs`` calls, cycling over ``feeds_list`` from a different
    start; returns per thread the list of (feed index, outputs)."""
    start = threading.Barrier(threads)
    results = [None] * threads
    errors = []

    def work(t):
        try:
            start.wait()
            out = []
            for r in range(runs):
                i = (t * 7 + r) % len(feeds_list)
                out.append((i, sess.run(None, feeds_list[i])))
            results[t] = out
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            errors.append(e)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    assert not errors, errors
    return results


def _feeds(entry, rng, batches=(1, 2, 3, 5)):
    (name, x), = entry.feeds.items()
    return [{name: rng.standard_normal((b,) + x.shape[1:]).astype(x.dtype)} for b in batches]


@pytest.fixture(scope="module")
def corpus():
    import models
    try:
        cnn = models.digits_cnn()
    except models.ModelUnavailable:
        cnn = None
    return fuzzing.build_corpus(cnn)


def _check(shared, reference, feeds):
    expected = [reference.run(None, f) for f in feeds]
    for per_thread in _hammer(shared, feeds):
        assert len(per_thread) == RUNS
        for i, outs in per_thread:
            assert len(outs) == len(expected[i])
            for got, want in zip(outs, expected[i]):
                assert got.dtype == want.dtype and got.shape == want.shape
                assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("name", ["smallnet-int8", "smallnet-float", "mlp-int8",
                                  "digits_cnn-int8", "digits_cnn-float"])
@pytest.mark.parametrize("num_threads", [1, 2])
def test_shared_session_is_bit_identical_to_sequential(corpus, rng, tmp_path, name, num_threads):
    if name not in corpus:
        pytest.skip("digits CNN unavailable")
    entry = corpus[name]
    path = tmp_path / (name + ".qinf")
    path.write_bytes(entry.data)
    reference = qinfer.InferenceSession(str(path), num_threads=num_threads)
    shared = qinfer.InferenceSession(str(path), num_threads=num_threads)   # no plan built yet
    _check(shared, reference, _feeds(entry, rng))


def test_shared_session_with_shape_subgraphs(transformer_onnx, rng):
    """Dynamic batch and sequence: each signature's plan folds its Shape -> Reshape chains on its
    first run, here built by several threads at once."""
    import models
    model = qinfer.convert(transformer_onnx)
    feeds = [{"x": models.transformer_input(rng, b, s)} for b, s in ((1, 8), (2, 5), (1, 16), (3, 3))]
    _check(qinfer.InferenceSession(model, num_threads=1), qinfer.InferenceSession(model, num_threads=1),
           feeds)


def test_outputs_are_not_shared_between_calls(corpus, rng):
    entry = corpus["smallnet-int8"]
    sess = qinfer.InferenceSession(serialize.from_bytes(entry.data), num_threads=1)
    feeds = _feeds(entry, rng, batches=(2,))[0]
    a, = sess.run(None, feeds)
    b, = sess.run(None, feeds)
    assert a.tobytes() == b.tobytes() and not np.shares_memory(a, b)
    a[...] = 0                       # a caller may write into what it got
    c, = sess.run(None, feeds)
    assert c.tobytes() == b.tobytes()


def _conv_net_any_size(rng):
    """A float ONNX conv net (3x3 conv, depthwise 3x3 stride 2, 1x1 conv; ReLUs) whose input height
    and width are symbolic."""
    from onnx import TensorProto, helper, numpy_helper
    w = lambda *s: rng.standard_normal(s).astype(np.float32) * 0.3  # noqa: E731
    inits = [numpy_helper.from_array(w(16, 3, 3, 3), "w0"), numpy_helper.from_array(w(16, 1, 3, 3), "w1"),
             numpy_helper.from_array(w(8, 16, 1, 1), "w2"), numpy_helper.from_array(w(16), "b0")]
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2], group=16),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["y"])]
    g = helper.make_graph(nodes, "anysize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, None, None])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("num_threads", [1, 2])
def test_shared_int8_session_with_many_image_sizes(rng, num_threads):
    """The int8 layers keep their conv geometry per input size (_kernels.QLayerCall): threads
    that run one session on images of different sizes at once each get their own size's answer."""
    model = qinfer.convert(_conv_net_any_size(rng))
    q = qinfer.quantize(model, [rng.random((1, 3, 12, 12), np.float32) for _ in range(4)], progress=False)
    assert q.graph.op_counts().get("QConv", 0) == 3
    feeds = [{"x": rng.random((1, 3, h, w), np.float32)} for h, w in ((12, 12), (7, 9), (16, 5), (1, 1),
                                                                       (9, 7), (20, 13))]
    _check(qinfer.InferenceSession(q, num_threads=num_threads),
           qinfer.InferenceSession(q, num_threads=num_threads), feeds)
