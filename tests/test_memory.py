"""Memory: long-lived sessions do not grow, files do not make qinfer allocate beyond their size.

RSS is read from /proc/self/statm (the current resident set, not the high-water mark) after a
warm-up that builds the plans and grows the int8 drivers' per-thread scratch. The run counts here
are small enough for every test run; bench/bench_memory.py does 10,000 runs of the int8 ResNet-18.
"""
import gc
import os
import tracemalloc
import zlib

import numpy as np
import pytest

import fuzzing
import qinfer
from qinfer import InvalidInputError, ModelFormatError
from qinfer.ir import serialize
from qinfer.runtime import memory as qmemory

WARMUP = 300
RUNS = 3000
#: what RUNS runs may add to the RSS: a leak of 350 bytes a run goes over
GROWTH_BUDGET_MB = 1.0


def _asan_loaded():
    with open("/proc/self/maps") as f:
        return "libasan" in f.read()


#: ASan (scripts/sanitize.sh) holds freed blocks in quarantine: the RSS says nothing under it
rss_meaningful = pytest.mark.skipif(_asan_loaded(), reason="ASan's quarantine holds freed memory")


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


@pytest.fixture(scope="module")
def corpus():
    return fuzzing.build_corpus()


def _growth(fn, runs=RUNS, warmup=WARMUP):
    for _ in range(warmup):
        fn()
    gc.collect()
    before = rss_mb()
    for _ in range(runs):
        fn()
    gc.collect()
    return rss_mb() - before


@rss_meaningful
@pytest.mark.parametrize("name", ["smallnet-int8", "smallnet-float", "mlp-int8"])
@pytest.mark.parametrize("num_threads", [1, 2])
def test_runs_do_not_grow_rss(corpus, tmp_path, name, num_threads):
    path = tmp_path / "m.qinf"
    path.write_bytes(corpus[name].data)
    sess = qinfer.InferenceSession(str(path), num_threads=num_threads)
    feeds = corpus[name].feeds
    growth = _growth(lambda: sess.run(None, feeds))
    assert growth < GROWTH_BUDGET_MB, f"{name}: RSS grew {growth:.2f} MB over {RUNS} runs"


@rss_meaningful
def test_failing_runs_do_not_grow_rss(corpus):
    """Errors keep nothing alive: a bad feed (rank) and a run that fails inside the plan."""
    data = fuzzing.apply_qinf(corpus["smallnet-int8"].data, [["set", ["inputs", 0, "shape", 2], "h"],
                                                            ["set", ["inputs", 0, "shape", 3], "w"]], [])
    sess = qinfer.InferenceSession(serialize.from_bytes(data), num_threads=1)
    bad_rank = {"x": np.zeros((3, 12, 12), np.float32)}
    too_small = {"x": np.zeros((1, 3, 1, 1), np.float32)}     # pools past the image: fails mid-plan

    def fail():
        for feeds in (bad_rank, too_small):
            with pytest.raises(InvalidInputError):
                sess.run(None, feeds)

    growth = _growth(fail, runs=RUNS // 2)
    assert growth < GROWTH_BUDGET_MB, f"RSS grew {growth:.2f} MB over {RUNS // 2} failing runs"


def _mappings_of(path):
    with open("/proc/self/maps") as f:
        return sum(line.rstrip().endswith(str(path)) for line in f)


def test_sessions_release_their_file(corpus, tmp_path):
    """Opening and dropping a session many times leaves neither mappings nor memory behind."""
    path = tmp_path / "m.qinf"
    path.write_bytes(corpus["smallnet-int8"].data)
    feeds = corpus["smallnet-int8"].feeds

    def open_run_drop():
        sess = qinfer.InferenceSession(str(path), num_threads=1)
        sess.run(None, feeds)
        assert _mappings_of(path) >= 1

    growth = _growth(open_run_drop, runs=500, warmup=50)
    assert _mappings_of(path) == 0
    if not _asan_loaded():
        assert growth < GROWTH_BUDGET_MB, f"RSS grew {growth:.2f} MB over 500 sessions"


def _traced_peak(fn):
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def _header_lie(data, edit):
    version, flags, header, blob = fuzzing.split_qinf(data)
    edit(header)
    return fuzzing.pack_qinf(header, blob, version, flags)


def _tensor(header, i=0):
    return header["tensors"][i]


LIES = {
    "huge shape": lambda h: _tensor(h).update(shape=[2 ** 20, 2 ** 20, 2 ** 20]),
    "huge nbytes": lambda h: _tensor(h).update(nbytes=2 ** 60),
    "huge offset": lambda h: _tensor(h).update(offset=2 ** 62),
    "huge data section": lambda h: h.update(data_nbytes=2 ** 62),
    "many tensors": lambda h: h["tensors"].extend([dict(_tensor(h), name=f"t{i}") for i in range(2000)]),
    "huge value dims": lambda h: h["inputs"][0].update(shape=[2 ** 62] * 64),
}


@pytest.mark.parametrize("lie", sorted(LIES))
def test_a_file_cannot_make_the_reader_allocate_beyond_its_size(corpus, lie):
    """Sizes the header declares are checked against the file before anything is allocated: the
    reader's peak Python allocations stay within a small multiple of the file's size."""
    data = _header_lie(corpus["digits_cnn-int8" if "digits_cnn-int8" in corpus else "smallnet-int8"]
                       .data, LIES[lie])

    def load():
        with pytest.raises(ModelFormatError):
            serialize.from_bytes(data)

    peak = _traced_peak(load)
    assert peak < 20 * len(data) + (1 << 20), f"{lie}: {peak} bytes traced for a {len(data)} B file"


def test_loading_maps_weights_without_copying(corpus, tmp_path):
    """A valid file: the reader allocates for its header, not for its weights (a memory map)."""
    data = corpus["smallnet-int8"].data
    _, _, header, blob = fuzzing.split_qinf(data)
    big = np.arange(1 << 22, dtype=np.uint8)              # 4 MiB of weights nobody reads
    header["tensors"].append({"name": "big", "dtype": "uint8", "shape": [big.size],
                              "offset": (len(blob) + 63) // 64 * 64, "nbytes": big.size,
                              "crc32": zlib.crc32(big)})
    blob = blob + b"\0" * (-len(blob) % 64) + big.tobytes()
    header["data_nbytes"] = len(blob)
    header["initializers"].append("big")
    path = tmp_path / "big.qinf"
    path.write_bytes(fuzzing.pack_qinf(header, blob))
    peak = _traced_peak(lambda: serialize.load(str(path)))
    assert peak < (1 << 20), f"{peak} bytes traced loading a file with 4 MiB of weights"
    g = serialize.load(str(path))
    assert g.initializers["big"].base is not None and not g.initializers["big"].flags.writeable


@rss_meaningful
@pytest.mark.slow
def test_int8_resnet18_runs_do_not_grow_rss(resnet18_onnx):
    """The int8 ResNet-18-shaped model at 224x224, 2 threads: a bounded run count here (the 5 MB
    over 10,000 runs budget is scaled to it); bench/bench_memory.py runs the 10,000."""
    import models
    x = models.imagenet_input(2)
    q = qinfer.quantize(qinfer.convert(resnet18_onnx), [x[i:i + 1] for i in range(2)], progress=False)
    assert q.graph.op_counts().get("QConv", 0) >= 15
    sess = qinfer.InferenceSession(q, num_threads=2)
    feeds = {sess.get_inputs()[0].name: x[:1]}
    runs = 600
    growth = _growth(lambda: sess.run(None, feeds), runs=runs, warmup=100)
    assert growth < 5.0 * runs / 10000 + 0.25, f"RSS grew {growth:.2f} MB over {runs} runs"


FAULTS_SCRIPT = r"""
import resource, sys
import numpy as np
import qinfer
from qinfer.ir.graph import Graph, Node, Value
from qinfer.runtime import memory
f = np.float32
# each step makes a new 2 MiB float tensor and frees the one before it
nodes = [Node("Mul", ("x", "a"), ("t1",), {}, "m1"), Node("Add", ("t1", "b"), ("t2",), {}, "a1"),
         Node("Mul", ("t2", "a"), ("t3",), {}, "m2"), Node("Sigmoid", ("t3",), ("t4",), {}, "s"),
         Node("Add", ("t4", "b"), ("y",), {}, "a2")]
g = Graph("chain", nodes, [Value("x", "float32", (1, 8, 256, 256))],
          [Value("y", "float32", (1, 8, 256, 256))], {"a": np.full(1, 1.5, f), "b": np.full(1, 0.5, f)})
sess = qinfer.InferenceSession(qinfer.Model(g), num_threads=1)
x = np.random.default_rng(0).standard_normal((1, 8, 256, 256)).astype(f)
for _ in range(5):
    sess.run(None, {"x": x})
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    sess.run(None, {"x": x})
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(memory.keep_freed_memory())
print((after - before) / 20)
"""


@rss_meaningful
@pytest.mark.skipif(not qmemory.glibc_version(),
                    reason="the allocator settings are glibc's")
def test_runs_reuse_the_pages_of_freed_tensors():
    """With glibc's defaults every run maps its large tensors afresh (page faults, 20-25% of
    PP-OCRv4 rec's and det's batch-1 time); sessions keep freed memory in the heap
    (runtime/memory.py): a warm run of five 2 MiB steps takes (almost) no page fault.
    QINFER_MALLOC=default, or glibc's own MALLOC_*_ variables, leave the settings alone."""
    import subprocess
    import sys

    def faults(**env):
        e = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        e.update(env)
        out = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT], env=e, capture_output=True,
                             text=True, check=True).stdout.splitlines()
        return out[0], float(out[1])

    kept, tuned = faults()
    assert kept == "True" and tuned < 20, (kept, tuned)
    why, default = faults(QINFER_MALLOC="default")
    assert "QINFER_MALLOC" in why and default > 200, (why, default)   # 5 x 512 pages a run
    why, user = faults(MALLOC_TOP_PAD_="131072")
    assert "MALLOC_TOP_PAD_" in why, why
