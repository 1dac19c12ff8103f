"""What running each residual QAdd inside the quantized layer that feeds it saves, per model, in one
run: the same int8 model in two sessions, with the fusion (the default) and without it
(qinfer.runtime.planner.FUSE_RESIDUAL off while the second session is built), timed interleaved
at batch 1 on 1 and 2 threads. Their outputs are checked equal first (the fusion changes no byte).

    python bench/bench_residual_fusion.py [--models resnet18 mobilenetv2] [--sparse resnet18]
                                          [--iterations 40]

``--sparse``: models also timed pruned to 80% block4 before quantization (the sparse kernels
fuse the add the same way).
"""
import argparse
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_models as bm  # noqa: E402

import qinfer  # noqa: E402
from qinfer.runtime import planner  # noqa: E402


def _sessions(path, threads):
    fused = qinfer.InferenceSession(path, num_threads=threads)
    planner.FUSE_RESIDUAL = False
    try:
        plain = qinfer.InferenceSession(path, num_threads=threads)
    finally:
        planner.FUSE_RESIDUAL = True
    return fused, plain


def _fused(sess):
    return sum(1 for st in sess._executor.program.steps for p in (st.post or ()) if p[1].op == "QAdd")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=["resnet18", "mobilenetv2"])
    ap.add_argument("--sparse", nargs="*", default=["resnet18"])
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--calib", type=int, default=8)
    args = ap.parse_args()
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=1)   # numpy's BLAS threads would spin on our cores
    except ImportError:  # pragma: no cover
        pass
    tmp = tempfile.mkdtemp(prefix="qinfer-fusion-")
    jobs = [(n, False) for n in args.models] + [(n, True) for n in args.sparse]
    print(f"qinfer {qinfer.__version__}; batch 1; {args.iterations} interleaved iterations; p50 / p90 ms")
    for name, sparse in jobs:
        samples = bm._samples(name, args.calib + 1)
        calib, x = samples[:args.calib], samples[args.calib]
        m = qinfer.convert(bm._path(name))
        if sparse:
            m = qinfer.prune(m, 0.8, pattern="block4", progress=False)
        q = qinfer.quantize(m, calib, progress=False)
        path = os.path.join(tmp, f"{name}{'-sparse' if sparse else ''}.qinf")
        q.save(path)
        label = f"{name}{' pruned 80% block4' if sparse else ''} int8"
        adds = sum(n.op == "QAdd" for n in q.graph.nodes)
        for T in (1, 2):
            fused, plain = _sessions(path, T)
            feeds = {fused.get_inputs()[0].name: x}
            a, b = fused.run(None, feeds), plain.run(None, feeds)
            same = all(np.array_equal(u, v) for u, v in zip(a, b))
            if T == 1:
                print(f"\n{label}: {_fused(fused)} of {adds} QAdds fused; outputs identical: {same}")
            if not same:
                raise SystemExit("fused and unfused outputs differ")
            p50, p90 = bm._interleaved({"fused": fused, "unfused": plain}, feeds, args.iterations)
            print(f"  threads {T}: fused {p50['fused']:.3f} / {p90['fused']:.3f}, unfused "
                  f"{p50['unfused']:.3f} / {p90['unfused']:.3f}; unfused / fused "
                  f"{p50['unfused'] / p50['fused']:.3f}x; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
