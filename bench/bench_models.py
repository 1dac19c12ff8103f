"""Whole models, one run: qinfer float and int8 against onnxruntime fp32 and int8 on the same inputs.

For each model: qinfer int8 is built with ``qinfer.quantize`` and onnxruntime int8 with
``onnxruntime.quantization.quantize_static`` (uint8 activations, per-channel int8 weights, QDQ and
QOperator formats, the faster one kept) on the same calibration samples. All engines then run
interleaved (the order rotates every round) at batch 1 with 1 and 2 threads; the script prints
median and p90 latency, the ratios, file sizes, and the int8 models' output cosine against float.
Where onnxruntime int8's output error exceeds qinfer's default budget, a second qinfer int8 model
quantized at onnxruntime's error is timed too (the two at equal accuracy). Last, each int8 model is loaded and run 100 times in a fresh process of its own (qinfer: numpy and
qinfer only; onnxruntime: numpy and onnxruntime only) and the process's peak RSS is printed.

Sparse rows (issue 7, ``--sparse-models``, default resnet18): the model pruned with ``qinfer.prune``
to ``--sparsity`` (0.8) in 1x4 blocks along the reduction axis (block4, magnitude), then quantized
int8 (its pruned layers packed sparse), timed interleaved against qinfer dense int8 (the unpruned
model, quantized as above) and onnxruntime fp32, batch 1, 1 and 2 threads; PASS / FAIL lines for
the done-when targets (2 threads: >= 2x qinfer dense int8, >= 4x onnxruntime fp32).

    python bench/bench_models.py                       # resnet18, mobilenetv2, ppocr_cls (+ sparse resnet18)
    python bench/bench_models.py --models resnet18 --threads 1 --iterations 50
    python bench/bench_models.py --models --sparse-models resnet18 --iterations 40   # the sparse rows only
    python bench/bench_models.py --models ppocr_cls ppocr_rec --method ppocr_cls=mse ppocr_rec=percentile
    python bench/bench_models.py --models mobilenetv2 --method mobilenetv2=mse   # all int8 at ort's error

``--method`` picks qinfer's activation observer (default minmax, qinfer.quantize's default), for
every model or per model. The observer that leaves the fewest layers float under the same error
budget differs between models (PP-OCR classifier: minmax 10 float layers, mse 1; recognition:
minmax 18, percentile 9; MobileNetV2-shaped at onnxruntime's error: minmax 1, mse 0); the accuracy
tests cover the observers the figures use. Sizes are printed for the default file (memory-mapped)
and for the same model saved with ``compress=True`` (deflated packed weights, copied at load).
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import models  # noqa: E402

import qinfer  # noqa: E402
from qinfer.quant.quantize import DEFAULT_MAX_ERROR  # noqa: E402

INPUTS = {
    "resnet18": lambda n: models.imagenet_input(n) if hasattr(models, "imagenet_input") else None,
    "mobilenetv2": lambda n: models.imagenet_input(n) if hasattr(models, "imagenet_input") else None,
    "ppocr_cls": lambda n: models.cls_input(n),
    "ppocr_rec": lambda n: models.rendered_rec_input(n, seed=100)[0],
    "ppocr_det": lambda n: models.det_input(n),           # 640x640: the page scan, text, photos
    "digits_cnn": None,
}


def _samples(name, n):
    if name in ("digits_cnn", "digits_mlp"):
        d = models.BUILDERS[name]()
        return [d.x_test[i:i + 1] for i in range(n)]
    if name not in INPUTS:
        raise SystemExit(f"bench_models: unknown model {name!r} (known: {', '.join(sorted(INPUTS))})")
    x = INPUTS[name](n)
    return [x[i:i + 1].astype(np.float32) for i in range(n)]


def _path(name):
    p = models.BUILDERS[name]()
    return getattr(p, "path", p)


def _ort_int8(path, input_name, calib, out_dir):
    """Faster loadable onnxruntime static int8 model of QDQ / QOperator, or (None, reason)."""
    import onnxruntime as ort
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{input_name: x} for x in calib])

        def get_next(self):
            return next(self.it, None)

    best = None
    for fmt in (QuantFormat.QDQ, QuantFormat.QOperator):
        out = os.path.join(out_dir, f"ort_int8_{fmt.name}.onnx")
        try:
            quantize_static(path, out, Reader(), quant_format=fmt, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            s = ort.InferenceSession(out, so, providers=["CPUExecutionProvider"])
            t = _time(lambda: s.run(None, {input_name: calib[0]}), 5)
        except Exception as e:  # noqa: BLE001 - report and try the other format
            print(f"  onnxruntime int8 {fmt.name}: failed ({type(e).__name__}: {str(e)[:80]})")
            continue
        if best is None or t < best[1]:
            best = (out, t, fmt.name)
    return best


def _time(fn, n):
    fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def _interleaved(engines, feeds, iterations):
    """p50 and p90 ms of each engine's run, the engines interleaved (the order rotates every round)."""
    names = list(engines)
    times = {k: [] for k in names}
    for it in range(iterations):
        for k in names[it % len(names):] + names[:it % len(names)]:
            t = time.perf_counter()
            engines[k].run(None, feeds)
            times[k].append(time.perf_counter() - t)
    return ({k: float(np.median(v)) * 1e3 for k, v in times.items()},
            {k: float(np.percentile(v, 90)) * 1e3 for k, v in times.items()})


RSS_SCRIPT = r"""
import sys
import numpy as np
engine, model, feed, runs, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
x = np.load(feed)
if engine == "qinfer":
    import qinfer
    sess = qinfer.InferenceSession(model, num_threads=threads)
else:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
name = sess.get_inputs()[0].name
for _ in range(runs):
    sess.run(None, {name: x})
assert "onnx" not in sys.modules or engine != "qinfer", "loading a .qinf imported onnx"
# VmHWM: this image's own high-water mark (ru_maxrss would carry the parent's RSS across fork + exec)
with open("/proc/self/status") as f:
    print(next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")))
"""


def _peak_rss_mb(engine, model_path, x, out_dir, runs=100, threads=1):
    """Peak RSS (MB) of a fresh process that loads ``model_path`` with ``engine`` and runs it."""
    import subprocess
    feed = os.path.join(out_dir, "rss_feed.npy")
    np.save(feed, x)
    r = subprocess.run([sys.executable, "-c", RSS_SCRIPT, engine, model_path, feed, str(runs), str(threads)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return None, r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
    return int(r.stdout.split()[-1]) / 1024, None


def _ort_error(model, ort_path, input_name, calib):
    """onnxruntime int8's output error against qinfer float, as qinfer's quantizer measures its own."""
    import onnxruntime as ort
    from qinfer.quant.quantize import EVAL_SAMPLES, output_error
    ref = qinfer.InferenceSession(model, num_threads=1)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    o = ort.InferenceSession(ort_path, so, providers=["CPUExecutionProvider"])
    feeds = [{input_name: x} for x in calib[:EVAL_SAMPLES]]
    return output_error([ref.run(None, f) for f in feeds], [o.run(None, f) for f in feeds])


def _cos(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


METHODS = ("minmax", "percentile", "entropy", "mse")


def _methods(items):
    """--method values -> {model name or None (every other model): method}"""
    out = {None: "minmax"}
    for it in items:
        name, _, meth = it.rpartition("=")
        if meth not in METHODS:
            raise SystemExit(f"bench_models: unknown method {meth!r} in --method {it!r} "
                             f"(known: {', '.join(METHODS)})")
        out[name or None] = meth
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["resnet18", "mobilenetv2", "ppocr_cls"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--calib", type=int, default=16, help="calibration samples")
    ap.add_argument("--method", nargs="+", default=["minmax"], metavar="[MODEL=]METHOD",
                    help="qinfer's activation observer (qinfer.quantize method=): one for every "
                         "model, and/or MODEL=METHOD pairs (e.g. ppocr_cls=mse ppocr_rec=percentile)")
    ap.add_argument("--no-matched", dest="matched", action="store_false",
                    help="skip the qinfer int8 model built at onnxruntime's error (when that exceeds "
                         "qinfer's default budget)")
    ap.add_argument("--rss-runs", type=int, default=100,
                    help="runs in the peak-RSS processes (0: skip the RSS comparison)")
    ap.add_argument("--sparse-models", nargs="*", default=["resnet18"],
                    help="models timed pruned (block4) + int8 on the sparse kernels (none: skip)")
    ap.add_argument("--sparsity", type=float, default=0.8, help="block4 sparsity of the sparse rows")
    args = ap.parse_args(argv)
    import onnxruntime as ort
    ort.set_default_logger_severity(3)
    tmp = tempfile.mkdtemp(prefix="qinfer-bench-")
    print(f"qinfer {qinfer.__version__}, onnxruntime {ort.__version__}; batch 1; {args.iterations} "
          f"interleaved iterations after warm-up; p50 / p90 ms")
    methods = _methods(args.method)
    for name in args.models:
        method = methods.get(name, methods[None])
        path = _path(name)
        samples = _samples(name, args.calib + 4)
        calib, test = samples[:args.calib], samples[args.calib:]
        m = qinfer.convert(path)
        iname = m.graph.inputs[0].name
        q = qinfer.quantize(m, calib, method=method, progress=False)
        qpath = os.path.join(tmp, f"{name}.qinf")
        q.save(qpath)
        kept = sum(r["precision"] == "float32" for r in q.graph.metadata["precision_report"])
        ort_q = _ort_int8(path, iname, calib, tmp)
        matched = None
        if ort_q:
            # onnxruntime quantizes every layer whatever it costs; qinfer keeps layers float until its
            # budget holds. At onnxruntime's own error (same metric, same samples) the two are
            # compared at equal accuracy: a second qinfer model with that budget
            err_ort = _ort_error(m, ort_q[0], iname, calib)
            print(f"  onnxruntime int8 ({ort_q[2]}) output error on the calibration samples: {err_ort:.2e} "
                  f"(1 - cosine, worst sample; qinfer's default budget {DEFAULT_MAX_ERROR:g})")
            if args.matched and err_ort > DEFAULT_MAX_ERROR:
                q2 = qinfer.quantize(m, calib, method=method, max_error=err_ort, progress=False)
                matched = os.path.join(tmp, f"{name}-matched.qinf")
                q2.save(matched)
                kept2 = sum(r["precision"] == "float32" for r in q2.graph.metadata["precision_report"])
                print(f"  qinfer int8 at max_error={err_ort:.2e}: {kept2} layer(s) float, output error "
                      f"{q2.graph.metadata['quantization']['output_error']:.2e}")
        small = os.path.join(tmp, f"{name}-compressed.qinf")
        q.save(small, compress=True)
        sizes = {"onnx": os.path.getsize(path), "qinfer int8": os.path.getsize(qpath),
                 "qinfer int8 --compress": os.path.getsize(small)}
        if ort_q:
            sizes["onnxruntime int8"] = os.path.getsize(ort_q[0])
        print(f"\n{name}: qinfer int8 (method={method}) keeps {kept} layer(s) float; sizes: "
              + ", ".join(f"{k} {v / 1e6:.3f} MB" for k, v in sizes.items())
              + f" (qinfer int8 / onnx = {sizes['qinfer int8'] / sizes['onnx']:.3f}x, memory-mapped; "
              f"{sizes['qinfer int8 --compress'] / sizes['onnx']:.3f}x compressed)")
        for T in args.threads:
            so = ort.SessionOptions()
            so.intra_op_num_threads = T
            so.inter_op_num_threads = 1
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            engines = {"qinfer float": qinfer.InferenceSession(m, num_threads=T),
                       "qinfer int8": qinfer.InferenceSession(qpath, num_threads=T),
                       "onnxruntime fp32": ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])}
            if matched:
                engines["qinfer int8 @ort error"] = qinfer.InferenceSession(matched, num_threads=T)
            if ort_q:
                engines[f"onnxruntime int8 ({ort_q[2]})"] = ort.InferenceSession(ort_q[0], so, providers=["CPUExecutionProvider"])
            feeds = {iname: test[0]}
            outs = {k: e.run(None, feeds)[0] for k, e in engines.items()}
            names = list(engines)
            p50, p90 = _interleaved(engines, feeds, args.iterations)
            ref = outs["qinfer float"]
            print(f"  threads {T}:")
            for k in names:
                extra = f"  cosine vs float {_cos(ref, outs[k]):.4f}" if "int8" in k else ""
                print(f"    {k:<28} {p50[k]:8.2f} / {p90[k]:8.2f}{extra}")
            qi = p50["qinfer int8"]
            line = [f"qinfer int8 vs qinfer float {p50['qinfer float'] / qi:.2f}x",
                    f"vs onnxruntime fp32 {p50['onnxruntime fp32'] / qi:.2f}x"]
            for k in names:
                if k.startswith("onnxruntime int8"):
                    line.append(f"vs {k} {p50[k] / qi:.2f}x")
            print("    speed-up of qinfer int8: " + ", ".join(line))
            if matched:
                ort_k = next(k for k in names if k.startswith("onnxruntime int8"))
                print(f"    at onnxruntime's error: qinfer int8 vs {ort_k} "
                      f"{p50[ort_k] / p50['qinfer int8 @ort error']:.2f}x")
        if args.rss_runs:
            rss = {"qinfer int8": _peak_rss_mb("qinfer", qpath, test[0], tmp, args.rss_runs)}
            if ort_q:
                rss[f"onnxruntime int8 ({ort_q[2]})"] = _peak_rss_mb("onnxruntime", ort_q[0], test[0], tmp,
                                                                     args.rss_runs)
            print(f"  peak RSS, fresh process, load + {args.rss_runs} runs, 1 thread: "
                  + ", ".join(f"{k} {v:.1f} MB" if v is not None else f"{k} failed ({err})"
                              for k, (v, err) in rss.items()))
            got = [v for v, _ in rss.values()]
            if len(got) == 2 and None not in got:
                print(f"    qinfer int8 / onnxruntime int8 peak RSS: {got[0] / got[1]:.2f}x")
    verdicts = []
    for name in args.sparse_models:
        verdicts += _sparse_rows(name, args, tmp, ort)
    for ok, text in verdicts:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")


def _sparse_rows(name, args, tmp, ort):
    """Issue 7 point 2: ``name`` pruned to args.sparsity block4 + int8 (sparse kernels) against
    qinfer dense int8 and onnxruntime fp32, interleaved, batch 1; returns PASS / FAIL verdicts."""
    path = _path(name)
    samples = _samples(name, args.calib + 1)
    calib, x = samples[:args.calib], samples[args.calib]
    m = qinfer.convert(path)
    iname = m.graph.inputs[0].name
    dense = qinfer.quantize(m, calib, progress=False)
    pruned = qinfer.prune(m, args.sparsity, pattern="block4", progress=False)
    sparse = qinfer.quantize(pruned, calib, progress=False)
    paths = {}
    for key, model in (("sparse", sparse), ("dense", dense)):
        paths[key] = os.path.join(tmp, f"{name}-{key}.qinf")
        model.save(paths[key])
    nsp = sparse.graph.metadata["quantization"].get("sparse_layers", 0)
    nq = sum(n.op in ("QConv", "QGemm") for n in sparse.graph.nodes)
    print(f"\n{name} pruned {args.sparsity:.0%} block4 (magnitude) + int8: {nsp} of {nq} int8 layers "
          f"sparse; sizes: dense int8 {os.path.getsize(paths['dense']) / 1e6:.2f} MB, sparse int8 "
          f"{os.path.getsize(paths['sparse']) / 1e6:.2f} MB; load average {os.getloadavg()[0]:.2f}")
    verdicts = []
    try:   # pruning and quantizing ran numpy's BLAS, whose idle threads would spin on our cores
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=1)
    except ImportError:  # pragma: no cover
        pass
    for T in args.threads:
        so = ort.SessionOptions()
        so.intra_op_num_threads = T
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        engines = {f"qinfer sparse int8 ({args.sparsity:.0%})": qinfer.InferenceSession(paths["sparse"], num_threads=T),
                   "qinfer dense int8": qinfer.InferenceSession(paths["dense"], num_threads=T),
                   "onnxruntime fp32": ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])}
        feeds = {iname: x}
        names = list(engines)
        for k in names:
            engines[k].run(None, feeds)
        p50, p90 = _interleaved(engines, feeds, args.iterations)
        print(f"  threads {T} (p50 / p90 ms):")
        for k in names:
            print(f"    {k:<28} {p50[k]:8.2f} / {p90[k]:8.2f}")
        sp = p50[names[0]]
        r_dense, r_ort = p50["qinfer dense int8"] / sp, p50["onnxruntime fp32"] / sp
        print(f"    speed-up of qinfer sparse int8: vs qinfer dense int8 {r_dense:.2f}x, vs onnxruntime "
              f"fp32 {r_ort:.2f}x")
        if T == 2:
            verdicts.append((r_dense >= 2.0, f"7.2 {name} {args.sparsity:.0%} block4 int8, batch 1, 2 "
                             f"threads >= 2x qinfer dense int8: {sp:.2f} vs {p50['qinfer dense int8']:.2f} ms "
                             f"({r_dense:.2f}x)"))
            verdicts.append((r_ort >= 4.0, f"7.2 {name} {args.sparsity:.0%} block4 int8, batch 1, 2 "
                             f"threads >= 4x onnxruntime fp32: {p50['onnxruntime fp32']:.2f} ms ({r_ort:.2f}x)"))
    return verdicts


if __name__ == "__main__":
    main()
