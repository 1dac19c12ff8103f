"""Throughput of qinfer on Ray Data on this machine: 1 actor x 2 threads vs 2 actors x 1 thread.

    python bench/bench_ray.py                      # int8 digits CNN, 200,000 digits-like samples
    python bench/bench_ray.py --model mlp --samples 100000 --batch-size 1024 --repeats 5

The model is the digits CNN (or MLP) of tests/models.py quantized to int8; the samples are
scikit-learn's digits repeated with noise (tests/test_cli_batch.py's ``digits_like``). Ray runs on
this machine (``ray.init(num_cpus=CORES)``); the samples are put in its object store once, in 64
blocks, before any timing. Per configuration and repeat, one ``qinfer.integrations.ray.predict``
pipeline runs over all samples and the driver consumes every output block:

- ``end-to-end``: samples / wall time from building the pipeline to the last output block, so
  actor start-up (a fresh Python process importing qinfer and opening the model) is included;
- ``steady``: samples after the first output block / time from the first to the last block, the
  rate once actors run.

The reference is one ``InferenceSession`` in this process running the same batches (2 threads, and
1), timed ``--repeats`` times before Ray starts and again after it stops (Ray's own processes idle
on the cores while it runs, which costs a 2-thread OpenMP run more than Ray's actors). The Ray
configurations run interleaved, ``--repeats`` times each. Medians are printed, then the ratios. It
measures; it asserts nothing.
"""
import argparse
import logging
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import models  # noqa: E402  (tests/models.py: the digits classifiers)
import qinfer  # noqa: E402
from qinfer.integrations.ray import predict, require_ray  # noqa: E402
from test_cli_batch import digits_like  # noqa: E402

CONFIGS = [("1 actor x 2 threads", 1, 2), ("2 actors x 1 thread", 2, 1)]
BLOCKS = 64


def build(kind, folder):
    """(int8 .qinf path, samples) for the digits CNN or MLP."""
    d = models.digits_cnn() if kind == "cnn" else models.digits_mlp()
    to_input = (lambda x: x) if kind == "cnn" else models.digits_28
    q = qinfer.quantize(qinfer.convert(d.path), to_input(models.digits_split()[0][:128]), progress=False)
    path = os.path.join(folder, f"digits-{kind}-int8.qinf")
    q.save(path)
    return path, to_input


def time_session(path, x, batch, threads):
    sess = qinfer.InferenceSession(path, num_threads=threads)
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        sess.run(None, {"input": x[i:i + batch]})
    return len(x) / (time.perf_counter() - t0)


def time_ray(ds, path, n, batch, actors, threads):
    t0 = time.perf_counter()
    out = predict(ds, path, batch_size=batch, actors=actors, num_threads=threads, input_columns={"input": "data"})
    first = None
    done = 0
    for b in out.iter_batches(batch_size=None, batch_format="numpy"):
        rows = len(b["logits"])
        if first is None:
            first, first_rows = time.perf_counter(), rows
        done += rows
    end = time.perf_counter()
    if done != n:
        raise RuntimeError(f"{done} outputs for {n} samples")
    steady = (n - first_rows) / (end - first) if end > first else float("nan")
    return n / (end - t0), steady


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["cnn", "mlp"], default="cnn")
    p.add_argument("--samples", type=int, default=200_000)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    ray = require_ray()
    cores = os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        path, to_input = build(args.model, tmp)
        x = to_input(digits_like(args.samples))
        n = len(x)
        print(f"qinfer {qinfer.__version__}, Ray {ray.__version__}; {cores} CPUs; int8 digits {args.model} "
              f"({os.path.getsize(path):,} bytes), {n:,} samples {list(x.shape[1:])}, batch {args.batch_size}, "
              f"{args.repeats} repeats (medians)")
        plain = {1: [], 2: []}

        def time_plain():   # without Ray's processes on the cores: what one machine gives without Ray
            for _ in range(args.repeats):
                for threads in plain:
                    plain[threads].append(time_session(path, x, args.batch_size, threads))

        time_plain()
        ray.init(num_cpus=cores, include_dashboard=False, logging_level=logging.WARNING)
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            ds = ray.data.from_numpy(np.array_split(x, BLOCKS)).materialize()
            rows = {name: [] for name, _, _ in CONFIGS}
            for r in range(args.repeats):
                for name, actors, threads in (CONFIGS if r % 2 == 0 else CONFIGS[::-1]):
                    rows[name].append(time_ray(ds, path, n, args.batch_size, actors, threads))
        finally:
            ray.shutdown()
        time_plain()

    med = {name: tuple(float(np.median([v[i] for v in vals])) for i in (0, 1)) for name, vals in rows.items()}
    ref = {t: float(np.median(v)) for t, v in plain.items()}
    print(f"\n{'configuration':<34} {'end-to-end samples/s':>21} {'steady samples/s':>17}")
    for name, (e2e, steady) in med.items():
        print(f"{'Ray, ' + name:<34} {e2e:>21,.0f} {steady:>17,.0f}")
    for t in (2, 1):
        print(f"{f'one InferenceSession, {t} thread' + ('s' if t > 1 else ''):<34} {ref[t]:>21,.0f}")
    (one, two) = (med[CONFIGS[0][0]], med[CONFIGS[1][0]])
    print(f"\n2 actors x 1 thread / 1 actor x 2 threads: end-to-end {two[0] / one[0]:.2f}x, "
          f"steady {two[1] / one[1]:.2f}x")
    for name, (e2e, steady) in med.items():
        print(f"Ray {name} / one session (2 threads): end-to-end {e2e / ref[2]:.2f}x, steady {steady / ref[2]:.2f}x")


if __name__ == "__main__":
    main()
