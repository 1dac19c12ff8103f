"""Does ``qinfer benchmark``'s harness bias its timings? onnxruntime timed two ways, one process.

Design: the ResNet-18-shaped ONNX (tests/models.py) runs in one onnxruntime session built by the
harness's own ``--compare onnxruntime`` code (``qinfer.benchmark.onnxruntime_session``), on one real
photo. Two timers take turns on that same session and input, in blocks of ``--block`` runs whose order
alternates (harness first, then plain first, ...), so clock and neighbour noise hit both alike:

* the harness: ``qinfer.benchmark.measure`` (the loop every ``qinfer benchmark`` row is timed with);
* a plain loop: ``t0 = time.perf_counter(); sess.run(None, feeds); dt = time.perf_counter() - t0``.

It prints both p50s and their ratio (harness / plain). On a quiet machine the ratio is within
0.9..1.1: the harness adds nothing measurable to what it times.

    python bench/bench_harness_bias.py                       # 1 thread, 100 runs per timer
    python bench/bench_harness_bias.py --threads 2 --iterations 200
"""
import argparse
import os
import sys
import time


HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import models  # noqa: E402

BAND = (0.9, 1.1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    ap.add_argument("--iterations", type=int, default=100, help="timed runs per timer (default 100)")
    ap.add_argument("--block", type=int, default=5, help="runs per turn of each timer (default 5)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    args = ap.parse_args(argv)

    from qinfer import benchmark as qb
    import onnxruntime as ort

    path = models.resnet18()
    feeds = {"input": models.imagenet_input(1, args.size, args.size)}
    sess = qb.onnxruntime_session(path, args.threads)
    for _ in range(args.warmup):
        sess.run(None, feeds)

    engine = [(qb.ORT_VARIANT, sess, feeds)]
    harness, plain = [], []
    blocks = -(-args.iterations // args.block)
    for b in range(blocks):
        for turn in ((0, 1) if b % 2 == 0 else (1, 0)):
            if turn == 0:
                harness += qb.measure(engine, warmup=0, iterations=args.block)[qb.ORT_VARIANT]
            else:
                for _ in range(args.block):
                    t0 = time.perf_counter()
                    sess.run(None, feeds)
                    plain.append(time.perf_counter() - t0)

    h, p = qb._stats(harness), qb._stats(plain)
    ratio = h["p50"] / p["p50"]
    print("resnet18 %dx%d, onnxruntime %s, %d thread(s), %d runs per timer in blocks of %d, alternating"
          % (args.size, args.size, ort.__version__, args.threads, len(harness), args.block))
    print("%-10s %9s %9s %9s" % ("timer", "p50 ms", "p90 ms", "min ms"))
    for name, s in (("harness", h), ("plain", p)):
        print("%-10s %9.3f %9.3f %9.3f" % (name, s["p50"], s["p90"], s["min"]))
    ok = BAND[0] <= ratio <= BAND[1]
    print("ratio harness p50 / plain p50: %.3f (%s %.1f..%.1f)" % (ratio, "within" if ok else "OUTSIDE", *BAND))
    return 0


if __name__ == "__main__":
    sys.exit(main())
