"""pytest-benchmark suite: whole models through qinfer float and int8 (run: pytest bench/ --benchmark-only).

Models come from tests/models.py (built and cached on first use). Timings are not asserted.
"""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import models  # noqa: E402

import qinfer  # noqa: E402

CASES = {"resnet18": (1, 3, 224, 224), "mobilenetv2": (1, 3, 224, 224), "digits_cnn": (1, 1, 8, 8)}


def _path(name):
    p = models.BUILDERS[name]()
    return getattr(p, "path", p)


@pytest.fixture(scope="module", params=sorted(CASES))
def model(request):
    name = request.param
    m = qinfer.convert(_path(name))
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal(CASES[name]).astype(np.float32) for _ in range(4)]
    return name, m, qinfer.quantize(m, calib, progress=False), calib[0]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("variant", ["float", "int8"])
def test_model_latency(benchmark, model, variant, threads):
    name, m, q, x = model
    sess = qinfer.InferenceSession(m if variant == "float" else q, num_threads=threads)
    feeds = {sess.get_inputs()[0].name: x}
    sess.run(None, feeds)
    benchmark.extra_info.update(model=name, variant=variant, threads=threads)
    benchmark(sess.run, None, feeds)
