"""Two sessions in two threads vs. one after the other: do the kernels release the GIL?

Each session runs with ``num_threads=1`` on the int8 ResNet-18-shaped model (224x224, batch 1), so
on a 2-core machine two threads can only finish sooner than the same runs back to back when both
run their kernels at once. Prints the time of both layouts and the ratio sequential / concurrent
(2.0 is perfect overlap, 1.0 none), the median of ``--rounds`` interleaved rounds; also one session
shared by the two threads, and that its outputs are bit-identical to the sequential ones.

    python bench/bench_concurrency.py                      # int8 ResNet-18, 20 runs per thread, 5 rounds
    python bench/bench_concurrency.py --runs 50 --rounds 7 --model resnet18-float
"""
import argparse
import os
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import models  # noqa: E402

import qinfer  # noqa: E402


def int8_resnet18(calib=8, rebuild=False):
    """Path of the int8 ResNet-18-shaped model (calibrated on ``calib`` photos), built once and
    kept in the model cache; ``rebuild`` makes it again (after a quantizer change)."""
    path = os.path.join(models.models_dir(), f"resnet18-int8-calib{calib}-v1.qinf")
    if rebuild or not os.path.exists(path):
        x = models.imagenet_input(calib)
        q = qinfer.quantize(qinfer.convert(models.resnet18()), [x[i:i + 1] for i in range(calib)],
                            progress=False)
        q.save(path)        # atomic: concurrent builders never see half a file
    return path


def model_path(name, rebuild=False):
    if name == "resnet18-int8":
        return int8_resnet18(rebuild=rebuild)
    if name == "resnet18-float":
        return models.resnet18()
    raise SystemExit(f"unknown model {name!r} (resnet18-int8, resnet18-float)")


def _run_threads(jobs):
    """Run each ``jobs[i]()`` in its own thread, all released at once; seconds until all ended."""
    start = threading.Barrier(len(jobs) + 1)
    out = [None] * len(jobs)

    def work(i):
        start.wait()
        out[i] = jobs[i]()

    pool = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in pool:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    return time.perf_counter() - t0, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18-int8")
    ap.add_argument("--runs", type=int, default=20, help="runs per thread per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rebuild", action="store_true", help="quantize the model again")
    args = ap.parse_args(argv)

    path = model_path(args.model, args.rebuild)
    a = qinfer.InferenceSession(path, num_threads=1)
    b = qinfer.InferenceSession(path, num_threads=1)
    x = models.imagenet_input(1)
    name = a.get_inputs()[0].name
    feeds = {name: x}

    def runs(sess):
        return lambda: [sess.run(None, feeds) for _ in range(args.runs)]

    for s in (a, b):
        s.run(None, feeds)
        s.run(None, feeds)
    want = a.run(None, feeds)[0].tobytes()
    seq, par, shared = [], [], []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        runs(a)()
        runs(b)()
        seq.append(time.perf_counter() - t0)
        par.append(_run_threads([runs(a), runs(b)])[0])
        t, outs = _run_threads([runs(a), runs(a)])
        shared.append(t)
        assert all(o[0].tobytes() == want for per_thread in outs for o in per_thread), \
            "a shared session gave another output"
    n = 2 * args.runs
    seq_s, par_s, shared_s = (float(np.median(v)) for v in (seq, par, shared))
    print(f"model {args.model} ({os.path.basename(path)}), 1x3x224x224, num_threads=1 per session, "
          f"{os.cpu_count()} CPUs, {args.rounds} rounds of {n} runs")
    print(f"  one after the other:          {seq_s * 1e3:8.1f} ms  ({seq_s / n * 1e3:.2f} ms a run)")
    print(f"  two sessions in two threads:  {par_s * 1e3:8.1f} ms  -> ratio {seq_s / par_s:.2f}x")
    print(f"  one session in two threads:   {shared_s * 1e3:8.1f} ms  -> ratio {seq_s / shared_s:.2f}x "
          "(outputs bit-identical)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
