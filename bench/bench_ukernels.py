"""int8 micro-kernel benchmark: the machine's int8 peak, qinfer's int8 GEMM / conv / depthwise
GOP/s and fraction of that peak, against onnxruntime (int8 MatMulInteger / QLinearMatMul, float32
depthwise Conv) and numpy float32 matmul, at 1 and 2 threads, in one run.

    python bench/bench_ukernels.py            # everything (~2-3 minutes)
    python bench/bench_ukernels.py --quick    # fewer shapes, shorter timings (~30 s)
    python bench/bench_ukernels.py --skip gemm,mobilenet,resnet   # the int4 and sparse rows (~40 s)
    python bench/bench_ukernels.py --skip gemm,mobilenet,resnet,int4   # the sparse rows only (~25 s)

Peak: a register-only loop of 24 independent zmm vpdpbusd (qinfer._ext._kernels.qint8_vnni_peak,
kernels/avx512vnni/gemm-qu8_qc8w-avx512vnni.c), timed on one thread: 1 GOP = 1e9 int8 ops, a
multiply-add counting 2. Every qinfer figure below is the AVX-512 VNNI tier (the best this machine
runs), requantized uint8 output with a ReLU (ReLU6 in MobileNetV2), scales folded the way a
quantizer calls the kernels for piecewise-linear activations (scale = s_x s_w / s_y, clip bounds
in output units, y_inv_scale = 1), the full per-call cost from Python (validation included); onnxruntime's figures are InferenceSession.run of a one-node model with the weights as
initializers (prepacked by ORT), default spinning, intra_op_num_threads = threads; numpy float32
uses OpenBLAS limited to the same thread count (threadpoolctl). Each engine runs alone: an
onnxruntime session is timed and deleted (its spinning pool with it) before qinfer is timed. Times are the minimum over
several batches of the mean per call (the machine is shared: the minimum is what the code can do,
and the load seen is printed). Done-when points of issue 3 get a PASS / FAIL line each.

M = 1 bound: a one-row GEMM reads each weight byte once per call, so the rate at which this machine
streams the layer's packed weights (qinfer._ext._kernels.qint8_vnni_stream over the same buffer)
bounds any kernel's time; the table after the GEMM rows prints it, qinfer's fraction of it and the
most any kernel could beat onnxruntime by at each M = 1 shape.
"""
import argparse
import os
import sys
import time

import numpy as np

from qinfer._ext import _kernels as K
from qinfer.reference import int4 as Q4
from qinfer.reference import quantized as Q
from qinfer.reference import sparse as QS
from qinfer.runtime import cpu

try:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
except ImportError:  # pragma: no cover
    ort = None
try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

GEMM_M = (1, 16, 196, 3136)
GEMM_KN = (64, 256, 1024, 4096)
THREADS = (1, 2)
#: batch-1 dense layers for the int4 rows: (K, N) of a 4096 x 4096 layer and the digits MLP's
INT4_KN = ((4096, 4096), (784, 1024), (1024, 1024), (1024, 10))
INT4_BLOCK = 64
#: sparse rows: the GEMM of issue 7 and the block densities (non-zero 1x4 blocks / all) timed
SPARSE_MKN = (196, 1024, 1024)
SPARSE_DENSITIES = (1.0, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)


def timeit(f, min_time=0.2, batches=5):
    """Minimum over `batches` batches of the mean time per call (each batch >= min_time/batches)."""
    f()
    f()
    best = float("inf")
    for _ in range(batches):
        n, t0 = 0, time.perf_counter()
        while True:
            f()
            n += 1
            t = time.perf_counter() - t0
            if t >= min_time / batches:
                break
        best = min(best, t / n)
    return best


def load():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


# ----------------------------------------------------------------------------- onnxruntime models

def _session(graph, threads):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort_matmulinteger(w, zp_x, threads):
    Kd, N = w.shape
    g = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b", "a_zp", "b_zp"], ["y"])], "mmi",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, ["M", Kd])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, ["M", N])],
        [numpy_helper.from_array(w, "b"), numpy_helper.from_array(np.array(zp_x, np.uint8), "a_zp"),
         numpy_helper.from_array(np.array(0, np.int8), "b_zp")])
    return _session(g, threads)


def ort_qlinearmatmul(w, zp_x, threads):
    Kd, N = w.shape
    inits = [numpy_helper.from_array(w, "b"),
             numpy_helper.from_array(np.array(0.02, np.float32), "a_s"),
             numpy_helper.from_array(np.array(zp_x, np.uint8), "a_zp"),
             numpy_helper.from_array(np.full(N, 0.01, np.float32), "b_s"),
             numpy_helper.from_array(np.zeros(N, np.int8), "b_zp"),
             numpy_helper.from_array(np.array(0.5, np.float32), "y_s"),
             numpy_helper.from_array(np.array(0, np.uint8), "y_zp")]
    g = helper.make_graph(
        [helper.make_node("QLinearMatMul", ["a", "a_s", "a_zp", "b", "b_s", "b_zp", "y_s", "y_zp"],
                          ["y"])], "qlmm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, ["M", Kd])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, ["M", N])], inits)
    return _session(g, threads)


def ort_matmul_f32(w, threads):
    Kd, N = w.shape
    g = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["y"])], "mm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["M", Kd])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", N])],
        [numpy_helper.from_array(w, "w")])
    return _session(g, threads)


def ort_dwconv_f32(C, H, W, k, s, threads):
    wt = (np.random.default_rng(1).standard_normal((C, 1, k, k)) * 0.1).astype(np.float32)
    p = k // 2
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], group=C, kernel_shape=[k, k],
                          pads=[p, p, p, p], strides=[s, s])], "dw",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, H, W])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(wt, "w"), numpy_helper.from_array(np.zeros(C, np.float32), "b")])
    return _session(g, threads)


# ----------------------------------------------------------------------------- layer lists

def resnet18_convs():
    """(name, H, W, Cin, Cout, k, stride, pad) of ResNet-18's convolutions at 224x224, batch 1."""
    L = [("conv1", 224, 224, 3, 64, 7, 2, 3)]
    for i in range(4):
        L.append((f"layer1.{i // 2}.conv{i % 2 + 1}", 56, 56, 64, 64, 3, 1, 1))
    for li, (c_in, c, hw) in enumerate([(64, 128, 56), (128, 256, 28), (256, 512, 14)], start=2):
        L.append((f"layer{li}.0.conv1", hw, hw, c_in, c, 3, 2, 1))
        L.append((f"layer{li}.0.downsample", hw, hw, c_in, c, 1, 2, 0))
        for i in range(3):
            L.append((f"layer{li}.{(i + 1) // 2}.conv{(i + 1) % 2 + 1}", hw // 2, hw // 2, c, c, 3, 1, 1))
    return L


def mobilenetv2_layers():
    """(name, kind, H, W, Cin, Cout, k, stride) of MobileNetV2 (224x224, batch 1); kind is 'conv'
    (dense, k x k) or 'dw' (depthwise 3x3)."""
    L = [("conv0", "conv", 224, 224, 3, 32, 3, 2)]
    hw, c_in, b = 112, 32, 0
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            st = s if i == 0 else 1
            hid = c_in * t
            if t != 1:
                L.append((f"block{b}.expand", "conv", hw, hw, c_in, hid, 1, 1))
            L.append((f"block{b}.dw", "dw", hw, hw, hid, hid, 3, st))
            hw = (hw + 2 - 3) // st + 1
            L.append((f"block{b}.project", "conv", hw, hw, hid, c, 1, 1))
            c_in, b = c, b + 1
    L.append(("conv_last", "conv", hw, hw, 320, 1280, 1, 1))
    return L


def _out(n, k, s, p):
    return (n + 2 * p - k) // s + 1


# ----------------------------------------------------------------------------- runs

def bench_peak(quick):
    it = 200_000 if quick else 1_000_000
    t = timeit(lambda: K.qint8_vnni_peak(it), 0.2 if quick else 0.6)
    return it * 24 * 64 * 2 / t / 1e9


def bench_gemm(peak, rng, args):
    rows = []
    kn = GEMM_KN if not args.quick else (64, 256, 1024)
    ms = GEMM_M if not args.quick else (1, 16, 196)
    if args.quick:
        shapes = [(m, v, v) for m in ms for v in kn] + [(3136, 1024, 1024)]
    elif args.full:
        shapes = [(m, k, n) for m in ms for k in kn for n in kn]
    else:
        shapes = [(m, v, v) for m in ms for v in kn]
    mt = 0.12 if args.quick else 0.3
    print(f"\n== int8 GEMM (u8 x s8 -> u8, ReLU), GOP/s and % of peak ({peak:.0f} GOP/s per thread)")
    print(f"{'M':>5} {'K':>5} {'N':>5} {'thr':>3} | {'qinfer':>8} {'%peak':>6} | {'ort MMI':>8} "
          f"{'ort QLMM':>8} {'x ort':>6} | {'np f32':>8} {'x np':>6}")
    for M, Kd, N in shapes:
        a = rng.integers(0, 256, (M, Kd), dtype=np.uint8)
        w = rng.integers(-127, 128, (Kd, N)).astype(np.int8)
        zp = 128
        packed = Q.pack_gemm_qc8w(w, rng.integers(-100, 100, N).astype(np.int32), zp)
        scale = np.full(N, 1e-4, np.float32)  # s_x * s_w / s_y, folded (ReLU: y_inv_scale 1)
        out = np.empty((M, N), np.uint8)
        af, wf = a.astype(np.float32), w.astype(np.float32)
        ops = 2.0 * M * Kd * N
        for nt in THREADS:
            # onnxruntime first, its session (and spinning thread pool) gone before qinfer runs
            t_mmi = t_ql = float("nan")
            if ort is not None:
                feed = {"a": a}
                sess = ort_matmulinteger(w, zp, nt)
                t_mmi = timeit(lambda: sess.run(None, feed), mt)
                sess = ort_qlinearmatmul(w, zp, nt)
                t_ql = timeit(lambda: sess.run(None, feed), mt)
                del sess
            tq = timeit(lambda: K.qgemm_u8s8(a, packed, scale, out=out, zp_y=0, activation=1,
                                             num_threads=nt), mt)
            tn = float("nan")
            if threadpool_limits is not None:
                with threadpool_limits(limits=nt):
                    tn = timeit(lambda: af @ wf, mt)
                time.sleep(0.05)  # let OpenBLAS's worker stop spinning
            t_ort = min(t_mmi, t_ql)
            g = ops / tq / 1e9
            row = dict(M=M, K=Kd, N=N, nt=nt, tq=tq, t_ort=t_ort, t_mmi=t_mmi, t_ql=t_ql,
                       gops=g, frac=g / (peak * nt), tn=tn)
            if M == 1:   # the weight-streaming bound, over the very bytes this GEMM reads
                passes = max(1, int(2e7 / packed.nbytes))
                row.update(packed_bytes=packed.nbytes, t_bound=timeit(
                    lambda: K.qint8_vnni_stream(packed, passes, nt), mt) / passes)
            rows.append(row)
            print(f"{M:>5} {Kd:>5} {N:>5} {nt:>3} | {g:8.1f} {100 * g / (peak * nt):5.1f}% | "
                  f"{ops / t_mmi / 1e9:8.1f} {ops / t_ql / 1e9:8.1f} {t_ort / tq:5.2f}x | "
                  f"{ops / tn / 1e9:8.1f} {tn / tq:5.2f}x", flush=True)
    print_gemv_bound(rows)
    return rows


def print_gemv_bound(rows):
    """M = 1 reads every weight byte once per call: no kernel can run faster than this machine
    streams the layer's packed weights from where they are cached. bench_gemm times the bound over
    the very bytes the GEMM reads (qint8_vnni_stream: each 64-byte line into one vpdpbusd, the
    threads splitting the buffer, many passes per call so call overhead drops out); onnxruntime's
    time over it is the most any kernel could beat onnxruntime by at that shape."""
    m1 = [r for r in rows if "t_bound" in r]
    if not m1:
        return
    print("\n== M=1 weight-streaming bound: the packed weights streamed through vpdpbusd at this "
          "machine's rate (no\n   kernel reads them faster); qinfer's time as a fraction of it, and "
          "onnxruntime's time over it")
    print(f"{'K':>5} {'N':>5} {'thr':>3} | {'packed KiB':>10} {'GB/s':>6} {'bound us':>8} | "
          f"{'qinfer us':>9} {'of bound':>8} | {'ort us':>8} {'best x ort':>10}")
    for r in m1:
        tb, nb = r["t_bound"], r["packed_bytes"]
        print(f"{r['K']:>5} {r['N']:>5} {r['nt']:>3} | {nb / 1024:10.0f} {nb / tb / 1e9:6.1f} "
              f"{tb * 1e6:8.2f} | {r['tq'] * 1e6:9.2f} {tb / r['tq']:7.0%} | "
              f"{r['t_ort'] * 1e6:8.2f} {r['t_ort'] / tb:9.2f}x", flush=True)


def bench_int4(rng, args):
    """Batch-1 dense layers, 1 thread: qinfer int4 (block 64) vs qinfer int8 vs onnxruntime fp32
    MatMul; both qinfer kernels with uint8 output and a ReLU (as between the MLP's layers)."""
    print(f"\n== int4 GEMM, batch 1, 1 thread (u8 x s4, block {INT4_BLOCK} -> u8, ReLU) vs int8 "
          "and onnxruntime fp32 MatMul; microseconds per call")
    print(f"{'M':>3} {'K':>5} {'N':>5} | {'int4':>8} {'int8':>8} {'ort f32':>8} | {'int8/int4':>9} "
          f"{'ort/int4':>8}")
    mt = 0.15 if args.quick else 0.4
    rows = []
    for Kd, N in INT4_KN:
        a = rng.integers(0, 256, (1, Kd), dtype=np.uint8)
        w8 = rng.integers(-127, 128, (Kd, N)).astype(np.int8)
        p8 = Q.pack_gemm_qc8w(w8, rng.integers(-100, 100, N).astype(np.int32), 128)
        q4 = rng.integers(-8, 8, (Kd, N)).astype(np.int8)
        s4 = (rng.uniform(0.5, 1.5, (N, Q4.nblocks(Kd, INT4_BLOCK))) * 1e-2).astype(np.float32)
        p4 = Q4.pack_gemm_qb4w(q4, s4, INT4_BLOCK, rng.normal(0, 10, N), 128)
        scale = np.full(N, 1e-4, np.float32)
        out = np.empty((1, N), np.uint8)
        t_ort = float("nan")
        if ort is not None:  # first, and its session (spinning pool) gone before qinfer runs
            sess = ort_matmul_f32(rng.standard_normal((Kd, N)).astype(np.float32), 1)
            feed = {"a": rng.standard_normal((1, Kd)).astype(np.float32)}
            t_ort = timeit(lambda: sess.run(None, feed), mt)
            del sess
        t8 = timeit(lambda: K.qgemm_u8s8(a, p8, scale, out=out, activation=1, num_threads=1), mt)
        t4 = timeit(lambda: K.qgemm_u8s4(a, p4, scale, out=out, activation=1, num_threads=1), mt)
        rows.append(dict(K=Kd, N=N, t4=t4, t8=t8, t_ort=t_ort))
        print(f"{1:>3} {Kd:>5} {N:>5} | {t4 * 1e6:8.1f} {t8 * 1e6:8.1f} {t_ort * 1e6:8.1f} | "
              f"{t8 / t4:8.2f}x {t_ort / t4:7.2f}x", flush=True)
    return rows


def pruned_block4(rng, Kd, N, density):
    """int8 [K, N] with round(density * K/4) non-zero 1x4 blocks along K in every column (as
    qinfer.prune leaves each output channel: the same count per channel, random places)."""
    kg = (Kd + 3) // 4
    keep = np.zeros((kg, N), bool)
    nb = int(round(density * kg))
    for j in range(N):
        keep[rng.choice(kg, nb, replace=False), j] = True
    w = rng.integers(-127, 128, (Kd, N)).astype(np.int8)
    w[w == 0] = 1
    return np.where(np.repeat(keep, 4, axis=0)[:Kd], w, 0).astype(np.int8)


def bench_sparse(rng, args):
    """M=196, K=N=1024 int8 GEMM with block4-pruned weights: the sparse kernel (qspmm_u8s8) at each
    density against the dense int8 kernel (qgemm_u8s8) on the same weights, u8 out with ReLU; real
    GOP/s counts the multiply-adds of the stored blocks, dense-equivalent those of the whole layer.
    The break-even density (sparse as fast as dense, 1 thread) is interpolated between the two
    measured densities around it: the quantizer's SPARSE_MAX_DENSITY."""
    M, Kd, N = SPARSE_MKN
    print(f"\n== sparse int8 GEMM (block4) M={M} K={Kd} N={N}, u8 -> u8 with ReLU: sparse kernel vs "
          f"dense int8 kernel on the same weights; microseconds per call, load {load():.2f}")
    print(f"{'thr':>3} {'density':>7} {'sparsity':>8} | {'sparse':>8} {'dense':>8} | {'real':>6} "
          f"{'dense-eq':>8} GOP/s | {'dense/sparse':>12}")
    mt = 0.3 if args.quick else 1.0
    a = rng.integers(0, 256, (M, Kd), dtype=np.uint8)
    scale = np.full(N, 1e-4, np.float32)
    out = np.empty((M, N), np.uint8)
    rows = []
    for d in SPARSE_DENSITIES:
        w = pruned_block4(rng, Kd, N, d)
        bias = rng.integers(-100, 100, N).astype(np.int32)
        ps, pd = QS.pack_gemm_sb4w(w, bias, 128), Q.pack_gemm_qc8w(w, bias, 128)
        nnz = QS.read_header(ps)["nnzb"] * 4
        for nt in (THREADS if d in (0.2, 0.1) else (1,)):
            td = timeit(lambda: K.qgemm_u8s8(a, pd, scale, out=out, activation=1, num_threads=nt),
                        mt, 7)
            ts = timeit(lambda: K.qspmm_u8s8(a, ps, scale, out=out, activation=1, num_threads=nt),
                        mt, 7)
            rows.append(dict(d=d, nt=nt, ts=ts, td=td))
            print(f"{nt:>3} {d:7.2f} {1 - d:8.0%} | {ts * 1e6:8.1f} {td * 1e6:8.1f} | "
                  f"{2 * M * nnz / ts / 1e9:6.0f} {2 * M * Kd * N / ts / 1e9:8.0f}       | "
                  f"{td / ts:11.2f}x", flush=True)
    one = sorted((r for r in rows if r["nt"] == 1), key=lambda r: r["d"])
    be = None
    for lo, hi in zip(one, one[1:]):   # ratio dense/sparse falls with density; find where it is 1
        rl, rh = lo["td"] / lo["ts"], hi["td"] / hi["ts"]
        if rl >= 1.0 > rh:
            be = lo["d"] + (hi["d"] - lo["d"]) * (rl - 1.0) / (rl - rh)
            break
    if be is None:
        be = 1.0 if one[-1]["td"] >= one[-1]["ts"] else 0.0
    from qinfer.quant.quantize import SPARSE_MAX_DENSITY
    print(f"break-even block density (sparse time = dense time, 1 thread): {be:.2f} (sparsity "
          f"{1 - be:.0%}); the quantizer packs sparse below SPARSE_MAX_DENSITY = {SPARSE_MAX_DENSITY}")
    return rows, be


def bench_resnet(peak, rng, args):
    print("\n== ResNet-18 conv layers (NHWC u8, ReLU, batch 1) through qconv2d_u8s8_nhwc")
    print(f"{'layer':<22} {'HxW':>7} {'Cin':>4} {'Cout':>4} {'k/s':>4} | "
          + " | ".join(f"{nt}thr GOP/s  %peak" for nt in THREADS))
    layers = resnet18_convs()
    totals = {nt: 0.0 for nt in THREADS}
    total_ops = 0.0
    mt = 0.06 if args.quick else 0.15
    for name, H, W, cin, cout, k, s, p in layers:
        x = rng.integers(0, 256, (1, H, W, cin), dtype=np.uint8)
        w = rng.integers(-127, 128, (cout, cin, k, k)).astype(np.int8)
        packed = Q.pack_conv_qc8w(w, None, 100)
        scale = np.full(cout, 1e-4, np.float32)
        OH, OW = _out(H, k, s, p), _out(W, k, s, p)
        out = np.empty((1, OH, OW, cout), np.uint8)
        ops = 2.0 * OH * OW * cout * cin * k * k
        total_ops += ops
        cells = []
        for nt in THREADS:
            t = timeit(lambda: K.qconv2d_u8s8_nhwc(x, packed, scale, (s, s), (p, p, p, p), out=out,
                                                   activation=1, num_threads=nt), mt)
            totals[nt] += t
            g = ops / t / 1e9
            cells.append(f"{g:10.1f} {100 * g / (peak * nt):5.1f}%")
        print(f"{name:<22} {H:>3}x{W:<3} {cin:>4} {cout:>4} {k}/{s:<2} | " + " | ".join(cells),
              flush=True)
    res = {}
    for nt in THREADS:
        g = total_ops / totals[nt] / 1e9
        res[nt] = (totals[nt], g, g / (peak * nt))
        print(f"  all ResNet-18 convs, {nt} thread(s): {totals[nt] * 1e3:.2f} ms, {g:.1f} GOP/s, "
              f"{100 * g / (peak * nt):.1f}% of peak")
    return res


def bench_mobilenet(peak, rng, args):
    print("\n== MobileNetV2 layers (NHWC u8, ReLU6 as clip, batch 1); depthwise vs onnxruntime "
          "float32 depthwise Conv (NCHW)")
    print(f"{'layer':<18} {'kind':<4} {'HxW':>7} {'Cin':>4} {'Cout':>4} {'s':>2} | "
          + " | ".join(f"{nt}thr GOP/s %peak  x ort-f32" for nt in THREADS))
    mt = 0.05 if args.quick else 0.12
    dw_ratios = {nt: [] for nt in THREADS}
    tot = {nt: [0.0, 0.0] for nt in THREADS}
    for name, kind, H, W, cin, cout, k, s in mobilenetv2_layers():
        p = k // 2
        OH, OW = _out(H, k, s, p), _out(W, k, s, p)
        x = rng.integers(0, 256, (1, H, W, cin), dtype=np.uint8)
        scale = np.full(cout, 4e-2, np.float32)  # s_x * s_w / s_y folded; ReLU6 = clip(0, 6 / s_y)
        out = np.empty((1, OH, OW, cout), np.uint8)
        if kind == "dw":
            w = rng.integers(-127, 128, (cin, 1, k, k)).astype(np.int8)
            packed = Q.pack_dwconv_qc8w(w, None, 100)
            fn = K.qdwconv2d_u8s8_nhwc
            ops = 2.0 * OH * OW * cin * k * k
        else:
            w = rng.integers(-127, 128, (cout, cin, k, k)).astype(np.int8)
            packed = Q.pack_conv_qc8w(w, None, 100)
            fn = K.qconv2d_u8s8_nhwc
            ops = 2.0 * OH * OW * cout * cin * k * k
        cells = []
        for nt in THREADS:
            to = None
            if kind == "dw" and ort is not None:  # first, and its thread pool gone before qinfer
                sess = ort_dwconv_f32(cin, H, W, k, s, nt)
                xf = {"x": rng.standard_normal((1, cin, H, W)).astype(np.float32)}
                to = timeit(lambda: sess.run(None, xf), mt)
                del sess
            t = timeit(lambda: fn(x, packed, scale, (s, s), (p, p, p, p), out=out, activation=2,
                                  alpha=0.0, beta=240.0, num_threads=nt), mt)
            g = ops / t / 1e9
            cell = f"{g:8.1f} {100 * g / (peak * nt):5.1f}%"
            if to is not None:
                dw_ratios[nt].append(to / t)
                tot[nt][0] += t
                tot[nt][1] += to
                cell += f" {to / t:6.2f}x"
            else:
                cell += " " * 8
            cells.append(cell)

        print(f"{name:<18} {kind:<4} {H:>3}x{W:<3} {cin:>4} {cout:>4} {s:>2} | " + " | ".join(cells),
              flush=True)
    for nt in THREADS:
        if dw_ratios[nt]:
            print(f"  depthwise 3x3, {nt} thread(s): int8 {tot[nt][0] * 1e3:.3f} ms vs ort f32 "
                  f"{tot[nt][1] * 1e3:.3f} ms ({tot[nt][1] / tot[nt][0]:.2f}x overall, min per layer "
                  f"{min(dw_ratios[nt]):.2f}x)")
    return dw_ratios, tot


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer shapes, shorter timings")
    ap.add_argument("--full", action="store_true", help="GEMM over every K x N pair, not K = N")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: gemm,resnet,mobilenet,int4,sparse")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    if "avx512vnni" not in cpu.supported_isas():
        print("this machine cannot run the AVX-512 VNNI tier; nothing to measure against its peak")
        return 1
    cpu.set_isa("avx512vnni")
    print(f"qinfer {cpu.isa()} kernels: {cpu.kernel_table()['gemm_qu8_qc8w']}, "
          f"{cpu.kernel_table()['dwconv2d_qu8_qc8w']}; onnxruntime "
          f"{ort.__version__ if ort else 'missing'}; numpy {np.__version__}")
    load0 = load()
    if threadpool_limits is not None:
        threadpool_limits(limits=1)  # OpenBLAS threads only while numpy is timed
    peak = bench_peak(args.quick)
    print(f"int8 peak (register-only VNNI loop, 1 thread): {peak:.1f} GOP/s "
          f"({peak / 2:.1f} G multiply-adds/s); load average {load0:.2f}")
    rng = np.random.default_rng(0)
    verdicts = []
    gemm = [] if "gemm" in skip else bench_gemm(peak, rng, args)
    if gemm:
        big = [r for r in gemm if r["M"] in (196, 3136) and r["K"] == r["N"] == 1024]
        one = {r["M"]: r for r in big if r["nt"] == 1}
        two = {r["M"]: r for r in big if r["nt"] == 2}
        ok = bool(one) and all(r["frac"] >= 0.8 for r in one.values())
        verdicts.append((ok, "2a VNNI GEMM M in {196, 3136}, K=N=1024, 1 thread >= 80% of peak: "
                         + ", ".join(f"M={m} {100 * r['frac']:.1f}%" for m, r in sorted(one.items()))))
        sp = {m: one[m]["tq"] / two[m]["tq"] for m in one if m in two}
        verdicts.append((bool(sp) and all(v >= 1.8 for v in sp.values()),
                         "2b 2 threads >= 1.8x 1 thread: "
                         + ", ".join(f"M={m} {v:.2f}x" for m, v in sorted(sp.items()))))
        if ort is not None:
            m16 = [r for r in gemm if r["M"] >= 16]
            worst = min(m16, key=lambda r: r["t_ort"] / r["tq"])
            verdicts.append((all(r["t_ort"] / r["tq"] >= 1.0 for r in m16),
                             f"3a qinfer >= onnxruntime for every shape with M >= 16 ({len(m16)} "
                             f"shape x threads): worst {worst['t_ort'] / worst['tq']:.2f}x at "
                             f"M={worst['M']} K={worst['K']} N={worst['N']} {worst['nt']}thr"))
            m1 = [r for r in gemm if r["M"] == 1]
            worst = min(m1, key=lambda r: r["t_ort"] / r["tq"])
            bound = ""
            if "t_bound" in worst:
                bound = (f" (the weight-streaming bound there allows at most "
                         f"{worst['t_ort'] / worst['t_bound']:.2f}x; qinfer runs at "
                         f"{worst['t_bound'] / worst['tq']:.0%} of it)")
            verdicts.append((all(r["t_ort"] / r["tq"] >= 2.0 for r in m1),
                             f"3b qinfer >= 2x onnxruntime at M=1: worst "
                             f"{worst['t_ort'] / worst['tq']:.2f}x at K={worst['K']} N={worst['N']} "
                             f"{worst['nt']}thr{bound}"))
    if "int4" not in skip:
        big = bench_int4(rng, args)[0]
        verdicts.append((big["t8"] / big["t4"] >= 1.6, f"int4 4096x4096 batch 1, 1 thread >= 1.6x "
                         f"qinfer int8: {big['t4'] * 1e6:.1f} vs {big['t8'] * 1e6:.1f} us "
                         f"({big['t8'] / big['t4']:.2f}x)"))
        if ort is not None:
            verdicts.append((big["t_ort"] / big["t4"] >= 5.0, f"int4 4096x4096 batch 1, 1 thread >= 5x "
                             f"onnxruntime fp32 MatMul: {big['t_ort'] * 1e6:.1f} us "
                             f"({big['t_ort'] / big['t4']:.2f}x)"))
    if "sparse" not in skip:
        rows, be = bench_sparse(rng, args)
        for d, want, pt in ((0.2, 3.0, "80%"), (0.1, 5.0, "90%")):
            r = next((r for r in rows if r["d"] == d and r["nt"] == 1), None)
            if r is not None:
                verdicts.append((r["td"] / r["ts"] >= want,
                                 f"7.1 sparse GEMM M=196 K=N=1024 {pt} block4, 1 thread >= {want:g}x "
                                 f"dense int8: {r['ts'] * 1e6:.0f} vs {r['td'] * 1e6:.0f} us "
                                 f"({r['td'] / r['ts']:.2f}x)"))
        verdicts.append((0.0 < be < 1.0, f"7.1 break-even block density {be:.2f} (printed above; "
                         f"recorded in qinfer.quant.quantize.SPARSE_MAX_DENSITY)"))
    if "mobilenet" not in skip:
        dw, tot = bench_mobilenet(peak, rng, args)
        if ort is not None and dw[1]:
            for nt in THREADS:
                lo = min(dw[nt])
                verdicts.append((lo >= 2.0, f"4a depthwise 3x3 int8 >= 2x onnxruntime f32 depthwise "
                                 f"on every MobileNetV2 layer, {nt} thread(s): min {lo:.2f}x, all "
                                 f"layers {tot[nt][1] / tot[nt][0]:.2f}x"))
    if "resnet" not in skip:
        res = bench_resnet(peak, rng, args)
        verdicts.append((res[1][2] >= 0.75, f"4b all ResNet-18 conv layers, 1 thread >= 75% of peak: "
                         f"{100 * res[1][2]:.1f}% ({res[1][0] * 1e3:.2f} ms)"))
    peak_end = bench_peak(args.quick)
    print(f"\nint8 peak at the start {peak:.1f} GOP/s, at the end {peak_end:.1f} GOP/s (fractions above "
          f"use the start's); load average at start {load0:.2f}, at end {load():.2f} (2 cores; "
          f"rerun when high)")
    for ok, text in verdicts:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for ok, _ in verdicts) else 2


if __name__ == "__main__":
    sys.exit(main())
