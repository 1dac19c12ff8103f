"""The float32 row kernels of transformers (LayerNormalization, Softmax, Erf: kernels/scalar/
rows-f32-scalar.c) against the numpy reference ops qinfer ran before them and against onnxruntime
running the same one-node model, in one run, on transformer shapes (rows x width: a small model's
16 x 64, BERT-base's 128 x 768 and 512 x 768, and the sizes around where numpy's SIMD loops start to
win, which set qinfer.runtime.float_ops.ROWS_C_MAX), at 1 and 2 threads.

    python bench/bench_rows.py
    python bench/bench_rows.py --threads 1 --time 0.2

Microseconds per call (median of timed batches after a warm-up; engines interleaved per shape).
qinfer's figure is the kernel call a session step makes (argument checks and output allocation
included); onnxruntime's is InferenceSession.run (its per-call overhead included, as a session's).
Ratios > 1 mean qinfer is faster.
"""
import argparse
import statistics
import time

import numpy as np

from qinfer._ext import _kernels as K
from qinfer.reference import get as ref_op

SHAPES = [(16, 64), (32, 64), (64, 64), (64, 256), (128, 256), (128, 768), (512, 768)]


def _time(fn, budget):
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    reps = max(1, int(budget / 5 / one))
    meds = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        meds.append((time.perf_counter() - t) / reps)
    return statistics.median(meds)


def _ort(op, shape, threads, **attrs):
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    cols = shape[-1]
    inits, ins = [], ["x"]
    if op == "LayerNormalization":
        rng = np.random.default_rng(1)
        for name in ("scale", "bias"):
            v = rng.standard_normal(cols).astype(np.float32)
            inits.append(helper.make_tensor(name, TensorProto.FLOAT, [cols], v))
            ins.append(name)
    node = helper.make_node(op, ins, ["y"], **attrs)
    g = helper.make_graph([node], op, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--time", type=float, default=0.3, help="seconds per measurement")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"{'op':<20} {'shape':>10} {'thr':>3} | {'qinfer':>8} {'numpy ref':>9} {'ort':>8} us | "
          f"{'vs numpy':>8} {'vs ort':>7}")
    for op in ("LayerNormalization", "Softmax", "Erf"):
        for rows, cols in SHAPES:
            x = rng.standard_normal((rows, cols)).astype(np.float32)
            s = rng.standard_normal(cols).astype(np.float32)
            b = rng.standard_normal(cols).astype(np.float32)
            ref = ref_op(op)
            feeds = (([x, s, b] if op == "LayerNormalization" else [x]),
                     {} if op == "Erf" else {"axis": -1}, 1)
            for nt in args.threads:
                if op == "LayerNormalization":
                    q = lambda: K.layernorm_f32(x, s, b, 1e-5, num_threads=nt)
                elif op == "Softmax":
                    q = lambda: K.softmax_f32(x, num_threads=nt)
                else:
                    q = lambda: K.erf_f32(x, num_threads=nt)
                o = _ort(op, (rows, cols), nt, **({"axis": -1} if op != "Erf" else {}))
                tq = _time(q, args.time)
                tr = _time(lambda: ref(*feeds), args.time)
                to = _time(lambda: o.run(None, {"x": x}), args.time) if o is not None else float("nan")
                print(f"{op:<20} {f'{rows}x{cols}':>10} {nt:>3} | {tq * 1e6:8.1f} {tr * 1e6:9.1f} "
                      f"{to * 1e6:8.1f}    | {tr / tq:7.2f}x {to / tq:6.2f}x", flush=True)


if __name__ == "__main__":
    main()
