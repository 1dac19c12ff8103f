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
