"""GFLOP/s of qinfer's float depthwise conv kernel (dwconv2d_f32) per ISA tier and thread count,
on MobileNetV2's depthwise layers (batch 1, 3x3, pad 1, bias, ReLU6 fused), against onnxruntime's
fp32 Conv(group=C) and a numpy depthwise (sum of 9 shifted slices) measured in the same run.

    python bench/bench_kernels_f32.py                    # every tier, 1 and 2 threads
    python bench/bench_kernels_f32.py --threads 1 --isa avx512vnni --time 0.3

Each figure is the median of timed batches after a warm-up; engines run interleaved per layer so
clock changes hit all alike. FLOPs = 2 * C * OH * OW * 9 (a multiply-add is 2 FLOPs; the bias and
activation are not counted). Ratios > 1 mean qinfer is faster.
"""
import argparse
import statistics
import time

import numpy as np

from qinfer._ext import _kernels as K
from qinfer.runtime import cpu

# (name, C, H, W, stride) of MobileNetV2-1.0 at 224x224: every depthwise layer shape, once
LAYERS = [
    ("112x112x32 s1", 32, 112, 112, 1),
    ("112x112x96 s2", 96, 112, 112, 2),
    ("56x56x144 s1", 144, 56, 56, 1),
    ("56x56x144 s2", 144, 56, 56, 2),
    ("28x28x192 s1", 192, 28, 28, 1),
    ("28x28x192 s2", 192, 28, 28, 2),
    ("14x14x384 s1", 384, 14, 14, 1),
    ("14x14x576 s1", 576, 14, 14, 1),
    ("14x14x576 s2", 576, 14, 14, 2),
    ("7x7x960 s1", 960, 7, 7, 1),
]


def _time(fn, budget):
    """Median seconds per call over batches filling ``budget`` seconds (after a warm-up)."""
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    reps = max(1, int(0.02 / one))
    samples = []
    end = time.perf_counter() + budget
    while time.perf_counter() < end or len(samples) < 5:
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        samples.append((time.perf_counter() - t0) / reps)
    return statistics.median(samples)


def _ort_session(C, H, W, stride, w, b, threads):
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    conv = helper.make_node("Conv", ["x", "w", "b"], ["c"], group=C, kernel_shape=[3, 3],
                            pads=[1, 1, 1, 1], strides=[stride, stride])
    clip = helper.make_node("Clip", ["c", "lo", "hi"], ["y"])
    g = helper.make_graph(
        [conv, clip], "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, H, W])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w.reshape(C, 1, 3, 3), "w"), numpy_helper.from_array(b, "b"),
         numpy_helper.from_array(np.array(0, np.float32), "lo"),
         numpy_helper.from_array(np.array(6, np.float32), "hi")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _numpy_dw(x, w, b, stride):
    C, H, W = x.shape[1:]
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    OH, OW = (H - 1) // stride + 1, (W - 1) // stride + 1
    y = np.broadcast_to(b[None, :, None, None], (1, C, OH, OW)).copy()
    for ky in range(3):
        for kx in range(3):
            y += xp[:, :, ky:ky + stride * (OH - 1) + 1:stride, kx:kx + stride * (OW - 1) + 1:stride] \
                * w[None, :, ky, kx, None, None]
    return np.clip(y, 0, 6, out=y)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--isa", nargs="+", default=None, help="tiers (default: every runnable one)")
    ap.add_argument("--time", type=float, default=0.25, help="seconds per measurement")
    ap.add_argument("--no-numpy", action="store_true")
    args = ap.parse_args(argv)
    isas = args.isa or cpu.supported_isas()
    rng = np.random.default_rng(0)
    print(f"qinfer dwconv2d_f32, MobileNetV2 depthwise layers (3x3 pad 1 + bias + ReLU6, batch 1)")
    print(cpu.runtime_info().split("\nkernels:")[0])
    prev = cpu.isa()
    try:
        for nt in args.threads:
            print(f"\n== {nt} thread(s): GFLOP/s (ratio = qinfer / onnxruntime)")
            head = f"{'layer':<15}" + "".join(f"{i:>12}" for i in isas) + f"{'onnxrt':>9}"
            head += "" if args.no_numpy else f"{'numpy':>8}"
            head += "".join(f"{'x ' + i:>14}" for i in isas)
            print(head)
            tot = {k: 0.0 for k in list(isas) + ["ort", "np"]}
            flops_all = 0.0
            for name, C, H, W, s in LAYERS:
                x = rng.standard_normal((1, C, H, W), dtype=np.float32)
                w = rng.standard_normal((C, 3, 3), dtype=np.float32)
                b = rng.standard_normal(C, dtype=np.float32)
                OH, OW = (H - 1) // s + 1, (W - 1) // s + 1
                out = np.empty((1, C, OH, OW), np.float32)
                flops = 2.0 * C * OH * OW * 9
                flops_all += flops
                secs = {}
                for isa in isas:
                    cpu.set_isa(isa)
                    secs[isa] = _time(lambda: K.dwconv2d_f32(
                        x, w, b, out, strides=(s, s), pads=(1, 1, 1, 1), activation=K.ACT_CLIP,
                        alpha=0.0, beta=6.0, num_threads=nt), args.time)
                sess = _ort_session(C, H, W, s, w, b, nt)
                if sess is not None:
                    ref = sess.run(None, {"x": x})[0]
                    err = float(np.abs(ref - out).max())
                    if err > 1e-4 * max(1.0, float(np.abs(ref).max())):
                        print(f"  !! {name}: qinfer differs from onnxruntime by {err:.3g}")
                    secs["ort"] = _time(lambda: sess.run(None, {"x": x}), args.time)
                if not args.no_numpy:
                    secs["np"] = _time(lambda: _numpy_dw(x, w, b, s), args.time)
                for k, v in secs.items():
                    tot[k] += v
                row = f"{name:<15}" + "".join(f"{flops / secs[i] / 1e9:>12.1f}" for i in isas)
                row += f"{flops / secs['ort'] / 1e9:>9.1f}" if "ort" in secs else f"{'-':>9}"
                row += "" if args.no_numpy else f"{flops / secs['np'] / 1e9:>8.1f}"
                if "ort" in secs:
                    row += "".join(f"{secs['ort'] / secs[i]:>14.2f}" for i in isas)
                print(row)
            row = f"{'all (sum time)':<15}" + "".join(f"{flops_all / tot[i] / 1e9:>12.1f}" for i in isas)
            row += f"{flops_all / tot['ort'] / 1e9:>9.1f}" if tot["ort"] else f"{'-':>9}"
            row += "" if args.no_numpy else f"{flops_all / tot['np'] / 1e9:>8.1f}"
            if tot["ort"]:
                row += "".join(f"{tot['ort'] / tot[i]:>14.2f}" for i in isas)
            print(row)
    finally:
        cpu.set_isa(prev)


if __name__ == "__main__":
    main()
