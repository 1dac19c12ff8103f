"""qinfer float vs onnxruntime fp32 latency on real models, measured in one run.

Design: both engines run the same ONNX file on the same realistic input, in
the same process, interleaved (qinfer then onnxruntime, then the other order,
and so on) after a warm-up, so that clock changes and neighbours' noise hit
both alike. onnxruntime gets ``intra_op_num_threads=T``, ``inter_op=1`` and,
unless ``--ort-spinning``, no thread spinning: a spinning pool would steal the
cores from the qinfer run that follows it. qinfer gets ``num_threads=T``.
Before timing, the outputs of the two engines are compared (max abs error
relative to the output's scale) so a fast but wrong engine is visible.

    python bench/bench_float.py                         # resnet18 + ppocr_det, 1 and 2 threads
    python bench/bench_float.py --models resnet18 --threads 1 --iterations 50 --json out.json

Models come from tests/models.py (cached in QINFER_CACHE_DIR; PP-OCRv4 det
needs PyPI once to fetch the rapidocr-onnxruntime wheel).
"""
import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import models  # noqa: E402

WITHIN = 3.0     # the bar: qinfer float within 3x of onnxruntime fp32

MODELS = {
    "resnet18": (models.resnet18, lambda: models.imagenet_input(1, 224, 224), "1x3x224x224 photo"),
    "ppocr_det": (models.ppocr_det, lambda: models.det_input(1, 640, 640), "1x3x640x640 page scan"),
}


def _cpu_name():
    from qinfer.runtime.cpu import cpu_name
    return cpu_name()


def _stats(seconds):
    ms = np.asarray(seconds) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()), "min": float(ms.min())}


def _ort_session(path, threads, spinning):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def _max_rel_error(got, ref):
    worst = 0.0
    for g, r in zip(got, ref):
        scale = max(1.0, float(np.abs(r).max()))
        worst = max(worst, float(np.abs(g.astype(np.float64) - r).max()) / scale)
    return worst


def bench(name, threads, warmup, iterations, engines, spinning):
    build, make_input, what = MODELS[name]
    path = build()
    x = make_input()
    sessions = {}
    if "onnxruntime" in engines:
        sessions["onnxruntime-fp32"] = _ort_session(path, threads, spinning)
    if "qinfer" in engines:
        import qinfer
        sessions["float"] = qinfer.InferenceSession(path, num_threads=threads)
    input_name = next(iter(sessions.values())).get_inputs()[0].name
    feeds = {input_name: x}

    outs = {k: s.run(None, feeds) for k, s in sessions.items()}
    err = (_max_rel_error(outs["float"], outs["onnxruntime-fp32"])
           if len(outs) == 2 else None)
    for _ in range(warmup):
        for s in sessions.values():
            s.run(None, feeds)
    times = {k: [] for k in sessions}
    order = list(sessions)
    for i in range(iterations):
        for k in (order if i % 2 == 0 else order[::-1]):      # alternate who goes first
            t0 = time.perf_counter()
            sessions[k].run(None, feeds)
            times[k].append(time.perf_counter() - t0)
    return {"model": name, "input": what, "threads": threads, "rel_error": err,
            "latency_ms": {k: _stats(v) for k, v in times.items()}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--engines", nargs="+", default=["qinfer", "onnxruntime"],
                    choices=["qinfer", "onnxruntime"])
    ap.add_argument("--ort-spinning", action="store_true",
                    help="leave onnxruntime's thread-pool spinning on (its default)")
    ap.add_argument("--json", help="write the figures in the SPEC section 4 schema")
    args = ap.parse_args(argv)

    import onnxruntime as ort
    qv = None
    if "qinfer" in args.engines:
        import qinfer
        qv = getattr(qinfer, "__version__", "?")
    print("cpu: %s, %d logical cores; onnxruntime %s, qinfer %s; batch 1, %d warm-up + %d iterations, "
          "interleaved" % (_cpu_name(), os.cpu_count(), ort.__version__, qv, args.warmup, args.iterations))

    rows = []
    hdr = "%-10s %3s  %-24s %-24s %7s  %s" % ("model", "thr", "qinfer float p50 / p90", "onnxruntime p50 / p90",
                                              "ratio", "within %gx" % WITHIN)
    print(hdr)
    print("-" * len(hdr))
    for name in args.models:
        for t in args.threads:
            try:
                r = bench(name, t, args.warmup, args.iterations, args.engines, args.ort_spinning)
            except models.ModelUnavailable as e:
                print("%-10s %3d  skipped: %s" % (name, t, e))
                continue
            rows.append(r)
            lat = r["latency_ms"]
            q, o = lat.get("float"), lat.get("onnxruntime-fp32")
            cell = lambda s: "%9.2f / %9.2f ms" % (s["p50"], s["p90"]) if s else "%-24s" % "-"
            ratio = q["p50"] / o["p50"] if q and o else None
            flag = "" if ratio is None else ("yes" if ratio <= WITHIN else "NO")
            extra = "" if r["rel_error"] is None else "  (max err %.1e of scale)" % r["rel_error"]
            print("%-10s %3d  %s %s %7s  %s%s" % (name, t, cell(q), cell(o),
                                                  "-" if ratio is None else "%.2fx" % ratio, flag, extra))
            sys.stdout.flush()

    if args.json:
        results = []
        for r in rows:
            for variant, s in r["latency_ms"].items():
                results.append({"model": r["model"], "variant": variant, "batch": 1, "threads": r["threads"],
                                "latency_ms": s, "throughput_per_s": 1e3 / s["mean"]})
        doc = {"qinfer_version": qv, "machine": {"cpu": _cpu_name(), "cores": os.cpu_count()},
               "results": results}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
