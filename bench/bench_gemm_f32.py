"""GFLOP/s of qinfer's fp32 GEMM (gemm_f32) and of the conv driver on it (conv2d_f32), per ISA
tier and thread count, against numpy's matmul (OpenBLAS, limited to the same thread count) and
onnxruntime's fp32 Conv, measured in the same run.

    python bench/bench_gemm_f32.py                         # every tier, 1 and 2 threads
    python bench/bench_gemm_f32.py --isa avx512vnni --threads 1 --time 0.3 --skip-conv

GEMM shapes: the conv-shaped ones (M = output channels, K = C*KH*KW, N = OH*OW) of a text
detector neck and of ResNet-18's four stages, and dense layers (M = batch 1 / 16, K = N = 1024
and 4096). qinfer runs with a PackedGemmA (weights packed once, as the runtime does) and with a
plain array. Conv layers: ResNet-18 at 224x224 and PP-OCRv4-det-like layers at 640x640 (the
backbone / neck / head shape classes of that model: a stride-2 stem, 1x1 expansions, the 3x3
96->24 neck convs at 160x160, a 9x9 large-kernel PAN conv), batch 1, bias + ReLU fused, through
conv2d_f32 with packed weights vs a one-Conv(+Relu) onnxruntime model (intra_op_num_threads=T,
spinning off). Each figure is the median of timed batches after a warm-up; engines run
interleaved per shape so clock changes hit all alike. FLOPs = 2*M*N*K. Peak: fp32 FMA peak per
core on this machine (--peak, default 117 GFLOP/s: Zen 4, one 512-bit or two 256-bit FMAs per
cycle at ~3.65 GHz) times the thread count. Ratios > 1 mean qinfer is faster.
"""
import argparse
import contextlib
import statistics
import time

import numpy as np

from qinfer._ext import _kernels as K
from qinfer.runtime import cpu

GEMMS = [  # (name, M, K, N)
    ("det neck 3x3 96->24 @160", 24, 864, 25600),
    ("r18 l1 3x3 64 @56", 64, 576, 3136),
    ("r18 l2 3x3 128 @28", 128, 1152, 784),
    ("r18 l3 3x3 256 @14", 256, 2304, 196),
    ("r18 l4 3x3 512 @7", 512, 4608, 49),
    ("dense 1x1024x1024", 1, 1024, 1024),
    ("dense 16x1024x1024", 16, 1024, 1024),
    ("dense 1x4096x4096", 1, 4096, 4096),
    ("dense 16x4096x4096", 16, 4096, 4096),
]

# (name, C, H, W, M, k, stride, pad)
CONVS = [
    ("r18 conv1 7x7 s2 3->64 @224", 3, 224, 224, 64, 7, 2, 3),
    ("r18 l1 3x3 64->64 @56", 64, 56, 56, 64, 3, 1, 1),
    ("r18 l2 3x3 s2 64->128 @56", 64, 56, 56, 128, 3, 2, 1),
    ("r18 l2 1x1 s2 64->128 @56", 64, 56, 56, 128, 1, 2, 0),
    ("r18 l2 3x3 128->128 @28", 128, 28, 28, 128, 3, 1, 1),
    ("r18 l3 3x3 s2 128->256 @28", 128, 28, 28, 256, 3, 2, 1),
    ("r18 l3 3x3 256->256 @14", 256, 14, 14, 256, 3, 1, 1),
    ("r18 l4 3x3 s2 256->512 @14", 256, 14, 14, 512, 3, 2, 1),
    ("r18 l4 3x3 512->512 @7", 512, 7, 7, 512, 3, 1, 1),
    ("det stem 3x3 s2 3->16 @640", 3, 640, 640, 16, 3, 2, 1),
    ("det 1x1 32->64 @160", 32, 160, 160, 64, 1, 1, 0),
    ("det 1x1 128->256 @40", 128, 40, 40, 256, 1, 1, 0),
    ("det neck 3x3 96->24 @160", 96, 160, 160, 24, 3, 1, 1),
    ("det neck 3x3 96->24 @80", 96, 80, 80, 24, 3, 1, 1),
    ("det lkpan 9x9 24->24 @40", 24, 40, 40, 24, 9, 1, 4),
    ("det head 3x3 96->24 @160", 96, 160, 160, 24, 3, 1, 1),
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


def _blas_threads(n):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(n)


def _ort_conv(C, H, W, M, k, s, p, w, b, threads):
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    conv = helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[k, k], strides=[s, s],
                            pads=[p, p, p, p])
    relu = helper.make_node("Relu", ["c"], ["y"])
    graph = helper.make_graph(
        [conv, relu], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, H, W])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def bench_gemms(isas, threads, budget, peak):
    rng = np.random.default_rng(0)
    print(f"\n## gemm_f32 (GFLOP/s; % of {peak:.0f} GFLOP/s/core peak; ratio = qinfer packed / numpy)")
    print(f"{'shape':<24} {'M':>4} {'K':>5} {'N':>6} {'isa':<11} {'T':>1} {'packed':>8} {'plain':>8} "
          f"{'%peak':>6} {'numpy':>8} {'ratio':>6}")
    for name, M, Kd, N in GEMMS:
        a = rng.standard_normal((M, Kd)).astype(np.float32)
        b = rng.standard_normal((Kd, N)).astype(np.float32)
        out = np.empty((M, N), np.float32)
        pa = K.pack_gemm_a_f32(a)
        flops = 2.0 * M * N * Kd
        for t in threads:
            with _blas_threads(t):
                tn = _time(lambda: np.matmul(a, b, out=out), budget)
            for isa in isas:
                with cpu.isa_cap(isa):
                    tp = _time(lambda: K.gemm_f32(pa, b, out=out, num_threads=t), budget)
                    tq = _time(lambda: K.gemm_f32(a, b, out=out, num_threads=t), budget)
                gp, gq, gn = flops / tp / 1e9, flops / tq / 1e9, flops / tn / 1e9
                print(f"{name:<24} {M:>4} {Kd:>5} {N:>6} {isa:<11} {t:>1} {gp:>8.1f} {gq:>8.1f} "
                      f"{100 * gp / (peak * t):>5.0f}% {gn:>8.1f} {gp / gn:>6.2f}", flush=True)


def bench_convs(isas, threads, budget, peak):
    rng = np.random.default_rng(1)
    print("\n## conv2d_f32 + ReLU, batch 1 (ms; GFLOP/s; ratio = onnxruntime time / qinfer time)")
    print(f"{'layer':<30} {'isa':<11} {'T':>1} {'qinfer':>8} {'GF/s':>6} {'%peak':>6} {'ort':>8} "
          f"{'ratio':>6}")
    for name, C, H, W, M, k, s, p in CONVS:
        x = rng.standard_normal((1, C, H, W)).astype(np.float32)
        w = (rng.standard_normal((M, C, k, k)) / np.sqrt(C * k * k)).astype(np.float32)
        b = rng.standard_normal(M).astype(np.float32)
        pw = K.pack_conv2d_weights_f32(w)
        out = K.conv2d_f32(x, pw, b, strides=(s, s), pads=(p, p, p, p), activation=K.ACT_RELU)
        oh, ow = out.shape[2:]
        flops = 2.0 * M * C * k * k * oh * ow
        for t in threads:
            sess = _ort_conv(C, H, W, M, k, s, p, w, b, t)
            to = None
            if sess is not None:
                feed = {"x": x}
                ref = sess.run(None, feed)[0]
                err = np.abs(ref - out).max() / max(np.abs(ref).max(), 1e-30)
                assert err < 1e-4, f"{name}: qinfer and onnxruntime disagree ({err:.2e})"
                to = _time(lambda: sess.run(None, feed), budget)
            for isa in isas:
                with cpu.isa_cap(isa):
                    tq = _time(lambda: K.conv2d_f32(x, pw, b, out=out, strides=(s, s),
                                                    pads=(p, p, p, p), activation=K.ACT_RELU,
                                                    num_threads=t), budget)
                g = flops / tq / 1e9
                ort_s = f"{to * 1e3:>8.3f} {to / tq:>6.2f}" if to else f"{'-':>8} {'-':>6}"
                print(f"{name:<30} {isa:<11} {t:>1} {tq * 1e3:>8.3f} {g:>6.1f} "
                      f"{100 * g / (peak * t):>5.0f}% {ort_s}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--isa", action="append", help="tier(s) to run (default: every supported)")
    ap.add_argument("--threads", type=int, action="append", help="thread count(s) (default 1, 2)")
    ap.add_argument("--time", type=float, default=0.3, help="seconds of timing per figure")
    ap.add_argument("--peak", type=float, default=117.0, help="fp32 GFLOP/s peak per core")
    ap.add_argument("--skip-gemm", action="store_true")
    ap.add_argument("--skip-conv", action="store_true")
    args = ap.parse_args()
    isas = args.isa or list(reversed([i for i in cpu.supported_isas() if i != "scalar"]))
    threads = args.threads or [1, 2]
    print(f"kernels: {cpu.kernel_table()['gemm_f32']} (cap {cpu.isa()}); isas {isas}; "
          f"threads {threads}")
    if not args.skip_gemm:
        bench_gemms(isas, threads, args.time, args.peak)
    if not args.skip_conv:
        bench_convs(isas, threads, args.time, args.peak)


if __name__ == "__main__":
    main()
