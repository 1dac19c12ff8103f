"""Does a long-lived session leak? RSS before and after 10,000 runs of the int8 ResNet-18.

After ``--warmup`` runs (plans built, the int8 drivers' per-thread scratch grown, malloc's arenas
settled), the script reads the resident set size (``/proc/self/statm``, the current RSS, not the
high-water mark), runs ``--runs`` more and prints the RSS every tenth of the way and the growth.
A leak of one allocation per run shows as a line that keeps rising; the target is < 5 MB over
10,000 runs.

    python bench/bench_memory.py                       # int8 ResNet-18, 10,000 runs, 2 threads
    python bench/bench_memory.py --runs 2000 --threads 1 --model resnet18-float
"""
import argparse
import gc
import os
import sys
import time

from bench_concurrency import model_path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import models  # noqa: E402

import qinfer  # noqa: E402


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18-int8")
    ap.add_argument("--runs", type=int, default=10000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    sess = qinfer.InferenceSession(model_path(args.model), num_threads=args.threads)
    feeds = {sess.get_inputs()[0].name: models.imagenet_input(1)}
    for _ in range(args.warmup):
        sess.run(None, feeds)
    gc.collect()
    start = rss_mb()
    print(f"model {args.model}, 1x3x224x224, {args.threads} threads: RSS {start:.1f} MB after "
          f"{args.warmup} warm-up runs")
    t0 = time.perf_counter()
    step = max(args.runs // 10, 1)
    for i in range(1, args.runs + 1):
        sess.run(None, feeds)
        if i % step == 0 or i == args.runs:
            print(f"  after {i:6d} runs: RSS {rss_mb():8.1f} MB ({rss_mb() - start:+.2f} MB), "
                  f"{(time.perf_counter() - t0) / i * 1e3:.2f} ms a run")
    gc.collect()
    growth = rss_mb() - start
    print(f"RSS growth over {args.runs} runs: {growth:+.2f} MB "
          f"({'under' if growth < 5 else 'OVER'} the 5 MB budget)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
